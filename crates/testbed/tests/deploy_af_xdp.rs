//! User-space NFs on AF_XDP ports deployed on the testbed, carrying real
//! traffic: `fwd` on AF_XDP on both NF hosts, the mixed chain XDP `fwd` →
//! AF_XDP `fwd`, and iperf3 (UDP) as a client through the AF_XDP chain.
//! Linux forwarding is off on the NF hosts, so traffic only passes through
//! the NFs. Afterwards no XDP program and no namespace is left. Needs root;
//! skips otherwise.

mod common;

use braid_io::netns;
use braid_testbed::deploy::{deploy, NfOnHost, UserIo};
use braid_testbed::{netns_name, status};
use common::{assert_nothing_left, bed, forwarding_off, has_xdp, ping, probe_round_trips, skip};
use std::process::{Child, Stdio};
use std::time::Duration;

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn af_xdp_fwd(name: &str, host: &str) -> NfOnHost {
    NfOnHost::user_on(name, "fwd", host, braid_nf::Params::Null, UserIo::AfXdp)
}

#[test]
fn af_xdp_fwd_chain_carries_ping_udp_and_iperf3() {
    if skip("af_xdp_fwd_chain_carries_ping_udp_and_iperf3") {
        return;
    }
    let bed = bed("xa");
    forwarding_off(&bed.0);
    let opts = &bed.0;
    let ns = |h: &str| netns_name(opts, h);
    assert!(!ping(&ns("client"), "10.71.3.2", "1"), "traffic must not pass with forwarding off");

    let mut d = deploy(opts, &[af_xdp_fwd("u1", "nf1"), af_xdp_fwd("u2", "nf2")]).unwrap();
    assert!(d.fallbacks().is_empty(), "{:?}", d.fallbacks());
    // The sockets' steering programs are on the NF hosts' interfaces.
    assert!(has_xdp(&ns("nf1"), "to-client") && has_xdp(&ns("nf2"), "to-server"));
    assert_eq!(status(opts).unwrap().unwrap().xdp.len(), d.attached().len());
    assert_eq!(d.attached().len(), 4);
    assert!(ping(&ns("client"), "10.71.3.2", "3"), "ping through AF_XDP fwd x2 failed");
    probe_round_trips(opts);

    // Without iperf3: said why (a failure instead under BRAID_REQUIRE_ROOT=1).
    if !braid_testkit::skip_unless_tool("iperf3", "the iperf3 part") {
        let _server = Reaped(
            netns::command_in(Some(&ns("server")), "iperf3")
                .args(["-s", "-1", "-p", "5301"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(500));
        let out = netns::command_in(Some(&ns("client")), "iperf3")
            .args(["-c", "10.71.3.2", "-p", "5301", "-u", "-b", "20M", "-l", "1200", "-t", "2"])
            .args(["--connect-timeout", "3000", "-J"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "iperf3 failed: {text}");
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        let sum = &j["end"]["sum"];
        let packets = sum["packets"].as_u64().unwrap();
        let lost = sum["lost_packets"].as_u64().unwrap();
        // 20 Mbit/s of 1200 B for 2 s is about 4000 datagrams.
        assert!(packets >= 3000, "iperf3 sent too few datagrams: {sum}");
        assert!(lost * 100 <= packets, "iperf3 lost more than 1%: {sum}");
    }

    let stats = d.stats().unwrap();
    assert_eq!(stats.len(), 2);
    for s in &stats {
        assert_eq!(s.placement, "user (AF_XDP)");
        // 200 probe packets and 3 pings each way, at least.
        assert!(s.redirected >= 2 * 203, "{s:?}");
        assert_eq!(s.dropped, 0, "{s:?}");
    }
    assert_nothing_left(d, bed);
}

#[test]
fn mixed_chain_xdp_fwd_then_af_xdp_fwd_carries_ping_and_udp() {
    if skip("mixed_chain_xdp_fwd_then_af_xdp_fwd_carries_ping_and_udp") {
        return;
    }
    let bed = bed("xm");
    forwarding_off(&bed.0);
    let opts = &bed.0;
    let ns = |h: &str| netns_name(opts, h);
    let mut d =
        deploy(opts, &[NfOnHost::kernel("k1", "fwd", "nf1"), af_xdp_fwd("u2", "nf2")]).unwrap();
    assert!(d.fallbacks().is_empty(), "{:?}", d.fallbacks());
    // The kernel NF's redirect into nf1:to-nf2 is received by the steering
    // program on nf2:to-nf1; no `pass` program replaced it.
    assert!(has_xdp(&ns("nf2"), "to-nf1") && has_xdp(&ns("client"), "to-nf1"));
    assert!(ping(&ns("client"), "10.71.3.2", "3"), "ping through XDP fwd -> AF_XDP fwd failed");
    probe_round_trips(opts);
    let stats = d.stats().unwrap();
    let placements: Vec<_> = stats.iter().map(|s| (s.name.as_str(), s.placement)).collect();
    assert_eq!(placements, [("k1", "kernel (XDP)"), ("u2", "user (AF_XDP)")]);
    for s in &stats {
        assert!(s.redirected >= 2 * 203, "{s:?}");
        assert_eq!(s.dropped, 0, "{s:?}");
    }
    assert_nothing_left(d, bed);
}

#[test]
fn af_xdp_nf_falls_back_to_af_packet_when_its_ports_do_not_open() {
    if skip("af_xdp_nf_falls_back_to_af_packet_when_its_ports_do_not_open") {
        return;
    }
    use braid_io::xdp::{AttachMode, XdpNf, XdpProgram};
    let bed = bed("xf");
    forwarding_off(&bed.0);
    let opts = &bed.0;
    let ns = |h: &str| netns_name(opts, h);
    // Someone else's program on nf1:to-client: the AF_XDP port cannot
    // attach its steering program there.
    let mut other = netns::in_netns(&ns("nf1"), || {
        let mut p = XdpProgram::load(XdpNf::Pass).unwrap();
        p.attach("to-client", AttachMode::Auto).unwrap();
        p
    })
    .unwrap();
    let mut d = deploy(opts, &[af_xdp_fwd("u1", "nf1"), af_xdp_fwd("u2", "nf2")]).unwrap();
    let fallbacks = d.fallbacks().to_vec();
    assert_eq!(fallbacks.len(), 1, "{fallbacks:?}");
    assert_eq!(fallbacks[0].0, "u1");
    assert!(fallbacks[0].1.contains("to-client"), "the reason names the interface: {fallbacks:?}");
    assert!(ping(&ns("client"), "10.71.3.2", "3"), "ping through AF_PACKET fwd -> AF_XDP fwd");
    probe_round_trips(opts);
    let stats = d.stats().unwrap();
    let placements: Vec<_> = stats.iter().map(|s| (s.name.as_str(), s.placement)).collect();
    assert_eq!(placements, [("u1", "user (AF_PACKET)"), ("u2", "user (AF_XDP)")]);
    // Only the AF_XDP NF's interfaces were recorded.
    assert_eq!(d.attached().len(), 2);
    assert!(other.counters().unwrap().pass > 0, "the other program stayed in place");
    drop(other);
    assert_nothing_left(d, bed);
}
