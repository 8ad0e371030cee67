//! Throughput of `router`, `firewall` and `nat` with warm state, one core.
//!
//! Every iteration refills a 32-packet batch from pre-built frames and runs
//! the NF over it. The refill alone is measured in the same group
//! (`baseline_refill`), so NF cost = NF row - baseline row.
//!
//! Refill: the packets keep their buffers and length; only the first 64
//! bytes (all headers) are copied from the next template, because the NFs
//! only read and write headers. Every template of one frame size has the
//! same all-zero payload, so the result is byte-for-byte the template.
//!
//! State: `router` 10,000 prefixes (mix of /8../32), 16,384 destinations;
//! `router6` 10,000 IPv6 prefixes (mix of /16../64 shaped like a BGP
//! table: half /48), 16,384 destinations;
//! `firewall` 1,000 rules (900 allow, 100 drop, interleaved) with 16,384
//! flows, conntrack warm or off; `nat` 100,000 active mappings (50,000 TCP,
//! 50,000 UDP), traffic cycling over all of them, half outbound, half
//! replies.
//!
//! Time is the benchmark thread's CPU time (`braid_benchkit::ThreadCpuTime`), not
//! wall time: this VM's 2 cores are shared with other builds, and time
//! spent descheduled is not the NF's cost. (Cache pollution by neighbours
//! still shows.)
//!
//! Run: `cargo bench -p braid-nf --bench stateful`.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use braid_benchkit::ThreadCpuTime;
use braid_nf::firewall::{self, Firewall};
use braid_nf::nat::{self, Nat};
use braid_nf::router::{self, Router};
use braid_nf::{Context, Counters, NetworkFunction};
use braid_packet::wire::build::{Frame6Spec, FrameSpec};
use braid_packet::{Batch, Packet};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

type Group<'a> = BenchmarkGroup<'a, ThreadCpuTime>;

const BATCH: usize = 32;
const HDR: usize = 64;
const SIZES: [usize; 2] = [64, 1400];
const NOW_NS: u64 = 1_000_000_000;

/// xorshift64*: deterministic inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

/// A frame of exactly `len` bytes with an all-zero payload.
fn udp(src: (u32, u16), dst: (u32, u16), len: usize) -> Vec<u8> {
    let mut s = FrameSpec::udp((Ipv4Addr::from(src.0), src.1), (Ipv4Addr::from(dst.0), dst.1), 0);
    s.payload = vec![0; len - 42];
    s.build()
}

fn tcp(src: (u32, u16), dst: (u32, u16), len: usize) -> Vec<u8> {
    let mut s =
        FrameSpec::tcp((Ipv4Addr::from(src.0), src.1), (Ipv4Addr::from(dst.0), dst.1), 0x10);
    s.payload = vec![0; len - 54];
    s.build()
}

/// Pre-built headers and the refill cursor.
struct Traffic {
    headers: Vec<[u8; HDR]>,
    frame: Vec<u8>,
    cursor: usize,
}

impl Traffic {
    fn new(frames: &[Vec<u8>]) -> Traffic {
        let len = frames[0].len();
        assert!(frames.iter().all(|f| f.len() == len && f[HDR..].iter().all(|b| *b == 0)));
        Traffic {
            headers: frames.iter().map(|f| f[..HDR].try_into().unwrap()).collect(),
            frame: frames[0].clone(),
            cursor: 0,
        }
    }

    #[inline]
    fn refill(&mut self, batch: &mut Batch) {
        if batch.len() != BATCH {
            batch.clear();
            for _ in 0..BATCH {
                batch.push(Packet::from_bytes(&self.frame));
            }
        }
        for p in batch.iter_mut() {
            let h = &self.headers[self.cursor];
            self.cursor += 1;
            if self.cursor == self.headers.len() {
                self.cursor = 0;
            }
            p.data_mut()[..HDR].copy_from_slice(h);
        }
    }
}

/// Run `nf` once over every template and check nothing is dropped, so the
/// benchmark measures the path it claims to.
fn warm(nf: &mut dyn NetworkFunction, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(frames.len());
    let mut c = Counters::default();
    for chunk in frames.chunks(BATCH) {
        let mut b: Batch = chunk.iter().map(|f| Packet::from_bytes(f)).collect();
        nf.process(&mut b, &mut Context::new(NOW_NS, &mut c));
        out.extend(b.iter().map(|p| p.data().to_vec()));
    }
    assert_eq!(c.drop_breakdown(), vec![], "{}", nf.spec().name);
    assert_eq!(out.len(), frames.len());
    out
}

fn bench_pair(g: &mut Group<'_>, name: &str, nf: &mut dyn NetworkFunction, traffic: &mut Traffic) {
    let mut batch = Batch::with_capacity(BATCH);
    let mut c = Counters::default();
    g.bench_function(name, |b| {
        b.iter(|| {
            traffic.refill(&mut batch);
            nf.process(&mut batch, &mut Context::new(NOW_NS, &mut c));
            black_box(batch.len());
        })
    });
    assert_eq!(c.dropped_total(), 0, "{name}");
}

fn bench_baseline(g: &mut Group<'_>, traffic: &mut Traffic) {
    let mut batch = Batch::with_capacity(BATCH);
    g.bench_function("baseline_refill", |b| {
        b.iter(|| {
            traffic.refill(&mut batch);
            black_box(&mut batch);
        })
    });
}

fn router_bench(c: &mut Criterion<ThreadCpuTime>) {
    let mut rng = Rng(0x5eed_0001);
    let mut routes = Vec::new();
    let mut nets: Vec<(u32, u8)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while nets.len() < 10_000 {
        let len = match rng.below(10) {
            0 => 8 + rng.below(8) as u8,
            1 | 2 => 16 + rng.below(8) as u8,
            3..=8 => 24,
            _ => 25 + rng.below(8) as u8,
        };
        // Keep out of 0/8, 127/8 (loopback: a martian destination the
        // router drops, RFC 1812) and multicast: every destination is
        // routable.
        let net = ((rng.next() as u32) % 0xdf00_0000 + 0x0100_0000) & mask(len);
        if net >> 24 == 127 {
            continue;
        }
        if seen.insert((net, len)) {
            nets.push((net, len));
            routes.push(router::RouteConfig {
                prefix: format!("{}/{len}", Ipv4Addr::from(net)),
                next_hop_mac: format!("02:00:00:00:01:{:02x}", nets.len() % 64),
                port: (nets.len() % 4) as u16,
            });
        }
    }
    let cfg = router::Config {
        routes,
        mac: "02:00:00:00:00:fe".into(),
        ip: Some(Ipv4Addr::new(192, 0, 2, 1)),
        ip6: None,
        icmp_rate: 1000,
        icmp_burst: 50,
        ports: Vec::new(),
    };
    let mut nf = Router::from_config(&cfg).expect("router config");
    // Its own generator, so adding the IPv6 row changes nothing the IPv4
    // row draws.
    let mut rng6 = Rng(0x5eed_0006);
    let (mut nf6, nets6) = router6(&mut rng6);
    for size in SIZES {
        let frames: Vec<Vec<u8>> = (0..16_384)
            .map(|_| {
                let (net, len) = nets[rng.below(nets.len() as u64) as usize];
                let dst = net | (rng.next() as u32 & !mask(len));
                udp((0xac10_0001, 1000), (dst, 53), size)
            })
            .collect();
        warm(&mut nf, &frames);
        let mut traffic = Traffic::new(&frames);
        let mut g = c.benchmark_group(format!("router/{size}B"));
        g.throughput(Throughput::Elements(BATCH as u64));
        bench_baseline(&mut g, &mut traffic);
        bench_pair(&mut g, "router_10k_prefixes", &mut nf, &mut traffic);
        // IPv6 beside it, in the same group and run.
        let frames6: Vec<Vec<u8>> = (0..16_384)
            .map(|_| {
                let (net, len) = nets6[rng6.below(nets6.len() as u64) as usize];
                let host = ((rng6.next() as u128) << 64 | rng6.next() as u128) & !mask6(len);
                let mut s = Frame6Spec::udp(
                    (Ipv6Addr::from(SRC6), 1000),
                    (Ipv6Addr::from(net | host), 53),
                    0,
                );
                s.payload = vec![0; size - 62];
                s.build()
            })
            .collect();
        warm(&mut nf6, &frames6);
        let mut traffic6 = Traffic::new(&frames6);
        bench_pair(&mut g, "router6_10k_prefixes", &mut nf6, &mut traffic6);
        g.finish();
    }
}

/// Source of the IPv6 bench traffic (inside the routed 2001:db8::/32).
const SRC6: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0009;

fn mask6(len: u8) -> u128 {
    braid_nf::lpm::prefix_mask6(len)
}

/// An IPv6 router with 10,000 prefixes under 2000::/3, lengths shaped like
/// a BGP table (10% /16-/31, 15% /32, 20% /33-/47, 50% /48, 5% /49-/64),
/// 64 next hops, and a route back to the source.
fn router6(rng: &mut Rng) -> (Router, Vec<(u128, u8)>) {
    let mut routes = vec![router::RouteConfig {
        prefix: "2001:db8::/32".into(),
        next_hop_mac: "02:00:00:00:02:00".into(),
        port: 0,
    }];
    let mut nets: Vec<(u128, u8)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    seen.insert((SRC6 & mask6(32), 32));
    while nets.len() < 10_000 {
        let len = match rng.below(20) {
            0 | 1 => 16 + rng.below(16) as u8,
            2..=4 => 32,
            5..=8 => 33 + rng.below(15) as u8,
            9..=18 => 48,
            _ => 49 + rng.below(16) as u8,
        };
        let r = (rng.next() as u128) << 64 | rng.next() as u128;
        let net = ((r >> 3) | (1u128 << 125)) & mask6(len);
        if seen.insert((net, len)) {
            nets.push((net, len));
            routes.push(router::RouteConfig {
                prefix: format!("{}/{len}", Ipv6Addr::from(net)),
                next_hop_mac: format!("02:00:00:00:01:{:02x}", nets.len() % 64),
                port: (nets.len() % 4) as u16,
            });
        }
    }
    let cfg = router::Config {
        routes,
        mac: "02:00:00:00:00:fe".into(),
        ip: None,
        ip6: Some("2001:db8::1".parse().unwrap()),
        icmp_rate: 1000,
        icmp_burst: 50,
        ports: Vec::new(),
    };
    // The table's size: these prefixes with the router's next hops (one
    // per MAC and port), without the route back to the source.
    let table: Vec<(u128, u8, usize)> =
        nets.iter().enumerate().map(|(i, &(n, l))| (n, l, (i + 1) % 64)).collect();
    let lpm6 = braid_nf::lpm::Lpm6::build(&table).expect("router6 table");
    eprintln!(
        "router6 table: {} prefixes, {} intervals, {} KiB",
        table.len(),
        lpm6.intervals(),
        lpm6.memory_bytes() / 1024
    );
    (Router::from_config(&cfg).expect("router6 config"), nets)
}

fn firewall_rules(rng: &mut Rng) -> Vec<firewall::RuleConfig> {
    let mut rules = Vec::new();
    for i in 0..1000 {
        let rule = if i % 10 == 5 {
            // Drop rules in 172.16/12, where the traffic never comes from.
            let net = 0xac10_0000 | ((rng.next() as u32) & 0x000f_ff00);
            firewall::RuleConfig {
                action: firewall::Action::Drop,
                src: Some(format!("{}/24", Ipv4Addr::from(net))),
                dst: None,
                proto: firewall::Proto::Any,
                src_ports: None,
                dst_ports: None,
            }
        } else {
            let slen = 16 + rng.below(9) as u8;
            let dlen = 16 + rng.below(17) as u8;
            let src = (0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff)) & mask(slen);
            let dst = (0xc612_0000 | (rng.next() as u32 & 0x0001_ffff)) & mask(dlen);
            let lo = 1 + rng.below(60_000) as u16;
            let dst_ports = if rng.below(2) == 0 {
                firewall::PortSpec::One(lo)
            } else {
                firewall::PortSpec::Range(format!("{lo}-{}", lo + rng.below(4000) as u16))
            };
            firewall::RuleConfig {
                action: firewall::Action::Allow,
                src: Some(format!("{}/{slen}", Ipv4Addr::from(src))),
                dst: Some(format!("{}/{dlen}", Ipv4Addr::from(dst))),
                proto: if rng.below(2) == 0 { firewall::Proto::Tcp } else { firewall::Proto::Udp },
                src_ports: None,
                dst_ports: Some(dst_ports),
            }
        };
        rules.push(rule);
    }
    rules
}

/// A packet matching allow rule `r`.
fn packet_for(rng: &mut Rng, r: &firewall::RuleConfig, size: usize) -> Vec<u8> {
    let cidr = |s: &Option<String>| {
        let (a, l) = s.as_deref().unwrap().split_once('/').unwrap();
        (u32::from(a.parse::<Ipv4Addr>().unwrap()), l.parse::<u8>().unwrap())
    };
    let (s, sl) = cidr(&r.src);
    let (d, dl) = cidr(&r.dst);
    let src = s | (rng.next() as u32 & !mask(sl));
    let dst = d | (rng.next() as u32 & !mask(dl));
    let dport = match r.dst_ports.as_ref().unwrap() {
        firewall::PortSpec::One(p) => *p,
        firewall::PortSpec::Range(x) => {
            let (a, b) = x.split_once('-').unwrap();
            let (a, b): (u16, u16) = (a.parse().unwrap(), b.parse().unwrap());
            a + rng.below((b - a) as u64 + 1) as u16
        }
    };
    let sport = 1024 + rng.below(60_000) as u16;
    match r.proto {
        firewall::Proto::Tcp => tcp((src, sport), (dst, dport), size),
        _ => udp((src, sport), (dst, dport), size),
    }
}

fn firewall_bench(c: &mut Criterion<ThreadCpuTime>) {
    let mut rng = Rng(0x5eed_0002);
    let rules = firewall_rules(&mut rng);
    let allow: Vec<&firewall::RuleConfig> =
        rules.iter().filter(|r| r.action == firewall::Action::Allow).collect();
    for size in SIZES {
        let frames: Vec<Vec<u8>> = (0..16_384)
            .map(|_| {
                let r = allow[rng.below(allow.len() as u64) as usize];
                packet_for(&mut rng, r, size)
            })
            .collect();
        let mut traffic = Traffic::new(&frames);
        let mut g = c.benchmark_group(format!("firewall/{size}B"));
        g.throughput(Throughput::Elements(BATCH as u64));
        bench_baseline(&mut g, &mut traffic);
        for conntrack in [true, false] {
            let cfg = firewall::Config {
                rules: rules.clone(),
                default: firewall::Action::Drop,
                conntrack,
                timeouts: Default::default(),
                max_flows: 1 << 20,
                max_fragments: 4096,
            };
            let mut nf = Firewall::from_config(&cfg).expect("firewall config");
            warm(&mut nf, &frames);
            let name = if conntrack {
                "firewall_1k_rules_conntrack_warm"
            } else {
                "firewall_1k_rules_classifier_only"
            };
            bench_pair(&mut g, name, &mut nf, &mut traffic);
        }
        g.finish();
    }
}

fn nat_bench(c: &mut Criterion<ThreadCpuTime>) {
    const FLOWS: u32 = 100_000;
    let ext = 0xcb00_7101;
    for size in SIZES {
        let cfg = nat::Config {
            external_ip: Ipv4Addr::from(ext),
            internal: vec!["10.0.0.0/8".into()],
            ports: "1024-65535".into(),
            timeouts: Default::default(),
            max_flows: 1 << 18,
            mapping: Default::default(),
            max_fragments: 4096,
            port_secret: None,
        };
        let mut nf = Nat::from_config(&cfg).expect("nat config");
        let outbound: Vec<Vec<u8>> = (0..FLOWS)
            .map(|i| {
                let src = (0x0a00_0001 + i, 10_000 + (i % 50_000) as u16);
                let dst = (0xc633_6400 + i % 200, 443);
                if i % 2 == 0 {
                    tcp(src, dst, size)
                } else {
                    udp(src, dst, size)
                }
            })
            .collect();
        // Creates the 100,000 mappings; the translated frames give the
        // replies' addresses and ports.
        let translated = warm(&mut nf, &outbound);
        assert_eq!(nf.mappings(), FLOWS as usize);
        let mut frames = Vec::with_capacity(2 * FLOWS as usize);
        for (o, t) in outbound.iter().zip(&translated) {
            let port = |f: &[u8], at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
            let (eport, rport) = (port(t, 34), port(t, 36));
            let remote = u32::from_be_bytes(t[30..34].try_into().unwrap());
            frames.push(o.clone());
            frames.push(if t[23] == 6 {
                tcp((remote, rport), (ext, eport), size)
            } else {
                udp((remote, rport), (ext, eport), size)
            });
        }
        warm(&mut nf, &frames);
        let mut traffic = Traffic::new(&frames);
        let mut g = c.benchmark_group(format!("nat/{size}B"));
        g.throughput(Throughput::Elements(BATCH as u64));
        bench_baseline(&mut g, &mut traffic);
        bench_pair(&mut g, "nat_100k_flows", &mut nf, &mut traffic);
        g.finish();
    }
}

fn config() -> Criterion<ThreadCpuTime> {
    Criterion::default()
        .with_measurement(ThreadCpuTime)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = router_bench, firewall_bench, nat_bench
}
criterion_main!(benches);
