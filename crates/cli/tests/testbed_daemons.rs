//! `braid testbed up --daemons` with the real `braid` and `braidd`
//! binaries: one braidd per NF host, reachable on its socket, serving a
//! chain that carries the testbed's traffic; `down` stops them and leaves
//! no process, socket, key, state directory or namespace, also after a
//! daemon was killed; a braidd that is missing or fails to start makes
//! `up` fail with nothing left behind. Needs root (namespaces, AF_PACKET)
//! and braidd beside braid (`cargo test --workspace` builds both; alone:
//! `cargo build -p braid-daemon --bin braidd`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use braid_io::netns;
use braid_testbed::{down, Options, State};

const BRAID: &str = env!("CARGO_BIN_EXE_braid");

fn braidd() -> PathBuf {
    Path::new(BRAID).with_file_name("braidd")
}

/// True (skip) unless root and braidd beside braid; a failure instead
/// under `BRAID_REQUIRE_ROOT=1`.
fn skip(test: &str) -> bool {
    braid_testkit::skip_unless(netns::is_root(), test, "needs root (namespaces, AF_PACKET)")
        || braid_testkit::skip_unless(
            braidd().is_file(),
            test,
            &format!("needs {} (cargo build -p braid-daemon --bin braidd)", braidd().display()),
        )
}

/// A private testbed (own state file, run directory and namespace
/// prefix), taken down on drop also when the test fails.
struct Bed {
    dir: PathBuf,
    opts: Options,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("braid-tbd-{tag}-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let opts =
            Options { state_path: dir.join("tb.json"), prefix: format!("braid-{tag}{pid}-") };
        Bed { dir, opts }
    }

    /// The run directory `up` makes for the daemons.
    fn run_dir(&self) -> PathBuf {
        self.dir.join("tb")
    }

    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.opts.prefix)
    }

    /// `braid testbed --state S ARGS...`.
    fn testbed(&self, args: &[&str]) -> Output {
        Command::new(BRAID)
            .arg("testbed")
            .arg("--state")
            .arg(&self.opts.state_path)
            .args(args)
            .output()
            .unwrap()
    }

    /// `testbed up ARGS --prefix P`, which must succeed; its stdout.
    fn up(&self, args: &[&str]) -> String {
        let mut all = vec!["up"];
        all.extend(args);
        all.extend(["--prefix", &self.opts.prefix]);
        ok(self.testbed(&all))
    }

    fn state(&self) -> State {
        State::load(&self.opts.state_path).unwrap().expect("a state file")
    }

    /// Nothing of the testbed is left: no namespace with its prefix, no
    /// braidd running from its run directory, no state file, no run
    /// directory (sockets, key, state directories, logs).
    fn assert_gone(&self) {
        let list = ok(Command::new("ip").args(["netns", "list"]).output().unwrap());
        let left: Vec<&str> = list.lines().filter(|n| n.starts_with(&self.opts.prefix)).collect();
        assert!(left.is_empty(), "namespaces left: {left:?}");
        let procs = daemons_running_from(&self.run_dir());
        assert!(procs.is_empty(), "braidd still running: {procs:?}");
        assert!(!self.opts.state_path.exists(), "state file left");
        assert!(!self.run_dir().exists(), "run directory left: {:?}", ls(&self.run_dir()));
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = down(&self.opts);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The stdout of a command that must succeed.
fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed ({}):\n{}\n{}", o.status, text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

fn ls(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// Live (not zombie) processes whose command line mentions `dir`.
fn daemons_running_from(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmdline = text(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && !cmdline.contains("cargo") {
            found.push(format!("{}: {cmdline}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3).map(str::to_string)
}

fn in_ns(ns: &str, args: &[&str]) -> Output {
    Command::new("ip").args(["netns", "exec", ns]).args(args).output().unwrap()
}

fn mac(bed: &Bed, host: &str, dev: &str) -> String {
    let o = in_ns(&bed.ns(host), &["cat", &format!("/sys/class/net/{dev}/address")]);
    ok(o).trim().to_string()
}

/// SIGKILL the recorded daemon of `host` and wait until it is gone.
fn kill9(bed: &Bed, host: &str) {
    let d = bed.state().daemons.into_iter().find(|d| d.host == host).unwrap();
    assert!(d.is_running());
    // SAFETY: kill(2) on a pid checked just above to be the recorded,
    // running daemon (same start time).
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(d.pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0);
    let t = Instant::now();
    while d.is_running() {
        assert!(t.elapsed() < Duration::from_secs(5), "pid {} survived SIGKILL", d.pid);
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn daemons_serve_a_chain_on_the_testbed_and_down_leaves_nothing() {
    if skip("daemons_serve_a_chain_on_the_testbed_and_down_leaves_nothing") {
        return;
    }
    let _one = braid_testkit::one_at_a_time();
    let bed = Bed::new("td");
    let out = bed.up(&["--nf-hosts", "2", "--no-direct", "--daemons"]);
    let st = bed.state();
    let hosts: Vec<&str> = st.daemons.iter().map(|d| d.host.as_str()).collect();
    assert_eq!(hosts, ["nf1", "nf2"], "one daemon per NF host, none on client/server");
    let key = bed.run_dir().join("migrate.key");
    assert_eq!(st.migrate_key.as_deref(), Some(key.as_path()));
    for (d, addr) in st.daemons.iter().zip(["10.71.1.2:9480", "10.71.2.2:9480"]) {
        // Printed, at the predictable path, answering with its own pid.
        assert_eq!(d.socket, bed.run_dir().join(&d.host).join("braidd.sock"));
        assert!(out.contains(&d.socket.display().to_string()), "{out}");
        assert_eq!(d.status_pid(Duration::from_secs(2)), Ok(d.pid));
        // Detached: its own session, standard input from /dev/null.
        assert_eq!(stat_field(d.pid, 6), Some(d.pid.to_string()), "session of {}", d.host);
        let stdin = std::fs::read_link(format!("/proc/{}/fd/0", d.pid)).unwrap();
        assert_eq!(stdin, Path::new("/dev/null"));
        // Ready to receive migrations on the host's first address.
        assert_eq!(d.migrate_listen.to_string(), addr);
        let listening = ok(in_ns(&bed.ns(&d.host), &["ss", "-Hltn"]));
        assert!(listening.contains(addr), "{}: {listening}", d.host);
        assert!(d.dir.join("state").is_dir() && d.log.is_file());
    }
    // The key: 32 random bytes as hex, for root only.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let hex = std::fs::read_to_string(&key).unwrap();
    assert!(hex.trim().len() == 64 && hex.trim().bytes().all(|b| b.is_ascii_hexdigit()), "{hex}");

    // Up again: nothing new, the same daemons.
    let again = bed.up(&["--nf-hosts", "2", "--no-direct", "--daemons"]);
    assert!(again.contains("already up (nothing changed)"), "{again}");
    assert_eq!(bed.state().daemons, st.daemons);
    let status = ok(bed.testbed(&["status"]));
    assert_eq!(status.matches("  answers").count(), 2, "{status}");

    // nf1 stops forwarding: the path is cut until nf1's braidd routes it.
    let nf1 = bed.ns("nf1");
    ok(in_ns(&nf1, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]));
    let ping = |count: &str| {
        in_ns(&bed.ns("client"), &["ping", "-c", count, "-i", "0.2", "-W", "1", "10.71.3.2"])
    };
    assert!(!ping("1").status.success(), "ping crossed nf1 with forwarding off");
    // A router between nf1's interfaces (a braidd chain is a bump in the
    // wire: the router writes each frame's next-hop MAC).
    let chain = format!(
        "name: edge\nports:\n  in: {{ kind: af_packet, iface: to-client }}\n  out: {{ kind: af_packet, iface: to-nf2 }}\nnfs:\n  - name: r\n    type: router\n    params:\n      mac: {}\n      ip: 10.71.1.2\n      routes:\n        - {{ prefix: 10.71.1.0/24, next_hop_mac: {}, port: 0 }}\n        - {{ prefix: 10.71.3.0/24, next_hop_mac: {}, port: 1 }}\n",
        mac(&bed, "nf1", "to-client"),
        mac(&bed, "client", "to-nf1"),
        mac(&bed, "nf2", "to-nf1"),
    );
    let chain_file = bed.dir.join("edge.yaml");
    std::fs::write(&chain_file, chain).unwrap();
    let socket = &st.daemons[0].socket;
    let daemon = |args: &[&str]| {
        Command::new(BRAID).arg("daemon").arg("--socket").arg(socket).args(args).output().unwrap()
    };
    let deployed = ok(daemon(&["deploy", chain_file.to_str().unwrap()]));
    assert!(deployed.contains("running"), "{deployed}");
    let p = ping("5");
    assert!(p.status.success(), "ping through nf1's chain:\n{}", text(&p.stdout));
    let show: serde_json::Value =
        serde_json::from_str(&ok(daemon(&["show", "edge", "--json"]))).unwrap();
    let router = &show["stats"]["stages"][0];
    assert_eq!(router["name"], "r", "{show}");
    // 5 requests and 5 replies crossed the router; nothing else did
    // (permanent neighbour entries: no ARP), nothing was dropped.
    assert!(router["packets_in"].as_u64().unwrap() >= 10, "{router}");
    assert!(router["packets_out"].as_u64().unwrap() >= 10, "{router}");
    assert_eq!(router["dropped"], 0, "{router}");

    let out = ok(bed.testbed(&["down"]));
    assert!(out.contains("stopped 2 braidd (2 with SIGTERM, 0 killed"), "{out}");
    assert!(!out.contains("1 had already exited"), "{out}");
    for d in &st.daemons {
        assert!(!d.is_running(), "{} still runs", d.host);
    }
    bed.assert_gone();
    // Down again: nothing to do.
    assert!(ok(bed.testbed(&["down"])).contains("no testbed is up"));
}

#[test]
fn down_cleans_up_after_a_killed_daemon_and_up_restarts_one() {
    if skip("down_cleans_up_after_a_killed_daemon_and_up_restarts_one") {
        return;
    }
    let _one = braid_testkit::one_at_a_time();
    let bed = Bed::new("tk");
    bed.up(&["--nf-hosts", "1", "--no-direct", "--daemons"]);
    let first = bed.state().daemons;
    assert_eq!(first.len(), 1);
    kill9(&bed, "nf1");
    let status = ok(bed.testbed(&["status"]));
    assert!(status.contains("NOT RUNNING"), "{status}");
    // `up` sees the testbed partly missing and builds it again, daemon
    // included.
    let out = bed.up(&["--nf-hosts", "1", "--no-direct", "--daemons"]);
    assert!(out.contains("rebuilt"), "{out}");
    let second = bed.state().daemons;
    assert_ne!(second[0].pid, first[0].pid);
    assert_eq!(second[0].status_pid(Duration::from_secs(2)), Ok(second[0].pid));
    // Killed again: its socket stays behind (SIGKILL leaves braidd no
    // time to remove it), and `down` still removes everything.
    kill9(&bed, "nf1");
    assert!(second[0].socket.exists());
    let out = ok(bed.testbed(&["down"]));
    assert!(out.contains("stopped 1 braidd (0 with SIGTERM, 0 killed"), "{out}");
    assert!(out.contains("1 had already exited"), "{out}");
    bed.assert_gone();
}

#[test]
fn a_missing_or_failing_braidd_fails_up_and_leaves_nothing() {
    if skip("a_missing_or_failing_braidd_fails_up_and_leaves_nothing") {
        return;
    }
    let bed = Bed::new("tf");
    let up = |braidd: &Path| {
        bed.testbed(&[
            "up",
            "--nf-hosts",
            "2",
            "--no-direct",
            "--daemons",
            "--prefix",
            &bed.opts.prefix,
            "--braidd",
            braidd.to_str().unwrap(),
        ])
    };
    // Missing: refused before anything is created.
    let missing = bed.dir.join("no-such-braidd");
    let o = up(&missing);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains(&format!("braidd binary {}", missing.display())), "{err}");
    assert!(err.contains("No such file"), "{err}");
    bed.assert_gone();

    // Starts and fails: `up` names the host, quotes its log, stops the
    // daemon it had started on nf1 and removes everything.
    let fake = bed.dir.join("braidd");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$*\" in *nf2*) echo 'braidd: error: pretending to fail' >&2; exit 3;; esac\nexec {} \"$@\"\n",
            braidd().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = up(&fake);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("braidd on host \"nf2\""), "{err}");
    assert!(err.contains("exited (exit status: 3) before answering"), "{err}");
    assert!(err.contains("pretending to fail"), "{err}");
    bed.assert_gone();
}
