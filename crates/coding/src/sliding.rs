//! Sliding-window encoder: every source goes out unchanged with its
//! sequence number; after each source, coded symbols over the last
//! `window` sources are interleaved at the configured rate (0.25: one coded
//! packet after every fourth source).

use crate::block::EncodeError;
use crate::gf256::Kernel;
use crate::header::{coefficients, splitmix64, write_symbol, Header, Kind, MAX_PAYLOAD};
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
}
