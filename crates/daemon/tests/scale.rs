//! `braid scale out|in` between two braidd, with `steer` NFs in front of
//! the instances, through the library the command is a thin client of.
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
//! removes B's chain. The oracle: every packet of every flow echoed
//! exactly once and in order over the whole run; after the scale-out, a
//! packet the server sends on each flow reaches the client (through B
//! for the moved flows: only the moved connection admits it), and with
//! the moved buckets steered back to A by hand, A drops the server's
//! packets on the moved flows (their state is no longer on A) while it
//! still admits them on its own flows.

mod common;
mod netlab;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use braid_daemon::scale::{scale_in, scale_out, ScaleRequest, SteerPoint};
use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::netns::{self, LinkGuard, NetnsGuard};
use braid_io::Port;
use braid_nf::steer::bucket_of;
use braid_nf::PartitionKey;
use braid_packet::flow::FiveTuple;
use braid_packet::wire::build::FrameSpec;
use common::{Braidd, TempDir};
use netlab::{addr, check_exact, ip, link, neigh, payload, sysctl};
use serde_json::json;

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
    ha: NetnsGuard,
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

fn net() -> Net {
    let mk = |p: &str| NetnsGuard::create(&netns::unique_name(p)).unwrap();
    let (cl, up, st, ha, hb, dn, sv) = (
        mk("bds-cl"),
        mk("bds-up"),
        mk("bds-st"),
        mk("bds-ha"),
        mk("bds-hb"),
        mk("bds-dn"),
        mk("bds-sv"),
    );
    for ns in [&cl, &up, &st, &ha, &hb, &dn, &sv] {
        sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1");
        sysctl(ns, "net.ipv6.conf.default.disable_ipv6=1");
        sysctl(ns, "net.ipv4.conf.all.rp_filter=0");
        sysctl(ns, "net.ipv4.conf.default.rp_filter=0");
    }
    sysctl(&up, "net.ipv4.ip_forward=1");
    sysctl(&dn, "net.ipv4.ip_forward=1");
    let (l1, c0, u0) = link(&cl, &up, "bs0");
    let (l2, ut, sut) = link(&up, &st, "bs1");
    let (l3, sua, ai) = link(&st, &ha, "bs2");
    let (l4, sub, bi) = link(&st, &hb, "bs3");
    let (l5, ao, sda) = link(&ha, &st, "bs4");
    let (l6, bo, sdb) = link(&hb, &st, "bs5");
    let (l7, sdt, dt) = link(&st, &dn, "bs6");
    let (l8, d0, s0) = link(&dn, &sv, "bs7");
    let (l9, ma, mb) = link(&ha, &hb, "bs8");
    addr(&cl, &c0, CL);
    addr(&up, &u0, UP0);
    addr(&up, &ut, UPT);
    addr(&dn, &dt, DNT);
    addr(&dn, &d0, DN0);
    addr(&sv, &s0, SV);
    addr(&ha, &ma, MA);
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
    neigh(&ha, &ma, MB, &hb, &mb);
    neigh(&hb, &mb, MA, &ha, &ma);
    ip(&cl, &["route", "add", "default", "via", UP0]);
    ip(&sv, &["route", "add", "default", "via", DN0]);
    ip(&up, &["route", "add", "10.81.20.0/24", "via", DNT, "dev", &ut]);
    ip(&dn, &["route", "add", "10.81.10.0/24", "via", UPT, "dev", &dt]);
    Net {
        cl,
        up,
        st,
        ha,
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
fn steer_by_hand(c: &braid_daemon::client::Client, from: u16, to: u16) {
    let body = json!({ "flows": "share:1/2", "from": from, "to": to }).to_string();
    for chain in ["su", "sd"] {
        let path = format!("/v1/chains/{chain}/nfs/st/steer");
        c.json("POST", &path, Some(("application/json", body.as_bytes()))).unwrap();
    }
}

#[test]
fn scale_out_moves_half_the_buckets_to_b_and_scale_in_merges_them_back_without_a_loss() {
    if braid_testkit::skip_unless(netns::is_root(), "braid scale", "needs root for namespaces") {
        return;
    }
    let net = net();
    let (ds, da, db) = (TempDir::new("scale-s"), TempDir::new("scale-a"), TempDir::new("scale-b"));
    let quiet = ["--checkpoint-interval-ms", "0"];
    let s = Braidd::start(ds.path(), Some(net.st.name()), &quiet);
    let (la, lb) = (format!("{MA}:9480"), format!("{MB}:9480"));
    let a = Braidd::start(
        da.path(),
        Some(net.ha.name()),
        &["--checkpoint-interval-ms", "0", "--migrate-listen", &la],
    );
    let b = Braidd::start(
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

    let steer = |chain: &str, port: &str| SteerPoint {
        socket: Some(s.socket.clone()),
        chain: chain.into(),
        nf: "st".into(),
        port: port.into(),
    };
    let steering = vec![steer("su", "in"), steer("sd", "out")];
    let out = ScaleRequest {
        chain: "mig".into(),
        nf: "fw".into(),
        to: lb.clone(),
        steer: steering.clone(),
        here: 0,
        there: 1,
        deploy: Some((net.bi.clone(), net.bo.clone())),
        timeout: Duration::from_secs(5),
    };
    let t = Instant::now();
    let r = scale_out(&ca, &out, (1, 2), |_| {})
        .unwrap_or_else(|e| panic!("{e}\nA:\n{}\nB:\n{}\nS:\n{}", a.log(), b.log(), s.log()));
    eprintln!("scale out in {:?}: {r:#}", t.elapsed());
    assert_eq!((r["flows"].as_str(), r["outcome"].as_str()), (Some("share:1/2"), Some("migrated")));
    assert_eq!(r["deployed_at_destination"], true);
    assert_eq!(r["packets_dropped_at_destination"], 0);
    // About half the 1,000 extra connections and the live flows moved:
    // A dropped them after B's Done.
    let dropped = r["flows_dropped_at_source"].as_u64().unwrap();
    assert!((350..=650).contains(&dropped), "A dropped {dropped} moved flows");
    // The steering tables: the upper half on instance 1.
    for chain in ["su", "sd"] {
        let c = cs.chain(chain).unwrap();
        let table = c["descriptor"]["nfs"][0]["params"]["table"].as_array().unwrap().clone();
        let want: Vec<u64> = (0..BUCKETS).map(|b| u64::from(b >= BUCKETS / 2)).collect();
        let got: Vec<u64> = table.iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(got, want, "{chain}'s table");
    }
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
    let back_in = ScaleRequest { to: la.clone(), here: 1, there: 0, deploy: None, ..out.clone() };
    let r = scale_in(&cb, &back_in, |_| {})
        .unwrap_or_else(|e| panic!("{e}\nA:\n{}\nB:\n{}\nS:\n{}", a.log(), b.log(), s.log()));
    eprintln!("scale in: {r:#}");
    assert_eq!(r["removed"], "mig");
    assert_eq!(r["buckets"], json!([BUCKETS / 2, BUCKETS - 1]));
    assert_eq!(r["packets_dropped_at_destination"], 0);
    assert!(cb.chains().unwrap().is_empty(), "B kept its chain");
    for chain in ["su", "sd"] {
        let c = cs.chain(chain).unwrap();
        let table = c["descriptor"]["nfs"][0]["params"]["table"].as_array().unwrap().clone();
        assert!(table.iter().all(|v| v == 0), "{chain}'s table after the scale-in");
    }
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
    if braid_testkit::skip_unless(netns::is_root(), "braid scale", "needs root for namespaces") {
        return;
    }
    let conns: u16 =
        std::env::var("BRAID_SCALE_FLOWS").ok().and_then(|v| v.parse().ok()).unwrap_or(20000);
    let rounds: usize =
        std::env::var("BRAID_SCALE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let net = net();
    let (ds, da, db) =
        (TempDir::new("scalem-s"), TempDir::new("scalem-a"), TempDir::new("scalem-b"));
    let s = Braidd::start(ds.path(), Some(net.st.name()), &["--checkpoint-interval-ms", "0"]);
    let (la, lb) = (format!("{MA}:9480"), format!("{MB}:9480"));
    let a = Braidd::start(
        da.path(),
        Some(net.ha.name()),
        &["--checkpoint-interval-ms", "0", "--migrate-listen", &la],
    );
    let b = Braidd::start(
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
    let steer = |chain: &str, port: &str| SteerPoint {
        socket: Some(s.socket.clone()),
        chain: chain.into(),
        nf: "st".into(),
        port: port.into(),
    };
    let out = ScaleRequest {
        chain: "mig".into(),
        nf: "fw".into(),
        to: lb.clone(),
        steer: vec![steer("su", "in"), steer("sd", "out")],
        here: 0,
        there: 1,
        deploy: Some((net.bi.clone(), net.bo.clone())),
        timeout: Duration::from_secs(10),
    };
    let back = ScaleRequest { to: la.clone(), here: 1, there: 0, deploy: None, ..out.clone() };
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
                scale_out(&ca, &out, (1, 2), |_| {}).unwrap_or_else(|e| panic!("{kind}: {e}"))
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
            let r = scale_in(&cb, &back, |_| {}).unwrap_or_else(|e| panic!("back: {e}"));
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
