//! Recoder: an intermediate node that forwards what it receives and adds
//! fresh random combinations of the packets it holds for a generation,
//! without decoding. Recoded packets carry their coefficient vector
//! explicitly ([`Kind::BlockRecoded`]), since a combination of seeded
//! vectors is not itself seeded.

use crate::decoder::Solver;
use crate::decoder::SolverSnapshot;
use crate::gf256::Kernel;
use crate::header::{coefficients, splitmix64, write_symbol, Header, Kind, Parsed};
use crate::snapshot::{credit, same, SnapshotError};
use std::collections::BTreeMap;

#[derive(Debug)]
struct Held {
    solver: Solver,
    size: Option<usize>,
    credit: f64,
    sent: u16,
}

/// Recoder of the block code.
#[derive(Debug)]
pub struct Recoder {
    max_generations: usize,
    redundancy: f64,
    gens: BTreeMap<u32, Held>,
    /// The configured seed, to recognise snapshots of this configuration.
    seed: u64,
    seed_state: u64,
    coefs: Vec<u8>,
}

impl Recoder {
    /// Emit `redundancy` recoded packets per received packet (credit
    /// accumulates per generation); hold at most `max_generations`.
    pub fn new(max_generations: usize, redundancy: f64, seed: u64) -> Recoder {
        Recoder {
            max_generations: max_generations.max(1),
            redundancy: if redundancy.is_finite() { redundancy.clamp(0.0, 8.0) } else { 0.0 },
            gens: BTreeMap::new(),
            seed,
            seed_state: seed,
            coefs: Vec::new(),
        }
    }

    /// Generations held.
    pub fn in_flight(&self) -> usize {
        self.gens.len()
    }

    /// Take one received block-code packet. Calls `emit(header,
    /// coefficients, symbol)` for each recoded packet due now. Returns false
    /// if the packet is not a block-code packet (the caller forwards or
    /// drops it as it sees fit).
    pub fn receive(&mut self, p: &Parsed<'_>, mut emit: impl FnMut(&Header, &[u8], &[u8])) -> bool {
        let h = p.header;
        if !matches!(h.kind, Kind::BlockSource | Kind::BlockCoded | Kind::BlockRecoded) {
            return false;
        }
        if !self.gens.contains_key(&h.id) {
            while self.gens.len() >= self.max_generations {
                let Some((&oldest, _)) = self.gens.iter().next() else { break };
                self.gens.remove(&oldest);
            }
            self.gens.insert(
                h.id,
                Held {
                    solver: Solver::new(h.count as usize, Kernel::best()),
                    size: None,
                    credit: 0.0,
                    sent: 0,
                },
            );
        }
        let Some(g) = self.gens.get_mut(&h.id) else { return true };
        let width = g.solver.width();
        match h.kind {
            Kind::BlockSource => {
                let mut sym = Vec::new();
                write_symbol(p.payload, &mut sym);
                g.solver.insert_source(h.index as usize, &sym);
            }
            _ => {
                let n = h.count as usize;
                if n > width {
                    return true;
                }
                g.size = Some(n);
                let coefs: &[u8] = if h.kind == Kind::BlockCoded {
                    self.coefs.resize(n, 0);
                    coefficients(h.seed, &mut self.coefs);
                    &self.coefs
                } else {
                    p.coefficients
                };
                g.solver.insert(coefs, p.payload);
            }
        }
        g.credit += self.redundancy;
        while g.credit >= 1.0 - 1e-9 {
            g.credit -= 1.0;
            let size = g.size.unwrap_or(width);
            let seed = splitmix64(&mut self.seed_state) as u32;
            let (vec, sym) = g.solver.combine(seed, size);
            let header = Header {
                kind: Kind::BlockRecoded,
                count: size as u8,
                id: h.id,
                index: g.sent,
                seed: 0,
            };
            g.sent = g.sent.wrapping_add(1);
            emit(&header, &vec, &sym);
        }
        true
    }
}

/// One generation held by a [`Recoder`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldSnapshot {
    pub id: u32,
    pub solver: SolverSnapshot,
    /// Final size, once a coded packet has told it.
    pub size: Option<usize>,
    /// Credit toward the next recoded packet, as `f64::to_bits`.
    pub credit_bits: u64,
    /// Recoded packets sent for it.
    pub sent: u16,
}

/// The state of a [`Recoder`]: its configuration (checked on restore), the
/// generations it holds and where the seed generator is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoderSnapshot {
    pub max_generations: usize,
    /// `redundancy` as `f64::to_bits` (exact through any encoding).
    pub redundancy_bits: u64,
    /// The configured seed (not the generator's current state).
    pub seed: u64,
    pub seed_state: u64,
    /// Held generations, by id.
    pub generations: Vec<HeldSnapshot>,
}

impl Recoder {
    /// Snapshot the state (not the kernels or scratch buffers).
    pub fn snapshot(&self) -> RecoderSnapshot {
        RecoderSnapshot {
            max_generations: self.max_generations,
            redundancy_bits: self.redundancy.to_bits(),
            seed: self.seed,
            seed_state: self.seed_state,
            generations: self
                .gens
                .iter()
                .map(|(&id, g)| HeldSnapshot {
                    id,
                    solver: g.solver.snapshot(),
                    size: g.size,
                    credit_bits: g.credit.to_bits(),
                    sent: g.sent,
                })
                .collect(),
        }
    }

    /// A new recoder of this one's configuration, in the state of `snap`.
    /// Refused if `snap` was taken under another configuration or does not
    /// fit it; `self` is untouched either way.
    pub fn restored(&self, snap: &RecoderSnapshot) -> Result<Recoder, SnapshotError> {
        same("max_generations", snap.max_generations, self.max_generations)?;
        same("redundancy", f64::from_bits(snap.redundancy_bits), self.redundancy)?;
        same("seed", snap.seed, self.seed)?;
        if snap.generations.len() > self.max_generations {
            return Err(SnapshotError::Invalid(format!(
                "{} generations held, more than max_generations {}",
                snap.generations.len(),
                self.max_generations
            )));
        }
        let mut gens = BTreeMap::new();
        for g in &snap.generations {
            let what = format!("generation {}", g.id);
            if !(1..=255).contains(&g.solver.width) {
                return Err(SnapshotError::Invalid(format!(
                    "{what}: width {} is outside 1..=255",
                    g.solver.width
                )));
            }
            let solver =
                Solver::from_snapshot(&g.solver, Kernel::best()).map_err(|e| e.within(&what))?;
            if g.size.is_some_and(|n| n == 0 || n > solver.width()) {
                return Err(SnapshotError::Invalid(format!(
                    "{what}: size {:?} does not fit width {}",
                    g.size,
                    solver.width()
                )));
            }
            let credit = credit(&format!("{what}: credit"), g.credit_bits)?;
            let held = Held { solver, size: g.size, credit, sent: g.sent };
            if gens.insert(g.id, held).is_some() {
                return Err(SnapshotError::Invalid(format!("{what} is listed twice")));
            }
        }
        Ok(Recoder {
            max_generations: self.max_generations,
            redundancy: self.redundancy,
            gens,
            seed: self.seed,
            seed_state: snap.seed_state,
            coefs: Vec::new(),
        })
    }

    /// [`Recoder::restored`] in place.
    pub fn restore(&mut self, snap: &RecoderSnapshot) -> Result<(), SnapshotError> {
        *self = self.restored(snap)?;
        Ok(())
    }
}

impl Solver {
    /// A random combination of the held rows (weights from `seed`): its
    /// coefficient vector over the first `size` unknowns and its symbol.
    pub fn combine(&self, seed: u32, size: usize) -> (Vec<u8>, Vec<u8>) {
        let rows = self.rows_iter().count();
        let mut w = vec![0u8; rows];
        coefficients(seed, &mut w);
        let mut coefs = vec![0u8; self.width()];
        let len = self.rows_iter().map(|(_, d)| d.len()).max().unwrap_or(0);
        let mut data = vec![0u8; len];
        for ((c, d), &wi) in self.rows_iter().zip(&w) {
            self.kernel().mul_acc(&mut coefs, c, wi);
            self.kernel().mul_acc(&mut data[..d.len()], d, wi);
        }
        coefs.truncate(size);
        (coefs, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockConfig, BlockEncoder};
    use crate::decoder::BlockDecoder;
    use crate::header::HEADER_LEN;

    /// A packet as it goes on the wire: header, explicit coefficients, symbol.
    fn wire(h: &Header, c: &[u8], s: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_LEN];
        h.emit(&mut v);
        v.extend_from_slice(c);
        v.extend_from_slice(s);
        v
    }

    #[test]
    fn recoded_packets_alone_decode_the_generation() {
        let payloads: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8; 10 + i * 5]).collect();
        let mut enc =
            BlockEncoder::new(BlockConfig { generation_size: 16, redundancy: 1.0, seed: 3 })
                .unwrap();
        let mut pkts = Vec::new();
        for p in &payloads {
            let h = enc.push_source(p).unwrap();
            pkts.push(wire(&h, &[], p));
        }
        enc.finish(|h, s| pkts.push(wire(h, &[], s)));
        // The recoder sees half the sources and all coded packets and
        // emits one recoded packet per received packet.
        let mut rec = Recoder::new(4, 1.0, 77);
        let mut recoded = Vec::new();
        for p in pkts.iter().enumerate().filter(|(i, _)| i % 2 == 0 || *i >= 16).map(|(_, p)| p) {
            assert!(rec.receive(&Header::parse(p).unwrap(), |h, c, s| recoded.push(wire(h, c, s))));
        }
        assert_eq!(recoded.len(), 8 + 16);
        // The decoder gets only recoded packets, and decodes everything.
        let mut dec = BlockDecoder::new(4);
        let mut got = vec![];
        for p in &recoded {
            dec.receive(&Header::parse(p).unwrap(), 0, |d| got.push(d.payload.to_vec()));
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn restored_recoder_continues_exactly_and_refuses_other_configs() {
        let payloads: Vec<Vec<u8>> = (0..12).map(|i| vec![i as u8; 5 + i]).collect();
        let mut enc =
            BlockEncoder::new(BlockConfig { generation_size: 4, redundancy: 0.5, seed: 3 })
                .unwrap();
        let mut pkts = Vec::new();
        for p in &payloads {
            let h = enc.push_source(p).unwrap();
            pkts.push(wire(&h, &[], p));
            if enc.is_full() {
                enc.finish(|h, s| pkts.push(wire(h, &[], s)));
            }
        }
        let run = |rec: &mut Recoder, pkts: &[Vec<u8>], out: &mut Vec<Vec<u8>>| {
            for p in pkts {
                rec.receive(&Header::parse(p).unwrap(), |h, c, s| out.push(wire(h, c, s)));
            }
        };
        let mut whole = Recoder::new(2, 0.7, 5);
        let mut want = vec![];
        run(&mut whole, &pkts, &mut want);
        for split in [0, 3, 5, 11, pkts.len()] {
            let mut first = Recoder::new(2, 0.7, 5);
            let mut got = vec![];
            run(&mut first, &pkts[..split], &mut got);
            let mut second = Recoder::new(2, 0.7, 5);
            second.restore(&first.snapshot()).unwrap();
            run(&mut second, &pkts[split..], &mut got);
            assert_eq!(got, want, "split {split}");
            assert_eq!(second.snapshot(), whole.snapshot());
        }
        let snap = whole.snapshot();
        let e = Recoder::new(2, 0.7, 6).restore(&snap).unwrap_err().to_string();
        assert!(e.contains("seed 5"), "{e}");
        let e = Recoder::new(3, 0.7, 5).restore(&snap).unwrap_err().to_string();
        assert!(e.contains("max_generations 2"), "{e}");
        let mut bad = snap.clone();
        bad.generations[0].credit_bits = 2.0f64.to_bits();
        assert!(whole.restore(&bad).unwrap_err().to_string().contains("credit"));
        assert_eq!(whole.snapshot(), snap);
    }
}
