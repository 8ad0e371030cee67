//! `braid tune`: measures candidates on a chain of NF processes sharing one
//! CPU, prints a table and a `sched` block that a descriptor accepts, and
//! leaves no process or socket behind; unknown candidates are refused.

use std::process::Command;

fn braid() -> Command {
    Command::new(env!("CARGO_BIN_EXE_braid"))
}

fn chain4() -> String {
    format!("{}/../../examples/chain4.yaml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn tune_recommends_a_sched_block_the_descriptor_takes() {
    let out = braid()
        .args(["tune", &chain4(), "--candidates", "default,poll,adaptive", "--reps", "1"])
        .args(["--packets", "300", "--warmup", "50", "--rate", "5000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Every candidate measured, nothing lost (backpressure, 5 kpps).
    for c in ["default", "poll", "adaptive"] {
        let row = stdout.lines().find(|l| l.starts_with(&format!("| 4 | {c} |"))).unwrap();
        assert!(row.starts_with(&format!("| 4 | {c} | 1 | 0 |")), "{row}");
    }
    let block = stdout.split("put this in the descriptor:\n\n").nth(1).expect(&stdout);
    assert!(block.starts_with("sched:\n"), "{block}");
    // The block goes into the chain as it is and validates.
    let yaml = std::fs::read_to_string(chain4()).unwrap();
    let with = yaml.replacen("name: bench4\n", &format!("name: bench4\n{block}"), 1);
    let d = braid_runtime::ChainDescriptor::from_yaml(&with).unwrap();
    assert!(d.sched.is_some(), "{with}");
    // No NF process left.
    let ps = Command::new("pgrep").args(["-f", "braid nf-proc"]).output().unwrap();
    let left = String::from_utf8_lossy(&ps.stdout);
    let mine: Vec<&str> = left
        .lines()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|e| e == std::path::Path::new(env!("CARGO_BIN_EXE_braid")))
        })
        .collect();
    assert!(mine.is_empty(), "NF processes left: {mine:?}");
}

#[test]
fn an_unknown_candidate_is_refused_naming_the_known_ones() {
    let out = braid().args(["tune", &chain4(), "--candidates", "turbo"]).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("unknown candidate `turbo`") && e.contains("poll-fifo"), "{e}");
}

/// `--hogs N`: N busy threads share the NFs' CPU during every point (the
/// header says so); sleeping NFs at the default policy, with and without
/// a short EEVDF slice, still get every packet through; out of range is
/// refused before anything runs.
#[test]
fn candidates_are_measured_beside_busy_neighbours() {
    let out = braid()
        .args(["tune", &chain4(), "--candidates", "poll,poll-slice-100", "--reps", "1"])
        .args(["--packets", "300", "--warmup", "50", "--rate", "5000", "--hogs", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.lines().next().unwrap().contains(" beside 1 busy thread;"), "{stdout}");
    let row = |c: &str| stdout.lines().find(|l| l.starts_with(&format!("| 4 | {c} |")));
    assert!(row("poll").unwrap().starts_with("| 4 | poll | 1 | 0 |"), "{stdout}");
    // A kernel before 6.12 has no custom slices: the point fails, named.
    match row("poll-slice-100") {
        Some(r) => assert!(r.starts_with("| 4 | poll-slice-100 | 1 | 0 |"), "{stdout}"),
        None => assert!(stderr.contains("does not support custom EEVDF slices"), "{stderr}"),
    }
    let out = braid().args(["tune", &chain4(), "--hogs", "9"]).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--hogs") && e.contains("0..=8"), "{e}");
}

/// `--nf-log DIR` keeps each NF process's standard error, one file per NF
/// and point: the adaptive mode's changes and their reasons are there. A
/// directory that does not exist is refused before anything runs.
#[test]
fn the_nf_processes_logs_are_kept_with_nf_log() {
    let dir = std::env::temp_dir().join(format!("braid-tune-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = braid()
        .args(["tune", &chain4(), "--candidates", "adaptive", "--reps", "1", "--nf-log"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--nf-log") && e.contains("not a directory"), "{e}");

    std::fs::create_dir(&dir).unwrap();
    let out = braid()
        .args(["tune", &chain4(), "--candidates", "adaptive", "--reps", "1"])
        .args(["--packets", "300", "--warmup", "20000", "--rate", "20000", "--nf-log"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let yaml = std::fs::read_to_string(chain4()).unwrap();
    let d = braid_runtime::ChainDescriptor::from_yaml(&yaml).unwrap();
    let logs: Vec<String> = d
        .nfs
        .iter()
        .map(|nf| {
            let file = dir.join(braid_runtime::tune::nf_log_file("adaptive", 4, 0, &nf.name));
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        })
        .collect();
    // Every NF process's controller says it runs. Whether it also
    // changes something in this one second depends on how the machine
    // spreads the packets (a real-time raise where an NF sleeps between
    // packets, a smaller batch where they come a few at a time; with two
    // CPU hogs beside it, often nothing): when it does, it says why.
    assert!(logs.iter().all(|l| l.contains("adapt: on (batch")), "{logs:#?}");
    for change in logs.iter().flat_map(|l| l.lines()).filter(|l| l.contains("adapt: period")) {
        assert!(change.contains(" -> ") && change.ends_with(')'), "{change}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The batch sweep (SCC Fig. 8) on both port kinds: every point measured
/// without loss at a low rate, and no namespace or veth left behind.
#[test]
fn the_batch_sweep_measures_both_port_kinds_and_cleans_up() {
    if braid_testkit::skip_unless(
        braid_io::netns::is_root(),
        "scc batch sweep",
        "namespaces, AF_PACKET and AF_XDP need root",
    ) {
        return;
    }
    let child = braid()
        .args(["tune", "--scc-batch", "af_packet,af_xdp", "--batches", "1,8", "--reps", "1"])
        .args(["--packets", "200", "--warmup", "50", "--rate", "5000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for kind in ["af_packet", "af_xdp"] {
        for batch in [1, 8] {
            let row = format!("| {kind} | {batch} | 1 | 0 |");
            assert!(stdout.contains(&row), "{row} in\n{stdout}\n{stderr}");
        }
    }
    // Its namespaces (named after its pid) are gone, and with them the veths.
    let list = braid_io::netns::ip(None, &["netns", "list"]).unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    let mine: Vec<&str> = list
        .lines()
        .filter(|l| {
            l.starts_with(&format!("braid-sbh-{pid}-"))
                || l.starts_with(&format!("braid-sbr-{pid}-"))
        })
        .collect();
    assert!(mine.is_empty(), "left behind: {mine:?}");
}
