//! Recoder: an intermediate node that forwards what it receives and adds
//! fresh random combinations of the packets it holds for a generation,
//! without decoding. Recoded packets carry their coefficient vector
//! explicitly ([`Kind::BlockRecoded`]), since a combination of seeded
//! vectors is not itself seeded.

use crate::decoder::Solver;
use crate::gf256::Kernel;
use crate::header::{coefficients, splitmix64, write_symbol, Header, Kind, Parsed};
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

    #[test]
    fn recoded_packets_alone_decode_the_generation() {
        let payloads: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8; 10 + i * 5]).collect();
        let mut enc =
            BlockEncoder::new(BlockConfig { generation_size: 16, redundancy: 1.0, seed: 3 })
                .unwrap();
        let mut pkts = Vec::new();
        let wire = |h: &Header, c: &[u8], s: &[u8]| {
            let mut v = vec![0u8; HEADER_LEN];
            h.emit(&mut v);
            v.extend_from_slice(c);
            v.extend_from_slice(s);
            v
        };
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
}
