//! `steer`: flow steering by hash bucket, the point in front of several
//! instances of a per-flow NF that sends each flow to the instance
//! holding its state (`braid scale`, docs/migration.md).
//!
//! Gates: 0 is the **trunk** (the side the instances are hidden behind),
//! gate `1 + i` leads to **instance** `i` (`instances` of them). A frame
//! from the trunk is hashed with the flow hash every per-flow NF uses to
//! split its state ([`PartitionKey::stable_hash`]: the key of the IPv4 or
//! IPv6 5-tuple as the firewall's and NAT's connection tracking build it,
//! lower endpoint first, so a flow and its replies give the same hash);
//! the hash picks one of `buckets` buckets (bucket `b` holds exactly the
//! hashes of `HashRange::share(b, buckets)`, which is why `buckets` is a
//! power of two), and `table[b]` names the instance. A frame from an
//! instance goes to the trunk. Two `steer` NFs, one on each side of the
//! instances with the same table, send both directions of every flow
//! through the same instance.
//!
//! Frames it cannot hash (not IPv4/IPv6, truncated or malformed headers,
//! a protocol without ports other than ICMP echo, later fragments, which
//! carry no ports) go to instance `unhashable` (default 0) and are
//! counted. A braid drain marker (ethertype `0x88b5`, `BRAIDMRK`, the
//! migration id, then the instance index as u16 big endian at byte 30)
//! from the trunk goes to the instance it names (the migration's
//! switch injects it there after moving buckets away: it closes the old
//! path), and is counted; a marker naming no instance is unhashable.
//!
//! The table changes live with the reconfigure path (`PATCH
//! .../nfs/{nf}` with new parameters): the worker builds the new instance
//! and swaps it in between two batches, so every frame is steered by
//! either the old or the new table, and the counters carry over. The
//! counters are the NF's (whole) state.

use crate::conntrack::{flow_key, flow_key6, ConnKey};
use crate::{ConfigError, Encoding, FlowScope, NfState, ParamDoc, StateError};
use crate::{Context, NetworkFunction, NfClass, NfSpec, Placement};
use braid_packet::envelope::{self, Class, L3Kind};
use braid_packet::Batch;

pub static SPEC: NfSpec = NfSpec {
    name: "steer",
    class: NfClass::Basic,
    placements: &[Placement::User],
    state: crate::StateKind::Whole,
    kernel: None,
    summary: "flow steering: hash bucket of the symmetric flow key -> instance gate (scale out/in)",
    params: &[
        ParamDoc {
            name: "instances",
            kind: "u16, 1..=64",
            default: None,
            help: "instances behind the steering; gate 0 is the trunk, gate 1+i instance i",
        },
        ParamDoc {
            name: "buckets",
            kind: "u32, a power of two in 1..=65536",
            default: Some("256"),
            help: "hash buckets; bucket b is HashRange::share(b, buckets)",
        },
        ParamDoc {
            name: "table",
            kind: "list of `buckets` instance indexes",
            default: Some("every bucket on instance 0"),
            help: "the instance of each bucket",
        },
        ParamDoc {
            name: "unhashable",
            kind: "u16 < instances",
            default: Some("0"),
            help: "instance for frames without a flow key (non-IP, malformed, later fragments)",
        },
    ],
    build: |p| Ok(Box::new(Steer::new(crate::params::parse(p)?)?)),
};

/// Most instances behind one steering NF.
pub const MAX_INSTANCES: u16 = 64;
/// Most buckets.
pub const MAX_BUCKETS: u32 = 1 << 16;

fn default_buckets() -> u32 {
    256
}

/// `steer` configuration.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub instances: u16,
    #[serde(default = "default_buckets")]
    pub buckets: u32,
    #[serde(default)]
    pub table: Option<Vec<u16>>,
    #[serde(default)]
    pub unhashable: u16,
}

/// Ethertype of a braid drain marker (the dataplane's `MARKER_ETHERTYPE`).
const MARKER_ETHERTYPE: u16 = 0x88b5;
/// What follows the ethertype in a drain marker.
const MARKER_MAGIC: &[u8; 8] = b"BRAIDMRK";
/// Where a marker names the instance it must go to (u16, big endian).
pub const MARKER_INSTANCE_AT: usize = 30;

/// The bucket of flow hash `hash` among `buckets` (a power of two): the
/// top bits, so bucket `b` is `HashRange::share(b, buckets)`.
#[inline]
pub fn bucket_of(hash: u64, buckets: u32) -> usize {
    ((u128::from(hash) * u128::from(buckets)) >> 64) as usize
}

/// The flow hash of a frame, as the per-flow NFs key their state; `None`
/// for a frame without a flow key.
pub fn frame_hash(frame: &[u8]) -> Option<u64> {
    let parsed = envelope::parse_dual(frame);
    match parsed.class {
        Class::Ok | Class::Fragment { first: true, .. } => {}
        _ => return None,
    }
    match parsed.l3 {
        L3Kind::Ipv4 => flow_key(&parsed.ip).map(|k| k.partition_key().stable_hash()),
        L3Kind::Ipv6 => flow_key6(&parsed.ip6).map(|k| k.partition_key().stable_hash()),
        _ => None,
    }
}

/// The instance a drain marker names, if `frame` is one that names one.
fn marker_instance(frame: &[u8]) -> Option<u16> {
    if frame.len() < MARKER_INSTANCE_AT + 2
        || frame[12..14] != MARKER_ETHERTYPE.to_be_bytes()
        || &frame[14..22] != MARKER_MAGIC
    {
        return None;
    }
    Some(u16::from_be_bytes([frame[MARKER_INSTANCE_AT], frame[MARKER_INSTANCE_AT + 1]]))
}

/// What the steering counted (its state: it carries over a table change).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SteerStats {
    /// Frames from the trunk sent to each instance (hashed or not).
    pub to_instance: Vec<u64>,
    /// Frames from the trunk without a flow key.
    pub unhashable: u64,
    /// Drain markers sent to the instance they name.
    pub markers: u64,
    /// Frames from the instances to the trunk.
    pub to_trunk: u64,
}

const STATE_VERSION: u32 = 1;

/// The `steer` NF.
#[derive(Debug)]
pub struct Steer {
    instances: u16,
    buckets: u32,
    /// Instance per bucket.
    table: Vec<u16>,
    unhashable: u16,
    stats: SteerStats,
}

impl Steer {
    pub fn new(cfg: Config) -> Result<Steer, ConfigError> {
        if !(1..=MAX_INSTANCES).contains(&cfg.instances) {
            return Err(ConfigError::new(
                "instances",
                format!("{} is outside 1..={MAX_INSTANCES}", cfg.instances),
            ));
        }
        if !cfg.buckets.is_power_of_two() || cfg.buckets > MAX_BUCKETS {
            return Err(ConfigError::new(
                "buckets",
                format!(
                    "{} is not a power of two in 1..={MAX_BUCKETS} (bucket b must be exactly HashRange::share(b, buckets))",
                    cfg.buckets
                ),
            ));
        }
        if cfg.unhashable >= cfg.instances {
            return Err(ConfigError::new(
                "unhashable",
                format!(
                    "instance {} does not exist (instances: {})",
                    cfg.unhashable, cfg.instances
                ),
            ));
        }
        let table = match cfg.table {
            None => vec![0; cfg.buckets as usize],
            Some(t) => {
                if t.len() != cfg.buckets as usize {
                    return Err(ConfigError::new(
                        "table",
                        format!("has {} entries, need one per bucket ({})", t.len(), cfg.buckets),
                    ));
                }
                if let Some((b, i)) = t.iter().enumerate().find(|(_, i)| **i >= cfg.instances) {
                    return Err(ConfigError::new(
                        format!("table[{b}]"),
                        format!("instance {i} does not exist (instances: {})", cfg.instances),
                    ));
                }
                t
            }
        };
        Ok(Steer {
            instances: cfg.instances,
            buckets: cfg.buckets,
            table,
            unhashable: cfg.unhashable,
            stats: SteerStats {
                to_instance: vec![0; cfg.instances as usize],
                ..SteerStats::default()
            },
        })
    }

    /// The instance of each bucket.
    pub fn table(&self) -> &[u16] {
        &self.table
    }

    /// What was counted so far.
    pub fn stats(&self) -> &SteerStats {
        &self.stats
    }

    /// The instance a frame from the trunk goes to (and counts it).
    #[inline]
    fn instance_of(&mut self, frame: &[u8]) -> u16 {
        match frame_hash(frame) {
            Some(h) => self.table[bucket_of(h, self.buckets)],
            None => match marker_instance(frame) {
                Some(i) if i < self.instances => {
                    self.stats.markers += 1;
                    i
                }
                _ => {
                    self.stats.unhashable += 1;
                    self.unhashable
                }
            },
        }
    }
}

impl NetworkFunction for Steer {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn keeps_lengths(&self) -> bool {
        true
    }

    fn gates(&self) -> crate::Gates {
        crate::Gates::Switch(self.instances + 1)
    }

    fn process(&mut self, batch: &mut Batch, _cx: &mut Context<'_>) {
        for p in batch.iter_mut() {
            if p.meta.in_port == 0 {
                let i = self.instance_of(p.data());
                self.stats.to_instance[usize::from(i)] += 1;
                p.meta.out_port = i + 1;
            } else {
                self.stats.to_trunk += 1;
                p.meta.out_port = 0;
            }
        }
    }

    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        scope.require_all(SPEC.name)?;
        Ok(NfState::encode_as(encoding, SPEC.name, STATE_VERSION, &self.stats))
    }

    /// Takes the counters of another instance (a table change keeps them;
    /// counts of instances this one does not have are dropped).
    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let mut s: SteerStats = state.decode(SPEC.name, STATE_VERSION)?;
        s.to_instance.resize(usize::from(self.instances), 0);
        self.stats = s;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, HashRange, Params, PartitionKey};
    use braid_packet::wire::build::{Frame6Spec, FrameSpec};
    use braid_packet::Packet;
    use std::net::Ipv4Addr;

    fn steer(yaml: &str) -> Result<Box<dyn NetworkFunction>, ConfigError> {
        let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
        (SPEC.build)(&p)
    }

    fn udp(a: (u32, u16), b: (u32, u16)) -> Vec<u8> {
        FrameSpec::udp((Ipv4Addr::from(a.0), a.1), (Ipv4Addr::from(b.0), b.1), 16).build()
    }

    /// The gate each frame leaves by, entering on `gate`.
    fn run(nf: &mut dyn NetworkFunction, gate: u16, frames: &[Vec<u8>]) -> Vec<u16> {
        let mut b: Batch = frames
            .iter()
            .map(|f| {
                let mut p = Packet::from_bytes(f);
                p.meta.in_port = gate;
                p
            })
            .collect();
        let mut c = Counters::default();
        nf.process(&mut b, &mut Context::new(1, &mut c));
        assert_eq!(c.dropped_total(), 0);
        b.iter().map(|p| p.meta.out_port).collect()
    }

    fn table_of(buckets: usize, f: impl Fn(usize) -> u16) -> String {
        let t: Vec<String> = (0..buckets).map(|b| f(b).to_string()).collect();
        format!("[{}]", t.join(", "))
    }

    #[test]
    fn bucket_b_is_exactly_share_b_of_the_hash_space() {
        for buckets in [1u32, 2, 4, 256, 1024] {
            for b in [0, buckets / 3, buckets - 1] {
                let r = HashRange::share(u64::from(b), u64::from(buckets));
                assert_eq!(bucket_of(r.first, buckets), b as usize);
                assert_eq!(bucket_of(r.last, buckets), b as usize);
                if r.first > 0 {
                    assert_eq!(bucket_of(r.first - 1, buckets), b as usize - 1);
                }
            }
        }
    }

    #[test]
    fn the_hash_is_the_one_the_nfs_split_their_state_by() {
        let f = udp((0x0a00_0001, 1234), (0x0a00_0102, 80));
        let key = PartitionKey::five_tuple(braid_packet::flow::FiveTuple {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 1, 2),
            proto: 17,
            src_port: 1234,
            dst_port: 80,
        });
        assert_eq!(frame_hash(&f), Some(key.stable_hash()));
        let r = udp((0x0a00_0102, 80), (0x0a00_0001, 1234));
        assert_eq!(frame_hash(&r), Some(key.stable_hash()));
    }

    #[test]
    fn unhashable_frames_and_markers_follow_the_policy_and_are_counted() {
        let mut nf = steer("instances: 3\nbuckets: 4\ntable: [1, 1, 1, 1]\nunhashable: 2").unwrap();
        let arp = {
            let mut f = vec![0u8; 42];
            f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            f
        };
        let mut marker = vec![0u8; 60];
        marker[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        marker[14..22].copy_from_slice(b"BRAIDMRK");
        marker[30..32].copy_from_slice(&0u16.to_be_bytes());
        let mut bad_marker = marker.clone();
        bad_marker[30..32].copy_from_slice(&7u16.to_be_bytes());
        let frames = vec![arp, vec![1, 2, 3], marker, bad_marker, udp((1, 1), (2, 2))];
        assert_eq!(run(nf.as_mut(), 0, &frames), [3, 3, 1, 3, 2]);
        // From an instance: to the trunk, whatever it is.
        assert_eq!(run(nf.as_mut(), 2, &frames), [0; 5]);
        let st: SteerStats = nf.export_state().unwrap().decode("steer", STATE_VERSION).unwrap();
        assert_eq!(
            st,
            SteerStats { to_instance: vec![1, 1, 3], unhashable: 3, markers: 1, to_trunk: 5 }
        );
    }

    #[test]
    fn bad_parameters_are_refused_naming_the_field() {
        for (yaml, field) in [
            ("instances: 0", "instances"),
            ("instances: 65", "instances"),
            ("instances: 2\nbuckets: 100", "buckets"),
            ("instances: 2\nbuckets: 131072", "buckets"),
            ("instances: 2\nbuckets: 2\ntable: [0]", "table"),
            ("instances: 2\nbuckets: 2\ntable: [0, 2]", "table[1]"),
            ("instances: 2\nunhashable: 2", "unhashable"),
            ("instances: 2\nbogus: 1", ""),
        ] {
            let e = steer(yaml).err().unwrap_or_else(|| panic!("{yaml} accepted"));
            assert!(e.field == field || e.message.contains("bogus"), "{yaml}: {e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Both directions of every flow (UDP, TCP, ICMP echo, IPv6 UDP)
        /// leave by the same instance gate; and a new table moves exactly
        /// the flows of the buckets whose entry changed.
        #[test]
        fn both_directions_share_a_gate_and_a_table_change_moves_exactly_its_buckets(
            flows in proptest::collection::vec(
                (proptest::prelude::any::<u32>(), proptest::prelude::any::<u16>(),
                 proptest::prelude::any::<u32>(), proptest::prelude::any::<u16>(), 0u8..4),
                1..64),
            old in proptest::collection::vec(0u16..3, 16),
            new in proptest::collection::vec(0u16..3, 16),
        ) {
            let cfg = |t: &[u16]| format!("instances: 3\nbuckets: 16\ntable: {}", table_of(16, |b| t[b]));
            let mut a = steer(&cfg(&old)).unwrap();
            let mut b = steer(&cfg(&new)).unwrap();
            let mut fwd = Vec::new();
            let mut rev = Vec::new();
            for &(sa, sp, da, dp, kind) in &flows {
                let (s, d) = (Ipv4Addr::from(sa), Ipv4Addr::from(da));
                let (f, r) = match kind {
                    0 => (FrameSpec::udp((s, sp), (d, dp), 8), FrameSpec::udp((d, dp), (s, sp), 8)),
                    1 => (FrameSpec::tcp((s, sp), (d, dp), 0x02), FrameSpec::tcp((d, dp), (s, sp), 0x12)),
                    2 => (FrameSpec::icmp_echo(s, d, sp, 1), FrameSpec::icmp_echo(d, s, sp, 1)),
                    _ => {
                        let (s6, d6) = (std::net::Ipv6Addr::from(u128::from(sa) << 64 | 1), std::net::Ipv6Addr::from(u128::from(da) << 64 | 2));
                        fwd.push(Frame6Spec::udp((s6, sp), (d6, dp), 8).build());
                        rev.push(Frame6Spec::udp((d6, dp), (s6, sp), 8).build());
                        continue;
                    }
                };
                fwd.push(f.build());
                rev.push(r.build());
            }
            let ga = run(a.as_mut(), 0, &fwd);
            proptest::prop_assert_eq!(&ga, &run(a.as_mut(), 0, &rev));
            let gb = run(b.as_mut(), 0, &fwd);
            proptest::prop_assert_eq!(&gb, &run(b.as_mut(), 0, &rev));
            for (i, f) in fwd.iter().enumerate() {
                let bucket = bucket_of(frame_hash(f).unwrap(), 16);
                proptest::prop_assert_eq!(ga[i], old[bucket] + 1);
                proptest::prop_assert_eq!(gb[i], new[bucket] + 1);
                // Moved iff its bucket's entry changed.
                proptest::prop_assert_eq!(ga[i] != gb[i], old[bucket] != new[bucket]);
            }
        }
    }
}
