//! Kernel NFs deployed on the testbed: XDP `fwd` on both NF hosts of the
//! CALVIN topology, with Linux forwarding off there, so traffic only gets
//! through if the XDP programs forward it. Needs root; skips otherwise.

use braid_io::netns;
use braid_probe::echo::{run_echo, EchoConfig};
use braid_probe::rtt::RttConfig;
use braid_probe::session::{run_probe, ProbeConfig};
use braid_testbed::deploy::{deploy_kernel, KernelNfSpec};
use braid_testbed::{calvin, down, netns_name, status, up, Options, TestbedError};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

struct Bed(Options);

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = down(&self.0);
    }
}

fn ping(ns: &str, addr: &str, count: &str) -> bool {
    netns::command_in(Some(ns), "ping")
        .args(["-c", count, "-i", "0.2", "-W", "1", addr])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn has_xdp(ns: &str, dev: &str) -> bool {
    let out = netns::ip(Some(ns), &["link", "show", "dev", dev]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

fn spec(name: &str, kind: &str, host: &str) -> KernelNfSpec {
    KernelNfSpec { name: name.into(), kind: kind.into(), host: host.into() }
}

#[test]
fn xdp_fwd_chain_carries_ping_and_probe_then_detaches() {
    if !netns::is_root() {
        eprintln!("skipping: needs root (namespaces, XDP)");
        return;
    }
    if !braid_io::xdp::xdp_built() {
        eprintln!("skipping: braid's XDP programs were not built (clang/libbpf-dev missing)");
        return;
    }
    let pid = std::process::id();
    let bed = Bed(Options {
        state_path: std::env::temp_dir().join(format!("braid-deploy-{pid}.json")),
        prefix: format!("braid-d{pid}-"),
    });
    let opts = &bed.0;
    up(&calvin(2, false), opts).unwrap();
    let ns = |h: &str| netns_name(opts, h);
    for h in ["nf1", "nf2"] {
        netns::run(
            netns::command_in(Some(&ns(h)), "sysctl").args(["-qw", "net.ipv4.ip_forward=0"]),
        )
        .unwrap();
    }
    assert!(!ping(&ns("client"), "10.71.3.2", "1"), "traffic must not pass with forwarding off");

    // Refused before touching anything: unknown kind, host used twice, wrong host.
    for bad in [
        vec![spec("n", "nat", "nf1")],
        vec![spec("a", "fwd", "nf1"), spec("b", "fwd", "nf1")],
        vec![spec("a", "fwd", "nowhere")],
    ] {
        let e = deploy_kernel(opts, &bad).err().unwrap();
        assert!(matches!(e, TestbedError::Deploy(_)), "{e}");
    }
    // The client has two links only with the direct one; here it has one.
    assert!(deploy_kernel(opts, &[spec("c", "fwd", "client")]).is_err());

    let mut d = deploy_kernel(opts, &[spec("f1", "fwd", "nf1"), spec("f2", "fwd", "nf2")]).unwrap();
    assert!(has_xdp(&ns("nf1"), "to-client") && has_xdp(&ns("nf2"), "to-server"));
    assert!(has_xdp(&ns("client"), "to-nf1"), "neighbours get the pass program");
    assert_eq!(status(opts).unwrap().unwrap().xdp.len(), d.attached().len());
    assert!(ping(&ns("client"), "10.71.3.2", "3"), "ping through XDP fwd x2 failed");

    let echo_sock =
        netns::in_netns(&ns("server"), || UdpSocket::bind("0.0.0.0:7007")).unwrap().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| run_echo(&echo_sock, &EchoConfig { batch: 1, ..Default::default() }, &stop));
        let sock =
            netns::in_netns(&ns("client"), || UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
        sock.connect("10.71.3.2:7007").unwrap();
        let cfg = ProbeConfig {
            sizes: vec![256, 1400],
            repetitions: 1,
            rtt: RttConfig { count: 100, interval: Duration::from_millis(1), ..Default::default() },
            throughput: None,
        };
        let out = run_probe(&sock, &cfg, |_| {}).unwrap();
        stop.store(true, Ordering::Relaxed);
        for l in &out.report.latency {
            assert_eq!((l.lost, l.reordered), (0, 0), "{l:?}");
        }
    });
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
