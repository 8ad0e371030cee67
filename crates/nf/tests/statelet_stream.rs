//! Streaming per-flow state while the NF keeps processing
//! (`braid_nf::statelet`): the ordered stream of snapshot chunks and
//! statelets, installed in order into a fresh instance, reproduces the
//! source's state exactly, whatever the traffic, the moment of the freeze
//! and the chunk size; and the destination then treats every existing
//! flow exactly as the source does.

use std::net::{Ipv4Addr, Ipv6Addr};

use braid_nf::conntrack::{ConnSnapshot, SNAPSHOT_VERSION};
use braid_nf::statelet::dedup_keys;
use braid_nf::{
    CompactStatelet, Context, Counters, NetworkFunction, PartitionKey, StateError, Statelet,
};
use braid_packet::envelope;
use braid_packet::wire::build::{Frame6Spec, FrameSpec};
use braid_packet::{Batch, Packet};
use proptest::prelude::*;

const NAT: &str = "external_ip: 203.0.113.1\ninternal: [10.0.0.0/8]\nmax_flows: 4096\ntimeouts: { udp: 2, tcp_established: 2, tcp_transitory: 1 }";
const FIREWALL: &str =
    "default: allow\nmax_flows: 4096\ntimeouts: { udp: 2, tcp_established: 2, tcp_transitory: 1 }";

const LB: &str = "vip: 10.1.0.1\ntable_size: 251\nidle_timeout_ms: 2000\nmax_connections: 4096\nbackends: [{ip: 10.2.0.1}, {ip: 10.2.0.2}, {ip: 10.2.0.3}]";
const L2: &str = "ports: 4\naging_ms: 2000\nmax_entries: 4096";
/// An IPv6 VIP (test kind `loadbalancer6`).
const LB6: &str = "vip: '2001:db8:1::1'\ntable_size: 251\nidle_timeout_ms: 2000\nmax_connections: 4096\nbackends: [{ip: '2001:db8:2::1'}, {ip: '2001:db8:2::2'}, {ip: '2001:db8:2::3'}]";

fn build(kind: &str) -> Box<dyn NetworkFunction> {
    let (kind, yaml) = match kind {
        "nat" => (kind, NAT),
        "firewall" => (kind, FIREWALL),
        "loadbalancer" => (kind, LB),
        "loadbalancer6" => ("loadbalancer", LB6),
        _ => (kind, L2),
    };
    braid_nf::build(kind, &serde_yaml_ng::from_str(yaml).unwrap()).unwrap()
}

/// One step of generated traffic.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// A packet from inside host `host` port `port` to server `server`.
    Out { host: u8, port: u16, server: u8, tcp: bool, flags: u8 },
    /// A reply to the `n`-th output frame seen so far (modulo).
    Reply { n: usize },
    /// Time moves on by `ms` and the NF ticks (entries can expire).
    Tick { ms: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..30, 1000u16..1006, 1u8..4, any::<bool>(), prop::sample::select(vec![0x02u8, 0x10, 0x11, 0x04]))
            .prop_map(|(host, port, server, tcp, flags)| Op::Out { host, port, server, tcp, flags }),
        3 => any::<usize>().prop_map(|n| Op::Reply { n }),
        1 => (1u16..1500).prop_map(|ms| Op::Tick { ms }),
    ]
}

fn out_frame(kind: &str, host: u8, port: u16, server: u8, tcp: bool, flags: u8) -> Packet {
    let inside = (Ipv4Addr::new(10, 0, 0, host), port);
    if kind == "l2switch" {
        // A station (server, host) sending from port `server % 4`.
        let mut spec = FrameSpec::udp(inside, (Ipv4Addr::new(10, 0, 0, 1), 9), 8);
        spec.src_mac = braid_packet::wire::MacAddr([2, 0, 0, 0, server, host]);
        spec.dst_mac = braid_packet::wire::MacAddr([2, 0, 0, 0, host % 3, server]);
        let mut p = spec.packet();
        p.meta.in_port = u16::from(server % 4);
        return p;
    }
    if kind == "loadbalancer6" {
        let client = (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(host)), port);
        let vip = (Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1), 80 + u16::from(server));
        let f =
            if tcp { Frame6Spec::tcp(client, vip, flags) } else { Frame6Spec::udp(client, vip, 8) };
        return Packet::from_bytes(&f.build());
    }
    let outside = match kind {
        "loadbalancer" => (Ipv4Addr::new(10, 1, 0, 1), 80 + u16::from(server)),
        _ => (Ipv4Addr::new(198, 51, 100, server), 443),
    };
    let f = if tcp {
        FrameSpec::tcp(inside, outside, flags)
    } else {
        FrameSpec::udp(inside, outside, 8)
    };
    Packet::from_bytes(&f.build())
}

/// The reply to an output frame: addresses and ports swapped.
fn reply_to(out: &[u8]) -> Option<Packet> {
    let p6 = envelope::parse_dual(out);
    if p6.l3 == envelope::L3Kind::Ipv6 {
        let t = p6.ip6.tuple();
        let (src, dst) = ((t.dst, t.dst_port), (t.src, t.src_port));
        let f = match t.proto {
            6 => Frame6Spec::tcp(src, dst, 0x10),
            17 => Frame6Spec::udp(src, dst, 8),
            _ => return None,
        };
        return Some(Packet::from_bytes(&f.build()));
    }
    let p = envelope::parse(out);
    let t = p.ipv4()?.tuple();
    let (src, dst) = ((t.dst, t.dst_port), (t.src, t.src_port));
    let f = match t.proto {
        6 => FrameSpec::tcp(src, dst, 0x10),
        17 => FrameSpec::udp(src, dst, 8),
        _ => return None,
    };
    Some(Packet::from_bytes(&f.build()))
}

/// Both directions' frames of the NF so far.
struct Driver {
    kind: &'static str,
    now: u64,
    outputs: Vec<Vec<u8>>,
    counters: Counters,
}

impl Driver {
    fn new(kind: &'static str) -> Driver {
        Driver { kind, now: 1_000_000_000, outputs: Vec::new(), counters: Counters::default() }
    }

    /// Run one op through `nf`; returns the output frames.
    fn step(&mut self, nf: &mut dyn NetworkFunction, op: Op) -> Vec<Vec<u8>> {
        self.now += 10_000;
        let mut cx = Context::new(self.now, &mut self.counters);
        let mut batch = Batch::new();
        match op {
            Op::Out { host, port, server, tcp, flags } => {
                batch.push(out_frame(self.kind, host, port, server, tcp, flags))
            }
            Op::Reply { n } => {
                if self.outputs.is_empty() || self.kind == "l2switch" {
                    return Vec::new();
                }
                match reply_to(&self.outputs[n % self.outputs.len()]) {
                    Some(p) => batch.push(p),
                    None => return Vec::new(),
                }
            }
            Op::Tick { ms } => {
                self.now += u64::from(ms) * 1_000_000;
                let mut cx = Context::new(self.now, &mut self.counters);
                nf.tick(&mut batch, &mut cx);
                return Vec::new();
            }
        }
        nf.process(&mut batch, &mut cx);
        let out: Vec<Vec<u8>> = batch.iter().map(|p| p.data().to_vec()).collect();
        self.outputs.extend(out.iter().cloned());
        out
    }
}

/// The state with connections in a canonical order (the hash-map NFs
/// export theirs sorted already).
fn canonical(nf: &dyn NetworkFunction) -> (u64, Vec<String>) {
    let s = nf.export_state().expect("stateful");
    if !matches!(nf.spec().name, "nat" | "firewall") {
        return (0, vec![String::from_utf8(s.data).unwrap()]);
    }
    let snap: ConnSnapshot = s.decode(nf.spec().name, SNAPSHOT_VERSION).unwrap();
    let mut conns: Vec<String> = snap.conns.iter().map(|c| format!("{c:?}")).collect();
    conns.sort();
    (snap.clock, conns)
}

/// Run `ops` through a source NF of `kind`; freeze it before op
/// `freeze_at`, stream a chunk of `chunk` entries and the batch's
/// statelet after every op (as a Worker does between batches), finish the
/// snapshot after the last op, install everything in order into a fresh
/// instance. Returns (source, destination, statelets, driver).
fn migrate(
    kind: &'static str,
    ops: &[Op],
    freeze_at: usize,
    chunk: usize,
) -> (Box<dyn NetworkFunction>, Box<dyn NetworkFunction>, Vec<Statelet>, Driver) {
    let mut src = build(kind);
    let mut drv = Driver::new(kind);
    let mut stream = Vec::new();
    let mut cursor = 0usize;
    let mut changed: Vec<PartitionKey> = Vec::new();
    let freeze_at = freeze_at.min(ops.len());
    let mut snapshot_done = false;
    for (i, op) in ops.iter().enumerate() {
        if i == freeze_at {
            src.flow_stream().unwrap().record_changes(true);
        }
        drv.step(src.as_mut(), *op);
        if i >= freeze_at {
            let fs = src.flow_stream().unwrap();
            fs.take_changes(&mut changed);
            dedup_keys(&mut changed);
            if !changed.is_empty() {
                stream.push(fs.export_flows(&changed));
                changed.clear();
            }
            if !snapshot_done {
                match fs.export_from(&mut cursor, chunk) {
                    Some(s) => stream.push(s),
                    None => snapshot_done = true,
                }
            }
        }
    }
    let fs = src.flow_stream().unwrap();
    if freeze_at == ops.len() {
        fs.record_changes(true);
    }
    while let Some(s) = fs.export_from(&mut cursor, chunk) {
        stream.push(s);
    }
    fs.take_changes(&mut changed);
    dedup_keys(&mut changed);
    stream.push(fs.export_flows(&changed));
    fs.record_changes(false);

    // The stream crosses the wire: each statelet as the migration
    // protocol serializes it (without its entries' keys).
    let stream: Vec<Statelet> = stream.iter().map(through_the_wire).collect();
    let mut dst = build(kind);
    let ds = dst.flow_stream().unwrap();
    for s in &stream {
        ds.install(s).unwrap();
    }
    ds.finish_install().unwrap();
    (src, dst, stream, drv)
}

/// `s` as the migration protocol sends it (postcard of its compact form)
/// and read back: the same entries and the same flows named (the keys
/// may come back in another order: the entries' first).
fn through_the_wire(s: &Statelet) -> Statelet {
    let bytes =
        postcard::to_allocvec(&s.clone().compact().expect("a statelet of its own NF")).unwrap();
    let back = postcard::from_bytes::<CompactStatelet>(&bytes).unwrap().expand().unwrap();
    assert_eq!(back.state, s.state);
    let (mut sent, mut got) = (s.keys.clone(), back.keys.clone());
    sent.sort_unstable();
    got.sort_unstable();
    assert_eq!(sent, got, "the same flows named");
    back
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn ordered_stream_reproduces_the_state_and_the_behaviour(
        kind in prop::sample::select(vec!["nat", "firewall", "loadbalancer", "loadbalancer6", "l2switch"]),
        ops in prop::collection::vec(op(), 1..160),
        freeze_frac in 0.0f64..1.0,
        chunk in 1usize..20,
    ) {
        let nat = kind == "nat";
        let freeze_at = (ops.len() as f64 * freeze_frac) as usize;
        let (mut src, mut dst, _, drv) = migrate(kind, &ops, freeze_at, chunk);
        let (sc, sconns) = canonical(src.as_ref());
        let (dc, dconns) = canonical(dst.as_ref());
        prop_assert_eq!(&sconns, &dconns);
        prop_assert_eq!(sc, dc);
        prop_assert_eq!(src.flow_stream().unwrap().len(), dst.flow_stream().unwrap().len());

        // Every flow the source held continues the same on the
        // destination: replies to the outputs so far give the same bytes
        // and drops.
        let mut a = Driver { kind, now: drv.now, outputs: drv.outputs.clone(), counters: Counters::default() };
        let mut b = Driver { kind, now: drv.now, outputs: drv.outputs.clone(), counters: Counters::default() };
        for n in 0..drv.outputs.len().min(64) {
            // NAT hands out a random port to a new mapping: continue only
            // with what cannot create one (answers to translated frames).
            if nat && drv.outputs[n][26..30] != [203, 0, 113, 1] {
                continue;
            }
            let oa = a.step(src.as_mut(), Op::Reply { n });
            let ob = b.step(dst.as_mut(), Op::Reply { n });
            prop_assert_eq!(oa, ob);
        }
        prop_assert_eq!(a.counters.drop_breakdown(), b.counters.drop_breakdown());
    }
}

#[test]
fn freeze_costs_nothing_until_changes_and_thaw_forgets() {
    let mut nf = build("nat");
    let mut drv = Driver::new("nat");
    let fs = nf.flow_stream().unwrap();
    fs.record_changes(true);
    let mut keys = Vec::new();
    fs.take_changes(&mut keys);
    assert!(keys.is_empty());
    drv.step(nf.as_mut(), Op::Out { host: 1, port: 1000, server: 1, tcp: false, flags: 0 });
    drv.step(nf.as_mut(), Op::Out { host: 1, port: 1000, server: 1, tcp: false, flags: 0 });
    let fs = nf.flow_stream().unwrap();
    fs.take_changes(&mut keys);
    assert_eq!(keys.len(), 1, "an insert and a hit of the same flow: recorded once");
    assert_eq!(fs.changes_waiting(), 0, "taken");
    fs.record_changes(false);
    drv.step(nf.as_mut(), Op::Out { host: 2, port: 1000, server: 1, tcp: false, flags: 0 });
    let fs = nf.flow_stream().unwrap();
    let mut after = Vec::new();
    fs.take_changes(&mut after);
    assert!(after.is_empty(), "a thawed table records nothing");
}

#[test]
fn a_tombstone_removes_the_flow_and_a_foreign_statelet_changes_nothing() {
    let ops: Vec<Op> =
        (1..=5).map(|h| Op::Out { host: h, port: 1000, server: 1, tcp: false, flags: 0 }).collect();
    let (mut src, mut dst, _, mut drv) = migrate("nat", &ops, 0, 2);
    assert_eq!(dst.flow_stream().unwrap().len(), 5);
    // Let every mapping expire on the source, record it, send the
    // tombstones.
    let fs = src.flow_stream().unwrap();
    fs.record_changes(true);
    drv.step(src.as_mut(), Op::Tick { ms: 1400 });
    drv.step(src.as_mut(), Op::Tick { ms: 1400 });
    let fs = src.flow_stream().unwrap();
    let mut keys = Vec::new();
    fs.take_changes(&mut keys);
    dedup_keys(&mut keys);
    assert_eq!(keys.len(), 5);
    let tomb = fs.export_flows(&keys);
    assert_eq!(fs.len(), 0);
    dst.flow_stream().unwrap().install(&tomb).unwrap();
    assert_eq!(dst.flow_stream().unwrap().len(), 0);

    // A firewall statelet into a NAT, and a corrupted one: refused, no
    // change.
    let (_, mut fw_dst, fw_stream, _) = migrate("firewall", &ops, 0, 2);
    let mut nat = build("nat");
    let err = nat.flow_stream().unwrap().install(&fw_stream[0]).unwrap_err();
    assert!(matches!(err, StateError::WrongKind { .. }), "{err}");
    let mut bad = fw_stream[0].clone();
    let last = bad.state.data.len() - 1;
    bad.state.data[last] ^= 0xff;
    let before = canonical(fw_dst.as_ref());
    let err = fw_dst.flow_stream().unwrap().install(&bad).unwrap_err();
    assert!(matches!(err, StateError::Checksum { .. }), "{err}");
    assert_eq!(canonical(fw_dst.as_ref()), before);
}

/// On the wire a statelet carries its entries and only the flows it
/// clears: a snapshot chunk carries no key at all. A stream that names an
/// entry's flow among the cleared ones, or of an NF kind without
/// statelets, is refused as it is read; a statelet whose entry is of a
/// flow it does not name cannot be written.
#[test]
fn a_statelet_on_the_wire_carries_only_the_flows_it_clears() {
    let ops: Vec<Op> = (1..=20)
        .map(|h| Op::Out {
            host: h,
            port: 1000 + u16::from(h % 5),
            server: 1,
            tcp: h % 2 == 0,
            flags: 0x02,
        })
        .collect();
    let mut nat = build("nat");
    let mut drv = Driver::new("nat");
    for op in &ops {
        drv.step(nat.as_mut(), *op);
    }
    let fs = nat.flow_stream().unwrap();
    let chunk = fs.export_from(&mut 0, 20).unwrap();
    assert_eq!(chunk.keys.len(), 20);
    assert!(chunk.cleared().unwrap().is_empty(), "a chunk's keys are its entries'");
    let compact = postcard::to_allocvec(&chunk.clone().compact().unwrap()).unwrap();
    let full = postcard::to_allocvec(&chunk).unwrap();
    let state = postcard::to_allocvec(&chunk.state).unwrap();
    // The entries and one byte for the empty list of cleared flows.
    assert_eq!(compact.len(), state.len() + 1);
    assert!(
        full.len() - compact.len() >= 20 * 12,
        "{} bytes of keys left out",
        full.len() - compact.len()
    );

    // A statelet of two held flows and one that holds nothing.
    let mut named = chunk.keys[..2].to_vec();
    let gone = PartitionKey::five_tuple(braid_packet::flow::FiveTuple {
        src: Ipv4Addr::new(10, 9, 9, 9),
        dst: Ipv4Addr::new(192, 0, 2, 9),
        src_port: 9,
        dst_port: 9,
        proto: 17,
    });
    named.push(gone);
    let s = fs.export_flows(&named);
    assert_eq!(s.cleared().unwrap(), vec![gone]);
    let back = through_the_wire(&s);
    assert_eq!(back.keys.last(), Some(&gone));

    // Refused on reading: an entry's flow among the cleared ones.
    let forged = CompactStatelet { state: s.state.clone(), cleared: vec![named[0]] };
    let err = forged.expand().unwrap_err();
    assert!(err.to_string().contains("also holds an entry"), "{err}");
    // ... the state of an NF kind without statelets.
    let meter = braid_nf::NfState::encode("meter", 1, &0u64);
    let err = CompactStatelet { state: meter, cleared: Vec::new() }.expand().unwrap_err();
    assert!(err.to_string().contains("`meter`"), "{err}");
    // ... entries that do not decode.
    let mut bad = chunk.state.clone();
    let last = bad.data.len() - 1;
    bad.data[last] ^= 0xff;
    let err = CompactStatelet { state: bad, cleared: Vec::new() }.expand().unwrap_err();
    assert!(matches!(err, StateError::Checksum { .. }), "{err}");
    // Refused on writing: an entry of a flow the statelet does not name.
    let lying = Statelet { keys: vec![gone], state: chunk.state.clone() };
    let err = lying.compact().unwrap_err();
    assert!(err.to_string().contains("does not name"), "{err}");
}
