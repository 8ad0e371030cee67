//! A braidd process for tests: its own state directory and socket, killed
//! and cleaned up on drop (also when the test fails).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use braid_daemon::client::Client;

pub const BRAIDD: &str = env!("CARGO_BIN_EXE_braidd");

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("braidd-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The migration key every test braidd shares (64 hex digits).
pub const TEST_MIGRATE_KEY: &str =
    "9f3c1a7e5b2d4f608e1c3a5b7d9f0e2c4a6b8d0f1e3c5a7b9d2f4e6a8c0b1d3e";

/// Write `key` to `DIR/migrate.key` (mode 0600, as braidd demands); its
/// path.
pub fn write_migrate_key(dir: &Path, key: &str) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("migrate.key");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("writing the migrate key");
    std::io::Write::write_all(&mut f, format!("{key}\n").as_bytes()).unwrap();
    path
}

/// A running braidd.
pub struct Braidd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// Network namespace it runs in.
    pub netns: Option<String>,
    pub extra: Vec<String>,
}

impl Braidd {
    /// The command line of a braidd with state and socket under `dir`.
    pub fn command(dir: &Path, netns: Option<&str>, extra: &[&str]) -> Command {
        Braidd::command_of(BRAIDD, dir, netns, extra)
    }

    /// The command line of braidd binary `bin` (another build, for a
    /// side-by-side measurement) with state and socket under `dir`.
    pub fn command_of(bin: &str, dir: &Path, netns: Option<&str>, extra: &[&str]) -> Command {
        Braidd::command_wrapped(&[], bin, dir, netns, extra)
    }

    /// [`Braidd::command_of`] run through `wrapper` (a command and its
    /// arguments that end by running the rest: `setpriv ... --`).
    pub fn command_wrapped(
        wrapper: &[&str],
        bin: &str,
        dir: &Path,
        netns: Option<&str>,
        extra: &[&str],
    ) -> Command {
        let mut argv: Vec<&str> = Vec::new();
        if let Some(ns) = netns {
            argv.extend(["ip", "netns", "exec", ns]);
        }
        argv.extend(wrapper);
        argv.push(bin);
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c.arg("--socket")
            .arg(dir.join("braidd.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(extra);
        // Every test braidd may migrate to every other: the same key,
        // unless the test gives its own (or runs braidd as another user,
        // who could not read the key root writes).
        if wrapper.is_empty() && !extra.contains(&"--migrate-key-file") {
            c.arg("--migrate-key-file").arg(write_migrate_key(dir, TEST_MIGRATE_KEY));
        }
        c
    }

    /// Start braidd and wait until it answers (10 s at most).
    pub fn start(dir: &Path, netns: Option<&str>, extra: &[&str]) -> Braidd {
        Braidd::start_bin(BRAIDD, dir, netns, extra)
    }

    /// Start braidd binary `bin` and wait until it answers (10 s at most).
    pub fn start_bin(bin: &str, dir: &Path, netns: Option<&str>, extra: &[&str]) -> Braidd {
        Braidd::start_wrapped(&[], bin, dir, netns, extra)
    }

    /// Start braidd binary `bin` through `wrapper` (see
    /// [`Braidd::command_wrapped`]) and wait until it answers.
    pub fn start_wrapped(
        wrapper: &[&str],
        bin: &str,
        dir: &Path,
        netns: Option<&str>,
        extra: &[&str],
    ) -> Braidd {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("braidd.log"))
            .unwrap();
        let child = Braidd::command_wrapped(wrapper, bin, dir, netns, extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start braidd");
        let mut b = Braidd {
            child: Some(child),
            dir: dir.to_path_buf(),
            socket: dir.join("braidd.sock"),
            netns: netns.map(str::to_string),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        b.wait_ready();
        b
    }

    fn wait_ready(&mut self) {
        let t = Instant::now();
        let c = self.client();
        while t.elapsed() < Duration::from_secs(10) {
            if c.status().is_ok() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("braidd exited with {st} before answering:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("braidd did not answer within 10 s:\n{}", self.log());
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// What braidd wrote on standard error.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("braidd.log")).unwrap_or_default()
    }

    /// braidd's pid (through `ip netns exec`, which execs it, the same).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait (10 s at most) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        Command::new("kill").arg("-TERM").arg(c.id().to_string()).status().unwrap();
        let t = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("braidd did not stop within 10 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Start a new braidd on the same directory, namespace and options.
    pub fn restart(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let next = Braidd::start(&self.dir, self.netns.as_deref(), &extra);
        *self = next;
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Braidd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client and a server namespace with braidd's namespace between them:
/// client (a0) — (a1) mid (b1) — (b0) server, one IPv4 subnet, no IPv6,
/// static neighbours, transmit checksums computed in software: nothing
/// but the test's own packets crosses the chain in `mid`. Removed on drop.
pub struct BumpNet {
    pub mid: braid_io::netns::NetnsGuard,
    pub cl: braid_io::netns::NetnsGuard,
    pub sv: braid_io::netns::NetnsGuard,
    /// The client's and the server's interfaces.
    pub a0: String,
    pub b0: String,
    /// Interfaces in `mid`: towards the client, towards the server.
    pub a1: String,
    pub b1: String,
    _links: (braid_io::netns::LinkGuard, braid_io::netns::LinkGuard),
}

/// [`BumpNet`] with names from `tag` (unique per test binary) and the
/// client's and server's addresses.
pub fn bump_net(tag: &str, client: &str, server: &str) -> BumpNet {
    use braid_io::netns::{self, LinkGuard, NetnsGuard};
    let ns =
        |role: &str| NetnsGuard::create(&netns::unique_name(&format!("{tag}-{role}"))).unwrap();
    let (mid, cl, sv) = (ns("mid"), ns("cl"), ns("sv"));
    for ns in [&mid, &cl, &sv] {
        for kv in ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"] {
            let st = ns.command("sysctl").args(["-q", "-w", kv]).status().unwrap();
            assert!(st.success(), "sysctl {kv}");
        }
    }
    let name = |end: &str| netns::unique_ifname(&format!("{tag}{end}"));
    let (a0, a1, b0, b1) = (name("a0"), name("a1"), name("b0"), name("b1"));
    let la = LinkGuard::veth(&a0, &a1).unwrap();
    let lb = LinkGuard::veth(&b0, &b1).unwrap();
    la.move_end_to(&a0, &cl).unwrap();
    la.move_end_to(&a1, &mid).unwrap();
    lb.move_end_to(&b0, &sv).unwrap();
    lb.move_end_to(&b1, &mid).unwrap();
    for (ns, dev) in [(&cl, &a0), (&mid, &a1), (&mid, &b1), (&sv, &b0)] {
        netns::set_up(Some(ns.name()), dev).unwrap();
        netns::tx_checksum_off(Some(ns.name()), dev).unwrap();
    }
    netns::add_addr(Some(cl.name()), &a0, &format!("{client}/24")).unwrap();
    netns::add_addr(Some(sv.name()), &b0, &format!("{server}/24")).unwrap();
    let mac_a0 = netns::mac_addr(Some(cl.name()), &a0).unwrap();
    let mac_b0 = netns::mac_addr(Some(sv.name()), &b0).unwrap();
    netns::add_neigh(Some(cl.name()), &a0, server, &mac_b0).unwrap();
    netns::add_neigh(Some(sv.name()), &b0, client, &mac_a0).unwrap();
    BumpNet { mid, cl, sv, a0, b0, a1, b1, _links: (la, lb) }
}

/// Send 20 datagrams `allowed {i}` to `allowed` and 10 `denied` to
/// `denied` from `client` while `capture` (a braidd capture stream) is
/// read to its end; returns the capture's bytes and what `server` got.
pub fn send_while_capturing(
    capture: impl std::io::Read + Send,
    client: &std::net::UdpSocket,
    server: &std::net::UdpSocket,
    allowed: &str,
    denied: &str,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut capture = capture;
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut b = Vec::new();
            capture.read_to_end(&mut b).unwrap();
            b
        });
        let mut received = Vec::new();
        let mut buf = [0u8; 2048];
        for i in 0..20u32 {
            client.send_to(format!("allowed {i}").as_bytes(), allowed).unwrap();
            if i % 2 == 0 {
                client.send_to(b"denied", denied).unwrap();
            }
            if let Ok(n) = server.recv(&mut buf) {
                received.push(buf[..n].to_vec());
            }
        }
        (reader.join().unwrap(), received)
    })
}

/// The UDP payloads of a pcapng capture of NF `fw`'s `out` and `drops`
/// (each drop commented with its reason, `denied`).
pub fn fw_out_and_drops(pcapng: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut r = braid_io::pcapng::PcapngReader::new(pcapng).unwrap();
    let (mut out, mut drops) = (Vec::new(), Vec::new());
    let mut f = Vec::new();
    while let Some(rec) = r.next_packet(&mut f).unwrap() {
        let name = r.interfaces()[rec.interface as usize].name.clone().unwrap();
        // Ethernet, IPv4 without options, UDP: the payload from byte 42.
        let payload = f[42..].to_vec();
        match name.as_str() {
            "fw:out" => out.push(payload),
            "fw:drops" => {
                assert_eq!(rec.comment.as_deref(), Some("dropped by fw: denied"));
                drops.push(payload);
            }
            other => panic!("interface {other}"),
        }
    }
    (out, drops)
}

/// Deploy `yaml` through `c` while a sender sends a datagram on `tx` every
/// 100 µs from before the call: how long the call took, and when the first
/// datagram arrived on `rx` (within 3 s), both from the call's start.
pub fn deploy_to_first_packet(
    c: &Client,
    tx: &std::net::UdpSocket,
    rx: &std::net::UdpSocket,
    yaml: &str,
) -> (Duration, Option<Duration>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    rx.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut buf = [0u8; 2048];
    while rx.recv(&mut buf).is_ok() {}
    rx.set_read_timeout(Some(Duration::from_micros(200))).unwrap();
    let t = Instant::now();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(5) {
                let _ = tx.send(b"probe");
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        // The receiver notes the first arrival while the call is still
        // under way.
        let receiver = s.spawn(|| {
            let mut buf = [0u8; 2048];
            while t.elapsed() < Duration::from_secs(3) {
                if rx.recv(&mut buf).is_ok() {
                    return Some(t.elapsed());
                }
            }
            None
        });
        c.deploy(yaml).unwrap();
        let took = t.elapsed();
        let arrived = receiver.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        (took, arrived)
    });
    rx.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    result
}

/// The `p` quantile (0..=1) of `v`, nearest rank.
pub fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Everything waiting on `rx` now, for up to `window`.
pub fn drain(rx: &std::net::UdpSocket, window: Duration) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    let t = Instant::now();
    while t.elapsed() < window {
        if rx.recv(&mut buf).is_ok() {
            n += 1;
        }
    }
    n
}

/// Send `n` datagrams while counting (on another thread, so the
/// receiver's buffer never overflows) what arrives, up to `patience` after
/// the last; how many did.
pub fn send_within(
    tx: &std::net::UdpSocket,
    rx: &std::net::UdpSocket,
    n: u64,
    patience: Duration,
) -> u64 {
    std::thread::scope(|s| {
        let counter = s.spawn(|| {
            let mut buf = [0u8; 2048];
            let mut got = 0;
            let t = Instant::now();
            let limit = Duration::from_millis(n / 4 + 1) + patience;
            while got < n && t.elapsed() < limit {
                if rx.recv(&mut buf).is_ok() {
                    got += 1;
                }
            }
            got
        });
        for i in 0..n {
            tx.send(&i.to_be_bytes()).unwrap();
            // About 4,000 packets per second.
            if i % 8 == 7 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        counter.join().unwrap()
    })
}

/// Send one datagram every millisecond until one arrives (`limit` at most):
/// the time it took.
pub fn time_to_first_packet(
    tx: &std::net::UdpSocket,
    rx: &std::net::UdpSocket,
    limit: Duration,
) -> Option<Duration> {
    rx.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 2048];
    let mut found = None;
    while t.elapsed() < limit {
        let _ = tx.send(b"first");
        if rx.recv(&mut buf).is_ok() {
            found = Some(t.elapsed());
            break;
        }
    }
    rx.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    found
}
