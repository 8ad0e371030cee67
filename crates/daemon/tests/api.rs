//! braidd's API without live traffic: bad input changes nothing and gets
//! precise errors, oversized bodies are refused without being held, many
//! clients at once are served, the OpenAPI document matches the router,
//! peers are checked, and start-up problems are reported clearly.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use braid_daemon::client::{metric_value, ClientError};
use common::{Braidd, TempDir, BRAIDD};

fn api_error(e: ClientError) -> (u16, String, String, serde_json::Value) {
    match e {
        ClientError::Api { status, kind, message, body } => (status, kind, message, body),
        other => panic!("expected an API error, got {other}"),
    }
}

#[test]
fn bad_requests_get_precise_errors_and_change_nothing() {
    let dir = TempDir::new("bad");
    let d = Braidd::start(dir.path(), None, &[]);
    let c = d.client();

    // YAML syntax.
    let (st, kind, msg, _) = api_error(c.deploy("name: a\nnfs: [\n").unwrap_err());
    assert_eq!((st, kind.as_str()), (400, "invalid_descriptor"));
    assert!(msg.contains("request body:"), "{msg}");
    // An unknown NF type: line, column, field path, what is accepted.
    let (st, _, _, body) =
        api_error(c.deploy("name: a\nnfs:\n  - { name: f, type: fwdd }\n").unwrap_err());
    assert_eq!(st, 400);
    let p = &body["problems"][0];
    assert_eq!((p["line"].as_u64(), p["path"].as_str()), (Some(3), Some("nfs[0].type")));
    assert!(p["message"].as_str().unwrap().contains("did you mean `fwd`?"), "{body}");
    assert!(p["accepted"].as_str().unwrap().contains("firewall"), "{body}");
    // Every problem, not only the first.
    let (_, _, _, body) = api_error(
        c.deploy("name: a\nbatch_size: 0\nnfs:\n  - { name: f, type: fwdd }\n  - { name: f, type: fwd }\n")
            .unwrap_err(),
    );
    assert!(body["problems"].as_array().unwrap().len() >= 3, "{body}");
    // Valid for `braid run`, but the daemon runs live chains only.
    let (st, _, msg, _) = api_error(
        c.deploy("name: a\nports:\n  in: { kind: memory }\n  out: { kind: memory }\nnfs:\n  - { name: f, type: fwd }\n")
            .unwrap_err(),
    );
    assert_eq!(st, 400);
    assert!(msg.contains("ports.in: kind `memory` is not a live port"), "{msg}");
    // JSON is accepted as well (it is YAML); this one names a missing
    // interface: it validates, and fails to start.
    let json = r#"{"name": "j", "ports": {"in": {"kind": "af_packet", "iface": "braidnosuch0"},
        "out": {"kind": "af_packet", "iface": "braidnosuch1"}}, "nfs": [{"name": "f", "type": "fwd"}]}"#;
    let (st, kind, msg, _) = api_error(c.deploy(json).unwrap_err());
    assert_eq!((st, kind.as_str()), (422, "start_failed"), "{msg}");
    assert!(msg.contains("chain `j`: ports.in: cannot open"), "{msg}");
    // A chain name that cannot go into URLs, metric labels, thread names.
    let (st, _, _, body) =
        api_error(c.deploy("name: \"a b\\0\"\nnfs:\n  - { name: f, type: fwd }\n").unwrap_err());
    assert_eq!((st, body["problems"][0]["path"].as_str()), (400, Some("name")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("`a b\\0` cannot be used"), "{body}");
    // Not UTF-8.
    let r = c.request("POST", "/v1/chains", Some(("application/yaml", &[0xff, 0xfe]))).unwrap();
    assert_eq!(r.status, 400);

    // Unknown chain, for every verb that names one.
    for (method, path) in [
        ("GET", "/v1/chains/nope"),
        ("DELETE", "/v1/chains/nope"),
        ("PATCH", "/v1/chains/nope/nfs/f"),
    ] {
        let body = (method == "PATCH").then_some(("application/json", &br#"{"params": null}"#[..]));
        let e = c.json(method, path, body).unwrap_err();
        let (st, kind, msg, _) = api_error(e);
        assert_eq!(
            (st, kind.as_str(), msg.as_str()),
            (404, "unknown_chain", "no chain named `nope`")
        );
    }
    // A PATCH body that is not {"params": ...}.
    let (st, kind, msg, _) = api_error(
        c.json("PATCH", "/v1/chains/x/nfs/f", Some(("application/json", br#"{"parms": 1}"#)))
            .unwrap_err(),
    );
    assert_eq!((st, kind.as_str()), (400, "bad_body"));
    assert!(msg.contains("unknown field `parms`"), "{msg}");
    // No such route; a known route with the wrong method.
    let r = c.request("GET", "/v2/chains", None).unwrap();
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("no_route"));
    assert_eq!(c.request("PUT", "/v1/chains", None).unwrap().status, 405);

    // Nothing was deployed, nothing was declared.
    assert!(c.chains().unwrap().is_empty());
    drop(d);
    let d = Braidd::start(dir.path(), None, &[]);
    assert!(d.client().chains().unwrap().is_empty());
    // Every refused mutation is in the audit log with the caller's uid and pid.
    let audit = std::fs::read_to_string(dir.path().join("state/audit.log")).unwrap();
    let lines: Vec<serde_json::Value> =
        audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let posts = lines.iter().filter(|l| l["method"] == "POST").count();
    assert_eq!(posts, 7, "{audit}");
    // The caller is this test process (root, or whoever runs the suite).
    let my_uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    assert!(lines.iter().all(|l| l["uid"] == my_uid && l["pid"].as_u64().unwrap() > 0), "{audit}");
    assert!(audit.contains("did you mean `fwd`?"), "{audit}");
}

#[test]
fn a_100_mb_body_is_refused_without_being_held() {
    let dir = TempDir::new("big");
    let d = Braidd::start(dir.path(), None, &[]);
    let before = d.peak_rss_kib();
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let total: usize = 100_000_000;
    write!(s, "POST /v1/chains HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n").unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0;
    while sent < total {
        match s.write(&chunk[..chunk.len().min(total - sent)]) {
            Ok(n) => sent += n,
            Err(_) => break, // the daemon answered and closed
        }
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than the limit of 1048576 bytes"), "{answer}");
    let after = d.peak_rss_kib();
    assert!(
        after < before + 16 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB after {sent} bytes were sent"
    );
    // The limit is exact: one byte over is refused, and the daemon serves on.
    let c = d.client();
    let over = vec![b' '; (1 << 20) + 1];
    let (st, kind, _, _) =
        api_error(c.json("POST", "/v1/chains", Some(("application/yaml", &over))).unwrap_err());
    assert_eq!((st, kind.as_str()), (413, "body_too_large"));
    assert_eq!(c.status().unwrap()["chains"], 0);
    // Without a Content-Length (chunked), the limit holds as it is read.
    if braid_testkit::skip_unless_tool("curl", "chunked body") {
        return;
    }
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, vec![b' '; 2 << 20]).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&d.socket)
        .args(["-H", "Transfer-Encoding: chunked", "--data-binary"])
        .arg(format!("@{}", big.display()))
        .arg("http://braidd/v1/chains")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n413") && text.contains("body_too_large"), "{text}");
}

#[test]
fn two_hundred_concurrent_clients_are_served() {
    let dir = TempDir::new("many");
    let d = Braidd::start(dir.path(), None, &[]);
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let c = d.client();
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    c.status().map(|_| ())
                } else {
                    c.chains().map(|_| ())
                }
            })
        })
        .collect();
    let failed: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap().err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 200 failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let m = d.client().metrics().unwrap();
    let ok = |route| {
        metric_value(&m, "braid_api_requests_total", &[("route", route), ("status", "200")])
    };
    // The readiness probe adds status requests.
    assert!(ok("/v1/status").unwrap() >= 100.0, "{m}");
    assert_eq!(ok("/v1/chains"), Some(100.0), "{m}");
}

/// (method, path) of every `.route(` line in `src/api.rs`.
fn router_routes() -> BTreeSet<(String, String)> {
    let src = include_str!("../src/api.rs");
    let mut out = BTreeSet::new();
    for line in src.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
        let rest = &line[".route(\"".len()..];
        let path = &rest[..rest.find('"').unwrap()];
        for m in ["get", "post", "put", "patch", "delete"] {
            if line.contains(&format!(" {m}(")) || line.contains(&format!(".{m}(")) {
                out.insert((m.to_uppercase(), path.to_string()));
            }
        }
    }
    out
}

#[test]
fn the_openapi_document_and_the_router_have_the_same_routes() {
    let doc = braid_daemon::openapi::document();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (m, _) in item.as_object().unwrap().iter().filter(|(k, _)| *k != "parameters") {
            documented.insert((m.to_uppercase(), path.clone()));
        }
    }
    let routed = router_routes();
    assert_eq!(routed.len(), 16, "{routed:?}");
    assert_eq!(documented, routed);

    // The served document is this one, and each documented route is
    // routed (never the fallback's `no_route`, never 405).
    let dir = TempDir::new("openapi");
    let d = Braidd::start(dir.path(), None, &[]);
    let c = d.client();
    assert_eq!(c.openapi().unwrap(), doc);
    for (method, path) in &documented {
        if path == "/v1/events" {
            // A stream: the first event is the daemon's start.
            let first = c.events(Some(0)).unwrap().next().unwrap().unwrap();
            assert_eq!(first["type"], "daemon_started", "{first}");
            continue;
        }
        let concrete = path.replace("{name}", "x").replace("{nf}", "f").replace("{id}", "op-1");
        let body =
            matches!(method.as_str(), "POST" | "PATCH").then_some(("application/json", &b"{}"[..]));
        let r = c.request(method, &concrete, body).unwrap();
        let text = String::from_utf8_lossy(&r.body);
        let kind =
            serde_json::from_slice::<serde_json::Value>(&r.body).ok().map(|v| v["error"].clone());
        assert!(
            r.status != 405 && kind != Some("no_route".into()),
            "{method} {path}: {} {text}",
            r.status
        );
    }
}

#[test]
fn peers_other_than_root_and_the_daemon_user_are_refused() {
    if braid_testkit::skip_unless(
        braid_io::netns::is_root(),
        "wrong peer",
        "needs root to run a client as another uid",
    ) {
        return;
    }
    if braid_testkit::skip_unless_tool("curl", "wrong peer") {
        return;
    }
    let dir = TempDir::new("peer");
    // Neither root nor the nobody a least-privilege braidd runs as.
    const STRANGER: u32 = common::NOBODY - 1;
    let curl_as = |uid: u32, socket: &std::path::Path| {
        std::process::Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(socket)
            .arg("http://braidd/v1/status")
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap()
    };
    // Mode 0600: a stranger cannot even connect; braidd's own user can,
    // and is served.
    let d = Braidd::start(dir.path(), None, &[]);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
    let out = curl_as(STRANGER, &d.socket);
    assert_eq!(out.status.code(), Some(7), "curl: connection refused expected");
    if let Some(uid) = d.privilege.uid() {
        let out = curl_as(uid, &d.socket);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.ends_with("\n200"), "braidd's own uid {uid}: {text}");
    }
    drop(d);
    // Mode 0666: it connects, and its credentials are refused.
    let d = Braidd::start(dir.path(), None, &["--socket-mode", "666"]);
    let out = curl_as(STRANGER, &d.socket);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n403"), "{text}");
    assert!(text.contains(&format!("peer uid {STRANGER} is not allowed")), "{text}");
    let audit = std::fs::read_to_string(dir.path().join("state/audit.log")).unwrap();
    assert!(audit.contains(&format!("\"uid\":{STRANGER}")), "{audit}");
    assert!(audit.contains("\"status\":403"), "{audit}");
}

#[test]
fn start_up_problems_are_reported_clearly() {
    let dir = TempDir::new("startup");
    let run = |extra: &[&str]| {
        let out = Braidd::command(dir.path(), None, extra).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // A second braidd on a live socket is refused before touching anything.
    let mut d = Braidd::start(dir.path(), None, &[]);
    let (code, err) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("another braidd answers on this socket"), "{err}");
    // SIGTERM: exits 0, socket removed.
    assert!(d.terminate().success(), "{}", d.log());
    assert!(!d.socket.exists());

    // A configuration file with an unknown key names it and its line.
    let conf = dir.path().join("braidd.toml");
    std::fs::write(&conf, "max_body_bytes = 4096\nsocket_mod = 0o600\n").unwrap();
    let (code, err) = run(&["--config", conf.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown field `socket_mod`") && err.contains("line 2"), "{err}");

    // A corrupt store: reported, braidd does not start (nothing half-loaded).
    let store = dir.path().join("state/state.redb");
    let mut bytes = std::fs::read(&store).unwrap();
    for b in bytes.iter_mut().take(4096) {
        *b ^= 0xa5;
    }
    std::fs::write(&store, &bytes).unwrap();
    let (code, err) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("state store {}", store.display())), "{err}");
    assert!(
        !dir.path().join("braidd.sock").exists()
            || std::os::unix::net::UnixStream::connect(dir.path().join("braidd.sock")).is_err()
    );

    // A migration key too short, or that others may read, is refused
    // before anything listens.
    let key = common::write_migrate_key(dir.path(), "too-short");
    common::Privilege::default_here().hand_over(&key);
    let key = key.to_str().unwrap();
    let (code, err) = run(&["--migrate-listen", "127.0.0.1:0", "--migrate-key-file", key]);
    assert_eq!(code, Some(1));
    assert!(err.contains("migrate key file") && err.contains("at least 32 bytes"), "{err}");
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, err) = run(&["--migrate-key-file", key]);
    assert_eq!(code, Some(1));
    assert!(err.contains("mode 0o644 lets others read it"), "{err}");

    // --help documents every configuration key.
    let help = std::process::Command::new(BRAIDD).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for key in [
        "config",
        "socket",
        "socket-mode",
        "state-dir",
        "audit-log",
        "log-format",
        "log-level",
        "max-body-bytes",
        "control-timeout-ms",
        "idle",
    ] {
        assert!(help.contains(&format!("--{key}")), "--{key} missing from --help:\n{help}");
    }
    let defaults = toml_keys_of_default_config();
    for key in defaults {
        assert!(help.contains(&format!("--{}", key.replace('_', "-"))), "{key} not in --help");
    }
}

/// The keys a configuration file accepts, from the config module's own
/// default (every field is a key).
fn toml_keys_of_default_config() -> Vec<String> {
    let src = include_str!("../src/config.rs");
    let start = src.find("pub struct Config {").unwrap();
    let end = start + src[start..].find("\n}").unwrap();
    src[start..end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split(':').next())
        .filter(|k| !k.starts_with("struct"))
        .map(str::to_string)
        .collect()
}

#[test]
fn metrics_listen_serves_only_metrics_over_tcp() {
    let dir = TempDir::new("tcp");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let d = Braidd::start(dir.path(), None, &["--metrics-listen", &addr]);
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let m = get("/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("application/openmetrics-text"), "{m}");
    assert!(m.contains("# TYPE braid_nf_packets_in counter"), "{m}");
    // Nothing else: the API stays on the unix socket.
    for path in ["/v1/status", "/v1/chains"] {
        let r = get(path);
        assert!(r.starts_with("HTTP/1.1 404"), "{path}: {r}");
    }
    let m = d.client().metrics().unwrap();
    assert_eq!(
        metric_value(
            &m,
            "braid_api_requests_total",
            &[("route", "tcp:/metrics"), ("status", "200")]
        ),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn logs_are_quiet_by_default_and_json_on_request() {
    let dir = TempDir::new("logs");
    let mut d = Braidd::start(dir.path(), None, &[]);
    d.client().deploy("name: a\nnfs: []\n").unwrap_err();
    assert!(d.terminate().success());
    assert_eq!(d.log(), "", "nothing on standard error by default");

    let mut d = Braidd::start(dir.path(), None, &["--log-format", "json", "--log-level", "info"]);
    d.client().deploy("name: a\nnfs: []\n").unwrap_err();
    assert!(d.terminate().success());
    let log = d.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let has = |target: &str, needle: &str| {
        lines.iter().any(|l| l["target"] == target && l.to_string().contains(needle))
    };
    assert!(has("braidd", "braidd ready"), "{log}");
    assert!(has("braidd::audit", "a chain needs at least one NF"), "{log}");
    assert!(has("braidd", "braidd stopped"), "{log}");
}

/// Every `braid_...` name in the JSON `v`'s strings.
fn metric_names_in(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(i) = rest.find("braid_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                out.insert(name);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| metric_names_in(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| metric_names_in(x, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_and_metrics_have_the_same_names() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../deploy/grafana-braidd.json")).unwrap();
    let mut used = BTreeSet::new();
    metric_names_in(&dashboard, &mut used);
    // What braidd serves, even with no chain: every family is described
    // (`# TYPE name counter` is sampled as `name_total`).
    let dir = TempDir::new("grafana");
    let d = Braidd::start(dir.path(), None, &[]);
    let m = d.client().metrics().unwrap();
    let served: BTreeSet<String> = m
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| if kind == "counter" { format!("{name}_total") } else { name.into() })
        .collect();
    assert!(served.len() >= 25, "{m}");
    let unknown: Vec<_> = used.difference(&served).collect();
    assert!(unknown.is_empty(), "the dashboard uses metrics braidd does not serve: {unknown:?}");
    let unshown: Vec<_> = served.difference(&used).collect();
    assert!(unshown.is_empty(), "metrics without a dashboard panel: {unshown:?}");
}
