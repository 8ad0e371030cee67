//! The testbed on the real kernel: build the CALVIN topology, send ping and
//! probe traffic across the Linux-forwarding NF hosts, tear it down and
//! check nothing is left. Needs root; skips with a message otherwise.

use braid_io::netns;
use braid_probe::echo::{run_echo, EchoConfig};
use braid_probe::rtt::RttConfig;
use braid_probe::session::{run_probe, ProbeConfig};
use braid_testbed::{calvin, down, netns_name, status, up, Options, TestbedError, UpOutcome};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Root, or skip (a failure instead under `BRAID_REQUIRE_ROOT=1`).
fn root_or_skip(test: &str) -> bool {
    !braid_testkit::skip_unless(
        netns::is_root(),
        test,
        "the testbed needs root (network namespaces and veth)",
    )
}

/// Options unique to this process and test, and a guard that runs `down`
/// when the test ends, also by panic.
struct Bed {
    opts: Options,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let pid = std::process::id();
        Bed {
            opts: Options {
                state_path: std::env::temp_dir().join(format!("braid-testbed-{pid}-{tag}.json")),
                prefix: format!("braid-t{pid}{tag}-"),
            },
        }
    }

    fn namespaces_left(&self) -> Vec<String> {
        let out = netns::ip(None, &["netns", "list"]).expect("ip netns list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&self.opts.prefix))
            .map(String::from)
            .collect()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = down(&self.opts);
        // Belt and braces if the state file was lost: remove by prefix.
        for ns in self.namespaces_left() {
            let _ = netns::ip(None, &["netns", "del", &ns]);
        }
    }
}

fn ping(ns: &str, addr: &str) -> bool {
    netns::command_in(Some(ns), "ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", addr])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn up_ping_probe_down_leaves_nothing() {
    if !root_or_skip("up_ping_probe_down_leaves_nothing") {
        return;
    }
    let bed = Bed::new("a");
    let topo = calvin(2, true);
    let devs = ["to-nf1", "to-nf2", "to-client", "to-server", "direct"];
    let root_before: Vec<bool> = devs.iter().map(|d| netns::link_exists(None, d)).collect();
    assert_eq!(up(&topo, &bed.opts).unwrap(), UpOutcome::Created);
    assert_eq!(up(&topo, &bed.opts).unwrap(), UpOutcome::AlreadyUp, "up must be idempotent");
    // A different topology while this one is up is refused, untouched.
    let e = up(&calvin(1, false), &bed.opts).unwrap_err();
    assert!(matches!(e, TestbedError::OtherUp { .. }), "{e}");

    let client = netns_name(&bed.opts, "client");
    let server = netns_name(&bed.opts, "server");
    assert!(ping(&client, "10.71.3.2"), "ping client -> server through nf1, nf2 failed");
    assert!(ping(&client, "10.71.100.2"), "ping client -> server on the direct link failed");
    // Checksum offload is off on every veth end.
    let out = netns::command_in(Some(&netns_name(&bed.opts, "nf1")), "ethtool")
        .args(["-k", "to-nf2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tx-checksumming: off"), "{text}");

    // Echo in the server host, probe in the client host, both paths.
    let echo_sock = netns::in_netns(&server, || UdpSocket::bind("0.0.0.0:7007")).unwrap().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| run_echo(&echo_sock, &EchoConfig { batch: 1, ..Default::default() }, &stop));
        for target in ["10.71.3.2:7007", "10.71.100.2:7007"] {
            let sock = netns::in_netns(&client, || UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
            sock.connect(target).unwrap();
            let cfg = ProbeConfig {
                sizes: vec![256, 1400],
                repetitions: 2,
                rtt: RttConfig {
                    count: 100,
                    interval: Duration::from_millis(1),
                    ..Default::default()
                },
                throughput: None,
            };
            let out = run_probe(&sock, &cfg, |_| {}).unwrap();
            for l in &out.report.latency {
                assert_eq!((l.lost, l.reordered, l.duplicates), (0, 0, 0), "{target}: {l:?}");
                let p = l.percentiles.unwrap();
                // Sane: positive, ordered, and far below a second on veth.
                assert!(
                    p.min_us > 0.0 && p.p50_us <= p.p99_us && p.max_us < 1_000_000.0,
                    "{target}: {p:?}"
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    drop(echo_sock);

    let report = down(&bed.opts).unwrap();
    assert_eq!(report.namespaces.len(), 4);
    assert!(bed.namespaces_left().is_empty(), "left over: {:?}", bed.namespaces_left());
    assert!(!bed.opts.state_path.exists());
    // The veth ends lived only in the namespaces; none leaked to the root.
    for (dev, before) in devs.iter().zip(root_before) {
        assert!(before || !netns::link_exists(None, dev), "{dev} left in the root namespace");
    }
    // down again: nothing to do.
    assert_eq!(down(&bed.opts).unwrap().namespaces.len(), 0);
}

#[test]
fn failed_up_rolls_back_everything() {
    if !root_or_skip("failed_up_rolls_back_everything") {
        return;
    }
    let bed = Bed::new("b");
    let mut topo = calvin(2, false);
    // The kernel refuses this MTU on veth, after the namespaces and the
    // first links exist: a failure half-way.
    topo.links[2].mtu = Some(1_000_000);
    let e = up(&topo, &bed.opts).unwrap_err();
    assert!(matches!(e, TestbedError::Setup { .. }), "{e}");
    assert!(e.to_string().contains("link 2"), "{e}");
    assert!(bed.namespaces_left().is_empty(), "left over: {:?}", bed.namespaces_left());
    assert!(!bed.opts.state_path.exists());
}

#[test]
fn conflicting_namespace_is_refused_and_left_alone() {
    if !root_or_skip("conflicting_namespace_is_refused_and_left_alone") {
        return;
    }
    let bed = Bed::new("c");
    let foreign = netns::NetnsGuard::create(&netns_name(&bed.opts, "server")).unwrap();
    let e = up(&calvin(1, false), &bed.opts).unwrap_err();
    assert!(matches!(e, TestbedError::Conflict(ref n) if n == foreign.name()), "{e}");
    assert_eq!(bed.namespaces_left(), vec![foreign.name().to_string()]);
    assert!(status(&bed.opts).unwrap().is_none());
}

#[test]
fn partly_removed_testbed_is_rebuilt() {
    if !root_or_skip("partly_removed_testbed_is_rebuilt") {
        return;
    }
    let bed = Bed::new("d");
    let topo = calvin(1, false);
    assert_eq!(up(&topo, &bed.opts).unwrap(), UpOutcome::Created);
    netns::ip(None, &["netns", "del", &netns_name(&bed.opts, "nf1")]).unwrap();
    assert_eq!(up(&topo, &bed.opts).unwrap(), UpOutcome::Rebuilt);
    assert!(ping(&netns_name(&bed.opts, "client"), "10.71.2.2"));
    assert!(status(&bed.opts).unwrap().unwrap().complete);
    down(&bed.opts).unwrap();
    assert!(bed.namespaces_left().is_empty());
}

/// Ping's average RTT in ms from `ns` to `addr` (`count` pings).
fn ping_avg_ms(ns: &str, addr: &str, count: &str) -> f64 {
    let out = netns::run(
        netns::command_in(Some(ns), "ping")
            .args(["-c", count, "-i", "0.05", "-W", "2", "-q", addr]),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // rtt min/avg/max/mdev = 20.1/20.4/21.0/0.2 ms
    let stats =
        text.lines().find(|l| l.contains("min/avg/max")).unwrap_or_else(|| panic!("{text}"));
    stats.split('=').nth(1).unwrap().trim().split('/').nth(1).unwrap().parse().unwrap()
}

/// TCP throughput client -> server over the testbed, Mbit/s (iperf3, 2 s).
fn iperf3_mbit(bed: &Bed, port: &str) -> f64 {
    let ns = |h: &str| netns_name(&bed.opts, h);
    let mut server = netns::command_in(Some(&ns("server")), "iperf3")
        .args(["-s", "-1", "-p", port])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = netns::run(netns::command_in(Some(&ns("client")), "iperf3").args([
        "-c",
        "10.71.2.2",
        "-p",
        port,
        "-t",
        "2",
        "-J",
    ]));
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.unwrap().stdout).unwrap();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap() / 1e6
}

#[test]
fn shaped_link_caps_the_rate_and_adds_its_delay_where_the_kernel_can() {
    let name = "shaped_link_caps_the_rate_and_adds_its_delay_where_the_kernel_can";
    if !root_or_skip(name) || braid_testkit::skip_unless_tool("iperf3", name) {
        return;
    }
    // Rate: an HTB class on both ends of the client's link, 40 Mbit/s.
    let bed = Bed::new("w");
    let mut topo = calvin(1, false);
    topo.links[0].shape = Some(braid_testbed::topology::Shape {
        rate: Some("40mbit".into()),
        limit: Some(200),
        ..Default::default()
    });
    up(&topo, &bed.opts).unwrap();
    let mbit = iperf3_mbit(&bed, "5302");
    assert!((10.0..=42.0).contains(&mbit), "TCP over a 40 Mbit/s link: {mbit:.1} Mbit/s");
    down(&bed.opts).unwrap();
    assert!(bed.namespaces_left().is_empty());

    // Delay: netem, when the kernel has it (10 ms one way, each direction);
    // otherwise a clear refusal and nothing left behind.
    let bed = Bed::new("d");
    topo.links[0].shape =
        Some(braid_testbed::topology::Shape { delay: Some("10ms".into()), ..Default::default() });
    match up(&topo, &bed.opts) {
        Ok(_) => {
            let ns = |h: &str| netns_name(&bed.opts, h);
            let rtt = ping_avg_ms(&ns("client"), "10.71.2.2", "10");
            assert!((20.0..40.0).contains(&rtt), "RTT {rtt} ms over a 2 x 10 ms link");
            let rtt_nf1 = ping_avg_ms(&ns("nf1"), "10.71.2.2", "10");
            assert!(rtt_nf1 < 5.0, "RTT {rtt_nf1} ms on an unshaped link");
            down(&bed.opts).unwrap();
        }
        Err(TestbedError::State(msg)) => {
            assert!(msg.contains("links[0].shape") && msg.contains("netem"), "{msg}");
            eprintln!("{name}: this kernel has no netem: delay refused as expected");
        }
        Err(e) => panic!("{e}"),
    }
    assert!(bed.namespaces_left().is_empty());
}
