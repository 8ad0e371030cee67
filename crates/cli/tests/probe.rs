//! `braid probe` exit status and early checks, on loopback (no root).

use std::net::UdpSocket;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_braid"))
        .arg("probe")
        .args(args)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A few fast packets, nothing written.
const QUICK: &[&str] =
    &["--count", "5", "--interval-us", "1000", "--wait-ms", "200", "--reps", "1", "--no-svg"];

#[test]
fn nothing_to_measure_is_refused() {
    let o = probe(&["127.0.0.1:9", "--reps", "0", "--no-svg"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to measure"), "{}", stderr(&o));
}

#[test]
fn a_closed_port_is_reported_unreachable_and_fails() {
    // Bind and drop: a port nothing listens on, so loopback answers with
    // ICMP port unreachable.
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let target = format!("127.0.0.1:{port}");
    let o = probe(&[&[target.as_str(), "--sizes", "64"], QUICK].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("{target} is unreachable: ")), "{}", stderr(&o));
}

#[test]
fn total_loss_fails() {
    // A socket that receives and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = silent.local_addr().unwrap().to_string();
    let o = probe(&[&[target.as_str(), "--sizes", "64"], QUICK].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("no answer from {target}: all 5 packets of 64 B were lost")),
        "{}",
        stderr(&o)
    );
    drop(silent);
}

#[test]
fn a_bad_output_path_fails_before_measuring() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = silent.local_addr().unwrap().to_string();
    let t = Instant::now();
    // 1000 packets every 5 ms would take 5 s before the fix found the path.
    let o = probe(&[&target, "--json-out", "/nonexistent-dir/r.json", "--no-svg", "--reps", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot create /nonexistent-dir/r.json"), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    assert!(!stderr(&o).contains("latency:"), "measured first: {}", stderr(&o));
}
