//! Throughput of the `dpi` NF on one core, beside a plain single-pattern
//! `memchr::memmem` scan of the same bytes (the machine's limit for looking
//! at every payload byte once).
//!
//! Traffic: 1,024 TCP streams, each already opened (SYN seen), taking turns
//! in 32-packet batches of 1,400 B payloads; every packet continues its
//! stream (its sequence number is rewritten on refill), so every byte is
//! scanned. UDP: the same payloads as datagrams. Payloads are random
//! printable ASCII that no rule matches (checked), so every rule stays
//! live: the worst case, nothing is skipped.
//!
//! Rules: 100 `content` literals (8 to 16 random printable bytes, a third
//! `nocase`) and 10 `pcre` regexes in the style of IDS signatures.
//!
//! Throughput is payload bytes (Gbit/s = 8 × bytes/s). `baseline_refill`
//! is the cost of refilling a batch (header copy, sequence number), part of
//! every `dpi_*` row; `memmem_1_pattern` scans the 32 payloads of a batch
//! with `memmem::Finder` for a pattern that is absent.
//!
//! Time is the benchmark thread's CPU time (`braid_benchkit::ThreadCpuTime`).
//!
//! Run: `cargo bench -p braid-nf --bench dpi`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use braid_benchkit::ThreadCpuTime;
use braid_coding::header::splitmix64;
use braid_nf::dpi::Dpi;
use braid_nf::{Context, Counters, NetworkFunction};
use braid_packet::wire::build::{FrameSpec, L4Spec};
use braid_packet::wire::tcp_flags::{ACK, SYN};
use braid_packet::{Batch, Packet};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

type Group<'a> = BenchmarkGroup<'a, ThreadCpuTime>;

const BATCH: usize = 32;
const PAYLOAD: usize = 1400;
const FLOWS: usize = 1024;
/// Ethernet + IPv4 + TCP headers of the frames built here.
const TCP_HDR: usize = 54;
const SEQ_AT: usize = 14 + 20 + 4;
const ISN: u32 = 1000;

/// Deterministic inputs (the coding crate's splitmix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        splitmix64(&mut self.0) % n
    }
    fn printable(&mut self, len: usize) -> String {
        (0..len).map(|_| (b'!' + self.below(94) as u8) as char).collect()
    }
}

const REGEXES: [&str; 10] = [
    r"GET /[a-z]{1,20}\.php\?id=[0-9]+ HTTP",
    r"user=[a-z]{3,8};pass=",
    r"(cmd|exec)\.(exe|sh)\x00",
    r"\x90{16}",
    r"Content-Length: [0-9]{7,}\r\n",
    r"select [a-z_,* ]+ from [a-z_]+ where",
    r"\.\./\.\./\.\./etc/passwd",
    r"<script>[^<]{0,64}document\.cookie",
    r"(?i)union\s+all\s+select",
    r"\x00\x00\x00\x01\x67[\x00-\x1f]{4}",
];

/// Rules: `literals` random literals (a third nocase) and the first
/// `regexes` of [`REGEXES`].
fn rules_yaml(literals: usize, regexes: usize) -> String {
    let mut rng = Rng(0xd91_0001);
    let mut rules = Vec::new();
    for i in 0..literals {
        // `|` starts a hex run and `'` ends the YAML string: keep them out.
        let len = 8 + rng.below(9) as usize;
        let lit = rng.printable(len).replace(['|', '\''], "_");
        rules.push(format!("{{sid: {}, content: '{lit}', nocase: {}}}", 1000 + i, i % 3 == 0));
    }
    for (i, re) in REGEXES.iter().take(regexes).enumerate() {
        rules.push(format!("{{sid: {}, pcre: '{}'}}", 2000 + i, re.replace('\'', "''")));
    }
    format!("rules: [{}]\nlog_per_sec: 0\nmax_flows: {}\n", rules.join(", "), 2 * FLOWS)
}

fn dpi(literals: usize, regexes: usize) -> Dpi {
    let yaml = rules_yaml(literals, regexes);
    Dpi::from_params(&serde_yaml_ng::from_str(&yaml).expect("yaml")).expect("dpi rules")
}

fn ep(i: usize) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8), 40000 + (i % 1000) as u16)
}

const SERVER: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 9, 0, 1), 80);

fn tcp_frame(i: usize, flags: u8, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (ep(i), SERVER);
    let mut s = FrameSpec::tcp(src, dst, flags);
    s.l4 = L4Spec::Tcp { src_port: src.1, dst_port: dst.1, flags, seq: ISN, ack: 1, window: 65535 };
    s.payload = payload.to_vec();
    s.build()
}

/// TCP data segments of `FLOWS` streams taking turns; the refill copies a
/// stream's headers into a packet and sets its next sequence number.
struct Streams {
    headers: Vec<[u8; TCP_HDR]>,
    next_seq: Vec<u32>,
    payloads: Vec<Vec<u8>>,
    cursor: usize,
}

impl Streams {
    fn new(rng: &mut Rng) -> Streams {
        let payloads: Vec<Vec<u8>> =
            (0..BATCH).map(|_| rng.printable(PAYLOAD).into_bytes()).collect();
        let headers = (0..FLOWS)
            .map(|i| tcp_frame(i, ACK, &payloads[0])[..TCP_HDR].try_into().unwrap())
            .collect();
        Streams { headers, next_seq: vec![ISN + 1; FLOWS], payloads, cursor: 0 }
    }

    /// Open every stream (the NF sees each SYN).
    fn open(&self, nf: &mut Dpi) {
        let mut c = Counters::default();
        for i in 0..FLOWS {
            let mut b: Batch =
                std::iter::once(Packet::from_bytes(&tcp_frame(i, SYN, b""))).collect();
            nf.process(&mut b, &mut Context::new(1, &mut c));
        }
        assert_eq!(nf.flows(), FLOWS);
    }

    #[inline]
    fn refill(&mut self, batch: &mut Batch) {
        if batch.len() != BATCH {
            batch.clear();
            for k in 0..BATCH {
                batch.push(Packet::from_bytes(&tcp_frame(0, ACK, &self.payloads[k])));
            }
        }
        for p in batch.iter_mut() {
            let f = self.cursor;
            self.cursor = (self.cursor + 1) % FLOWS;
            let d = p.data_mut();
            d[..TCP_HDR].copy_from_slice(&self.headers[f]);
            d[SEQ_AT..SEQ_AT + 4].copy_from_slice(&self.next_seq[f].to_be_bytes());
            self.next_seq[f] = self.next_seq[f].wrapping_add(PAYLOAD as u32);
        }
    }
}

fn bench_tcp(g: &mut Group<'_>, name: &str, mut nf: Dpi, rng_seed: u64) {
    let mut streams = Streams::new(&mut Rng(rng_seed));
    streams.open(&mut nf);
    let mut batch = Batch::with_capacity(BATCH);
    let mut c = Counters::default();
    g.bench_function(name, |b| {
        b.iter(|| {
            streams.refill(&mut batch);
            nf.process(&mut batch, &mut Context::new(2, &mut c));
            black_box(batch.len());
        })
    });
    // Measured what it claims: nothing dropped or matched, every byte new.
    assert_eq!(c.dropped_total(), 0, "{name}");
    assert!(nf.rule_hits().iter().all(|&n| n == 0), "{name}: a rule matched the random payload");
    assert_eq!(nf.stats().retransmissions + nf.stats().segments_queued, 0, "{name}");
}

fn dpi_bench(c: &mut Criterion<ThreadCpuTime>) {
    let mut g = c.benchmark_group(format!("dpi/{PAYLOAD}B"));
    g.throughput(Throughput::Bytes((BATCH * PAYLOAD) as u64));
    let seed = 0x5eed_0d91;

    let payloads = Streams::new(&mut Rng(seed)).payloads;
    let finder = memchr::memmem::Finder::new(b"attack!!");
    g.bench_function("memmem_1_pattern", |b| {
        b.iter(|| {
            for p in &payloads {
                black_box(finder.find(black_box(p)));
            }
        })
    });
    assert!(payloads.iter().all(|p| finder.find(p).is_none()));

    let mut streams = Streams::new(&mut Rng(seed));
    let mut batch = Batch::with_capacity(BATCH);
    g.bench_function("baseline_refill", |b| {
        b.iter(|| {
            streams.refill(&mut batch);
            black_box(&mut batch);
        })
    });

    bench_tcp(&mut g, "dpi_tcp_100lit_10re", dpi(100, 10), seed);
    bench_tcp(&mut g, "dpi_tcp_100lit", dpi(100, 0), seed);
    bench_tcp(&mut g, "dpi_tcp_10re", dpi(0, 10), seed);

    // UDP: every datagram scanned alone (no stream state).
    let mut nf = dpi(100, 10);
    let frames: Vec<Vec<u8>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut s = FrameSpec::udp(ep(i), SERVER, PAYLOAD);
            s.payload = p.clone();
            s.build()
        })
        .collect();
    let mut batch: Batch = frames.iter().map(|f| Packet::from_bytes(f)).collect();
    let mut counters = Counters::default();
    g.bench_function("dpi_udp_100lit_10re", |b| {
        b.iter(|| {
            nf.process(&mut batch, &mut Context::new(2, &mut counters));
            black_box(batch.len());
        })
    });
    assert_eq!(batch.len(), BATCH);
    assert!(nf.rule_hits().iter().all(|&n| n == 0));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = dpi_bench
}
criterion_main!(benches);
