//! In-kernel NFs on live veth links: XDP fwd carries ping and UDP, the
//! firewall drops exactly what its rules say, xor applied twice is the
//! identity (and the checksum stays valid in between).

mod common;

use std::net::Ipv4Addr;

use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::netns::{self, NetnsGuard};
use braid_io::xdp::{AttachMode, FwAction, FwRule, XdpNf, XdpProgram};
use braid_io::Port;
use braid_packet::envelope;
use braid_packet::wire::UdpPacket;
use braid_packet::Batch;
use common::{all_gone, expected_payload, xdp_usable, Topology};

/// Root and the XDP objects, or skip (a failure under `BRAID_REQUIRE_ROOT=1`).
fn skip(test: &str) -> bool {
    !xdp_usable(test)
}

/// `braid_pass` on the client and server ends: a veth only delivers
/// XDP_REDIRECTed frames when its peer runs an XDP program.
fn attach_pass(ns: &NetnsGuard, dev: &str) -> XdpProgram {
    let dev = dev.to_string();
    ns.enter(move || {
        let mut p = XdpProgram::load(XdpNf::Pass).unwrap();
        p.attach(&dev, AttachMode::Auto).unwrap();
        p
    })
    .unwrap()
}

/// Load `nf` in the forwarder namespace, attached to both of its veths,
/// forwarding each to the other; `configure` runs before attaching.
fn middle(
    topo: &Topology,
    nf: XdpNf,
    configure: impl FnOnce(&mut XdpProgram) + Send,
) -> XdpProgram {
    let (fl, fr) = (topo.fl().to_string(), topo.fr().to_string());
    topo.fwd
        .enter(move || {
            let mut p = XdpProgram::load(nf).unwrap();
            configure(&mut p);
            p.set_forward_by_name(&fl, &fr).unwrap();
            p.set_forward_by_name(&fr, &fl).unwrap();
            let a = p.attach(&fl, AttachMode::Auto).unwrap().clone();
            assert!(a.native, "veth supports native XDP: {a:?}");
            p.attach(&fr, AttachMode::Auto).unwrap();
            p
        })
        .unwrap()
}

fn xdp_link_present(ns: &NetnsGuard, dev: &str) -> bool {
    let out = ns.ip(&["-d", "link", "show", "dev", dev]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
fn xdp_fwd_forwards_ping_and_udp() {
    if skip("xdp_fwd_forwards_ping_and_udp") {
        return;
    }
    let topo = Topology::new("xf");
    let created = topo.created();
    let _pc = attach_pass(&topo.client, topo.c());
    let _ps = attach_pass(&topo.server, topo.s());
    let mut fwd = middle(&topo, XdpNf::Fwd, |_| {});
    assert!(xdp_link_present(&topo.fwd, topo.fl()));
    assert!(topo.ping(3), "ping through XDP fwd");
    for size in [18, 256, 1400] {
        let got = topo.udp_echo(40, size);
        assert_eq!(got.len(), 40, "all {size} B echoes return");
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p, &expected_payload(i, size));
        }
    }
    let c = fwd.counters().unwrap();
    assert!(c.redirect >= 2 * (3 + 120), "every frame was redirected: {c:?}");
    assert_eq!(c.drop, 0, "{c:?}");
    assert_eq!(c.rx_packets, c.redirect + c.pass, "{c:?}");
    // Detach by dropping: the link disappears while the namespace lives.
    drop(fwd);
    assert!(!xdp_link_present(&topo.fwd, topo.fl()), "dropping the program detaches it");
    assert!(!topo.ping(1), "without the forwarder nothing passes");
    drop((_pc, _ps));
    drop(topo);
    assert!(all_gone(&created));
}

#[test]
fn xdp_fwd_rewrites_macs() {
    if skip("xdp_fwd_rewrites_macs") {
        return;
    }
    let topo = Topology::new("xm");
    let _pc = attach_pass(&topo.client, topo.c());
    let _ps = attach_pass(&topo.server, topo.s());
    // Client and server are on one subnet; make the forwarder a router in
    // MAC terms: each side addresses the forwarder's veth, which rewrites
    // to the real destination.
    let c_mac = netns::mac_addr(Some(topo.client.name()), topo.c()).unwrap();
    let s_mac = netns::mac_addr(Some(topo.server.name()), topo.s()).unwrap();
    let fl_mac = netns::mac_addr(Some(topo.fwd.name()), topo.fl()).unwrap();
    let fr_mac = netns::mac_addr(Some(topo.fwd.name()), topo.fr()).unwrap();
    netns::add_neigh(Some(topo.client.name()), topo.c(), &topo.server_ip, &fl_mac).unwrap();
    netns::add_neigh(Some(topo.server.name()), topo.s(), &topo.client_ip, &fr_mac).unwrap();
    let parse = |m: &str| -> [u8; 6] {
        let v: Vec<u8> = m.split(':').map(|x| u8::from_str_radix(x, 16).unwrap()).collect();
        v.try_into().unwrap()
    };
    let (fl, fr) = (topo.fl().to_string(), topo.fr().to_string());
    let (c_mac, s_mac, fl_mac, fr_mac) =
        (parse(&c_mac), parse(&s_mac), parse(&fl_mac), parse(&fr_mac));
    let _fwd = middle(&topo, XdpNf::Fwd, move |p| {
        let fl = netns::ifindex(&fl).unwrap();
        let fr = netns::ifindex(&fr).unwrap();
        p.set_mac_rewrite(fl, s_mac, fr_mac).unwrap();
        p.set_mac_rewrite(fr, c_mac, fl_mac).unwrap();
    });
    // The server's stack drops frames not addressed to its MAC, so the
    // echo only works if the rewrite happened.
    let got = topo.udp_echo(20, 64);
    assert_eq!(got.len(), 20);
}

#[test]
fn xdp_firewall_drops_what_its_rules_say() {
    if skip("xdp_firewall_drops_what_its_rules_say") {
        return;
    }
    let topo = Topology::new("xw");
    let created = topo.created();
    let _pc = attach_pass(&topo.client, topo.c());
    let _ps = attach_pass(&topo.server, topo.s());
    let server: Ipv4Addr = topo.server_ip.parse().unwrap();
    let mut fw = middle(&topo, XdpNf::Firewall, move |p| {
        // Any source to the server's UDP port 7001 is dropped.
        let rule = FwRule {
            src: Ipv4Addr::UNSPECIFIED,
            dst: server,
            src_port: 0,
            dst_port: 7001,
            proto: 17,
        };
        p.add_fw_rule(&rule, FwAction::Drop).unwrap();
    });
    let (seen, back) = topo.udp_echo_full(10, 100, 7001);
    assert!(seen.is_empty() && back.is_empty(), "port 7001 is blocked");
    let (seen, back) = topo.udp_echo_full(10, 100, 7002);
    assert_eq!((seen.len(), back.len()), (10, 10), "port 7002 passes");
    assert!(topo.ping(2), "ICMP passes");
    let c = fw.counters().unwrap();
    assert_eq!(c.drop, 10, "exactly the ten blocked datagrams: {c:?}");
    assert_eq!(c.matched, 10, "{c:?}");

    // A source prefix rule now blocks everything from the client's /24,
    // while an exact rule for one flow overrides it (exact rules first).
    let client: Ipv4Addr = topo.client_ip.parse().unwrap();
    let net = Ipv4Addr::from(u32::from(client) & 0xffff_ff00);
    fw.add_fw_src_prefix(net, 24, FwAction::Drop).unwrap();
    assert!(!topo.ping(1), "ICMP from the client's prefix is dropped");
    let (seen, _) = topo.udp_echo_full(5, 100, 7003);
    assert!(seen.is_empty(), "UDP from the client's prefix is dropped");
    drop(fw);
    drop((_pc, _ps));
    drop(topo);
    assert!(all_gone(&created));
}

#[test]
fn xdp_xor_twice_is_identity_with_valid_checksums() {
    if skip("xdp_xor_twice_is_identity_with_valid_checksums") {
        return;
    }
    let topo = Topology::new("xx");
    let _pc = attach_pass(&topo.client, topo.c());
    let _ps = attach_pass(&topo.server, topo.s());
    let key = [0x5a, 0x01, 0xff, 0x80, 0x33];
    let mut xor = middle(&topo, XdpNf::Xor, move |p| p.set_xor_key(&key).unwrap());
    // Capture what reaches the server and the client to check the UDP
    // checksums directly (a receiving stack might trust the device and
    // skip the check).
    let s = topo.s().to_string();
    let server_tap =
        topo.server.enter(move || AfPacketPort::open(&AfPacketConfig::new(&s)).unwrap()).unwrap();
    let c = topo.c().to_string();
    let client_tap =
        topo.client.enter(move || AfPacketPort::open(&AfPacketConfig::new(&c)).unwrap()).unwrap();
    // Requests are XORed once on the way in (the server sees the scrambled
    // payload, and its stack accepted the checksum), replies once more on
    // the way back (the client sees the original). Odd and even sizes
    // exercise the checksum's padding byte.
    for size in [1, 18, 255, 256, 1400, 1472] {
        let (seen, back) = topo.udp_echo_full(8, size, 0);
        assert_eq!(seen.len(), 8, "server got all {size} B datagrams (checksum valid after XOR)");
        assert_eq!(back.len(), 8, "client got all {size} B echoes");
        for i in 0..8 {
            let sent = expected_payload(i, size);
            let expect: Vec<u8> =
                sent.iter().enumerate().map(|(k, b)| b ^ key[k % key.len()]).collect();
            assert_eq!(seen[i], expect, "server sees payload XOR key ({size} B, #{i})");
            assert_eq!(back[i], sent, "XOR twice restores the payload ({size} B, #{i})");
        }
    }
    for (side, mut tap) in [("server", server_tap), ("client", client_tap)] {
        let mut frames = Batch::new();
        while tap.recv(&mut frames, 64).unwrap() > 0 {}
        let mut checked = 0;
        for f in frames.iter() {
            let parsed = envelope::parse(f.data());
            let Some(flow) = parsed.ipv4() else { continue };
            if flow.proto != 17 {
                continue;
            }
            let udp = UdpPacket::new_checked(&f.data()[flow.l4_offset()..]).unwrap();
            assert_ne!(udp.checksum(), 0, "the sender filled in checksums");
            assert!(
                udp.verify_checksum_v4(flow.tuple().src, flow.tuple().dst),
                "checksum after XOR at the {side}"
            );
            checked += 1;
        }
        assert_eq!(checked, 6 * 8, "every datagram arriving at the {side} was checked");
    }
    let c = xor.counters().unwrap();
    assert_eq!(c.matched, 2 * 6 * 8, "{c:?}");
    assert_eq!(c.malformed, 0);
}
