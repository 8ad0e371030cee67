//! `sched` settings the kernel refuses: `braid run --mapping threads`
//! stops before any worker starts, with the kernel's answer, and writes
//! nothing; the same chain with the privilege runs.

use std::process::Command;

fn write_capture(path: &std::path::Path, n: u64) {
    let mut w = braid_io::pcap::PcapWriter::new(Vec::new()).unwrap();
    for i in 0..n {
        w.write(1_700_000_000_000_000_000 + i, &[i as u8; 60]).unwrap();
    }
    std::fs::write(path, w.into_inner()).unwrap();
}

#[test]
fn a_policy_without_the_privilege_changes_nothing() {
    let ok = braid_io::netns::is_root() && braid_testkit::tool_installed("setpriv");
    if braid_testkit::skip_unless(ok, "a_policy_without_the_privilege", "needs root and setpriv") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("braid-sched-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let chain = dir.join("c.yaml");
    std::fs::write(
        &chain,
        "name: c\nnfs:\n  - { name: a, type: fwd, sched: { policy: fifo, priority: 10 } }\n  - { name: b, type: fwd }\n",
    )
    .unwrap();
    write_capture(&dir.join("in.pcap"), 100);
    let out = dir.join("out.pcap");
    let braid = env!("CARGO_BIN_EXE_braid");
    let args = |c: &mut Command| {
        c.arg("run")
            .arg(&chain)
            .args(["--mapping", "threads", "-i"])
            .arg(dir.join("in.pcap"))
            .arg("-o")
            .arg(&out);
    };
    // Without CAP_SYS_NICE (dropped from the bounding set, so the exec'd
    // root process does not get it).
    let mut c = Command::new("setpriv");
    c.arg("--bounding-set=-sys_nice").arg(braid);
    args(&mut c);
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("worker `host0/p0/t0`: scheduling policy fifo:10: Operation not permitted")
            && err.contains("nothing was started"),
        "{err}"
    );
    assert!(!out.exists(), "no output written");
    // With it, the same run goes through.
    let mut c = Command::new(braid);
    args(&mut c);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("100 packets in") && text.contains("100 out"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
