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

/// The capabilities braidd needs (docs/daemon.md, "Least privilege"),
/// as `setpriv` names them, with their bit numbers.
pub const CAPS: [(&str, u32); 5] =
    [("net_raw", 13), ("net_admin", 12), ("bpf", 39), ("perfmon", 38), ("ipc_lock", 14)];

/// The uid and gid of an unprivileged test braidd (nobody).
pub const NOBODY: u32 = 65534;

/// Who a test braidd runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// The test's own user and capabilities: root wherever the suite runs
    /// as root (the tests that need it check that first).
    Root,
    /// uid/gid [`NOBODY`], no supplementary groups, and exactly these
    /// capabilities (`setpriv` names) as its inheritable, ambient and
    /// bounding sets: nothing else can come back, not even through exec.
    Unprivileged(Vec<String>),
}

impl Privilege {
    /// The five of [`CAPS`]: what braidd needs (docs/daemon.md).
    pub fn least() -> Privilege {
        Privilege::only(&CAPS.map(|(c, _)| c))
    }

    /// This privilege plus capabilities `more` (root has them already).
    pub fn with(&self, more: &[&str]) -> Privilege {
        match self {
            Privilege::Root => Privilege::Root,
            Privilege::Unprivileged(caps) => Privilege::Unprivileged(
                caps.iter().cloned().chain(more.iter().map(|c| c.to_string())).collect(),
            ),
        }
    }

    /// Exactly `caps`, as an unprivileged user.
    pub fn only(caps: &[&str]) -> Privilege {
        Privilege::Unprivileged(caps.iter().map(|c| c.to_string()).collect())
    }

    /// What [`Braidd::start`] and [`Braidd::command`] use:
    /// [`Privilege::least`] when the test runs as root (tests whose braidd
    /// needs more say so: [`Braidd::start_as_root`]); the test's own user
    /// otherwise (then braidd is
    /// unprivileged anyway). Without `setpriv` it falls back to root,
    /// saying so, or fails with `BRAID_REQUIRE_ROOT=1`.
    pub fn default_here() -> Privilege {
        static DEFAULT: std::sync::OnceLock<Privilege> = std::sync::OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                if !braid_io::netns::is_root()
                    || braid_testkit::skip_unless_tool(
                        "setpriv",
                        "least-privilege braidd (it runs as root instead)",
                    )
                {
                    Privilege::Root
                } else {
                    Privilege::least()
                }
            })
            .clone()
    }

    /// The uid braidd runs as, when not the test's own.
    pub fn uid(&self) -> Option<u32> {
        match self {
            Privilege::Root => None,
            Privilege::Unprivileged(_) => Some(NOBODY),
        }
    }

    /// Give `path` (braidd's working directory, or a file only braidd may
    /// read, such as a token or key) to the user braidd runs as.
    pub fn hand_over(&self, path: &Path) {
        if let Some(uid) = self.uid() {
            std::os::unix::fs::chown(path, Some(uid), Some(uid))
                .unwrap_or_else(|e| panic!("chown {} to {uid}: {e}", path.display()));
        }
    }

    /// The command that runs the rest as this user with these
    /// capabilities (empty for [`Privilege::Root`]).
    fn wrapper(&self) -> Vec<String> {
        let Privilege::Unprivileged(caps) = self else { return Vec::new() };
        let set: String = std::iter::once("-all".to_string())
            .chain(caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            "setpriv".to_string(),
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".to_string(),
            format!("--inh-caps={set}"),
            format!("--ambient-caps={set}"),
            format!("--bounding-set={set}"),
            "--".to_string(),
        ]
    }
}

/// A running braidd.
pub struct Braidd {
    child: Option<Child>,
    /// Its binary, and whether it got the suite's migration key: what a
    /// restart reuses, with `privilege`.
    bin: String,
    test_key: bool,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// Network namespace it runs in.
    pub netns: Option<String>,
    pub extra: Vec<String>,
    /// Who it runs as.
    pub privilege: Privilege,
}

impl Braidd {
    /// The command line of a braidd with state and socket under `dir`,
    /// with this file's [`Privilege::default_here`].
    pub fn command(dir: &Path, netns: Option<&str>, extra: &[&str]) -> Command {
        Braidd::command_as(&Privilege::default_here(), BRAIDD, dir, netns, extra)
    }

    /// The command line of braidd binary `bin` run with `privilege` (`ip
    /// netns exec` first, as root, then `setpriv`), with state and socket
    /// under `dir`, which is handed over to braidd's user.
    pub fn command_as(
        privilege: &Privilege,
        bin: &str,
        dir: &Path,
        netns: Option<&str>,
        extra: &[&str],
    ) -> Command {
        Braidd::command_keyed(privilege, bin, dir, netns, extra, true)
    }

    /// [`Braidd::command_as`]; with `test_key`, the suite's migration key
    /// unless `extra` gives one.
    fn command_keyed(
        privilege: &Privilege,
        bin: &str,
        dir: &Path,
        netns: Option<&str>,
        extra: &[&str],
        test_key: bool,
    ) -> Command {
        privilege.hand_over(dir);
        let wrapper = privilege.wrapper();
        let mut argv: Vec<&str> = Vec::new();
        if let Some(ns) = netns {
            argv.extend(["ip", "netns", "exec", ns]);
        }
        argv.extend(wrapper.iter().map(String::as_str));
        argv.push(bin);
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c.arg("--socket")
            .arg(dir.join("braidd.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(extra);
        // Every test braidd may migrate to every other: the same key,
        // unless the test gives its own (or wants none).
        if test_key && !extra.contains(&"--migrate-key-file") {
            let key = write_migrate_key(dir, TEST_MIGRATE_KEY);
            privilege.hand_over(&key);
            c.arg("--migrate-key-file").arg(key);
        }
        c
    }

    /// Start braidd with this file's [`Privilege::default_here`] and wait
    /// until it answers (10 s at most).
    pub fn start(dir: &Path, netns: Option<&str>, extra: &[&str]) -> Braidd {
        Braidd::start_as(&Privilege::default_here(), BRAIDD, dir, netns, extra)
    }

    /// Start braidd with this file's [`Privilege::default_here`] plus
    /// capabilities `more` (`setpriv` names): for a test of what
    /// docs/daemon.md says needs one of them (its caller says why).
    pub fn start_with_caps(
        more: &[&str],
        dir: &Path,
        netns: Option<&str>,
        extra: &[&str],
    ) -> Braidd {
        Braidd::start_as(&Privilege::default_here().with(more), BRAIDD, dir, netns, extra)
    }

    /// Start braidd as root: for a test that needs more than braidd should
    /// have (its caller says why).
    pub fn start_as_root(dir: &Path, netns: Option<&str>, extra: &[&str]) -> Braidd {
        Braidd::start_as(&Privilege::Root, BRAIDD, dir, netns, extra)
    }

    /// Start braidd binary `bin` with `privilege` and wait until it
    /// answers (10 s at most).
    pub fn start_as(
        privilege: &Privilege,
        bin: &str,
        dir: &Path,
        netns: Option<&str>,
        extra: &[&str],
    ) -> Braidd {
        Braidd::start_keyed(privilege, bin, dir, netns, extra, true)
    }

    /// [`Braidd::start_as`] without the suite's migration key: a braidd
    /// that cannot offer migrations.
    pub fn start_without_migrate_key(
        privilege: &Privilege,
        dir: &Path,
        netns: Option<&str>,
        extra: &[&str],
    ) -> Braidd {
        Braidd::start_keyed(privilege, BRAIDD, dir, netns, extra, false)
    }

    fn start_keyed(
        privilege: &Privilege,
        bin: &str,
        dir: &Path,
        netns: Option<&str>,
        extra: &[&str],
        test_key: bool,
    ) -> Braidd {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("braidd.log"))
            .unwrap();
        let child = Braidd::command_keyed(privilege, bin, dir, netns, extra, test_key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start braidd");
        let mut b = Braidd {
            child: Some(child),
            bin: bin.to_string(),
            dir: dir.to_path_buf(),
            socket: dir.join("braidd.sock"),
            netns: netns.map(str::to_string),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            privilege: privilege.clone(),
            test_key,
        };
        b.wait_ready();
        if let Some(uid) = privilege.uid() {
            let real = proc_status(b.pid(), "Uid:");
            assert_eq!(
                real.split_whitespace().next(),
                Some(uid.to_string().as_str()),
                "braidd's uid"
            );
        }
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

    /// Start a new braidd on the same directory, namespace, options and
    /// privilege.
    pub fn restart(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let next = Braidd::start_keyed(
            &self.privilege,
            &self.bin,
            &self.dir,
            self.netns.as_deref(),
            &extra,
            self.test_key,
        );
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

/// Field `name` of `/proc/PID/status`.
pub fn proc_status(pid: u32, name: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
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

/// Wait until braidd behind `c` has written two checkpoint rounds from
/// now (`within` at most).
pub fn two_checkpoints(c: &braid_daemon::client::Client, within: Duration) {
    let rounds = || c.status().unwrap()["checkpoints"].as_u64().unwrap();
    let (n0, t) = (rounds(), Instant::now());
    while rounds() < n0 + 2 {
        assert!(t.elapsed() < within, "no checkpoint rounds");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a datagram from `from` reaches `to` (10 tries, 30 ms apart).
pub fn reaches(from: &std::net::UdpSocket, to: &std::net::UdpSocket) -> bool {
    let dest = to.local_addr().unwrap();
    to.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
    let mut buf = [0u8; 2048];
    (0..10).any(|_| {
        from.send_to(b"reply", dest).unwrap();
        to.recv(&mut buf).is_ok()
    })
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
