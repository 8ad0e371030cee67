//! Compiles the XDP programs in `bpf/` with clang into `$OUT_DIR`.
//!
//! Without clang or the libbpf headers the crate still builds: a
//! `cargo:warning` says what is missing and the loader reports at run time
//! that XDP programs were not built. A program that clang rejects is a bug
//! in braid and fails the build with clang's message.

use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: &[&str] = &["xdp_fwd", "xdp_xor", "xdp_firewall", "xdp_steer", "xdp_chain"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(braid_xdp)");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=BRAID_CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("BRAID_CLANG").unwrap_or_else(|_| "clang".to_string());

    if Command::new(&clang).arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        println!(
            "cargo:warning=braid-io: `{clang}` not found; XDP programs are not built \
             (install clang and libbpf-dev, or set BRAID_CLANG)"
        );
        return;
    }
    let helpers = Path::new("/usr/include/bpf/bpf_helpers.h");
    if !helpers.exists() {
        println!(
            "cargo:warning=braid-io: {} not found; XDP programs are not built (install libbpf-dev)",
            helpers.display()
        );
        return;
    }
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    for prog in PROGRAMS {
        let src = format!("bpf/{prog}.c");
        let obj = out.join(format!("{prog}.o"));
        let result = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .args(["-Ibpf", "-c", &src, "-o"])
            .arg(&obj)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {clang} on {src}: {e}"));
        if !result.status.success() {
            panic!(
                "clang failed to compile {src}:\n{}{}",
                String::from_utf8_lossy(&result.stdout),
                String::from_utf8_lossy(&result.stderr)
            );
        }
    }
    println!("cargo:rustc-cfg=braid_xdp");
}
