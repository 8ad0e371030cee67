//! `l2switch`: a VLAN-aware learning Ethernet switch over `ports` ports.
//!
//! The NF sees one batch stream; the ingress port of a frame is
//! `meta.in_port` and the switch writes the egress port into
//! `meta.out_port`. It learns `(vlan, source MAC) -> (port, last seen)`
//! from every frame with a unicast source, forwards frames to a known
//! unicast destination of the same VLAN to that port, and floods the rest
//! (broadcast, multicast, unknown or aged-out destinations): it clones the
//! frame once per other port that carries the VLAN, each copy with its own
//! `out_port`, in place of the original, so the order of the stream is
//! kept. Entries not refreshed within `aging_ms` are ignored and swept on
//! `tick`.
//!
//! The VLAN of a frame is the VID of its outer 802.1Q/802.1ad tag, or 0
//! for untagged and priority-tagged frames. Frames are forwarded as they
//! are (no tag is pushed or popped). With `vlans` set, port `i` carries
//! only the VLANs listed at `vlans[i]`: a frame arriving on a port that
//! does not carry its VLAN is dropped (`denied`), and floods go only to
//! ports that carry it.
//!
//! The table holds at most `max_entries`. When it is full, expired entries
//! are swept; if none has expired the new address is not learned (frames
//! to it keep being flooded, which is correct, only less efficient) and
//! `learn_refused` counts it. Existing entries are never evicted for new
//! ones, so a MAC-flooding host cannot push the legitimate stations out.

use crate::maglev::SeededMix;
use crate::statelet::MapStream;
use crate::Statelet;
use crate::{ConfigError, Encoding, FlowScope, FlowStream, ParamDoc, PartitionKey, StateError};
use crate::{Context, DropReason, NetworkFunction, NfClass, NfSpec, NfState, Placement};
use braid_packet::wire::{ethertype, EthernetFrame, MacAddr, VlanTag};
use braid_packet::{Batch, Packet};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

pub static SPEC: NfSpec = NfSpec {
    name: "l2switch",
    class: NfClass::Basic,
    placements: &[Placement::User],
    state: crate::StateKind::PerFlow(crate::FlowPartition::VlanMac),
    kernel: None,
    summary:
        "VLAN-aware learning switch: MAC learning with aging, flooding of unknown destinations",
    params: &[
        ParamDoc {
            name: "ports",
            kind: "u16, 2..=4096",
            default: None,
            help: "number of switch ports; meta.in_port/out_port index them",
        },
        ParamDoc {
            name: "aging_ms",
            kind: "u64 ms, >= 1",
            default: Some("300000"),
            help: "a learned address expires this long after its last frame",
        },
        ParamDoc {
            name: "max_entries",
            kind: "usize, >= 1",
            default: Some("8192"),
            help: "MAC table size; when full, new addresses are not learned",
        },
        ParamDoc {
            name: "vlans",
            kind: "list (one per port) of lists of VLAN IDs 0..=4095",
            default: Some("none (every port carries every VLAN)"),
            help: "VLAN membership per port; 0 is untagged",
        },
    ],
    build: |p| Ok(Box::new(L2Switch::new(crate::params::parse(p)?)?)),
};

fn default_aging_ms() -> u64 {
    300_000
}
fn default_max_entries() -> usize {
    8192
}

/// `l2switch` configuration.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub ports: u16,
    #[serde(default = "default_aging_ms")]
    pub aging_ms: u64,
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    #[serde(default)]
    pub vlans: Option<Vec<Vec<u16>>>,
}

/// A MAC table key: VLAN in the top 16 bits, MAC in the low 48.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MacKey(u64);

impl MacKey {
    fn new(vlan: u16, mac: &[u8]) -> MacKey {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&vlan.to_be_bytes());
        b[2..8].copy_from_slice(&mac[..6]);
        MacKey(u64::from_be_bytes(b))
    }
    fn vlan(self) -> u16 {
        (self.0 >> 48) as u16
    }
    fn mac(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }
}

impl Hash for MacKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Station {
    port: u16,
    last_seen_ns: u64,
}

/// One learned address, as exported.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LearnedEntry {
    pub vlan: u16,
    pub mac: [u8; 6],
    pub port: u16,
    pub last_seen_ns: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SwitchState {
    entries: Vec<LearnedEntry>,
    learn_refused: u64,
}

const STATE_VERSION: u32 = 1;

/// The stations of the entries in `state` (a statelet's), in order.
pub(crate) fn entry_keys(state: &NfState) -> Result<Vec<PartitionKey>, StateError> {
    let s: SwitchState = state.decode(SPEC.name, STATE_VERSION)?;
    Ok(s.entries.iter().map(|e| PartitionKey::station(e.vlan, e.mac)).collect())
}

/// The `l2switch` NF.
#[derive(Debug)]
pub struct L2Switch {
    ports: u16,
    aging_ns: u64,
    max_entries: usize,
    /// `members[port]` is a 4096-bit VLAN set, `None` when every port
    /// carries every VLAN.
    members: Option<Vec<[u64; 64]>>,
    table: HashMap<MacKey, Station, SeededMix>,
    learn_refused: u64,
    last_sweep_ns: u64,
    /// Live migration: stations whose entry changed, and the walk.
    stream: MapStream<MacKey>,
}

/// Where a frame goes.
enum Egress {
    Port(u16),
    Flood,
    Drop(DropReason),
}

impl L2Switch {
    pub fn new(cfg: Config) -> Result<L2Switch, ConfigError> {
        if !(2..=4096).contains(&cfg.ports) {
            return Err(ConfigError::new("ports", format!("{} is outside 2..=4096", cfg.ports)));
        }
        if cfg.aging_ms == 0 {
            return Err(ConfigError::new("aging_ms", "must be at least 1 ms"));
        }
        if cfg.max_entries == 0 {
            return Err(ConfigError::new("max_entries", "must be at least 1"));
        }
        let members = match &cfg.vlans {
            None => None,
            Some(v) => {
                if v.len() != cfg.ports as usize {
                    return Err(ConfigError::new(
                        "vlans",
                        format!("has {} lists, need one per port ({})", v.len(), cfg.ports),
                    ));
                }
                let mut sets = Vec::with_capacity(v.len());
                for (i, list) in v.iter().enumerate() {
                    let mut set = [0u64; 64];
                    for (j, &vid) in list.iter().enumerate() {
                        if vid > 4095 {
                            return Err(ConfigError::new(
                                format!("vlans[{i}][{j}]"),
                                format!("VLAN ID {vid} is outside 0..=4095"),
                            ));
                        }
                        set[vid as usize / 64] |= 1 << (vid % 64);
                    }
                    sets.push(set);
                }
                Some(sets)
            }
        };
        Ok(L2Switch {
            ports: cfg.ports,
            aging_ns: cfg.aging_ms.saturating_mul(1_000_000),
            max_entries: cfg.max_entries,
            members,
            table: HashMap::with_capacity_and_hasher(
                cfg.max_entries.min(1 << 16),
                SeededMix::random(),
            ),
            learn_refused: 0,
            last_sweep_ns: 0,
            stream: MapStream::default(),
        })
    }

    #[inline]
    fn carries(&self, port: u16, vlan: u16) -> bool {
        match &self.members {
            None => true,
            Some(m) => m[port as usize][vlan as usize / 64] & (1 << (vlan % 64)) != 0,
        }
    }

    #[inline]
    fn fresh(&self, s: &Station, now: u64) -> bool {
        now.saturating_sub(s.last_seen_ns) < self.aging_ns
    }

    /// Addresses the switch could not learn because its table was full.
    pub fn learn_refused(&self) -> u64 {
        self.learn_refused
    }

    /// Number of entries in the table (fresh or not yet swept).
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// The port a `(vlan, mac)` is learned on, if fresh at `now_ns`.
    pub fn lookup(&self, vlan: u16, mac: MacAddr, now_ns: u64) -> Option<u16> {
        let s = self.table.get(&MacKey::new(vlan, &mac.0))?;
        self.fresh(s, now_ns).then_some(s.port)
    }

    /// Remove entries not refreshed within the aging time.
    pub fn sweep(&mut self, now_ns: u64) {
        let aging = self.aging_ns;
        let stream = &mut self.stream;
        self.table.retain(|k, s| {
            let keep = now_ns.saturating_sub(s.last_seen_ns) < aging;
            if !keep {
                stream.note(*k);
            }
            keep
        });
        self.last_sweep_ns = now_ns;
    }

    fn learn(&mut self, key: MacKey, port: u16, now: u64) {
        self.stream.note(key);
        if let Some(s) = self.table.get_mut(&key) {
            // Refresh, and follow a station that moved to another port.
            s.port = port;
            s.last_seen_ns = now;
            return;
        }
        if self.table.len() >= self.max_entries {
            // Sweep at most once per millisecond so a flood of new source
            // addresses cannot make every frame scan the whole table.
            if now.saturating_sub(self.last_sweep_ns) >= 1_000_000 {
                self.sweep(now);
            }
            if self.table.len() >= self.max_entries {
                self.learn_refused += 1;
                return;
            }
        }
        self.table.insert(key, Station { port, last_seen_ns: now });
    }

    fn decide(&mut self, p: &Packet, now: u64) -> (Egress, u16) {
        let frame = p.data();
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return (Egress::Drop(DropReason::Malformed), 0);
        };
        let in_port = p.meta.in_port;
        if in_port >= self.ports {
            return (Egress::Drop(DropReason::Other), 0);
        }
        let et = eth.ethertype();
        let vlan = if et == ethertype::VLAN || et == ethertype::QINQ {
            match VlanTag::new_checked(&frame[14..]) {
                Ok(tag) => tag.vid(),
                Err(_) => return (Egress::Drop(DropReason::Malformed), 0),
            }
        } else {
            0
        };
        if !self.carries(in_port, vlan) {
            return (Egress::Drop(DropReason::Denied), vlan);
        }
        let src = eth.src_addr();
        if src.is_unicast() && src != MacAddr::ZERO {
            self.learn(MacKey::new(vlan, &src.0), in_port, now);
        }
        let dst = eth.dst_addr();
        if dst.is_multicast() {
            return (Egress::Flood, vlan);
        }
        match self.table.get(&MacKey::new(vlan, &dst.0)) {
            Some(s) if self.fresh(s, now) => {
                if s.port == in_port {
                    // The destination is on the segment the frame came
                    // from: a switch filters it.
                    (Egress::Drop(DropReason::NoRoute), vlan)
                } else if !self.carries(s.port, vlan) {
                    (Egress::Drop(DropReason::Denied), vlan)
                } else {
                    (Egress::Port(s.port), vlan)
                }
            }
            _ => (Egress::Flood, vlan),
        }
    }
}

impl NetworkFunction for L2Switch {
    fn spec(&self) -> &'static NfSpec {
        &SPEC
    }

    fn keeps_lengths(&self) -> bool {
        true
    }

    fn gates(&self) -> crate::Gates {
        crate::Gates::Switch(self.ports)
    }

    fn process(&mut self, batch: &mut Batch, cx: &mut Context<'_>) {
        let now = cx.now_ns;
        let input = batch.take();
        for mut p in input {
            let (egress, vlan) = self.decide(&p, now);
            match egress {
                Egress::Port(port) => {
                    p.meta.out_port = port;
                    batch.push(p);
                }
                Egress::Drop(r) => cx.drop_packet(r),
                Egress::Flood => {
                    let in_port = p.meta.in_port;
                    let targets: Vec<u16> = (0..self.ports)
                        .filter(|&o| o != in_port && self.carries(o, vlan))
                        .collect();
                    let Some((&last, rest)) = targets.split_last() else {
                        cx.drop_packet(DropReason::NoRoute);
                        continue;
                    };
                    for &o in rest {
                        let mut c = p.clone();
                        c.meta.out_port = o;
                        batch.push(c);
                        cx.counters.packets_created += 1;
                    }
                    p.meta.out_port = last;
                    batch.push(p);
                }
            }
        }
    }

    fn tick(&mut self, _out: &mut Batch, cx: &mut Context<'_>) {
        self.sweep(cx.now_ns);
    }

    fn wants_tick(&self) -> bool {
        !self.table.is_empty()
    }

    fn export_scoped(&self, scope: &FlowScope, encoding: Encoding) -> Result<NfState, StateError> {
        let mut entries: Vec<LearnedEntry> = self
            .table
            .iter()
            .filter(|(k, _)| scope.contains(&PartitionKey::station(k.vlan(), k.mac())))
            .map(|(k, s)| LearnedEntry {
                vlan: k.vlan(),
                mac: k.mac(),
                port: s.port,
                last_seen_ns: s.last_seen_ns,
            })
            .collect();
        entries.sort_by_key(|e| (e.vlan, e.mac));
        // `learn_refused` is a statistic of this instance, not station
        // state: only the whole export carries it.
        let learn_refused = if *scope == FlowScope::All { self.learn_refused } else { 0 };
        let state = SwitchState { entries, learn_refused };
        Ok(NfState::encode_as(encoding, SPEC.name, STATE_VERSION, &state))
    }

    fn import_state(&mut self, state: &NfState) -> Result<(), StateError> {
        let s: SwitchState = state.decode(SPEC.name, STATE_VERSION)?;
        if s.entries.len() > self.max_entries {
            return Err(StateError::Corrupt(format!(
                "{} entries exceed max_entries {}",
                s.entries.len(),
                self.max_entries
            )));
        }
        self.check_entries(&s.entries)?;
        let mut table =
            HashMap::with_capacity_and_hasher(s.entries.len(), self.table.hasher().clone());
        table.extend(s.entries.iter().map(Self::table_entry));
        self.table = table;
        self.learn_refused = s.learn_refused;
        Ok(())
    }

    /// Adds the snapshot's stations to those learned (a station learned
    /// here too takes the imported port and time); keeps this instance's
    /// `learn_refused` count.
    fn import_merge(&mut self, state: &NfState) -> Result<(), StateError> {
        let s: SwitchState = state.decode(SPEC.name, STATE_VERSION)?;
        self.check_entries(&s.entries)?;
        let added = s
            .entries
            .iter()
            .filter(|e| !self.table.contains_key(&MacKey::new(e.vlan, &e.mac)))
            .count();
        let total = self.table.len() + added;
        if total > self.max_entries {
            return Err(StateError::Capacity { total, max: self.max_entries });
        }
        self.table.extend(s.entries.iter().map(Self::table_entry));
        Ok(())
    }

    fn flow_stream(&mut self) -> Option<&mut dyn FlowStream> {
        Some(self)
    }
}

/// Streaming the learned stations during a live migration (see
/// [`crate::statelet`]).
impl FlowStream for L2Switch {
    fn record_changes(&mut self, on: bool) {
        self.stream.set(on.then(|| self.table.keys().copied().collect()));
    }

    fn take_changes(&mut self, out: &mut Vec<PartitionKey>) {
        self.stream.take(out, |k| PartitionKey::station(k.vlan(), k.mac()));
    }

    fn changes_waiting(&self) -> usize {
        self.stream.waiting()
    }

    fn export_from(&self, cursor: &mut usize, max: usize) -> Option<Statelet> {
        let keys = self.stream.walk(cursor, max)?;
        let keys: Vec<PartitionKey> =
            keys.iter().map(|k| PartitionKey::station(k.vlan(), k.mac())).collect();
        Some(self.export_flows(&keys))
    }

    fn export_flows(&self, keys: &[PartitionKey]) -> Statelet {
        let entries = keys
            .iter()
            .filter_map(|k| k.station_parts())
            .filter_map(|(vlan, mac)| {
                let s = self.table.get(&MacKey::new(vlan, &mac))?;
                Some(LearnedEntry { vlan, mac, port: s.port, last_seen_ns: s.last_seen_ns })
            })
            .collect();
        let state = SwitchState { entries, learn_refused: 0 };
        let state = NfState::encode_as(Encoding::Binary, SPEC.name, STATE_VERSION, &state);
        Statelet { keys: keys.to_vec(), state }
    }

    fn install(&mut self, statelet: &Statelet) -> Result<(), StateError> {
        let s: SwitchState = statelet.state.decode(SPEC.name, STATE_VERSION)?;
        self.check_entries(&s.entries)?;
        let key_set = statelet.key_set();
        let named = |e: &LearnedEntry| key_set.contains(&PartitionKey::station(e.vlan, e.mac));
        if let Some(e) = s.entries.iter().find(|e| !named(e)) {
            return Err(StateError::Corrupt(format!(
                "statelet entry VLAN {} MAC {:02x?} is not one of the stations it names",
                e.vlan, e.mac
            )));
        }
        let cleared: Vec<MacKey> = statelet
            .keys
            .iter()
            .filter_map(|k| k.station_parts())
            .map(|(vlan, mac)| MacKey::new(vlan, &mac))
            .filter(|k| self.table.contains_key(k))
            .collect();
        let total = self.table.len() - cleared.len() + s.entries.len();
        if total > self.max_entries {
            return Err(StateError::Capacity { total, max: self.max_entries });
        }
        for k in &cleared {
            self.table.remove(k);
        }
        self.table.extend(s.entries.iter().map(Self::table_entry));
        Ok(())
    }

    fn held_keys(&self, out: &mut Vec<PartitionKey>) {
        out.extend(self.table.keys().map(|k| PartitionKey::station(k.vlan(), k.mac())));
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

impl L2Switch {
    /// Every entry names a port and VLAN of this switch.
    fn check_entries(&self, entries: &[LearnedEntry]) -> Result<(), StateError> {
        match entries.iter().enumerate().find(|(_, e)| e.port >= self.ports || e.vlan > 4095) {
            Some((i, e)) => Err(StateError::Corrupt(format!(
                "entry {i}: port {} / VLAN {} outside this switch ({} ports)",
                e.port, e.vlan, self.ports
            ))),
            None => Ok(()),
        }
    }

    fn table_entry(e: &LearnedEntry) -> (MacKey, Station) {
        (MacKey::new(e.vlan, &e.mac), Station { port: e.port, last_seen_ns: e.last_seen_ns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, Params};
    use proptest::prelude::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, n])
    }

    /// A frame from `src` to `dst`, tagged with `vlan` if given.
    fn frame(dst: MacAddr, src: MacAddr, vlan: Option<u16>) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        if let Some(v) = vlan {
            f.extend_from_slice(&ethertype::VLAN.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(&[0u8; 46]);
        f
    }

    fn switch(yaml: &str) -> L2Switch {
        let p: Params = serde_yaml_ng::from_str(yaml).unwrap();
        L2Switch::new(crate::params::parse(&p).unwrap()).unwrap()
    }

    /// Send one frame in on `port` at time `now`; return (out_port, frame).
    fn send(sw: &mut L2Switch, f: &[u8], port: u16, now: u64) -> (Vec<u16>, Counters) {
        let mut p = Packet::from_bytes(f);
        p.meta.in_port = port;
        let mut b = Batch::new();
        b.push(p);
        let mut c = Counters::default();
        sw.process(&mut b, &mut Context::new(now, &mut c));
        for q in b.iter() {
            assert_eq!(q.data(), f, "frames are forwarded unchanged");
        }
        (b.iter().map(|q| q.meta.out_port).collect(), c)
    }

    #[test]
    fn learns_floods_forwards_and_filters() {
        let mut sw = switch("ports: 4");
        // Unknown destination: flooded to every other port.
        let (out, c) = send(&mut sw, &frame(mac(2), mac(1), None), 0, 10);
        assert_eq!(out, vec![1, 2, 3]);
        assert_eq!(c.packets_created, 2);
        // The reply is unicast to the learned port only.
        let (out, _) = send(&mut sw, &frame(mac(1), mac(2), None), 2, 20);
        assert_eq!(out, vec![0]);
        let (out, _) = send(&mut sw, &frame(mac(2), mac(1), None), 0, 30);
        assert_eq!(out, vec![2]);
        // Broadcast floods even when learned.
        let (out, _) = send(&mut sw, &frame(MacAddr::BROADCAST, mac(1), None), 0, 40);
        assert_eq!(out, vec![1, 2, 3]);
        // Destination on the ingress segment: filtered.
        let (out, c) = send(&mut sw, &frame(mac(1), mac(3), None), 0, 50);
        assert!(out.is_empty());
        assert_eq!(c.dropped(DropReason::NoRoute), 1);
        // Station move: mac(1) now appears on port 3.
        send(&mut sw, &frame(MacAddr::BROADCAST, mac(1), None), 3, 60);
        assert_eq!(sw.lookup(0, mac(1), 60), Some(3));
    }

    #[test]
    fn entries_age_out() {
        let mut sw = switch("{ports: 3, aging_ms: 10}");
        send(&mut sw, &frame(MacAddr::BROADCAST, mac(1), None), 1, 0);
        assert_eq!(sw.lookup(0, mac(1), 9_999_999), Some(1));
        assert_eq!(sw.lookup(0, mac(1), 10_000_000), None);
        // Aged out: flooded again.
        let (out, _) = send(&mut sw, &frame(mac(1), mac(2), None), 0, 10_000_000);
        assert_eq!(out, vec![1, 2]);
        let mut out = Batch::new();
        let mut c = Counters::default();
        sw.tick(&mut out, &mut Context::new(30_000_000, &mut c));
        assert_eq!(sw.table_len(), 0);
    }

    #[test]
    fn vlans_separate_tables_and_floods() {
        let mut sw = switch("{ports: 4, vlans: [[0, 10, 20], [10], [20], [0, 10]]}");
        // VLAN 10 from port 0 floods to ports 1 and 3 only.
        let (out, _) = send(&mut sw, &frame(mac(9), mac(1), Some(10)), 0, 1);
        assert_eq!(out, vec![1, 3]);
        // Same MAC in VLAN 20 is a different station.
        assert_eq!(sw.lookup(20, mac(1), 1), None);
        assert_eq!(sw.lookup(10, mac(1), 1), Some(0));
        // VLAN 20 frame arriving on port 1 (not a member): denied.
        let (out, c) = send(&mut sw, &frame(mac(1), mac(5), Some(20)), 1, 2);
        assert!(out.is_empty());
        assert_eq!(c.dropped(DropReason::Denied), 1);
        // Priority-tagged (VID 0) counts as untagged.
        let (out, _) = send(&mut sw, &frame(mac(7), mac(6), Some(0x6000)), 3, 3);
        assert_eq!(out, vec![0]);
        // A tagged frame cut inside its tag is malformed.
        let f = frame(mac(1), mac(2), Some(10));
        let (out, c) = send(&mut sw, &f[..16], 0, 4);
        assert!(out.is_empty());
        assert_eq!(c.dropped(DropReason::Malformed), 1);
    }

    #[test]
    fn full_table_refuses_new_addresses_but_keeps_forwarding() {
        let mut sw = switch("{ports: 2, max_entries: 2, aging_ms: 1000}");
        for n in 1..=3 {
            send(&mut sw, &frame(MacAddr::BROADCAST, mac(n), None), 0, n as u64);
        }
        assert_eq!(sw.table_len(), 2);
        assert_eq!(sw.learn_refused(), 1);
        // Frames to the unlearned station are flooded.
        let (out, _) = send(&mut sw, &frame(mac(3), mac(1), None), 1, 10);
        assert_eq!(out, vec![0]);
        // Once the old entries expire, new addresses are learned again.
        send(&mut sw, &frame(MacAddr::BROADCAST, mac(4), None), 1, 2_000_000_000);
        assert_eq!(sw.lookup(0, mac(4), 2_000_000_000), Some(1));
    }

    #[test]
    fn garbage_and_bad_ports_are_dropped_with_reasons() {
        let mut sw = switch("ports: 2");
        let (out, c) = send(&mut sw, &[1, 2, 3], 0, 1);
        assert!(out.is_empty());
        assert_eq!(c.dropped(DropReason::Malformed), 1);
        let (out, c) = send(&mut sw, &frame(mac(1), mac(2), None), 7, 1);
        assert!(out.is_empty());
        assert_eq!(c.dropped(DropReason::Other), 1);
        // Multicast and zero sources are not learned.
        send(&mut sw, &frame(mac(1), MacAddr::BROADCAST, None), 0, 1);
        send(&mut sw, &frame(mac(1), MacAddr::ZERO, None), 0, 1);
        assert_eq!(sw.table_len(), 0);
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = |y: &str| {
            let p: Params = serde_yaml_ng::from_str(y).unwrap();
            (SPEC.build)(&p).err().unwrap()
        };
        assert_eq!(e("ports: 1").field, "ports");
        assert_eq!(e("{ports: 2, aging_ms: 0}").field, "aging_ms");
        assert_eq!(e("{ports: 2, vlans: [[1]]}").field, "vlans");
        assert_eq!(e("{ports: 2, vlans: [[1], [2, 5000]]}").field, "vlans[1][1]");
        assert!(e("{}").message.contains("ports"));
    }

    #[test]
    fn state_round_trips() {
        let mut a = switch("ports: 3");
        for n in 1..=5u8 {
            send(&mut a, &frame(MacAddr::BROADCAST, mac(n), Some(n as u16)), n as u16 % 3, 5);
        }
        let s = a.export_state().unwrap();
        let mut b = switch("ports: 3");
        b.import_state(&s).unwrap();
        assert_eq!(b.export_state().unwrap(), s);
        for n in 1..=5u8 {
            assert_eq!(b.lookup(n as u16, mac(n), 6), Some(n as u16 % 3));
        }
        let mut small = switch("ports: 2");
        assert!(matches!(small.import_state(&s), Err(StateError::Corrupt(_))));
        assert_eq!(small.table_len(), 0);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(f in prop_oneof![proptest::collection::vec(any::<u8>(), 0..1600), braid_packet::strategy::any_frame()],
                                    port in 0u16..4) {
            let mut sw = switch("{ports: 3, max_entries: 4}");
            let mut p = Packet::from_bytes(&f);
            p.meta.in_port = port;
            let mut b = Batch::new();
            b.push(p);
            let mut c = Counters::default();
            sw.process(&mut b, &mut Context::new(1, &mut c));
            // Each frame is dropped, forwarded once, or flooded to 2 ports.
            prop_assert!(c.dropped_total() == 1 && b.is_empty() || (1..=2).contains(&b.len()));
            prop_assert!(b.iter().all(|q| q.meta.out_port < 3 && q.meta.out_port != port));
        }
    }
}
