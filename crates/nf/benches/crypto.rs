//! AES benchmarks, side by side in one run: the raw cipher as the NFs use
//! it (aws-lc-rs), the pure-Rust RustCrypto `aes`/`ctr`/`aes-gcm` (the
//! alternative that was measured first), `openssl speed -evp` on the same
//! sizes (spawned from this binary), and the `encrypt`/`decrypt` NFs per
//! packet.
//!
//! All figures are **CPU time of the measuring thread** (the scheduler's
//! per-thread clock, `braid_benchkit::cpu_ns_per_call`), and `openssl speed`
//! also divides by CPU time: the build VM is shared by other jobs, and
//! wall-clock figures would measure the neighbours.
//!
//! `cargo bench -p braid-nf --bench crypto`; with `BRAID_CRYPTO_LAST=1`
//! only the last table (the `encrypt` NF against `openssl speed`).

use aes::cipher::{InnerIvInit, KeyInit, StreamCipherCore};
use aes_gcm::aead::AeadInOut;
use braid_nf::aes_header::{Cipher, CtrKeystreams, Mode};
use braid_nf::{Context, Counters, NetworkFunction, Params};
use braid_packet::wire::build::FrameSpec;
use braid_packet::{Batch, Packet};
use ctr::flavors::Ctr32BE;
use ctr::CtrCore;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::process::Command;

/// CPU nanoseconds per call of `op` (see `braid_benchkit::cpu_ns_per_call`).
fn measure(op: impl FnMut()) -> f64 {
    braid_benchkit::cpu_ns_per_call(100, op)
}

/// Bytes per CPU second of `openssl speed -evp <cipher> -bytes <len>`.
fn openssl(cipher: &str, len: usize) -> Option<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", "2", "-evp", cipher, "-bytes", &len.to_string()])
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // "Doing AES-256-CTR for 2s on 1400 size blocks: 9376282 AES-256-CTR's in 1.90s"
    let line = text.lines().find(|l| l.starts_with("Doing"))?;
    let count: f64 = line.split(": ").nth(1)?.split_whitespace().next()?.parse().ok()?;
    let secs: f64 = line.rsplit(" in ").next()?.trim_end_matches('s').parse().ok()?;
    Some(count * len as f64 / secs)
}

fn nf(name: &str, mode: &str) -> Box<dyn NetworkFunction> {
    nf_with(name, mode, "")
}

fn nf_with(name: &str, mode: &str, extra: &str) -> Box<dyn NetworkFunction> {
    let p: Params = serde_yaml_ng::from_str(&format!(
        "mode: {mode}\nkey: 0707070707070707070707070707070707070707070707070707070707070707\n{extra}"
    ))
    .unwrap();
    braid_nf::build(name, &p).unwrap()
}

/// 32 frames whose UDP payload is `len` bytes.
fn frames(len: usize) -> Vec<Vec<u8>> {
    (0..32)
        .map(|i| {
            let mut s = FrameSpec::udp(
                (Ipv4Addr::new(10, 0, 0, 1), 1000 + i),
                (Ipv4Addr::new(10, 0, 0, 2), 2000),
                len,
            );
            s.payload = vec![i as u8; len];
            s.build()
        })
        .collect()
}

fn batch_of(frames: &[Vec<u8>]) -> Batch {
    frames.iter().map(|f| Packet::from_bytes(f)).collect()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let key = [7u8; 32];
    let nonce = [3u8; 12];
    if std::env::var_os("BRAID_CRYPTO_LAST").is_none() {
        cipher_and_nf_tables(key, nonce);
    }
    nf_vs_openssl(key, nonce);
}

/// The first two tables: raw ciphers against `openssl speed`, and the NFs
/// per packet.
fn cipher_and_nf_tables(key: [u8; 32], nonce: [u8; 12]) {
    println!("## raw cipher vs openssl speed (CPU time, GB/s = 1e9 B/s)\n");
    println!("| cipher | bytes | braid NF cipher (aws-lc-rs) | RustCrypto 0.9/0.11 | openssl speed -evp | aws-lc-rs / openssl | RustCrypto / openssl |");
    println!("|---|---|---|---|---|---|---|");
    let rc_ctr = aes::Aes256Enc::new_from_slice(&key).unwrap();
    let rc_gcm = aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap();
    for (mode, evp) in [(Mode::Ctr, "aes-256-ctr"), (Mode::Gcm, "aes-256-gcm")] {
        let cipher = Cipher::new(mode, &key).unwrap();
        for len in [256usize, 1400, 16384] {
            let mut buf = vec![0x42u8; len];
            let ns = measure(|| match mode {
                Mode::Ctr => cipher.ctr(&nonce, black_box(&mut buf)).unwrap(),
                Mode::Gcm => {
                    black_box(cipher.seal(&nonce, b"", black_box(&mut buf)).unwrap());
                }
            });
            let rc_ns = measure(|| match mode {
                Mode::Ctr => {
                    let mut iv = [0u8; 16];
                    iv[..12].copy_from_slice(&nonce);
                    CtrCore::<&aes::Aes256Enc, Ctr32BE>::inner_iv_init(&rc_ctr, (&iv).into())
                        .try_apply_keystream_partial(black_box(&mut buf[..]).into())
                        .unwrap();
                }
                Mode::Gcm => {
                    black_box(
                        rc_gcm
                            .encrypt_inout_detached(
                                (&nonce).into(),
                                b"",
                                black_box(&mut buf[..]).into(),
                            )
                            .unwrap(),
                    );
                }
            });
            let (ours, rc) = (len as f64 / ns, len as f64 / rc_ns);
            let (o, r1, r2) = match openssl(evp, len) {
                Some(o) => (
                    format!("{:.2} GB/s", o / 1e9),
                    format!("{:.0} %", 100.0 * ours * 1e9 / o),
                    format!("{:.0} %", 100.0 * rc * 1e9 / o),
                ),
                None => ("openssl not found".into(), String::new(), String::new()),
            };
            println!("| {evp} | {len} | {ours:.2} GB/s ({ns:.0} ns) | {rc:.2} GB/s ({rc_ns:.0} ns) | {o} | {r1} | {r2} |");
        }
    }

    println!("\n## NFs per packet (CPU time; batch of 32, batch construction subtracted)\n");
    println!("| NF | mode | UDP payload | ns / packet | Mpps (one core) |");
    println!("|---|---|---|---|---|");
    for mode in ["ctr", "gcm"] {
        for len in [256usize, 1400] {
            let plain = frames(len);
            let mut enc = nf("encrypt", mode);
            let mut counters = Counters::default();
            let build_plain = measure(|| drop(black_box(batch_of(&plain))));
            let with_enc = measure(|| {
                let mut b = batch_of(&plain);
                enc.process(&mut b, &mut Context::new(0, &mut counters));
                black_box(b);
            });
            let mut cipher = batch_of(&plain);
            enc.process(&mut cipher, &mut Context::new(0, &mut counters));
            let cipher: Vec<Vec<u8>> = cipher.iter().map(|p| p.data().to_vec()).collect();
            // The same ciphertext is decrypted again and again: without
            // the replay window (GCM's default would drop every repeat).
            let mut dec = if mode == "gcm" {
                nf_with("decrypt", mode, "replay_window: 0")
            } else {
                nf("decrypt", mode)
            };
            let build_cipher = measure(|| drop(black_box(batch_of(&cipher))));
            let with_dec = measure(|| {
                let mut b = batch_of(&cipher);
                dec.process(&mut b, &mut Context::new(0, &mut counters));
                assert_eq!(b.len(), 32);
                black_box(b);
            });
            for (name, total, base) in
                [("encrypt", with_enc, build_plain), ("decrypt", with_dec, build_cipher)]
            {
                let per = (total - base) / 32.0;
                println!("| {name} | aes-256-{mode} | {len} B | {per:.0} | {:.2} |", 1e3 / per);
            }
            assert_eq!(counters.dropped_total(), 0);
        }
    }
}

/// The last table: the `encrypt` NF per packet against `openssl speed`.
fn nf_vs_openssl(key: [u8; 32], nonce: [u8; 12]) {
    println!(
        "\n## encrypt NF per packet vs `openssl speed -evp` on the same payload bytes (CPU time)\n"
    );
    println!("`udp_checksum: compute` (default) sums the ciphertext for the UDP checksum; `zero` writes 0 (IPv4).\n");
    println!("`cipher alone` is one cipher call per payload of the same batch (AWS-LC's CTR or GCM, the frames in their buffers, nothing else).\n");
    println!("`key streams per batch` (CTR only) is the NF's own cipher work: every payload's counter blocks (its own nonce) queued, one block-cipher call for the batch (RustCrypto `aes`, VAES where the CPU has it), each payload XORed with its key stream: what the NF would cost with no work of its own.\n");
    println!("| mode | UDP payload | cipher alone (ns) | key streams per batch (ns) | encrypt, compute (ns) | encrypt, zero (ns) | openssl speed (ns) | openssl / cipher alone | openssl / key streams per batch | openssl / NF, compute | openssl / NF, zero |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (mode, cipher_mode) in [("ctr", Mode::Ctr), ("gcm", Mode::Gcm)] {
        for len in [256usize, 1400] {
            let plain = frames(len);
            let mut counters = Counters::default();
            let base = |plain: &[Vec<u8>]| measure(|| drop(black_box(batch_of(plain))));
            let mut per = |nf: &mut Box<dyn NetworkFunction>| {
                let base = base(&plain);
                let total = measure(|| {
                    let mut b = batch_of(&plain);
                    nf.process(&mut b, &mut Context::new(0, &mut counters));
                    black_box(b);
                });
                (total - base) / 32.0
            };
            let cipher = Cipher::new(cipher_mode, &key).unwrap();
            let alone = || {
                let base = base(&plain);
                let total = measure(|| {
                    let mut b = batch_of(&plain);
                    for p in b.iter_mut() {
                        let d = p.data_mut();
                        let body = d.len() - len;
                        match cipher_mode {
                            Mode::Ctr => cipher.ctr(&nonce, &mut d[body..]).unwrap(),
                            Mode::Gcm => {
                                black_box(cipher.seal(&nonce, &[1; 16], &mut d[body..]).unwrap());
                            }
                        }
                    }
                    black_box(b);
                });
                (total - base) / 32.0
            };
            let mut streams = CtrKeystreams::default();
            let mut seq = 0u64;
            let mut per_batch = || {
                if cipher_mode != Mode::Ctr {
                    return f64::NAN;
                }
                let base = base(&plain);
                let total = measure(|| {
                    let mut b = batch_of(&plain);
                    streams.clear();
                    for _ in 0..b.len() {
                        let mut n = nonce;
                        n[4..].copy_from_slice(&seq.to_be_bytes());
                        seq += 1;
                        streams.push(&n, len);
                    }
                    cipher.ctr_keystreams(&mut streams).unwrap();
                    for (i, p) in b.iter_mut().enumerate() {
                        let d = p.data_mut();
                        let body = d.len() - len;
                        streams.apply(i, &mut d[body..]).unwrap();
                    }
                    black_box(b);
                });
                (total - base) / 32.0
            };
            let mut compute = nf("encrypt", mode);
            let mut zero = nf_with("encrypt", mode, "udp_checksum: zero");
            // Interleaved: alone, per batch, compute, zero, twice; the
            // lower of each.
            let (a1, k1, c1, z1) = (alone(), per_batch(), per(&mut compute), per(&mut zero));
            let (a2, k2, c2, z2) = (alone(), per_batch(), per(&mut compute), per(&mut zero));
            let (a, k, c, z) = (a1.min(a2), k1.min(k2), c1.min(c2), z1.min(z2));
            let evp = format!("aes-256-{mode}");
            let (o, ra, rk, rc, rz) = match openssl(&evp, len) {
                Some(bps) => {
                    let ns = len as f64 / bps * 1e9;
                    let r =
                        |x: f64| if x.is_nan() { "—".into() } else { format!("{:.2}", ns / x) };
                    (format!("{ns:.0}"), r(a), r(k), r(c), r(z))
                }
                None => (
                    "openssl not found".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
            };
            let k = if k.is_nan() { "—".into() } else { format!("{k:.0}") };
            println!("| aes-256-{mode} | {len} B | {a:.0} | {k} | {c:.0} | {z:.0} | {o} | {ra} | {rk} | {rc} | {rz} |");
        }
    }
}
