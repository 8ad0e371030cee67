//! `braid run` on live interfaces: a descriptor whose ports are
//! `af_packet` interfaces runs as a bump in the wire between two of this
//! host's interfaces until stopped. Here the "host" is a namespace between
//! a client and a server namespace; ping crosses the chain both ways (ARP
//! included) and the counters show it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use braid_io::netns;

mod bump;
use bump::{ping_until_answered, Bump, KillOnDrop, RemoveOnDrop};

fn root_or_skip() -> bool {
    if netns::is_root() {
        return true;
    }
    assert!(
        std::env::var("BRAID_REQUIRE_ROOT").as_deref() != Ok("1"),
        "BRAID_REQUIRE_ROOT=1 but this test is not running as root"
    );
    eprintln!("skipping: needs root to create namespaces");
    false
}

#[test]
fn a_live_chain_between_two_interfaces_carries_ping_both_ways() {
    if !root_or_skip() {
        return;
    }
    let bed = Bump::new("lr", "10.77.0");
    let (mid, cl, a1, b1) = (&bed.mid, &bed.cl, &bed.a1, &bed.b1);

    let dir = std::env::temp_dir().join(format!("braid-live-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir_guard = RemoveOnDrop(dir.clone());
    let chain = dir.join("live.yaml");
    std::fs::write(
        &chain,
        format!(
            "name: live\nbatch_size: 8\nports:\n  in: {{ kind: af_packet, iface: {a1}, batch_size: 8 }}\n  out: {{ kind: af_packet, iface: {b1}, batch_size: 8 }}\nnfs:\n  - {{ name: fw, type: firewall, params: {{ default: allow }} }}\n  - {{ name: f, type: fwd }}\n"
        ),
    )
    .unwrap();
    let braid = env!("CARGO_BIN_EXE_braid");
    let sock = dir.join("capture.sock");
    let child = mid
        .command(braid)
        .args(["run", chain.to_str().unwrap(), "--seconds", "20", "--json", "--capture-socket"])
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(Some(child));
    // A capture of what leaves the firewall towards the server (the echo
    // requests), through the run's capture socket.
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let pcap = dir.join("fw-out.pcapng");
    let mut capture = KillOnDrop(Some(
        Command::new(braid)
            .args(["capture", "--nf", "fw", "--dir", "out", "--filter", "icmp", "-c", "3"])
            .args(["--seconds", "15", "--socket"])
            .arg(&sock)
            .arg("-w")
            .arg(&pcap)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let t = Instant::now();
    while !std::fs::metadata(&pcap).is_ok_and(|m| m.len() > 0)
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // A capture of an NF the chain does not have is refused, naming them.
    let bad = Command::new(braid)
        .args(["capture", "--nf", "nope", "-c", "1", "--seconds", "5", "--socket"])
        .arg(&sock)
        .args(["-w", "-"])
        .output()
        .unwrap();
    let bad_err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && bad_err.contains("fw, f"), "{bad_err}");
    assert!(ping_until_answered(cl, "10.77.0.2", 3), "ping through the live chain");
    // The capture ends by itself after 3 packets: the first three ICMP
    // frames fw sent on, either way (`--dir out` is its output on both
    // gates): echo requests to the server and replies to the client.
    let cap = capture.0.take().unwrap().wait_with_output().unwrap();
    assert!(cap.status.success(), "{}", String::from_utf8_lossy(&cap.stderr));
    let mut r = braid_io::pcapng::PcapngReader::new(std::fs::File::open(&pcap).unwrap()).unwrap();
    let (mut requests, mut replies, mut data) = (0, 0, Vec::new());
    while r.next_packet(&mut data).unwrap().is_some() {
        // IPv4 (no VLAN), ICMP; then destination and ICMP type.
        assert_eq!((&data[12..14], data[23]), (&[8u8, 0][..], 1), "{data:?}");
        match (&data[30..34], data[34]) {
            ([10, 77, 0, 2], 8) => requests += 1,
            ([10, 77, 0, 1], 0) => replies += 1,
            _ => panic!("not an echo request to the server or a reply to the client: {data:?}"),
        }
    }
    assert_eq!(requests + replies, 3, "captured frames");
    assert!(requests >= 1 && replies >= 1, "{requests} requests, {replies} replies");
    // SIGTERM: the run stops, prints its counters and exits 0.
    let child = guard.take();
    Command::new("kill").arg(child.id().to_string()).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fw = &v["stages"][0];
    assert_eq!(fw["name"], "fw");
    // Requests, answers and ARP both ways: at least 3 echo requests and 3 replies.
    assert!(fw["packets_in"].as_u64().unwrap() >= 6, "{v}");
    assert_eq!(fw["packets_in"], fw["packets_out"]);
    assert!(!sock.exists(), "the run removes its capture socket");
    drop(bed);
}

#[test]
fn an_offline_run_refuses_a_capture_socket() {
    let sock = std::env::temp_dir().join(format!("braid-run-nosock-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_braid"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args([
            "run",
            "examples/sample.yaml",
            "-i",
            "in.pcap",
            "-o",
            "out.pcap",
            "--capture-socket",
        ])
        .arg(&sock)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--capture-socket") && err.contains("only a live run"), "{err}");
    assert!(!sock.exists(), "nothing bound");
}
