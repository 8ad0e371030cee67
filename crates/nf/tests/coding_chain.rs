//! End to end: `nc-encode` -> `loss` -> `nc-decode`, for both codes.
//!
//! Every source payload starts with its index, so each delivered frame is
//! matched to its original and compared byte for byte. The stages run by
//! hand, one batch of 32 after another, so the test can see exactly which
//! packets the loss NF removed and derive what the decoder must recover and
//! what it must report as undecodable.

use braid_coding::header::{Header, Kind};
use braid_nf::{Context, Counters, DropReason, NetworkFunction, Params};
use braid_packet::wire::build::FrameSpec;
use braid_packet::{Batch, Packet};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

fn nf(name: &str, yaml: &str) -> Box<dyn NetworkFunction> {
    braid_nf::build(name, &serde_yaml_ng::from_str::<Params>(yaml).unwrap()).unwrap()
}

/// `n` frames of one flow, payload lengths 4..=1400, payload = index || noise.
fn sources(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut st = seed;
    (0..n)
        .map(|i| {
            let len = 4 + (braid_coding::header::splitmix64(&mut st) % 1397) as usize;
            let mut s = FrameSpec::udp(
                (Ipv4Addr::new(10, 1, 0, 1), 4000),
                (Ipv4Addr::new(10, 2, 0, 1), 5000),
                len,
            );
            s.payload = (0..len).map(|_| braid_coding::header::splitmix64(&mut st) as u8).collect();
            s.payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
            s.build()
        })
        .collect()
}

/// UDP payload of an IPv4/UDP frame without options or VLAN.
fn udp_payload(frame: &[u8]) -> &[u8] {
    &frame[42..]
}

fn coding_header(frame: &[u8]) -> Header {
    Header::parse(udp_payload(frame)).expect("coded frame").header
}

struct Run {
    /// Coding headers of the packets that survived the loss NF.
    survived: Vec<Header>,
    /// Number of packets the encoder sent.
    sent: usize,
    /// Delivered frames, in delivery order.
    delivered: Vec<Vec<u8>>,
    decoder: Counters,
    loss: Counters,
}

fn run(encoder: &str, rate: f64, seed: u64, input: &[Vec<u8>]) -> Run {
    let mut enc = nf("nc-encode", encoder);
    let mut loss = nf("loss", &format!("rate: {rate}\nseed: {seed}"));
    let mut dec = nf("nc-decode", "timeout_ms: 0\nmax_generations: 64\nspan: 64");
    let (mut ce, mut cl, mut cd) = (Counters::default(), Counters::default(), Counters::default());
    let mut r = Run {
        survived: vec![],
        sent: 0,
        delivered: vec![],
        decoder: Counters::default(),
        loss: Counters::default(),
    };
    let mut stage = |b: &mut Batch, r: &mut Run, cl: &mut Counters, cd: &mut Counters| {
        r.sent += b.len();
        loss.process(b, &mut Context::new(0, cl));
        r.survived.extend(b.iter().map(|p| coding_header(p.data())));
        dec.process(b, &mut Context::new(0, cd));
        r.delivered.extend(b.iter().map(|p| p.data().to_vec()));
    };
    for chunk in input.chunks(32) {
        let mut b: Batch = chunk.iter().map(|f| Packet::from_bytes(f)).collect();
        enc.process(&mut b, &mut Context::new(0, &mut ce));
        stage(&mut b, &mut r, &mut cl, &mut cd);
    }
    // End of input: the encoder flushes a partial generation, the decoder
    // gives up what is still incomplete.
    let mut b = Batch::new();
    enc.tick(&mut b, &mut Context::new(u64::MAX / 2, &mut ce));
    stage(&mut b, &mut r, &mut cl, &mut cd);
    let mut out = Batch::new();
    dec.tick(&mut out, &mut Context::new(u64::MAX / 2, &mut cd));
    r.delivered.extend(out.iter().map(|p| p.data().to_vec()));
    assert_eq!(ce.dropped_total(), 0);
    r.decoder = cd;
    r.loss = cl;
    r
}

fn index_of(frame: &[u8]) -> usize {
    u32::from_be_bytes(udp_payload(frame)[..4].try_into().unwrap()) as usize
}

/// Every delivered frame equals its original, none twice.
fn check_delivered_exact(r: &Run, input: &[Vec<u8>]) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    for f in &r.delivered {
        let i = index_of(f);
        assert!(f == &input[i], "delivered frame {i} differs from the original");
        assert!(seen.insert(i), "frame {i} delivered twice");
    }
    seen
}

#[test]
fn block_code_recovers_within_redundancy_and_counts_the_rest_exactly() {
    const K: usize = 32;
    const CODED: usize = 8; // ceil(32 * 0.25)
    let input = sources(K * 40, 11);
    for (rate, seed) in [(0.08, 3u64), (0.25, 4)] {
        let r = run("generation_size: 32\nredundancy: 0.25", rate, seed, &input);
        assert_eq!(r.sent, 40 * (K + CODED));
        let lost = r.sent - r.survived.len();
        assert_eq!(r.loss.dropped(DropReason::Loss) as usize, lost);
        // Per generation: how many of its 40 packets arrived.
        let mut arrived: BTreeMap<u32, (usize, BTreeSet<u16>)> = BTreeMap::new();
        for h in &r.survived {
            let e = arrived.entry(h.id).or_default();
            e.0 += 1;
            if h.kind == Kind::BlockSource {
                e.1.insert(h.index);
            }
        }
        let delivered = check_delivered_exact(&r, &input);
        let mut recoverable = 0;
        let mut expected_undecodable = 0;
        for g in 0..40u32 {
            let (n, srcs) = arrived.get(&g).cloned().unwrap_or_default();
            let got: Vec<usize> =
                (0..K).map(|i| g as usize * K + i).filter(|i| delivered.contains(i)).collect();
            if n >= K {
                // Lost at most the redundancy: every source comes back.
                recoverable += 1;
                assert_eq!(
                    got.len(),
                    K,
                    "generation {g} lost {} of 40 but was not fully recovered",
                    40 - n
                );
            } else {
                // Too few packets for 32 unknowns: only the sources that
                // arrived come out; the others are reported.
                assert_eq!(got.len(), srcs.len(), "generation {g}");
                expected_undecodable += K - srcs.len();
            }
        }
        assert_eq!(
            r.decoder.dropped(DropReason::Undecodable) as usize,
            expected_undecodable,
            "rate {rate}"
        );
        assert_eq!(delivered.len() + expected_undecodable, input.len());
        // Within a generation, delivery is in order.
        for w in r.delivered.windows(2) {
            let (a, b) = (index_of(&w[0]), index_of(&w[1]));
            if a / K == b / K {
                assert!(a < b, "out of order: {a} then {b}");
            }
        }
        if rate < 0.1 {
            assert_eq!(
                recoverable, 40,
                "with 8 % loss every generation of this seed is within redundancy"
            );
        } else {
            assert!(
                recoverable < 40 && recoverable > 0,
                "25 % loss: some generations recoverable, some not"
            );
        }
    }
}

#[test]
fn block_code_partial_generation_is_flushed_and_decoded() {
    let input = sources(45, 5);
    let r = run("generation_size: 32\nredundancy: 0.25\ntimeout_ms: 1", 0.0, 1, &input);
    // 32 + 8 coded, then 13 + 4 coded flushed by the tick.
    assert_eq!(r.sent, 32 + 8 + 13 + 4);
    assert_eq!(r.delivered, input);
}

#[test]
fn sliding_code_recovers_and_counts_exactly() {
    let input = sources(1200, 21);
    for (rate, seed) in [(0.03, 9u64), (0.2, 10)] {
        let r = run("code: sliding\nwindow: 8\nredundancy: 0.25", rate, seed, &input);
        let delivered = check_delivered_exact(&r, &input);
        // Strictly in sequence order.
        let order: Vec<usize> = r.delivered.iter().map(|f| index_of(f)).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "sliding delivery out of order");
        // The decoder knows of every sequence number up to the last one it
        // saw a packet about; each is delivered or reported, exactly once.
        let horizon = r
            .survived
            .iter()
            .map(|h| {
                h.id as usize + if h.kind == Kind::SlidingSource { 1 } else { h.count as usize }
            })
            .max()
            .unwrap();
        let undecodable = r.decoder.dropped(DropReason::Undecodable) as usize;
        assert_eq!(delivered.len() + undecodable, horizon, "rate {rate}");
        if rate < 0.1 {
            assert_eq!(
                delivered.len(),
                input.len(),
                "3 % loss of this seed is within what window 8 at 25 % repairs"
            );
        } else {
            assert!(undecodable > 0, "20 % loss exceeds 25 % redundancy somewhere");
            assert!(delivered.len() > input.len() * 8 / 10, "most sources arrive or are repaired");
        }
    }
}

#[test]
fn block_generations_interleaved_and_reordered_are_all_recovered() {
    const K: usize = 16;
    let input = sources(K * 3, 33);
    let mut enc = nf("nc-encode", "generation_size: 16\nredundancy: 0.25");
    let mut b: Batch = input.iter().map(|f| Packet::from_bytes(f)).collect();
    enc.process(&mut b, &mut Context::new(0, &mut Counters::default()));
    // 3 generations of 16 sources + 4 coded. Lose two sources of each
    // generation (within its 4 coded packets), interleave the generations
    // round-robin and reverse everything: coded packets arrive first, then
    // the sources from the last to the first.
    let mut per_gen: Vec<Vec<Packet>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for p in b.drain() {
        let h = coding_header(p.data());
        if h.kind == Kind::BlockSource && (h.index == 2 || h.index == 9) {
            continue;
        }
        per_gen[h.id as usize].push(p);
    }
    for g in &mut per_gen {
        g.reverse();
    }
    let mut mixed = Batch::new();
    while per_gen.iter().any(|g| !g.is_empty()) {
        for g in &mut per_gen {
            if let Some(p) = g.pop() {
                mixed.push(p);
            }
        }
    }
    let mut shuffled: Vec<Packet> = mixed.drain().collect();
    shuffled.reverse();
    let mut dec = nf("nc-decode", "max_generations: 3");
    let mut c = Counters::default();
    let mut b: Batch = shuffled.into_iter().collect();
    dec.process(&mut b, &mut Context::new(0, &mut c));
    let out: Vec<Vec<u8>> = b.iter().map(|p| p.data().to_vec()).collect();
    assert_eq!(out.len(), input.len(), "{:?}", c.drop_breakdown());
    let mut per_gen_order: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for f in &out {
        let i = index_of(f);
        assert!(f == &input[i], "frame {i} differs");
        per_gen_order.entry(i / K).or_default().push(i);
    }
    for (g, order) in per_gen_order {
        let want: Vec<usize> = (g * K..(g + 1) * K).collect();
        assert_eq!(order, want, "generation {g} delivered in index order");
    }
    assert_eq!(c.dropped_total(), 0);
}
