//! `braid profile`: JSON with exact counts, the SVG file, refusals.

use std::process::Command;

fn braid(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap()
}

#[test]
fn profile_json_counts_and_svg() {
    let svg = std::env::temp_dir().join(format!("braid-profile-cli-{}.svg", std::process::id()));
    let o = braid(&[
        "profile",
        "examples/chain4.yaml",
        "--packets",
        "5000",
        "--batch-size",
        "16",
        "--json",
        "--no-calibrate",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["input_packets"], 5000);
    for nf in v["nfs"].as_array().unwrap() {
        assert_eq!((nf["vectors"].as_u64(), nf["calls"].as_u64()), (Some(5000), Some(313)), "{nf}");
    }
    assert!(v["unit_costs"].is_null(), "--no-calibrate: nothing modelled");
    let pmu = std::path::Path::new("/sys/bus/event_source/devices/cpu").exists();
    assert_eq!(v["hardware"]["status"] == "measured", pmu, "{}", v["hardware"]);
    let text = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("bench4"), "{text}");

    let o = braid(&["profile", "examples/chain4.yaml", "--mapping", "processes"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--mapping processes: `braid profile` runs the thread and threads mappings"),
        "{err}"
    );
}
