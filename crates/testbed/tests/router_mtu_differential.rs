//! Differential test of the `router`'s link MTUs against the Linux kernel
//! (issue 14 item 3, issue 13's "differential tests against Linux"): the
//! same IPv4 (DF and not) and IPv6 packets of sizes around a smaller
//! egress MTU go through a namespace that forwards with the kernel and
//! through braid's router configured with the same MTU, and what comes
//! out is compared: forwarded packets and fragments byte for byte (IP
//! header, offsets, flags, checksums, payload), ICMP errors by source,
//! destination and the whole ICMP message (type, code, MTU field, the
//! quoted bytes).
//!
//! ```text
//!  ns A  a0 ──veth── d0  ns DUT  d1 ──veth── b0  ns B
//!        MTU 3000    10.0.0.254/24   192.0.2.254/24    MTU 1290 on d1 (and b0)
//!                    2001:db8:a::fe  2001:db8:b::fe
//! ```
//!
//! Frames are injected with AF_PACKET on a0 and captured on a0 and b0; A
//! and B have no addresses (IPv6 off there), so their kernels stay silent;
//! the DUT has static neighbours and no ICMP rate limit. All namespaces
//! are deleted by their guards, also when an assertion fails.

use std::time::{Duration, Instant};

use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::netns::{self, NetnsGuard};
use braid_io::Port;
use braid_nf::{Context, Counters, DropReason, Params};
use braid_packet::wire::checksum::{checksum, fold, pseudo_header_v4, pseudo_header_v6, sum};
use braid_packet::{Batch, Packet};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [192, 0, 2, 1];
const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0xa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0xb, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The egress link's MTU: (1290 - 20) & !7 = 1264 bytes a fragment, not a
/// multiple of 8 itself, so the alignment shows.
const MTU: u32 = 1290;
/// The ingress link's MTU (room for packets needing three fragments).
const IN_MTU: u32 = 3000;

struct Lab {
    // Ports first: they close before the namespaces go.
    a: AfPacketPort,
    b: AfPacketPort,
    a_mac: [u8; 6],
    b_mac: [u8; 6],
    d0_mac: [u8; 6],
    _dut: NetnsGuard,
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

fn hex(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
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

impl Lab {
    fn new() -> Lab {
        let name = |n: &str| netns::unique_name(&format!("bdm{n}"));
        let ns_a = NetnsGuard::create(&name("a")).expect("netns a");
        let dut = NetnsGuard::create(&name("d")).expect("netns dut");
        let ns_b = NetnsGuard::create(&name("b")).expect("netns b");
        for ns in [&ns_a, &ns_b] {
            for k in ["all", "default"] {
                sh(ns, "sysctl", &["-qw", &format!("net.ipv6.conf.{k}.disable_ipv6=1")]);
            }
        }
        for k in ["all", "default"] {
            sh(&dut, "sysctl", &["-qw", &format!("net.ipv4.conf.{k}.rp_filter=0")]);
            sh(&dut, "sysctl", &["-qw", &format!("net.ipv6.conf.{k}.accept_dad=0")]);
            sh(&dut, "sysctl", &["-qw", &format!("net.ipv6.conf.{k}.forwarding=1")]);
        }
        sh(&dut, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        // No per-destination ICMP rate limit (braid's bucket is global and
        // larger than this test needs).
        sh(&dut, "sysctl", &["-qw", "net.ipv4.icmp_ratelimit=0"]);
        sh(&dut, "sysctl", &["-qw", "net.ipv6.icmp.ratelimit=0"]);
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
        let (in_mtu, out_mtu) = (IN_MTU.to_string(), MTU.to_string());
        for (ns, dev, mtu) in [
            (&ns_a, "a0", &in_mtu),
            (&dut, "d0", &in_mtu),
            (&dut, "d1", &out_mtu),
            (&ns_b, "b0", &out_mtu),
        ] {
            sh(ns, "ip", &["link", "set", dev, "mtu", mtu, "up"]);
        }
        sh(&dut, "ip", &["addr", "add", "10.0.0.254/24", "dev", "d0"]);
        sh(&dut, "ip", &["addr", "add", "192.0.2.254/24", "dev", "d1"]);
        sh(&dut, "ip", &["-6", "addr", "add", "2001:db8:a::fe/64", "dev", "d0", "nodad"]);
        sh(&dut, "ip", &["-6", "addr", "add", "2001:db8:b::fe/64", "dev", "d1", "nodad"]);
        let m =
            |ns: &NetnsGuard, dev: &str| mac(&netns::mac_addr(Some(ns.name()), dev).expect("mac"));
        let (a_mac, b_mac, d0_mac) = (m(&ns_a, "a0"), m(&ns_b, "b0"), m(&dut, "d0"));
        for (host, lladdr, dev) in [
            ("10.0.0.1", a_mac, "d0"),
            ("192.0.2.1", b_mac, "d1"),
            ("2001:db8:a::1", a_mac, "d0"),
            ("2001:db8:b::1", b_mac, "d1"),
        ] {
            sh(
                &dut,
                "ip",
                &["neigh", "replace", host, "lladdr", &hex(lladdr), "dev", dev, "nud", "permanent"],
            );
        }
        let open = |ns: &NetnsGuard, dev: &str| {
            let mut cfg = AfPacketConfig::new(dev);
            cfg.mtu = IN_MTU as usize;
            ns.enter(move || AfPacketPort::open(&cfg)).expect("enter").expect("AF_PACKET")
        };
        let a = open(&ns_a, "a0");
        let b = open(&ns_b, "b0");
        let mut lab = Lab { a, b, a_mac, b_mac, d0_mac, _dut: dut, _ns_a: ns_a, _ns_b: ns_b };
        lab.collect(Duration::from_millis(50));
        lab
    }

    /// Unicast IPv4 and IPv6 frames arriving at a0 and b0 until `quiet`
    /// passes without one (at most 1 s). Multicast (the DUT's MLD
    /// reports and the like) is left out.
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
                    out.extend(batch.iter().map(|p| p.data().to_vec()).filter(|f| {
                        f.len() > 14
                            && f[0] & 1 == 0
                            && (f[12..14] == [8, 0] || f[12..14] == [0x86, 0xdd])
                    }));
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

    /// The frame that carries `l3` from A to the DUT.
    fn frame(&self, l3: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + l3.len());
        f.extend_from_slice(&self.d0_mac);
        f.extend_from_slice(&self.a_mac);
        f.extend_from_slice(if l3[0] >> 4 == 6 { &[0x86, 0xdd] } else { &[8, 0] });
        f.extend_from_slice(l3);
        f
    }

    /// Send `l3` from A; the frames that come out at A and at B.
    fn exchange(&mut self, l3: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut batch: Batch = std::iter::once(Packet::from_bytes(&self.frame(l3))).collect();
        assert_eq!(self.a.send(&mut batch).expect("send"), 1);
        self.a.flush().expect("flush");
        self.collect(Duration::from_millis(25))
    }
}

// ---- crafted packets -----------------------------------------------------

/// A payload whose bytes show where they came from.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A UDP/IPv4 packet A -> B of `total` bytes of IP with `options` (a
/// multiple of 4), fragment word `frag`, TTL `ttl`; checksums done.
fn udp4(total: usize, frag: u16, ttl: u8, options: &[u8]) -> Vec<u8> {
    let ihl = 20 + options.len();
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&4000u16.to_be_bytes());
    u[2..4].copy_from_slice(&5000u16.to_be_bytes());
    u[4..6].copy_from_slice(&((total - ihl) as u16).to_be_bytes());
    u.extend_from_slice(&payload(total - ihl - 8));
    let ph = pseudo_header_v4(A.into(), B.into(), 17, u.len());
    let ck = !fold(ph.wrapping_add(sum(&u)));
    u[6..8].copy_from_slice(&(if ck == 0 { 0xffff } else { ck }).to_be_bytes());
    ipv4(17, frag, ttl, options, &u)
}

fn ipv4(proto: u8, frag: u16, ttl: u8, options: &[u8], l4: &[u8]) -> Vec<u8> {
    let ihl = 20 + options.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x40 | (ihl / 4) as u8;
    p[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = ttl;
    p[9] = proto;
    p[12..16].copy_from_slice(&A);
    p[16..20].copy_from_slice(&B);
    p.extend_from_slice(options);
    let ck = checksum(&p);
    p[10..12].copy_from_slice(&ck.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

/// An ICMP destination unreachable (an error: never answered) A -> B of
/// `total` bytes, DF set.
fn icmp4_error(total: usize) -> Vec<u8> {
    let mut m = vec![3, 1, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&payload(total - 28));
    let ck = checksum(&m);
    m[2..4].copy_from_slice(&ck.to_be_bytes());
    ipv4(1, 0x4000, 64, &[], &m)
}

/// An IPv6 packet A6 -> B6 of `total` bytes (40 + payload length) with
/// hop limit `hops`: UDP, or an ICMPv6 message of `icmp_type`.
fn ipv6(total: usize, hops: u8, icmp_type: Option<u8>) -> Vec<u8> {
    let len = total - 40;
    let (proto, mut l4) = match icmp_type {
        None => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&4000u16.to_be_bytes());
            u[2..4].copy_from_slice(&5000u16.to_be_bytes());
            u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            (17u8, u)
        }
        Some(t) => (58, vec![t, 0, 0, 0, 0, 0x42, 0, 1]),
    };
    l4.extend_from_slice(&payload(len - 8));
    let ph = pseudo_header_v6(A6.into(), B6.into(), proto, len);
    let ck = !fold(ph.wrapping_add(sum(&l4)));
    let at = if proto == 17 { 6 } else { 2 };
    l4[at..at + 2].copy_from_slice(&(if ck == 0 { 0xffff } else { ck }).to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p.extend_from_slice(&[proto, hops]);
    p.extend_from_slice(&A6);
    p.extend_from_slice(&B6);
    p.extend_from_slice(&l4);
    p
}

/// What is compared of an ICMP error: addresses and the whole message
/// (IPv4: protocol, source, destination, ICMP; IPv6: next header, source,
/// destination, ICMPv6), not the IP header's identification, TOS /
/// traffic class or flags.
fn error_view(ip: &[u8]) -> (u8, Vec<u8>, Vec<u8>) {
    if ip[0] >> 4 == 6 {
        (ip[6], ip[8..40].to_vec(), ip[40..].to_vec())
    } else {
        let ihl = usize::from(ip[0] & 0xf) * 4;
        (ip[9], ip[12..20].to_vec(), ip[ihl..].to_vec())
    }
}

fn describe(errors: &[(u8, Vec<u8>, Vec<u8>)]) -> Vec<String> {
    errors
        .iter()
        .map(|(_, addrs, m)| {
            let mtu = m.get(4..8).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            format!(
                "type {} code {} mtu {:?}, {} bytes, from {:02x?}",
                m[0],
                m[1],
                mtu,
                m.len(),
                &addrs[..addrs.len() / 2]
            )
        })
        .collect()
}

/// IPv4 fragments and packets as (length, fragment word) for messages.
fn shapes(pkts: &[Vec<u8>]) -> Vec<(usize, String)> {
    pkts.iter()
        .map(|p| {
            if p[0] >> 4 == 4 {
                (p.len(), format!("{:#06x}", u16::from_be_bytes([p[6], p[7]])))
            } else {
                (p.len(), "v6".into())
            }
        })
        .collect()
}

#[test]
fn router_mtu_matches_the_kernel() {
    let test = "router_mtu_matches_the_kernel";
    if braid_testkit::skip_unless(netns::is_root(), test, "needs root (namespaces, AF_PACKET)") {
        return;
    }
    let mut lab = Lab::new();
    let (a_mac, b_mac) = (hex(lab.a_mac), hex(lab.b_mac));
    let p: Params = serde_yaml_ng::from_str(&format!(
        "mac: 02:00:00:00:00:fe\nip: 10.0.0.254\nip6: '2001:db8:a::fe'\nroutes:\n\
         - {{prefix: 10.0.0.0/24, next_hop_mac: '{a_mac}', port: 0}}\n\
         - {{prefix: 192.0.2.0/24, next_hop_mac: '{b_mac}', port: 1}}\n\
         - {{prefix: '2001:db8:a::/64', next_hop_mac: '{a_mac}', port: 0}}\n\
         - {{prefix: '2001:db8:b::/64', next_hop_mac: '{b_mac}', port: 1}}\n\
         ports:\n\
         - {{port: 0, mtu: {IN_MTU}}}\n\
         - {{port: 1, mtu: {MTU}}}\n"
    ))
    .expect("params");
    let mut r = braid_nf::build("router", &p).expect("router");
    let m = MTU as usize;
    // Options: one the later fragments must not copy (type 30), one they
    // must (type 158, copy flag set); Linux accepts both unknown types.
    let opts = [30, 4, 0xaa, 0xbb, 158, 4, 0xcc, 0xdd];
    let cases: Vec<(String, Vec<u8>)> = vec![
        ("IPv4 DF, at the MTU".into(), udp4(m, 0x4000, 64, &[])),
        ("IPv4 DF, MTU + 1".into(), udp4(m + 1, 0x4000, 64, &[])),
        ("IPv4 DF, 1500".into(), udp4(1500, 0x4000, 64, &[])),
        ("IPv4 DF, 2999".into(), udp4(2999, 0x4000, 64, &[])),
        ("IPv4 DF, 1500, TTL 1".into(), udp4(1500, 0x4000, 1, &[])),
        ("IPv4 DF, ICMP error of 1500".into(), icmp4_error(1500)),
        ("IPv4, at the MTU".into(), udp4(m, 0, 64, &[])),
        ("IPv4, MTU + 1".into(), udp4(m + 1, 0, 64, &[])),
        ("IPv4, 1500".into(), udp4(1500, 0, 64, &[])),
        ("IPv4, 2999".into(), udp4(2999, 0, 64, &[])),
        ("IPv4, 2530 (two full fragments)".into(), udp4(20 + 2 * 1264, 0, 64, &[])),
        ("IPv4 with options, 2000".into(), udp4(2000, 0, 64, &opts)),
        ("IPv4 first fragment (MF), 1500".into(), udp4(1500, 0x2000, 64, &[])),
        ("IPv4 middle fragment (MF, offset 800), 1500".into(), udp4(1500, 0x2000 | 100, 64, &[])),
        ("IPv6, at the MTU".into(), ipv6(m, 64, None)),
        ("IPv6, MTU + 1".into(), ipv6(m + 1, 64, None)),
        ("IPv6, 1500".into(), ipv6(1500, 64, None)),
        ("IPv6, 2999".into(), ipv6(2999, 64, None)),
        ("IPv6 echo request, 1500".into(), ipv6(1500, 64, Some(128))),
        ("IPv6 ICMPv6 error, 1500".into(), ipv6(1500, 64, Some(1))),
        ("IPv6, 1500, hop limit 1".into(), ipv6(1500, 1, None)),
    ];
    let mut differences = Vec::new();
    let (mut fragments, mut too_big) = (0, 0);
    for (name, pkt) in &cases {
        let (at_a, at_b) = lab.exchange(pkt);
        let mut b: Batch = std::iter::once(Packet::from_bytes(&lab.frame(pkt))).collect();
        let mut c = Counters::default();
        r.process(&mut b, &mut Context::new(1_000_000_000, &mut c));
        let braid_fwd: Vec<Vec<u8>> =
            b.iter().filter(|p| p.meta.out_port == 1).map(|p| p.data()[14..].to_vec()).collect();
        let braid_back: Vec<_> = b
            .iter()
            .filter(|p| p.meta.out_port == 0)
            .map(|p| error_view(&p.data()[14..]))
            .collect();
        let kernel_fwd: Vec<Vec<u8>> = at_b.iter().map(|f| f[14..].to_vec()).collect();
        let kernel_back: Vec<_> = at_a.iter().map(|f| error_view(&f[14..])).collect();
        // Every packet out of port 1 fits its MTU (the kernel's too).
        assert!(braid_fwd.iter().chain(&kernel_fwd).all(|p| p.len() <= m), "{name}");
        if kernel_fwd.len() > 1 {
            fragments += kernel_fwd.len();
        }
        too_big +=
            kernel_back.iter().filter(|(_, _, m)| matches!((m[0], m[1]), (3, 4) | (2, 0))).count();
        if c.dropped(DropReason::TooBig) > 0 {
            assert!(braid_fwd.is_empty(), "{name}: too_big but forwarded");
        }
        eprintln!(
            "{name}: kernel {:?} {:?}, braid {:?} {:?}",
            shapes(&kernel_fwd),
            describe(&kernel_back),
            shapes(&braid_fwd),
            describe(&braid_back)
        );
        if kernel_fwd != braid_fwd || kernel_back != braid_back {
            differences.push(format!(
                "{name}: kernel forwarded {:?} and answered {:?}; braid forwarded {:?} and answered {:?}",
                shapes(&kernel_fwd),
                describe(&kernel_back),
                shapes(&braid_fwd),
                describe(&braid_back),
            ));
        }
    }
    assert!(differences.is_empty(), "router MTU vs kernel:\n{}", differences.join("\n"));
    assert!(fragments >= 10, "the kernel fragmented ({fragments} fragments)");
    assert!(too_big >= 7, "the kernel answered {too_big} packets as too big");
}
