//! `braid deploy` killed, hung up on, or started twice (issue #13, items 8
//! and 17): a deployment killed with SIGKILL is repaired by the next one
//! (Linux forwarding back to what the topology says, not the killed
//! deploy's 0), `braid stats` says a dead deployment's file is stale, a
//! second deploy on the same testbed is refused naming the first, a stats
//! path holding someone else's file is refused untouched, and SIGHUP cleans
//! up like SIGTERM. Needs root; a private testbed, taken down at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use braid_io::netns;
use braid_testbed::{calvin, down, netns_name, status, up, Options};

const CHAIN: &str = "name: k\nnfs:\n  - { name: f, type: fwd, placement: user }\n";

/// The testbed and the scratch directory, removed on drop (also when the
/// test fails), with every deploy still running killed first.
struct Bed {
    opts: Options,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = down(&self.opts);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Bed {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn deploy_cmd(&self, stats: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_braid"));
        c.arg("deploy")
            .arg(self.file("chain.yaml"))
            .args(["--hosts", "nf2", "--user-io", "af_packet", "--quiet", "--interval-ms", "50"])
            .arg("--state")
            .arg(&self.opts.state_path)
            .arg("--stats-file")
            .arg(self.file(stats))
            .arg("--capture-socket")
            .arg(self.file(&format!("{stats}.sock")))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn forwarding(&self, host: &str) -> String {
        let ns = netns_name(&self.opts, host);
        let out =
            netns::run(netns::command_in(Some(&ns), "sysctl").args(["-n", "net.ipv4.ip_forward"]))
                .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn forwarding_off_recorded(&self) -> Vec<String> {
        status(&self.opts).unwrap().unwrap().forwarding_off
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Wait (bounded) until the deploy writing `stats` reports its NF.
fn wait_running(stats: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = std::fs::read_to_string(stats)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["nfs"].as_array().is_some_and(|a| !a.is_empty()));
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "deploy did not come up ({})", stats.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stats_cmd(bed: &Bed, stats: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["stats", "--stats-file"])
        .arg(bed.file(stats))
        .output()
        .unwrap()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this test started and has not
    // reaped yet, so the pid cannot have been reused.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0);
}

#[test]
fn killed_deploy_is_repaired_second_deploy_refused_sighup_cleans_up() {
    if braid_testkit::skip_unless(
        netns::is_root(),
        "killed_deploy_is_repaired_second_deploy_refused_sighup_cleans_up",
        "needs root (namespaces, AF_PACKET)",
    ) {
        return;
    }
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("braid-deploy-signals-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut bed = Bed {
        opts: Options { state_path: dir.join("testbed.json"), prefix: format!("braid-ks{pid}-") },
        dir,
        children: Vec::new(),
    };
    up(&calvin(2, false), &bed.opts).unwrap();
    std::fs::write(bed.file("chain.yaml"), CHAIN).unwrap();
    assert_eq!(bed.forwarding("nf2"), "1");

    // A stats path holding someone else's file: refused, file untouched,
    // nothing deployed.
    std::fs::write(bed.file("notes.json"), "my notes").unwrap();
    let o = bed.deploy_cmd("notes.json", &["--duration-s", "1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("is not a braid stats file"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(bed.file("notes.json")).unwrap(), "my notes");
    assert_eq!(bed.forwarding("nf2"), "1");

    // The first deploy runs; the user-space NF switched forwarding off and
    // the state file says so.
    bed.children.push(bed.deploy_cmd("a.json", &[]).spawn().unwrap());
    wait_running(&bed.file("a.json"));
    assert_eq!(bed.forwarding("nf2"), "0");
    assert_eq!(bed.forwarding_off_recorded(), ["nf2"]);
    assert!(stats_cmd(&bed, "a.json").status.success());

    // A second deploy on the same testbed is refused, naming the first.
    let o = bed.deploy_cmd("b.json", &["--duration-s", "1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let first = bed.children[0].id();
    let err = text(&o.stderr);
    assert!(
        err.contains("another `braid deploy` is running") && err.contains(&format!("pid {first}")),
        "{err}"
    );
    assert!(!bed.file("b.json").exists());

    // SIGKILL: nothing is cleaned up...
    signal(&bed.children[0], libc::SIGKILL);
    bed.children.pop().unwrap().wait().unwrap();
    assert_eq!(bed.forwarding("nf2"), "0");
    // ... `braid stats` says the file is stale instead of showing it ...
    let o = stats_cmd(&bed, "a.json");
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("is stale"), "{}", text(&o.stderr));
    // ... and the next deploy repairs it: afterwards forwarding is what the
    // topology says (1), not the killed deploy's 0, and nothing is recorded.
    let o = bed.deploy_cmd("a.json", &["--duration-s", "1"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(bed.forwarding("nf2"), "1");
    assert!(bed.forwarding_off_recorded().is_empty());
    assert!(!bed.file("a.json").exists(), "the stats file is removed at the end");

    // SIGHUP (the terminal went away) cleans up like SIGTERM.
    bed.children.push(bed.deploy_cmd("c.json", &[]).spawn().unwrap());
    wait_running(&bed.file("c.json"));
    assert_eq!(bed.forwarding("nf2"), "0");
    // `braid stats --watch` redraws until the deployment ends, then says so.
    let watch = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["stats", "--watch", "0.2", "--stats-file"])
        .arg(bed.file("c.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    signal(&bed.children[0], libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = bed.children[0].try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "deploy did not stop on SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    };
    bed.children.clear();
    assert!(status.success(), "{status:?}");
    assert_eq!(bed.forwarding("nf2"), "1");
    assert!(bed.forwarding_off_recorded().is_empty());
    assert!(!bed.file("c.json").exists());
    assert!(status_of_xdp_is_empty(&bed.opts));
    let watched = watch.wait_with_output().unwrap();
    assert!(watched.status.success(), "{}", text(&watched.stderr));
    let shown = text(&watched.stdout);
    assert!(shown.matches("\x1b[H\x1b[2Jchain k").count() >= 2, "redrawn in place: {shown:?}");
    assert!(shown.contains("no chain is deployed"), "{shown:?}");
}

fn status_of_xdp_is_empty(opts: &Options) -> bool {
    status(opts).unwrap().unwrap().xdp.is_empty()
}
