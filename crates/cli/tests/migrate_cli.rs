//! `braid migrate` against braidd's API served in this process: what it
//! sends and how it reports refusals (a bad switch file, a bad field of
//! the switch, an unknown chain, no daemon). The migration itself between
//! two braidd is tested as root in `crates/daemon/tests/migration.rs`.

use std::process::Command;
use std::sync::Arc;

use braid_daemon::api::{router, AppState};
use braid_daemon::audit::Audit;
use braid_daemon::daemon::Daemon;
use braid_daemon::store::Store;

fn migrate(socket: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_braid"))
        .arg("migrate")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A directory removed on drop, also when the test fails.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn braid_migrate_reports_refusals_naming_what_is_wrong() {
    let guard =
        TempDir(std::env::temp_dir().join(format!("braid-migrate-cli-{}", std::process::id())));
    let dir = guard.0.clone();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("braidd.sock");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let daemon = Arc::new(Daemon::new(
        Store::open(&dir.join("state.redb")).unwrap(),
        braid_runtime::live::StartOptions::default(),
    ));
    let (_stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let state = AppState::new(
        daemon,
        Audit::open(&dir.join("audit.log")).unwrap(),
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap(),
        1 << 20,
        stopping,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let _g = rt.enter();
        let listener = braid_daemon::server::bind(&socket, 0o600).unwrap();
        rt.spawn(braid_daemon::server::serve(listener, router(state), async {
            let _ = stop_rx.await;
        }))
    };
    let good = dir.join("switch.yaml");
    std::fs::write(
        &good,
        "redirect: [{netns: up, to: 10.0.2.0/24, via: 10.0.12.2, dev: to-b}]\nrestore: [{netns: up, to: 10.0.2.0/24, via: 10.0.11.2, dev: to-a}]\nmarkers: [{netns: up, dev: to-a, port: in}]\n",
    )
    .unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "redirect: [{to: 10.0.2.0/24, via: 10.0.12}]\nrestore: []\nmarkers: [{dev: a, port: in}]\n",
    )
    .unwrap();
    let (g, b) = (good.to_str().unwrap(), bad.to_str().unwrap());

    let (ok, err) = migrate(&socket, &["edge", "fw", "--to", "10.0.9.2", "--switch", b]);
    assert!(!ok && err.contains("switch.redirect[0].via: `10.0.12` is not an IP address"), "{err}");
    let (ok, err) =
        migrate(&socket, &["edge", "fw", "--to", "10.0.9.2", "--switch", g, "--mode", "teleport"]);
    assert!(!ok && err.contains("migration mode `teleport`"), "{err}");
    let (ok, err) = migrate(
        &socket,
        &["edge", "fw", "--to", "10.0.9.2", "--switch", g, "--flows", "share:0/2"],
    );
    assert!(!ok && err.contains("flows `share:0/2`"), "{err}");
    let (ok, err) = migrate(&socket, &["edge", "fw", "--to", "10.0.9.2", "--switch", g]);
    assert!(!ok && err.contains("no chain named `edge`"), "{err}");
    let (ok, err) =
        migrate(&socket, &["edge", "fw", "--to", "x", "--switch", g, "--deploy-ports", "a,b,c"]);
    assert!(!ok && err.contains("--deploy-ports: `a,b,c`: expected two interfaces"), "{err}");
    let missing = dir.join("none.yaml");
    let (ok, err) =
        migrate(&socket, &["edge", "fw", "--to", "x", "--switch", missing.to_str().unwrap()]);
    assert!(!ok && err.contains(&format!("cannot read {}", missing.display())), "{err}");

    stop_tx.send(()).unwrap();
    rt.block_on(server).unwrap().unwrap();
    let (ok, err) = migrate(&socket, &["edge", "fw", "--to", "10.0.9.2", "--switch", g]);
    assert!(!ok && err.contains("cannot connect to braidd"), "{err}");
}
