//! RLNC benchmarks, side by side in one run: braid-coding, the `rlnc`
//! crate (0.8) as a peer doing the same work, and `memcpy` of the same
//! bytes as the bandwidth baseline.
//!
//! All figures are **CPU time of the measuring thread** (the scheduler's
//! per-thread clock, `braid_benchkit::cpu_ns_per_call`): the build VM is
//! shared by other jobs and wall-clock figures would measure them.
//!
//! `cargo bench -p braid-coding --bench rlnc`

use braid_coding::block::{BlockConfig, BlockEncoder};
use braid_coding::decoder::BlockDecoder;
use braid_coding::gf256::Kernel;
use braid_coding::header::{Header, HEADER_LEN};
use braid_coding::sliding::{SlidingConfig, SlidingEncoder};
use std::hint::black_box;

const GEN: usize = 32;

/// CPU nanoseconds per call of `op` (see `braid_benchkit::cpu_ns_per_call`).
fn measure(op: impl FnMut()) -> f64 {
    braid_benchkit::cpu_ns_per_call(20, op)
}

fn payloads(n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| (0..len).map(|j| (i * 31 + j * 7) as u8).collect()).collect()
}

fn kernels() {
    println!("## GF(2^8) multiply-accumulate, 1400 B (dst ^= c * src)\n");
    println!("| kernel | ns | GB/s | vs memcpy of 1400 B |");
    println!("|---|---|---|---|");
    let src = vec![0x5au8; 1400];
    let mut dst = vec![0xa5u8; 1400];
    let memcpy = measure(|| dst.copy_from_slice(black_box(&src)));
    println!("| memcpy | {memcpy:.1} | {:.1} | 1.00 |", 1400.0 / memcpy);
    for k in Kernel::available() {
        let ns = measure(|| k.mul_acc(&mut dst, black_box(&src), 0x53));
        println!("| {} | {ns:.1} | {:.1} | {:.2} |", k.name(), 1400.0 / ns, ns / memcpy);
    }
}

fn encode_throughput() {
    println!("\n## Encoding throughput: one coded packet over a generation of 32 x 1400 B (GB/s of source data)\n");
    let src = payloads(GEN, 1400);
    let flat: Vec<u8> = src.concat();
    let bytes = flat.len() as f64;
    let mut copy = vec![0u8; flat.len()];
    let memcpy = measure(|| copy.copy_from_slice(black_box(&flat)));

    let mut enc =
        BlockEncoder::new(BlockConfig { generation_size: GEN, redundancy: 0.25, seed: 1 }).unwrap();
    for p in &src {
        enc.push_source(p).unwrap();
    }
    let mut out = Vec::with_capacity(1402);
    let mut seed = 0u32;
    let ours = measure(|| {
        seed = seed.wrapping_add(1);
        enc.encode(seed, &mut out);
        black_box(&out);
    });

    let peer = rlnc::full::Encoder::new(flat.clone(), GEN).unwrap();
    let mut rng = rand::rng();
    let mut piece = vec![0u8; peer.get_full_coded_piece_byte_len()];
    let theirs = measure(|| {
        peer.code_with_buf(&mut rng, &mut piece).unwrap();
        black_box(&piece);
    });
    println!("| implementation | ns / coded packet | GB/s of source | coded packets/s (M) | vs memcpy of the 44.8 kB |");
    println!("|---|---|---|---|---|");
    for (name, ns) in [("memcpy 44.8 kB", memcpy), ("braid", ours), ("rlnc 0.8", theirs)] {
        println!(
            "| {name} | {ns:.0} | {:.1} | {:.2} | {:.2}x |",
            bytes / ns,
            1e3 / ns,
            ns / memcpy
        );
    }
    println!("\nbraid / rlnc encoding speed: {:.1}x", theirs / ours);
}

fn per_packet() {
    println!("\n## Per source packet: block (g = 32, 25 %: 32 originals + 8 coded) and sliding window (w = 8, 25 %)\n");
    println!("| workload | payload | braid ns / packet | rlnc ns / packet | rlnc / braid |");
    println!("|---|---|---|---|---|");
    for len in [256usize, 1400] {
        let src = payloads(GEN, len);
        let mut sink = 0usize;

        let mut enc = BlockEncoder::new(BlockConfig::default()).unwrap();
        let ours = measure(|| {
            for p in &src {
                black_box(enc.push_source(p).unwrap());
            }
            enc.finish(|h, s| sink += s.len() + h.index as usize);
        }) / GEN as f64;
        let mut rng = rand::rng();
        let theirs = measure(|| {
            let peer = rlnc::full::Encoder::new(src.concat(), GEN).unwrap();
            for _ in 0..8 {
                sink += peer.code(&mut rng).len();
            }
        }) / GEN as f64;
        println!("| block encode | {len} B | {ours:.0} | {theirs:.0} | {:.1}x |", theirs / ours);

        let mut sl = SlidingEncoder::new(SlidingConfig::default()).unwrap();
        let ours = measure(|| {
            for p in &src {
                black_box(sl.push_source(p, |h, s| sink += s.len() + h.index as usize).unwrap());
            }
        }) / GEN as f64;
        let theirs = measure(|| {
            // One coded packet over the last 8 sources after every 4th.
            for i in (3..GEN).step_by(4) {
                let lo = (i + 1).saturating_sub(8);
                let peer = rlnc::full::Encoder::new(src[lo..=i].concat(), i + 1 - lo).unwrap();
                sink += peer.code(&mut rng).len();
            }
        }) / GEN as f64;
        println!("| sliding encode | {len} B | {ours:.0} | {theirs:.0} | {:.1}x |", theirs / ours);
        black_box(sink);
    }
}

fn decode() {
    println!(
        "\n## Decoding a generation of 32 x 1400 B from coded packets only (every source lost)\n"
    );
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
    let ours = measure(|| {
        let mut dec = BlockDecoder::new(4);
        let mut n = 0;
        for p in &coded {
            dec.receive(&Header::parse(p).unwrap(), 0, |d| n += d.payload.len());
            if n == GEN * 1400 {
                break;
            }
        }
        assert_eq!(n, GEN * 1400);
    });

    let peer = rlnc::full::Encoder::new(src.concat(), GEN).unwrap();
    let mut rng = rand::rng();
    let pieces: Vec<Vec<u8>> = (0..2 * GEN).map(|_| peer.code(&mut rng)).collect();
    let dec0 = rlnc::full::Decoder::new(peer.get_piece_byte_len(), GEN).unwrap();
    let theirs = measure(|| {
        let mut dec = dec0.clone();
        for p in &pieces {
            if dec.is_already_decoded() {
                break;
            }
            let _ = dec.decode(p);
        }
        black_box(dec.get_decoded_data().unwrap());
    });
    let bits = (GEN * 1400 * 8) as f64;
    println!("| implementation | µs / generation | Gbit/s of source |");
    println!("|---|---|---|");
    println!("| braid | {:.1} | {:.2} |", ours / 1e3, bits / ours);
    println!("| rlnc 0.8 | {:.1} | {:.2} |", theirs / 1e3, bits / theirs);
    println!("\nbraid / rlnc decoding speed: {:.1}x", theirs / ours);
}

/// Decoder cost per source packet on the common paths: everything arrives
/// (sources delivered as they come, coded packets absorbed), and one
/// source in eight lost and repaired from the coded packets.
fn decode_per_packet() {
    println!("\n## Decoding per source packet (braid; the coded packets' cost is included)\n");
    println!("| workload | payload | ns / source packet |");
    println!("|---|---|---|");
    for len in [256usize, 1400] {
        let src = payloads(GEN, len);
        let wire = |h: &Header, s: &[u8]| {
            let mut v = vec![0u8; HEADER_LEN];
            h.emit(&mut v);
            v.extend_from_slice(s);
            v
        };
        // Block: 4 generations of 32 + 8.
        let mut enc = BlockEncoder::new(BlockConfig::default()).unwrap();
        let mut block = Vec::new();
        for _ in 0..4 {
            for p in &src {
                let h = enc.push_source(p).unwrap();
                block.push(wire(&h, p));
            }
            enc.finish(|h, s| block.push(wire(h, s)));
        }
        // Sliding: 128 sources, window 8, 25 %.
        let mut sl = SlidingEncoder::new(SlidingConfig::default()).unwrap();
        let mut sliding = Vec::new();
        for _ in 0..4 {
            for p in &src {
                let mut coded = Vec::new();
                let h = sl.push_source(p, |h, s| coded.push(wire(h, s))).unwrap();
                sliding.push(wire(&h, p));
                sliding.extend(coded);
            }
        }
        let lossy = |pkts: &[Vec<u8>]| -> Vec<Vec<u8>> {
            let mut i = 0;
            pkts.iter()
                .filter(|p| {
                    let src = Header::parse(p).unwrap().header.kind.is_source();
                    i += src as usize;
                    !(src && i % 8 == 3)
                })
                .cloned()
                .collect()
        };
        let (block_lossy, sliding_lossy) = (lossy(&block), lossy(&sliding));
        let n = 4 * GEN;
        for (name, pkts, is_block) in [
            ("block, no loss", &block, true),
            ("block, 1 source in 8 lost", &block_lossy, true),
            ("sliding, no loss", &sliding, false),
            ("sliding, 1 source in 8 lost", &sliding_lossy, false),
        ] {
            let ns = measure(|| {
                let mut got = 0;
                if is_block {
                    let mut dec = BlockDecoder::new(8);
                    for p in pkts.iter() {
                        dec.receive(&Header::parse(p).unwrap(), 0, |_| got += 1);
                    }
                } else {
                    let mut dec = braid_coding::decoder::SlidingDecoder::new(64);
                    for p in pkts.iter() {
                        dec.receive(&Header::parse(p).unwrap(), 0, |_| got += 1);
                    }
                    dec.expire(1, 0, |_| got += 1);
                }
                assert_eq!(got, n);
            }) / n as f64;
            println!("| {name} | {len} B | {ns:.0} |");
        }
    }
}

fn main() {
    println!("best kernel on this CPU: {}\n", Kernel::best().name());
    kernels();
    encode_throughput();
    per_packet();
    decode();
    decode_per_packet();
}
