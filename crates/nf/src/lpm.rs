//! IPv4 longest-prefix match with DIR-24-8 (Gupta, Lin, McKeown 1998).
//!
//! `tbl24` has one 16-bit entry per /24: either a next-hop value or a
//! pointer to a 256-entry `tbl8` group that resolves the last octet for
//! /24s that contain longer prefixes. A lookup is one memory access, two for
//! addresses under a prefix longer than /24. The table is built from the
//! whole route list at once (routes are static per NF instance), shortest
//! prefixes first so longer ones overwrite them.
//!
//! Memory: 32 MiB for `tbl24` (zero pages until a route touches them) plus
//! 512 B per /24 that holds a longer prefix.

/// Entry bit: the low 15 bits index a `tbl8` group.
const EXT: u16 = 0x8000;
const TBL24_LEN: usize = 1 << 24;

/// Largest next-hop index (values are stored +1, 0 meaning no route).
pub const MAX_NEXT_HOPS: usize = 0x7fff;
/// Largest number of /24s that can hold prefixes longer than /24.
pub const MAX_TBL8_GROUPS: usize = 0x8000;

/// Why a route set does not fit the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LpmError {
    #[error("route {index}: prefix length {len} is above 32")]
    BadLength { index: usize, len: u8 },
    #[error("route {index}: next hop {next_hop} is above the limit of {MAX_NEXT_HOPS}")]
    TooManyNextHops { index: usize, next_hop: usize },
    #[error(
        "route {index}: more than {MAX_TBL8_GROUPS} distinct /24 networks hold longer prefixes"
    )]
    TooManyLongPrefixes { index: usize },
}

/// A DIR-24-8 longest-prefix-match table mapping IPv4 addresses to next-hop
/// indices.
pub struct Dir24_8 {
    tbl24: Box<[u16; TBL24_LEN]>,
    tbl8: Vec<u16>,
}

impl std::fmt::Debug for Dir24_8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dir24_8").field("tbl8_groups", &(self.tbl8.len() / 256)).finish()
    }
}

impl Dir24_8 {
    /// Build the table for `routes`: (network, prefix length, next-hop
    /// index). Host bits of a network are ignored. Two routes with the same
    /// prefix: the later one wins.
    pub fn build(routes: &[(u32, u8, usize)]) -> Result<Dir24_8, LpmError> {
        let boxed: Box<[u16]> = vec![0u16; TBL24_LEN].into_boxed_slice();
        let tbl24: Box<[u16; TBL24_LEN]> = boxed.try_into().expect("length is TBL24_LEN");
        let mut t = Dir24_8 { tbl24, tbl8: Vec::new() };
        let mut order: Vec<usize> = (0..routes.len()).collect();
        // Stable: equal prefixes keep their order, so the later one wins.
        order.sort_by_key(|&i| routes[i].1);
        for i in order {
            let (net, len, hop) = routes[i];
            if len > 32 {
                return Err(LpmError::BadLength { index: i, len });
            }
            if hop >= MAX_NEXT_HOPS {
                return Err(LpmError::TooManyNextHops { index: i, next_hop: hop });
            }
            let value = hop as u16 + 1;
            let net = net & crate::conntrack::prefix_mask(len);
            if len <= 24 {
                let start = (net >> 8) as usize;
                let count = 1usize << (24 - len);
                t.tbl24[start..start + count].fill(value);
            } else {
                let i24 = (net >> 8) as usize;
                let entry = t.tbl24[i24];
                let group = if entry & EXT != 0 {
                    (entry & !EXT) as usize
                } else {
                    let g = t.tbl8.len() / 256;
                    if g >= MAX_TBL8_GROUPS {
                        return Err(LpmError::TooManyLongPrefixes { index: i });
                    }
                    // The new group inherits the /24's covering route.
                    t.tbl8.resize(t.tbl8.len() + 256, entry);
                    t.tbl24[i24] = EXT | g as u16;
                    g
                };
                let start = group * 256 + (net & 0xff) as usize;
                let count = 1usize << (32 - len);
                t.tbl8[start..start + count].fill(value);
            }
        }
        Ok(t)
    }

    /// Load the first-level entry of `addr` so a later [`Dir24_8::lookup`]
    /// finds it in cache; a batch touches all its destinations first so the
    /// misses overlap. Returns the word so the load is kept.
    #[inline]
    pub fn touch(&self, addr: u32) -> u16 {
        self.tbl24[(addr >> 8) as usize]
    }

    /// The next-hop index for `addr`, if any route covers it.
    #[inline]
    pub fn lookup(&self, addr: u32) -> Option<usize> {
        let mut e = self.tbl24[(addr >> 8) as usize];
        if e & EXT != 0 {
            let i = (((e & !EXT) as usize) << 8) | (addr & 0xff) as usize;
            e = self.tbl8.get(i).copied().unwrap_or(0);
        }
        (e as usize).checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::prefix_mask;
    use proptest::prelude::*;

    /// Linear longest-prefix match: the reference.
    fn naive(routes: &[(u32, u8, usize)], addr: u32) -> Option<usize> {
        let mut best: Option<(u8, usize)> = None;
        for &(net, len, hop) in routes {
            let m = prefix_mask(len);
            if addr & m == net & m && !matches!(best, Some((l, _)) if len < l) {
                best = Some((len, hop));
            }
        }
        best.map(|(_, h)| h)
    }

    #[test]
    fn longest_prefix_wins_at_every_level() {
        let routes = [
            (0, 0, 0),
            (0x0a00_0000, 8, 1),
            (0x0a01_0000, 16, 2),
            (0x0a01_0200, 24, 3),
            (0x0a01_0280, 25, 4),
            (0x0a01_0281, 32, 5),
        ];
        let t = Dir24_8::build(&routes).unwrap();
        for (addr, hop) in [
            (0x0b00_0000, 0),
            (0x0a02_0000, 1),
            (0x0a01_0300, 2),
            (0x0a01_0201, 3),
            (0x0a01_02ff, 4),
            (0x0a01_0281, 5),
            (0x0a01_0282, 4),
        ] {
            assert_eq!(t.lookup(addr), Some(hop), "{addr:#x}");
        }
        let t = Dir24_8::build(&[(0x0a01_0281, 32, 7)]).unwrap();
        assert_eq!(t.lookup(0x0a01_0281), Some(7));
        assert_eq!(t.lookup(0x0a01_0280), None);
        assert_eq!(t.lookup(0), None);
    }

    #[test]
    fn limits_are_errors() {
        assert!(matches!(Dir24_8::build(&[(0, 33, 0)]), Err(LpmError::BadLength { .. })));
        assert!(matches!(
            Dir24_8::build(&[(0, 8, MAX_NEXT_HOPS)]),
            Err(LpmError::TooManyNextHops { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn equals_linear_lpm(
            routes in proptest::collection::vec(
                (any::<u32>(), 0u8..=32, 0usize..50), 1..60),
            probes in proptest::collection::vec(any::<u32>(), 50),
        ) {
            let routes: Vec<_> =
                routes.into_iter().map(|(n, l, h)| (n & prefix_mask(l), l, h)).collect();
            let t = Dir24_8::build(&routes).unwrap();
            // Probe random addresses and every route's own network, edges
            // included.
            let mut addrs = probes;
            for &(n, l, _) in &routes {
                addrs.push(n);
                addrs.push(n | !prefix_mask(l));
            }
            for a in addrs {
                prop_assert_eq!(t.lookup(a), naive(&routes, a), "{:#x}", a);
            }
        }
    }
}
