//! Shared by the deployment tests (`mod common;` in each): the testbed guard,
//! skipping without root or XDP, and the traffic checks.

#![allow(dead_code)] // each test file uses its own subset

use braid_io::netns;
use braid_probe::echo::{run_echo, EchoConfig};
use braid_probe::rtt::RttConfig;
use braid_probe::session::{run_probe, ProbeConfig};
use braid_testbed::{calvin, down, netns_name, up, Options};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The testbed, taken down on drop (also when a test fails).
pub struct Bed(pub Options);

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = down(&self.0);
    }
}

/// True (after saying why) if this test cannot run here; a failure
/// instead under `BRAID_REQUIRE_ROOT=1` (see braid-testkit).
pub fn skip(what: &str) -> bool {
    braid_testkit::skip_unless(
        netns::is_root(),
        what,
        "needs root (namespaces, XDP, AF_XDP, AF_PACKET)",
    ) || braid_testkit::skip_unless(
        braid_io::xdp::xdp_built(),
        what,
        "braid's XDP programs were not built (clang/libbpf-dev missing)",
    )
}

/// The CALVIN testbed with two NF hosts, up; `tag` keeps the names of
/// tests running at the same time apart.
pub fn bed(tag: &str) -> Bed {
    bed_with(tag, 2)
}

/// The CALVIN testbed with `nf_hosts` NF hosts, up.
pub fn bed_with(tag: &str, nf_hosts: usize) -> Bed {
    let pid = std::process::id();
    let bed = Bed(Options {
        state_path: std::env::temp_dir().join(format!("braid-deploy-{pid}-{tag}.json")),
        prefix: format!("braid-{tag}{pid}-"),
    });
    up(&calvin(nf_hosts, false), &bed.0).unwrap();
    bed
}

/// Linux forwarding off on both NF hosts, so traffic only passes the NFs.
pub fn forwarding_off(opts: &Options) {
    for h in ["nf1", "nf2"] {
        netns::run(
            netns::command_in(Some(&netns_name(opts, h)), "sysctl")
                .args(["-qw", "net.ipv4.ip_forward=0"]),
        )
        .unwrap();
    }
}

pub fn ping(ns: &str, addr: &str, count: &str) -> bool {
    netns::command_in(Some(ns), "ping")
        .args(["-c", count, "-i", "0.2", "-W", "1", addr])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn has_xdp(ns: &str, dev: &str) -> bool {
    let out = netns::ip(Some(ns), &["link", "show", "dev", dev]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

/// 100 probe packets each of 256 and 1400 B from client to the server's
/// echo and back: none lost, reordered or foreign.
pub fn probe_round_trips(opts: &Options) {
    let ns = |h: &str| netns_name(opts, h);
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
        let out = run_probe(&sock, &cfg, |_| {});
        stop.store(true, Ordering::Relaxed);
        for l in &out.unwrap().report.latency {
            assert_eq!((l.lost, l.reordered, l.foreign), (0, 0, 0), "{l:?}");
        }
    });
}

/// Drop `d` and take the testbed down: every program detached, the state
/// file's list empty, no namespace with the bed's prefix left, no deploy
/// lock file.
pub fn assert_nothing_left(d: braid_testbed::deploy::Deployment, bed: Bed) {
    let attached = d.attached().to_vec();
    drop(d);
    for (n, dev) in &attached {
        // A program detaches when the last descriptor of its link closes;
        // a child that another test thread is forking at that moment holds
        // a copy until its exec, so allow a moment (seen failing under load).
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while has_xdp(n, dev) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!has_xdp(n, dev), "XDP still on {n}:{dev}");
    }
    assert!(braid_testbed::status(&bed.0).unwrap().unwrap().xdp.is_empty());
    let prefix = bed.0.prefix.clone();
    let lock = bed.0.state_path.with_extension("deploy.lock");
    down(&bed.0).unwrap();
    assert!(!lock.exists(), "deploy lock {} left behind", lock.display());
    drop(bed);
    let out = netns::ip(None, &["netns", "list"]).unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(!list.contains(&prefix), "namespaces left over: {list}");
}
