//! `braid scale`: bad input is refused with an error naming it, before
//! any braidd is called (the socket here does not exist). Scaling itself
//! between braidd is tested as root in `crates/daemon/tests/scale.rs`.

use std::process::Command;

fn scale(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_braid"))
        .arg("scale")
        .args(args)
        .args(["--socket", "/nonexistent/braid-scale-cli.sock"])
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn braid_scale_refuses_bad_input_naming_it() {
    let base = ["edge", "fw", "--to", "10.0.9.2"];
    for (extra, want) in [
        (vec!["--steer", "su/st"], "steering point `su/st`: no `:PORT`"),
        (vec!["--steer", "su/st:up"], "PORT is not `in` or `out`"),
        (vec!["--steer", "su/st:in", "--share", "2/2"], "share 2/2: need N >= 2 and 0 <= K < N"),
        (vec!["--steer", "su/st:in", "--share", "half"], "--share `half`: expected K/N"),
        (vec!["--steer", "su/st:in", "--there", "0"], "both instances are 0"),
        (vec!["--steer", "su/st:in", "--deploy-ports", "a"], "--deploy-ports: `a`"),
    ] {
        let mut args = vec!["out"];
        args.extend(base);
        args.extend(extra.iter().copied());
        let (ok, err) = scale(&args);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
    }
    // Valid input reaches the (absent) daemon: the error names its socket.
    let mut args = vec!["out"];
    args.extend(base);
    args.extend(["--steer", "su/st:in"]);
    let (ok, err) = scale(&args);
    assert!(!ok && err.contains("/nonexistent/braid-scale-cli.sock"), "{err}");
    let mut args = vec!["in"];
    args.extend(base);
    args.extend(["--steer", "su/st:in", "--here", "1", "--there", "1"]);
    let (ok, err) = scale(&args);
    assert!(!ok && err.contains("both instances are 1"), "{err}");
}
