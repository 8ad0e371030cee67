//! `braid daemon ...` against braidd's API served in this process (the
//! same router, daemon and store as the `braidd` binary, which lives in
//! another package): status, chains, a refused deploy that names the
//! file and line, unknown chains, metrics, and no daemon at all.

use std::process::Command;
use std::sync::Arc;

use braid_daemon::api::{router, AppState};
use braid_daemon::audit::Audit;
use braid_daemon::daemon::Daemon;
use braid_daemon::store::Store;

fn braid(socket: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_braid"))
        .arg("daemon")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A directory removed on drop, also when the test fails.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_cli_is_a_thin_client_of_the_daemon() {
    let guard =
        TempDir(std::env::temp_dir().join(format!("braid-daemon-cli-{}", std::process::id())));
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
    let events = state.events.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let _g = rt.enter();
        let listener = braid_daemon::server::bind(&socket, 0o600).unwrap();
        rt.spawn(braid_daemon::server::serve(listener, router(state), async {
            let _ = stop_rx.await;
        }))
    };

    let (ok, out, err) = braid(&socket, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"daemon\": \"braidd\""), "{out}");
    let (ok, out, _) = braid(&socket, &["chains"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1, "only the header: {out}");

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "name: a\nnfs:\n  - { name: f, type: fwdd }\n").unwrap();
    let (ok, _, err) = braid(&socket, &["deploy", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains(&format!("{}:3:22: nfs[0].type: unknown NF type `fwdd`", bad.display())),
        "{err}"
    );

    let (ok, _, err) = braid(&socket, &["show", "nope"]);
    assert!(!ok);
    assert!(err.contains("no chain named `nope`"), "{err}");
    let (ok, _, err) = braid(&socket, &["set", "nope", "fw", "{default: drop}"]);
    assert!(!ok && err.contains("no chain named `nope`"), "{err}");
    let (ok, _, err) = braid(&socket, &["remove", "nope"]);
    assert!(!ok && err.contains("no chain named `nope`"), "{err}");

    let (ok, out, _) = braid(&socket, &["metrics"]);
    assert!(ok);
    assert!(
        out.contains(
            "braid_api_requests_total{method=\"POST\",route=\"/v1/chains\",status=\"400\"} 1"
        ),
        "{out}"
    );

    // Events and operations: the stream replays what is kept.
    events.publish("chain_removed", serde_json::json!({ "chain": "x" }));
    let (ok, out, err) = braid(&socket, &["events", "--since", "0", "--count", "1"]);
    assert!(ok, "{err}");
    let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((e["seq"].as_u64(), e["type"].as_str()), (Some(1), Some("chain_removed")), "{out}");
    let (ok, out, _) = braid(&socket, &["operations"]);
    assert!(ok);
    assert!(out.starts_with("id ") && out.lines().count() == 1, "{out}");
    let (ok, _, err) = braid(&socket, &["operations", "op-7"]);
    assert!(!ok && err.contains("no operation `op-7`"), "{err}");

    // `profile` and `sched`: bad input is named, before or by braidd.
    let (ok, _, err) = braid(&socket, &["profile", "nope"]);
    assert!(!ok && err.contains("no chain named `nope`"), "{err}");
    for (args, says) in [
        (&["profile", "nope", "--interval-ms", "5"][..], "5 is not in 10..=60000"),
        (&["profile", "nope", "--interval-ms", "60001"][..], "60001 is not in 10..=60000"),
        (&["sched", "nope", "fw"][..], "nothing to change"),
        (&["sched", "nope", "fw", "--cpus", "1-x"][..], "--cpus \"1-x\": expected a CPU list"),
        (&["sched", "nope", "fw", "--clear", "--policy", "batch"][..], "cannot be used with"),
        (&["sched", "nope", "fw", "--policy", "deadline"][..], "invalid value 'deadline'"),
        (&["sched", "nope", "fw", "--idle", "nap"][..], "invalid value 'nap'"),
        (&["sched", "nope", "fw", "--slice-us", "abc"][..], "invalid value 'abc'"),
        (&["sched", "nope", "fw", "--policy", "batch"][..], "no chain named `nope`"),
    ] {
        let (ok, _, err) = braid(&socket, args);
        assert!(!ok && err.contains(says), "{args:?}: {err}");
    }

    stop_tx.send(()).unwrap();
    rt.block_on(server).unwrap().unwrap();
    let (ok, _, err) = braid(&socket, &["status"]);
    assert!(!ok);
    assert!(err.contains(&format!("cannot connect to braidd at {}", socket.display())), "{err}");
}

/// `braid daemon --url https://... --ca F --token-file F`: the same
/// commands over braidd's TCP API (TLS 1.3, bearer token), served in this
/// process; a wrong token is refused with braidd's 401 and a bad URL is
/// named.
#[test]
fn the_cli_speaks_the_tcp_api_with_tls_and_a_token() {
    use braid_daemon::auth::Token;
    use braid_daemon::server::{Limits, Server};
    let guard =
        TempDir(std::env::temp_dir().join(format!("braid-daemon-cli-tls-{}", std::process::id())));
    let dir = guard.0.clone();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    const TOKEN: &str = "cli-test-token-7d1e93a0b2c4";
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert, key, token) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("token"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let daemon = Arc::new(Daemon::new(
        Store::open(&dir.join("state.redb")).unwrap(),
        braid_runtime::live::StartOptions::default(),
    ));
    let (_stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let mut state =
        AppState::new(daemon, Audit::open(&dir.join("audit.log")).unwrap(), 0, 1 << 20, stopping);
    state.token = Some(Arc::new(Token::new(TOKEN).unwrap()));
    let (server, shutdown) = Server::new(Limits::default());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let config = braid_daemon::server::tls_config(&cert, &key).unwrap();
    let serving = rt.spawn(server.serve_tls(listener, config, router(state)));

    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let braid_tls = |token: &std::path::Path, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_braid"))
            .args(["daemon", "--url", &url, "--ca", &s(&cert), "--token-file", &s(token)])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = braid_tls(&token, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"daemon\": \"braidd\""), "{out}");
    let (ok, out, err) = braid_tls(&token, &["chains"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "only the header: {out}");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "name: a\nnfs:\n  - { name: f, type: fwdd }\n").unwrap();
    let (ok, _, err) = braid_tls(&token, &["deploy", &s(&bad)]);
    assert!(!ok);
    assert!(err.contains("unknown NF type `fwdd`"), "{err}");
    let (ok, out, err) = braid_tls(&token, &["metrics"]);
    assert!(ok, "{err}");
    assert!(out.contains("route=\"tls:/v1/status\",status=\"200\"} 1"), "{out}");

    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "not-the-token-000000\n").unwrap();
    let (ok, _, err) = braid_tls(&wrong, &["status"]);
    assert!(!ok);
    assert!(err.contains("401") || err.contains("token"), "{err}");
    assert!(!err.contains(TOKEN) && !err.contains("not-the-token"), "no token in errors: {err}");

    // --url without --ca, and --url with --socket, are refused by the
    // argument parser; a URL that is not https is named.
    let out = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["daemon", "--url", &url, "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca"));
    let plain = url.replace("https://", "http://");
    let out = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["daemon", "--url", &plain, "--ca", &s(&cert), "--token-file", &s(&token), "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with https://"));

    shutdown.trigger();
    rt.block_on(serving).unwrap();
}
