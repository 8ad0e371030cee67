//! `braid capture` on a running `braid deploy` (issue 14, item 2): a
//! firewall on the NF host of a private CALVIN testbed (client - nf1 -
//! server), in user space (a worker's tap) and in the kernel (the XDP
//! program's tap, docs/capture.md). What the capture shows leaving the
//! firewall must equal what tcpdump on the next host (the server)
//! receives, frame for frame and in order (from byte 12 on: the NF host
//! rewrites the Ethernet addresses after the NF, as every frame leaving
//! it); the drops must be exactly the denied datagrams, each with its
//! reason as a pcapng comment that tshark reads. For the kernel firewall,
//! once the captures end its tap word is 0 again (the stats file), the
//! deploy process holds no more BPF map descriptors than before, and the
//! NF host's interfaces carry the same XDP programs as before. Needs root;
//! everything (deploy, captures, tcpdump, namespaces, files) is removed at
//! the end, also on failure.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use braid_io::netns;
use braid_testbed::{calvin, down, netns_name, up, Options};

/// The chain with the firewall placed `user` or `kernel` (the XDP
/// firewall is stateless: `conntrack: false`), and with `xor` after it
/// when `xor` (in the kernel: with the compact mapping, both are stages of
/// one XDP chain program).
fn chain(placement: &str, xor: bool) -> String {
    let x = if xor {
        format!("  - {{ name: x, type: xor, placement: {placement}, params: {{ key: \"0x5a01ff80\" }} }}\n")
    } else {
        String::new()
    };
    format!(
        "name: cap
nfs:
  - name: fw
    type: firewall
    placement: {placement}
    params:
      conntrack: false
      rules:
        - {{ action: allow, proto: udp, dst: 10.71.2.2, dst_ports: 7007 }}
      default: drop
{x}"
    )
}

struct Bed {
    opts: Options,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            // SIGTERM first: deploy and tcpdump clean up after themselves.
            terminate(c);
        }
        let _ = down(&self.opts);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn terminate(c: &mut Child) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a child this test started and has not reaped yet,
    // so its pid cannot have been reused.
    unsafe {
        libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn braid() -> Command {
    Command::new(env!("CARGO_BIN_EXE_braid"))
}

/// The frames of a pcap or pcapng file.
fn frames(path: &Path) -> Vec<Vec<u8>> {
    let f = std::fs::File::open(path).unwrap();
    let mut r = braid_io::capture::CaptureReader::new(std::io::BufReader::new(f)).unwrap();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while r.next_record(&mut buf).unwrap().is_some() {
        out.push(buf.clone());
    }
    out
}

/// The interface of `ns` that is not loopback.
fn iface(ns: &str) -> String {
    let out = netns::ip(Some(ns), &["-o", "link", "show"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .find(|n| n != "lo")
        .unwrap()
}

#[test]
fn capture_equals_what_the_next_hop_receives_and_drops_carry_their_reason() {
    let test = "capture_equals_what_the_next_hop_receives_and_drops_carry_their_reason";
    if braid_testkit::skip_unless(netns::is_root(), test, "needs root (namespaces, AF_PACKET)") {
        return;
    }
    capture_through("user", "u", false);
}

#[test]
fn capture_of_a_kernel_nf_equals_what_the_next_hop_receives_and_leaves_nothing() {
    let test = "capture_of_a_kernel_nf_equals_what_the_next_hop_receives_and_leaves_nothing";
    if braid_testkit::skip_unless(netns::is_root(), test, "needs root (namespaces, XDP)")
        || braid_testkit::skip_unless(
            braid_io::xdp::xdp_built(),
            test,
            "XDP programs were not built (install clang and libbpf-dev)",
        )
    {
        return;
    }
    capture_through("kernel", "k", false);
}

/// Two kernel NFs as stages of one XDP chain program: what leaves the
/// xor stage (the last) equals what the server receives, while the
/// firewall stage's drops are captured at the same time from the same
/// program's ring.
#[test]
fn capture_of_xdp_chain_stages_equals_what_the_next_hop_receives() {
    let test = "capture_of_xdp_chain_stages_equals_what_the_next_hop_receives";
    if braid_testkit::skip_unless(netns::is_root(), test, "needs root (namespaces, XDP)")
        || braid_testkit::skip_unless(
            braid_io::xdp::xdp_built(),
            test,
            "XDP programs were not built (install clang and libbpf-dev)",
        )
    {
        return;
    }
    capture_through("kernel", "c", true);
}

/// The stats file's `xdp_tap.points` of NF `nf` (kernel NFs only).
fn tap_points(stats: &Path, nf: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(stats).ok()?).ok()?;
    v["nfs"].as_array()?.iter().find(|n| n["name"] == nf)?["xdp_tap"]["points"].as_u64()
}

/// BPF map descriptors process `pid` holds.
fn bpf_map_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains("bpf-map"))
        .count()
}

/// The XDP programs on `ns`'s interfaces (`ip -d link` lines naming one).
fn xdp_programs(ns: &str) -> Vec<String> {
    let out = netns::ip(Some(ns), &["-d", "-o", "link", "show"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .flat_map(|l| {
            let name = l.split(": ").nth(1).unwrap_or("").to_string();
            let words: Vec<&str> = l.split_whitespace().collect();
            words
                .windows(2)
                .filter(|w| w[0].starts_with("prog/xdp"))
                .map(|w| format!("{name} {} {}", w[0], w[1]))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Deploy the chain, capture what leaves its last NF (`fw`, or `x` with
/// `xor`) and the firewall's drops, and compare with the server.
fn capture_through(placement: &str, tag: &str, xor: bool) {
    let kernel = placement == "kernel";
    let out_nf = if xor { "x" } else { "fw" };
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("braid-capture-deploy-{tag}{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut bed = Bed {
        opts: Options {
            state_path: dir.join("testbed.json"),
            prefix: format!("braid-cp{tag}{pid}-"),
        },
        dir: dir.clone(),
        children: Vec::new(),
    };
    up(&calvin(1, false), &bed.opts).unwrap();
    std::fs::write(dir.join("chain.yaml"), chain(placement, xor)).unwrap();
    let sock = dir.join("deploy.sock");
    let stats = dir.join("stats.json");
    bed.children.push(
        braid()
            .arg("deploy")
            .arg(dir.join("chain.yaml"))
            .args(["--hosts", "nf1", "--user-io", "af_packet", "--quiet", "--interval-ms", "50"])
            .args(["--mapping", "compact"])
            .arg("--state")
            .arg(&bed.opts.state_path)
            .arg("--stats-file")
            .arg(&stats)
            .arg("--capture-socket")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("deploy.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while !(sock.exists() && stats.exists()) {
        let log = || std::fs::read_to_string(dir.join("deploy.log")).unwrap_or_default();
        assert!(started.elapsed() < Duration::from_secs(30), "no deployment: {}", log());
        assert!(bed.children[0].try_wait().unwrap().is_none(), "deploy ended: {}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let nf1 = netns_name(&bed.opts, "nf1");
    let deploy_pid = bed.children[0].id();
    let (maps_before, progs_before) = (bpf_map_fds(deploy_pid), xdp_programs(&nf1));
    if kernel {
        wait_for("the stats file to show the tap", 10, || tap_points(&stats, "fw") == Some(0));
        assert_eq!(progs_before.len(), 2, "the XDP firewall on both sides: {progs_before:?}");
    }

    // Clear refusals: an unknown NF, a bad filter.
    let o = braid().args(["capture", "--nf", "nope", "--socket"]).arg(&sock).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no NF `nope`") && err.contains("fw"), "{err}");
    let o = braid()
        .args(["capture", "--nf", "fw", "--filter", "udp port x", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("word 3 (\"x\")"), "{err}");

    // tcpdump on the next hop, the server.
    let server = netns_name(&bed.opts, "server");
    let server_pcap = dir.join("server.pcap");
    let mut tcpdump = netns::command_in(Some(&server), "tcpdump")
        .args(["-i", &iface(&server), "-U", "-n", "-w"])
        .arg(&server_pcap)
        .args(["udp", "and", "dst", "port", "7007"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ready once it says it is listening (its stderr, read on a thread so
    // the wait is bounded).
    let stderr = tcpdump.stderr.take().unwrap();
    bed.children.push(tcpdump);
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if said.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("listening on")) {
        match heard.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("tcpdump did not start: {lines:?}"),
        }
    }

    // Two captures: what leaves the firewall (UDP), to a file; its drops
    // (UDP only: the firewall also drops the ARP and IPv6 noise), to
    // standard output.
    const ALLOWED: usize = 60;
    const DENIED: usize = 12;
    let out_file = dir.join("out.pcapng");
    bed.children.push(
        braid()
            .args(["capture", "--nf", out_nf, "--dir", "out", "--filter", "udp", "-c"])
            .arg(ALLOWED.to_string())
            .args(["--seconds", "30", "--socket"])
            .arg(&sock)
            .arg("-w")
            .arg(&out_file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let drops_file = dir.join("drops.pcapng");
    bed.children.push(
        braid()
            .args(["capture", "--nf", "fw", "--dir", "drops", "--filter", "udp", "-c"])
            .arg(DENIED.to_string())
            .args(["--seconds", "30", "--socket"])
            .arg(&sock)
            .args(["-w", "-"])
            .stdout(std::fs::File::create(&drops_file).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Both taps are installed once their files have the pcapng header.
    let has_header = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    wait_for("the captures to start", 20, || has_header(&out_file) && has_header(&drops_file));
    if kernel {
        // Both captures' points are on in the XDP program: out and drops.
        if xor {
            wait_for("the tap words", 10, || {
                tap_points(&stats, "fw") == Some(0b100) && tap_points(&stats, "x") == Some(0b010)
            });
        } else {
            wait_for("the tap word out|drops", 10, || tap_points(&stats, "fw") == Some(0b110));
        }
        assert!(bpf_map_fds(deploy_pid) > maps_before, "the captures hold the tap maps open");
    }

    // Traffic from the client: allowed and denied datagrams interleaved.
    let client = netns_name(&bed.opts, "client");
    let udp = netns::in_netns(&client, || UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    let mut denied_sent = 0;
    for i in 0..ALLOWED {
        let payload = format!("braid capture test {i:04}");
        udp.send_to(payload.as_bytes(), "10.71.2.2:7007").unwrap();
        if i % 5 == 0 && denied_sent < DENIED {
            udp.send_to(b"denied", "10.71.2.2:7008").unwrap();
            denied_sent += 1;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    assert_eq!(denied_sent, DENIED);

    // Both captures end at their packet counts.
    for k in [2, 3] {
        let c = &mut bed.children[k];
        wait_for("a capture to reach its count", 30, || matches!(c.try_wait(), Ok(Some(_))));
        assert!(c.wait().unwrap().success());
    }
    // The server has received them all (allow a moment), then tcpdump
    // stops and writes out.
    wait_for("the server to receive everything", 10, || {
        std::fs::metadata(&server_pcap).is_ok_and(|m| m.len() >= (ALLOWED * 60) as u64)
    });
    std::thread::sleep(Duration::from_millis(300));
    terminate(&mut bed.children[1]);

    let mirrored = frames(&out_file);
    let received = frames(&server_pcap);
    assert_eq!(mirrored.len(), ALLOWED);
    assert_eq!(received.len(), ALLOWED, "the server got every allowed datagram");
    for (i, (m, r)) in mirrored.iter().zip(&received).enumerate() {
        assert_eq!(m[12..], r[12..], "frame {i}: the mirror differs from what the server got");
    }
    let dropped = frames(&drops_file);
    assert_eq!(dropped.len(), DENIED);
    assert!(dropped.iter().all(|f| f.ends_with(b"denied")));
    // tshark reads the reason from each packet's comment.
    let t = Command::new("tshark")
        .args(["-r"])
        .arg(&drops_file)
        .args(["-T", "fields", "-e", "frame.comment"])
        .output()
        .unwrap();
    let comments = String::from_utf8_lossy(&t.stdout);
    assert_eq!(
        comments.lines().filter(|l| l.trim() == "dropped by fw: denied").count(),
        DENIED,
        "tshark: {comments}{}",
        String::from_utf8_lossy(&t.stderr)
    );

    if kernel {
        // The tap is off again, the capture's descriptors are closed and
        // the NF host carries what the deployment attached, nothing more.
        wait_for("the tap words to be 0", 10, || {
            tap_points(&stats, "fw") == Some(0) && (!xor || tap_points(&stats, "x") == Some(0))
        });
        wait_for("the capture's map descriptors to close", 10, || {
            bpf_map_fds(deploy_pid) == maps_before
        });
        assert_eq!(xdp_programs(&nf1), progs_before);
    }

    // The deployment stops cleanly and removes its socket.
    terminate(&mut bed.children[0]);
    assert!(!sock.exists(), "the capture socket is removed");
}
