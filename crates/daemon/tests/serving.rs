//! How braidd serves: the TCP API (TLS 1.3 and a bearer token, or
//! nothing), the connection limit and header timeout (slowloris), and
//! operations with the event stream.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Braidd, TempDir};

const TOKEN: &str = "braid-test-token-5f0c2a9e81d3";

/// A self-signed certificate for 127.0.0.1 and localhost, its key, and a
/// token file (0600, owned by the user this file's braidd runs as) under
/// `dir`.
fn credentials(dir: &Path) -> (String, String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key, token) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("token"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    common::Privilege::default_here().hand_over(&token);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    (s(&cert), s(&key), s(&token))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// curl's answer: (exit code, status, headers and body).
fn curl(args: &[&str]) -> (Option<i32>, u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    (out.status.code(), status, text + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_tcp_api_needs_tls_1_3_and_the_bearer_token() {
    if braid_testkit::skip_unless_tool("curl", "TCP API") {
        return;
    }
    let dir = TempDir::new("tls");
    let (cert, key, token) = credentials(dir.path());
    let addr = format!("127.0.0.1:{}", free_port());
    let opts = ["--listen", &addr, "--tls-cert", &cert, "--tls-key", &key, "--token-file", &token];
    let mut extra = opts.to_vec();
    extra.extend(["--log-level", "debug"]);
    let mut d = Braidd::start(dir.path(), None, &extra);
    let url = |p: &str| format!("https://{addr}{p}");
    let auth = format!("Authorization: Bearer {TOKEN}");

    // No token: 401 with the bare challenge; a wrong one: invalid_token.
    let (_, st, text) = curl(&["--cacert", &cert, &url("/v1/status")]);
    assert_eq!(st, 401, "{text}");
    assert!(text.contains("www-authenticate: Bearer realm=\"braidd\"\r\n"), "{text}");
    let (_, st, text) = curl(&[
        "--cacert",
        &cert,
        "-H",
        "Authorization: Bearer not-the-token-000000",
        &url("/v1/chains"),
    ]);
    assert_eq!(st, 401, "{text}");
    assert!(text.contains("error=\"invalid_token\""), "{text}");
    // A mutating call without the token changes nothing.
    let (_, st, _) = curl(&[
        "--cacert",
        &cert,
        "-X",
        "POST",
        "--data-binary",
        "name: a\nnfs: []\n",
        &url("/v1/chains"),
    ]);
    assert_eq!(st, 401);

    // The token: the whole API, mutating calls included.
    let (_, st, text) = curl(&["--cacert", &cert, "-H", &auth, &url("/v1/status")]);
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("\"daemon\":\"braidd\""), "{text}");
    let (_, st, text) = curl(&[
        "--cacert",
        &cert,
        "-H",
        &auth,
        "-X",
        "POST",
        "--data-binary",
        "name: a\nnfs:\n  - { name: f, type: fwdd }\n",
        &url("/v1/chains"),
    ]);
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("did you mean `fwd`?"), "{text}");

    // TLS 1.2 and plain HTTP are refused.
    let (code, _, text) = curl(&[
        "--cacert",
        &cert,
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "-H",
        &auth,
        &url("/v1/status"),
    ]);
    assert_ne!(code, Some(0), "TLS 1.2 accepted: {text}");
    let (code, st, text) = curl(&["-H", &auth, &format!("http://{addr}/v1/status")]);
    assert!(code != Some(0) || st != 200, "plain HTTP served: {text}");
    // An unverified certificate is curl's refusal, not a pass.
    let (code, _, _) = curl(&["-H", &auth, &url("/v1/status")]);
    assert_ne!(code, Some(0));

    // The unix socket still serves without a token; TCP requests are
    // counted apart.
    let m = d.client().metrics().unwrap();
    let tls_ok = braid_daemon::client::metric_value(
        &m,
        "braid_api_requests_total",
        &[("route", "tls:/v1/status"), ("status", "200")],
    );
    assert_eq!(tls_ok, Some(1.0), "{m}");
    assert!(d.terminate().success());

    // The audit log names the TCP peers; the token is nowhere, not even
    // in debug logs.
    let audit = std::fs::read_to_string(dir.path().join("state/audit.log")).unwrap();
    assert!(audit.contains("\"addr\":\"127.0.0.1:"), "{audit}");
    assert!(audit.contains("\"status\":401"), "{audit}");
    assert!(!audit.contains(TOKEN) && !audit.contains("not-the-token"), "{audit}");
    let log = d.log();
    assert!(log.contains("braidd ready"), "{log}");
    assert!(!log.contains(TOKEN) && !log.contains("not-the-token"), "{log}");
}

#[test]
fn the_tcp_api_is_refused_without_tls_a_token_or_a_private_token_file() {
    let dir = TempDir::new("tls-refused");
    let (cert, key, token) = credentials(dir.path());
    let addr = format!("127.0.0.1:{}", free_port());
    let run = |extra: &[&str]| {
        let out = Braidd::command(dir.path(), None, extra).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["--listen", &addr]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("only with TLS and a bearer token: set tls_cert, tls_key, token_file"),
        "{err}"
    );
    let (code, err) = run(&["--listen", &addr, "--tls-cert", &cert, "--tls-key", &key]);
    assert_eq!(code, Some(1));
    assert!(err.contains("set token_file"), "{err}");
    // A token others may read.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let all = ["--listen", &addr, "--tls-cert", &cert, "--tls-key", &key, "--token-file", &token];
    let (code, err) = run(&all);
    assert_eq!(code, Some(1));
    assert!(err.contains("mode 0o640 lets others read it"), "{err}");
    // A key that is not a key.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let swapped =
        ["--listen", &addr, "--tls-cert", &cert, "--tls-key", &cert, "--token-file", &token];
    let (code, err) = run(&swapped);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("{cert}: not a PEM private key")), "{err}");
    // Nothing was left listening.
    assert!(!dir.path().join("braidd.sock").exists());
    assert!(std::net::TcpStream::connect(&addr).is_err());
}

/// Read from `s` until EOF or `limit`; whether it was closed by the daemon.
fn closed_within(s: &mut UnixStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn idle_and_trickling_connections_do_not_lock_out_a_real_client() {
    let dir = TempDir::new("slowloris");
    let d = Braidd::start(
        dir.path(),
        None,
        &["--max-connections", "32", "--header-timeout-ms", "1500", "--body-timeout-ms", "1000"],
    );
    let rss_before = d.peak_rss_kib();
    // 1,000 connections: half say nothing, half start a request head and
    // never finish it. The daemon holds at most 32 of them at a time.
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n").unwrap();
        }
        idle.push(s);
    }
    // A real client is served at once, again and again.
    let c = d.client().with_timeout(Duration::from_secs(5));
    for _ in 0..20 {
        let t = Instant::now();
        c.status().unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "status took {:?}", t.elapsed());
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.write_all(b"GET /v1/").unwrap();
        idle.push(s);
    }
    let rss_after = d.peak_rss_kib();
    assert!(
        rss_after < rss_before + 8 * 1024,
        "peak RSS grew from {rss_before} KiB to {rss_after} KiB with 1,020 idle connections"
    );
    drop(idle);

    // A connection that never completes its request head is closed after
    // the header timeout, even with room to spare.
    let t = Instant::now();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\n").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)), "not closed after 5 s");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(4), "{took:?}");
    // A kept-alive connection between requests is idle as well.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)), "kept-alive idle connection stays open");
    // A body that trickles in is cut off after the body timeout: 408.
    let t = Instant::now();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"POST /v1/chains HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nname: a")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("not received whole within 1000 ms (7 bytes came)"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(d.client().status().is_ok());
}

#[test]
fn operations_have_ids_and_the_event_stream_shows_changes_in_order() {
    let dir = TempDir::new("events");
    // A short header timeout: an open event stream outlives it (the timer
    // runs only while a request head is awaited).
    let mut d = Braidd::start(dir.path(), None, &["--header-timeout-ms", "300"]);
    let c = d.client();
    let start = c.status().unwrap()["last_event"].as_u64().unwrap();
    let mut events = c.events(Some(start)).unwrap();
    std::thread::sleep(Duration::from_millis(900));

    // Asynchronous: 202, Location, then the outcome at that location.
    let r = c
        .request_with(
            "POST",
            "/v1/chains",
            &[("Prefer", "respond-async")],
            Some(("application/yaml", b"name: a\nports:\n  in: { kind: af_packet, iface: braid-no-such-if }\n  out: { kind: af_packet, iface: braid-no-such-if2 }\nnfs:\n  - { name: f, type: fwd }\n")),
        )
        .unwrap();
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let location = r.header("location").unwrap().to_string();
    assert_eq!(r.header("preference-applied"), Some("respond-async"));
    let op: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(location, format!("/v1/operations/{}", op["id"].as_str().unwrap()));
    assert_eq!((op["kind"].as_str(), op["chain"].as_str()), (Some("deploy"), Some("a")));
    let id = op["id"].as_str().unwrap();
    let done = c.wait(id, Duration::from_secs(10)).unwrap();
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["status"], 422, "{done}");
    assert_eq!(done["error"]["error"], "start_failed", "{done}");
    assert!(done["finished"].as_f64().unwrap() >= done["created"].as_f64().unwrap());
    // A bad request is refused at once, without an operation.
    let (_, kind) = match c.deploy_async("name: a\nnfs: []\n").unwrap_err() {
        braid_daemon::client::ClientError::Api { status, kind, .. } => (status, kind),
        e => panic!("{e}"),
    };
    assert_eq!(kind, "invalid_descriptor");
    // Synchronous calls are operations too (header Operation-Location).
    let r = c.request("DELETE", "/v1/chains/nope", None).unwrap();
    assert_eq!(r.status, 404);
    let missing = c.operation("op-999").unwrap_err().to_string();
    assert!(missing.contains("no operation `op-999`"), "{missing}");
    let ops = c.json("GET", "/v1/operations", None).unwrap();
    assert_eq!(ops["operations"].as_array().unwrap().len(), 1, "{ops}");

    // The event stream: the failed operation, in order; then a stop ends it.
    let ev = events.next().unwrap().unwrap();
    assert_eq!(ev["type"], "operation_finished", "{ev}");
    assert_eq!((ev["operation"].as_str(), ev["state"].as_str()), (Some(id), Some("failed")));
    assert_eq!(ev["seq"].as_u64(), Some(start + 1));
    // Resuming from 0 replays the whole kept history, in order.
    let replay: Vec<serde_json::Value> =
        c.events(Some(0)).unwrap().take(2).map(Result::unwrap).collect();
    assert_eq!(replay[0]["type"], "daemon_started");
    assert_eq!(replay[1]["seq"], ev["seq"]);
    // Bad query.
    let r = c.request("GET", "/v1/events?since=x", None).unwrap();
    assert_eq!(r.status, 400);
    let m = c.metrics().unwrap();
    let failed = braid_daemon::client::metric_value(
        &m,
        "braid_operations_total",
        &[("kind", "deploy"), ("outcome", "failed")],
    );
    assert_eq!(failed, Some(1.0), "{m}");
    // SIGTERM ends open event streams (braidd does not wait on them).
    let t = Instant::now();
    assert!(d.terminate().success(), "{}", d.log());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(events.next().is_none());
}

/// Schemathesis: `$BRAID_SCHEMATHESIS`, the virtualenv
/// scripts/install-deps.sh makes, or `st` on the PATH.
fn schemathesis() -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var_os("BRAID_SCHEMATHESIS").map(Into::into),
        Some("/opt/braid/schemathesis/bin/st".into()),
        Some("st".into()),
    ];
    candidates.into_iter().flatten().find(|p: &std::path::PathBuf| {
        std::process::Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success())
    })
}

#[test]
fn an_api_fuzz_run_against_the_served_openapi_document_finds_no_server_error() {
    let st = schemathesis();
    if braid_testkit::skip_unless(
        st.is_some(),
        "API fuzz run",
        "schemathesis is not installed (scripts/install-deps.sh installs it in /opt/braid/schemathesis)",
    ) {
        return;
    }
    let dir = TempDir::new("fuzz");
    let (cert, key, token) = credentials(dir.path());
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Braidd::start(
        dir.path(),
        None,
        &["--listen", &addr, "--tls-cert", &cert, "--tls-key", &key, "--token-file", &token],
    );
    // Short in CI; BRAID_API_FUZZ_SECONDS=600 for a real run (docs/reliability.md).
    let seconds = std::env::var("BRAID_API_FUZZ_SECONDS").unwrap_or_else(|_| "20".into());
    let out = std::process::Command::new(st.unwrap())
        .arg("run")
        .arg(format!("https://{addr}/v1/openapi.json"))
        .args(["--tls-verify", &cert, "-H", &format!("Authorization: Bearer {TOKEN}")])
        // Every check but one: a schema-valid descriptor can still be
        // refused (its interfaces do not exist on this host: 422; an NF's
        // parameters are checked by the NF: 400), which JSON Schema cannot
        // express.
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        // A stream that never ends by itself (tested in
        // operations_have_ids_and_the_event_stream_shows_changes_in_order).
        .args(["--exclude-path", "/v1/events"])
        .args(["--max-time", &seconds, "--workers", "2", "--request-timeout", "10"])
        .args(["--generation-database", "none", "--no-color"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found problems:\n{report}\n{}", d.log());
    // The daemon's own count: it answered many requests, none with a 5xx.
    let m = d.client().metrics().unwrap();
    let mut answered = 0.0;
    for line in m.lines().filter(|l| l.starts_with("braid_api_requests_total{")) {
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        answered += n;
        assert!(!line.contains("status=\"5"), "a server error: {line}\n{report}");
    }
    assert!(answered > 200.0, "only {answered} requests reached braidd:\n{report}");
    let lines: Vec<&str> = report.lines().collect();
    eprintln!("{}", lines[lines.len().saturating_sub(12)..].join("\n"));
}

/// The Rust client (what `braid daemon --url` uses) over the TCP API:
/// TLS 1.3 with the server's certificate as the trust anchor and the
/// token from its file; the same answers as on the unix socket. A wrong
/// token is refused (401), a certificate not trusted fails the handshake,
/// and a bad URL, CA file or token file is named before anything is sent.
#[test]
fn the_client_speaks_the_tcp_api_with_tls_and_the_token() {
    use braid_daemon::client::{Client, ClientError};
    let dir = TempDir::new("tlsclient");
    let (cert, key, token) = credentials(dir.path());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let opts = ["--listen", &addr, "--tls-cert", &cert, "--tls-key", &key, "--token-file", &token];
    let d = Braidd::start(dir.path(), None, &opts);
    let (cert, token) = (Path::new(&cert), Path::new(&token));

    for url in [format!("https://{addr}"), format!("https://localhost:{port}/")] {
        let c = Client::tls(&url, cert, token).unwrap();
        assert!(!format!("{c:?}").contains(TOKEN), "the token is not in Debug: {c:?}");
        let s = c.status().unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(s["daemon"], "braidd", "{s}");
        assert_eq!(s["pid"], d.client().status().unwrap()["pid"]);
        assert!(c.chains().unwrap().is_empty());
        let e = c.deploy("name: a\nnfs:\n  - { name: f, type: fwdd }\n").unwrap_err();
        let ClientError::Api { status: 400, message, .. } = &e else { panic!("{e}") };
        assert!(message.contains("did you mean `fwd`?"), "{message}");
        let e = c.chain("nope").unwrap_err();
        assert!(matches!(e, ClientError::Api { status: 404, .. }), "{e}");
        // The event stream, chunked over TLS.
        let mut events = c.events(Some(0)).unwrap();
        let first = events.next().unwrap().unwrap();
        assert_eq!(first["type"], "daemon_started", "{first}");
    }
    let c = Client::tls(&format!("https://{addr}"), cert, token).unwrap();
    let m = c.metrics().unwrap();
    assert!(
        braid_daemon::client::metric_value(
            &m,
            "braid_api_requests_total",
            &[("route", "tls:/v1/status")]
        )
        .is_some(),
        "{m}"
    );

    // A wrong token: 401, invalid_token.
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token-000000\n").unwrap();
    let e = Client::tls(&format!("https://{addr}"), cert, &wrong).unwrap().status().unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 401, .. }), "{e}");
    // A certificate that is not the server's: the handshake fails.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let other_pem = dir.path().join("other.pem");
    std::fs::write(&other_pem, other.cert.pem()).unwrap();
    let e =
        Client::tls(&format!("https://{addr}"), &other_pem, token).unwrap().status().unwrap_err();
    assert!(matches!(&e, ClientError::Io { .. }), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");

    // Bad settings are named, nothing is sent.
    let setup = |url: &str, ca: &Path, tok: &Path| match Client::tls(url, ca, tok) {
        Err(ClientError::Setup(m)) => m,
        other => panic!("{url}: {other:?}"),
    };
    assert!(setup(&format!("http://{addr}"), cert, token).contains("must start with https://"));
    assert!(setup(&format!("https://{addr}/v1"), cert, token).contains("no path"));
    assert!(setup("https://127.0.0.1:99999", cert, token).contains("port `99999`"));
    assert!(setup(&format!("https://{addr}"), token, token).contains("no `BEGIN CERTIFICATE`"));
    assert!(setup(&format!("https://{addr}"), &dir.path().join("none"), token).contains("--ca"));
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    assert!(setup(&format!("https://{addr}"), cert, &empty).contains("--token-file"));
}
