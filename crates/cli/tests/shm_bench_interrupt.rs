// Signals and raw descriptors: system calls only this test makes.
#![allow(unsafe_code)]
//! `braid shm-bench` interrupted by Ctrl-C (SIGINT to its whole process
//! group, as a terminal sends it) exits promptly and non-zero, no process
//! of it panics, and it leaves no namespace, veth pair, socket file or
//! process behind (issue #13, item 9).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn needs_root() -> bool {
    let root = braid_io::netns::is_root();
    if !root && std::env::var("BRAID_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("BRAID_REQUIRE_ROOT=1 and not root");
    }
    root
}

#[test]
fn interrupted_shm_bench_cleans_up_and_nothing_panics() {
    let root = needs_root();
    // fwd first (its NF process and sink are running when the signal
    // comes); with root the veth pair and namespaces exist from the start.
    let rows = if root { "fwd,udp" } else { "fwd" };
    let mut child = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["shm-bench", "--rows", rows, "--seconds", "30", "--sizes", "64"])
        .env("RUST_BACKTRACE", "1")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stderr = child.stderr.take().unwrap();
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: kill(2) on the process group of our child, which it leads.
    assert_eq!(unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "shm-bench did not stop after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    let errs = errs.join().unwrap();
    assert!(!status.success(), "an interrupted bench exits non-zero");
    assert!(!errs.contains("panicked"), "{errs}");
    assert!(errs.contains("interrupted"), "{errs}");
    // Nothing of it runs any more (children die with it).
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signal 0 only checks whether the group has processes.
    let alive = unsafe { libc::kill(-(pid as libc::pid_t), 0) } == 0;
    assert!(!alive, "processes of shm-bench's group survived it");
    let socks: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("braid-shm-bench-{pid}-")))
        .collect();
    assert!(socks.is_empty(), "socket files left: {socks:?}");
    if root {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        for prefix in [format!("braid-sba-{pid}-"), format!("braid-sbb-{pid}-")] {
            assert!(!list.contains(&prefix), "namespace {prefix}* left:\n{list}");
        }
        let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        let tag = format!("{pid:x}");
        assert!(
            !links
                .lines()
                .any(|l| (l.contains(": sba") || l.contains(": sbb")) && l.contains(&tag)),
            "veth left:\n{links}"
        );
    }
}
