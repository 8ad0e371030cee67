//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4).
//!
//! Each backend gets a pseudo-random permutation of the `M` table slots
//! (from an `offset` and a `skip` derived from two hashes of its key); the
//! backends take turns claiming their next preferred free slot until the
//! table is full. With `M` prime every permutation visits every slot. The
//! result is a table in which each backend owns about `M / N` slots, and a
//! change of the backend set moves few slots: removing a backend only
//! reassigns its own slots (almost exactly), adding one takes about
//! `M / (N + 1)` slots.
//!
//! Weights follow the same turn-taking: in each round a backend earns its
//! weight in credit and claims one slot per `max_weight` of credit, so slot
//! counts are proportional to weights.

use std::hash::{BuildHasher, Hasher};

/// Largest accepted table size: keeps the table within a few MB and
/// construction well under a second.
pub const MAX_TABLE_SIZE: usize = 4_000_037;

/// A Maglev lookup table: slot -> backend index. The default is the empty
/// table of a set without backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaglevTable {
    slots: Vec<u32>,
}

/// Why a table cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("table size {0} is not a prime number")]
    NotPrime(usize),
    #[error("table size {size} is outside 3..={max}")]
    SizeOutOfRange { size: usize, max: usize },
    #[error("{backends} backends do not fit in a table of {size} slots (need size > backends)")]
    TooManyBackends { backends: usize, size: usize },
    #[error("backend {index} has weight 0; weights must be at least 1")]
    ZeroWeight { index: usize },
}

/// True if `n` is prime (trial division; table sizes are small).
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// A fixed 64-bit mixer (splitmix64 finalizer). Stable across Rust
/// versions and processes, unlike `std`'s `DefaultHasher`, so two load
/// balancers with the same backends build the same table.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A `BuildHasher` for keys that hash as one u64 (a MAC table key, a
/// [`braid_packet::flow::FiveTuple`]): `mix64(key ^ seed)` with a random
/// seed per table. One multiply-mix instead of SipHash, and a sender that
/// chooses its addresses still cannot aim them at one bucket without the
/// seed.
#[derive(Clone, Debug)]
pub struct SeededMix {
    seed: u64,
}

impl SeededMix {
    pub fn random() -> SeededMix {
        // RandomState is seeded from the OS once per process and varied per
        // instance: a seed source without another dependency.
        SeededMix { seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) }
    }
}

impl BuildHasher for SeededMix {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher(self.seed)
    }
}

/// See [`SeededMix`]. Keys write one u64; other writes fold bytes in.
pub struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = mix64(self.0 ^ v);
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
}

const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

impl MaglevTable {
    /// Build the table over `size` slots for `backends`, each a key (e.g.
    /// its IPv4 address as u64) and a weight. An empty backend list gives
    /// an empty table.
    pub fn build(backends: &[(u64, u32)], size: usize) -> Result<MaglevTable, MaglevError> {
        let keys: Vec<u64> = backends.iter().map(|b| b.0).collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.1).collect();
        if !(3..=MAX_TABLE_SIZE).contains(&size) {
            return Err(MaglevError::SizeOutOfRange { size, max: MAX_TABLE_SIZE });
        }
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        if keys.len() >= size {
            return Err(MaglevError::TooManyBackends { backends: keys.len(), size });
        }
        if let Some(index) = weights.iter().position(|&w| w == 0) {
            return Err(MaglevError::ZeroWeight { index });
        }
        if keys.is_empty() {
            return Ok(MaglevTable { slots: Vec::new() });
        }
        let m = size as u64;
        let offset: Vec<u64> = keys.iter().map(|k| mix64(k ^ OFFSET_SEED) % m).collect();
        let skip: Vec<u64> = keys.iter().map(|k| mix64(k ^ SKIP_SEED) % (m - 1) + 1).collect();
        // next[i]: how far backend i is along its permutation.
        let mut next = vec![0u64; keys.len()];
        let mut credit = vec![0u64; keys.len()];
        let max_weight = *weights.iter().max().unwrap_or(&1) as u64;
        const EMPTY: u32 = u32::MAX;
        let mut slots = vec![EMPTY; size];
        let mut filled = 0usize;
        'fill: loop {
            for i in 0..keys.len() {
                credit[i] += weights[i] as u64;
                while credit[i] >= max_weight {
                    credit[i] -= max_weight;
                    // The permutation of backend i visits every slot once
                    // within m steps (m prime, 1 <= skip < m), so a free one
                    // is found while the table is not full.
                    let mut c = ((offset[i] + next[i] * skip[i]) % m) as usize;
                    while slots[c] != EMPTY {
                        next[i] += 1;
                        c = ((offset[i] + next[i] * skip[i]) % m) as usize;
                    }
                    slots[c] = i as u32;
                    next[i] += 1;
                    filled += 1;
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Ok(MaglevTable { slots })
    }

    /// The backend index for a flow hash, `None` if there are no backends.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        Some(self.slots[(hash % self.slots.len() as u64) as usize] as usize)
    }

    /// Number of slots (0 for an empty table).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True if the table has no backends.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The backend index of every slot.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// How many slots each of `backends` backends owns.
    pub fn slot_counts(&self, backends: usize) -> Vec<usize> {
        let mut counts = vec![0usize; backends];
        for &s in &self.slots {
            counts[s as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u64) -> Vec<u64> {
        (0..n).map(|i| 0x0a00_0100 + i).collect()
    }

    fn table(keys: &[u64], weights: &[u32], size: usize) -> Result<MaglevTable, MaglevError> {
        let b: Vec<(u64, u32)> = keys.iter().copied().zip(weights.iter().copied()).collect();
        MaglevTable::build(&b, size)
    }

    #[test]
    fn primes() {
        let small: Vec<usize> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(is_prime(MAX_TABLE_SIZE));
    }

    #[test]
    fn rejects_bad_sizes_and_weights() {
        assert_eq!(table(&keys(2), &[1, 1], 65536), Err(MaglevError::NotPrime(65536)));
        assert!(matches!(table(&keys(2), &[1, 1], 1), Err(MaglevError::SizeOutOfRange { .. })));
        assert_eq!(
            table(&keys(7), &[1; 7], 7),
            Err(MaglevError::TooManyBackends { backends: 7, size: 7 })
        );
        assert_eq!(table(&keys(2), &[1, 0], 13), Err(MaglevError::ZeroWeight { index: 1 }));
        let empty = table(&[], &[], 13).unwrap();
        assert_eq!(empty.lookup(5), None);
    }

    #[test]
    fn every_slot_is_filled_and_balanced() {
        for n in [1u64, 2, 3, 5, 10, 37] {
            let t = table(&keys(n), &vec![1; n as usize], 65537).unwrap();
            let counts = t.slot_counts(n as usize);
            assert_eq!(counts.iter().sum::<usize>(), 65537);
            let ideal = 65537.0 / n as f64;
            for (i, &c) in counts.iter().enumerate() {
                // Turn-taking gives each backend within one slot of M/N.
                assert!((c as f64 - ideal).abs() <= 1.0, "n={n} backend {i}: {c} vs {ideal}");
            }
        }
    }

    #[test]
    fn weights_are_proportional() {
        let t = table(&keys(3), &[1, 2, 5], 65537).unwrap();
        let counts = t.slot_counts(3);
        let total = 8.0;
        for (c, w) in counts.iter().zip([1.0, 2.0, 5.0]) {
            let ideal = 65537.0 * w / total;
            assert!((*c as f64 - ideal).abs() / ideal < 0.001, "{counts:?}");
        }
    }

    fn moved(a: &MaglevTable, a_keys: &[u64], b: &MaglevTable, b_keys: &[u64]) -> usize {
        a.slots()
            .iter()
            .zip(b.slots())
            .filter(|(x, y)| a_keys[**x as usize] != b_keys[**y as usize])
            .count()
    }

    #[test]
    fn removing_a_backend_moves_little_more_than_its_slots() {
        let n = 10u64;
        let all = keys(n);
        let before = table(&all, &vec![1; n as usize], 65537).unwrap();
        let owned_by_victim = before.slot_counts(n as usize)[3];
        let rest: Vec<u64> = all.iter().copied().filter(|&k| k != all[3]).collect();
        let after = table(&rest, &vec![1; rest.len()], 65537).unwrap();
        let m = moved(&before, &all, &after, &rest);
        assert!(m >= owned_by_victim);
        // The paper reports near-minimal disruption; allow 2% of M extra.
        assert!(m - owned_by_victim < 65537 / 50, "moved {m}, victim owned {owned_by_victim}");
    }

    #[test]
    fn adding_a_backend_moves_about_one_share() {
        let n = 10u64;
        let old = keys(n);
        let new = keys(n + 1);
        let a = table(&old, &vec![1; n as usize], 65537).unwrap();
        let b = table(&new, &vec![1; n as usize + 1], 65537).unwrap();
        let m = moved(&a, &old, &b, &new) as f64;
        let share = 65537.0 / (n as f64 + 1.0);
        assert!(m >= share - 1.0 && m < share * 1.2, "moved {m}, one share {share}");
    }

    #[test]
    fn same_input_same_table() {
        let a = table(&keys(4), &[1; 4], 251).unwrap();
        let b = table(&keys(4), &[1; 4], 251).unwrap();
        assert_eq!(a, b);
    }
}
