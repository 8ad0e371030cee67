//! Per-packet cost of the virtual-port data paths on one core: send a batch
//! on one end and receive it on the other, in the same thread, so the
//! number is the work of the port itself (no scheduler, no second core).
//! Side by side: shared memory with packets built in place (`alloc`),
//! shared memory copying heap packets in, the in-process channel, and the
//! floor of moving a batch of handles from one Vec to another.

use braid_io::channel::channel_pair;
use braid_io::shm::{ShmConfig, ShmPort};
use braid_io::Port;
use braid_packet::{Batch, Packet};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const BATCH: usize = 32;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("port_hop");
    for size in [64usize, 1400] {
        let frame = vec![0xABu8; size];
        g.throughput(Throughput::Elements(BATCH as u64));

        let (mut a, mut b) = ShmPort::pair(ShmConfig::default()).unwrap();
        let mut tx = Batch::with_capacity(BATCH);
        let mut rx = Batch::with_capacity(BATCH);
        g.bench_function(BenchmarkId::new("shm_alloc", size), |bn| {
            bn.iter(|| {
                a.alloc(&mut tx, BATCH).unwrap();
                for p in tx.iter_mut() {
                    p.extend_from_slice(&frame).unwrap();
                }
                a.send(&mut tx).unwrap();
                b.recv(&mut rx, BATCH).unwrap();
                rx.clear();
            })
        });

        g.bench_function(BenchmarkId::new("shm_copy_in", size), |bn| {
            bn.iter(|| {
                for _ in 0..BATCH {
                    tx.push(Packet::from_bytes(&frame));
                }
                a.send(&mut tx).unwrap();
                b.recv(&mut rx, BATCH).unwrap();
                rx.clear();
            })
        });

        let (mut ca, mut cb) = channel_pair("bench", 4096);
        g.bench_function(BenchmarkId::new("channel", size), |bn| {
            bn.iter(|| {
                for _ in 0..BATCH {
                    tx.push(Packet::from_bytes(&frame));
                }
                ca.send(&mut tx).unwrap();
                cb.recv(&mut rx, BATCH).unwrap();
                rx.clear();
            })
        });

        g.bench_function(BenchmarkId::new("vec_move_baseline", size), |bn| {
            bn.iter(|| {
                for _ in 0..BATCH {
                    tx.push(Packet::from_bytes(&frame));
                }
                rx.append(&mut tx);
                rx.clear();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
