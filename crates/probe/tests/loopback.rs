//! The probe against the echo server over loopback, end to end through the
//! public API: both payload sizes, repetitions, report, JSON and plot.

use braid_probe::echo::{run_echo, EchoConfig};
use braid_probe::rtt::RttConfig;
use braid_probe::session::{run_probe, ProbeConfig};
use braid_probe::svg::cdf_svg;
use braid_probe::throughput::ThroughputConfig;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[test]
fn probe_session_over_loopback() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(server.local_addr().unwrap()).unwrap();
    let stop = AtomicBool::new(false);
    let cfg = ProbeConfig {
        sizes: vec![256, 1400],
        repetitions: 2,
        rtt: RttConfig { count: 100, interval: Duration::from_millis(1), ..Default::default() },
        throughput: Some(ThroughputConfig {
            step: Duration::from_millis(100),
            drain: Duration::from_millis(50),
            max_rate: 20_000,
            max_steps: 4,
            ..Default::default()
        }),
    };
    let mut lines = Vec::new();
    let out = std::thread::scope(|s| {
        s.spawn(|| run_echo(&server, &EchoConfig { batch: 1, ..Default::default() }, &stop));
        let out = run_probe(&client, &cfg, |l| lines.push(l.to_string()));
        stop.store(true, Ordering::Relaxed);
        out.unwrap()
    });
    assert_eq!(lines.len(), 2 * 2 + 2, "{lines:?}");
    let r = &out.report;
    assert_eq!(r.latency.len(), 2);
    for (l, size) in r.latency.iter().zip([256, 1400]) {
        assert_eq!(l.payload_len, size);
        assert_eq!(
            (l.sent, l.received, l.lost, l.reordered, l.duplicates),
            (200, 200, 0, 0, 0),
            "{l:?}"
        );
        assert_eq!(l.ci_method, "repetition means");
        let p = l.percentiles.unwrap();
        assert!(
            p.min_us > 0.0 && p.min_us <= p.p50_us && p.p50_us <= p.p99_us && p.p99_us <= p.max_us
        );
        assert!(l.mean_us.unwrap() >= p.min_us && l.mean_us.unwrap() <= p.max_us);
    }
    assert_eq!(r.throughput.len(), 2);
    assert!(r.throughput.iter().all(|t| t.steps.len() <= 4 && t.peak_rx_pps > 0.0));

    let table = r.table();
    assert!(table.contains("p99.9_us") && table.contains("lossless_pps"), "{table}");
    let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
    assert_eq!(v["latency"][1]["payload_len"], 1400);
    assert_eq!(out.samples.len(), 2);
    assert_eq!(out.samples[0].1.len(), 200);
    assert_eq!(out.runs.len(), 4);
    let raw: serde_json::Value = serde_json::from_str(&out.raw_json()).unwrap();
    assert_eq!(raw["latency"][1]["payload_len"], 1400);
    assert_eq!(raw["latency"][1]["runs"].as_array().unwrap().len(), 2);
    assert_eq!(raw["latency"][1]["runs"][0]["rtt_ns"].as_array().unwrap().len(), 100);
    let svg = cdf_svg("loopback", &out.samples);
    assert_eq!(svg.matches("<polyline").count(), 2);
}

#[test]
fn bad_settings_fail_before_sending() {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect("127.0.0.1:9").unwrap();
    let cfg = ProbeConfig { sizes: vec![256, 10], ..Default::default() };
    let e = run_probe(&client, &cfg, |_| panic!("nothing may run")).err().unwrap();
    assert!(e.to_string().contains("payload size 10"), "{e}");
    let cfg = ProbeConfig { sizes: vec![], ..Default::default() };
    assert!(run_probe(&client, &cfg, |_| {}).is_err());
}
