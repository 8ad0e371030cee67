//! `braid scale out|in` between two braidd, with `steer` NFs in front of
//! the instances: one call of braidd's API (`POST .../scale`, the call the
//! command makes), run and recorded as an operation.
//!
//! ```text
//!                                      sua ── (in) hA: braidd A, chain `mig` (out) ── sda
//!  client ── u0 [up] ut ── sut [st: su]<                                               >[st: sd] sdt ── dt [dn] d0 ── server
//!                                      sub ── (in) hB: braidd B              (out) ── sdb
//!                                           hA ma ─────── state link ─────── mb hB
//! ```
//!
//! `st` runs braidd S with two chains of one `steer` NF each (256
//! buckets, 2 instances): `su` between `up` (its trunk, port `in`) and the
//! instances' `in` ports (`out` = instance 0 = A, `gate2` = instance 1 =
//! B), `sd` the same on the server side. `up` and `dn` route through the
//! steering as if it were one wire. A firewall admitting only flows the
//! client starts runs on A; 16 UDP flows (echoed by the server) and 1,000
//! extra connections cross it. `scale_out` (share 1/2) deploys the chain
//! on B and moves half the buckets there; later `scale_in` from B merges
//! them back into A, which kept serving its own half all along, and
//! removes B's chain. Each operation records its steps (the steering
//! tables checked, each steering switch, the migration, the removal) and
//! its outcome. The oracle: every packet of every flow echoed
//! exactly once and in order over the whole run; after the scale-out, a
//! packet the server sends on each flow reaches the client (through B
//! for the moved flows: only the moved connection admits it), and with
//! the moved buckets steered back to A by hand, A drops the server's
//! packets on the moved flows (their state is no longer on A) while it
//! still admits them on its own flows.
//!
//! Requests that cannot be done are refused before anything changes
//! (`bad_requests_are_refused_and_the_chain_keeps_serving`).
//!
//! Its braidd run as root (`Braidd::start_as_root`): a scale-out or -in,
//! like a migration, switches routes in the routers' namespaces, which
//! needs CAP_SYS_ADMIN.

mod common;
mod netlab;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use braid_daemon::client::{Client, ClientError};
use braid_daemon::migration::DeployPorts;
use braid_daemon::scale::{Direction, ScaleRequest, Share, SteerPoint};
use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::netns::{self, LinkGuard, NetnsGuard};
use braid_io::Port;
use braid_nf::steer::bucket_of;
use braid_nf::PartitionKey;
use braid_packet::flow::FiveTuple;
use braid_packet::wire::build::FrameSpec;
use common::{Braidd, TempDir};
use netlab::{addr, check_exact, ip, link, neigh, payload, sysctl};
use serde_json::{json, Value};

const CL: &str = "10.81.10.1";
const UP0: &str = "10.81.10.2";
const SV: &str = "10.81.20.1";
const DN0: &str = "10.81.20.2";
const UPT: &str = "10.81.1.1";
const DNT: &str = "10.81.1.2";
const MA: &str = "10.81.30.1";
const MB: &str = "10.81.30.2";
const ECHO_PORT: u16 = 9210;
const FLOWS: usize = 16;
const BUCKETS: u32 = 256;

struct Net {
    cl: NetnsGuard,
    up: NetnsGuard,
    st: NetnsGuard,
    /// A's host; None: A's host is `st` (one braidd runs the steering and
    /// instance 0).
    ha: Option<NetnsGuard>,
    hb: NetnsGuard,
    _dn: NetnsGuard,
    sv: NetnsGuard,
    /// st's interfaces: trunks, to A, to B (client side, server side).
    sut: String,
    sua: String,
    sub: String,
    sdt: String,
    sda: String,
    sdb: String,
    /// A's and B's chain interfaces.
    ai: String,
    ao: String,
    bi: String,
    bo: String,
    c0: String,
    u0: String,
    _links: Vec<LinkGuard>,
}

impl Net {
    /// A's host.
    fn ha(&self) -> &NetnsGuard {
        self.ha.as_ref().unwrap_or(&self.st)
    }
}

/// The topology above; with `steering_on_a`, A's host is `st` (its
/// links to the steering are veth pairs inside that one namespace).
fn net(steering_on_a: bool) -> Net {
    let mk = |p: &str| NetnsGuard::create(&netns::unique_name(p)).unwrap();
    let (cl, up, st, hb, dn, sv) =
        (mk("bds-cl"), mk("bds-up"), mk("bds-st"), mk("bds-hb"), mk("bds-dn"), mk("bds-sv"));
    let own_ha = (!steering_on_a).then(|| mk("bds-ha"));
    let ha = own_ha.as_ref().unwrap_or(&st);
    for ns in [&cl, &up, &st, ha, &hb, &dn, &sv] {
        sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1");
        sysctl(ns, "net.ipv6.conf.default.disable_ipv6=1");
        sysctl(ns, "net.ipv4.conf.all.rp_filter=0");
        sysctl(ns, "net.ipv4.conf.default.rp_filter=0");
    }
    sysctl(&up, "net.ipv4.ip_forward=1");
    sysctl(&dn, "net.ipv4.ip_forward=1");
    let (l1, c0, u0) = link(&cl, &up, "bs0");
    let (l2, ut, sut) = link(&up, &st, "bs1");
    let (l3, sua, ai) = link(&st, ha, "bs2");
    let (l4, sub, bi) = link(&st, &hb, "bs3");
    let (l5, ao, sda) = link(ha, &st, "bs4");
    let (l6, bo, sdb) = link(&hb, &st, "bs5");
    let (l7, sdt, dt) = link(&st, &dn, "bs6");
    let (l8, d0, s0) = link(&dn, &sv, "bs7");
    let (l9, ma, mb) = link(ha, &hb, "bs8");
    addr(&cl, &c0, CL);
    addr(&up, &u0, UP0);
    addr(&up, &ut, UPT);
    addr(&dn, &dt, DNT);
    addr(&dn, &d0, DN0);
    addr(&sv, &s0, SV);
    addr(ha, &ma, MA);
    addr(&hb, &mb, MB);
    // Static neighbours: no ARP crosses the chains. `up` and `dn` see one
    // wire between `ut` and `dt` (the steering and the instances are
    // bumps in it).
    neigh(&cl, &c0, UP0, &up, &u0);
    neigh(&up, &u0, CL, &cl, &c0);
    neigh(&up, &ut, DNT, &dn, &dt);
    neigh(&dn, &dt, UPT, &up, &ut);
    neigh(&dn, &d0, SV, &sv, &s0);
    neigh(&sv, &s0, DN0, &dn, &d0);
    neigh(ha, &ma, MB, &hb, &mb);
    neigh(&hb, &mb, MA, ha, &ma);
    ip(&cl, &["route", "add", "default", "via", UP0]);
    ip(&sv, &["route", "add", "default", "via", DN0]);
    ip(&up, &["route", "add", "10.81.20.0/24", "via", DNT, "dev", &ut]);
    ip(&dn, &["route", "add", "10.81.10.0/24", "via", UPT, "dev", &dt]);
    Net {
        cl,
        up,
        st,
        ha: own_ha,
        hb,
        _dn: dn,
        sv,
        sut,
        sua,
        sub,
        sdt,
        sda,
        sdb,
        ai,
        ao,
        bi,
        bo,
        c0,
        u0,
        _links: vec![l1, l2, l3, l4, l5, l6, l7, l8, l9],
    }
}

fn af(iface: &str) -> String {
    format!("{{ kind: af_packet, iface: {iface}, batch_size: 32 }}")
}

fn steer_chain(name: &str, trunk: &str, a: &str, b: &str) -> String {
    format!(
        "name: {name}\nbatch_size: 32\nports:\n  in: {}\n  out: {}\n  gate2: {}\nnfs:\n  - {{ name: st, type: steer, params: {{ instances: 2, buckets: {BUCKETS} }} }}\n",
        af(trunk),
        af(a),
        af(b)
    )
}

fn fw_chain(inp: &str, out: &str) -> String {
    format!(
        "name: mig\nbatch_size: 32\nports:\n  in: {}\n  out: {}\nnfs:\n  - {{ name: fw, type: firewall, params: {{ default: drop, rules: [{{ action: allow, src: 10.81.10.0/24, proto: udp }}] }} }}\n",
        af(inp),
        af(out)
    )
}

/// UDP flows from the client, echoed by the server.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// The sender waits while set.
    pause: Arc<AtomicBool>,
    /// Packets sent on flow 0 so far (every flow sends in lockstep).
    sent0: Arc<std::sync::atomic::AtomicU32>,
    /// Per flow, the tags of the server's own packets received.
    tags: Arc<Mutex<Vec<Vec<u32>>>>,
    sender: JoinHandle<Vec<u32>>,
    receiver: JoinHandle<Vec<Vec<u32>>>,
    server: JoinHandle<()>,
    clients: Vec<UdpSocket>,
    server_sock: UdpSocket,
}

/// Traffic for at most `limit` seconds.
fn start_traffic(net: &Net, limit: u64) -> Traffic {
    let server =
        netns::in_netns(net.sv.name(), || UdpSocket::bind((SV, ECHO_PORT))).unwrap().unwrap();
    server.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    braid_probe::sockopt::set_buffers(&server, 8 << 20).unwrap();
    let clients: Vec<UdpSocket> = netns::in_netns(net.cl.name(), || {
        (0..FLOWS)
            .map(|_| {
                let s = UdpSocket::bind((CL, 0)).unwrap();
                braid_probe::sockopt::set_buffers(&s, 2 << 20).unwrap();
                s.connect((SV, ECHO_PORT)).unwrap();
                s
            })
            .collect()
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server_sock = server.try_clone().unwrap();
    let st = stop.clone();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stopped_at = None;
        loop {
            if st.load(Ordering::Relaxed) {
                let t = *stopped_at.get_or_insert_with(Instant::now);
                if t.elapsed() > Duration::from_secs(1) {
                    return;
                }
            }
            if let Ok((n, from)) = server.recv_from(&mut buf) {
                let _ = server.send_to(&buf[..n], from);
            }
        }
    });
    let senders: Vec<UdpSocket> = clients.iter().map(|s| s.try_clone().unwrap()).collect();
    let st = stop.clone();
    let pause = Arc::new(AtomicBool::new(false));
    let paused = pause.clone();
    let sent0 = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let s0 = sent0.clone();
    let sender = std::thread::spawn(move || {
        let mut sent = vec![0u32; FLOWS];
        let t = Instant::now();
        while !st.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(limit) {
            if paused.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            for (i, s) in senders.iter().enumerate() {
                s.send(&payload(i as u32, sent[i])).unwrap();
                sent[i] += 1;
            }
            s0.store(sent[0], Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(4));
        }
        sent
    });
    let receivers: Vec<UdpSocket> = clients.iter().map(|s| s.try_clone().unwrap()).collect();
    for r in &receivers {
        r.set_nonblocking(true).unwrap();
    }
    let st = stop.clone();
    let tags = Arc::new(Mutex::new(vec![Vec::new(); FLOWS]));
    let tags_in = tags.clone();
    let receiver = std::thread::spawn(move || {
        let mut got = vec![Vec::new(); FLOWS];
        let mut buf = [0u8; 64];
        let mut quiet_since = Instant::now();
        loop {
            let mut any = false;
            for (i, r) in receivers.iter().enumerate() {
                while let Ok(n) = r.recv(&mut buf) {
                    any = true;
                    if n == 8 {
                        let flow = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                        let seq = u32::from_be_bytes(buf[4..8].try_into().unwrap());
                        if flow < FLOWS {
                            got[flow].push(seq);
                        } else if flow == u32::MAX as usize {
                            tags_in.lock().unwrap()[i].push(seq);
                        }
                    }
                }
            }
            if any {
                quiet_since = Instant::now();
            } else {
                if st.load(Ordering::Relaxed) && quiet_since.elapsed() > Duration::from_millis(500)
                {
                    return got;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    });
    Traffic { stop, pause, sent0, tags, sender, receiver, server, clients, server_sock }
}

/// `n` more client connections through the current path: crafted UDP
/// frames from ports 20000.. on the client's interface.
fn more_flows(net: &Net, n: u16) {
    let src_mac = netns::mac_addr(Some(net.cl.name()), &net.c0).unwrap().parse().unwrap();
    let dst_mac = netns::mac_addr(Some(net.up.name()), &net.u0).unwrap().parse().unwrap();
    let (cl, sv): (Ipv4Addr, Ipv4Addr) = (CL.parse().unwrap(), SV.parse().unwrap());
    let dev = net.c0.clone();
    let mut port =
        netns::in_netns(net.cl.name(), move || AfPacketPort::open(&AfPacketConfig::new(&dev)))
            .unwrap()
            .unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let mut b = braid_packet::Batch::with_capacity(32);
        for i in chunk {
            let mut f = FrameSpec::udp((cl, 20000 + i), (sv, 9300), 16);
            f.src_mac = src_mac;
            f.dst_mac = dst_mac;
            b.push(f.packet());
        }
        port.send(&mut b).unwrap();
        port.flush().unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// True if client flow `c` is in the upper half of the buckets (share 1/2).
fn upper_half(c: &UdpSocket) -> bool {
    let SocketAddr::V4(local) = c.local_addr().unwrap() else { panic!("IPv4") };
    let key = PartitionKey::five_tuple(FiveTuple {
        src: *local.ip(),
        dst: SV.parse().unwrap(),
        proto: 17,
        src_port: local.port(),
        dst_port: ECHO_PORT,
    });
    bucket_of(key.stable_hash(), BUCKETS) >= (BUCKETS / 2) as usize
}

/// The server sends one packet tagged `tag` on each flow; which clients
/// got it (within 300 ms).
fn server_reaches(t: &Traffic, tag: u32) -> Vec<bool> {
    for c in &t.clients {
        let SocketAddr::V4(local) = c.local_addr().unwrap() else { panic!("IPv4") };
        let to = SocketAddrV4::new(*local.ip(), local.port());
        t.server_sock.send_to(&payload(u32::MAX, tag), to).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    t.tags.lock().unwrap().iter().map(|got| got.contains(&tag)).collect()
}

/// Move share 1/2 on both steering NFs from instance `from` to `to`,
/// without a migration (the test's own look at where state is).
fn steer_by_hand(c: &Client, from: u16, to: u16) {
    let body = json!({ "flows": "share:1/2", "from": from, "to": to }).to_string();
    for chain in ["su", "sd"] {
        let path = format!("/v1/chains/{chain}/nfs/st/steer");
        c.json("POST", &path, Some(("application/json", body.as_bytes()))).unwrap();
    }
}

/// Scale NF `fw` of chain `mig` at the braidd behind `c` as `req` says:
/// one call, answered 202 with an operation, followed to its end; the
/// finished operation.
fn scale_op(c: &Client, req: &ScaleRequest) -> Value {
    let id = c.scale_async("mig", "fw", req).unwrap_or_else(|e| panic!("{e}"));
    let op = c.wait(&id, Duration::from_secs(120)).unwrap();
    assert_ne!(op["state"], "running", "{op:#}");
    op
}

/// The result of a scale that must succeed (`logs`: the braidds', shown
/// when it did not).
fn succeeded(op: &Value, logs: &[&common::Braidd]) -> Value {
    if op["state"] != "succeeded" {
        let logs: Vec<String> = logs.iter().map(|b| b.log()).collect();
        panic!("{op:#}\n{}", logs.join("\n---\n"));
    }
    op["result"].clone()
}

/// Each step of an operation: (step, chain, outcome).
fn steps(op: &Value) -> Vec<(String, String, String)> {
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    op["progress"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {op:#}"))
        .iter()
        .map(|v| (s(v, "step"), s(v, "chain"), s(v, "outcome")))
        .collect()
}

fn step(name: &str, chain: &str, outcome: &str) -> (String, String, String) {
    (name.into(), chain.into(), outcome.into())
}

/// The steering points of `su` and `sd` on braidd `s`.
fn steering(s: &common::Braidd) -> Vec<SteerPoint> {
    let steer = |chain: &str, port: &str| SteerPoint {
        socket: Some(s.socket.clone()),
        chain: chain.into(),
        nf: "st".into(),
        port: port.into(),
    };
    vec![steer("su", "in"), steer("sd", "out")]
}

/// Scale out share 1/2 of `mig`/`fw` from instance 0 to 1 at `to`,
/// deploying the chain there on `ports`.
fn scale_out_request(s: &common::Braidd, to: &str, ports: (&str, &str), ms: u64) -> ScaleRequest {
    ScaleRequest {
        direction: Direction::Out,
        to: to.into(),
        share: Some(Share { k: 1, n: 2 }),
        steer: steering(s),
        here: 0,
        there: 1,
        deploy: Some(DeployPorts { in_iface: ports.0.into(), out_iface: ports.1.into() }),
        timeout_ms: Some(ms),
    }
}

/// The steering tables of `su` and `sd`: instance 1 has the upper half
/// (or nothing).
fn assert_tables(cs: &Client, upper_on_1: bool, when: &str) {
    for chain in ["su", "sd"] {
        let c = cs.chain(chain).unwrap();
        let want: Vec<u64> =
            (0..BUCKETS).map(|b| u64::from(upper_on_1 && b >= BUCKETS / 2)).collect();
        let got: Vec<u64> = match c["descriptor"]["nfs"][0]["params"]["table"].as_array() {
            Some(t) => t.iter().map(|v| v.as_u64().unwrap()).collect(),
            None => vec![0; BUCKETS as usize],
        };
        assert_eq!(got, want, "{chain}'s table {when}");
    }
}

#[test]
fn scale_out_moves_half_the_buckets_to_b_and_scale_in_merges_them_back_without_a_loss() {
    let _one = braid_testkit::one_at_a_time();
    if braid_testkit::skip_unless(netns::is_root(), "braid scale", "needs root for namespaces") {
        return;
    }
    let net = net(false);
    let (ds, da, db) = (TempDir::new("scale-s"), TempDir::new("scale-a"), TempDir::new("scale-b"));
    let quiet = ["--checkpoint-interval-ms", "0"];
    let s = Braidd::start_as_root(ds.path(), Some(net.st.name()), &quiet);
    let (la, lb) = (format!("{MA}:9480"), format!("{MB}:9480"));
    let a = Braidd::start_as_root(
        da.path(),
        Some(net.ha().name()),
        &["--checkpoint-interval-ms", "0", "--migrate-listen", &la],
    );
    let b = Braidd::start_as_root(
        db.path(),
        Some(net.hb.name()),
        &["--checkpoint-interval-ms", "0", "--migrate-listen", &lb],
    );
    let (cs, ca, cb) = (s.client(), a.client(), b.client());
    cs.deploy(&steer_chain("su", &net.sut, &net.sua, &net.sub)).unwrap();
    cs.deploy(&steer_chain("sd", &net.sdt, &net.sda, &net.sdb)).unwrap();
    ca.deploy(&fw_chain(&net.ai, &net.ao)).unwrap();
    more_flows(&net, 1000);
    let traffic = start_traffic(&net, 50);
    std::thread::sleep(Duration::from_millis(500));
    let moved: Vec<bool> = traffic.clients.iter().map(upper_half).collect();
    assert!(moved.contains(&true) && moved.contains(&false), "all flows in one half: {moved:?}");

    let out = scale_out_request(&s, &lb, (&net.bi, &net.bo), 5000);
    let t = Instant::now();
    let op = scale_op(&ca, &out);
    let r = succeeded(&op, &[&a, &b, &s]);
    eprintln!("scale out in {:?}: {op:#}", t.elapsed());
    assert_eq!((op["kind"].as_str(), op["nf"].as_str()), (Some("scale-out"), Some("fw")));
    // Each step, in order: the tables checked, then at the switch each
    // steering NF moved the upper half (the drain marker with it), then
    // the migration's end.
    assert_eq!(
        steps(&op),
        [
            step("check_steering", "", "done"),
            step("steer", "su", "done"),
            step("steer", "sd", "done"),
            step("migrate", "", "done")
        ],
        "{op:#}"
    );
    for st in &op["progress"]["steps"].as_array().unwrap()[1..3] {
        assert_eq!(st["buckets"], json!([BUCKETS / 2, BUCKETS - 1]), "{st}");
        assert_eq!((st["from"].as_u64(), st["to"].as_u64()), (Some(0), Some(1)), "{st}");
    }
    assert_eq!(r["steps"], op["progress"]["steps"]);
    assert_eq!((r["flows"].as_str(), r["outcome"].as_str()), (Some("share:1/2"), Some("migrated")));
    assert_eq!(r["buckets"], json!([BUCKETS / 2, BUCKETS - 1]));
    assert_eq!(r["deployed_at_destination"], true);
    assert_eq!(r["packets_dropped_at_destination"], 0);
    // About half the 1,000 extra connections and the live flows moved:
    // A dropped them after B's Done.
    let dropped = r["flows_dropped_at_source"].as_u64().unwrap();
    assert!((350..=650).contains(&dropped), "A dropped {dropped} moved flows");
    assert_tables(&cs, true, "after the scale-out");
    // The audit log has the call (accepted as an operation) and, when it
    // ended, its outcome.
    let scale = "/v1/chains/mig/nfs/fw/scale";
    let accepted = format!("accepted as operation {}", op["id"].as_str().unwrap());
    audited(&a, ("POST", scale, 202), &accepted);
    let done = format!("/v1/operations/{}", op["id"].as_str().unwrap());
    audited(
        &a,
        ("POST", &done, 200),
        "scaled out NF `fw` of chain `mig`: flows share:1/2 from instance 0 to 1",
    );
    std::thread::sleep(Duration::from_millis(500));
    // State: every flow admits the server's packets (the moved ones
    // through B, whose firewall has only the moved connections)...
    assert_eq!(server_reaches(&traffic, 1), vec![true; FLOWS], "after the scale-out");
    // ... and A no longer holds the moved ones: with the client paused
    // (its packets would open the connections again: the rule admits
    // them) and the moved buckets steered back to A by hand, the
    // server's packets on the moved flows are dropped there, while A
    // still admits them on its own flows.
    traffic.pause.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    steer_by_hand(&cs, 1, 0);
    let reached = server_reaches(&traffic, 2);
    steer_by_hand(&cs, 0, 1);
    traffic.pause.store(false, Ordering::Relaxed);
    for (i, (m, r)) in moved.iter().zip(&reached).enumerate() {
        assert_eq!(*r, !m, "flow {i} (moved: {m}): the server's packet through A");
    }
    std::thread::sleep(Duration::from_millis(300));

    // Scale in: B's flows merge back into A, which kept serving its own.
    let back_in = ScaleRequest {
        direction: Direction::In,
        to: la.clone(),
        share: None,
        here: 1,
        there: 0,
        deploy: None,
        ..out.clone()
    };
    let op = scale_op(&cb, &back_in);
    let r = succeeded(&op, &[&a, &b, &s]);
    eprintln!("scale in: {op:#}");
    assert_eq!(op["kind"], "scale-in");
    assert_eq!(
        steps(&op),
        [
            step("check_steering", "", "done"),
            step("steer", "su", "done"),
            step("steer", "sd", "done"),
            step("migrate", "", "done"),
            step("remove", "mig", "done")
        ],
        "{op:#}"
    );
    assert_eq!(r["removed"], "mig");
    assert_eq!(r["buckets"], json!([BUCKETS / 2, BUCKETS - 1]));
    assert_eq!(r["packets_dropped_at_destination"], 0);
    assert!(cb.chains().unwrap().is_empty(), "B kept its chain");
    assert_tables(&cs, false, "after the scale-in");
    std::thread::sleep(Duration::from_millis(500));
    // A holds every flow again: the server's packets on all of them pass.
    assert_eq!(server_reaches(&traffic, 3), vec![true; FLOWS], "after the scale-in");
    traffic.stop.store(true, Ordering::Relaxed);
    let sent = traffic.sender.join().unwrap();
    let got = traffic.receiver.join().unwrap();
    traffic.server.join().unwrap();
    check_exact(&sent, &got);
    drop((a, b, s));
}

/// The `at` of each `steer` step of an operation.
fn steered_at(op: &Value) -> Vec<String> {
    let steps = op["progress"]["steps"].as_array().cloned().unwrap_or_default();
    steps
        .iter()
        .filter(|s| s["step"] == "steer")
        .map(|s| s["at"].as_str().unwrap().into())
        .collect()
}

#[test]
fn steering_nfs_on_the_instances_own_braidd_are_steered_in_process() {
    let _one = braid_testkit::one_at_a_time();
    if braid_testkit::skip_unless(netns::is_root(), "braid scale", "needs root for namespaces") {
        return;
    }
    let net = net(true);
    let (da, db) = (TempDir::new("scaleown-a"), TempDir::new("scaleown-b"));
    let (la, lb) = (format!("{MA}:9480"), format!("{MB}:9480"));
    let a = Braidd::start_as_root(
        da.path(),
        Some(net.ha().name()),
        &["--checkpoint-interval-ms", "0", "--migrate-listen", &la],
    );
    let b = Braidd::start_as_root(
        db.path(),
        Some(net.hb.name()),
        &["--checkpoint-interval-ms", "0", "--migrate-listen", &lb],
    );
    let (ca, cb) = (a.client(), b.client());
    ca.deploy(&steer_chain("su", &net.sut, &net.sua, &net.sub)).unwrap();
    ca.deploy(&steer_chain("sd", &net.sdt, &net.sda, &net.sdb)).unwrap();
    ca.deploy(&fw_chain(&net.ai, &net.ao)).unwrap();
    let traffic = start_traffic(&net, 30);
    std::thread::sleep(Duration::from_millis(500));

    // Out, with steering points that name no socket: A's own steering
    // NFs, moved in-process at the switch.
    let mut out = scale_out_request(&a, &lb, (&net.bi, &net.bo), 5000);
    out.steer.iter_mut().for_each(|p| p.socket = None);
    let op = scale_op(&ca, &out);
    succeeded(&op, &[&a, &b]);
    assert_eq!(steered_at(&op), ["this braidd", "this braidd"], "{op:#}");
    assert_tables(&ca, true, "after the scale-out");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server_reaches(&traffic, 1), vec![true; FLOWS], "after the scale-out");

    // In, from B: the same steering NFs, through A's socket.
    let back = ScaleRequest {
        direction: Direction::In,
        to: la.clone(),
        share: None,
        steer: steering(&a),
        here: 1,
        there: 0,
        deploy: None,
        timeout_ms: Some(5000),
    };
    let op = scale_op(&cb, &back);
    let r = succeeded(&op, &[&a, &b]);
    let socket = a.socket.display().to_string();
    assert_eq!(steered_at(&op), [socket.clone(), socket], "{op:#}");
    assert_eq!(r["removed"], "mig");
    assert_tables(&ca, false, "after the scale-in");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server_reaches(&traffic, 2), vec![true; FLOWS], "after the scale-in");
    traffic.stop.store(true, Ordering::Relaxed);
    let sent = traffic.sender.join().unwrap();
    let got = traffic.receiver.join().unwrap();
    traffic.server.join().unwrap();
    check_exact(&sent, &got);
    drop((a, b));
}

/// POST `body` to `/v1/chains/{chain}/nfs/{nf}/{what}` and expect a
/// refusal: `status`, `kind`, a message containing `want`.
fn refused(c: &Client, path: &str, body: &str, (status, kind, want): (u16, &str, &str)) {
    match c.json("POST", path, Some(("application/json", body.as_bytes()))) {
        Err(ClientError::Api { status: st, kind: k, message, .. }) => {
            assert_eq!((st, k.as_str()), (status, kind), "{body}: {message}");
            assert!(message.contains(want), "{body}: `{message}` does not say `{want}`");
        }
        other => panic!("{body}: not refused: {other:?}"),
    }
}

/// Braidd `b`'s audit log has a line of (method, path, status) whose
/// `what` starts with `what`.
fn audited(b: &common::Braidd, (method, path, status): (&str, &str, u16), what: &str) {
    let audit = std::fs::read_to_string(b.dir.join("state/audit.log")).unwrap();
    let found = audit.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).any(|l| {
        l["method"] == method
            && l["path"] == path
            && l["status"] == status
            && l["what"].as_str().is_some_and(|w| w.starts_with(what))
    });
    assert!(found, "no {method} {path} {status} `{what}...` in the audit log:\n{audit}");
}

fn fw_packets_in(c: &Client) -> u64 {
    let chain = c.chain("mig").unwrap();
    let stages = chain["stats"]["stages"].as_array().cloned().unwrap_or_default();
    let fw = stages.iter().find(|s| s["name"] == "fw").unwrap_or_else(|| panic!("{chain}"));
    fw["packets_in"].as_u64().unwrap()
}

#[test]
fn bad_requests_are_refused_and_the_chain_keeps_serving() {
    let _one = braid_testkit::one_at_a_time();
    if braid_testkit::skip_unless(netns::is_root(), "braid scale", "needs root for namespaces") {
        return;
    }
    let net = net(false);
    let (ds, da) = (TempDir::new("scalebad-s"), TempDir::new("scalebad-a"));
    let quiet = ["--checkpoint-interval-ms", "0"];
    let s = Braidd::start_as_root(ds.path(), Some(net.st.name()), &quiet);
    let a = Braidd::start_as_root(da.path(), Some(net.ha().name()), &quiet);
    let (cs, ca) = (s.client(), a.client());
    cs.deploy(&steer_chain("su", &net.sut, &net.sua, &net.sub)).unwrap();
    cs.deploy(&steer_chain("sd", &net.sdt, &net.sda, &net.sdb)).unwrap();
    ca.deploy(&fw_chain(&net.ai, &net.ao)).unwrap();
    let traffic = start_traffic(&net, 60);
    std::thread::sleep(Duration::from_millis(500));
    let before = fw_packets_in(&ca);

    let good =
        serde_json::to_value(scale_out_request(&s, &format!("{MB}:9480"), ("bi", "bo"), 3000))
            .unwrap();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        change(&mut v);
        v.to_string()
    };
    let scale = "/v1/chains/mig/nfs/fw/scale";
    for (path, body, want) in [
        (scale, "{".to_string(), (400, "bad_body", "scale request: EOF")),
        (
            scale,
            with(&|v| v["direction"] = "sideways".into()),
            (400, "bad_body", "unknown variant `sideways`"),
        ),
        (scale, with(&|v| v["shares"] = json!(1)), (400, "bad_body", "unknown field `shares`")),
        (
            scale,
            with(&|v| v["steer"] = json!([])),
            (400, "bad_request", "steer: no steering point"),
        ),
        (
            scale,
            with(&|v| v["steer"][1]["port"] = "up".into()),
            (400, "bad_request", "steer[1].port: `up`: expected `in` or `out`"),
        ),
        (
            scale,
            with(&|v| v["there"] = json!(0)),
            (400, "bad_request", "there: both instances are 0"),
        ),
        (
            scale,
            with(&|v| v["share"] = json!({ "k": 2, "n": 2 })),
            (400, "bad_request", "share 2/2: need N >= 2"),
        ),
        (
            scale,
            with(&|v| v["share"] = json!({ "k": 1, "n": 3 })),
            (400, "bad_request", "share 1/3: at `su/st`: not whole buckets of 256"),
        ),
        (
            scale,
            with(&|v| v["direction"] = "in".into()),
            (400, "bad_request", "share: only for direction `out`"),
        ),
        (
            scale,
            with(&|v| v["there"] = json!(5)),
            (400, "bad_request", "there: instance 5 does not exist at `su/st` (2 instances)"),
        ),
        (
            "/v1/chains/nope/nfs/fw/scale",
            good.to_string(),
            (404, "unknown_chain", "no chain named `nope`"),
        ),
        (
            "/v1/chains/mig/nfs/nat/scale",
            good.to_string(),
            (404, "unknown_nf", "no NF named `nat`"),
        ),
        // A steering point that is not one: this braidd's own firewall
        // (read in-process), a chain S does not run, a braidd that is not
        // there.
        (
            scale,
            with(&|v| v["steer"][0] = json!({ "chain": "mig", "nf": "fw", "port": "in" })),
            (400, "bad_request", "steer[0]: `mig/fw` is a `firewall`, not a `steer` NF"),
        ),
        (
            scale,
            with(&|v| v["steer"][1]["chain"] = "zz".into()),
            (404, "unknown_steering_point", "no chain named `zz`"),
        ),
        (
            scale,
            with(&|v| v["steer"][1]["socket"] = "/nonexistent/braidd.sock".into()),
            (
                422,
                "steering_unreachable",
                "steering point `sd/st`: cannot connect to braidd at /nonexistent/braidd.sock",
            ),
        ),
        // A scale-in of an instance that owns nothing.
        (
            scale,
            with(&|v| {
                v["direction"] = "in".into();
                v["here"] = 1.into();
                v["there"] = 0.into();
                v.as_object_mut().unwrap().remove("share");
                v.as_object_mut().unwrap().remove("deploy");
            }),
            (
                409,
                "conflict",
                "instance 1 owns no bucket at `su/st`: nothing to merge; nothing changed",
            ),
        ),
    ] {
        refused(&ca, path, &body, want);
    }

    // A `mapping: processes` chain is refused as a migration of it is
    // (its NFs' state is in their own processes).
    let (x0, x1) = (netns::unique_ifname("bsx0"), netns::unique_ifname("bsx1"));
    let extra = LinkGuard::veth(&x0, &x1).unwrap();
    for x in [&x0, &x1] {
        extra.move_end_to(x, net.ha()).unwrap();
        netns::set_up(Some(net.ha().name()), x).unwrap();
    }
    let processes = format!(
        "name: pq\nmapping: processes\nports:\n  in: {}\n  out: {}\nnfs:\n  - {{ name: fw, type: firewall, params: {{ default: allow }} }}\n",
        af(&x0),
        af(&x1)
    );
    ca.deploy(&processes).unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    let pq = "/v1/chains/pq/nfs/fw/scale";
    refused(&ca, pq, &good.to_string(), (409, "processes_chain", "mapping: processes"));
    ca.remove("pq").unwrap();

    // A destination that accepts the connection and never answers: the
    // scale runs (until its 3 s timeout) and holds the NF; a second scale
    // or a migration of it is refused meanwhile.
    let silent =
        netns::in_netns(net.hb.name(), || std::net::TcpListener::bind((MB, 0))).unwrap().unwrap();
    let to = silent.local_addr().unwrap().to_string();
    let req: ScaleRequest = serde_json::from_value(with_to(&good, &to)).unwrap();
    let id = ca.scale_async("mig", "fw", &req).unwrap();
    refused(
        &ca,
        scale,
        &good.to_string(),
        (409, "busy", "NF `fw` of chain `mig` is being moved by a `scale-out` operation"),
    );
    let migrate = json!({ "to": to, "flows": "share:1/2", "switch": { "redirect": [], "restore": [], "markers": [],
        "steer": [{ "chain": "su", "nf": "st", "from": 0, "to": 1, "port": "in", "socket": s.socket }] } });
    refused(
        &ca,
        "/v1/chains/mig/nfs/fw/migrate",
        &migrate.to_string(),
        (409, "busy", "`scale-out` operation"),
    );
    let op = ca.wait(&id, Duration::from_secs(30)).unwrap();
    assert_eq!(
        (op["state"].as_str(), op["status"].as_u64()),
        (Some("failed"), Some(422)),
        "{op:#}"
    );
    assert_eq!(op["error"]["error"], "migration_failed", "{op:#}");
    let message = op["error"]["message"].as_str().unwrap();
    assert!(message.contains("failed and was rolled back"), "{message}");
    assert!(message.contains("waiting for the destination's challenge"), "{message}");
    assert_eq!(steps(&op), [step("check_steering", "", "done"), step("migrate", "", "failed")]);
    drop(silent);
    // Each refusal is in the audit log, with its reason.
    audited(&a, ("POST", scale, 400), "refused: steer: no steering point");
    audited(&a, ("POST", scale, 409), "refused: NF `fw` of chain `mig` is being moved");

    // Nothing changed: one scale operation (the refused calls made none),
    // the tables as they were, the chain serving, its counters going up,
    // and every packet echoed exactly once and in order.
    let ops = ca.json("GET", "/v1/operations", None).unwrap();
    let scales: Vec<&Value> = ops["operations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"].as_str().is_some_and(|k| k.starts_with("scale")))
        .collect();
    assert_eq!(scales.len(), 1, "{ops:#}");
    assert_tables(&cs, false, "after the refusals");
    assert_eq!(ca.chain("mig").unwrap()["state"], "running");
    std::thread::sleep(Duration::from_millis(300));
    let after = fw_packets_in(&ca);
    assert!(after > before + 100, "fw's packets_in went from {before} to {after}");
    traffic.stop.store(true, Ordering::Relaxed);
    let sent = traffic.sender.join().unwrap();
    let got = traffic.receiver.join().unwrap();
    traffic.server.join().unwrap();
    check_exact(&sent, &got);
    drop((a, s));
}

/// `good` with another `to`.
fn with_to(good: &Value, to: &str) -> Value {
    let mut v = good.clone();
    v["to"] = to.into();
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A scale-out of half the flows against a full migration of the
/// instance, both through the steering, interleaved round by round under
/// the same live traffic, with `BRAID_SCALE_FLOWS` connections (20,000 by
/// default) in the firewall. Each round: scale out share 1/2 A → B (B
/// deploys the chain), scale in B → A; then a full migration A → B
/// (`flows: all`, every bucket), scale in B → A. Prints a table
/// (docs/migration.md, "Scale out and in"):
///
/// `cargo test -p braid-daemon --test scale -- --ignored --nocapture measure`
#[test]
#[ignore = "measurement (about a minute); run by hand"]
fn measure_scale_out_against_a_full_migration() {
    let _one = braid_testkit::one_at_a_time();
    if braid_testkit::skip_unless(netns::is_root(), "braid scale", "needs root for namespaces") {
        return;
    }
    let conns: u16 =
        std::env::var("BRAID_SCALE_FLOWS").ok().and_then(|v| v.parse().ok()).unwrap_or(20000);
    let rounds: usize =
        std::env::var("BRAID_SCALE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let net = net(false);
    let (ds, da, db) =
        (TempDir::new("scalem-s"), TempDir::new("scalem-a"), TempDir::new("scalem-b"));
    let s =
        Braidd::start_as_root(ds.path(), Some(net.st.name()), &["--checkpoint-interval-ms", "0"]);
    let (la, lb) = (format!("{MA}:9480"), format!("{MB}:9480"));
    let a = Braidd::start_as_root(
        da.path(),
        Some(net.ha().name()),
        &["--checkpoint-interval-ms", "0", "--migrate-listen", &la],
    );
    let b = Braidd::start_as_root(
        db.path(),
        Some(net.hb.name()),
        &["--checkpoint-interval-ms", "0", "--migrate-listen", &lb],
    );
    let (cs, ca, cb) = (s.client(), a.client(), b.client());
    cs.deploy(&steer_chain("su", &net.sut, &net.sua, &net.sub)).unwrap();
    cs.deploy(&steer_chain("sd", &net.sdt, &net.sda, &net.sdb)).unwrap();
    ca.deploy(&fw_chain(&net.ai, &net.ao)).unwrap();
    more_flows(&net, conns);
    let traffic = start_traffic(&net, 600);
    std::thread::sleep(Duration::from_millis(500));
    let out = scale_out_request(&s, &lb, (&net.bi, &net.bo), 10000);
    let back = ScaleRequest {
        direction: Direction::In,
        to: la.clone(),
        share: None,
        here: 1,
        there: 0,
        deploy: None,
        ..out.clone()
    };
    let full_switch = json!({ "redirect": [], "restore": [], "markers": [], "steer": [
        { "socket": s.socket.display().to_string(), "chain": "su", "nf": "st", "from": 0, "to": 1, "port": "in" },
        { "socket": s.socket.display().to_string(), "chain": "sd", "nf": "st", "from": 0, "to": 1, "port": "out" }] });
    const KINDS: [&str; 2] = ["scale-out 1/2", "full migration"];
    const BACK: usize = usize::MAX;
    let mut rows: Vec<(usize, serde_json::Value)> = Vec::new();
    let mut steps: Vec<(usize, u32)> = vec![(BACK, 0)];
    let seq0 = || traffic.sent0.load(Ordering::Relaxed);
    for round in 0..rounds {
        for (k, kind) in KINDS.iter().enumerate() {
            steps.push((k, seq0()));
            let r = if k == 0 {
                succeeded(&scale_op(&ca, &out), &[&a, &b, &s])
            } else {
                let req = json!({ "to": lb, "mode": "statelet", "flows": "all", "switch": full_switch,
                                  "deploy": { "in": net.bi, "out": net.bo }, "timeout_ms": 10000 });
                let id = ca.migrate_async("mig", "fw", &req).unwrap();
                let op = ca.wait(&id, Duration::from_secs(60)).unwrap();
                assert_eq!(op["state"], "succeeded", "round {round} {kind}: {op:#}");
                op["result"].clone()
            };
            eprintln!("round {round} {kind}: {r}");
            rows.push((k, r));
            std::thread::sleep(Duration::from_millis(200));
            steps.push((BACK, seq0()));
            let r = succeeded(&scale_op(&cb, &back), &[&a, &b, &s]);
            eprintln!("  back: {r}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    traffic.stop.store(true, Ordering::Relaxed);
    let sent = traffic.sender.join().unwrap();
    let got = traffic.receiver.join().unwrap();
    traffic.server.join().unwrap();
    let mut lost = std::collections::BTreeMap::<usize, u64>::new();
    let mut disorder = 0;
    for (n, g) in sent.iter().zip(&got) {
        disorder += g.windows(2).filter(|w| w[1] <= w[0]).count();
        let seen: std::collections::BTreeSet<u32> = g.iter().copied().collect();
        for seq in (0..*n).filter(|q| !seen.contains(q)) {
            let step = steps.iter().rev().find(|(_, from)| *from <= seq).map_or(BACK, |s| s.0);
            *lost.entry(step).or_default() += 1;
        }
    }
    let total: u32 = sent.iter().sum();
    eprintln!(
        "\n{conns} extra connections, {FLOWS} live UDP flows at 250 packets/s each way; {rounds} rounds; {total} packets sent, {} lost ({} while scaling in or between steps), {disorder} out of order or duplicated\n",
        lost.values().sum::<u64>(),
        lost.get(&BACK).copied().unwrap_or(0)
    );
    eprintln!("| move | total ms | until switch ms | switch → Done ms (outage) | state bytes | flows dropped at A | packets held at B (peak) | live packets lost |");
    eprintln!("|---|---|---|---|---|---|---|---|");
    let mut med = Vec::new();
    for (k, kind) in KINDS.iter().enumerate() {
        let col = |f: &dyn Fn(&serde_json::Value) -> f64| -> Vec<f64> {
            rows.iter().filter(|(i, _)| *i == k).map(|(_, r)| f(r)).collect()
        };
        let range = |v: Vec<f64>| {
            let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(l, h), x| (l.min(*x), h.max(*x)));
            (median(v), format!("{lo:.0}–{hi:.0}"))
        };
        let g = |key: &'static str| move |r: &serde_json::Value| r[key].as_f64().unwrap_or(0.0);
        let (t, tr) = range(col(&g("total_ms")));
        let (u, ur) = range(col(&g("until_switch_ms")));
        let (o, or) = range(col(&|r| g("total_ms")(r) - g("until_switch_ms")(r)));
        let (b, br) = range(col(&g("state_bytes")));
        let (d, _) = range(col(&g("flows_dropped_at_source")));
        let (h, hr) = range(col(&g("packets_buffered")));
        med.push((o, b));
        eprintln!(
            "| {kind} | {t:.0} ({tr}) | {u:.0} ({ur}) | **{o:.0}** ({or}) | {b:.0} ({br}) | {d:.0} | {h:.0} ({hr}) | {} |",
            lost.get(&k).copied().unwrap_or(0)
        );
    }
    eprintln!(
        "\nratios scale-out / full (medians): outage {:.2}, state bytes {:.2}",
        med[0].0 / med[1].0,
        med[0].1 / med[1].1
    );
    drop((a, b, s));
}
