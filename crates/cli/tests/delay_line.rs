//! A WAN link without `netem`: `braid run` with a `delay` chain between
//! the two AF_PACKET interfaces of a middle namespace (docs/testbed.md,
//! "Shaped (WAN) links"). Ping crosses a 5 ms delay line each way; its RTT
//! must be at least 10 ms and, with `--tick-us 100`, not much more.

use std::process::{Command, Stdio};

use braid_io::netns;

mod bump;
use bump::{ping_until_answered, Bump, KillOnDrop, RemoveOnDrop};

/// How much the mean RTT may exceed 2 × 5 ms: 2 × the 0.1 ms tick, the
/// wake-ups and the veth/ping path itself, with margin for a loaded CI
/// machine. With the default 10 ms tick the mean is ~20 ms and this fails.
const BOUND_MS: f64 = 3.0;

#[test]
fn ping_through_a_braid_delay_line_takes_twice_the_delay() {
    if braid_testkit::skip_unless(
        netns::is_root()
            && Command::new("ping").arg("-V").output().is_ok_and(|o| o.status.success()),
        "ping_through_a_braid_delay_line_takes_twice_the_delay",
        "needs root (namespaces) and ping",
    ) {
        return;
    }
    let bed = Bump::new("dl", "10.78.0");
    let (mid, cl, a1, b1) = (&bed.mid, &bed.cl, &bed.a1, &bed.b1);

    let dir =
        RemoveOnDrop(std::env::temp_dir().join(format!("braid-delay-line-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let chain = dir.0.join("wan.yaml");
    std::fs::write(
        &chain,
        format!(
            "name: wan\nbatch_size: 32\nports:\n  in: {{ kind: af_packet, iface: {a1}, batch_size: 32 }}\n  out: {{ kind: af_packet, iface: {b1}, batch_size: 32 }}\nnfs:\n  - {{ name: link, type: delay, params: {{ delay: 5ms, limit: 1000 }} }}\n"
        ),
    )
    .unwrap();
    let braid = env!("CARGO_BIN_EXE_braid");
    let child = mid
        .command(braid)
        .args(["run", chain.to_str().unwrap(), "--tick-us", "100", "--seconds", "25", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(Some(child));
    // Ping until it answers (this also settles ARP, itself delayed).
    assert!(ping_until_answered(cl, "10.78.0.2", 2), "ping through the delay line");
    let out = cl
        .command("ping")
        .args(["-q", "-c", "30", "-i", "0.05", "-W", "1", "10.78.0.2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let (min, avg, max) = rtt(&text).unwrap_or_else(|| panic!("no rtt line in: {text}"));
    eprintln!("RTT through 2 x 5 ms: min {min} avg {avg} max {max} ms");
    assert!(min >= 10.0, "a packet left the line early: min RTT {min} ms\n{text}");
    assert!(avg <= 10.0 + BOUND_MS, "mean RTT {avg} ms > 10 + {BOUND_MS} ms\n{text}");

    let child = guard.take();
    Command::new("kill").arg(child.id().to_string()).status().unwrap();
    let run = child.wait_with_output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let link = &v["stages"][0];
    assert_eq!(link["kind"], "delay", "{v}");
    // 30 + at least 2 requests and as many replies.
    assert!(link["packets_out"].as_u64().unwrap() >= 64, "{v}");
    drop((dir, bed));
}

#[test]
fn tick_us_is_checked_and_only_for_live_ports() {
    let braid = env!("CARGO_BIN_EXE_braid");
    let chain = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/sample.yaml");
    let run = |extra: &[&str]| {
        let out = Command::new(braid)
            .args(["run", chain, "-i", "/nonexistent/in.pcap", "-o", "/nonexistent/out.pcap"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&["--tick-us", "5"]);
    assert!(e.contains("--tick-us 5: must be 20..=10000"), "{e}");
    let e = run(&["--tick-us", "100"]);
    assert!(e.contains("--tick-us is for live ports"), "{e}");
}

/// `rtt min/avg/max/mdev = 10.1/10.3/10.9/0.2 ms` -> (min, avg, max).
fn rtt(ping: &str) -> Option<(f64, f64, f64)> {
    let line = ping.lines().find(|l| l.contains("min/avg/max"))?;
    let nums = line.split('=').nth(1)?.trim().split(' ').next()?;
    let v: Vec<f64> = nums.split('/').filter_map(|x| x.parse().ok()).collect();
    (v.len() >= 3).then(|| (v[0], v[1], v[2]))
}
