//! The 4-NF chain firewall → router → nat → fwd over one batch at a time,
//! beside the refill-only baseline (generator → drop) in the same run.
//!
//! `cargo bench -p braid-runtime --bench chain`
//!
//! Each iteration refills one batch of 32 packets from per-flow templates
//! (1024 UDP flows) and, in the chain case, passes it through the chain.
//! Throughput is in packets (elements); the chain's own cost is the
//! difference between the two.

use std::hint::black_box;

use braid_io::memory::{GeneratorConfig, GeneratorPort};
use braid_io::Port;
use braid_packet::Batch;
use braid_runtime::{Chain, ChainDescriptor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// `examples/chain4.yaml`, so `braid bench` runs the very same chain.
const CHAIN: &str = include_str!("../../../examples/chain4.yaml");

const BATCH: usize = 32;
const FLOWS: u32 = 1024;

fn generator(frame_size: usize) -> GeneratorPort {
    GeneratorPort::new(&GeneratorConfig { frame_size, flows: FLOWS, ..GeneratorConfig::default() })
        .expect("valid generator")
}

fn chain() -> Chain {
    let d = ChainDescriptor::from_yaml(CHAIN).expect("bench chain parses");
    Chain::from_descriptor(&d).expect("bench chain builds")
}

fn bench_chain(c: &mut Criterion) {
    let mut g = c.benchmark_group("chain4");
    g.throughput(Throughput::Elements(BATCH as u64));
    for frame_size in [64usize, 1400] {
        let mut gen = generator(frame_size);
        let mut batch = Batch::with_capacity(BATCH);
        g.bench_with_input(BenchmarkId::new("refill_baseline", frame_size), &frame_size, |b, _| {
            b.iter(|| {
                gen.recv(&mut batch, BATCH).expect("generator never fails");
                black_box(batch.len());
                batch.clear();
            })
        });

        let mut gen = generator(frame_size);
        let mut chain = chain();
        // Warm the flow tables (firewall conntrack, NAT mappings).
        for _ in 0..(FLOWS as usize / BATCH) * 2 {
            gen.recv(&mut batch, BATCH).expect("generator never fails");
            chain.process(&mut batch);
            batch.clear();
        }
        assert_eq!(chain.stages()[3].counters().packets_out, FLOWS as u64 * 2, "all pass");
        g.bench_with_input(
            BenchmarkId::new("fw_router_nat_fwd", frame_size),
            &frame_size,
            |b, _| {
                b.iter(|| {
                    gen.recv(&mut batch, BATCH).expect("generator never fails");
                    chain.process(&mut batch);
                    black_box(batch.len());
                    batch.clear();
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_chain);
criterion_main!(benches);
