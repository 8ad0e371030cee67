//! Differential tests against the Linux kernel (issue 13): the same
//! crafted frames go through a namespace that forwards with the kernel
//! (plain FIB, nftables `ct state`, masquerade) and through braid's NF in
//! process, and what comes out is compared packet by packet.
//!
//! Topology, all in namespaces this test creates (deleted by their guards,
//! also when an assertion fails):
//!
//! ```text
//!  ns A  a0 ──veth── d0  ns DUT  d1 ──veth── b0  ns B
//!   10.0.0.1 (injected)  10.0.0.254  192.0.2.254    192.0.2.1/.2 (injected)
//! ```
//!
//! Frames are injected with AF_PACKET on a0 or b0 and captured with
//! AF_PACKET on both; A and B have no addresses, so their kernels stay
//! silent; IPv6 is off everywhere. The DUT has static neighbours, so no
//! ARP is needed. Each exchange waits until nothing more arrives (bounded).
//! Differences that remain are named in docs/nfs.md ("Differences from
//! Linux"), and each is asserted here as what it is.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::netns::{self, NetnsGuard};
use braid_io::Port;
use braid_nf::{Context, Counters, NetworkFunction, Params};
use braid_packet::wire::checksum::{checksum, fold, pseudo_header_v4, sum};
use braid_packet::{Batch, Packet};

const A: [u8; 4] = [10, 0, 0, 1];
const D1: [u8; 4] = [192, 0, 2, 254];
const B1: [u8; 4] = [192, 0, 2, 1];
const B2: [u8; 4] = [192, 0, 2, 2];

/// The three namespaces and the two capture/injection ports.
struct Lab {
    // Ports first: they close before the namespaces go.
    a: AfPacketPort,
    b: AfPacketPort,
    a_mac: [u8; 6],
    b_mac: [u8; 6],
    d0_mac: [u8; 6],
    d1_mac: [u8; 6],
    dut: NetnsGuard,
    _ns_a: NetnsGuard,
    _ns_b: NetnsGuard,
}

fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, x) in s.trim().split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(x, 16).expect("MAC");
    }
    m
}

fn sh(ns: &NetnsGuard, program: &str, args: &[&str]) {
    let out = ns.command(program).args(args).output().expect("run");
    assert!(
        out.status.success(),
        "{program} {args:?} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// True (after saying why) if this test cannot run here.
fn skip(test: &str) -> bool {
    braid_testkit::skip_unless(netns::is_root(), test, "needs root (namespaces, AF_PACKET)")
        || braid_testkit::skip_unless_tool("nft", test)
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let name = |n: &str| netns::unique_name(&format!("bd{tag}{n}"));
        let ns_a = NetnsGuard::create(&name("a")).expect("netns a");
        let dut = NetnsGuard::create(&name("d")).expect("netns dut");
        let ns_b = NetnsGuard::create(&name("b")).expect("netns b");
        for ns in [&ns_a, &dut, &ns_b] {
            for k in ["all", "default"] {
                sh(ns, "sysctl", &["-qw", &format!("net.ipv6.conf.{k}.disable_ipv6=1")]);
                sh(ns, "sysctl", &["-qw", &format!("net.ipv4.conf.{k}.rp_filter=0")]);
            }
        }
        sh(
            &ns_a,
            "ip",
            &["link", "add", "a0", "type", "veth", "peer", "name", "d0", "netns", dut.name()],
        );
        sh(
            &ns_b,
            "ip",
            &["link", "add", "b0", "type", "veth", "peer", "name", "d1", "netns", dut.name()],
        );
        for (ns, dev) in [(&ns_a, "a0"), (&dut, "d0"), (&dut, "d1"), (&ns_b, "b0")] {
            sh(ns, "sysctl", &["-qw", &format!("net.ipv6.conf.{dev}.disable_ipv6=1")]);
            sh(ns, "sysctl", &["-qw", &format!("net.ipv4.conf.{dev}.rp_filter=0")]);
            sh(ns, "ip", &["link", "set", dev, "up"]);
        }
        sh(&dut, "ip", &["addr", "add", "10.0.0.254/24", "dev", "d0"]);
        sh(&dut, "ip", &["addr", "add", "192.0.2.254/24", "dev", "d1"]);
        sh(&dut, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        let m =
            |ns: &NetnsGuard, dev: &str| mac(&netns::mac_addr(Some(ns.name()), dev).expect("mac"));
        let (a_mac, b_mac, d0_mac, d1_mac) =
            (m(&ns_a, "a0"), m(&ns_b, "b0"), m(&dut, "d0"), m(&dut, "d1"));
        let hex = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
        sh(
            &dut,
            "ip",
            &[
                "neigh",
                "replace",
                "10.0.0.1",
                "lladdr",
                &hex(a_mac),
                "dev",
                "d0",
                "nud",
                "permanent",
            ],
        );
        for host in ["192.0.2.1", "192.0.2.2"] {
            sh(
                &dut,
                "ip",
                &["neigh", "replace", host, "lladdr", &hex(b_mac), "dev", "d1", "nud", "permanent"],
            );
        }
        let open = |ns: &NetnsGuard, dev: &str| {
            let cfg = AfPacketConfig::new(dev);
            ns.enter(move || AfPacketPort::open(&cfg)).expect("enter").expect("AF_PACKET")
        };
        let a = open(&ns_a, "a0");
        let b = open(&ns_b, "b0");
        let mut lab = Lab { a, b, a_mac, b_mac, d0_mac, d1_mac, dut, _ns_a: ns_a, _ns_b: ns_b };
        lab.collect(Duration::from_millis(50));
        lab
    }

    fn nft(&self, ruleset: &str) {
        let path = std::env::temp_dir().join(format!("{}.nft", self.dut.name()));
        std::fs::write(&path, ruleset).expect("write ruleset");
        let out = self.dut.command("nft").arg("-f").arg(&path).output().expect("nft");
        let _ = std::fs::remove_file(&path);
        assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// IPv4 frames arriving at a0 and b0 until `quiet` passes without one
    /// (at most 1 s).
    fn collect(&mut self, quiet: Duration) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
        let start = Instant::now();
        let mut last = Instant::now();
        while last.elapsed() < quiet && start.elapsed() < Duration::from_secs(1) {
            let mut got = false;
            for (port, out) in [(&mut self.a, &mut at_a), (&mut self.b, &mut at_b)] {
                let mut batch = Batch::new();
                if port.recv(&mut batch, 32).unwrap_or(0) > 0 {
                    got = true;
                    out.extend(
                        batch
                            .iter()
                            .map(|p| p.data().to_vec())
                            .filter(|f| f.len() > 14 && f[12..14] == [8, 0]),
                    );
                }
            }
            if got {
                last = Instant::now();
            } else {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        (at_a, at_b)
    }

    /// Send `l3` (an IPv4 packet) from A (towards d0) or from B (towards
    /// d1); what comes out at A and at B.
    fn exchange(&mut self, from_a: bool, l3: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (dst, src) = if from_a { (self.d0_mac, self.a_mac) } else { (self.d1_mac, self.b_mac) };
        let mut f = Vec::with_capacity(14 + l3.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[8, 0]);
        f.extend_from_slice(l3);
        let mut batch: Batch = std::iter::once(Packet::from_bytes(&f)).collect();
        let port = if from_a { &mut self.a } else { &mut self.b };
        assert_eq!(port.send(&mut batch).expect("send"), 1);
        port.flush().expect("flush");
        self.collect(Duration::from_millis(25))
    }
}

// ---- crafted IPv4 packets ------------------------------------------------

/// An IPv4 packet with `l4` as payload: identification `id`, fragment word
/// `frag` (flags and offset in 8-byte units), TTL `ttl`; checksums done.
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, frag: u16, ttl: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = ttl;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let ck = checksum(&p);
    p[10..12].copy_from_slice(&ck.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

/// The transport checksum of `l4` between `src` and `dst`.
fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> u16 {
    let ph = pseudo_header_v4(Ipv4Addr::from(src), Ipv4Addr::from(dst), proto, l4.len());
    !fold(ph.wrapping_add(sum(l4)))
}

fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    seq_ack: (u32, u32),
    flags: u8,
    id: u16,
) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&ports.0.to_be_bytes());
    t[2..4].copy_from_slice(&ports.1.to_be_bytes());
    t[4..8].copy_from_slice(&seq_ack.0.to_be_bytes());
    t[8..12].copy_from_slice(&seq_ack.1.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let ck = l4_checksum(src, dst, 6, &t);
    t[16..18].copy_from_slice(&ck.to_be_bytes());
    ipv4(src, dst, 6, id, 0x4000, 64, &t)
}

fn udp_l4(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sp.to_be_bytes());
    u[2..4].copy_from_slice(&dp.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    let ck = l4_checksum(src, dst, 17, &u);
    u[6..8].copy_from_slice(&(if ck == 0 { 0xffff } else { ck }).to_be_bytes());
    u
}

fn udp(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, id: u16) -> Vec<u8> {
    ipv4(src, dst, 17, id, 0, 64, &udp_l4(src, dst, sp, dp, b"braid differential"))
}

fn icmp(
    src: [u8; 4],
    dst: [u8; 4],
    msg_type: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
    id: u16,
) -> Vec<u8> {
    let mut m = vec![msg_type, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let ck = checksum(&m);
    m[2..4].copy_from_slice(&ck.to_be_bytes());
    ipv4(src, dst, 1, id, 0, 64, &m)
}

fn echo(src: [u8; 4], dst: [u8; 4], reply: bool, ident: u16, id: u16) -> Vec<u8> {
    let mut rest = [0u8; 4];
    rest[0..2].copy_from_slice(&ident.to_be_bytes());
    rest[3] = 1;
    icmp(src, dst, if reply { 0 } else { 8 }, 0, rest, b"ping-pong-ping-pong", id)
}

/// The packet with TTL and header checksum zeroed (the kernel forwards,
/// decrementing the TTL; braid's firewall and NAT do not).
fn sans_ttl(l3: &[u8]) -> Vec<u8> {
    let mut p = l3.to_vec();
    p[8] = 0;
    p[10..12].fill(0);
    p
}

/// Run `frames` (IPv4 packets) one at a time through `nf`, each in its own
/// batch at time `t`; the IPv4 packets that come out of each.
fn through_braid(nf: &mut dyn NetworkFunction, l3: &[u8], t: u64) -> (Vec<Vec<u8>>, Counters) {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&[8, 0]);
    f.extend_from_slice(l3);
    let mut b: Batch = std::iter::once(Packet::from_bytes(&f)).collect();
    let mut c = Counters::default();
    nf.process(&mut b, &mut Context::new(t, &mut c));
    (b.iter().map(|p| p.data()[14..].to_vec()).collect(), c)
}

fn build(kind: &str, yaml: &str) -> Box<dyn NetworkFunction> {
    let p: Params = serde_yaml_ng::from_str(yaml).expect("params");
    braid_nf::build(kind, &p).expect("build")
}

// ---- firewall vs nftables ct state -------------------------------------

/// A case: packets sent from A (true) or B, in order.
type Steps = Vec<(bool, Vec<u8>)>;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// Conntrack pickup (RST, FIN, SYN+FIN, SYN-ACK, echo reply must not open
/// the reversed SYN or echo request), handshakes, mid-stream ACK pickup,
/// UDP, related ICMP errors and fragments: the kernel with
/// `ct state established,related accept; ip saddr 10.0.0.0/8 accept;
/// policy drop` and braid's firewall with the same policy forward the
/// same packets, byte for byte (TTL aside).
#[test]
fn firewall_conntrack_matches_nftables() {
    if skip("firewall_conntrack_matches_nftables") {
        return;
    }
    let mut lab = Lab::new("f");
    lab.nft(
        "table ip braidf {\n chain filt {\n  type filter hook forward priority 0; policy drop;\n  \
         ct state established,related accept\n  ip saddr 10.0.0.0/8 accept\n }\n}\n",
    );
    let mut fw = build("firewall", "rules: [{action: allow, src: 10.0.0.0/8}]\ndefault: drop\n");
    // (from A?, packet) sequences, each on its own ports.
    let mut cases: Vec<(&str, Steps)> = Vec::new();
    for (i, (name, flags)) in [
        ("RST", RST),
        ("RST+ACK", RST | ACK),
        ("FIN+ACK", FIN | ACK),
        ("SYN+FIN", SYN | FIN),
        ("SYN-ACK", SYN | ACK),
    ]
    .into_iter()
    .enumerate()
    {
        let (p, q) = (2000 + i as u16, 80);
        cases.push((
            name,
            vec![
                (true, tcp(A, B1, (p, q), (100, 200), flags, 1)),
                (false, tcp(B1, A, (q, p), (500, 0), SYN, 2)),
            ],
        ));
    }
    cases.push((
        "echo reply then request",
        vec![(true, echo(A, B1, true, 77, 3)), (false, echo(B1, A, false, 77, 4))],
    ));
    cases.push((
        "handshake",
        vec![
            (true, tcp(A, B1, (3000, 443), (1000, 0), SYN, 5)),
            (false, tcp(B1, A, (443, 3000), (5000, 1001), SYN | ACK, 6)),
            (true, tcp(A, B1, (3000, 443), (1001, 5001), ACK, 7)),
            (false, tcp(B1, A, (443, 3000), (5001, 1001), ACK, 8)),
        ],
    ));
    cases.push((
        "mid-stream ACK pickup",
        vec![
            (true, tcp(A, B1, (3001, 443), (1000, 9000), ACK, 9)),
            (false, tcp(B1, A, (443, 3001), (9000, 1000), ACK, 10)),
            (false, tcp(B1, A, (443, 3001), (7000, 0), SYN, 11)),
        ],
    ));
    cases.push((
        "udp",
        vec![
            (false, udp(B1, A, 53, 4000, 12)),
            (true, udp(A, B1, 4000, 53, 13)),
            (false, udp(B1, A, 53, 4000, 14)),
        ],
    ));
    cases.push((
        "echo",
        vec![
            (false, echo(B1, A, false, 78, 15)),
            (true, echo(A, B1, false, 79, 16)),
            (false, echo(B1, A, true, 79, 17)),
        ],
    ));
    let sent = udp(A, B1, 4001, 53, 18);
    let mut quote = sans_ttl(&sent);
    quote[8] = 63; // as B got it
    let ck = checksum(&{
        let mut h = quote[..20].to_vec();
        h[10..12].fill(0);
        h
    });
    quote[10..12].copy_from_slice(&ck.to_be_bytes());
    cases.push((
        "related ICMP error",
        vec![
            (false, icmp(B1, A, 3, 3, [0; 4], &quote[..28], 19)),
            (true, sent.clone()),
            (false, icmp(B1, A, 3, 3, [0; 4], &quote[..28], 20)),
        ],
    ));
    // A UDP datagram in two fragments (first the larger, as Linux keeps
    // the largest fragment size when it forwards a reassembled datagram).
    let l4 = udp_l4(A, B1, 4002, 53, &[0x5a; 40]);
    cases.push((
        "fragments",
        vec![
            (true, ipv4(A, B1, 17, 21, 0x2000, 64, &l4[..32])),
            (true, ipv4(A, B1, 17, 21, 4, 64, &l4[32..])),
        ],
    ));
    cases.push(("lone later fragment", vec![(true, ipv4(A, B1, 17, 22, 4, 64, &[1; 16]))]));

    // Per case: what the kernel forwarded over all its steps, against
    // braid. (Linux reassembles fragments and sends them on when the
    // datagram is complete; braid passes each as it comes. The same
    // fragments come out, in the same order.)
    let mut differences = Vec::new();
    let mut t = 1_000_000_000u64;
    for (name, steps) in &cases {
        let (mut kernel, mut braid) = (Vec::new(), Vec::new());
        for (k, (from_a, pkt)) in steps.iter().enumerate() {
            let (at_a, at_b) = lab.exchange(*from_a, pkt);
            let (through, back) = if *from_a { (&at_b, &at_a) } else { (&at_a, &at_b) };
            assert!(back.is_empty(), "{name} step {k}: the kernel sent something back: {back:?}");
            kernel.extend(through.iter().map(|f| sans_ttl(&f[14..])));
            t += 1_000_000;
            let (out, _) = through_braid(fw.as_mut(), pkt, t);
            braid.extend(out.iter().map(|p| sans_ttl(p)));
        }
        if kernel != braid {
            differences.push(format!(
                "{name}: kernel forwarded {} packet(s), braid {} (or different bytes)",
                kernel.len(),
                braid.len()
            ));
        }
    }
    assert!(differences.is_empty(), "firewall vs nftables:\n{}", differences.join("\n"));
}

// ---- router vs the kernel FIB and RFC 1812 -----------------------------

/// Forwarding, TTL expiry, no route (checked before the TTL, as Linux
/// does), martian sources and destinations under covering routes, and the
/// 548-byte quote: the kernel as a router and braid's router give the same
/// packets (forwarded: the whole IPv4 packet; ICMP errors: their source,
/// destination and ICMP message, the IP header's identification and flags
/// aside).
#[test]
fn router_matches_the_kernel() {
    if skip("router_matches_the_kernel") {
        return;
    }
    let mut lab = Lab::new("r");
    for net in ["0.0.0.0/1", "224.0.0.0/3"] {
        sh(&lab.dut, "ip", &["route", "add", net, "via", "192.0.2.1"]);
    }
    let hex = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
    let (a_mac, b_mac) = (hex(lab.a_mac), hex(lab.b_mac));
    let mut r = build(
        "router",
        &format!(
            "mac: 02:00:00:00:00:fe\nip: 10.0.0.254\nroutes:\n\
             - {{prefix: 10.0.0.0/24, next_hop_mac: '{a_mac}', port: 0}}\n\
             - {{prefix: 192.0.2.0/24, next_hop_mac: '{b_mac}', port: 1}}\n\
             - {{prefix: 0.0.0.0/1, next_hop_mac: '{b_mac}', port: 1}}\n\
             - {{prefix: 224.0.0.0/3, next_hop_mac: '{b_mac}', port: 1}}\n"
        ),
    );
    let with_ttl = |mut p: Vec<u8>, ttl: u8| {
        p[8] = ttl;
        p[10..12].fill(0);
        let ck = checksum(&p[..20]);
        p[10..12].copy_from_slice(&ck.to_be_bytes());
        p
    };
    let big = ipv4(A, B1, 17, 40, 0, 1, &udp_l4(A, B1, 7, 7, &[0x33; 1000]));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("forward", udp(A, B1, 1000, 53, 30)),
        ("class E under a route", udp(A, [240, 0, 0, 1], 1000, 53, 31)),
        ("TTL 1", with_ttl(udp(A, B1, 1000, 53, 32), 1)),
        ("no route", udp(A, [198, 51, 100, 1], 1000, 53, 33)),
        ("no route, TTL 1", with_ttl(udp(A, [198, 51, 100, 1], 1000, 53, 34), 1)),
        ("1,028-byte packet, TTL 1", big),
        ("limited broadcast", udp(A, [255, 255, 255, 255], 1000, 53, 35)),
        ("loopback destination", udp(A, [127, 0, 0, 1], 1000, 53, 36)),
        ("0.0.0.0/8 destination", udp(A, [0, 1, 2, 3], 1000, 53, 37)),
        ("multicast destination", udp(A, [239, 1, 2, 3], 1000, 53, 38)),
        ("loopback source", udp([127, 0, 0, 1], B1, 1000, 53, 39)),
        ("0.0.0.0/8 source", udp([0, 0, 0, 5], B1, 1000, 53, 41)),
        ("source 0.0.0.0", udp([0, 0, 0, 0], B1, 1000, 53, 44)),
        ("multicast source", udp([224, 1, 1, 1], B1, 1000, 53, 42)),
        ("broadcast source", udp([255, 255, 255, 255], B1, 1000, 53, 43)),
    ];
    // Named differences (docs/nfs.md, router): Linux since 5.3 forwards
    // 0.0.0.0/8 other than 0.0.0.0 itself (the "unicast extensions"
    // change); RFC 1812 §5.3.7 and issue 13 ask braid to drop them.
    let named = ["0.0.0.0/8 destination", "0.0.0.0/8 source"];
    // An ICMP error as compared: source, destination, ICMP message.
    let icmp_view = |p: &[u8]| (p[9], p[12..20].to_vec(), p[20..].to_vec());
    let mut differences = Vec::new();
    for (name, pkt) in &cases {
        let (at_a, at_b) = lab.exchange(true, pkt);
        let mut b = Batch::new();
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[8, 0]);
        f.extend_from_slice(pkt);
        b.push(Packet::from_bytes(&f));
        let mut c = Counters::default();
        r.process(&mut b, &mut Context::new(1_000_000_000, &mut c));
        let braid_fwd: Vec<Vec<u8>> =
            b.iter().filter(|p| p.meta.out_port == 1).map(|p| p.data()[14..].to_vec()).collect();
        let braid_back: Vec<_> =
            b.iter().filter(|p| p.meta.out_port == 0).map(|p| icmp_view(&p.data()[14..])).collect();
        let kernel_fwd: Vec<Vec<u8>> = at_b.iter().map(|f| f[14..].to_vec()).collect();
        let kernel_back: Vec<_> = at_a.iter().map(|f| icmp_view(&f[14..])).collect();
        if named.contains(name) {
            assert_eq!(
                (kernel_fwd.len(), braid_fwd.len(), braid_back.len()),
                (1, 0, 0),
                "{name}: the named difference changed"
            );
            continue;
        }
        if kernel_fwd != braid_fwd || kernel_back != braid_back {
            differences.push(format!(
                "{name}: kernel forwarded {} and answered {:?}; braid forwarded {} and answered {:?}",
                kernel_fwd.len(),
                kernel_back.iter().map(|(_, _, m)| (m[0], m[1], m.len())).collect::<Vec<_>>(),
                braid_fwd.len(),
                braid_back.iter().map(|(_, _, m)| (m[0], m[1], m.len())).collect::<Vec<_>>(),
            ));
        }
    }
    assert!(differences.is_empty(), "router vs kernel:\n{}", differences.join("\n"));
}

// ---- NAT vs masquerade ---------------------------------------------------

/// A packet with its TTL set to `ttl` (header checksum redone).
fn set_ttl(mut p: Vec<u8>, ttl: u8) -> Vec<u8> {
    p[8] = ttl;
    p[10..12].fill(0);
    let ck = checksum(&p[..20]);
    p[10..12].copy_from_slice(&ck.to_be_bytes());
    p
}

/// One NAT under test: the kernel's masquerade or braid's `nat`, driven
/// by the same scenario (each with its own external ports).
trait Nat44 {
    /// Send from A (`outbound`) or B; the packets that come out the other
    /// side (TTL normalised to 63, as after one kernel hop).
    fn pass(&mut self, outbound: bool, pkt: &[u8]) -> Vec<Vec<u8>>;
}

struct Kernel<'a>(&'a mut Lab);

impl Nat44 for Kernel<'_> {
    fn pass(&mut self, outbound: bool, pkt: &[u8]) -> Vec<Vec<u8>> {
        let (at_a, at_b) = self.0.exchange(outbound, pkt);
        let through = if outbound { at_b } else { at_a };
        through.iter().map(|f| f[14..].to_vec()).collect()
    }
}

struct Braid(Box<dyn NetworkFunction>, u64);

impl Nat44 for Braid {
    fn pass(&mut self, _outbound: bool, pkt: &[u8]) -> Vec<Vec<u8>> {
        self.1 += 1_000_000;
        let (out, _) = through_braid(self.0.as_mut(), pkt, self.1);
        out.into_iter().map(|p| set_ttl(p, p_ttl(pkt) - 1)).collect()
    }
}

fn p_ttl(p: &[u8]) -> u8 {
    p[8]
}

fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

/// The masquerade scenario; returns what it found wrong, empty if the NAT
/// behaved like RFC 4787/5382/5508 ask.
fn nat_scenario(nat: &mut dyn Nat44) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut check = |ok: bool, what: &str| {
        if !ok {
            wrong.push(what.to_string());
        }
    };
    // Endpoint-independent mapping: one inside endpoint, two remotes.
    let o1 = nat.pass(true, &udp(A, B1, 5000, 53, 50));
    let o2 = nat.pass(true, &udp(A, B2, 5000, 53, 51));
    if o1.len() != 1 || o2.len() != 1 {
        return vec![format!("outbound UDP: {} and {} packets out", o1.len(), o2.len())];
    }
    let (o1, o2) = (&o1[0], &o2[0]);
    check(o1[12..16] == D1 && o2[12..16] == D1, "outbound source is not the external address");
    let port = be16(o1, 20);
    check(be16(o2, 20) == port, "endpoint-dependent mapping: two external ports for one endpoint");
    check(l4_checksum(D1, B1, 17, &o1[20..]) == 0, "outbound UDP checksum");
    // The reply comes back to the endpoint.
    let reply = udp(B1, D1, 53, port, 52);
    let back = nat.pass(false, &reply);
    check(back.len() == 1, "reply not delivered");
    if let Some(b) = back.first() {
        check(b[16..20] == A && be16(b, 22) == 5000, "reply not translated back");
        check(l4_checksum(B1, A, 17, &b[20..]) == 0, "reply UDP checksum");
    }
    // Inbound ICMP error about the translated packet (as B1 got it).
    let quote = set_ttl(o1.clone(), 63);
    let err = icmp(B1, D1, 3, 3, [0; 4], &quote[..28], 53);
    let back = nat.pass(false, &err);
    check(back.len() == 1, "inbound ICMP error not delivered");
    if let Some(b) = back.first() {
        let sent = set_ttl(udp(A, B1, 5000, 53, 50), 63);
        check(b[16..20] == A, "inbound ICMP error: outer destination");
        check(checksum(&b[20..]) == 0, "inbound ICMP error: ICMP checksum");
        check(b[28..56] == sent[..28], "inbound ICMP error: quote is not the packet A sent");
    }
    // Inbound TCP error quoting the whole TCP header: its checksum too.
    let syn = nat.pass(true, &tcp(A, B1, (5001, 80), (1, 0), SYN, 54));
    if let Some(s) = syn.first() {
        let err = icmp(B1, D1, 3, 1, [0; 4], &set_ttl(s.clone(), 63)[..40], 55);
        let back = nat.pass(false, &err);
        let sent = set_ttl(tcp(A, B1, (5001, 80), (1, 0), SYN, 54), 63);
        check(
            back.first().is_some_and(|b| b[28..68] == sent[..40]),
            "inbound ICMP error quoting TCP: quote (with its checksum) not restored",
        );
    } else {
        check(false, "outbound SYN not translated");
    }
    // A datagram in two fragments (RFC 4787 REQ-14): both leave
    // translated; the later one, without ports, keeps its payload.
    let l4 = udp_l4(A, B1, 5002, 53, &[0x6b; 40]);
    let mut frags = nat.pass(true, &ipv4(A, B1, 17, 60, 0x2000, 64, &l4[..32]));
    frags.extend(nat.pass(true, &ipv4(A, B1, 17, 60, 4, 64, &l4[32..])));
    check(frags.len() == 2, "fragments not both translated");
    check(
        frags.iter().all(|f| f[12..16] == D1 && checksum(&f[..20]) == 0),
        "fragments: source or header checksum",
    );
    check(frags.get(1).is_some_and(|f| f[20..] == l4[32..]), "later fragment payload changed");
    // A lone later fragment from outside goes nowhere.
    check(nat.pass(false, &ipv4(B1, D1, 17, 61, 4, 64, &[1; 16])).is_empty(), "lone fragment");
    // Outbound ICMP error from A about an inbound packet of the mapping.
    let inbound = udp(B1, D1, 53, port, 56);
    let got = nat.pass(false, &inbound);
    if let Some(g) = got.first() {
        let err = icmp(A, B1, 3, 3, [0; 4], &g[..28], 57);
        let out = nat.pass(true, &err);
        check(out.len() == 1, "outbound ICMP error not sent");
        if let Some(e) = out.first() {
            check(e[12..16] == D1, "outbound ICMP error: outer source");
            check(checksum(&e[20..]) == 0, "outbound ICMP error: ICMP checksum");
            let as_sent = set_ttl(inbound.clone(), 63);
            check(
                e[28..56] == as_sent[..28],
                "outbound ICMP error: quote is not the packet B1 sent",
            );
        }
    } else {
        check(false, "second inbound packet not delivered");
    }
    wrong
}

/// NAT mapping and ICMP error translation against nftables masquerade on
/// the same scenario. The external port is the one named difference:
/// Linux keeps the inside port when it is free, braid picks a random one
/// (RFC 6056); each side is driven with its own.
#[test]
fn nat_matches_masquerade() {
    if skip("nat_matches_masquerade") {
        return;
    }
    let mut lab = Lab::new("n");
    lab.nft(
        "table ip braidn {\n chain post {\n  type nat hook postrouting priority 100;\n  \
         oifname \"d1\" masquerade\n }\n}\n",
    );
    let kernel = nat_scenario(&mut Kernel(&mut lab));
    let braid = nat_scenario(&mut Braid(
        build("nat", "external_ip: 192.0.2.254\ninternal: [10.0.0.0/24]\n"),
        1_000_000_000,
    ));
    assert!(kernel.is_empty(), "the kernel fails the scenario (test bug?): {kernel:?}");
    assert!(braid.is_empty(), "braid's nat differs from masquerade: {braid:?}");
}
