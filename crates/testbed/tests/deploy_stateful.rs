//! Stateful user-space NFs deployed on the testbed: one instance serves
//! both directions, so a NAT translates the answers of the flows it
//! mapped and a firewall's connection tracking lets them back in.
//!
//! - XDP `fwd` (nf1) → AF_XDP `nat` (nf2): ping, a UDP exchange where the
//!   server checks the peer address it sees (the NAT's, not the client's),
//!   and probe round trips through the NAT.
//! - XDP `fwd` (nf1) → AF_XDP `firewall` + `nat` as ONE group on nf2: the
//!   same traffic passes, a flow the server starts is dropped by the
//!   firewall (`denied`), each NF has its own stats row.
//!
//! Linux forwarding is off on the NF hosts; afterwards no XDP program and
//! no namespace is left. Needs root; skips otherwise.

mod common;

use braid_io::netns;
use braid_testbed::deploy::{deploy_with, NfOnHost, UserIo, UserOptions, UserWait};
use braid_testbed::{netns_name, status};
use common::{assert_nothing_left, bed, forwarding_off, ping, probe_round_trips, skip};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// nf2's address on the server-side link: the NAT's public address. nf2's
/// kernel owns it and the server has a permanent neighbour entry for it,
/// so answers come back to nf2 (where the steering program hands them to
/// the NAT) without any ARP.
const NAT_EXTERNAL: &str = "10.71.3.1";

/// Threads of this process with scheduling policy SCHED_FIFO (field 41
/// of /proc/self/task/*/stat).
fn fifo_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // Fields after the command name, which is in parentheses.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split(' ').nth(41 - 3) == Some("1")
        })
        .count()
}

fn params(yaml: &str) -> braid_nf::Params {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn nat(host: &str) -> NfOnHost {
    let p = params(&format!("{{ external_ip: {NAT_EXTERNAL}, internal: [10.71.1.0/24] }}"));
    NfOnHost::user_on("n1", "nat", host, p, UserIo::AfXdp)
}

/// One UDP datagram from the client to a listener on the server, and its
/// answer back. Returns the source address the server saw, and whether
/// the client got the answer from the server's address.
fn udp_exchange(opts: &braid_testbed::Options, port: u16) -> (SocketAddr, bool) {
    let ns = |h: &str| netns_name(opts, h);
    let server = netns::in_netns(&ns("server"), move || UdpSocket::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    server.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let client = netns::in_netns(&ns("client"), || UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    client.send_to(b"through the nat", ("10.71.3.2", port)).unwrap();
    let mut buf = [0u8; 64];
    let (n, peer) = server.recv_from(&mut buf).expect("the server got the datagram");
    assert_eq!(&buf[..n], b"through the nat");
    server.send_to(b"answer", peer).unwrap();
    let answered = matches!(
        client.recv_from(&mut buf),
        Ok((6, from)) if from == SocketAddr::from(([10, 71, 3, 2], port)) && &buf[..6] == b"answer"
    );
    (peer, answered)
}

#[test]
fn xdp_fwd_then_af_xdp_nat_translates_both_directions() {
    if skip("xdp_fwd_then_af_xdp_nat_translates_both_directions") {
        return;
    }
    let bed = bed("sn");
    forwarding_off(&bed.0);
    let opts = &bed.0;
    let ns = |h: &str| netns_name(opts, h);
    assert!(!ping(&ns("client"), "10.71.3.2", "1"), "traffic must not pass with forwarding off");

    let chain = [NfOnHost::kernel("f1", "fwd", "nf1"), nat("nf2")];
    // No online CPU in --cpus: refused, naming the option, nothing left.
    let nowhere = UserOptions { cpus: vec![1000], ..Default::default() };
    let e = deploy_with(opts, &chain, &nowhere).err().unwrap().to_string();
    assert!(e.contains("--cpus"), "{e}");
    assert!(status(opts).unwrap().unwrap().xdp.is_empty());

    let rt = UserOptions { rt_prio: Some(10), cpus: vec![0, 1], ..Default::default() };
    let fifo_before = fifo_threads();
    let mut d = deploy_with(opts, &chain, &rt).unwrap();
    assert!(d.fallbacks().is_empty(), "{:?}", d.fallbacks());
    assert_eq!(fifo_threads(), fifo_before + 1, "the NF thread runs SCHED_FIFO");
    assert!(ping(&ns("client"), "10.71.3.2", "3"), "ping through XDP fwd -> AF_XDP nat failed");
    let (peer, answered) = udp_exchange(opts, 7101);
    assert_eq!(peer.ip().to_string(), NAT_EXTERNAL, "the server must see the NAT's address");
    assert!(answered, "the answer must come back through the NAT to the client");
    probe_round_trips(opts);

    let stats = d.stats().unwrap();
    let n = stats.iter().find(|s| s.name == "n1").unwrap();
    assert_eq!(n.placement, "user (AF_XDP)");
    // 3 pings, 1 datagram and 200 probe packets each way.
    assert!(n.rx_packets >= 2 * 204 && n.redirected == n.rx_packets, "{n:?}");
    assert_eq!(n.dropped, 0, "{n:?}");
    let sockets = n.sockets.expect("AF_XDP NFs report their sockets' kernel counters");
    assert_eq!(sockets.fill_ring_empty, 0, "{sockets:?}");
    assert_nothing_left(d, bed);
}

#[test]
fn firewall_and_nat_as_one_group_on_one_host() {
    if skip("firewall_and_nat_as_one_group_on_one_host") {
        return;
    }
    let bed = bed("sg");
    forwarding_off(&bed.0);
    let opts = &bed.0;
    let ns = |h: &str| netns_name(opts, h);
    let fw = params("{ rules: [{ action: allow, src: 10.71.1.0/24 }], default: drop }");
    let nfs = [
        NfOnHost::kernel("f1", "fwd", "nf1"),
        NfOnHost::user_on("fw", "firewall", "nf2", fw, UserIo::AfXdp),
        nat("nf2"),
    ];
    // Busy waiting, to run that path too.
    let user = UserOptions { wait: UserWait::Busy, ..Default::default() };
    let mut d = deploy_with(opts, &nfs, &user).unwrap();
    assert!(d.fallbacks().is_empty(), "{:?}", d.fallbacks());
    // The group's two NFs share nf2's two sockets (two steering programs).
    assert_eq!(d.attached().iter().filter(|(n, _)| *n == ns("nf2")).count(), 2);

    assert!(ping(&ns("client"), "10.71.3.2", "3"), "ping through firewall + nat failed");
    let (peer, answered) = udp_exchange(opts, 7102);
    assert_eq!(peer.ip().to_string(), NAT_EXTERNAL);
    assert!(answered, "conntrack must let the answer back in");
    probe_round_trips(opts);

    // A flow the server starts: the NAT passes it (not for its address),
    // the firewall has no connection for it and its rules drop it.
    let client =
        netns::in_netns(&ns("client"), || UdpSocket::bind("0.0.0.0:7103")).unwrap().unwrap();
    client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let server = netns::in_netns(&ns("server"), || UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    for _ in 0..3 {
        server.send_to(b"unsolicited", "10.71.1.1:7103").unwrap();
    }
    let mut buf = [0u8; 64];
    assert!(client.recv_from(&mut buf).is_err(), "the firewall must drop what the server starts");

    let stats = d.stats().unwrap();
    let names: Vec<_> = stats.iter().map(|s| (s.name.as_str(), s.host.as_str())).collect();
    assert_eq!(names, [("f1", "nf1"), ("fw", "nf2"), ("n1", "nf2")]);
    let (f, n) = (&stats[1], &stats[2]);
    assert_eq!(f.drop_reasons.get("denied"), Some(&3), "{f:?}");
    assert_eq!(f.dropped, 3, "{f:?}");
    // Requests reach the firewall first, answers the NAT first; the NAT saw
    // the 3 unsolicited datagrams too (passed on, not for its address).
    assert!(f.rx_packets >= 2 * 204 + 3 && n.rx_packets >= 2 * 204 + 3, "{f:?} {n:?}");
    assert_eq!(n.dropped, 0, "{n:?}");
    assert_nothing_left(d, bed);
}

#[test]
fn af_packet_group_with_batch_carries_stateful_nfs() {
    if skip("af_packet_group_with_batch_carries_stateful_nfs") {
        return;
    }
    let bed = bed("sp");
    forwarding_off(&bed.0);
    let opts = &bed.0;
    let ns = |h: &str| netns_name(opts, h);
    let fw = params("{ rules: [{ action: allow, src: 10.71.1.0/24 }], default: drop }");
    let n =
        NfOnHost { placement: braid_testbed::deploy::Where::User(UserIo::AfPacket), ..nat("nf2") };
    let nfs =
        [NfOnHost::kernel("f1", "fwd", "nf1"), NfOnHost::user("fw", "firewall", "nf2", fw), n];
    // Out of range: refused before anything runs.
    let bad = UserOptions { batch: 0, ..Default::default() };
    let e = deploy_with(opts, &nfs, &bad).err().unwrap().to_string();
    assert!(e.contains("--batch 0"), "{e}");
    let bad = UserOptions { rt_prio: Some(5), nice: Some(1), ..Default::default() };
    let e = deploy_with(opts, &nfs, &bad).err().unwrap().to_string();
    assert!(e.contains("does not combine with --policy other, --nice or --slice-us"), "{e}");
    let bad = UserOptions { nice: Some(40), ..Default::default() };
    let e = deploy_with(opts, &nfs, &bad).err().unwrap().to_string();
    assert!(e.contains("--nice") && e.contains("-20..=19"), "{e}");
    let user = UserOptions {
        batch: 8,
        policy: braid_dataplane::SchedPolicy::Batch,
        nice: Some(3),
        adapt: true,
        ..Default::default()
    };
    let mut d = deploy_with(opts, &nfs, &user).unwrap();
    // One thread polls both AF_PACKET sockets: answers come back through
    // the same NF instances (NAT mapping, firewall connection).
    assert!(ping(&ns("client"), "10.71.3.2", "3"), "ping through AF_PACKET firewall + nat");
    let (peer, answered) = udp_exchange(opts, 7104);
    assert_eq!(peer.ip().to_string(), NAT_EXTERNAL);
    assert!(answered, "the answer must come back through the NAT to the client");
    probe_round_trips(opts);
    let stats = d.stats().unwrap();
    for s in &stats[1..] {
        assert_eq!(s.placement, "user (AF_PACKET)", "{s:?}");
        assert!(s.rx_packets >= 2 * 204 && s.dropped == 0 && s.sockets.is_none(), "{s:?}");
    }
    assert_nothing_left(d, bed);
}
