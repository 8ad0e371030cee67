//! braidd with live traffic, through its API only. The "host" is a
//! namespace between a client and a server namespace, with a veth pair to
//! each; braidd runs in it and deploys a chain between its two interfaces
//! (AF_PACKET). UDP from client to server crosses the chain; the counters
//! (API and /metrics) match what was sent; a firewall's default is changed
//! live and packets stop; braidd is killed with SIGKILL under traffic and
//! restarted: the chain is back as declared and forwards again; deleted,
//! nothing forwards.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_daemon::client::{metric_value, Client, ClientError};
use braid_io::netns;
use common::{
    drain, ms, percentile, proc_status, reaches, send_within, time_to_first_packet,
    two_checkpoints, Braidd, Privilege, TempDir, CAPS,
};
use serde_json::json;

const CLIENT: &str = "10.78.0.1";
const SERVER: &str = "10.78.0.2";
const PORT: u16 = 9178;

type Net = common::BumpNet;

/// client — mid — server ([`common::bump_net`]).
fn net() -> Net {
    common::bump_net("bdl", CLIENT, SERVER)
}

fn chain_yaml(net: &Net, name: &str) -> String {
    format!(
        "name: {name}\nbatch_size: 32\nports:\n  in: {{ kind: af_packet, iface: {}, batch_size: 32 }}\n  out: {{ kind: af_packet, iface: {}, batch_size: 32 }}\nnfs:\n  - {{ name: fw, type: firewall, placement: user, params: {{ default: allow }} }}\n  - {{ name: f, type: fwd }}\n",
        net.a1, net.b1
    )
}

/// A client socket (a new flow) and the server's socket.
fn sockets(net: &Net) -> (UdpSocket, Option<UdpSocket>) {
    let rx = net.sv.enter(|| UdpSocket::bind(format!("{SERVER}:{PORT}"))).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    sockets_from(net, Some(rx))
}

/// A client socket on a new source port, connected to the server.
fn sockets_from(net: &Net, rx: Option<UdpSocket>) -> (UdpSocket, Option<UdpSocket>) {
    let tx = net.cl.enter(|| UdpSocket::bind(format!("{CLIENT}:0"))).unwrap().unwrap();
    tx.connect(format!("{SERVER}:{PORT}")).unwrap();
    (tx, rx)
}

/// [`send_within`], waiting up to 3 s for what should arrive.
fn send_and_count(tx: &UdpSocket, rx: &UdpSocket, n: u64) -> u64 {
    send_within(tx, rx, n, Duration::from_secs(3))
}

fn stage<'a>(chain: &'a serde_json::Value, nf: &str) -> &'a serde_json::Value {
    chain["stats"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == nf)
        .unwrap_or_else(|| panic!("no stage {nf} in {chain}"))
}

fn counter(c: &Client, chain: &str, nf: &str, field: &str) -> u64 {
    stage(&c.chain(chain).unwrap(), nf)[field].as_u64().unwrap()
}

#[test]
fn a_chain_deployed_through_the_api_forwards_reports_changes_and_survives_kill_9() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd live", "needs root for namespaces") {
        return;
    }
    let net = net();
    let dir = TempDir::new("live");
    let mut d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    let (tx, rx) = sockets(&net);
    let rx = rx.unwrap();
    let mut events = c.events(None).unwrap();

    // Deploy; packets cross within a bounded time.
    let t = Instant::now();
    let shown = c.deploy(&chain_yaml(&net, "edge")).unwrap();
    let deployed = t.elapsed();
    assert_eq!(shown["state"], "running", "{shown}");
    let first = time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("no packet crossed");
    eprintln!("deploy call {deployed:?}, then first packet after {first:?}");
    drain(&rx, Duration::from_millis(100));

    // Counts: exactly what was sent, in the API and in /metrics. A loaded
    // machine can lose datagrams in the kernel's socket buffers before or
    // after the chain (not in it): up to 3 attempts to get a round in
    // which all 300 arrived, whose counts must then be exact.
    let mut v = serde_json::Value::Null;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let before = counter(&c, "edge", "fw", "packets_in");
        let got = send_and_count(&tx, &rx, 300);
        v = c.chain("edge").unwrap();
        let delta = stage(&v, "fw")["packets_in"].as_u64().unwrap() - before;
        rounds.push((got, delta));
        if got == 300 {
            assert_eq!(delta, 300, "{v}");
            break;
        }
        assert!(delta >= got, "the chain counted {delta} but {got} arrived: {v}");
    }
    assert_eq!(rounds.last().unwrap().0, 300, "rounds (arrived, counted): {rounds:?}");
    assert_eq!(stage(&v, "f")["packets_out"], stage(&v, "fw")["packets_in"], "{v}");
    let m = c.metrics().unwrap();
    let fw_in = stage(&v, "fw")["packets_in"].as_u64().unwrap() as f64;
    // AF_PACKET ports have no AF_XDP ring counters.
    assert_eq!(metric_value(&m, "braid_port_xdp_rx_ring_full_total", &[("chain", "edge")]), None);
    assert_eq!(
        metric_value(&m, "braid_nf_packets_in_total", &[("chain", "edge"), ("nf", "fw")]),
        Some(fw_in),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "braid_nf_packets_out_total", &[("chain", "edge"), ("nf", "f")]),
        Some(fw_in)
    );
    assert!(metric_value(&m, "braid_nf_batches_total", &[("nf", "fw")]).unwrap() >= 1.0);
    assert!(metric_value(&m, "braid_nf_busy_nanoseconds_total", &[("nf", "fw")]).unwrap() > 0.0);
    // Port counters are published every tick (10 ms).
    assert!(
        metric_value(&m, "braid_port_rx_packets_total", &[("chain", "edge")]).unwrap() > 0.0,
        "{m}"
    );
    assert_eq!(metric_value(&m, "braid_chain_up", &[("chain", "edge")]), Some(1.0));
    // The worker: on-CPU time from /proc, its share of wall time (poll
    // idle policy: well below 1 at 4 kpps), the idle policy.
    let cpu = metric_value(&m, "braid_worker_cpu_nanoseconds_total", &[("chain", "edge")]);
    assert!(cpu.unwrap() > 0.0, "{m}");
    let busy = metric_value(&m, "braid_worker_busy_share", &[("chain", "edge")]).unwrap();
    assert!(busy > 0.0 && busy < 0.9, "busy share {busy}");
    assert_eq!(
        metric_value(&m, "braid_worker_info", &[("chain", "edge"), ("idle", "poll")]),
        Some(1.0)
    );
    assert!(metric_value(&m, "braid_port_syscalls_total", &[("chain", "edge")]).unwrap() > 0.0);
    assert_eq!(
        metric_value(&m, "braid_operations_total", &[("kind", "deploy"), ("outcome", "succeeded")]),
        Some(1.0)
    );

    // Bad changes are refused and change nothing.
    let e = c.reconfigure("edge", "fw", &json!({ "default": "maybe" })).unwrap_err();
    let ClientError::Api { status: 400, message, .. } = e else { panic!("{e}") };
    assert!(message.contains("nfs[0].params"), "{message}");
    let e = c.reconfigure("edge", "nope", &json!({})).unwrap_err();
    assert!(
        matches!(&e, ClientError::Api { status: 404, kind, .. } if kind == "unknown_nf"),
        "{e}"
    );
    let e = c.deploy(&chain_yaml(&net, "edge")).unwrap_err();
    assert!(
        matches!(&e, ClientError::Api { status: 409, kind, .. } if kind == "duplicate_chain"),
        "{e}"
    );
    assert_eq!(send_and_count(&tx, &rx, 20), 20);

    // A live change: the firewall now drops; packets are dropped and
    // counted by reason.
    let v = c.reconfigure("edge", "fw", &json!({ "default": "drop" })).unwrap();
    assert_eq!(v["descriptor"]["nfs"][0]["params"]["default"], "drop", "{v}");
    // The firewall is stateful and its state moved to the new instance:
    // the flow it already allowed still passes; a new flow is dropped.
    assert_eq!(send_and_count(&tx, &rx, 20), 20);
    let (new_flow, _) = sockets_from(&net, None);
    let (dropped, entered) =
        (counter(&c, "edge", "fw", "dropped"), counter(&c, "edge", "fw", "packets_in"));
    assert_eq!(send_within(&new_flow, &rx, 50, Duration::from_millis(300)), 0);
    let entered = counter(&c, "edge", "fw", "packets_in") - entered;
    // Every datagram that reached the chain was dropped (all 50 unless
    // the kernel lost some before it).
    assert_eq!(counter(&c, "edge", "fw", "dropped") - dropped, entered);
    assert!(entered > 40, "{entered} of 50 reached the chain");
    let m = c.metrics().unwrap();
    let drops: f64 = m
        .lines()
        .filter(|l| l.starts_with("braid_nf_drops_total{") && l.contains("nf=\"fw\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(drops as u64, dropped + entered, "{m}");

    // Declared as changed: SIGKILL under traffic, restart, then allowing again.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (tx, stop, sent) = (tx.try_clone().unwrap(), stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(30) {
                let _ = tx.send(b"load");
                sent.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    c.reconfigure("edge", "fw", &json!({ "default": "allow" })).unwrap();
    assert!(drain(&rx, Duration::from_millis(200)) > 0, "traffic crosses before the kill");
    // The event stream saw every change, in order (refusals before an
    // operation existed, such as the unknown NF and the duplicate, are not
    // changes).
    let seen: Vec<serde_json::Value> = events.by_ref().take(7).map(Result::unwrap).collect();
    let kinds: Vec<String> = seen
        .iter()
        .map(|e| {
            let what = e["state"].as_str().or(e["nf"].as_str()).unwrap_or("");
            format!("{} {} {what}", e["type"].as_str().unwrap(), e["chain"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "chain_deployed edge ",
            "operation_finished edge succeeded",
            "operation_finished edge failed",
            "chain_reconfigured edge fw",
            "operation_finished edge succeeded",
            "chain_reconfigured edge fw",
            "operation_finished edge succeeded",
        ],
        "{seen:?}"
    );
    assert_eq!(seen[3]["params"]["default"], "drop");
    assert_eq!(seen[5]["params"]["default"], "allow");
    assert!(seen.windows(2).all(|w| w[1]["seq"].as_u64() > w[0]["seq"].as_u64()), "{seen:?}");
    assert_eq!(seen[0]["operation"], seen[1]["operation"]);
    d.kill9();
    drain(&rx, Duration::from_millis(100));
    assert_eq!(drain(&rx, Duration::from_millis(300)), 0, "nothing crosses while braidd is dead");
    let t = Instant::now();
    d.restart();
    let c = d.client();
    let v = c.chain("edge").unwrap();
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["descriptor"]["nfs"][0]["params"]["default"], "allow", "{v}");
    assert!(drain(&rx, Duration::from_millis(300)) > 0, "traffic crosses again after the restart");
    eprintln!("restart to forwarding again: {:?}", t.elapsed());
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert!(sent.load(Ordering::Relaxed) > 100);

    // Delete: gone from the API, from the store, and from the wire.
    let r = c.remove("edge").unwrap();
    assert_eq!(r["stopped"], true, "{r}");
    let e = c.chain("edge").unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 404, .. }), "{e}");
    drain(&rx, Duration::from_millis(50));
    assert_eq!(send_within(&tx, &rx, 10, Duration::from_millis(300)), 0);
    let audit = std::fs::read_to_string(dir.path().join("state/audit.log")).unwrap();
    for what in [
        "deployed chain `edge` (2 NFs)",
        "changed the parameters of NF `fw`",
        "removed chain `edge`",
    ] {
        assert!(audit.contains(what), "{what} not in the audit log:\n{audit}");
    }

    // SIGTERM with a chain running: exits 0, socket removed; the chain is
    // declared and comes back with the next braidd.
    c.deploy(&chain_yaml(&net, "again")).unwrap();
    assert!(d.terminate().success(), "{}", d.log());
    assert!(!d.socket.exists());
    d.restart();
    let names: Vec<_> = d.client().chains().unwrap().iter().map(|c| c["name"].clone()).collect();
    assert_eq!(names, [json!("again")]);
    assert_eq!(send_and_count(&tx, &rx, 10), 10);
    assert!(d.terminate().success());
}

/// An AF_XDP chain through the API: its ports' kernel ring counters
/// (`XDP_STATISTICS`) are in `/metrics` and in the chain's stats, read
/// from the telemetry the worker publishes every tick (a scrape sends the
/// worker no control message), with the worker's busy share and idle
/// policy.
#[test]
fn an_af_xdp_chain_shows_its_ring_counters_busy_share_and_idle_policy() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd af_xdp", "needs root for namespaces")
        || braid_testkit::skip_unless(
            braid_io::xdp::xdp_built(),
            "braidd af_xdp",
            "XDP programs were not built (install clang and libbpf-dev)",
        )
    {
        return;
    }
    let net = net();
    let dir = TempDir::new("xdp");
    let mut d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    let yaml = format!(
        "name: xdp\nports:\n  in: {{ kind: af_xdp, iface: {} }}\n  out: {{ kind: af_xdp, iface: {} }}\nnfs:\n  - {{ name: fw, type: firewall, placement: user, params: {{ default: allow }} }}\n  - {{ name: f, type: fwd }}\n",
        net.a1, net.b1
    );
    c.deploy(&yaml).unwrap();
    let (tx, rx) = sockets(&net);
    let rx = rx.unwrap();
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("no packet crossed");
    let got = send_and_count(&tx, &rx, 200);
    assert!(got > 0, "nothing crossed the AF_XDP chain");
    // Port counters are published every tick (10 ms).
    std::thread::sleep(Duration::from_millis(100));

    let m = c.metrics().unwrap();
    let v = c.chain("xdp").unwrap();
    let ports = v["stats"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 2, "{v}");
    for (i, iface) in [&net.a1, &net.b1].into_iter().enumerate() {
        let port = format!("af_xdp:{iface}/q0");
        assert_eq!(ports[i]["name"], port.as_str(), "{v}");
        let labels = [("chain", "xdp"), ("port", port.as_str())];
        let value = |name: &str| {
            metric_value(&m, &format!("braid_port_xdp_{name}_total"), &labels)
                .unwrap_or_else(|| panic!("no braid_port_xdp_{name}_total for {port}:\n{m}"))
        };
        for name in [
            "rx_dropped",
            "rx_invalid_descs",
            "tx_invalid_descs",
            "rx_ring_full",
            "rx_fill_ring_empty_descs",
            "tx_ring_empty_descs",
        ] {
            let api = ports[i]["xdp"][name].as_u64().unwrap_or_else(|| panic!("{name}: {v}"));
            value(name);
            if name.contains("invalid") {
                // braid's rings never hand the kernel a bad descriptor.
                assert_eq!((api, value(name)), (0, 0.0), "{name} of {port}");
            }
        }
        // The port's own rx_dropped includes the socket's drops.
        let dropped = metric_value(&m, "braid_port_rx_dropped_total", &labels).unwrap();
        assert!(dropped >= value("rx_dropped") + value("rx_ring_full"), "{port}:\n{m}");
    }
    let rx_packets = metric_value(
        &m,
        "braid_port_rx_packets_total",
        &[("chain", "xdp"), ("port", &format!("af_xdp:{}/q0", net.a1))],
    )
    .unwrap();
    assert!(rx_packets >= got as f64, "{rx_packets} received, {got} arrived");

    // The worker's busy share and idle policy; scrapes do not talk to it.
    let share = metric_value(&m, "braid_worker_busy_share", &[("chain", "xdp")]).unwrap();
    assert!((0.0..=1.0).contains(&share), "busy share {share}");
    assert_eq!(
        metric_value(&m, "braid_worker_info", &[("chain", "xdp"), ("idle", "poll")]),
        Some(1.0)
    );
    let control = |m: &str| {
        metric_value(m, "braid_worker_control_messages_total", &[("chain", "xdp")]).unwrap()
    };
    let before = control(&m);
    for _ in 0..5 {
        c.metrics().unwrap();
    }
    assert_eq!(control(&c.metrics().unwrap()), before, "a scrape sent the worker a message");

    c.remove("xdp").unwrap();
    assert!(d.terminate().success(), "{}", d.log());
}

/// braidd as an unprivileged user with only CAP_NET_RAW, CAP_NET_ADMIN,
/// CAP_BPF, CAP_PERFMON and CAP_IPC_LOCK deploys an AF_PACKET chain and an
/// AF_XDP chain through its API, traffic crosses both, and it stops
/// cleanly; without any one of them (CAP_IPC_LOCK only where the locked
/// memory limit is too small for the UMEM, as here) the AF_XDP deploy is
/// refused with 422 and the reason, and nothing is declared.
#[test]
fn braidd_runs_as_an_unprivileged_user_with_only_its_capabilities() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd caps", "needs root for namespaces")
        || braid_testkit::skip_unless_tool("setpriv", "braidd caps")
        || braid_testkit::skip_unless(
            braid_io::xdp::xdp_built(),
            "braidd caps",
            "XDP programs were not built (install clang and libbpf-dev)",
        )
    {
        return;
    }
    let net = net();
    let chain_mapped = |name: &str, kind: &str, mapping: &str| {
        format!(
            "name: {name}\nmapping: {mapping}\nports:\n  in: {{ kind: {kind}, iface: {} }}\n  out: {{ kind: {kind}, iface: {} }}\nnfs:\n  - {{ name: fw, type: firewall, placement: user, params: {{ default: allow }} }}\n  - {{ name: f, type: fwd }}\n",
            net.a1, net.b1
        )
    };
    let chain = |name: &str, kind: &str| chain_mapped(name, kind, "thread");
    let all: Vec<&str> = CAPS.iter().map(|(c, _)| *c).collect();
    let dir = TempDir::new("caps");
    // Without the suite's migration key, to see a migration refused.
    let mut d = Braidd::start_without_migrate_key(
        &Privilege::least(),
        dir.path(),
        Some(net.mid.name()),
        &[],
    );
    assert_eq!(proc_status(d.pid(), "Uid:").split_whitespace().next(), Some("65534"));
    let mask: u64 = CAPS.iter().map(|(_, bit)| 1u64 << bit).sum();
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(proc_status(d.pid(), field), format!("{mask:016x}"), "{field}");
    }
    let c = d.client();
    let (tx, rx) = sockets(&net);
    let rx = rx.unwrap();
    // The NF processes of a `mapping: processes` chain are braidd too,
    // with the same user and capabilities.
    for (name, kind, mapping) in
        [("p", "af_packet", "thread"), ("x", "af_xdp", "thread"), ("q", "af_packet", "processes")]
    {
        let v = c
            .deploy(&chain_mapped(name, kind, mapping))
            .unwrap_or_else(|e| panic!("{kind}, {mapping}: {e}"));
        assert_eq!(v["state"], "running", "{v}");
        time_to_first_packet(&tx, &rx, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("nothing crossed the {kind} chain"));
        assert!(send_and_count(&tx, &rx, 100) > 0, "{kind}");
        if kind == "af_packet" {
            // This braidd has no migrate_key_file: a migration cannot be
            // offered, and nothing starts.
            let route = serde_json::json!({ "netns": "up", "to": "10.0.2.0/24",
                                             "via": "10.0.12.2", "dev": "to-b" });
            let body = serde_json::json!({ "to": "127.0.0.1:9480",
                "switch": { "redirect": [route], "restore": [route],
                            "markers": [{ "netns": "up", "dev": "to-a", "port": "in" }] } })
            .to_string();
            let path = format!("/v1/chains/{name}/nfs/f/migrate");
            match c.json("POST", &path, Some(("application/json", body.as_bytes()))) {
                Err(braid_daemon::client::ClientError::Api { status, kind, message, .. }) => {
                    assert_eq!((status, kind.as_str()), (409, "no_migrate_key"), "{message}");
                    assert!(message.contains("migrate_key_file"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        c.remove(name).unwrap();
    }
    // A kernel chain (one XDP program on both interfaces) with the same
    // capabilities. A veth delivers frames redirected into it by XDP only
    // when its peer has GRO on (or an XDP program): the client's and the
    // server's ends get GRO.
    for (ns, dev) in [(&net.cl, &net.a0), (&net.sv, &net.b0)] {
        let st = ns.command("ethtool").args(["-K", dev, "gro", "on"]).status().unwrap();
        assert!(st.success(), "ethtool -K {dev} gro on");
    }
    let kernel = format!(
        "name: k\nports:\n  in: {{ kind: af_packet, iface: {} }}\n  out: {{ kind: af_packet, iface: {} }}\nnfs:\n  - {{ name: fw, type: firewall, params: {{ conntrack: false, default: allow }} }}\n  - {{ name: f, type: fwd }}\n",
        net.a1, net.b1
    );
    let v = c.deploy(&kernel).unwrap_or_else(|e| panic!("kernel chain: {e}\n{}", d.log()));
    assert_eq!((v["placement"].as_str(), v["state"].as_str()), (Some("kernel"), Some("running")));
    time_to_first_packet(&tx, &rx, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("nothing crossed the kernel chain"));
    assert!(send_and_count(&tx, &rx, 100) > 0, "kernel chain");
    c.remove("k").unwrap();
    assert!(d.terminate().success(), "{}", d.log());
    assert!(!d.socket.exists(), "the socket is removed at the end");

    // Each one is needed. CAP_IPC_LOCK only matters when RLIMIT_MEMLOCK
    // cannot hold the UMEM (16 MiB a port by default).
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let memlock: Option<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok());
    for (cap, _) in CAPS {
        if cap == "ipc_lock" && memlock.is_none_or(|m| m >= 64 << 20) {
            eprintln!("locked memory limit {memlock:?}: CAP_IPC_LOCK not checked");
            continue;
        }
        let fewer: Vec<&str> = all.iter().copied().filter(|c| *c != cap).collect();
        let dir = TempDir::new(&format!("caps-{cap}"));
        let mut d = Braidd::start_as(
            &Privilege::only(&fewer),
            common::BRAIDD,
            dir.path(),
            Some(net.mid.name()),
            &[],
        );
        let e = d.client().deploy(&chain("x", "af_xdp")).unwrap_err();
        let ClientError::Api { status: 422, kind, message, .. } = &e else {
            panic!("without {cap}: {e}")
        };
        assert_eq!(kind, "start_failed", "without {cap}: {message}");
        assert!(message.contains("af_xdp"), "without {cap}: {message}");
        assert!(d.client().chains().unwrap().is_empty(), "without {cap}");
        assert!(d.terminate().success(), "{}", d.log());
    }
}

/// The numbers of docs/benchmarks.md ("braidd"): API deploy-to-first-packet
/// time of a 4-NF user-space chain, and `/metrics` scrape time with 25
/// chains x 4 NFs = 100 NFs beside `/v1/status`. A measurement, run by hand:
/// `cargo test --release -p braid-daemon --test live -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run by hand (docs/benchmarks.md)"]
fn measure_deploy_to_first_packet_and_scrape_time() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd measure", "needs root for namespaces") {
        return;
    }
    let net = net();
    let dir = TempDir::new("measure");
    let d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    let (tx, rx) = sockets(&net);
    let rx = rx.unwrap();
    let four = |name: &str, a: &str, b: &str| {
        format!(
            "name: {name}\nports:\n  in: {{ kind: af_packet, iface: {a} }}\n  out: {{ kind: af_packet, iface: {b} }}\nnfs:\n  - {{ name: fw, type: firewall, placement: user, params: {{ default: allow }} }}\n  - {{ name: x1, type: xor, params: {{ key_text: braid }} }}\n  - {{ name: x2, type: xor, params: {{ key_text: braid }} }}\n  - {{ name: f, type: fwd }}\n"
        )
    };
    // Deploy-to-first-packet: a sender every 100 µs from before the call.
    let mut deploy = Vec::new();
    let mut first = Vec::new();
    for round in 0..10 {
        let name = format!("m{round}");
        let (took, arrived) =
            common::deploy_to_first_packet(&c, &tx, &rx, &four(&name, &net.a1, &net.b1));
        c.remove(&name).unwrap();
        deploy.push(took);
        first.push(arrived.expect("a packet crossed"));
    }
    println!(
        "deploy call (4 NFs): median {:.2} ms, max {:.2} ms; deploy to first packet: median {:.2} ms, max {:.2} ms (10 rounds)",
        ms(percentile(deploy.clone(), 0.5)),
        ms(percentile(deploy, 1.0)),
        ms(percentile(first.clone(), 0.5)),
        ms(percentile(first, 1.0)),
    );

    // 25 chains x 4 NFs, each between one end of two veth pairs whose
    // other ends stay down (no traffic, no loop), all inside `mid`.
    for i in 0..25 {
        let (a, b) = (netns::unique_ifname("bdm"), netns::unique_ifname("bdm"));
        for dev in [&a, &b] {
            let peer = netns::unique_ifname("bdp");
            net.mid.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]).unwrap();
            netns::set_up(Some(net.mid.name()), dev).unwrap();
        }
        c.deploy(&four(&format!("s{i:02}"), &a, &b)).unwrap();
    }
    let m = c.metrics().unwrap();
    let nfs = m.lines().filter(|l| l.starts_with("braid_nf_packets_in_total{")).count();
    assert_eq!(nfs, 100);
    let time = |f: &dyn Fn()| -> Vec<Duration> {
        (0..200)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect()
    };
    let scrape = time(&|| {
        c.metrics().unwrap();
    });
    let status = time(&|| {
        c.status().unwrap();
    });
    let chains = time(&|| {
        c.chains().unwrap();
    });
    println!(
        "100 NFs: GET /metrics ({} bytes) median {:.3} ms p99 {:.3} ms; GET /v1/status median {:.3} ms; GET /v1/chains median {:.3} ms ({:.1}x /v1/status for /metrics)",
        m.len(),
        ms(percentile(scrape.clone(), 0.5)),
        ms(percentile(scrape.clone(), 0.99)),
        ms(percentile(status.clone(), 0.5)),
        ms(percentile(chains, 0.5)),
        percentile(scrape, 0.5).as_secs_f64() / percentile(status, 0.5).as_secs_f64(),
    );
}

/// The numbers of docs/benchmarks.md ("/metrics with 100 NFs, side by
/// side"): `/metrics` scrape time with 25 chains x 4 NFs = 100 NFs,
/// client-side (connect, request, whole answer) over the unix socket, and
/// `GET /v1/status` beside it. With `BRAIDD_BASELINE=PATH` (another build
/// of braidd) both run at once, each with its own 25 chains, and the
/// scrapes alternate between them in rounds (A B B A ...), so that both
/// see the same machine. `BRAID_SCRAPE_ROUNDS` (default 10) rounds of 200
/// scrapes each. A measurement, run by hand (scripts/scrape-bench.sh):
/// `cargo test --release -p braid-daemon --test live -- --ignored --nocapture measure_scrape`.
#[test]
#[ignore = "a measurement; run by hand (docs/benchmarks.md)"]
fn measure_scrape_time_side_by_side() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd scrape", "needs root for namespaces") {
        return;
    }
    let net = net();
    let mut bins = vec![("this", common::BRAIDD.to_string())];
    if let Ok(b) = std::env::var("BRAIDD_BASELINE") {
        bins.insert(0, ("baseline", b));
    }
    let four = |name: &str, a: &str, b: &str| {
        format!(
            "name: {name}\nports:\n  in: {{ kind: af_packet, iface: {a} }}\n  out: {{ kind: af_packet, iface: {b} }}\nnfs:\n  - {{ name: fw, type: firewall, placement: user, params: {{ default: allow }} }}\n  - {{ name: x1, type: xor, params: {{ key_text: braid }} }}\n  - {{ name: x2, type: xor, params: {{ key_text: braid }} }}\n  - {{ name: f, type: fwd }}\n"
        )
    };
    let mut daemons = Vec::new();
    for (i, (tag, bin)) in bins.iter().enumerate() {
        let dir = TempDir::new(&format!("scrape{i}"));
        let d = Braidd::start_as(
            &Privilege::default_here(),
            bin,
            dir.path(),
            Some(net.mid.name()),
            &[],
        );
        let c = d.client();
        // 25 chains x 4 NFs, each between one end of two veth pairs whose
        // other ends stay down (no traffic, no loop), all inside `mid`.
        for k in 0..25 {
            let (a, b) = (netns::unique_ifname("bdm"), netns::unique_ifname("bdm"));
            for dev in [&a, &b] {
                let peer = netns::unique_ifname("bdp");
                net.mid.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]).unwrap();
                netns::set_up(Some(net.mid.name()), dev).unwrap();
            }
            c.deploy(&four(&format!("s{k:02}"), &a, &b)).unwrap();
        }
        let m = c.metrics().unwrap();
        let nfs = m.lines().filter(|l| l.starts_with("braid_nf_packets_in_total{")).count();
        assert_eq!(nfs, 100, "{tag}");
        daemons.push((*tag, d, dir, m.len(), Vec::new(), Vec::new(), Vec::new()));
    }
    let rounds: usize =
        std::env::var("BRAID_SCRAPE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    for r in 0..rounds {
        let order: Vec<usize> = if r % 2 == 0 {
            (0..daemons.len()).collect()
        } else {
            (0..daemons.len()).rev().collect()
        };
        for i in order {
            let (_, d, _, _, scrapes, status, p99s) = &mut daemons[i];
            let c = d.client();
            let mut round = Vec::new();
            for _ in 0..200 {
                let t = Instant::now();
                c.metrics().unwrap();
                round.push(t.elapsed());
                let t = Instant::now();
                c.status().unwrap();
                status.push(t.elapsed());
            }
            p99s.push(percentile(round.clone(), 0.99));
            scrapes.extend(round);
        }
    }
    for (tag, _, _, len, scrapes, status, p99s) in &daemons {
        let mut p99s: Vec<f64> = p99s.iter().map(|d| ms(*d)).collect();
        p99s.sort_by(f64::total_cmp);
        println!(
            "{tag}: GET /metrics, 100 NFs ({len} bytes), {} scrapes: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms; per-round p99 {:.3}..{:.3} ms (median {:.3}); GET /v1/status p50 {:.3} ms, p99 {:.3} ms",
            scrapes.len(),
            ms(percentile(scrapes.clone(), 0.5)),
            ms(percentile(scrapes.clone(), 0.9)),
            ms(percentile(scrapes.clone(), 0.99)),
            ms(percentile(scrapes.clone(), 1.0)),
            p99s[0],
            p99s[p99s.len() - 1],
            p99s[p99s.len() / 2],
            ms(percentile(status.clone(), 0.5)),
            ms(percentile(status.clone(), 0.99)),
        );
    }
    if daemons.len() == 2 {
        let p = |i: usize, q: f64| ms(percentile(daemons[i].4.clone(), q));
        println!(
            "this / baseline: p50 {:.2}x, p99 {:.2}x",
            p(1, 0.5) / p(0, 0.5),
            p(1, 0.99) / p(0, 0.99)
        );
    }
}

/// A child process killed on drop.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on the loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_real_prometheus_scrapes_braidd_and_answers_with_a_braid_metric() {
    if braid_testkit::skip_unless(
        netns::is_root(),
        "braidd prometheus",
        "needs root for namespaces",
    ) || braid_testkit::skip_unless_tool("prometheus", "braidd prometheus")
        || braid_testkit::skip_unless_tool("curl", "braidd prometheus")
    {
        return;
    }
    let net = net();
    let dir = TempDir::new("prom");
    // braidd runs in `mid`; its metrics listener is on mid's loopback, so
    // Prometheus runs there too.
    let mport = free_port();
    let d = Braidd::start(
        dir.path(),
        Some(net.mid.name()),
        &["--metrics-listen", &format!("127.0.0.1:{mport}")],
    );
    let c = d.client();
    c.deploy(&chain_yaml(&net, "prom")).unwrap();
    let (tx, rx) = sockets(&net);
    let rx = rx.unwrap();
    assert_eq!(time_to_first_packet(&tx, &rx, Duration::from_secs(5)).map(|_| ()), Some(()));
    assert_eq!(send_and_count(&tx, &rx, 100), 100);
    drain(&rx, Duration::from_millis(50));
    let want = counter(&c, "prom", "fw", "packets_in");

    let conf = dir.path().join("prometheus.yml");
    let deployed = include_str!("../../../deploy/prometheus.yml")
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("127.0.0.1:9478", &format!("127.0.0.1:{mport}"));
    assert!(deployed.contains(&format!("127.0.0.1:{mport}")));
    std::fs::write(&conf, deployed).unwrap();
    let pport = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = Reaper(
        net.mid
            .command("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Ask Prometheus's query API until it has scraped (30 s at most).
    let query = "braid_nf_packets_in_total{chain=\"prom\",nf=\"fw\"}";
    let t = Instant::now();
    let mut last = String::new();
    let mut value = None;
    while t.elapsed() < Duration::from_secs(30) && value.is_none() {
        std::thread::sleep(Duration::from_millis(500));
        let out = net
            .mid
            .command("curl")
            .args([
                "-s",
                "-G",
                &format!("http://127.0.0.1:{pport}/api/v1/query"),
                "--data-urlencode",
            ])
            .arg(format!("query={query}"))
            .output()
            .unwrap();
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&last) else { continue };
        value = v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse::<f64>().ok());
    }
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    let value = value.unwrap_or_else(|| panic!("no answer from Prometheus: {last}\n{log}"));
    assert_eq!(value as u64, want, "{last}");
}

#[test]
fn a_checkpointed_firewall_connection_survives_kill_9() {
    if braid_testkit::skip_unless(
        netns::is_root(),
        "braidd checkpoint",
        "needs root for namespaces",
    ) {
        return;
    }
    let net = net();
    let dir = TempDir::new("ckpt");
    let mut d =
        Braidd::start(dir.path(), Some(net.mid.name()), &["--checkpoint-interval-ms", "100"]);
    let c = d.client();
    // Only the client may start UDP flows; the server's answers pass only
    // as part of a tracked connection.
    c.deploy(&format!(
        "name: ck\nports:\n  in: {{ kind: af_packet, iface: {} }}\n  out: {{ kind: af_packet, iface: {} }}\nnfs:\n  - name: fw\n    type: firewall\n    params: {{ default: drop, rules: [{{ action: allow, src: {CLIENT}/32, proto: udp }}] }}\n  - {{ name: f, type: fwd }}\n",
        net.a1, net.b1
    ))
    .unwrap();
    let (tx, rx) = sockets(&net);
    let rx = rx.unwrap();
    assert!(time_to_first_packet(&tx, &rx, Duration::from_secs(5)).is_some());
    assert!(reaches(&rx, &tx), "the server's answer on the tracked connection passes");
    let stranger = net.sv.enter(|| UdpSocket::bind(format!("{SERVER}:0"))).unwrap().unwrap();
    assert!(!reaches(&stranger, &tx), "a flow the server starts is dropped");

    // Two checkpoint rounds after the connection exists, then SIGKILL.
    two_checkpoints(&c, Duration::from_secs(5));
    d.kill9();
    d.restart();
    let v = d.client().chain("ck").unwrap();
    assert_eq!(v["restored_state"]["nfs"], json!(["fw"]), "{v}");
    assert!(reaches(&rx, &tx), "the restored connection lets the answer pass");
    assert!(!reaches(&stranger, &tx), "the rules still drop the server's own flows");
    assert!(d.terminate().success());
}

#[test]
fn a_planned_stop_drains_before_its_checkpoint_so_no_connection_is_lost() {
    if braid_testkit::skip_unless(
        netns::is_root(),
        "braidd drain checkpoint",
        "needs root for namespaces",
    ) {
        return;
    }
    planned_stop_under_traffic("drain", "");
}

/// The same with a worker per NF: the drains also empty the channel
/// between the workers, in a few rounds although arrivals keep coming
/// (each round ends when no NF saw a packet in it).
#[test]
fn a_planned_stop_of_a_threads_chain_drains_its_channels_in_few_rounds() {
    if braid_testkit::skip_unless(
        netns::is_root(),
        "braidd drain checkpoint",
        "needs root for namespaces",
    ) {
        return;
    }
    let log = planned_stop_under_traffic("drain-thr", "mapping: threads\n");
    let line = log
        .lines()
        .find(|l| l.contains("drained before the stop"))
        .unwrap_or_else(|| panic!("no drain line in braidd's log:\n{log}"));
    let rounds: u32 = line
        .split("rounds=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rounds in {line}"));
    assert!((1..braid_runtime::live::QUIESCE_ROUNDS).contains(&rounds), "{rounds} rounds: {line}");
}

/// The same with one process per NF: the edge worker and each NF process
/// drain (through its control socket) before the checkpoint, which is
/// exported from the NF processes; every connection is back after the
/// restart.
#[test]
fn a_planned_stop_of_a_processes_chain_drains_its_nf_processes_before_the_checkpoint() {
    if braid_testkit::skip_unless(
        netns::is_root(),
        "braidd drain checkpoint",
        "needs root for namespaces",
    ) {
        return;
    }
    let log = planned_stop_under_traffic("drain-procs", "mapping: processes\n");
    assert!(log.contains("drained before the stop"), "no drain line in braidd's log:\n{log}");
}

/// New flows keep arriving while braidd is stopped with SIGTERM; every
/// flow that crossed the firewall must be in the state the next braidd
/// restores. braidd's log (at `info`) of the first run.
fn planned_stop_under_traffic(dir: &str, mapping: &str) -> String {
    let net = net();
    let dir = TempDir::new(dir);
    // Checkpoints only at shutdown: whatever the restarted chain knows came
    // from the planned stop's checkpoint.
    let mut d = Braidd::start(
        dir.path(),
        Some(net.mid.name()),
        &["--checkpoint-interval-ms", "0", "--log-level", "info"],
    );
    let c = d.client();
    c.deploy(&format!(
        "name: dr\n{mapping}ports:\n  in: {{ kind: af_packet, iface: {} }}\n  out: {{ kind: af_packet, iface: {} }}\nnfs:\n  - name: fw\n    type: firewall\n    params: {{ default: drop, rules: [{{ action: allow, src: {CLIENT}/32, proto: udp }}] }}\n  - {{ name: f, type: fwd }}\n",
        net.a1, net.b1
    ))
    .unwrap();
    let (first, rx) = sockets(&net);
    let rx = rx.unwrap();
    assert!(time_to_first_packet(&first, &rx, Duration::from_secs(5)).is_some());
    drain(&rx, Duration::from_millis(50));

    // New flows (one datagram each, a new source port each) keep coming
    // while braidd is stopped with SIGTERM: every flow whose datagram
    // crossed the firewall must be in the state the next braidd restores.
    let flows: Vec<UdpSocket> = (0..400).map(|_| sockets_from(&net, None).0).collect();
    let arrived = std::thread::scope(|s| {
        let counter = s.spawn(|| {
            let mut from = std::collections::BTreeSet::new();
            let mut buf = [0u8; 64];
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(3) {
                if let Ok((_, a)) = rx.recv_from(&mut buf) {
                    from.insert(a.port());
                }
            }
            from
        });
        let sender = s.spawn(|| {
            for f in &flows {
                let _ = f.send(b"new flow");
                std::thread::sleep(Duration::from_micros(1500));
            }
        });
        std::thread::sleep(Duration::from_millis(150));
        assert!(d.terminate().success(), "{}", d.log());
        sender.join().unwrap();
        counter.join().unwrap()
    });
    let first_log = d.log();
    assert!(arrived.len() > 20, "only {} flows crossed before the stop", arrived.len());
    assert!(arrived.len() < flows.len(), "every flow crossed: the stop came too late");
    d.restart();
    let v = d.client().chain("dr").unwrap();
    assert_eq!(v["restored_state"]["nfs"], json!(["fw"]), "{v}");
    let mut lost = Vec::new();
    for f in flows.iter().filter(|f| arrived.contains(&f.local_addr().unwrap().port())) {
        if !reaches(&rx, f) {
            lost.push(f.local_addr().unwrap().port());
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} flows that crossed before the stop were not restored: {lost:?}",
        lost.len(),
        arrived.len()
    );
    assert!(d.terminate().success());
    first_log
}

#[test]
fn the_event_stream_reports_a_worker_that_stopped_by_itself() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd events", "needs root for namespaces") {
        return;
    }
    let net = net();
    let dir = TempDir::new("stopped");
    let mut d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    c.deploy(&chain_yaml(&net, "gone")).unwrap();
    let since = c.status().unwrap()["last_event"].as_u64().unwrap();
    let mut events = c.events(Some(since)).unwrap();
    // The chain's input interface disappears under it.
    let st = net.mid.command("ip").args(["link", "del", &net.a1]).status().unwrap();
    assert!(st.success());
    let state = events.next().unwrap().unwrap();
    assert_eq!(
        (
            state["type"].as_str(),
            state["chain"].as_str(),
            state["from"].as_str(),
            state["to"].as_str()
        ),
        (Some("chain_state"), Some("gone"), Some("running"), Some("exited")),
        "{state}"
    );
    let stopped = events.next().unwrap().unwrap();
    assert_eq!(
        (stopped["type"].as_str(), stopped["chain"].as_str()),
        (Some("worker_stopped"), Some("gone"))
    );
    assert!(stopped["error"].as_str().is_some_and(|e| !e.is_empty()), "{stopped}");
    assert_eq!(c.chain("gone").unwrap()["state"], "exited");
    assert!(d.terminate().success());
}

/// One round of [`measure_dataplane_rate_under_api_load`]: datagrams per
/// second that crossed the chain while a sender offered as many as it
/// could for `secs`, with or without API load; and the API requests per
/// second achieved.
/// The chain `rate` worker's on-CPU time, its input port's received
/// packets and the first NF's batches, from `/metrics`.
fn worker_cpu_and_packets(c: &Client, net: &Net) -> (f64, f64, f64) {
    let m = c.metrics().unwrap();
    let cpu = metric_value(&m, "braid_worker_cpu_nanoseconds_total", &[("chain", "rate")]).unwrap();
    let port = format!("af_packet:{}", net.a1);
    let rx = metric_value(&m, "braid_port_rx_packets_total", &[("chain", "rate"), ("port", &port)])
        .unwrap();
    let batches =
        metric_value(&m, "braid_nf_batches_total", &[("chain", "rate"), ("nf", "fw")]).unwrap();
    (cpu, rx, batches)
}

/// One round of [`measure_dataplane_rate_under_api_load`]: datagrams per
/// second at the receiver, API requests per second served, the chain
/// worker's on-CPU nanoseconds per packet it received, and its mean batch.
/// `pps`: the sender's fixed rate (paced in steps of 1 ms), or `None`
/// for as fast as it can.
fn rate_round(
    net: &Net,
    c: &Client,
    rx: &UdpSocket,
    loaded: bool,
    secs: f64,
    pps: Option<f64>,
) -> (f64, f64, f64, f64) {
    let stop = AtomicBool::new(false);
    let requests = AtomicU64::new(0);
    let (stop, requests) = (&stop, &requests);
    let window = Duration::from_secs_f64(secs);
    drain(rx, Duration::from_millis(50));
    std::thread::scope(|s| {
        if loaded {
            // 1,000 requests per second, paced: four clients, each one
            // request every 4 ms (status, chain list, one chain), each
            // request on its own connection.
            for k in 0..4u64 {
                s.spawn(move || {
                    let t = Instant::now();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let due = Duration::from_micros(4000 * i + 1000 * k);
                        if let Some(wait) = due.checked_sub(t.elapsed()) {
                            std::thread::sleep(wait);
                        }
                        let _ = match (i + k) % 3 {
                            0 => c.status().map(|_| ()),
                            1 => c.chains().map(|_| ()),
                            _ => c.chain("rate").map(|_| ()),
                        };
                        requests.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                });
            }
            // A Prometheus-style scrape every second.
            s.spawn(|| {
                let t = Instant::now();
                let mut k = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if t.elapsed() >= Duration::from_secs(k.into()) {
                        let _ = c.metrics();
                        k += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        let (tx, _) = sockets_from(net, None);
        let sender = s.spawn(move || {
            let payload = [0u8; 64];
            let t = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(pps) = pps {
                    // What is due by now, sent at once; then sleep 1 ms.
                    let due = (t.elapsed().as_secs_f64() * pps) as u64;
                    if sent >= due {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                }
                let _ = tx.send(&payload);
                sent += 1;
            }
            drop(tx);
        });
        // Count what arrives during the window, after 200 ms of warm-up.
        std::thread::sleep(Duration::from_millis(200));
        let r0 = requests.load(Ordering::Relaxed);
        let (cpu0, pk0, b0) = worker_cpu_and_packets(c, net);
        let mut buf = [0u8; 2048];
        let mut got = 0u64;
        let t = Instant::now();
        while t.elapsed() < window {
            if rx.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        let took = t.elapsed().as_secs_f64();
        let reqs = (requests.load(Ordering::Relaxed) - r0) as f64 / took;
        let (cpu1, pk1, b1) = worker_cpu_and_packets(c, net);
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        let packets = (pk1 - pk0).max(1.0);
        (got as f64 / took, reqs, (cpu1 - cpu0) / packets, packets / (b1 - b0).max(1.0))
    })
}

/// docs/benchmarks.md ("braidd under API load"): the rate of a 2-NF chain
/// (firewall, fwd on AF_PACKET) with braidd serving 1,000 API requests per
/// second and a `/metrics` scrape every second (L), against the same chain
/// with an idle API (I), and against itself (a second idle arm, I2: the
/// noise floor). Each round runs the three arms in a rotating order (I L
/// I2, L I2 I, I2 I L, ...); per round the ratios L/I and I2/I; also the
/// chain worker's on-CPU time per packet (what the dataplane itself spends,
/// less sensitive to how the two cores are shared than the rate).
/// `BRAID_RATE_ROUNDS` rounds (default 9) of `BRAID_RATE_SECONDS` (default
/// 2) each. `BRAID_RATE_PPS=N` paces the sender at N datagrams/s (below
/// saturation both arms should deliver everything, with the same batch
/// sizes, so the worker's ns per packet compares like with like).
/// A measurement, run by hand:
/// `cargo test --release -p braid-daemon --test live -- --ignored --nocapture measure_dataplane`.
#[test]
#[ignore = "a measurement; run by hand (docs/benchmarks.md)"]
fn measure_dataplane_rate_under_api_load() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd rate", "needs root for namespaces") {
        return;
    }
    let net = net();
    let dir = TempDir::new("rate");
    let d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    c.deploy(&chain_yaml(&net, "rate")).unwrap();
    let (tx, rx) = sockets(&net);
    let rx = rx.unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    assert!(time_to_first_packet(&tx, &rx, Duration::from_secs(5)).is_some());
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let rounds = env("BRAID_RATE_ROUNDS").unwrap_or(9.0) as usize;
    let secs = env("BRAID_RATE_SECONDS").unwrap_or(2.0);
    let pps = env("BRAID_RATE_PPS");
    if let Some(p) = pps {
        println!("sender paced at {p:.0} datagrams/s");
    }
    // Per arm (I, L, I2): rates, worker ns per packet; and L's requests/s.
    let mut rate = [Vec::new(), Vec::new(), Vec::new()];
    let mut nspp = [Vec::new(), Vec::new(), Vec::new()];
    let mut batch = [Vec::new(), Vec::new(), Vec::new()];
    let mut reqs = Vec::new();
    let names = ["idle  ", "loaded", "idle2 "];
    for i in 0..rounds {
        for k in 0..3 {
            let arm = (i + k) % 3;
            let (r, q, ns, b) = rate_round(&net, &c, &rx, arm == 1, secs, pps);
            rate[arm].push(r);
            nspp[arm].push(ns);
            batch[arm].push(b);
            if arm == 1 {
                reqs.push(q);
            }
            println!(
                "round {i} {}: {r:.0} datagrams/s, worker {ns:.0} ns/packet, mean batch {b:.1}{}",
                names[arm],
                if arm == 1 { format!(", {q:.0} API requests/s") } else { String::new() }
            );
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let spread = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 4], v[v.len() * 3 / 4], v[v.len() - 1])
    };
    let ratios =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    for (what, v) in [("rate", &rate), ("worker ns/packet", &nspp), ("mean batch", &batch)] {
        let load = ratios(&v[1], &v[0]);
        let noise = ratios(&v[2], &v[0]);
        let (lmin, lq1, lq3, lmax) = spread(&load);
        let (nmin, nq1, nq3, nmax) = spread(&noise);
        println!(
            "{what}: medians idle {:.0}, loaded {:.0}, idle2 {:.0}; loaded/idle per round median {:.3}x (min {lmin:.3}, IQR {lq1:.3}..{lq3:.3}, max {lmax:.3}); idle2/idle per round median {:.3}x (min {nmin:.3}, IQR {nq1:.3}..{nq3:.3}, max {nmax:.3})",
            median(&v[0]),
            median(&v[1]),
            median(&v[2]),
            median(&load),
            median(&noise),
        );
    }
    println!("API requests/s achieved in the loaded arm: median {:.0}", median(&reqs));
    let v = c.chain("rate").unwrap();
    assert_eq!(v["state"], "running");
}

/// Send `n` datagrams as fast as the socket takes them while counting (on
/// another thread) what arrives, up to 3 s after the last; how many did.
fn burst(tx: &UdpSocket, rx: &UdpSocket, n: u64) -> u64 {
    std::thread::scope(|s| {
        let counter = s.spawn(|| {
            let mut buf = [0u8; 2048];
            let (mut got, t) = (0, Instant::now());
            while got < n && t.elapsed() < Duration::from_secs(3) {
                if rx.recv(&mut buf).is_ok() {
                    got += 1;
                }
            }
            got
        });
        for i in 0..n {
            tx.send(&i.to_be_bytes()).unwrap();
        }
        counter.join().unwrap()
    })
}

/// A stage's counter from a chain's stats.
fn stage_u64(v: &serde_json::Value, nf: &str, field: &str) -> u64 {
    stage(v, nf)[field].as_u64().unwrap_or_else(|| panic!("{nf}.{field}: {v}"))
}

/// One NF of a profile.
fn profiled<'a>(p: &'a serde_json::Value, nf: &str) -> &'a serde_json::Value {
    p["nfs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == nf)
        .unwrap_or_else(|| panic!("no NF {nf} in {p}"))
}

#[test]
fn a_live_profile_counts_exactly_what_crossed_during_its_interval() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd profile", "needs root for namespaces") {
        return;
    }
    let net = net();
    let dir = TempDir::new("profile");
    let mut d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    c.deploy(&chain_yaml(&net, "prof")).unwrap();
    let (tx, rx) = sockets(&net);
    let rx = rx.unwrap();
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("no packet crossed");
    drain(&rx, Duration::from_millis(100));

    // Bad queries are refused at once, naming the parameter.
    for q in
        ["interval_ms=5", "interval_ms=60001", "interval_ms=abc", "interval=100", "calibrate=maybe"]
    {
        let e = c.json("GET", &format!("/v1/chains/prof/profile?{q}"), None).unwrap_err();
        let ClientError::Api { status, kind, message, .. } = &e else { panic!("{e}") };
        assert_eq!((*status, kind.as_str()), (400, "bad_query"), "{q}: {message}");
        let param = q.split('=').next().unwrap();
        assert!(message.contains(param) && message.contains("10..=60000"), "{q}: {message}");
    }
    let e = c.profile("nope", 100, false).unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 404, .. }), "{e}");

    // Up to 3 rounds (a loaded machine's kernel may lose datagrams outside
    // the chain): the profile's counts equal the chain's counter deltas
    // over the interval exactly, and what arrived when nothing was lost.
    let mut last = (0, 0);
    for _ in 0..3 {
        let before = c.chain("prof").unwrap();
        let profile = std::thread::scope(|s| {
            let p = s.spawn(|| c.profile("prof", 2500, false).unwrap());
            std::thread::sleep(Duration::from_millis(300));
            // Paced (about 4,000 per second): a burst can overflow the
            // server socket's buffer on a loaded machine.
            let got = send_and_count(&tx, &rx, 300);
            (p.join().unwrap(), got)
        });
        let (p, got) = profile;
        let after = c.chain("prof").unwrap();
        for nf in ["fw", "f"] {
            let n = profiled(&p, nf);
            let packets =
                stage_u64(&after, nf, "packets_in") - stage_u64(&before, nf, "packets_in");
            let batches = stage_u64(&after, nf, "batches") - stage_u64(&before, nf, "batches");
            assert_eq!(n["vectors"].as_u64(), Some(packets), "{nf}: {p}");
            assert_eq!(n["calls"].as_u64(), Some(batches), "{nf}: {p}");
            assert!(packets >= got, "{nf}: the chain counted {packets}, {got} arrived");
            let per_call = n["vectors_per_call"].as_f64().unwrap();
            assert!((per_call - packets as f64 / batches.max(1) as f64).abs() < 1e-9, "{p}");
            let ns = n["ns_per_packet"].as_f64().unwrap();
            // Wall time per packet inside a firewall or fwd: above 0, below
            // 10 ms even on a loaded debug build.
            assert!(packets == 0 || (ns > 0.0 && ns < 1e7), "{nf}: {ns} ns/pkt");
            assert!(n["busy_ns"].as_u64().unwrap() <= p["elapsed_ns"].as_u64().unwrap(), "{p}");
            assert!(n["max_batch"].as_u64().unwrap() <= 32, "{p}");
        }
        let w = &p["workers"][0];
        assert_eq!(p["mapping"], "live", "{p}");
        assert_eq!(w["name"], "prof", "{p}");
        // The worker's thread, its interval, its OS counters.
        let tid = w["tid"].as_u64().expect("a tid") as u32;
        let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", d.pid())).unwrap();
        assert_eq!(comm.trim(), "prof");
        let wall = w["wall_ns"].as_u64().unwrap();
        assert!((2_500_000_000..3_500_000_000).contains(&wall), "interval {wall} ns");
        let os = &w["os"];
        let run = os["run_ns"].as_u64().unwrap();
        assert!(run > 0 && run <= wall, "on-CPU {run} ns in {wall} ns");
        assert!(os["voluntary_switches"].as_u64().unwrap() > 0, "a polling worker sleeps: {p}");
        // Port counters are published every tick; the burst ended long
        // before the interval did.
        assert_eq!(w["packets"].as_u64(), profiled(&p, "fw")["vectors"].as_u64(), "{p}");
        // Hardware counters: measured, or said to be unavailable.
        let notes = p["not_measured"].to_string();
        match p["hardware"]["status"].as_str() {
            Some("not_available") => {
                assert!(notes.contains("not available on this machine"), "{p}")
            }
            Some("measured") => assert!(p["hardware"]["cycles"].as_u64().unwrap() > 0, "{p}"),
            other => panic!("hardware status {other:?}: {p}"),
        }
        // The answer is braid's profile model: `braid daemon profile`
        // prints it with `braid profile`'s tables.
        let model: braid_profile::Profile = serde_json::from_value(p.clone()).unwrap();
        let table = braid_profile::report::format_table(&model);
        assert!(table.contains("profile of chain prof (mapping live)"), "{table}");
        assert!(table.contains("per worker thread, over the interval (OS counters)"), "{table}");
        last = (got, profiled(&p, "fw")["vectors"].as_u64().unwrap());
        if got == 300 {
            assert_eq!(last.1, 300, "{p}");
            eprintln!("{table}");
            break;
        }
    }
    assert_eq!(last.0, 300, "(arrived, profiled) in the last round: {last:?}");
    // A profile talks to no worker: its control messages did not move.
    let m = c.metrics().unwrap();
    let control = metric_value(&m, "braid_worker_control_messages_total", &[("chain", "prof")]);
    c.profile("prof", 50, false).unwrap();
    let m2 = c.metrics().unwrap();
    assert_eq!(
        metric_value(&m2, "braid_worker_control_messages_total", &[("chain", "prof")]),
        control
    );
    c.remove("prof").unwrap();
    assert!(d.terminate().success(), "{}", d.log());
}

/// The scheduling attributes of thread `tid`: (policy, nice, slice ns,
/// real-time priority).
fn attr(tid: u32) -> (u32, i32, u64, u32) {
    let a = braid_dataplane::sched::get_attr(tid).unwrap();
    (a.sched_policy, a.sched_nice, a.sched_runtime, a.sched_priority)
}

/// The worker thread of chain `chain`: its tid, from a short profile.
/// The worker records it as its loop starts, which may be just after the
/// deploy answered: a few profiles, 5 s at most.
fn worker_tid(c: &Client, chain: &str) -> u32 {
    let t = Instant::now();
    loop {
        let p = c.profile(chain, 10, false).unwrap();
        if let Some(tid) = p["workers"][0]["tid"].as_u64() {
            return tid as u32;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no worker tid: {p}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn live_scheduling_is_applied_refused_without_change_and_kept_across_a_restart() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd sched", "needs root for namespaces") {
        return;
    }
    let net = net();
    let dir = TempDir::new("sched");
    // Real-time policies and a lower nice need CAP_SYS_NICE (docs/daemon.md).
    let mut d = Braidd::start_with_caps(&["sys_nice"], dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    c.deploy(&chain_yaml(&net, "s1")).unwrap();
    let tid = worker_tid(&c, "s1");
    let (policy0, nice0, slice0, _) = attr(tid);
    assert_eq!((policy0, nice0), (0, 0));

    // Batch policy, nice 3, a 3 ms EEVDF slice and batches of 4.
    let v = c
        .set_sched(
            "s1",
            "fw",
            &json!({ "policy": "batch", "nice": 3, "slice_us": 3000, "batch_size": 4 }),
        )
        .unwrap();
    assert_eq!(v["worker_sched"]["policy"], "batch", "{v}");
    assert_eq!(v["worker_sched"]["batch_size"], 4, "{v}");
    assert_eq!(v["descriptor"]["nfs"][0]["sched"]["slice_us"], 3000, "{v}");
    let applied = attr(tid);
    assert_eq!(applied, (3, 3, 3_000_000, 0), "SCHED_BATCH, nice 3, 3 ms");
    // Telemetry: no call takes more than 4 packets now.
    let (tx, rx) = sockets(&net);
    let rx = rx.unwrap();
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("no packet crossed");
    let got = burst(&tx, &rx, 200);
    assert!(got > 0);
    let v = c.chain("s1").unwrap();
    assert!(stage_u64(&v, "fw", "max_batch") <= 4, "{v}");
    assert!(stage_u64(&v, "fw", "batches") * 4 >= stage_u64(&v, "fw", "packets_in"), "{v}");

    // Refused, each with nothing changed: the thread's attributes, the
    // declared descriptor.
    let declared = c.chain("s1").unwrap()["descriptor"].clone();
    let refusals: [(serde_json::Value, u16, &str, &str); 6] = [
        (json!({ "policy": "deadline" }), 400, "bad_body", "unknown variant `deadline`"),
        (json!({ "policy": "fifo" }), 400, "invalid_descriptor", "nfs[0].sched"),
        (json!({ "slice_us": 50 }), 400, "invalid_descriptor", "100..=100000"),
        (
            json!({ "policy": "rr", "priority": 5, "slice_us": 500 }),
            400,
            "invalid_descriptor",
            "slice_us",
        ),
        (json!({ "nice": 40 }), 400, "invalid_descriptor", "-20..=19"),
        (json!({ "cpus": [4096] }), 400, "invalid_descriptor", "not online"),
    ];
    for (body, status, kind, text) in &refusals {
        let e = c.set_sched("s1", "fw", body).unwrap_err();
        let ClientError::Api { status: s, kind: k, message, .. } = &e else { panic!("{e}") };
        assert_eq!((*s, k.as_str()), (*status, *kind), "{body}: {message}");
        assert!(message.contains(text), "{body}: {message}");
        assert_eq!(attr(tid), applied, "{body} changed the thread");
        assert_eq!(c.chain("s1").unwrap()["descriptor"], declared, "{body} changed the chain");
    }
    let e = c
        .json(
            "PATCH",
            "/v1/chains/s1/nfs/fw",
            Some(("application/json", br#"{"params": {}, "sched": {}}"#)),
        )
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api { status: 400, .. })
            && e.to_string().contains("one at a time"),
        "{e}"
    );

    // Real-time busy polling on every CPU, over two chains: with s1's
    // worker polling busily at SCHED_FIFO on the last CPU, s2's may not
    // do the same on the others.
    let online = braid_runtime::coordinator::online_cpus();
    if online.len() >= 2 {
        c.deploy(&chain_yaml(&net, "s2")).unwrap();
        let tid2 = worker_tid(&c, "s2");
        let before2 = attr(tid2);
        let last = *online.last().unwrap();
        let rest: Vec<usize> = online[..online.len() - 1].to_vec();
        c.set_sched(
            "s1",
            "fw",
            &json!({ "policy": "fifo", "priority": 10, "idle": "busy", "cpus": [last] }),
        )
        .unwrap();
        let e = c
            .set_sched(
                "s2",
                "fw",
                &json!({ "policy": "fifo", "priority": 10, "idle": "busy", "cpus": rest }),
            )
            .unwrap_err();
        // s1 back off real time before anything else.
        c.set_sched(
            "s1",
            "fw",
            &json!({ "policy": "batch", "nice": 3, "slice_us": 3000, "batch_size": 4 }),
        )
        .unwrap();
        let ClientError::Api { status, kind, message, .. } = &e else { panic!("{e}") };
        assert_eq!((*status, kind.as_str()), (422, "sched_refused"), "{message}");
        assert!(message.contains("every online CPU"), "{message}");
        assert_eq!(attr(tid2), before2, "the refused change touched s2's worker");
        assert!(c.chain("s2").unwrap()["descriptor"]["nfs"][0].get("sched").is_none());
        assert_eq!(attr(tid), applied);
        c.remove("s2").unwrap();
    }

    // Declared: braidd killed and restarted applies it again.
    d.kill9();
    d.restart();
    let c = d.client();
    let tid = worker_tid(&c, "s1");
    assert_eq!(attr(tid), (3, 3, 3_000_000, 0), "not re-applied after a restart");
    // And back to the defaults: the NF's block removed.
    c.set_sched("s1", "fw", &json!({})).unwrap();
    let (p, n, s, _) = attr(tid);
    assert_eq!((p, n, s), (0, 0, slice0), "back to SCHED_OTHER, nice 0, the default slice");
    assert!(c.chain("s1").unwrap()["descriptor"]["nfs"][0].get("sched").is_none());
    c.remove("s1").unwrap();
    assert!(d.terminate().success(), "{}", d.log());
}

/// The 4-NF chain of `examples/chain4.yaml` (firewall, router, nat, fwd)
/// between the namespace's two interfaces.
fn chain4_yaml(net: &Net, name: &str) -> String {
    let text = include_str!("../../../examples/chain4.yaml");
    text.replace(
        "name: bench4\n",
        &format!(
            "name: {name}\nbatch_size: 32\nports:\n  in: {{ kind: af_packet, iface: {}, batch_size: 32 }}\n  out: {{ kind: af_packet, iface: {}, batch_size: 32 }}\n",
            net.a1, net.b1
        ),
    )
}

/// One window of [`measure_live_profile_overhead`]: packets per second out
/// of the chain's last NF and the worker's on-CPU ns per packet, while a
/// sender offers as much as it can; `arm` 1: one live profile covering
/// most of the window, 2: back-to-back 10 ms profiles the whole window,
/// 0 and 3: no profile.
fn profile_round(net: &Net, c: &Client, arm: usize, secs: f64) -> (f64, f64, usize) {
    let stop = AtomicBool::new(false);
    let profiles = AtomicU64::new(0);
    let (stop, profiles) = (&stop, &profiles);
    std::thread::scope(|s| {
        let tx = net.cl.enter(|| UdpSocket::bind("10.0.0.1:0")).unwrap().unwrap();
        tx.connect("10.1.0.1:5000").unwrap();
        let sender = s.spawn(move || {
            let payload = [0u8; 22];
            while !stop.load(Ordering::Relaxed) {
                let _ = tx.send(&payload);
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let read = || {
            let v = c.chain("p4").unwrap();
            let m = c.metrics().unwrap();
            let cpu =
                metric_value(&m, "braid_worker_cpu_nanoseconds_total", &[("chain", "p4")]).unwrap();
            (
                stage_u64(&v, "out", "packets_out") as f64,
                stage_u64(&v, "fw", "packets_in") as f64,
                cpu,
            )
        };
        let (o0, i0, c0) = read();
        let t = Instant::now();
        let window = Duration::from_secs_f64(secs);
        let profiler = match arm {
            1 => Some(s.spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let ms = (secs * 1000.0) as u64 - 300;
                c.profile("p4", ms, false).unwrap();
                profiles.fetch_add(1, Ordering::Relaxed);
            })),
            2 => Some(s.spawn(move || {
                while t.elapsed() + Duration::from_millis(60) < window {
                    c.profile("p4", 10, false).unwrap();
                    profiles.fetch_add(1, Ordering::Relaxed);
                }
            })),
            _ => None,
        };
        if let Some(p) = profiler {
            p.join().unwrap();
        }
        if let Some(rest) = window.checked_sub(t.elapsed()) {
            std::thread::sleep(rest);
        }
        let took = t.elapsed().as_secs_f64();
        let (o1, i1, c1) = read();
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        (
            (o1 - o0) / took,
            (c1 - c0) / (i1 - i0).max(1.0),
            profiles.load(Ordering::Relaxed) as usize,
        )
    })
}

/// docs/benchmarks.md ("live profile overhead"): the 4-NF chain
/// (examples/chain4.yaml on AF_PACKET in braidd) forwarding what a sender
/// offers, in windows without a profile (N), with one live profile
/// covering the window (P: its two samples inside it), with back-to-back
/// 10 ms profiles all through it (C: the worst case), and without again
/// (N2: the noise floor); arms rotate per round; per round the ratios
/// P/N, C/N and N2/N of the chain's rate and of the worker's on-CPU ns
/// per packet. `BRAID_RATE_ROUNDS` (default 6) rounds of
/// `BRAID_RATE_SECONDS` (default 2). Run by hand:
/// `cargo test --release -p braid-daemon --test live -- --ignored --nocapture measure_live_profile`.
#[test]
#[ignore = "a measurement; run by hand (docs/benchmarks.md)"]
fn measure_live_profile_overhead() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd profile rate", "needs root") {
        return;
    }
    let net = net();
    // Client 10.0.0.1/16 reaches 10.1.0.0/16 through the router's address
    // and MAC (chain4's r1); the chain's output is only counted.
    netns::add_addr(Some(net.cl.name()), &net_client_dev(&net), "10.0.0.1/16").unwrap();
    let st = net
        .cl
        .command("ip")
        .args(["route", "add", "10.1.0.0/16", "via", "10.0.0.254"])
        .status()
        .unwrap();
    assert!(st.success());
    netns::add_neigh(Some(net.cl.name()), &net_client_dev(&net), "10.0.0.254", "02:00:00:00:00:fe")
        .unwrap();
    let dir = TempDir::new("p4");
    let d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    c.deploy(&chain4_yaml(&net, "p4")).unwrap();
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let rounds = env("BRAID_RATE_ROUNDS").unwrap_or(6.0) as usize;
    let secs = env("BRAID_RATE_SECONDS").unwrap_or(2.0);
    let pps = env("BRAID_RATE_PPS");
    if let Some(p) = pps {
        println!("sender paced at {p:.0} datagrams/s");
    }
    let names = ["none ", "one  ", "10ms ", "none2"];
    let mut rate = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut nspp = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for i in 0..rounds {
        for k in 0..4 {
            let arm = (i + k) % 4;
            let (r, ns, n) = profile_round(&net, &c, arm, secs);
            assert!(r > 0.0, "nothing crossed the chain");
            rate[arm].push(r);
            nspp[arm].push(ns);
            println!(
                "round {i} {}: {r:.0} packets/s out of the chain, worker {ns:.0} ns/packet, {n} profiles",
                names[arm]
            );
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let minmax = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() - 1])
    };
    let ratios =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    for (what, v) in [("rate", &rate), ("worker ns/packet", &nspp)] {
        let mut line = format!(
            "{what}: medians none {:.0}, one {:.0}, 10ms {:.0}, none2 {:.0};",
            median(&v[0]),
            median(&v[1]),
            median(&v[2]),
            median(&v[3])
        );
        for (arm, label) in [(1, "one/none"), (2, "10ms/none"), (3, "none2/none")] {
            let r = ratios(&v[arm], &v[0]);
            let (lo, hi) = minmax(&r);
            line.push_str(&format!(" {label} median {:.3}x ({lo:.3}..{hi:.3});", median(&r)));
        }
        println!("{line}");
    }
    c.remove("p4").unwrap();
}

/// The client namespace's interface (the veth end in `cl`).
fn net_client_dev(net: &Net) -> String {
    let out = net.cl.command("ip").args(["-o", "link", "show", "type", "veth"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let name = text.split(':').nth(1).unwrap().trim();
    name.split('@').next().unwrap().to_string()
}

#[test]
fn a_live_sched_change_the_kernel_refuses_changes_nothing() {
    let ok = netns::is_root() && braid_testkit::tool_installed("setpriv");
    if braid_testkit::skip_unless(ok, "braidd sched privilege", "needs root and setpriv") {
        return;
    }
    let net = net();
    let dir = TempDir::new("nonice");
    // braidd's own capabilities, without CAP_SYS_NICE (explicitly: this
    // test is about its absence).
    let mut d = Braidd::start_as(
        &Privilege::least(),
        common::BRAIDD,
        dir.path(),
        Some(net.mid.name()),
        &[],
    );
    let c = d.client();
    c.deploy(&chain_yaml(&net, "nn")).unwrap();
    let tid = worker_tid(&c, "nn");
    // Allowed without the privilege: batch, a higher nice, a slice.
    c.set_sched("nn", "f", &json!({ "policy": "batch", "nice": 5, "slice_us": 2000 })).unwrap();
    let applied = attr(tid);
    assert_eq!(applied, (3, 5, 2_000_000, 0));
    let declared = c.chain("nn").unwrap()["descriptor"].clone();
    // Refused by the kernel: real time, a lower nice. The worker puts its
    // thread back; nothing is declared.
    for body in [json!({ "policy": "fifo", "priority": 10 }), json!({ "nice": -5 })] {
        let e = c.set_sched("nn", "f", &body).unwrap_err();
        let ClientError::Api { status, kind, message, .. } = &e else { panic!("{e}") };
        assert_eq!((*status, kind.as_str()), (422, "refused_by_worker"), "{body}: {message}");
        // sched_setscheduler says EPERM, setpriority EACCES.
        let denied = ["Operation not permitted", "Permission denied"];
        assert!(denied.iter().any(|d| message.contains(d)), "{body}: {message}");
        assert_eq!(attr(tid), applied, "{body} changed the thread");
        assert_eq!(c.chain("nn").unwrap()["descriptor"], declared, "{body} was declared");
    }
    // A deploy asking for real time is refused before anything starts.
    let e = c
        .deploy(
            &chain_yaml(&net, "rt")
                .replace("type: fwd }", "type: fwd, sched: { policy: fifo, priority: 10 } }"),
        )
        .unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 422, .. }), "{e}");
    assert!(e.to_string().contains("Operation not permitted"), "{e}");
    assert!(c.chain("rt").is_err(), "a refused deploy was declared");
    c.remove("nn").unwrap();
    assert!(d.terminate().success(), "{}", d.log());
}

/// A three-NF chain with `mapping: threads`: a worker thread per NF.
fn threads_yaml(net: &Net, name: &str) -> String {
    format!(
        "name: {name}\nmapping: threads\nbatch_size: 32\nports:\n  in: {{ kind: af_packet, iface: {}, batch_size: 32 }}\n  out: {{ kind: af_packet, iface: {}, batch_size: 32 }}\nnfs:\n  - {{ name: fw, type: firewall, params: {{ default: allow }} }}\n  - {{ name: f1, type: fwd }}\n  - {{ name: f2, type: fwd }}\n",
        net.a1, net.b1
    )
}

/// Each worker's loop turns, by name, from the chain's `workers`.
fn worker_turns(c: &Client, chain: &str) -> Vec<(String, u64)> {
    let v = c.chain(chain).unwrap();
    v["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers in {v}"))
        .iter()
        .map(|w| (w["name"].as_str().unwrap().to_string(), w["loop"]["turns"].as_u64().unwrap()))
        .collect()
}

#[test]
fn a_threads_chain_runs_a_worker_per_nf_forwards_exactly_and_survives_kill_9() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd threads", "needs root for namespaces") {
        return;
    }
    let net = net();
    let dir = TempDir::new("threads");
    let mut d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    let (tx, rx) = sockets(&net);
    let rx = rx.unwrap();

    let shown = c.deploy(&threads_yaml(&net, "thr")).unwrap();
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["descriptor"]["mapping"], "threads", "{shown}");
    let names = ["thr/fw", "thr/f1", "thr/f2"];
    let workers = shown["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3, "{shown}");
    for (w, (name, nf)) in workers.iter().zip(names.iter().zip(["fw", "f1", "f2"])) {
        assert_eq!(w["name"], *name, "{shown}");
        assert_eq!(w["nfs"], json!([nf]), "{shown}");
    }
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("no packet crossed");
    drain(&rx, Duration::from_millis(100));

    // Exact counts through three workers and two channels (up to 3 rounds
    // for a loaded kernel losing datagrams outside the chain).
    let mut v = serde_json::Value::Null;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let before: Vec<u64> =
            ["fw", "f1", "f2"].iter().map(|nf| counter(&c, "thr", nf, "packets_in")).collect();
        let got = send_and_count(&tx, &rx, 300);
        v = c.chain("thr").unwrap();
        let deltas: Vec<u64> = ["fw", "f1", "f2"]
            .iter()
            .zip(&before)
            .map(|(nf, b)| stage(&v, nf)["packets_in"].as_u64().unwrap() - b)
            .collect();
        rounds.push((got, deltas.clone()));
        if got == 300 {
            assert_eq!(deltas, [300, 300, 300], "{v}");
            break;
        }
    }
    assert_eq!(rounds.last().unwrap().0, 300, "rounds (arrived, counted): {rounds:?}");
    // /metrics: every NF, and every worker with its own label.
    let m = c.metrics().unwrap();
    for nf in ["fw", "f1", "f2"] {
        let api = stage(&v, nf)["packets_in"].as_u64().unwrap() as f64;
        assert_eq!(
            metric_value(&m, "braid_nf_packets_in_total", &[("chain", "thr"), ("nf", nf)]),
            Some(api),
            "{nf}: {m}"
        );
    }
    for w in names {
        let l = [("chain", "thr"), ("worker", w)];
        let cpu = metric_value(&m, "braid_worker_cpu_nanoseconds_total", &l);
        assert!(cpu.unwrap_or(0.0) > 0.0, "{w}: {m}");
        assert!(metric_value(&m, "braid_worker_turns_total", &l).unwrap() > 0.0, "{w}");
        assert_eq!(
            metric_value(&m, "braid_worker_info", &[("worker", w), ("idle", "poll")]),
            Some(1.0)
        );
    }
    // The live profile covers every worker thread.
    let p = c.profile("thr", 100, false).unwrap();
    assert_eq!(p["workers"].as_array().map(Vec::len), Some(3), "{p}");

    // Idle: the three workers sleep (the channels between them wake them),
    // a handful of loop turns in 600 ms rather than a spin's hundreds of
    // thousands; and a packet after that still crosses.
    std::thread::sleep(Duration::from_millis(200));
    let t0 = worker_turns(&c, "thr");
    std::thread::sleep(Duration::from_millis(600));
    let t1 = worker_turns(&c, "thr");
    for ((name, a), (_, b)) in t0.iter().zip(&t1) {
        // The API's `GET` is no control message. A `fwd` worker: a few
        // turns (a tick once a second). The firewall's worker ticks every
        // 10 ms while its table holds the test's connection (to expire
        // it): about 60 turns.
        let most = if name == "thr/fw" { 100 } else { 20 };
        assert!(b - a <= most, "worker {name}: {} turns in 600 ms idle", b - a);
    }
    assert_eq!(send_and_count(&tx, &rx, 20), 20);

    // A live change on the first worker's NF: the allowed flow passes
    // (its state moved), a new flow is dropped at `fw` and counted.
    c.reconfigure("thr", "fw", &json!({ "default": "drop" })).unwrap();
    assert_eq!(send_and_count(&tx, &rx, 20), 20);
    let (new_flow, _) = sockets_from(&net, None);
    let dropped = counter(&c, "thr", "fw", "dropped");
    assert_eq!(send_within(&new_flow, &rx, 30, Duration::from_millis(300)), 0);
    assert!(counter(&c, "thr", "fw", "dropped") - dropped > 20);
    c.reconfigure("thr", "fw", &json!({ "default": "allow" })).unwrap();

    // SIGKILL, restart: back as declared, three workers, forwarding.
    d.kill9();
    d.restart();
    let c = d.client();
    let v = c.chain("thr").unwrap();
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["workers"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v["descriptor"]["nfs"][0]["params"]["default"], "allow", "{v}");
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("no packet after the restart");
    drain(&rx, Duration::from_millis(100));
    assert_eq!(send_and_count(&tx, &rx, 50), 50);

    // Remove: every worker stops, nothing crosses.
    let r = c.remove("thr").unwrap();
    assert_eq!(r["stopped"], true, "{r}");
    drain(&rx, Duration::from_millis(50));
    assert_eq!(send_within(&tx, &rx, 10, Duration::from_millis(300)), 0);
    let threads = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("thr/"))
        .count();
    assert_eq!(threads, 0, "worker threads left after the removal");
    assert!(d.terminate().success(), "{}", d.log());
}

/// `worker` groups neighbouring NFs of a `threads` chain on one worker:
/// two workers for three NFs, every packet through all three, the grouping
/// kept across a restart; a grouping of non-neighbours is refused with the
/// field named, and nothing is deployed.
#[test]
fn neighbouring_nfs_share_the_worker_they_name() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd workers", "needs root for namespaces") {
        return;
    }
    let net = net();
    let dir = TempDir::new("grouped");
    let mut d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    let (tx, rx) = sockets(&net);
    let rx = rx.unwrap();
    let yaml = |second: &str| {
        format!(
            "name: grp\nmapping: threads\nports:\n  in: {{ kind: af_packet, iface: {} }}\n  out: {{ kind: af_packet, iface: {} }}\nnfs:\n  - {{ name: fw, type: firewall, params: {{ default: allow }}, worker: front }}\n  - {{ name: f1, type: fwd{second} }}\n  - {{ name: f2, type: fwd }}\n",
            net.a1, net.b1
        )
    };

    // An f3 after f1 (its own worker) cannot join `front` again.
    let bad = yaml(" }\n  - { name: f3, type: fwd, worker: front");
    let e = c.deploy(&bad).unwrap_err().to_string();
    assert!(e.contains("nfs[2].worker") && e.contains("neighbours"), "{e}");
    assert!(c.chain("grp").is_err(), "a refused deploy left a chain");

    let shown = c.deploy(&yaml(", worker: front")).unwrap();
    assert_eq!(shown["state"], "running", "{shown}");
    let workers = shown["workers"].as_array().unwrap();
    let got: Vec<(&str, serde_json::Value)> =
        workers.iter().map(|w| (w["name"].as_str().unwrap(), w["nfs"].clone())).collect();
    assert_eq!(got, [("grp/front", json!(["fw", "f1"])), ("grp/f2", json!(["f2"]))], "{shown}");
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("no packet crossed");
    drain(&rx, Duration::from_millis(100));
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let before: Vec<u64> =
            ["fw", "f1", "f2"].iter().map(|nf| counter(&c, "grp", nf, "packets_in")).collect();
        let got = send_and_count(&tx, &rx, 200);
        let after: Vec<u64> =
            ["fw", "f1", "f2"].iter().map(|nf| counter(&c, "grp", nf, "packets_in")).collect();
        let deltas: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        rounds.push((got, deltas.clone()));
        if got == 200 {
            assert_eq!(deltas, [200, 200, 200]);
            break;
        }
    }
    assert_eq!(rounds.last().unwrap().0, 200, "rounds (arrived, counted): {rounds:?}");

    d.kill9();
    d.restart();
    let c = d.client();
    let v = c.chain("grp").unwrap();
    let names: Vec<&str> =
        v["workers"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["grp/front", "grp/f2"], "{v}");
    assert_eq!(v["descriptor"]["nfs"][1]["worker"], "front", "{v}");
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("no packet after the restart");
    c.remove("grp").unwrap();
    assert!(d.terminate().success(), "{}", d.log());
}
