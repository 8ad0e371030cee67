//! braidd running a `mapping: processes` chain (one process per NF,
//! shared-memory ports between them), through its API only, with real
//! packets: client — mid (braidd) — server namespaces as in `live.rs`.
//! UDP crosses a firewall + fwd chain of NF processes; the per-NF counters
//! (API, /metrics) match what was sent; operations that do not reach NF
//! processes are refused with 409; live parameter and scheduling changes,
//! live profiles, captures (tests/capture.rs) and checkpoints reach them
//! through their control sockets and a
//! restarted NF process comes back with them; an NF process killed with SIGKILL, or
//! hung (SIGSTOP), is restarted and traffic flows again; one killed past its restarts stops
//! the chain; remove, SIGTERM and SIGKILL of braidd leave no NF process
//! and no socket directory behind, and the chain comes back after a
//! restart.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use braid_daemon::client::{metric_value, Client, ClientError};
use braid_io::netns;
use common::{drain, reaches, send_within, time_to_first_packet, two_checkpoints, Braidd, TempDir};
use serde_json::{json, Value};

const CLIENT: &str = "10.79.0.1";
const SERVER: &str = "10.79.0.2";
const PORT: u16 = 9179;

fn chain_yaml(net: &common::BumpNet, name: &str, nfs: &str) -> String {
    format!(
        "name: {name}\nmapping: processes\nports:\n  in: {{ kind: af_packet, iface: {} }}\n  out: {{ kind: af_packet, iface: {} }}\nnfs:\n{nfs}",
        net.a1, net.b1
    )
}

/// Send `n` datagrams while counting what arrives, up to 2 s after the
/// last; how many did.
fn send_and_count(tx: &UdpSocket, rx: &UdpSocket, n: u64) -> u64 {
    send_within(tx, rx, n, Duration::from_secs(2))
}

const FW_FWD: &str =
    "  - { name: fw, type: firewall, params: { default: allow } }\n  - { name: f, type: fwd }\n";

/// The client's socket, connected to the server's, and the server's.
fn sockets(net: &common::BumpNet) -> (UdpSocket, UdpSocket) {
    let rx = net.sv.enter(|| UdpSocket::bind(format!("{SERVER}:{PORT}"))).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let tx = net.cl.enter(|| UdpSocket::bind(format!("{CLIENT}:0"))).unwrap().unwrap();
    tx.connect(format!("{SERVER}:{PORT}")).unwrap();
    (tx, rx)
}

fn stage<'a>(chain: &'a Value, nf: &str) -> &'a Value {
    chain["stats"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == nf)
        .unwrap_or_else(|| panic!("no stage {nf} in {chain}"))
}

/// NF `nf`'s entry in the chain's `processes`.
fn process<'a>(chain: &'a Value, nf: &str) -> &'a Value {
    chain["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no processes in {chain}"))
        .iter()
        .find(|p| p["name"] == nf)
        .unwrap_or_else(|| panic!("no process {nf} in {chain}"))
}

/// NF `nf`'s counter `field` once the NF processes' stats files have been
/// rewritten (every 200 ms) after what was sent.
fn settled_counter(c: &Client, chain: &str, nf: &str, field: &str) -> u64 {
    std::thread::sleep(Duration::from_millis(450));
    stage(&c.chain(chain).unwrap(), nf)[field].as_u64().unwrap()
}

/// The pids of every process of the chain that runs now.
fn pids(chain: &Value) -> Vec<u32> {
    chain["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
        .collect()
}

/// Whether process `pid` still exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Poll `ok` every 20 ms for up to `limit`.
fn eventually(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ok()
}

fn kill9(pid: u32) {
    let st = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    assert!(st.unwrap().success(), "kill -KILL {pid}");
}

/// braidd's socket directory of chain `name` (beside its API socket).
fn socket_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("braidd-procs").join(name)
}

/// Every NF process of chain `name` is gone and so is its socket dir.
fn assert_nothing_left(dir: &Path, name: &str, pids: &[u32]) {
    assert!(!pids.is_empty());
    assert!(
        eventually(Duration::from_secs(3), || pids.iter().all(|p| !alive(*p))),
        "NF processes left running: {pids:?}"
    );
    assert!(!socket_dir(dir, name).exists(), "{} left behind", socket_dir(dir, name).display());
}

/// The API error of `r`: (status, kind, message).
fn api_error(r: Result<Value, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api { status, kind, message, .. }) => (status, kind, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn a_processes_chain_forwards_counts_restarts_its_nfs_and_leaves_nothing_behind() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd processes", "needs root") {
        return;
    }
    let net = common::bump_net("bdp", CLIENT, SERVER);
    let dir = TempDir::new("procs");
    let mut d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    let (tx, rx) = sockets(&net);

    // Deploy: an NF process each, braidd's edge worker on the ports.
    let t = Instant::now();
    let v = c.deploy(&chain_yaml(&net, "pc", FW_FWD)).unwrap();
    let deployed = t.elapsed();
    assert_eq!((v["state"].as_str(), v["mapping"].as_str()), (Some("running"), Some("processes")));
    let first = time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("nothing crossed");
    eprintln!("deploy call {deployed:?}, then first packet after {first:?}");
    let v = c.chain("pc").unwrap();
    let started = pids(&v);
    assert_eq!(started.len(), 2, "{v}");
    for pid in &started {
        assert!(alive(*pid));
        // braidd itself, re-executed as `braidd nf-proc`.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<_> = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy).collect();
        assert_eq!(args.get(1).map(|a| a.as_ref()), Some("nf-proc"), "{args:?}");
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
            Path::new(common::BRAIDD)
        );
    }
    assert_eq!(v["workers"][0]["name"], "edge-pc", "{v}");
    assert!(socket_dir(dir.path(), "pc").join("in.sock").exists());
    drain(&rx, Duration::from_millis(100));

    // Per-NF counters (from the NF processes' stats files): what crossed.
    // The kernel may lose a datagram outside the chain on a loaded
    // machine: up to 3 rounds to get one where all arrived, whose counts
    // must then be exact.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let before = settled_counter(&c, "pc", "fw", "packets_in");
        let got = send_and_count(&tx, &rx, 300);
        let delta = settled_counter(&c, "pc", "fw", "packets_in") - before;
        rounds.push((got, delta));
        if got == 300 {
            assert_eq!(delta, 300);
            break;
        }
        assert!(delta >= got, "fw counted {delta} but {got} arrived");
    }
    assert_eq!(rounds.last().unwrap().0, 300, "rounds (arrived, counted): {rounds:?}");
    let v = c.chain("pc").unwrap();
    assert_eq!(stage(&v, "f")["packets_out"], stage(&v, "fw")["packets_in"], "{v}");
    let fw_in = stage(&v, "fw")["packets_in"].as_u64().unwrap();
    let m = c.metrics().unwrap();
    assert_eq!(
        metric_value(&m, "braid_nf_packets_in_total", &[("chain", "pc"), ("nf", "fw")]),
        Some(fw_in as f64),
        "{m}"
    );
    assert_eq!(metric_value(&m, "braid_chain_up", &[("chain", "pc")]), Some(1.0));
    // braidd's edge worker is the chain's worker thread.
    let edge_turns =
        metric_value(&m, "braid_worker_turns_total", &[("chain", "pc"), ("worker", "edge-pc")]);
    assert!(edge_turns.is_some_and(|t| t > 0.0), "{m}");
    assert!(
        metric_value(&m, "braid_port_rx_packets_total", &[("chain", "pc")]).unwrap() > 0.0,
        "{m}"
    );

    // What does not reach an NF process (a migration) is refused, naming
    // the mapping.
    let refusals = [
        (
            "migration",
            api_error(c.json(
                "POST",
                "/v1/chains/pc/nfs/fw/migrate",
                Some((
                    "application/json",
                    br#"{"to": "127.0.0.1:1", "switch": {"redirect": [{"to": "10.0.2.0/24", "dev": "lo"}], "restore": [], "markers": [{"dev": "lo", "port": "in"}]}}"#,
                )),
            )),
        ),
    ];
    for (what, (status, kind, message)) in refusals {
        assert_eq!((status, kind.as_str()), (409, "processes_chain"), "{what}: {message}");
        assert!(message.contains("mapping: processes"), "{what}: {message}");
    }
    assert_eq!(c.chain("pc").unwrap()["descriptor"]["nfs"][0]["params"]["default"], "allow");

    // SIGKILL of the firewall's process: restarted, traffic flows again,
    // its counters carry on from what the killed one had written.
    let fw_pid = process(&c.chain("pc").unwrap(), "fw")["pid"].as_u64().unwrap() as u32;
    kill9(fw_pid);
    assert!(
        eventually(Duration::from_secs(5), || {
            let v = c.chain("pc").unwrap();
            let p = process(&v, "fw");
            p["restarts"] == 1 && p["pid"].as_u64().is_some_and(|p| p as u32 != fw_pid)
        }),
        "fw not restarted: {}",
        c.chain("pc").unwrap()
    );
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("nothing crossed after restart");
    drain(&rx, Duration::from_millis(100));
    assert_eq!(send_and_count(&tx, &rx, 100), 100);
    let v = c.chain("pc").unwrap();
    assert_eq!(v["state"], "running", "{v}");
    assert!(settled_counter(&c, "pc", "fw", "packets_in") >= fw_in + 100);
    let events = v["process_events"].to_string();
    assert!(events.contains("fw: exited (killed by signal 9)"), "{events}");
    assert!(events.contains("fw: restarted (#1)"), "{events}");

    // A hung NF process (stopped: alive, its loop silent) is killed by
    // the heartbeat watchdog (2 s) and restarted like a failed one.
    let fw_pid = process(&c.chain("pc").unwrap(), "fw")["pid"].as_u64().unwrap() as u32;
    let st = std::process::Command::new("kill").arg("-STOP").arg(fw_pid.to_string()).status();
    assert!(st.unwrap().success());
    assert!(
        eventually(Duration::from_secs(8), || process(&c.chain("pc").unwrap(), "fw")["restarts"]
            == 2),
        "a stopped fw was not restarted: {}",
        c.chain("pc").unwrap()
    );
    let events = c.chain("pc").unwrap()["process_events"].to_string();
    assert!(events.contains("fw: hung (no heartbeat for"), "{events}");
    assert!(!alive(fw_pid));
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("nothing crossed after a hang");
    drain(&rx, Duration::from_millis(100));

    // Remove: no NF process, no socket directory left.
    let pids_now = pids(&c.chain("pc").unwrap());
    assert_eq!(c.remove("pc").unwrap()["stopped"], true);
    assert_nothing_left(dir.path(), "pc", &pids_now);
    assert_eq!(drain(&rx, Duration::from_millis(50)), 0);
    assert_eq!(send_and_count(&tx, &rx, 10), 0, "nothing crosses a removed chain");

    // SIGTERM: the same; the chain comes back with the next braidd.
    c.deploy(&chain_yaml(&net, "pc", FW_FWD)).unwrap();
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("nothing crossed");
    let before_term = pids(&c.chain("pc").unwrap());
    assert!(d.terminate().success(), "{}", d.log());
    assert_nothing_left(dir.path(), "pc", &before_term);
    d.restart();
    let c = d.client();
    assert_eq!(c.chain("pc").unwrap()["state"], "running");
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("nothing crossed after restart");

    // SIGKILL of braidd: its NF processes die with it; back after a restart.
    let before_kill = pids(&c.chain("pc").unwrap());
    d.kill9();
    assert!(
        eventually(Duration::from_secs(3), || before_kill.iter().all(|p| !alive(*p))),
        "NF processes outlived braidd: {before_kill:?}"
    );
    d.restart();
    let c = d.client();
    let v = c.chain("pc").unwrap();
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(pids(&v).len(), 2);
    drain(&rx, Duration::from_millis(50));
    time_to_first_packet(&tx, &rx, Duration::from_secs(5)).expect("nothing crossed after kill -9");
    let last = pids(&c.chain("pc").unwrap());
    c.remove("pc").unwrap();
    assert_nothing_left(dir.path(), "pc", &last);
    assert!(d.terminate().success(), "{}", d.log());
}

/// The nice values of process `pid`'s threads.
fn thread_nices(pid: u32) -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        // After the command name's `)`: state is field 3, nice field 19.
        .filter_map(|st| st.rsplit(')').next()?.split_whitespace().nth(16)?.parse().ok())
        .collect()
}

#[test]
fn live_changes_and_checkpoints_reach_nf_processes_and_a_restarted_one_keeps_them() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd processes", "needs root") {
        return;
    }
    let net = common::bump_net("bdk", "10.79.2.1", "10.79.2.2");
    let (client, server) = ("10.79.2.1", "10.79.2.2");
    let dir = TempDir::new("procs-live");
    let mut d =
        Braidd::start(dir.path(), Some(net.mid.name()), &["--checkpoint-interval-ms", "100"]);
    let c = d.client();
    // Only the client starts UDP flows: the server's answers pass only on
    // a connection the firewall's state tracks.
    let fw = |extra: &str| {
        format!("{{ default: drop, rules: [{{ action: allow, src: {client}/32, proto: udp }}{extra}] }}")
    };
    let nfs = format!(
        "  - {{ name: fw, type: firewall, params: {} }}\n  - {{ name: f, type: fwd }}\n",
        fw("")
    );
    c.deploy(&chain_yaml(&net, "pk", &nfs)).unwrap();
    let rx = net.sv.enter(|| UdpSocket::bind(format!("{server}:{PORT}"))).unwrap().unwrap();
    let tx = net.cl.enter(|| UdpSocket::bind(format!("{client}:0"))).unwrap().unwrap();
    tx.connect(format!("{server}:{PORT}")).unwrap();
    assert!(time_to_first_packet(&tx, &rx, Duration::from_secs(5)).is_some());
    assert!(reaches(&rx, &tx), "the answer on the tracked connection passes");
    // A flow the server starts, to a client socket that takes any sender
    // (`tx` is connected: its kernel would drop the stranger's datagrams).
    let stranger = net.sv.enter(|| UdpSocket::bind(format!("{server}:0"))).unwrap().unwrap();
    let open_rx = net.cl.enter(|| UdpSocket::bind(format!("{client}:0"))).unwrap().unwrap();
    assert!(!reaches(&stranger, &open_rx), "a flow the server starts is dropped");

    // A live parameter change, through the NF process's control socket:
    // the stranger's port is let in, the tracked connection stays.
    let sport = stranger.local_addr().unwrap().port();
    let open =
        fw(&format!(", {{ action: allow, src: {server}/32, proto: udp, src_ports: {sport} }}"));
    let params: Value = serde_yaml_ng::from_str(&open).unwrap();
    c.reconfigure("pk", "fw", &params).unwrap();
    assert!(reaches(&stranger, &open_rx), "the new rule is live");
    assert!(reaches(&rx, &tx), "the connection's state survived the change");
    let v = c.chain("pk").unwrap();
    assert_eq!(v["descriptor"]["nfs"][0]["params"]["rules"][1]["src_ports"], sport, "{v}");

    // A live scheduling change reaches the NF process's worker thread.
    let pid = process(&v, "fw")["pid"].as_u64().unwrap() as u32;
    assert!(!thread_nices(pid).contains(&7), "{:?}", thread_nices(pid));
    c.set_sched("pk", "fw", &json!({ "nice": 7 })).unwrap();
    assert!(thread_nices(pid).contains(&7), "{:?}", thread_nices(pid));
    // Refused by the coordinator (a CPU that does not exist): nothing changes.
    let (status, kind, message) = api_error(c.set_sched("pk", "fw", &json!({ "cpus": "999" })));
    assert_eq!(status / 100, 4, "{kind}: {message}");
    assert!(thread_nices(pid).contains(&7));
    assert_eq!(c.chain("pk").unwrap()["descriptor"]["nfs"][0]["sched"]["nice"], 7);

    // A live profile: braidd's edge worker and each NF process's worker,
    // counting exactly what the NF processes counted over the interval.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let before = settled_counter(&c, "pk", "fw", "packets_in");
        let (p, got) = std::thread::scope(|s| {
            let p = s.spawn(|| c.profile("pk", 2000, false).unwrap());
            std::thread::sleep(Duration::from_millis(300));
            let got = send_and_count(&tx, &rx, 200);
            (p.join().unwrap(), got)
        });
        let delta = settled_counter(&c, "pk", "fw", "packets_in") - before;
        let fw = p["nfs"].as_array().unwrap().iter().find(|n| n["name"] == "fw").cloned();
        let fw = fw.unwrap_or_else(|| panic!("no fw in {p}"));
        assert_eq!(fw["vectors"].as_u64(), Some(delta), "{p}");
        let workers = p["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 3, "the edge and two NF processes: {p}");
        // The firewall's worker is a thread of its process.
        let tid = workers[1]["tid"].as_u64().expect("a tid");
        assert!(Path::new(&format!("/proc/{pid}/task/{tid}")).exists(), "{p}");
        assert!(workers[1]["os"]["run_ns"].as_u64().is_some(), "{p}");
        rounds.push((got, delta));
        if got == 200 {
            assert_eq!(delta, 200, "{p}");
            break;
        }
    }
    assert_eq!(rounds.last().unwrap().0, 200, "rounds (arrived, counted): {rounds:?}");

    // SIGKILL of the firewall's process after two checkpoints: the
    // restarted one has the connection (the last checkpoint), the new rule
    // and the nice value, not what it was started with.
    two_checkpoints(&c, Duration::from_secs(10));
    kill9(pid);
    assert!(
        eventually(Duration::from_secs(5), || {
            let p = process(&c.chain("pk").unwrap(), "fw").clone();
            p["restarts"] == 1 && p["pid"].as_u64().is_some_and(|p| p as u32 != pid)
        }),
        "fw not restarted: {}",
        c.chain("pk").unwrap()
    );
    assert!(reaches(&rx, &tx), "the restarted process lost the checkpointed connection");
    assert!(reaches(&stranger, &open_rx), "the restarted process lost the live rule");
    let pid = process(&c.chain("pk").unwrap(), "fw")["pid"].as_u64().unwrap() as u32;
    assert!(thread_nices(pid).contains(&7), "{:?}", thread_nices(pid));

    // SIGKILL of braidd: the chain comes back as changed, with its state.
    two_checkpoints(&c, Duration::from_secs(10));
    d.kill9();
    d.restart();
    let v = d.client().chain("pk").unwrap();
    assert_eq!(
        (v["state"].as_str(), v["restored_state"]["nfs"].clone()),
        (Some("running"), json!(["fw"])),
        "{v}"
    );
    assert!(reaches(&rx, &tx), "the restored connection lets the answer pass");
    assert!(reaches(&stranger, &open_rx), "the changed parameters came back");
    assert!(d.terminate().success(), "{}", d.log());
}

#[test]
fn an_nf_process_given_up_stops_the_chain_and_says_so() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd processes", "needs root") {
        return;
    }
    let net = common::bump_net("bdq", "10.79.1.1", "10.79.1.2");
    let dir = TempDir::new("procs-up");
    let mut d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    let mut events = c.events(None).unwrap();
    let v = c.deploy(&chain_yaml(&net, "gu", FW_FWD)).unwrap();
    assert_eq!(v["state"], "running", "{v}");
    // Killed six times: the first run and its 5 restarts (100 ms back-off,
    // doubling); then it is given up.
    let mut killed = Vec::new();
    while killed.len() < 6 {
        let v = c.chain("gu").unwrap();
        if v["state"] != "running" {
            break;
        }
        match process(&v, "f")["pid"].as_u64().map(|p| p as u32) {
            Some(pid) if !killed.contains(&pid) => {
                kill9(pid);
                killed.push(pid);
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(
        eventually(Duration::from_secs(10), || c.chain("gu").unwrap()["state"] == "exited"),
        "{}",
        c.chain("gu").unwrap()
    );
    let v = c.chain("gu").unwrap();
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("NF f failed and was given up; the chain is stopped"), "{v}");
    // The other NF's process is stopped too: nothing runs without `f`.
    assert!(
        eventually(Duration::from_secs(3), || pids(&c.chain("gu").unwrap()).is_empty()),
        "{}",
        c.chain("gu").unwrap()
    );
    let stopped = events
        .by_ref()
        .take(20)
        .map(Result::unwrap)
        .find(|e| e["type"] == "chain_state" && e["chain"] == "gu");
    let stopped = stopped.expect("a chain_state event");
    assert_eq!(
        (stopped["from"].as_str(), stopped["to"].as_str()),
        (Some("running"), Some("exited"))
    );
    assert!(stopped["error"].as_str().unwrap_or_default().contains("given up"), "{stopped}");
    c.remove("gu").unwrap();
    assert!(!socket_dir(dir.path(), "gu").exists());
    assert!(d.terminate().success(), "{}", d.log());
}

/// The measurement of docs/benchmarks.md ("braidd", mapping processes):
/// deploy-to-first-packet time of the same 4-NF chain (firewall, xor, xor,
/// fwd) with `mapping: thread` and `mapping: processes`, 10 rounds each,
/// deployed and removed in turn. Run by hand: `cargo test --release -p
/// braid-daemon --test procs -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run by hand (docs/benchmarks.md)"]
fn measure_deploy_to_first_packet_processes_and_thread() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd measure", "needs root") {
        return;
    }
    let net = common::bump_net("bdm", CLIENT, SERVER);
    let dir = TempDir::new("procs-measure");
    let mut d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    let (tx, rx) = sockets(&net);
    let four = "  - { name: fw, type: firewall, placement: user, params: { default: allow } }\n  - { name: x1, type: xor, params: { key_text: braid } }\n  - { name: x2, type: xor, params: { key_text: braid } }\n  - { name: f, type: fwd }\n";
    for mapping in ["thread", "processes"] {
        let (mut call, mut first) = (Vec::new(), Vec::new());
        for round in 0..10 {
            let name = format!("m{round}");
            let yaml = chain_yaml(&net, &name, four).replace("processes", mapping);
            let (took, arrived) = common::deploy_to_first_packet(&c, &tx, &rx, &yaml);
            c.remove(&name).unwrap();
            call.push(took);
            first.push(arrived.expect("a packet crossed"));
        }
        println!(
            "mapping {mapping} (4 NFs): deploy call median {:.1} ms, max {:.1} ms; deploy to first packet median {:.1} ms, max {:.1} ms (10 rounds)",
            common::ms(common::percentile(call.clone(), 0.5)),
            common::ms(common::percentile(call, 1.0)),
            common::ms(common::percentile(first.clone(), 0.5)),
            common::ms(common::percentile(first, 1.0)),
        );
    }
    assert!(d.terminate().success(), "{}", d.log());
}
