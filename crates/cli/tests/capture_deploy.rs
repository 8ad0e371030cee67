//! `braid capture` on a running `braid deploy` (issue 14, item 2): a
//! firewall in user space on the NF host of a private CALVIN testbed
//! (client - nf1 - server). What the capture shows leaving the firewall
//! must equal what tcpdump on the next host (the server) receives, frame
//! for frame and in order (from byte 12 on: the NF host rewrites the
//! Ethernet addresses after the NF, as every frame leaving it); the drops
//! must be exactly the denied datagrams, each with its reason as a pcapng
//! comment that tshark reads. Needs root; everything (deploy, captures,
//! tcpdump, namespaces, files) is removed at the end, also on failure.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use braid_io::netns;
use braid_testbed::{calvin, down, netns_name, up, Options};

const CHAIN: &str = "name: cap
nfs:
  - name: fw
    type: firewall
    placement: user
    params:
      rules:
        - { action: allow, proto: udp, dst_ports: 7007 }
      default: drop
";

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
    if braid_testkit::skip_unless(
        netns::is_root(),
        "capture_equals_what_the_next_hop_receives_and_drops_carry_their_reason",
        "needs root (namespaces, AF_PACKET)",
    ) {
        return;
    }
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("braid-capture-deploy-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut bed = Bed {
        opts: Options { state_path: dir.join("testbed.json"), prefix: format!("braid-cp{pid}-") },
        dir: dir.clone(),
        children: Vec::new(),
    };
    up(&calvin(1, false), &bed.opts).unwrap();
    std::fs::write(dir.join("chain.yaml"), CHAIN).unwrap();
    let sock = dir.join("deploy.sock");
    let stats = dir.join("stats.json");
    bed.children.push(
        braid()
            .arg("deploy")
            .arg(dir.join("chain.yaml"))
            .args(["--hosts", "nf1", "--user-io", "af_packet", "--quiet", "--interval-ms", "50"])
            .arg("--state")
            .arg(&bed.opts.state_path)
            .arg("--stats-file")
            .arg(&stats)
            .arg("--capture-socket")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the deployment", 30, || sock.exists() && stats.exists());

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
            .args(["capture", "--nf", "fw", "--dir", "out", "--filter", "udp", "-c"])
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

    // The deployment stops cleanly and removes its socket.
    terminate(&mut bed.children[0]);
    assert!(!sock.exists(), "the capture socket is removed");
}
