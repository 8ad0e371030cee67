//! The `loadbalancer`'s exported state and statelets, byte for byte: an
//! IPv4 VIP's (format version 1) and an IPv6 VIP's (format version 2), in
//! JSON and binary. The expected encodings were produced by the code of
//! commit 8739ff8 (separate IPv4 and IPv6 state code) and are pinned here
//! so that a rewrite of the state code cannot change what another
//! instance, an older build or a stored snapshot reads. Each pinned state
//! is also imported (and each statelet installed) into a fresh instance,
//! which must export it back unchanged: old streams stay readable.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use braid_nf::{
    Context, Counters, Encoding, FlowScope, HashRange, NetworkFunction, NfState, PartitionKey,
    Statelet,
};
use braid_packet::flow::{FiveTuple, FiveTuple6};
use braid_packet::wire::build::{Frame6Spec, FrameSpec};
use braid_packet::wire::tcp_flags;
use braid_packet::{envelope, Batch, Packet};

const LB4: &str = "{vip: 10.0.0.100, port: 80, table_size: 251, max_connections: 3, backends: [{ip: 10.0.1.1}, {ip: 10.0.1.2, weight: 2}, {ip: 10.0.1.3}]}";
const LB6: &str = "{vip: '2001:db8::100', port: 80, table_size: 251, max_connections: 3, backends: [{ip: '2001:db8:1::1'}, {ip: '2001:db8:1::2', weight: 2}, {ip: '2001:db8:1::3'}]}";

fn build(yaml: &str) -> Box<dyn NetworkFunction> {
    braid_nf::build("loadbalancer", &serde_yaml_ng::from_str(yaml).unwrap()).unwrap()
}

/// Run `frames` through `nf` at `now`; the frames that come out.
fn run(nf: &mut dyn NetworkFunction, frames: &[Vec<u8>], now: u64) -> Vec<Vec<u8>> {
    let mut batch: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
    let mut counters = Counters::default();
    nf.process(&mut batch, &mut Context::new(now, &mut counters));
    assert_eq!(counters.dropped_total(), 0);
    batch.iter().map(|p| p.data().to_vec()).collect()
}

/// The (source, destination) addresses of a frame of either family.
fn addrs(frame: &[u8]) -> (IpAddr, IpAddr) {
    let parsed = envelope::parse_dual(frame);
    match parsed.ipv6() {
        Some(ip) => (ip.src_addr().into(), ip.dst_addr().into()),
        None => (parsed.ip.tuple().src.into(), parsed.ip.tuple().dst.into()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one load balancer exports after a fixed run of traffic.
struct Exports {
    all_json: NfState,
    all_binary: NfState,
    half_binary: NfState,
    statelet: Statelet,
}

/// Four flows to the VIP at t = 1 µs (UDP, TCP, ICMP echo and one more
/// UDP flow that overflows `max_connections: 3`), then the first flow's
/// backend answers at t = 2 µs; export the whole state, a hash-range half
/// and a statelet of the flows `statelet_keys` (built from the client
/// ends).
fn exports(
    yaml: &str,
    forward: &[Vec<u8>],
    reply: impl Fn(IpAddr) -> Vec<u8>,
    statelet_keys: &[PartitionKey],
) -> Exports {
    let mut nf = build(yaml);
    let out = run(nf.as_mut(), forward, 1_000);
    let backend = addrs(&out[0]).1;
    let answered = run(nf.as_mut(), &[reply(backend)], 2_000);
    assert_ne!(addrs(&answered[0]).0, backend, "the reply's source went back to the VIP");
    let half = FlowScope::HashRange(HashRange::share(0, 2));
    Exports {
        all_json: nf.export_scoped(&FlowScope::All, Encoding::Json).unwrap(),
        all_binary: nf.export_scoped(&FlowScope::All, Encoding::Binary).unwrap(),
        half_binary: nf.export_scoped(&half, Encoding::Binary).unwrap(),
        statelet: nf.flow_stream().unwrap().export_flows(statelet_keys),
    }
}

fn exports4() -> Exports {
    let vip = Ipv4Addr::new(10, 0, 0, 100);
    let client = |i: u8| Ipv4Addr::new(192, 168, 0, i);
    let forward = vec![
        FrameSpec::udp((client(1), 1001), (vip, 80), 8).build(),
        FrameSpec::tcp((client(2), 1002), (vip, 80), tcp_flags::SYN).build(),
        FrameSpec::icmp_echo(client(3), vip, 77, 1).build(),
        FrameSpec::udp((client(4), 1004), (vip, 80), 8).build(),
    ];
    let reply = |backend: IpAddr| {
        let IpAddr::V4(b) = backend else { panic!("{backend}") };
        FrameSpec::udp((b, 80), (client(1), 1001), 8).build()
    };
    let tuple = |src: Ipv4Addr, src_port, dst, dst_port| {
        PartitionKey::five_tuple(FiveTuple { src, dst, proto: 17, src_port, dst_port })
    };
    let keys = [
        tuple(client(1), 1001, vip, 80),
        // Not held (the overflowed flow): a tombstone.
        tuple(client(4), 1004, vip, 80),
        // Not a flow of the VIP.
        tuple(client(5), 1005, Ipv4Addr::new(10, 9, 9, 9), 80),
    ];
    exports(LB4, &forward, reply, &keys)
}

fn exports6() -> Exports {
    let vip: Ipv6Addr = "2001:db8::100".parse().unwrap();
    let client = |i: u16| Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, i);
    let forward = vec![
        Frame6Spec::udp((client(1), 1001), (vip, 80), 8).build(),
        Frame6Spec::tcp((client(2), 1002), (vip, 80), tcp_flags::SYN).build(),
        Frame6Spec::icmp_echo(client(3), vip, 77, 1).build(),
        Frame6Spec::udp((client(4), 1004), (vip, 80), 8).build(),
    ];
    let reply = |backend: IpAddr| {
        let IpAddr::V6(b) = backend else { panic!("{backend}") };
        Frame6Spec::udp((b, 80), (client(1), 1001), 8).build()
    };
    let tuple = |src: Ipv6Addr, src_port, dst, dst_port| {
        PartitionKey::five_tuple6(FiveTuple6 { src, dst, proto: 17, src_port, dst_port })
    };
    let keys = [
        tuple(client(1), 1001, vip, 80),
        tuple(client(4), 1004, vip, 80),
        tuple(client(5), 1005, "2001:db8:9::9".parse().unwrap(), 80),
    ];
    exports(LB6, &forward, reply, &keys)
}

/// Every export of `got` against the pinned encodings; then the pinned
/// states imported and the statelet installed into fresh instances give
/// the same bytes back.
fn check(yaml: &str, version: u32, got: &Exports, pinned: &Pinned) {
    for s in [&got.all_json, &got.all_binary, &got.half_binary, &got.statelet.state] {
        assert_eq!((s.kind.as_str(), s.version), ("loadbalancer", version));
    }
    assert_eq!(String::from_utf8(got.all_json.data.clone()).unwrap(), pinned.all_json);
    assert_eq!(hex(&got.all_binary.data), pinned.all_binary);
    assert_eq!(hex(&got.half_binary.data), pinned.half_binary);
    assert_eq!(hex(&got.statelet.state.data), pinned.statelet);

    for s in [&got.all_json, &got.all_binary] {
        let mut fresh = build(yaml);
        fresh.import_state(s).unwrap();
        assert_eq!(&fresh.export_scoped(&FlowScope::All, s.encoding).unwrap(), s);
    }
    let mut fresh = build(yaml);
    fresh.import_merge(&got.half_binary).unwrap();
    let half = FlowScope::HashRange(HashRange::share(0, 2));
    assert_eq!(fresh.export_scoped(&half, Encoding::Binary).unwrap(), got.half_binary);
    let mut fresh = build(yaml);
    let stream = fresh.flow_stream().unwrap();
    stream.install(&got.statelet).unwrap();
    assert_eq!(stream.len(), 1);
    assert_eq!(stream.export_flows(&got.statelet.keys), got.statelet);
}

struct Pinned {
    all_json: &'static str,
    all_binary: &'static str,
    half_binary: &'static str,
    statelet: &'static str,
}

const PINNED4: Pinned = Pinned {
    all_json: r#"{"vip":"10.0.0.100","backends":[{"ip":"10.0.1.1","weight":1},{"ip":"10.0.1.2","weight":2},{"ip":"10.0.1.3","weight":1}],"conns":[{"client":"192.168.0.1","client_port":1001,"vip_port":80,"proto":17,"backend":"10.0.1.2","last_seen_ns":2000},{"client":"192.168.0.2","client_port":1002,"vip_port":80,"proto":6,"backend":"10.0.1.1","last_seen_ns":1000},{"client":"192.168.0.3","client_port":77,"vip_port":77,"proto":1,"backend":"10.0.1.1","last_seen_ns":1000}],"conn_overflow":1}"#,
    all_binary: "0a000064030a000101010a000102020a0001030103c0a80001e90750110a000102d00fc0a80002ea0750060a000101e807c0a800034d4d010a000101e80701a43b51f2",
    half_binary: "0a000064030a000101010a000102020a0001030101c0a80002ea0750060a000101e807001a68c6be",
    statelet: "0a0000640001c0a80001e90750110a000102d00f00f06c41e5",
};

const PINNED6: Pinned = Pinned {
    all_json: r#"{"vip":"2001:db8::100","backends":[{"ip":"2001:db8:1::1","weight":1},{"ip":"2001:db8:1::2","weight":2},{"ip":"2001:db8:1::3","weight":1}],"conns":[{"client":"2001:db8:ff::1","client_port":1001,"vip_port":80,"proto":17,"backend":"2001:db8:1::2","last_seen_ns":2000},{"client":"2001:db8:ff::2","client_port":1002,"vip_port":80,"proto":6,"backend":"2001:db8:1::2","last_seen_ns":1000},{"client":"2001:db8:ff::3","client_port":77,"vip_port":77,"proto":58,"backend":"2001:db8:1::1","last_seen_ns":1000}],"conn_overflow":1}"#,
    all_binary: "20010db80000000000000000000001000320010db80001000000000000000000010120010db80001000000000000000000020220010db8000100000000000000000003010320010db800ff00000000000000000001e907501120010db8000100000000000000000002d00f20010db800ff00000000000000000002ea07500620010db8000100000000000000000002e80720010db800ff000000000000000000034d4d3a20010db8000100000000000000000001e80701d175496b",
    half_binary: "20010db80000000000000000000001000320010db80001000000000000000000010120010db80001000000000000000000020220010db8000100000000000000000003010220010db800ff00000000000000000001e907501120010db8000100000000000000000002d00f20010db800ff00000000000000000002ea07500620010db8000100000000000000000002e807007b7a02c0",
    statelet: "20010db8000000000000000000000100000120010db800ff00000000000000000001e907501120010db8000100000000000000000002d00f0056976e53",
};

#[test]
fn ipv4_state_and_statelet_encodings_are_pinned() {
    check(LB4, 1, &exports4(), &PINNED4);
}

#[test]
fn ipv6_state_and_statelet_encodings_are_pinned() {
    check(LB6, 2, &exports6(), &PINNED6);
}
