//! braidd running a chain in the kernel: a stateless firewall and a fwd
//! deployed through the API become one XDP chain program attached to the
//! chain's two interfaces. The host is a namespace between a client and a
//! server namespace (veth pairs, static neighbours, no IPv6), as in
//! `live.rs`; the client's and the server's veth carry braid's `pass`
//! program, because a veth delivers frames redirected into it by XDP only
//! when its peer runs an XDP program (physical NICs need nothing).
//!
//! Checked with real packets both ways: delivery, the per-NF counters
//! (API and `/metrics`) exactly, a live rule change, refusals that change
//! nothing, SIGKILL (the kernel detaches the program with braidd's links)
//! and restart, SIGTERM, DELETE (no XDP program left on either interface).

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use braid_daemon::client::{metric_value, Client, ClientError};
use braid_io::netns::{self, NetnsGuard};
use braid_io::xdp::{AttachMode, XdpNf, XdpProgram};
use common::{Braidd, TempDir};
use serde_json::json;

const CLIENT: &str = "10.77.0.1";
const SERVER: &str = "10.77.0.2";
/// The firewall lets this port through at first...
const OPEN: u16 = 9177;
/// ...and drops this one.
const SHUT: u16 = 9176;

/// client — mid — server ([`common::bump_net`]), with braid's `pass`
/// program on the client's and the server's veth (its counters say what
/// arrived there).
struct Net {
    net: common::BumpNet,
    /// The `pass` programs on the client's and the server's veth.
    _pass: Vec<XdpProgram>,
}

impl std::ops::Deref for Net {
    type Target = common::BumpNet;
    fn deref(&self) -> &common::BumpNet {
        &self.net
    }
}

fn net() -> Net {
    let net = common::bump_net("bdk", CLIENT, SERVER);
    let pass = |ns: &NetnsGuard, dev: &str| {
        ns.enter(|| {
            let mut p = XdpProgram::load(XdpNf::Pass).unwrap();
            p.attach(dev, AttachMode::Auto).unwrap();
            p
        })
        .unwrap()
    };
    let _pass = vec![pass(&net.cl, &net.a0), pass(&net.sv, &net.b0)];
    Net { net, _pass }
}

fn chain_yaml(net: &Net, name: &str) -> String {
    format!(
        "name: {name}\nports:\n  in: {{ kind: af_packet, iface: {} }}\n  out: {{ kind: af_xdp, iface: {} }}\nnfs:\n  - {{ name: fw, type: firewall, params: {{ conntrack: false, default: allow, rules: [{{ action: drop, dst: {SERVER}, proto: udp, dst_ports: {SHUT} }}] }} }}\n  - {{ name: f, type: fwd, placement: kernel }}\n",
        net.a1, net.b1
    )
}

/// The XDP program attached to `dev` in `ns`, as `ip -d link` shows it
/// (`prog/xdp id N ...`), or None.
fn xdp_on(ns: &NetnsGuard, dev: &str) -> Option<String> {
    let out = ns.command("ip").args(["-d", "link", "show", "dev", dev]).output().unwrap();
    assert!(out.status.success(), "ip link show {dev}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find(|l| l.contains("prog/xdp")).map(|l| l.trim().to_string())
}

/// Whether `dev` in `ns` carries no XDP program, within 2 s. A link is
/// released when its last file descriptor closes, and a child another
/// thread is forking (this test binary runs tests and `ip` in parallel)
/// holds a copy of every descriptor until it execs: the detach can trail
/// the close by a moment.
fn detached(ns: &NetnsGuard, dev: &str) -> bool {
    let t = Instant::now();
    loop {
        if xdp_on(ns, dev).is_none() {
            return true;
        }
        if t.elapsed() > Duration::from_secs(2) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn api_error(e: ClientError) -> (u16, String, String) {
    match e {
        ClientError::Api { status, kind, message, .. } => (status, kind, message),
        other => panic!("expected an API error, got {other}"),
    }
}

fn stage<'a>(chain: &'a serde_json::Value, nf: &str) -> &'a serde_json::Value {
    chain["stats"]["stages"]
        .as_array()
        .unwrap_or_else(|| panic!("no stages in {chain}"))
        .iter()
        .find(|s| s["name"] == nf)
        .unwrap_or_else(|| panic!("no stage {nf} in {chain}"))
}

/// (packets_in, packets_out, dropped) of every NF, in chain order.
fn counts(c: &Client, chain: &str) -> Vec<[u64; 3]> {
    let v = c.chain(chain).unwrap();
    ["fw", "f"]
        .iter()
        .map(|nf| {
            let s = stage(&v, nf);
            let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} of {nf}: {s}"));
            [n("packets_in"), n("packets_out"), n("dropped")]
        })
        .collect()
}

fn bind(ns: &NetnsGuard, addr: String) -> UdpSocket {
    let s = ns.enter(|| UdpSocket::bind(addr)).unwrap().unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    s
}

/// Send `n` datagrams from `tx` to `to` (about 4,000 a second, so no veth
/// ring overflows) while counting on another thread what `rx` receives, up
/// to 2 s after the last; how many arrived.
fn send(tx: &UdpSocket, to: &str, rx: &UdpSocket, n: u64) -> u64 {
    std::thread::scope(|s| {
        let counter = s.spawn(|| {
            let mut buf = [0u8; 2048];
            let (mut got, mut last) = (0, Instant::now());
            while got < n && last.elapsed() < Duration::from_secs(2) {
                if rx.recv(&mut buf).is_ok() {
                    got += 1;
                    last = Instant::now();
                }
            }
            got
        });
        for i in 0..n {
            tx.send_to(&i.to_be_bytes(), to).unwrap();
            if i % 8 == 7 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        counter.join().unwrap()
    })
}

/// Whether one datagram of ten, 20 ms apart, crosses.
fn crosses(tx: &UdpSocket, to: &str, rx: &UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    while rx.recv(&mut buf).is_ok() {}
    (0..10).any(|_| {
        tx.send_to(b"probe", to).unwrap();
        rx.recv(&mut buf).is_ok()
    })
}

#[test]
fn a_kernel_chain_forwards_both_ways_counts_exactly_and_leaves_nothing_attached() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd kernel chain", "needs root")
        || braid_testkit::skip_unless(
            braid_io::xdp::xdp_built(),
            "braidd kernel chain",
            "braid was built without its XDP programs",
        )
    {
        return;
    }
    let net = net();
    let dir = TempDir::new("kernel");
    let mut d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();

    // An NF pinned to the kernel beside one that cannot run there: refused
    // with both named, nothing declared, nothing attached.
    let mixed = chain_yaml(&net, "mixed").replace(
        "  - { name: fw, type: firewall,",
        "  - { name: n, type: nat, params: { external_ip: 10.77.1.1, internal: [10.77.0.0/24] } }\n  - { name: fw, type: firewall,",
    );
    let (status, kind, message) = api_error(c.deploy(&mixed).unwrap_err());
    assert_eq!((status, kind.as_str()), (422, "placement_refused"), "{message}");
    assert!(message.contains("NF `f` is pinned to the kernel"), "{message}");
    assert!(message.contains("NF `n` (nat) runs in user space"), "{message}");
    assert!(c.chains().unwrap().is_empty());
    assert_eq!(xdp_on(&net.mid, &net.a1), None);

    // Another program already on `out`: refused, and `in`, attached first,
    // is detached again.
    let b1 = net.b1.clone();
    let foreign = net
        .mid
        .enter(|| {
            let mut p = XdpProgram::load(XdpNf::Pass).unwrap();
            p.attach(&b1, AttachMode::Native).unwrap();
            p
        })
        .unwrap();
    let (status, kind, message) = api_error(c.deploy(&chain_yaml(&net, "kc")).unwrap_err());
    assert_eq!((status, kind.as_str()), (422, "start_failed"), "{message}");
    assert!(message.contains(&format!("attaching to `out` ({})", net.b1)), "{message}");
    assert!(detached(&net.mid, &net.a1), "`in` was detached again");
    drop(foreign);
    assert!(detached(&net.mid, &net.b1));
    assert!(c.chains().unwrap().is_empty());

    // Deployed: one XDP program on both interfaces, native on veth.
    let mut events = c.events(None).unwrap();
    let shown = c.deploy(&chain_yaml(&net, "kc")).unwrap();
    let deployed = events.next().unwrap().unwrap();
    assert_eq!(deployed["type"], "chain_deployed", "{deployed}");
    assert_eq!(
        (deployed["chain"].as_str(), deployed["placement"].as_str()),
        (Some("kc"), Some("kernel"))
    );
    drop(events);
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["placement"], "kernel", "{shown}");
    for nf in shown["nfs"].as_array().unwrap() {
        assert_eq!(nf["placement"], "kernel", "{nf}");
    }
    assert_eq!(shown["nfs"][0]["reason"], "basic NF with an XDP version: kernel fast path");
    assert_eq!(shown["nfs"][1]["reason"], "pinned to kernel by the descriptor");
    for (i, dev) in [&net.a1, &net.b1].into_iter().enumerate() {
        assert_eq!(shown["stats"]["ports"][i]["iface"], dev.as_str(), "{shown}");
        assert_eq!(shown["stats"]["ports"][i]["xdp_mode"], "native", "{shown}");
    }
    let prog_a = xdp_on(&net.mid, &net.a1).expect("no XDP program on in");
    let prog_b = xdp_on(&net.mid, &net.b1).expect("no XDP program on out");
    let id = |l: &str| l.split_whitespace().skip_while(|w| *w != "id").nth(1).map(String::from);
    assert_eq!(id(&prog_a), id(&prog_b), "one program on both: {prog_a} / {prog_b}");

    // Client -> server on the open port, server -> client answers, client
    // -> server on the shut port; every datagram counted exactly once per
    // NF it crossed: downstream fw then f, upstream f then fw.
    let server = bind(&net.sv, format!("{SERVER}:{OPEN}"));
    let server_shut = bind(&net.sv, format!("{SERVER}:{SHUT}"));
    let client = bind(&net.cl, format!("{CLIENT}:0"));
    let client_addr = client.local_addr().unwrap().to_string();
    let mut delivered = None;
    for _ in 0..3 {
        let before = counts(&c, "kc");
        let down = send(&client, &format!("{SERVER}:{OPEN}"), &server, 200);
        let up = send(&server, &client_addr, &client, 100);
        let shut = send(&client, &format!("{SERVER}:{SHUT}"), &server_shut, 50);
        let after = counts(&c, "kc");
        let delta: Vec<[u64; 3]> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| [a[0] - b[0], a[1] - b[1], a[2] - b[2]])
            .collect();
        assert_eq!(delta[0], [350, 300, 50], "fw: in, out, dropped");
        assert_eq!(delta[1], [300, 300, 0], "f: in, out, dropped");
        assert_eq!(shut, 0, "the shut port is dropped");
        // The counters are exact whatever the sockets lost; delivery is
        // exact in a round where the loaded machine lost nothing outside
        // the chain.
        if (down, up) == (200, 100) {
            delivered = Some(());
            break;
        }
        eprintln!("round lost datagrams outside the chain: {down}/200 down, {up}/100 up");
    }
    assert!(delivered.is_some(), "no round delivered every datagram");
    let v = c.chain("kc").unwrap();
    let fw = stage(&v, "fw");
    assert_eq!(fw["drops"], json!({ "denied": fw["dropped"] }), "{fw}");
    assert_eq!(v["workers"], json!([]));

    // /metrics: the same numbers, labelled with the placement.
    let m = c.metrics().unwrap();
    let metric = |name: &str, nf: &str| {
        metric_value(&m, name, &[("chain", "kc"), ("nf", nf), ("placement", "kernel")])
            .unwrap_or_else(|| panic!("{name} of {nf} missing:\n{m}"))
    };
    let v = c.chain("kc").unwrap();
    for nf in ["fw", "f"] {
        let s = stage(&v, nf);
        assert_eq!(
            metric("braid_nf_packets_in_total", nf),
            s["packets_in"].as_u64().unwrap() as f64
        );
        assert_eq!(
            metric("braid_nf_packets_out_total", nf),
            s["packets_out"].as_u64().unwrap() as f64
        );
        assert_eq!(metric("braid_nf_kernel_passed_total", nf), 0.0);
    }
    let denied = metric_value(
        &m,
        "braid_nf_drops_total",
        &[("chain", "kc"), ("nf", "fw"), ("reason", "denied")],
    );
    assert_eq!(denied, Some(stage(&v, "fw")["dropped"].as_u64().unwrap() as f64));
    assert_eq!(metric_value(&m, "braid_chain_up", &[("chain", "kc")]), Some(1.0));

    // Refused without change: parameters XDP cannot express (the NF is
    // `auto`, so the descriptor would be valid: the running program
    // refuses), scheduling, a profile (no worker thread).
    let conntrack = json!({ "conntrack": true });
    let (status, kind, message) = api_error(c.reconfigure("kc", "fw", &conntrack).unwrap_err());
    assert_eq!((status, kind.as_str()), (422, "refused_by_kernel"), "{message}");
    assert!(message.contains("conntrack") && message.contains("redeploy"), "{message}");
    let (status, kind, _) =
        api_error(c.set_sched("kc", "fw", &json!({ "policy": "batch" })).unwrap_err());
    assert_eq!((status, kind.as_str()), (422, "kernel_chain"));
    let (status, kind, message) = api_error(c.profile("kc", 50, false).unwrap_err());
    assert_eq!((status, kind.as_str()), (422, "kernel_chain"), "{message}");
    let migrate = {
        let route =
            json!({ "netns": net.cl.name(), "to": "10.77.0.0/24", "via": SERVER, "dev": "lo" });
        json!({ "to": "127.0.0.1:9", "switch": { "redirect": [route], "restore": [route],
            "markers": [{ "netns": net.cl.name(), "dev": "lo", "port": "in" }] } })
    }
    .to_string();
    let (status, kind, message) = api_error(
        c.json(
            "POST",
            "/v1/chains/kc/nfs/fw/migrate",
            Some(("application/json", migrate.as_bytes())),
        )
        .unwrap_err(),
    );
    assert_eq!((status, kind.as_str()), (422, "kernel_chain"), "{message}");
    assert!(message.contains("a live migration is for chains in user space"), "{message}");
    assert_eq!(c.chain("kc").unwrap()["descriptor"]["nfs"][0]["params"]["conntrack"], false);

    // A live rule change: the open port is shut and the shut one opens;
    // the firewall's old rule is gone from its map.
    let swapped = json!({ "conntrack": false, "default": "allow", "rules": [
        { "action": "drop", "dst": SERVER, "proto": "udp", "dst_ports": OPEN } ] });
    let changed = c.reconfigure("kc", "fw", &swapped).unwrap();
    assert_eq!(changed["descriptor"]["nfs"][0]["params"]["rules"][0]["dst_ports"], OPEN);
    assert!(!crosses(&client, &format!("{SERVER}:{OPEN}"), &server));
    assert!(crosses(&client, &format!("{SERVER}:{SHUT}"), &server_shut));
    // The change moved fw to its spare stage: its counters go on from
    // where they were (both stages summed), exactly.
    let before = counts(&c, "kc");
    assert_eq!(send(&client, &format!("{SERVER}:{SHUT}"), &server_shut, 40), 40);
    assert_eq!(send(&client, &format!("{SERVER}:{OPEN}"), &server, 10), 0);
    let after = counts(&c, "kc");
    assert_eq!(
        [after[0][0] - before[0][0], after[0][1] - before[0][1], after[0][2] - before[0][2]],
        [50, 40, 10],
        "fw after the change: in, out, dropped"
    );

    // SIGKILL: braidd's BPF links close with it, the kernel detaches the
    // program from both interfaces at once.
    d.kill9();
    assert!(detached(&net.mid, &net.a1), "in keeps an XDP program after SIGKILL");
    assert!(detached(&net.mid, &net.b1), "out keeps an XDP program after SIGKILL");
    assert!(!crosses(&client, &format!("{SERVER}:{SHUT}"), &server_shut));
    // Restarted, the chain is back in the kernel with its changed rules.
    d.restart();
    let c = d.client();
    let back = c.chain("kc").unwrap();
    assert_eq!(
        (back["state"].as_str(), back["placement"].as_str()),
        (Some("running"), Some("kernel"))
    );
    assert!(xdp_on(&net.mid, &net.a1).is_some() && xdp_on(&net.mid, &net.b1).is_some());
    assert!(crosses(&client, &format!("{SERVER}:{SHUT}"), &server_shut));
    assert!(!crosses(&client, &format!("{SERVER}:{OPEN}"), &server));

    // SIGTERM detaches everything; the chain stays declared and comes back.
    assert!(d.terminate().success(), "{}", d.log());
    assert!(detached(&net.mid, &net.a1), "in keeps an XDP program after SIGTERM");
    assert!(detached(&net.mid, &net.b1), "out keeps an XDP program after SIGTERM");
    d.restart();
    let c = d.client();
    assert_eq!(c.chain("kc").unwrap()["state"], "running");
    assert!(crosses(&client, &format!("{SERVER}:{SHUT}"), &server_shut));

    // DELETE: final counters, nothing attached, nothing crosses.
    let shown = bpftool_net(&net.mid);
    assert!(shown.contains(net.a1.as_str()) && shown.contains(net.b1.as_str()), "{shown}");
    let removed = c.remove("kc").unwrap();
    assert_eq!(removed["stopped"], true, "{removed}");
    assert_eq!(removed["placement"], "kernel", "{removed}");
    assert!(detached(&net.mid, &net.a1), "in keeps an XDP program after DELETE");
    assert!(detached(&net.mid, &net.b1), "out keeps an XDP program after DELETE");
    assert!(!crosses(&client, &format!("{SERVER}:{SHUT}"), &server_shut));
    assert!(c.chains().unwrap().is_empty());
    let shown = bpftool_net(&net.mid);
    assert!(!shown.contains(net.a1.as_str()) && !shown.contains(net.b1.as_str()), "{shown}");
}

/// `bpftool net show` in `ns`: the XDP (and tc) attachments there.
fn bpftool_net(ns: &NetnsGuard) -> String {
    let out = ns.command("bpftool").args(["net", "show"]).output().expect("bpftool");
    assert!(out.status.success(), "bpftool net show: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_mixed_chain_runs_whole_in_user_space_and_says_why_per_nf() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd mixed chain", "needs root") {
        return;
    }
    let net = net();
    let dir = TempDir::new("mixed");
    let d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    // `auto` everywhere: the fwd could run in the kernel, the firewall
    // (conntrack on, default drop: replies pass by state) cannot; both run
    // in user space.
    let yaml = format!(
        "name: mx\nports:\n  in: {{ kind: af_packet, iface: {} }}\n  out: {{ kind: af_packet, iface: {} }}\nnfs:\n  - {{ name: fw, type: firewall, params: {{ default: drop, rules: [{{ action: allow, proto: udp, dst_ports: {OPEN} }}] }} }}\n  - {{ name: f, type: fwd }}\n",
        net.a1, net.b1
    );
    let shown = c.deploy(&yaml).unwrap();
    assert_eq!(shown["placement"], "user", "{shown}");
    let nfs = shown["nfs"].as_array().unwrap();
    assert_eq!(nfs[0]["placement"], "user");
    assert!(nfs[0]["reason"].as_str().unwrap().contains("conntrack"), "{}", nfs[0]);
    assert_eq!(nfs[1]["placement"], "user");
    assert!(
        nfs[1]["reason"].as_str().unwrap().contains("NF `fw` (firewall) runs in user space"),
        "{}",
        nfs[1]
    );
    assert_eq!(xdp_on(&net.mid, &net.a1), None, "an AF_PACKET chain attaches no XDP");
    let server = bind(&net.sv, format!("{SERVER}:{OPEN}"));
    let client = bind(&net.cl, format!("{CLIENT}:0"));
    assert!(crosses(&client, &format!("{SERVER}:{OPEN}"), &server));
    assert_eq!(c.chain("mx").unwrap()["workers"].as_array().unwrap().len(), 1);
    c.remove("mx").unwrap();
}

#[test]
fn a_capture_through_braidd_on_a_kernel_nf_shows_what_leaves_and_what_it_drops() {
    use braid_daemon::capture::{request, CaptureClientError};
    use braid_dataplane::tap::{CaptureRequest, Point};
    use std::io::Read;

    if braid_testkit::skip_unless(netns::is_root(), "braidd kernel capture", "needs root")
        || braid_testkit::skip_unless(
            braid_io::xdp::xdp_built(),
            "braidd kernel capture",
            "braid was built without its XDP programs",
        )
    {
        return;
    }
    let net = net();
    let dir = TempDir::new("kcapture");
    let d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    assert_eq!(c.deploy(&chain_yaml(&net, "kcap")).unwrap()["placement"], "kernel");
    let req = |nf: &str, filter: &str, count: Option<u64>| CaptureRequest {
        nf: nf.into(),
        points: vec![Point::Out, Point::Drops],
        filter: filter.into(),
        count,
        seconds: Some(30.0),
    };
    match request(&d.socket, "kcap", &req("nope", "", Some(1))) {
        Err(CaptureClientError::Refused { status: 404, message }) => {
            assert!(message.contains("no NF named `nope`; its NFs: fw, f"), "{message}")
        }
        other => panic!("{:?}", other.err()),
    }
    match request(&d.socket, "kcap", &req("fw", "port 1 or", Some(1))) {
        Err(CaptureClientError::Refused { status: 400, .. }) => {}
        other => panic!("{:?}", other.err()),
    }

    // 20 datagrams to the open port, 10 to the shut one: the capture (30
    // packets, then it ends) shows the 20 leaving fw and the 10 it dropped.
    let stream = request(&d.socket, "kcap", &req("fw", "udp", Some(30))).unwrap();
    let server = bind(&net.sv, format!("{SERVER}:{OPEN}"));
    server.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let client = bind(&net.cl, format!("{CLIENT}:0"));
    let (bytes, received) = common::send_while_capturing(
        stream,
        &client,
        &server,
        &format!("{SERVER}:{OPEN}"),
        &format!("{SERVER}:{SHUT}"),
    );
    let (out, drops) = common::fw_out_and_drops(&bytes);
    assert_eq!(received.len(), 20, "the server got every allowed datagram");
    assert_eq!(out, received, "the capture shows what the server got");
    assert_eq!(drops, vec![b"denied".to_vec(); 10]);

    // A capture without a count ends when the chain is removed.
    let mut open = request(&d.socket, "kcap", &req("f", "", None)).unwrap();
    let t = Instant::now();
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut b = Vec::new();
            open.read_to_end(&mut b).unwrap();
        });
        std::thread::sleep(Duration::from_millis(200));
        c.remove("kcap").unwrap();
        reader.join().unwrap();
    });
    assert!(t.elapsed() < Duration::from_secs(5), "the stream ended {:?} after", t.elapsed());
    assert!(detached(&net.mid, &net.a1));
}

/// One round of [`measure_kernel_and_user_chain_rates`]: chain `yaml`
/// deployed, `senders` threads in the client namespace offering 64-byte
/// UDP datagrams (each on its own flow) as fast as they can for `secs`
/// after 200 ms of warm-up,
/// what reached the server's interface counted by its `pass` program
/// (so the server's socket is not the limit); (offered/s, delivered/s).
fn rate_round(net: &mut Net, c: &Client, yaml: &str, secs: f64, senders: usize) -> (f64, f64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let name = c.deploy(yaml).unwrap()["name"].as_str().unwrap().to_string();
    // A socket that never reads: no ICMP port-unreachable comes back.
    let _sink = bind(&net.sv, format!("{SERVER}:{OPEN}"));
    let clients: Vec<UdpSocket> = (0..senders)
        .map(|_| {
            let c = bind(&net.cl, format!("{CLIENT}:0"));
            c.connect(format!("{SERVER}:{OPEN}")).unwrap();
            c
        })
        .collect();
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let delivered = |net: &mut Net| net._pass[1].counters().unwrap().rx_packets;
    let result = std::thread::scope(|s| {
        for client in &clients {
            let (stop, sent) = (&stop, &sent);
            s.spawn(move || {
                let payload = [0x5au8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if client.send(&payload).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(200));
        let (s0, d0, t) = (sent.load(Ordering::Relaxed), delivered(net), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (s1, d1, dt) = (sent.load(Ordering::Relaxed), delivered(net), t.elapsed());
        stop.store(true, Ordering::Relaxed);
        let per_s = |n: u64| n as f64 / dt.as_secs_f64();
        (per_s(s1 - s0), per_s(d1 - d0))
    });
    c.remove(&name).unwrap();
    result
}

/// The forwarding rate of the same 2-NF chain (a stateless firewall that
/// allows everything, fwd) run by braidd in the kernel (one XDP program)
/// and in user space on AF_XDP ports (copy mode on veth), rounds
/// interleaved ABBA. docs/benchmarks.md ("braidd: a kernel chain against
/// the same chain in user space"):
///
/// ```sh
/// BRAID_REQUIRE_ROOT=1 cargo test --release -p braid-daemon --test kernel -- --ignored --nocapture
/// ```
///
/// `BRAID_RATE_SECONDS` (default 2) is each round's window,
/// `BRAID_RATE_SENDERS` (default 2) the sender threads.
#[test]
#[ignore = "a measurement; run by hand (docs/benchmarks.md)"]
fn measure_kernel_and_user_chain_rates() {
    if braid_testkit::skip_unless(netns::is_root(), "kernel vs user rate", "needs root") {
        return;
    }
    let mut net = net();
    let dir = TempDir::new("krate");
    let d = Braidd::start(dir.path(), Some(net.mid.name()), &[]);
    let c = d.client();
    let fw = "{ name: fw, type: firewall, params: { conntrack: false, default: allow } }";
    let yaml = |name: &str, kind: &str, f: &str| {
        format!(
            "name: {name}\nports:\n  in: {{ kind: {kind}, iface: {} }}\n  out: {{ kind: {kind}, iface: {} }}\nnfs:\n  - {fw}\n  - {f}\n",
            net.a1, net.b1
        )
    };
    let kernel = yaml("rk", "af_packet", "{ name: f, type: fwd, placement: kernel }");
    let user = yaml("ru", "af_xdp", "{ name: f, type: fwd, placement: user }");
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<f64>().ok());
    let secs = env("BRAID_RATE_SECONDS").unwrap_or(2.0);
    let senders = env("BRAID_RATE_SENDERS").unwrap_or(2.0) as usize;
    let (mut k, mut u) = (Vec::new(), Vec::new());
    for pair in 0..4 {
        let order: [bool; 2] = if pair % 2 == 0 { [true, false] } else { [false, true] };
        for in_kernel in order {
            let (offered, delivered) =
                rate_round(&mut net, &c, if in_kernel { &kernel } else { &user }, secs, senders);
            let arm = if in_kernel { "kernel (XDP)" } else { "user (AF_XDP)" };
            eprintln!("round {pair} {arm}: offered {offered:.0}/s, delivered {delivered:.0}/s");
            if in_kernel { &mut k } else { &mut u }.push((offered, delivered));
        }
    }
    let median = |v: &mut Vec<(f64, f64)>, i: usize| {
        let mut x: Vec<f64> = v.iter().map(|p| if i == 0 { p.0 } else { p.1 }).collect();
        x.sort_by(f64::total_cmp);
        (x[x.len() / 2 - 1] + x[x.len() / 2]) / 2.0
    };
    let (ko, kd, uo, ud) =
        (median(&mut k, 0), median(&mut k, 1), median(&mut u, 0), median(&mut u, 1));
    eprintln!(
        "median: kernel offered {ko:.0}/s delivered {kd:.0}/s; user offered {uo:.0}/s delivered {ud:.0}/s; kernel/user delivered {:.2}x",
        kd / ud
    );
}

#[test]
fn a_device_without_native_xdp_gets_generic_mode_and_says_why() {
    if braid_testkit::skip_unless(netns::is_root(), "braidd generic XDP", "needs root")
        || braid_testkit::skip_unless(
            braid_io::xdp::xdp_built(),
            "braidd generic XDP",
            "braid was built without its XDP programs",
        )
    {
        return;
    }
    // Bridges have no native XDP; they go with the namespace.
    let ns = NetnsGuard::create(&netns::unique_name("bdk-gen")).unwrap();
    for dev in ["kd0", "kd1"] {
        let st = ns.command("ip").args(["link", "add", dev, "type", "bridge"]).status().unwrap();
        assert!(st.success(), "ip link add {dev}");
        netns::set_up(Some(ns.name()), dev).unwrap();
    }
    let dir = TempDir::new("kgeneric");
    let d = Braidd::start(dir.path(), Some(ns.name()), &[]);
    let c = d.client();
    let shown = c
        .deploy("name: g\nports:\n  in: { kind: af_packet, iface: kd0 }\n  out: { kind: af_packet, iface: kd1 }\nnfs:\n  - { name: f, type: fwd, placement: kernel }\n")
        .unwrap();
    assert_eq!(
        (shown["state"].as_str(), shown["placement"].as_str()),
        (Some("running"), Some("kernel"))
    );
    for (i, dev) in ["kd0", "kd1"].into_iter().enumerate() {
        let port = &shown["stats"]["ports"][i];
        assert_eq!(port["xdp_mode"], "generic", "{port}");
        assert!(port["fallback_reason"].as_str().is_some_and(|r| !r.is_empty()), "{port}");
        let on = xdp_on(&ns, dev).expect("no XDP program");
        assert!(on.contains("prog/xdp"), "{on}");
    }
    // An interface going away is noticed: the chain has exited, saying why.
    let st = ns.command("ip").args(["link", "del", "kd1"]).status().unwrap();
    assert!(st.success());
    let gone = c.chain("g").unwrap();
    assert_eq!(gone["state"], "exited", "{gone}");
    let error = gone["error"].as_str().unwrap();
    assert!(error.contains("port `out`: interface kd1 is gone"), "{error}");
    c.remove("g").unwrap();
    assert!(detached(&ns, "kd0"));
}
