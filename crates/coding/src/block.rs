//! Systematic block encoder: the sources of a generation go out unchanged
//! (each with a [`Kind::BlockSource`] header) as they arrive; when the
//! generation is full (or flushed early) the encoder emits its coded
//! symbols, random combinations of all sources whose coefficients derive
//! from a 32-bit seed carried in the header.

use crate::gf256::Kernel;
use crate::header::{coefficients, splitmix64, write_symbol, Header, Kind, MAX_PAYLOAD};
use crate::snapshot::{same, source_symbol, SnapshotError};
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

/// The state of a [`BlockEncoder`]: the configuration it runs under (checked
/// on restore), the pending generation and where the seed generator is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockEncoderSnapshot {
    pub generation_size: usize,
    /// `redundancy` as `f64::to_bits` (exact through any encoding).
    pub redundancy_bits: u64,
    /// The configured seed (not the generator's current state).
    pub seed: u64,
    /// Id of the pending generation.
    pub generation: u32,
    /// Its source symbols so far (length-prefixed payloads), in index order.
    pub sources: Vec<Vec<u8>>,
    /// State of the generator of coded packets' seeds.
    pub seed_state: u64,
}

impl BlockEncoder {
    /// Snapshot the state (not the kernel or scratch buffers).
    pub fn snapshot(&self) -> BlockEncoderSnapshot {
        BlockEncoderSnapshot {
            generation_size: self.config.generation_size,
            redundancy_bits: self.config.redundancy.to_bits(),
            seed: self.config.seed,
            generation: self.generation,
            sources: self.sources[..self.filled].to_vec(),
            seed_state: self.seed_state,
        }
    }

    /// A new encoder of this one's configuration and kernel, in the state of
    /// `snap`. Refused if `snap` was taken under another configuration or
    /// does not fit it; `self` is untouched either way.
    pub fn restored(&self, snap: &BlockEncoderSnapshot) -> Result<BlockEncoder, SnapshotError> {
        let cfg = &self.config;
        same("generation_size", snap.generation_size, cfg.generation_size)?;
        same("redundancy", f64::from_bits(snap.redundancy_bits), cfg.redundancy)?;
        same("seed", snap.seed, cfg.seed)?;
        if snap.sources.len() > cfg.generation_size {
            return Err(SnapshotError::Invalid(format!(
                "{} pending sources do not fit a generation of {}",
                snap.sources.len(),
                cfg.generation_size
            )));
        }
        for (i, sym) in snap.sources.iter().enumerate() {
            source_symbol(&format!("sources[{i}]"), sym)?;
        }
        let mut enc =
            BlockEncoder::new(*cfg).map_err(SnapshotError::Config)?.with_kernel(self.kernel);
        enc.generation = snap.generation;
        for (dst, src) in enc.sources.iter_mut().zip(&snap.sources) {
            dst.extend_from_slice(src);
        }
        enc.filled = snap.sources.len();
        // Sources are padded to one length only while a coded symbol is
        // computed, so the longest one is the pending maximum.
        enc.max_symbol = snap.sources.iter().map(Vec::len).max().unwrap_or(0);
        enc.seed_state = snap.seed_state;
        Ok(enc)
    }

    /// [`BlockEncoder::restored`] in place.
    pub fn restore(&mut self, snap: &BlockEncoderSnapshot) -> Result<(), SnapshotError> {
        *self = self.restored(snap)?;
        Ok(())
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

    #[test]
    fn restored_encoder_continues_the_stream_exactly() {
        let cfg = BlockConfig { generation_size: 4, redundancy: 0.75, seed: 5 };
        let run = |enc: &mut BlockEncoder, range: std::ops::Range<u8>| {
            let mut out = Vec::new();
            for i in range {
                let h = enc.push_source(&vec![i; 3 + i as usize]).unwrap();
                out.push((h, Vec::new()));
                if enc.is_full() {
                    enc.finish(|h, s| out.push((*h, s.to_vec())));
                }
            }
            out
        };
        let mut whole = BlockEncoder::new(cfg).unwrap();
        let all = run(&mut whole, 0..10);
        let mut first = BlockEncoder::new(cfg).unwrap();
        let mut got = run(&mut first, 0..6);
        let mut second = BlockEncoder::new(cfg).unwrap();
        second.restore(&first.snapshot()).unwrap();
        got.extend(run(&mut second, 6..10));
        assert_eq!(got, all);
        assert_eq!(second.snapshot(), whole.snapshot());
    }

    #[test]
    fn restore_refuses_another_config_or_impossible_contents() {
        let mut enc =
            BlockEncoder::new(BlockConfig { generation_size: 2, redundancy: 0.5, seed: 1 })
                .unwrap();
        enc.push_source(b"x").unwrap();
        let snap = enc.snapshot();
        let mut other =
            BlockEncoder::new(BlockConfig { generation_size: 3, ..*enc.config() }).unwrap();
        let e = other.restore(&snap).unwrap_err();
        assert!(
            matches!(&e, SnapshotError::Mismatch { field: "generation_size", snapshot, ours }
                if snapshot == "2" && ours == "3"),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("generation_size 2") && e.contains("3"), "{e}");
        let e = BlockEncoder::new(BlockConfig { seed: 2, ..*enc.config() })
            .unwrap()
            .restore(&snap)
            .unwrap_err()
            .to_string();
        assert!(e.contains("seed"), "{e}");
        let mut bad = snap.clone();
        bad.sources = vec![vec![0, 1, 7]; 3];
        assert!(enc.restore(&bad).unwrap_err().to_string().contains("do not fit"));
        bad.sources = vec![vec![0, 5, 7]];
        let e = enc.restore(&bad).unwrap_err();
        assert!(matches!(&e, SnapshotError::Invalid(m) if m.starts_with("sources[0]")), "{e:?}");
        // Refused restores left it as it was.
        assert_eq!(enc.snapshot(), snap);
    }
}
