//! Per-batch cost of the stateless and light-state NFs (fwd, ats, xor,
//! l2switch, loadbalancer, meter) at 64 B and 1400 B frames.
//!
//! Every measurement refills a batch of 32 packets from template frames
//! (the NFs rewrite, grow or drop them) and then runs the NF. Two
//! baselines run in the same process: `refill` (refill, then `fwd`, which
//! does nothing) and `refill+parse` (refill, then locate the 5-tuple of
//! each packet, the header work any L3/L4 NF starts with). The cost of an
//! NF is its time minus `refill`; see docs/benchmarks.md.
//!
//! Time is the benchmark thread's CPU time (`braid_benchkit::ThreadCpuTime`), not
//! wall time: on this shared 2-core VM other processes preempt the bench,
//! and CPU time leaves their share out (cache effects of sharing stay).
//!
//! Run: `cargo bench -p braid-nf --bench stateless`

use braid_benchkit::ThreadCpuTime;
use braid_nf::xor::{xor_and_sum, xor_and_sum_bytewise};
use braid_nf::{build, Context, Counters, NetworkFunction, Params};
use braid_packet::envelope;
use braid_packet::wire::build::FrameSpec;
use braid_packet::wire::MacAddr;
use braid_packet::{Batch, Packet};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::net::Ipv4Addr;

const BATCH: usize = 32;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

/// One template frame and its ingress port.
struct Template {
    frame: Vec<u8>,
    in_port: u16,
}

/// 32 UDP frames of `len` bytes, 32 flows to the VIP, between 4 stations
/// (MACs) on 4 switch ports.
fn templates(len: usize) -> Vec<Template> {
    (0..BATCH)
        .map(|i| {
            let src = (Ipv4Addr::new(192, 168, 0, i as u8 + 1), 1000 + i as u16);
            let mut s = FrameSpec::udp_frame_len(src, (VIP, 53), len);
            let station = (i % 4) as u8;
            s.src_mac = MacAddr([0x02, 0, 0, 0, 0, station + 1]);
            s.dst_mac = MacAddr([0x02, 0, 0, 0, 0, (station + 1) % 4 + 1]);
            Template { frame: s.build(), in_port: station as u16 }
        })
        .collect()
}

/// Make `batch` hold exactly the templates again, reusing its buffers.
#[inline]
fn refill(batch: &mut Batch, t: &[Template]) {
    while batch.len() > t.len() {
        batch.pop();
    }
    while batch.len() < t.len() {
        batch.push(Packet::new());
    }
    for (p, t) in batch.iter_mut().zip(t) {
        p.reset_from(&t.frame).expect("template fits a buffer");
        p.meta.in_port = t.in_port;
        p.meta.rx_ns = 1;
        p.meta.mark = 0;
    }
}

fn nf(kind: &str, yaml: &str) -> Box<dyn NetworkFunction> {
    let p: Params = serde_yaml_ng::from_str(yaml).expect("bench params are valid YAML");
    build(kind, &p).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

fn bench(c: &mut Criterion<ThreadCpuTime>) {
    let cases: Vec<(&str, &str, &str)> = vec![
        ("fwd", "fwd", "{}"),
        ("ats", "ats", "{}"),
        ("xor", "xor", "key: \"0x0123456789abcdef0011\""),
        ("xor_recompute", "xor", "{key: \"0x0123456789abcdef0011\", checksum: recompute}"),
        ("l2switch", "l2switch", "ports: 4"),
        (
            "loadbalancer",
            "loadbalancer",
            "{vip: 10.0.0.100, backends: [{ip: 10.0.1.1}, {ip: 10.0.1.2}, {ip: 10.0.1.3}, \
             {ip: 10.0.1.4}]}",
        ),
        // CIR far above the offered rate: every packet green, DSCP rewritten.
        ("meter", "meter", "{cir: 1000000000000, cbs: 100000000}"),
    ];
    for len in [64usize, 1400] {
        let t = templates(len);
        let mut g = c.benchmark_group(format!("stateless/{len}B"));
        g.throughput(Throughput::Elements(BATCH as u64));

        let mut batch = Batch::with_capacity(BATCH * 4);
        g.bench_function(BenchmarkId::from_parameter("refill"), |b| {
            b.iter(|| {
                refill(&mut batch, &t);
                black_box(&mut batch);
            })
        });
        g.bench_function(BenchmarkId::from_parameter("refill+parse"), |b| {
            b.iter(|| {
                refill(&mut batch, &t);
                for p in batch.iter() {
                    let _ = black_box(envelope::parse(p.data()));
                }
            })
        });
        for (name, kind, yaml) in &cases {
            let mut f = nf(kind, yaml);
            let mut counters = Counters::default();
            let mut now = 1_000u64;
            // Warm up state (learned MACs, recorded connections).
            refill(&mut batch, &t);
            f.process(&mut batch, &mut Context::new(now, &mut counters));
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    refill(&mut batch, &t);
                    now += 1_000;
                    f.process(&mut batch, &mut Context::new(now, &mut counters));
                    black_box(&mut batch);
                })
            });
            assert_eq!(counters.dropped_total(), 0, "{name} dropped packets in its bench");
        }
        g.finish();
    }
}

/// The XOR+checksum kernel alone on a 1358 B payload (a 1400 B frame):
/// 32 bytes per step against one byte per step.
fn bench_xor_kernel(c: &mut Criterion<ThreadCpuTime>) {
    let mut data: Vec<u8> = (0..1358u32).map(|i| i as u8).collect();
    let stream: Vec<u8> = b"0123456789".iter().copied().cycle().take(2048).collect();
    let mut g = c.benchmark_group("xor_kernel/1358B");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("u64x4", |b| b.iter(|| black_box(xor_and_sum(&mut data, &stream))));
    g.bench_function("bytewise", |b| {
        b.iter(|| black_box(xor_and_sum_bytewise(&mut data, &stream)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = bench, bench_xor_kernel
}
criterion_main!(benches);
