//! Sliding-window encoder: every source goes out unchanged with its
//! sequence number; after each source, coded symbols over the last
//! `window` sources are interleaved at the configured rate (0.25: one coded
//! packet after every fourth source).

use crate::block::EncodeError;
use crate::gf256::Kernel;
use crate::header::{coefficients, splitmix64, write_symbol, Header, Kind, MAX_PAYLOAD};
use crate::snapshot::{credit, same, source_symbol, SnapshotError};
use std::collections::VecDeque;

/// Sliding-window parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlidingConfig {
    /// Sources covered by each coded symbol, 1..=255.
    pub window: usize,
    /// Coded symbols per source (0.25: one every four sources).
    pub redundancy: f64,
    /// Seed of the generator that picks each coded packet's seed.
    pub seed: u64,
}

impl Default for SlidingConfig {
    fn default() -> Self {
        SlidingConfig { window: 8, redundancy: 0.25, seed: 1 }
    }
}

/// The sliding-window encoder.
#[derive(Debug)]
pub struct SlidingEncoder {
    config: SlidingConfig,
    next_seq: u32,
    /// The last `window` source symbols, oldest first; buffers are recycled.
    window: VecDeque<Vec<u8>>,
    credit: f64,
    seed_state: u64,
    coefs: Vec<u8>,
    kernel: Kernel,
}

impl SlidingEncoder {
    pub fn new(config: SlidingConfig) -> Result<Self, EncodeError> {
        if !(1..=255).contains(&config.window) {
            return Err(EncodeError::Window(config.window));
        }
        if !(0.0..=8.0).contains(&config.redundancy) || config.redundancy.is_nan() {
            return Err(EncodeError::Redundancy(config.redundancy));
        }
        Ok(SlidingEncoder {
            config,
            next_seq: 0,
            window: VecDeque::with_capacity(config.window),
            credit: 0.0,
            seed_state: config.seed,
            coefs: vec![0; config.window],
            kernel: Kernel::best(),
        })
    }

    /// Use a specific kernel (benchmarks and tests).
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    pub fn config(&self) -> &SlidingConfig {
        &self.config
    }

    /// Take one source: returns the header of its systematic packet, then
    /// calls `emit` for each coded packet due after it (header, symbol).
    pub fn push_source(
        &mut self,
        payload: &[u8],
        mut emit: impl FnMut(&Header, &[u8]),
    ) -> Result<Header, EncodeError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(EncodeError::TooLong(payload.len()));
        }
        let mut buf = if self.window.len() == self.config.window {
            self.window.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        write_symbol(payload, &mut buf);
        self.window.push_back(buf);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let header = Header { kind: Kind::SlidingSource, count: 0, id: seq, index: 0, seed: 0 };
        self.credit += self.config.redundancy;
        let mut symbol = Vec::new();
        let mut j = 0u16;
        while self.credit >= 1.0 - 1e-9 {
            self.credit -= 1.0;
            let seed = splitmix64(&mut self.seed_state) as u32;
            let count = self.window.len();
            let coded = Header {
                kind: Kind::SlidingCoded,
                count: count as u8,
                id: self.next_seq.wrapping_sub(count as u32),
                index: j,
                seed,
            };
            self.encode(seed, &mut symbol);
            emit(&coded, &symbol);
            j = j.wrapping_add(1);
        }
        Ok(header)
    }

    /// The coded symbol for `seed` over the current window, into `out`.
    pub fn encode(&mut self, seed: u32, out: &mut Vec<u8>) {
        let n = self.window.len();
        coefficients(seed, &mut self.coefs[..n]);
        let max = self.window.iter().map(Vec::len).max().unwrap_or(0);
        out.clear();
        out.resize(max, 0);
        for (src, &c) in self.window.iter().zip(&self.coefs[..n]) {
            self.kernel.mul_acc(&mut out[..src.len()], src, c);
        }
    }
}

/// The state of a [`SlidingEncoder`]: the configuration it runs under
/// (checked on restore), the window, the next sequence number, the credit
/// toward the next coded packet and where the seed generator is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlidingEncoderSnapshot {
    pub window: usize,
    /// `redundancy` as `f64::to_bits` (exact through any encoding).
    pub redundancy_bits: u64,
    /// The configured seed (not the generator's current state).
    pub seed: u64,
    /// Sequence number of the next source.
    pub next_seq: u32,
    /// The last sources' symbols (length-prefixed payloads), oldest first.
    pub sources: Vec<Vec<u8>>,
    /// Credit toward the next coded packet, as `f64::to_bits`.
    pub credit_bits: u64,
    /// State of the generator of coded packets' seeds.
    pub seed_state: u64,
}

impl SlidingEncoder {
    /// Snapshot the state (not the kernel or scratch buffers).
    pub fn snapshot(&self) -> SlidingEncoderSnapshot {
        SlidingEncoderSnapshot {
            window: self.config.window,
            redundancy_bits: self.config.redundancy.to_bits(),
            seed: self.config.seed,
            next_seq: self.next_seq,
            sources: self.window.iter().cloned().collect(),
            credit_bits: self.credit.to_bits(),
            seed_state: self.seed_state,
        }
    }

    /// A new encoder of this one's configuration and kernel, in the state of
    /// `snap`. Refused if `snap` was taken under another configuration or
    /// does not fit it; `self` is untouched either way.
    pub fn restored(&self, snap: &SlidingEncoderSnapshot) -> Result<SlidingEncoder, SnapshotError> {
        let cfg = &self.config;
        same("window", snap.window, cfg.window)?;
        same("redundancy", f64::from_bits(snap.redundancy_bits), cfg.redundancy)?;
        same("seed", snap.seed, cfg.seed)?;
        if snap.sources.len() > cfg.window {
            return Err(SnapshotError::Invalid(format!(
                "{} sources do not fit a window of {}",
                snap.sources.len(),
                cfg.window
            )));
        }
        for (i, sym) in snap.sources.iter().enumerate() {
            source_symbol(&format!("sources[{i}]"), sym)?;
        }
        let credit = credit("credit", snap.credit_bits)?;
        let mut enc =
            SlidingEncoder::new(*cfg).map_err(SnapshotError::Config)?.with_kernel(self.kernel);
        enc.next_seq = snap.next_seq;
        enc.window.extend(snap.sources.iter().cloned());
        enc.credit = credit;
        enc.seed_state = snap.seed_state;
        Ok(enc)
    }

    /// [`SlidingEncoder::restored`] in place.
    pub fn restore(&mut self, snap: &SlidingEncoderSnapshot) -> Result<(), SnapshotError> {
        *self = self.restored(snap)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_at_the_rate_over_the_window() {
        let mut enc =
            SlidingEncoder::new(SlidingConfig { window: 3, redundancy: 0.5, seed: 4 }).unwrap();
        let mut coded = Vec::new();
        for i in 0..6u8 {
            let h = enc.push_source(&[i; 10], |h, _| coded.push((i, *h))).unwrap();
            assert_eq!((h.kind, h.id), (Kind::SlidingSource, i as u32));
        }
        // One coded packet after every second source.
        let after: Vec<u8> = coded.iter().map(|c| c.0).collect();
        assert_eq!(after, vec![1, 3, 5]);
        assert_eq!((coded[0].1.id, coded[0].1.count), (0, 2));
        assert_eq!((coded[1].1.id, coded[1].1.count), (1, 3));
        assert_eq!((coded[2].1.id, coded[2].1.count), (3, 3));
    }

    #[test]
    fn rejects_bad_window() {
        let e = SlidingEncoder::new(SlidingConfig { window: 0, ..Default::default() });
        assert_eq!(e.unwrap_err(), EncodeError::Window(0));
    }

    #[test]
    fn restored_encoder_continues_the_stream_exactly() {
        let cfg = SlidingConfig { window: 3, redundancy: 0.4, seed: 8 };
        let run = |enc: &mut SlidingEncoder, range: std::ops::Range<u8>| {
            let mut out = Vec::new();
            for i in range {
                let mut coded = Vec::new();
                let h =
                    enc.push_source(&vec![i; 2 + i as usize], |h, s| coded.push((*h, s.to_vec())));
                out.push((h.unwrap(), Vec::new()));
                out.extend(coded);
            }
            out
        };
        let mut whole = SlidingEncoder::new(cfg).unwrap();
        let all = run(&mut whole, 0..12);
        for split in [0, 1, 2, 5, 11] {
            let mut first = SlidingEncoder::new(cfg).unwrap();
            let mut got = run(&mut first, 0..split);
            let mut second = SlidingEncoder::new(cfg).unwrap();
            second.restore(&first.snapshot()).unwrap();
            got.extend(run(&mut second, split..12));
            assert_eq!(got, all, "split at {split}");
            assert_eq!(second.snapshot(), whole.snapshot());
        }
    }

    #[test]
    fn restore_refuses_another_config_or_impossible_contents() {
        let cfg = SlidingConfig { window: 2, redundancy: 0.5, seed: 1 };
        let mut enc = SlidingEncoder::new(cfg).unwrap();
        enc.push_source(b"x", |_, _| {}).unwrap();
        let snap = enc.snapshot();
        let e = SlidingEncoder::new(SlidingConfig { redundancy: 0.25, ..cfg })
            .unwrap()
            .restore(&snap)
            .unwrap_err()
            .to_string();
        assert!(e.contains("redundancy 0.5"), "{e}");
        let mut bad = snap.clone();
        bad.sources = vec![vec![0, 0]; 3];
        assert!(enc.restore(&bad).unwrap_err().to_string().contains("window of 2"));
        let mut bad = snap.clone();
        bad.credit_bits = f64::NAN.to_bits();
        assert!(enc.restore(&bad).unwrap_err().to_string().contains("credit"));
        assert_eq!(enc.snapshot(), snap);
    }
}
