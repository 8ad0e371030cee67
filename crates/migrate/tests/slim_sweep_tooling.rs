//! The SliM sweep's report tooling (`scripts/slim_sweep.py`, run by
//! `scripts/slim-sweep.sh`): on a fixed CSV its plots must carry every
//! point at its median, one line per mode and size, and the table its
//! rows; a CSV without a mode is refused naming the line. Needs
//! `python3` (stdlib only); a missing interpreter fails the test.

use std::path::PathBuf;
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/slim_sweep.py")
}

#[test]
fn the_sweep_report_plots_every_point_at_its_median() {
    let out = Command::new("python3").arg(script()).arg("selftest").output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "selftest failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("selftest ok"), "{stdout}");
}

#[test]
fn a_sweep_csv_without_a_mode_is_refused_naming_the_line() {
    let dir = std::env::temp_dir().join(format!("braid-slim-tooling-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("bad.csv");
    std::fs::write(&csv, "nf,mode,size,load_pct\nfirewall,statelet,512,10\nfirewall,,512,30\n")
        .unwrap();
    let out = Command::new("python3")
        .arg(script())
        .args(["report", "--csv"])
        .arg(&csv)
        .arg("--out-dir")
        .arg(&dir)
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a row without a mode was accepted");
    assert!(err.contains("bad.csv:3: column `mode` is empty"), "{err}");
}
