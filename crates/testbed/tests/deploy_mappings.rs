//! A chain with `router` and `l2switch` gives the same output deployed on
//! the testbed as offline, in every mapping (issue #9, "a test per
//! mapping"): the gates of a user-space group are the sides of its host,
//! so the router's choice (`meta.out_port`) and the switch's are honoured
//! the same way whether the NFs share a host or not.
//!
//! The chain: `l2switch` → `router` → `firewall` (connection tracking), on
//! AF_XDP ports.
//! - `hosts` (distributed) mapping: one NF per host on a 3-NF-host bed;
//! - `compact` mapping: the three NFs as one group on a 1-NF-host bed.
//!
//! The same crafted frames are sent from the client and the server by
//! AF_PACKET sockets and captured at the other end; offline, the same
//! chain runs them through a `Graph` in this thread. Every IPv4 frame
//! that arrives must equal the offline output from the ethertype on
//! (addresses are each hop's own), in order, per side. The traffic
//! covers: a routed request (TTL decremented), a destination without a
//! route (dropped, answered by an ICMP destination unreachable), a TTL-1
//! request answered by the router's ICMP time exceeded, both BACK towards
//! the client (the router's gate 0), the answer to
//! the first request (let in by the firewall's connection), and a flow the
//! server starts (dropped by the firewall). Needs root; skips otherwise.

mod common;

use braid_dataplane::Graph;
use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::{netns, Port};
use braid_packet::wire::build::FrameSpec;
use braid_packet::wire::MacAddr;
use braid_packet::Batch;
use braid_testbed::deploy::{deploy, Mapping, NfOnHost, UserIo, Where};
use braid_testbed::{netns_name, Options};
use common::{assert_nothing_left, bed_with, skip};
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 71, 1, 1);
const ROUTER_MAC: &str = "02:00:00:00:71:fe";

/// The server's address on a bed with `nf_hosts` NF hosts.
fn server_ip(nf_hosts: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 71, nf_hosts as u8 + 1, 2)
}

/// (name, kind, YAML parameters) of the chain, for a bed with `nf_hosts`.
fn chain(nf_hosts: usize) -> Vec<(&'static str, &'static str, String)> {
    let s = nf_hosts + 1;
    vec![
        ("sw", "l2switch", "{ ports: 2 }".to_string()),
        (
            "rt",
            "router",
            format!(
                "{{ mac: \"{ROUTER_MAC}\", ip: 10.71.99.1, routes: [\
                 {{ prefix: 10.71.1.0/24, next_hop_mac: \"02:00:00:00:71:01\", port: 0 }}, \
                 {{ prefix: 10.71.{s}.0/24, next_hop_mac: \"02:00:00:00:71:02\", port: 1 }}] }}"
            ),
        ),
        (
            "fw",
            "firewall",
            "{ rules: [{ action: allow, src: 10.71.1.0/24 }], default: drop }".to_string(),
        ),
    ]
}

fn params(yaml: &str) -> braid_nf::Params {
    serde_yaml_ng::from_str(yaml).unwrap()
}

/// The frames the client sends, then the frames the server sends; the
/// Ethernet addresses are those of the link each enters by.
fn traffic(nf_hosts: usize, client: [MacAddr; 2], server: [MacAddr; 2]) -> [Vec<Vec<u8>>; 2] {
    let srv = server_ip(nf_hosts);
    let frame = |macs: [MacAddr; 2], src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), ttl: u8| {
        let mut f = FrameSpec::udp(src, dst, 16);
        (f.src_mac, f.dst_mac, f.ttl) = (macs[0], macs[1], ttl);
        f.build()
    };
    let mut from_client = Vec::new();
    let mut from_server = Vec::new();
    for i in 0..3u16 {
        // Routed to the server (TTL 64 -> 63).
        from_client.push(frame(client, (CLIENT, 5000), (srv, 6000), 64));
        // No route: dropped by the router, which answers ICMP destination
        // unreachable back to the client.
        from_client.push(frame(client, (CLIENT, 5001), (Ipv4Addr::new(10, 99, 0, 1), 6000), 64));
        // TTL 1: the router answers ICMP time exceeded back to the client.
        from_client.push(frame(client, (CLIENT, 5002 + i), (srv, 6002), 1));
    }
    for _ in 0..3 {
        // The answer: the firewall's connection lets it in.
        from_server.push(frame(server, (srv, 6000), (CLIENT, 5000), 64));
        // A flow the server starts: dropped by the firewall.
        from_server.push(frame(server, (srv, 6001), (CLIENT, 5003), 64));
    }
    [from_client, from_server]
}

/// The chain run offline in one thread, one frame per push as the
/// deployed ports deliver them; what leaves by side 0 (towards the
/// client) and side 1 (towards the server).
fn offline(nf_hosts: usize, traffic: &[Vec<Vec<u8>>; 2]) -> [Vec<Vec<u8>>; 2] {
    let nfs = chain(nf_hosts)
        .into_iter()
        .map(|(name, kind, yaml)| {
            (name.to_string(), braid_nf::build(kind, &params(&yaml)).unwrap())
        })
        .collect();
    let mut g = Graph::chain(nfs, 2, 0, 1).unwrap();
    let mut out = [Batch::new(), Batch::new()];
    for (side, frames) in traffic.iter().enumerate() {
        let to = g.entry(side as u16, 1 - side);
        for f in frames {
            let mut b: Batch = [braid_packet::Packet::from_bytes(f)].into_iter().collect();
            g.push(to, &mut b, braid_nf::monotonic_ns(), &mut out);
        }
    }
    out.map(|b| b.iter().map(|p| p.data().to_vec()).collect())
}

fn mac(ns: &str, dev: &str) -> MacAddr {
    netns::mac_addr(Some(ns), dev).unwrap().parse().unwrap()
}

fn open(ns: &str, dev: &str) -> AfPacketPort {
    let mut cfg = AfPacketConfig::new(dev);
    cfg.batch_size = 32;
    netns::in_netns(ns, || AfPacketPort::open(&cfg)).unwrap().unwrap()
}

/// IPv4 frames received on `port` within `wait`.
fn capture(port: &mut AfPacketPort, into: &mut Vec<Vec<u8>>, wait: Duration) {
    let end = Instant::now() + wait;
    let mut b = Batch::new();
    while Instant::now() < end {
        if port.recv(&mut b, 32).unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        into.extend(b.drain().map(|p| p.data().to_vec()).filter(|f| f[12..14] == [8, 0]));
    }
}

fn send(port: &mut AfPacketPort, frames: &[Vec<u8>]) {
    for f in frames {
        let mut b: Batch = [braid_packet::Packet::from_bytes(f)].into_iter().collect();
        assert_eq!(port.send(&mut b).unwrap(), 1);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// From the ethertype on: what a frame carries beyond its hop's addresses.
fn beyond_macs(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frames.iter().map(|f| f[12..].to_vec()).collect()
}

/// Deploy the chain with `mapping` on a bed with `nf_hosts` NF hosts,
/// send the traffic, and compare with the offline run.
fn same_as_offline(tag: &str, mapping: Mapping, nf_hosts: usize) {
    let bed = bed_with(tag, nf_hosts);
    let opts: &Options = &bed.0;
    let ns = |h: &str| netns_name(opts, h);
    let nfs = chain(nf_hosts);
    let placements = vec![Where::User(UserIo::AfXdp); nfs.len()];
    let hosts = mapping.host_indices(&placements);
    assert!(hosts.iter().all(|&h| h < nf_hosts), "{hosts:?}");
    let specs: Vec<NfOnHost> = nfs
        .iter()
        .zip(&hosts)
        .map(|((name, kind, yaml), h)| {
            NfOnHost::user_on(name, kind, &format!("nf{}", h + 1), params(yaml), UserIo::AfXdp)
        })
        .collect();
    let last = format!("nf{nf_hosts}");
    let client_macs = [mac(&ns("client"), "to-nf1"), mac(&ns("nf1"), "to-client")];
    let server_macs = [mac(&ns("server"), &format!("to-{last}")), mac(&ns(&last), "to-server")];
    let frames = traffic(nf_hosts, client_macs, server_macs);
    let want = offline(nf_hosts, &frames);
    // What offline shows, so the comparison below cannot pass vacuously:
    // 3 routed requests to the server; 6 ICMP errors (3 time exceeded, 3
    // destination unreachable) and 3 answers back.
    assert_eq!((want[1].len(), want[0].len()), (3, 9), "offline run");
    assert_eq!(want[0].iter().filter(|f| f[23] == 1).count(), 6, "ICMP to the client");

    // Sockets that take what reaches the hosts' own stacks, so neither
    // kernel answers with ICMP port unreachable.
    let srv = server_ip(nf_hosts);
    let _absorb_server =
        netns::in_netns(&ns("server"), move || UdpSocket::bind((srv, 6000))).unwrap().unwrap();
    let _absorb_client =
        netns::in_netns(&ns("client"), || UdpSocket::bind((CLIENT, 5000))).unwrap().unwrap();
    let mut at_client = open(&ns("client"), "to-nf1");
    let mut at_server = open(&ns("server"), &format!("to-{last}"));

    let mut d = deploy(opts, &specs).unwrap();
    assert!(d.fallbacks().is_empty(), "{:?}", d.fallbacks());
    let (mut got_client, mut got_server) = (Vec::new(), Vec::new());
    send(&mut at_client, &frames[0]);
    capture(&mut at_server, &mut got_server, Duration::from_millis(500));
    capture(&mut at_client, &mut got_client, Duration::from_millis(100));
    send(&mut at_server, &frames[1]);
    capture(&mut at_client, &mut got_client, Duration::from_millis(500));
    capture(&mut at_server, &mut got_server, Duration::from_millis(100));

    assert_eq!(beyond_macs(&got_server), beyond_macs(&want[1]), "towards the server ({tag})");
    assert_eq!(beyond_macs(&got_client), beyond_macs(&want[0]), "towards the client ({tag})");
    // Frames leave each host with that link's addresses.
    for f in &got_server {
        assert_eq!((&f[..6], &f[6..12]), (&server_macs[0].0[..], &server_macs[1].0[..]));
    }
    for f in &got_client {
        assert_eq!((&f[..6], &f[6..12]), (&client_macs[0].0[..], &client_macs[1].0[..]));
    }
    // The live counters say the same as the offline ones.
    let stats = d.stats().unwrap();
    let row = |n: &str| stats.iter().find(|s| s.name == n).unwrap().clone();
    assert_eq!(row("rt").drop_reasons.get("no_route"), Some(&3), "{stats:?}");
    assert_eq!(row("rt").drop_reasons.get("ttl_exceeded"), Some(&3), "{stats:?}");
    assert_eq!(row("fw").drop_reasons.get("denied"), Some(&3), "{stats:?}");
    assert!(row("rt").user.is_some_and(|u| u.batches > 0 && u.packets_created == 6));
    assert_eq!(d.port_stats().len(), 2 * (hosts.last().unwrap() + 1));
    assert_nothing_left(d, bed);
}

#[test]
fn router_and_l2switch_chain_hosts_mapping_equals_offline() {
    if skip("router_and_l2switch_chain_hosts_mapping_equals_offline") {
        return;
    }
    same_as_offline("mh", Mapping::Distributed, 3);
}

#[test]
fn router_and_l2switch_chain_compact_mapping_equals_offline() {
    if skip("router_and_l2switch_chain_compact_mapping_equals_offline") {
        return;
    }
    same_as_offline("mc", Mapping::Compact, 1);
}
