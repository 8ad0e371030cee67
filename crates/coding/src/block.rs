//! Systematic block encoder: the sources of a generation go out unchanged
//! (each with a [`Kind::BlockSource`] header) as they arrive; when the
//! generation is full (or flushed early) the encoder emits its coded
//! symbols, random combinations of all sources whose coefficients derive
//! from a 32-bit seed carried in the header.

use crate::gf256::Kernel;
use crate::header::{coefficients, splitmix64, write_symbol, Header, Kind, MAX_PAYLOAD};
use thiserror::Error;

/// Block code parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockConfig {
    /// Sources per generation, 1..=255.
    pub generation_size: usize,
    /// Coded symbols per generation as a fraction of its sources; the count
    /// is rounded up (0.25 with 32 sources gives 8).
    pub redundancy: f64,
    /// Seed of the generator that picks each coded packet's seed.
    pub seed: u64,
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig { generation_size: 32, redundancy: 0.25, seed: 1 }
    }
}

/// Bad encoder parameters or input.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum EncodeError {
    #[error("generation size {0} is outside 1..=255")]
    GenerationSize(usize),
    #[error("redundancy {0} is outside 0..=8")]
    Redundancy(f64),
    #[error("window {0} is outside 1..=255")]
    Window(usize),
    #[error("payload of {0} bytes is longer than a symbol can carry ({MAX_PAYLOAD})")]
    TooLong(usize),
}

/// Number of coded symbols for `n` sources at `redundancy`.
pub fn coded_count(n: usize, redundancy: f64) -> usize {
    // The small epsilon keeps 0.25 * 32 at 8 despite float rounding.
    (n as f64 * redundancy - 1e-9).ceil().max(0.0) as usize
}

/// The systematic block encoder.
#[derive(Debug)]
pub struct BlockEncoder {
    config: BlockConfig,
    generation: u32,
    /// Source symbols (length-prefixed payloads) of the current generation;
    /// the buffers are reused from one generation to the next.
    sources: Vec<Vec<u8>>,
    filled: usize,
    max_symbol: usize,
    seed_state: u64,
    coefs: Vec<u8>,
    kernel: Kernel,
}

impl BlockEncoder {
    pub fn new(config: BlockConfig) -> Result<Self, EncodeError> {
        if !(1..=255).contains(&config.generation_size) {
            return Err(EncodeError::GenerationSize(config.generation_size));
        }
        if !(0.0..=8.0).contains(&config.redundancy) || config.redundancy.is_nan() {
            return Err(EncodeError::Redundancy(config.redundancy));
        }
        Ok(BlockEncoder {
            config,
            generation: 0,
            sources: (0..config.generation_size).map(|_| Vec::new()).collect(),
            filled: 0,
            max_symbol: 0,
            seed_state: config.seed,
            coefs: vec![0; config.generation_size],
            kernel: Kernel::best(),
        })
    }

    /// Use a specific kernel (benchmarks and tests).
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// Sources in the current, unfinished generation.
    pub fn pending(&self) -> usize {
        self.filled
    }

    /// Id of the current generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Take one source payload into the current generation and return the
    /// header of its systematic packet. When this fills the generation,
    /// call [`BlockEncoder::finish`] before the next source.
    pub fn push_source(&mut self, payload: &[u8]) -> Result<Header, EncodeError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(EncodeError::TooLong(payload.len()));
        }
        debug_assert!(self.filled < self.config.generation_size, "finish() a full generation");
        let idx = self.filled;
        write_symbol(payload, &mut self.sources[idx]);
        self.max_symbol = self.max_symbol.max(self.sources[idx].len());
        self.filled += 1;
        Ok(Header {
            kind: Kind::BlockSource,
            count: self.config.generation_size as u8,
            id: self.generation,
            index: idx as u16,
            seed: 0,
        })
    }

    /// Whether the current generation is full.
    pub fn is_full(&self) -> bool {
        self.filled == self.config.generation_size
    }

    /// Close the current generation (full or partial): call `emit` with the
    /// header and symbol of each coded packet, then start the next
    /// generation. Does nothing for an empty generation. Returns the number
    /// of coded packets emitted.
    pub fn finish(&mut self, mut emit: impl FnMut(&Header, &[u8])) -> usize {
        if self.filled == 0 {
            return 0;
        }
        let n = coded_count(self.filled, self.config.redundancy);
        let mut symbol = Vec::with_capacity(self.max_symbol);
        for j in 0..n {
            let seed = splitmix64(&mut self.seed_state) as u32;
            let header = Header {
                kind: Kind::BlockCoded,
                count: self.filled as u8,
                id: self.generation,
                index: j as u16,
                seed,
            };
            self.encode(seed, &mut symbol);
            emit(&header, &symbol);
        }
        self.generation = self.generation.wrapping_add(1);
        self.filled = 0;
        self.max_symbol = 0;
        n
    }

    /// The coded symbol for `seed` over the current sources, into `out`.
    pub fn encode(&mut self, seed: u32, out: &mut Vec<u8>) {
        let n = self.filled;
        coefficients(seed, &mut self.coefs[..n]);
        // Zero-pad the sources to one length so the kernel can fuse them.
        for s in &mut self.sources[..n] {
            s.resize(self.max_symbol, 0);
        }
        out.clear();
        out.resize(self.max_symbol, 0);
        let srcs: Vec<&[u8]> = self.sources[..n].iter().map(|v| &v[..]).collect();
        self.kernel.combine(out, &srcs, &self.coefs[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_config() {
        let bad =
            |g, r| BlockEncoder::new(BlockConfig { generation_size: g, redundancy: r, seed: 0 });
        assert_eq!(bad(0, 0.25).unwrap_err(), EncodeError::GenerationSize(0));
        assert_eq!(bad(256, 0.25).unwrap_err(), EncodeError::GenerationSize(256));
        assert!(bad(8, -0.1).is_err());
        assert!(bad(8, f64::NAN).is_err());
        assert!(bad(255, 8.0).is_ok());
    }

    #[test]
    fn coded_counts_round_up() {
        assert_eq!(coded_count(32, 0.25), 8);
        assert_eq!(coded_count(5, 0.25), 2);
        assert_eq!(coded_count(5, 0.0), 0);
    }

    #[test]
    fn coded_symbol_is_the_combination_of_sources() {
        let mut enc =
            BlockEncoder::new(BlockConfig { generation_size: 3, redundancy: 1.0, seed: 9 })
                .unwrap();
        let payloads: [&[u8]; 3] = [b"abc", b"hello world", b""];
        for (i, p) in payloads.iter().enumerate() {
            let h = enc.push_source(p).unwrap();
            assert_eq!((h.kind, h.index as usize, h.id), (Kind::BlockSource, i, 0));
        }
        assert!(enc.is_full());
        let mut coded = Vec::new();
        assert_eq!(enc.finish(|h, s| coded.push((*h, s.to_vec()))), 3);
        for (h, sym) in &coded {
            let mut c = [0u8; 3];
            coefficients(h.seed, &mut c);
            let mut want = vec![0u8; 13];
            for (p, &ci) in payloads.iter().zip(&c) {
                let mut s = Vec::new();
                write_symbol(p, &mut s);
                for (w, b) in want.iter_mut().zip(&s) {
                    *w ^= crate::gf256::mul(ci, *b);
                }
            }
            assert_eq!(sym, &want);
            assert_eq!((h.kind, h.count), (Kind::BlockCoded, 3));
        }
        assert_eq!(enc.generation(), 1);
        assert_eq!(enc.finish(|_, _| panic!("empty generation")), 0);
    }
}
