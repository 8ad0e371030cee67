//! Kernel NFs deployed on the testbed: XDP `fwd` on both NF hosts of the
//! CALVIN topology, with Linux forwarding off there, so traffic only gets
//! through if the XDP programs forward it. Needs root; skips otherwise.

mod common;

use braid_io::netns;
use braid_probe::echo::{run_echo, EchoConfig};
use braid_probe::rtt::RttConfig;
use braid_probe::session::{run_probe, ProbeConfig};
use braid_testbed::deploy::{deploy, NfOnHost};
use braid_testbed::{down, netns_name, status, TestbedError};
use common::{bed, forwarding_off, has_xdp, ping, probe_round_trips, skip};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn spec(name: &str, kind: &str, host: &str) -> NfOnHost {
    NfOnHost::kernel(name, kind, host)
}

#[test]
fn xdp_fwd_chain_carries_ping_and_probe_then_detaches() {
    if skip("xdp_fwd_chain_carries_ping_and_probe_then_detaches") {
        return;
    }
    let bed = bed("d");
    let opts = &bed.0;
    forwarding_off(opts);
    let ns = |h: &str| netns_name(opts, h);
    assert!(!ping(&ns("client"), "10.71.3.2", "1"), "traffic must not pass with forwarding off");

    // Refused before touching anything: a kind without XDP version, a host
    // used by two groups that are not consecutive, wrong host.
    for bad in [
        vec![spec("n", "nat", "nf1")],
        vec![spec("a", "fwd", "nf1"), spec("b", "fwd", "nf2"), spec("c", "fwd", "nf1")],
        vec![spec("a", "fwd", "nowhere")],
    ] {
        let e = deploy(opts, &bad).err().unwrap();
        assert!(matches!(e, TestbedError::Deploy(_)), "{e}");
    }
    // The client has two links only with the direct one; here it has one.
    assert!(deploy(opts, &[spec("c", "fwd", "client")]).is_err());

    let mut d = deploy(opts, &[spec("f1", "fwd", "nf1"), spec("f2", "fwd", "nf2")]).unwrap();
    assert!(has_xdp(&ns("nf1"), "to-client") && has_xdp(&ns("nf2"), "to-server"));
    assert!(has_xdp(&ns("client"), "to-nf1"), "neighbours get the pass program");
    assert_eq!(status(opts).unwrap().unwrap().xdp.len(), d.attached().len());
    assert!(ping(&ns("client"), "10.71.3.2", "3"), "ping through XDP fwd x2 failed");

    probe_round_trips(opts);
    let stats = d.stats().unwrap();
    assert_eq!(stats.len(), 2);
    for s in &stats {
        // 200 probe packets and 3 pings each way, at least.
        assert!(s.redirected >= 2 * 203, "{s:?}");
        assert_eq!(s.dropped, 0, "{s:?}");
    }

    let attached = d.attached().to_vec();
    drop(d);
    for (n, dev) in &attached {
        assert!(!has_xdp(n, dev), "XDP still on {n}:{dev}");
    }
    assert!(status(opts).unwrap().unwrap().xdp.is_empty());
    assert!(!ping(&ns("client"), "10.71.3.2", "1"), "with the NFs gone nothing forwards");
    down(opts).unwrap();
}

#[test]
fn mixed_chain_xdp_fwd_then_user_xor_round_trips() {
    if skip("mixed_chain_xdp_fwd_then_user_xor_round_trips") {
        return;
    }
    let bed = bed("m");
    let opts = &bed.0;
    let ns = |h: &str| netns_name(opts, h);
    // Missing parameters (nat needs `external_ip`) and bad ones are refused.
    let nat = NfOnHost::user("n", "nat", "nf2", braid_nf::Params::Null);
    assert!(matches!(deploy(opts, &[nat]).err().unwrap(), TestbedError::Deploy(_)));
    let bad: braid_nf::Params = serde_yaml_ng::from_str("{ colour: red }").unwrap();
    assert!(deploy(opts, &[NfOnHost::user("x", "xor", "nf2", bad)]).is_err());
    assert_eq!(
        netns::run(
            netns::command_in(Some(&ns("nf2")), "sysctl").args(["-n", "net.ipv4.ip_forward"])
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap(),
        "1",
        "a refused deployment leaves forwarding alone"
    );

    let key: braid_nf::Params = serde_yaml_ng::from_str("{ key_text: braid }").unwrap();
    let mut d =
        deploy(opts, &[spec("f1", "fwd", "nf1"), NfOnHost::user("x1", "xor", "nf2", key)]).unwrap();
    // The user-space NF turned Linux forwarding off on its host.
    let fwd = |h: &str| {
        netns::run(netns::command_in(Some(&ns(h)), "sysctl").args(["-n", "net.ipv4.ip_forward"]))
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap()
    };
    assert_eq!(fwd("nf2"), "0");

    // XOR is its own inverse: the request is XORed on the way to the echo
    // server, the answer on the way back, so the probe sees its own bytes.
    let echo_sock =
        netns::in_netns(&ns("server"), || UdpSocket::bind("0.0.0.0:7007")).unwrap().unwrap();
    let stop = AtomicBool::new(false);
    let (server_saw_plain, report) = std::thread::scope(|s| {
        let first = s.spawn(|| {
            let mut buf = [0u8; 2048];
            echo_sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let (n, from) = echo_sock.recv_from(&mut buf).unwrap();
            echo_sock.send_to(&buf[..n], from).unwrap();
            buf[..4] == *b"BRDP"
        });
        let sock =
            netns::in_netns(&ns("client"), || UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
        sock.connect("10.71.3.2:7007").unwrap();
        let one = ProbeConfig {
            sizes: vec![64],
            repetitions: 1,
            rtt: RttConfig { count: 1, interval: Duration::from_millis(1), ..Default::default() },
            throughput: None,
        };
        run_probe(&sock, &one, |_| {}).unwrap();
        let saw_plain = first.join().unwrap();
        s.spawn(|| run_echo(&echo_sock, &EchoConfig { batch: 1, ..Default::default() }, &stop));
        let cfg = ProbeConfig {
            sizes: vec![256, 1400],
            repetitions: 1,
            rtt: RttConfig { count: 100, interval: Duration::from_millis(1), ..Default::default() },
            throughput: None,
        };
        let out = run_probe(&sock, &cfg, |_| {}).unwrap();
        stop.store(true, Ordering::Relaxed);
        (saw_plain, out.report)
    });
    assert!(!server_saw_plain, "the server must see the XORed payload");
    for l in &report.latency {
        assert_eq!((l.lost, l.reordered, l.foreign), (0, 0, 0), "{l:?}");
    }
    let stats = d.stats().unwrap();
    assert_eq!(stats.len(), 2);
    let x = stats.iter().find(|s| s.name == "x1").unwrap();
    assert_eq!(x.placement, "user (AF_PACKET)");
    assert!(x.redirected >= 2 * 201 && x.dropped == 0, "{x:?}");
    drop(d);
    assert_eq!(fwd("nf2"), "1", "forwarding restored");
    down(opts).unwrap();
}
