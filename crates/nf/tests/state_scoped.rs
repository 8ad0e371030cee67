//! Scoped export and merging import of the per-flow NFs (`nat`, `firewall`,
//! `loadbalancer`, `l2switch`), the binary encoding, and what whole-state
//! and stateless NFs answer.
//!
//! The state comes from real frames run through the NFs. The central
//! property: exporting the flows of a scope A and of its complement from
//! one instance, and merging both into a fresh instance, gives the
//! original state, in either encoding and whatever A is (a set of flow
//! keys or a range of the stable flow hash).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use braid_nf::conntrack::{ConnSnapshot, SNAPSHOT_VERSION};
use braid_nf::{
    Context, Counters, Encoding, FlowScope, HashRange, NetworkFunction, NfState, PartitionKey,
    StateError, StateKind,
};
use braid_packet::flow::FiveTuple;
use braid_packet::wire::build::FrameSpec;
use braid_packet::wire::MacAddr;
use braid_packet::{Batch, Packet};
use proptest::prelude::*;

const NAT: &str = "external_ip: 203.0.113.1\ninternal: [10.0.0.0/8]\nmax_flows: 64";
const FIREWALL: &str = "default: allow\nmax_flows: 64";
const LB: &str =
    "vip: 10.1.0.1\ntable_size: 251\nbackends: [{ip: 10.2.0.1}, {ip: 10.2.0.2}, {ip: 10.2.0.3}]";
const L2: &str = "ports: 4";
const VIP: u32 = 0x0a01_0001;

fn build(kind: &str, yaml: &str) -> Box<dyn NetworkFunction> {
    braid_nf::build(kind, &serde_yaml_ng::from_str(yaml).unwrap()).unwrap()
}

/// One generated flow: addresses and ports drawn from small ranges so that
/// flows sometimes coincide.
#[derive(Clone, Copy, Debug)]
struct Flow {
    host: u8,
    port: u16,
    server: u8,
    tcp: bool,
    /// Also send the reply direction (firewall) / a second frame later.
    reply: bool,
    at_ms: u16,
}

fn flow() -> impl Strategy<Value = Flow> {
    (1u8..40, 1000u16..1010, 1u8..4, any::<bool>(), any::<bool>(), 0u16..2000).prop_map(
        |(host, port, server, tcp, reply, at_ms)| Flow { host, port, server, tcp, reply, at_ms },
    )
}

fn frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), tcp: bool) -> Vec<u8> {
    if tcp {
        FrameSpec::tcp(src, dst, 0x02).build()
    } else {
        FrameSpec::udp(src, dst, 8).build()
    }
}

/// The frames (with their time) that give `kind` state for `flows`, and
/// the partition key of each flow's state.
fn traffic(kind: &str, flows: &[Flow]) -> (Vec<(u64, Packet)>, Vec<PartitionKey>) {
    let mut frames = Vec::new();
    let mut keys = Vec::new();
    for f in flows {
        let at = 1_000_000_000 + u64::from(f.at_ms) * 1_000_000;
        let inside = (Ipv4Addr::new(10, 0, 0, f.host), f.port);
        let proto = if f.tcp { 6 } else { 17 };
        let tuple = |src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)| FiveTuple {
            src: src.0,
            dst: dst.0,
            proto,
            src_port: src.1,
            dst_port: dst.1,
        };
        match kind {
            "nat" | "firewall" => {
                let outside = (Ipv4Addr::new(198, 51, 100, f.server), 443);
                frames.push((at, Packet::from_bytes(&frame(inside, outside, f.tcp))));
                if f.reply && kind == "firewall" {
                    frames.push((at + 1, Packet::from_bytes(&frame(outside, inside, f.tcp))));
                }
                keys.push(PartitionKey::five_tuple(tuple(inside, outside)));
            }
            "loadbalancer" => {
                let vip = (Ipv4Addr::from(VIP), 80 + u16::from(f.server));
                frames.push((at, Packet::from_bytes(&frame(inside, vip, f.tcp))));
                keys.push(PartitionKey::five_tuple(tuple(inside, vip)));
            }
            "l2switch" => {
                let mut spec = FrameSpec::udp(inside, (Ipv4Addr::new(10, 0, 0, 1), 9), 8);
                let mac = [2, 0, 0, 0, f.server, f.host];
                spec.src_mac = MacAddr(mac);
                spec.vlan = f.tcp.then_some(7);
                let vlan = if f.tcp { 7 } else { 0 };
                let mut p = spec.packet();
                p.meta.in_port = u16::from(f.server);
                frames.push((at, p));
                keys.push(PartitionKey::station(vlan, mac));
            }
            other => panic!("{other}"),
        }
    }
    frames.sort_by_key(|(at, _)| *at);
    keys.sort();
    keys.dedup();
    (frames, keys)
}

fn run(nf: &mut dyn NetworkFunction, frames: &[(u64, Packet)]) {
    let mut counters = Counters::default();
    for (at, p) in frames {
        let mut b: Batch = std::iter::once(p.clone()).collect();
        nf.process(&mut b, &mut Context::new(*at, &mut counters));
    }
}

/// The state in a form where equal states compare equal: conntrack NFs
/// list connections in table slot order, which depends on insertion order.
fn canonical(nf: &dyn NetworkFunction) -> String {
    let s = nf.export_state().expect("stateful");
    match nf.spec().name {
        "nat" | "firewall" => {
            let mut snap: ConnSnapshot = s.decode(nf.spec().name, SNAPSHOT_VERSION).unwrap();
            snap.conns.sort_by_key(|c| format!("{:?}", c.orig));
            serde_json::to_string(&snap).unwrap()
        }
        _ => String::from_utf8(s.data).unwrap(),
    }
}

fn entries(kind: &str, nf: &dyn NetworkFunction) -> usize {
    let s = nf.export_state().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&s.data).unwrap();
    let list = match kind {
        "nat" | "firewall" | "loadbalancer" => &v["conns"],
        _ => &v["entries"],
    };
    list.as_array().unwrap().len()
}

const PER_FLOW: [(&str, &str); 4] =
    [("nat", NAT), ("firewall", FIREWALL), ("loadbalancer", LB), ("l2switch", L2)];

fn encoding(binary: bool) -> Encoding {
    if binary {
        Encoding::Binary
    } else {
        Encoding::Json
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// export(A) + export(complement of A), merged into a fresh instance,
    /// is the original state, for A a key set and A a hash range.
    #[test]
    fn scope_and_complement_merge_back_to_the_original(
        flows in proptest::collection::vec(flow(), 0..40),
        pick in any::<u64>(),
        split in any::<u64>(),
        by_keys: bool,
        binary: bool,
        complement_first: bool,
    ) {
        for (kind, yaml) in PER_FLOW {
            let mut a = build(kind, yaml);
            prop_assert!(matches!(a.spec().state, StateKind::PerFlow(_)));
            let (frames, keys) = traffic(kind, &flows);
            run(a.as_mut(), &frames);
            let (scope, rest) = if by_keys {
                let (inside, outside): (Vec<_>, Vec<_>) =
                    keys.iter().enumerate().partition(|(i, _)| (pick >> (i % 64)) & 1 == 1);
                let set = |v: Vec<(usize, &PartitionKey)>| {
                    FlowScope::Keys(v.into_iter().map(|(_, k)| *k).collect::<HashSet<_>>())
                };
                (set(inside), set(outside))
            } else if split == u64::MAX {
                (FlowScope::All, FlowScope::Keys(HashSet::new()))
            } else {
                (
                    FlowScope::HashRange(HashRange { first: 0, last: split }),
                    FlowScope::HashRange(HashRange { first: split + 1, last: u64::MAX }),
                )
            };
            let first = a.export_scoped(&scope, encoding(binary)).unwrap();
            let second = a.export_scoped(&rest, encoding(binary)).unwrap();
            let (first, second) = if complement_first { (second, first) } else { (first, second) };
            let mut b = build(kind, yaml);
            b.import_merge(&first).map_err(|e| TestCaseError::fail(format!("{kind}: {e}")))?;
            b.import_merge(&second).map_err(|e| TestCaseError::fail(format!("{kind}: {e}")))?;
            prop_assert_eq!(canonical(b.as_ref()), canonical(a.as_ref()), "{}", kind);
            // The two parts do not overlap: their sizes add up.
            let mut c = build(kind, yaml);
            c.import_state(&first).unwrap();
            let n1 = entries(kind, c.as_ref());
            c.import_state(&second).unwrap();
            prop_assert_eq!(n1 + entries(kind, c.as_ref()), entries(kind, a.as_ref()), "{}", kind);
        }
    }

    /// The same state through JSON and through the binary encoding (and its
    /// wire form) imports to the same state, the original's.
    #[test]
    fn json_and_binary_round_trips_are_equal(flows in proptest::collection::vec(flow(), 0..40)) {
        for (kind, yaml) in PER_FLOW {
            let mut a = build(kind, yaml);
            run(a.as_mut(), &traffic(kind, &flows).0);
            let json = a.export_scoped(&FlowScope::All, Encoding::Json).unwrap();
            let bin = a.export_scoped(&FlowScope::All, Encoding::Binary).unwrap();
            prop_assert_eq!(bin.encoding, Encoding::Binary);
            let bin = NfState::from_bytes(&bin.to_bytes()).unwrap();
            let (mut j, mut b) = (build(kind, yaml), build(kind, yaml));
            j.import_state(&json).unwrap();
            b.import_state(&bin).unwrap();
            prop_assert_eq!(canonical(j.as_ref()), canonical(a.as_ref()), "{}", kind);
            prop_assert_eq!(canonical(b.as_ref()), canonical(a.as_ref()), "{}", kind);
            if !flows.is_empty() {
                prop_assert!(bin.data.len() < json.data.len(), "{}: binary not smaller", kind);
            }
        }
    }

    /// A binary state with any byte changed, or cut short, is refused by
    /// both imports and the importer keeps what it held.
    #[test]
    fn damaged_binary_is_refused_and_changes_nothing(
        flows in proptest::collection::vec(flow(), 1..30),
        held in proptest::collection::vec(flow(), 1..10),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        for (kind, yaml) in PER_FLOW {
            let mut a = build(kind, yaml);
            run(a.as_mut(), &traffic(kind, &flows).0);
            let bytes = a.export_scoped(&FlowScope::All, Encoding::Binary).unwrap().to_bytes();
            let mut dst = build(kind, yaml);
            run(dst.as_mut(), &traffic(kind, &held).0);
            let before = canonical(dst.as_ref());
            let mut flipped = bytes.clone();
            let i = at.index(bytes.len());
            flipped[i] ^= flip;
            for damaged in [&flipped[..], &bytes[..cut.index(bytes.len())]] {
                if let Ok(state) = NfState::from_bytes(damaged) {
                    prop_assert!(dst.import_merge(&state).is_err(), "{}: merge took byte {} ^ {}", kind, i, flip);
                    prop_assert!(dst.import_state(&state).is_err(), "{}: import took byte {} ^ {}", kind, i, flip);
                }
                prop_assert_eq!(&canonical(dst.as_ref()), &before, "{}", kind);
            }
        }
    }
}

#[test]
fn a_merge_that_conflicts_or_overflows_changes_nothing() {
    // Two NATs map different inside hosts to the same external port pool:
    // merging one's mappings into the other collides on ports (the pools
    // are random, so with 60 mappings each in a 64-port range they must).
    let yaml = "external_ip: 203.0.113.1\ninternal: [10.0.0.0/8]\nports: \"2000-2063\"";
    let flows = |host: u8| -> Vec<Flow> {
        (0..60)
            .map(|i| Flow { host, port: 1000 + i, server: 1, tcp: false, reply: false, at_ms: i })
            .collect()
    };
    let (mut a, mut b) = (build("nat", yaml), build("nat", yaml));
    run(a.as_mut(), &traffic("nat", &flows(1)).0);
    run(b.as_mut(), &traffic("nat", &flows(2)).0);
    let before = canonical(b.as_ref());
    let e = b.import_merge(&a.export_scoped(&FlowScope::All, Encoding::Binary).unwrap());
    assert!(matches!(e, Err(StateError::Conflict(_)) | Err(StateError::Capacity { .. })), "{e:?}");
    assert_eq!(canonical(b.as_ref()), before);

    // The load balancer and the switch refuse to exceed their table size.
    let mut lb = build("loadbalancer", &format!("{LB}\nmax_connections: 5"));
    let few: Vec<Flow> = (0..5)
        .map(|i| Flow { host: 1, port: 1000 + i, server: 1, tcp: true, reply: false, at_ms: i })
        .collect();
    run(lb.as_mut(), &traffic("loadbalancer", &few).0);
    let mut other = build("loadbalancer", LB);
    let more: Vec<Flow> = few.iter().map(|f| Flow { host: 2, ..*f }).collect();
    run(other.as_mut(), &traffic("loadbalancer", &more).0);
    let before = canonical(lb.as_ref());
    let e = lb.import_merge(&other.export_scoped(&FlowScope::All, Encoding::Binary).unwrap());
    assert!(matches!(e, Err(StateError::Capacity { total: 10, max: 5 })), "{e:?}");
    assert_eq!(canonical(lb.as_ref()), before);
    // Re-importing its own flows is no growth: accepted, state unchanged.
    lb.import_merge(&lb.export_scoped(&FlowScope::All, Encoding::Json).unwrap()).unwrap();
    assert_eq!(canonical(lb.as_ref()), before);

    // A state of another kind is refused by a merge as by a replace.
    let fw = build("firewall", FIREWALL).export_scoped(&FlowScope::All, Encoding::Binary).unwrap();
    assert!(matches!(lb.import_merge(&fw), Err(StateError::WrongKind { .. })));
}

#[test]
fn merged_connections_keep_their_age_on_the_importers_clock() {
    // The importer already holds a connection and its clock is 5 s behind
    // the exporter's; an imported connection idle for 100 ms at export
    // must be idle for 100 ms on the importer's clock, not 5.1 s.
    let one = |host: u8, at_ms: u16| Flow {
        host,
        port: 1000,
        server: 1,
        tcp: false,
        reply: false,
        at_ms,
    };
    let mut exporter = build("firewall", FIREWALL);
    let (frames, _) = traffic("firewall", &[one(1, 0)]);
    let late: Vec<(u64, Packet)> =
        frames.iter().map(|(t, p)| (t + 5_000_000_000, p.clone())).collect();
    run(exporter.as_mut(), &late);
    // Let the exporter's clock run on 100 ms with a packet of another flow.
    let (frames, _) = traffic("firewall", &[one(2, 100)]);
    let late2: Vec<(u64, Packet)> =
        frames.iter().map(|(t, p)| (t + 5_000_000_000, p.clone())).collect();
    run(exporter.as_mut(), &late2);
    let mut importer = build("firewall", FIREWALL);
    run(importer.as_mut(), &traffic("firewall", &[one(3, 100)]).0);
    let scope = FlowScope::Keys(traffic("firewall", &[one(1, 0)]).1.into_iter().collect());
    importer.import_merge(&exporter.export_scoped(&scope, Encoding::Binary).unwrap()).unwrap();
    let s = importer.export_state().unwrap();
    let snap: ConnSnapshot = s.decode("firewall", SNAPSHOT_VERSION).unwrap();
    assert_eq!(snap.conns.len(), 2);
    let imported = snap.conns.iter().find(|c| c.orig.src == 0x0a00_0001).unwrap();
    assert_eq!(snap.clock - imported.last_seen, 100_000_000);
}

#[test]
fn whole_state_and_stateless_nfs_answer_scoped_requests_clearly() {
    let key = PartitionKey::station(1, [2, 0, 0, 0, 0, 1]);
    let some = FlowScope::Keys(std::iter::once(key).collect());
    let gcm = "mode: gcm\nkey: 000102030405060708090a0b0c0d0e0f";
    for (kind, yaml) in [
        ("meter", "cir: 1000000\ncbs: 3000"),
        ("encrypt", gcm),
        ("decrypt", gcm),
        ("loss", "rate: 0.5\nseed: 3"),
        ("nc-encode", ""),
        ("nc-recode", ""),
        ("nc-decode", ""),
    ] {
        let mut nf = build(kind, yaml);
        assert_eq!(nf.spec().state, StateKind::Whole, "{kind}");
        assert!(
            matches!(nf.export_scoped(&some, Encoding::Binary), Err(StateError::NotPerFlow { .. })),
            "{kind}"
        );
        let json = nf.export_state().unwrap_or_else(|| panic!("{kind} exports"));
        let bin = nf.export_scoped(&FlowScope::All, Encoding::Binary).unwrap();
        assert!(
            matches!(nf.import_merge(&bin), Err(StateError::MergeUnsupported { .. })),
            "{kind}"
        );
        let mut other = build(kind, yaml);
        other.import_state(&bin).unwrap();
        assert_eq!(other.export_state().unwrap(), json, "{kind}: binary round trip");
    }
    for kind in ["fwd", "ats", "router", "xor"] {
        let spec = braid_nf::find(kind).unwrap();
        assert_eq!(spec.state, StateKind::None, "{kind}");
    }
    let mut fwd = build("fwd", "");
    assert!(fwd.export_state().is_none());
    assert!(matches!(
        fwd.export_scoped(&FlowScope::All, Encoding::Json),
        Err(StateError::Stateless)
    ));
    let any = build("meter", "cir: 1000000\ncbs: 3000").export_state().unwrap();
    assert!(matches!(fwd.import_merge(&any), Err(StateError::Stateless)));
}

#[test]
fn encrypt_continues_the_exporters_nonce_sequence() {
    let yaml = "mode: gcm\nkey: 000102030405060708090a0b0c0d0e0f\nkey_id: 3";
    let mut a = build("encrypt", yaml);
    let frames: Vec<(u64, Packet)> = (0..5)
        .map(|i| {
            (
                i,
                Packet::from_bytes(&frame(
                    (Ipv4Addr::new(10, 0, 0, 1), 9),
                    (Ipv4Addr::new(10, 0, 0, 2), 9),
                    false,
                )),
            )
        })
        .collect();
    run(a.as_mut(), &frames);
    let mut b = build("encrypt", yaml);
    b.import_state(&a.export_state().unwrap()).unwrap();
    // Both would now write the same next header: salt and sequence 5.
    let next = |nf: &mut Box<dyn NetworkFunction>| {
        let mut batch: Batch = std::iter::once(frames[0].1.clone()).collect();
        nf.process(&mut batch, &mut Context::new(9, &mut Counters::default()));
        batch.iter().next().unwrap().data()[42..58].to_vec()
    };
    assert_eq!(next(&mut b), next(&mut a));
    let other_key = build("encrypt", "mode: gcm\nkey: 000102030405060708090a0b0c0d0e0f\nkey_id: 4");
    let e = {
        let mut o = other_key;
        o.import_state(&a.export_state().unwrap()).unwrap_err()
    };
    assert!(e.to_string().contains("key_id 3"), "{e}");
}
