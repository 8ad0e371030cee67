//! RLNC benchmarks: braid-coding against the `rlnc` crate (0.8) as a peer
//! and `memcpy` of the same bytes as the bandwidth baseline, in one run.
//!
//! `cargo bench -p braid-coding --bench rlnc`

use braid_coding::block::{BlockConfig, BlockEncoder};
use braid_coding::decoder::BlockDecoder;
use braid_coding::gf256::Kernel;
use braid_coding::header::{Header, HEADER_LEN};
use braid_coding::sliding::{SlidingConfig, SlidingEncoder};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

const GEN: usize = 32;

fn payloads(n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| (0..len).map(|j| (i * 31 + j * 7) as u8).collect()).collect()
}

/// Raw multiply-accumulate of one 1400 B symbol, per kernel, against memcpy.
fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("mul_acc_1400B");
    g.throughput(Throughput::Bytes(1400));
    let src = vec![0x5au8; 1400];
    let mut dst = vec![0xa5u8; 1400];
    g.bench_function("memcpy", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)));
    });
    for k in Kernel::available() {
        g.bench_function(k.name(), |b| b.iter(|| k.mul_acc(&mut dst, black_box(&src), 0x53)));
    }
    g.finish();
}

/// One coded packet over a full generation of 32 x 1400 B (throughput in
/// source bytes), ours vs rlnc vs memcpy of the 44.8 KB.
fn encode_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_g32_1400B");
    g.throughput(Throughput::Bytes((GEN * 1400) as u64));
    let src = payloads(GEN, 1400);
    let flat: Vec<u8> = src.concat();
    let mut copy = vec![0u8; flat.len()];
    g.bench_function("memcpy", |b| b.iter(|| copy.copy_from_slice(black_box(&flat))));

    let mut enc =
        BlockEncoder::new(BlockConfig { generation_size: GEN, redundancy: 0.25, seed: 1 }).unwrap();
    for p in &src {
        enc.push_source(p).unwrap();
    }
    let mut out = Vec::with_capacity(1402);
    let mut seed = 0u32;
    g.bench_function("braid", |b| {
        b.iter(|| {
            seed = seed.wrapping_add(1);
            enc.encode(seed, &mut out);
            black_box(&out);
        })
    });

    let peer = rlnc::full::Encoder::new(flat.clone(), GEN).unwrap();
    let mut rng = rand::rng();
    let mut piece = vec![0u8; peer.get_full_coded_piece_byte_len()];
    g.bench_function("rlnc", |b| {
        b.iter(|| {
            peer.code_with_buf(&mut rng, &mut piece).unwrap();
            black_box(&piece);
        })
    });
    g.finish();
}

/// Per source packet: a whole generation of 32 packets through the block
/// encoder (originals + 25 % coded), and 32 packets through the sliding
/// encoder (window 8, rate 0.25); the rlnc peer does the same coding work.
fn per_packet(c: &mut Criterion) {
    for len in [256usize, 1400] {
        let mut g = c.benchmark_group(format!("per_packet_{len}B"));
        g.throughput(Throughput::Elements(GEN as u64));
        let src = payloads(GEN, len);

        let mut enc = BlockEncoder::new(BlockConfig::default()).unwrap();
        let mut sink = 0usize;
        g.bench_function("block/braid", |b| {
            b.iter(|| {
                for p in &src {
                    black_box(enc.push_source(p).unwrap());
                }
                enc.finish(|h, s| sink += s.len() + h.index as usize);
            })
        });
        g.bench_function("block/rlnc", |b| {
            let mut rng = rand::rng();
            b.iter(|| {
                let peer = rlnc::full::Encoder::new(src.concat(), GEN).unwrap();
                for _ in 0..8 {
                    sink += peer.code(&mut rng).len();
                }
            })
        });

        let mut sl = SlidingEncoder::new(SlidingConfig::default()).unwrap();
        g.bench_function("sliding/braid", |b| {
            b.iter(|| {
                for p in &src {
                    black_box(
                        sl.push_source(p, |h, s| sink += s.len() + h.index as usize).unwrap(),
                    );
                }
            })
        });
        g.bench_function("sliding/rlnc", |b| {
            let mut rng = rand::rng();
            b.iter(|| {
                // One coded packet over the last 8 sources after every 4th.
                for i in (3..GEN).step_by(4) {
                    let lo = (i + 1).saturating_sub(8);
                    let peer = rlnc::full::Encoder::new(src[lo..=i].concat(), i + 1 - lo).unwrap();
                    sink += peer.code(&mut rng).len();
                }
            })
        });
        black_box(sink);
        g.finish();
    }
}

/// Decoding a generation of 32 x 1400 B from 32 coded packets only (the
/// worst case: every source lost), ours vs rlnc.
fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_g32_1400B");
    g.throughput(Throughput::Bytes((GEN * 1400) as u64));
    let src = payloads(GEN, 1400);
    let mut enc =
        BlockEncoder::new(BlockConfig { generation_size: GEN, redundancy: 1.5, seed: 5 }).unwrap();
    for p in &src {
        enc.push_source(p).unwrap();
    }
    let mut coded = Vec::new();
    enc.finish(|h, s| {
        let mut v = vec![0u8; HEADER_LEN];
        h.emit(&mut v);
        v.extend_from_slice(s);
        coded.push(v);
    });
    g.bench_with_input(BenchmarkId::new("braid", "coded-only"), &coded, |b, coded| {
        b.iter(|| {
            let mut dec = BlockDecoder::new(4);
            let mut n = 0;
            for p in coded {
                dec.receive(&Header::parse(p).unwrap(), 0, |d| n += d.payload.len());
                if n == GEN * 1400 {
                    break;
                }
            }
            assert_eq!(n, GEN * 1400);
        })
    });

    let peer = rlnc::full::Encoder::new(src.concat(), GEN).unwrap();
    let mut rng = rand::rng();
    let pieces: Vec<Vec<u8>> = (0..2 * GEN).map(|_| peer.code(&mut rng)).collect();
    let dec0 = rlnc::full::Decoder::new(peer.get_piece_byte_len(), GEN).unwrap();
    g.bench_with_input(BenchmarkId::new("rlnc", "coded-only"), &pieces, |b, pieces| {
        b.iter(|| {
            let mut dec = dec0.clone();
            for p in pieces {
                if dec.is_already_decoded() {
                    break;
                }
                let _ = dec.decode(p);
            }
            black_box(dec.get_decoded_data().unwrap());
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = kernels, encode_throughput, per_packet, decode }
criterion_main!(benches);
