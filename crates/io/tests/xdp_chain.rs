//! The XDP chain program (several kernel NFs on one host) run inside the
//! kernel with BPF_PROG_TEST_RUN: frames cross the stages in the order of
//! their ingress interface's path (chain order one way, reverse the other),
//! each stage keeps its own configuration and counters, and a stage that
//! drops ends the chain.

mod common;

use std::net::Ipv4Addr;

use braid_io::xdp::{FwAction, FwRule, XdpAction, XdpChain, XdpNf};
use braid_packet::envelope;
use braid_packet::wire::build::FrameSpec;
use braid_packet::wire::UdpPacket;

use common::xdp_usable as usable;
use common::{test_run_udp as udp, TEST_CLIENT as CLIENT, TEST_SERVER as SERVER};

fn payload_of(frame: &[u8]) -> (Vec<u8>, bool) {
    let flow = envelope::parse(frame).ip;
    let udp = UdpPacket::new_checked(&frame[flow.l4_offset()..]).unwrap();
    let ok = udp.checksum() == 0 || udp.verify_checksum_v4(flow.tuple().src, flow.tuple().dst);
    (udp.payload().to_vec(), ok)
}

/// A chain firewall(0) -> xor(1) -> xor(2); test runs arrive on `lo`.
fn chain() -> (XdpChain, u32) {
    let mut c = XdpChain::load(&[XdpNf::Firewall, XdpNf::Xor, XdpNf::Xor]).unwrap();
    let lo = braid_io::netns::ifindex("lo").unwrap();
    c.set_xor_key(1, &[0x0f]).unwrap();
    c.set_xor_key(2, &[0xf0, 0x11]).unwrap();
    let blocked =
        FwRule { src: Ipv4Addr::UNSPECIFIED, dst: SERVER, src_port: 0, dst_port: 9, proto: 17 };
    c.add_fw_rule(0, &blocked, FwAction::Drop).unwrap();
    (c, lo)
}

#[test]
fn stages_run_in_path_order_both_ways() {
    if !usable("stages_run_in_path_order_both_ways") {
        return;
    }
    let (mut c, lo) = chain();
    let payload: Vec<u8> = (0..37u8).collect();
    let expect: Vec<u8> =
        payload.iter().enumerate().map(|(i, b)| b ^ 0x0f ^ [0xf0, 0x11][i % 2]).collect();

    // Chain order: the firewall drops port 9 before either xor sees it.
    c.set_path(lo, &[0, 1, 2]).unwrap();
    let r = c.test_run(&udp(9, &payload), 1).unwrap();
    assert_eq!(r.action, XdpAction::Drop);
    let r = c.test_run(&udp(10, &payload), 1).unwrap();
    assert_eq!(r.action, XdpAction::Pass, "lo has no tx_ports entry: the last stage passes");
    let (p, ok) = payload_of(&r.frame);
    assert!(ok, "checksum valid after two XDP xor stages");
    assert_eq!(p, expect, "both xor stages ran, each with its own key");
    let fw = c.counters(0).unwrap();
    let (x1, x2) = (c.counters(1).unwrap(), c.counters(2).unwrap());
    assert_eq!((fw.rx_packets, fw.drop, fw.matched, fw.redirect), (2, 1, 1, 1), "{fw:?}");
    assert_eq!((x1.rx_packets, x1.matched, x1.redirect), (1, 1, 1), "{x1:?}");
    assert_eq!((x2.rx_packets, x2.matched, x2.pass), (1, 1, 1), "{x2:?}");

    // Reverse order: both xors run before the firewall drops.
    c.set_path(lo, &[2, 1, 0]).unwrap();
    let r = c.test_run(&udp(9, &payload), 1).unwrap();
    assert_eq!(r.action, XdpAction::Drop);
    let (x1, x2) = (c.counters(1).unwrap(), c.counters(2).unwrap());
    assert_eq!((x1.rx_packets, x2.rx_packets), (2, 2), "xors ran before the firewall");
    assert_eq!(c.counters(0).unwrap().drop, 2);
    let r = c.test_run(&udp(10, &payload), 1).unwrap();
    assert_eq!(r.action, XdpAction::Pass);
    assert_eq!(payload_of(&r.frame).0, expect);
    assert_eq!(c.counters(0).unwrap().pass, 1, "the firewall is last this way");
}

#[test]
fn firewall_stages_keep_separate_rules_and_defaults() {
    if !usable("firewall_stages_keep_separate_rules_and_defaults") {
        return;
    }
    let mut c = XdpChain::load(&[XdpNf::Firewall, XdpNf::Fwd, XdpNf::Firewall]).unwrap();
    let lo = braid_io::netns::ifindex("lo").unwrap();
    c.set_path(lo, &[0, 1, 2]).unwrap();
    // Stage 2 drops everything but the client's /24, stage 0 drops port 7.
    c.set_fw_default(2, FwAction::Drop).unwrap();
    c.add_fw_src_prefix(2, Ipv4Addr::new(10, 0, 0, 0), 24, FwAction::Pass).unwrap();
    let port7 = FwRule { src: CLIENT, dst: SERVER, src_port: 4000, dst_port: 7, proto: 17 };
    c.add_fw_rule(0, &port7, FwAction::Drop).unwrap();
    assert_eq!(c.test_run(&udp(7, b"x"), 1).unwrap().action, XdpAction::Drop);
    assert_eq!(c.test_run(&udp(8, b"x"), 1).unwrap().action, XdpAction::Pass);
    let mut other = FrameSpec::udp((Ipv4Addr::new(192, 0, 2, 1), 4000), (SERVER, 7), 1);
    other.payload = b"y".to_vec();
    assert_eq!(c.test_run(&other.build(), 1).unwrap().action, XdpAction::Drop);
    let (s0, s1, s2) = (c.counters(0).unwrap(), c.counters(1).unwrap(), c.counters(2).unwrap());
    assert_eq!((s0.rx_packets, s0.drop), (3, 1), "{s0:?}");
    assert_eq!(s1.rx_packets, 2, "{s1:?}");
    assert_eq!((s2.rx_packets, s2.drop, s2.matched), (2, 1, 1), "{s2:?}");

    // Removed rules no longer apply; only the rules of their own stage go.
    c.remove_fw_rule(0, &port7).unwrap();
    assert_eq!(c.test_run(&udp(7, b"x"), 1).unwrap().action, XdpAction::Pass);
    c.remove_fw_src_prefix(2, Ipv4Addr::new(10, 0, 0, 0), 24).unwrap();
    assert_eq!(c.test_run(&udp(7, b"x"), 1).unwrap().action, XdpAction::Drop, "stage 2's default");
    let e = c.remove_fw_rule(0, &port7).unwrap_err().to_string();
    assert!(e.contains("fw_rules remove"), "{e}");
    let e = c.remove_fw_src_prefix(0, Ipv4Addr::new(10, 0, 0, 0), 24).unwrap_err().to_string();
    assert!(e.contains("fw_src_prefixes remove 10.0.0.0/24"), "{e}");
    let e = c.remove_fw_rule(1, &port7).unwrap_err().to_string();
    assert!(e.contains("stage 1 of the XDP chain is fwd"), "{e}");
}

#[test]
fn bad_chain_requests_are_refused() {
    if !usable("bad_chain_requests_are_refused") {
        return;
    }
    assert!(XdpChain::load(&[]).is_err());
    let e = XdpChain::load(&[XdpNf::Steer]).unwrap_err().to_string();
    assert!(e.contains("steer cannot be a chain stage"), "{e}");
    let mut c = XdpChain::load(&[XdpNf::Fwd, XdpNf::Xor]).unwrap();
    let e = c.set_xor_key(0, &[1]).unwrap_err().to_string();
    assert!(e.contains("stage 0 of the XDP chain is fwd"), "{e}");
    assert!(c.set_path(1, &[0, 2]).unwrap_err().to_string().contains("no stage 2"));
    assert!(c.counters(2).is_err());
    // An interface without a path goes to the stack untouched.
    let r = c.test_run(&udp(1, b"abc"), 1).unwrap();
    assert_eq!(r.action, XdpAction::Pass);
    assert_eq!(c.counters(1).unwrap().rx_packets, 0);
}
