//! Longest-prefix match: IPv4 with DIR-24-8 (Gupta, Lin, McKeown 1998),
//! IPv6 with a 16-bit first level and range search below it ([`Lpm6`]).
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

/// Bits resolved by the first level of [`Lpm6`] (direct-indexed).
const L0_BITS: u32 = 16;
/// Bits of the sub-index a crowded chunk gets below the first level.
const SUB_BITS: u32 = 8;
/// A chunk with more intervals than this gets a sub-index (1 KiB), so its
/// binary search covers one 1/256th of the chunk.
const SUB_MIN: usize = 32;
/// Up to this many intervals a lookup counts the starts below the address
/// instead of a binary search.
const LINEAR_MAX: usize = 8;
/// First-level entry tag: the low 32 bits are the chunk's first interval,
/// bits 32..62 how many it has.
const RANGE: u64 = 1 << 63;
/// First-level entry tag: the low 32 bits index the chunk's sub-index.
const INDEXED: u64 = 1 << 62;

/// Largest next-hop index of an [`Lpm6`].
pub const MAX_NEXT_HOPS6: usize = 0x7fff_fffe;
/// Most routes an [`Lpm6`] takes (so every interval index fits 32 bits).
pub const MAX_ROUTES6: usize = 1 << 30;

/// Why an IPv6 route set does not fit the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lpm6Error {
    #[error("route {index}: prefix length {len} is above 128")]
    BadLength { index: usize, len: u8 },
    #[error("route {index}: next hop {next_hop} is above the limit of {MAX_NEXT_HOPS6}")]
    TooManyNextHops { index: usize, next_hop: usize },
    #[error("{count} IPv6 routes are more than the limit of {MAX_ROUTES6}")]
    TooManyRoutes { count: usize },
}

/// The netmask of an IPv6 prefix length (0..=128).
#[inline]
pub fn prefix_mask6(len: u8) -> u128 {
    match len {
        0 => 0,
        l if l >= 128 => u128::MAX,
        l => !(u128::MAX >> l),
    }
}

/// IPv6 longest-prefix match by range search: a direct-indexed first level
/// on the top 16 bits, and below it the sorted boundaries of the address
/// ranges a next hop holds (the idea of DXR, Zec, Rizzo and Mikuc 2012).
///
/// The prefixes longer than /16 inside one 16-bit chunk cut it into
/// intervals, each with one answer (a next hop or none); neighbours with
/// the same answer are merged. A first-level entry is either that answer
/// (a chunk no longer prefix cuts) or where the chunk's interval starts are
/// in one sorted array; the lookup finds the last start at or below the
/// address, by counting up to 8 starts, by binary search beyond. A chunk
/// with more than 32 intervals
/// also gets a 257-entry index on the next 8 bits that narrows the search to
/// the intervals overlapping one /24.
///
/// Unlike a trie, the cost does not grow with the prefix length: one
/// first-level entry, then `log2` of the intervals of the chunk (or of its
/// /24) 16-byte starts and one 4-byte answer, for /48s as for /128s.
/// Memory: 512 KiB for the first level, 20 B per interval (at most two per
/// prefix longer than /16, plus one per chunk they cut), 1 KiB per crowded
/// chunk: about 1 MiB for 10,000 BGP-shaped prefixes, where a trie of
/// 8-bit strides needed 30 MiB.
pub struct Lpm6 {
    l0: Box<[u64]>,
    /// Interval starts, sorted within each chunk.
    starts: Vec<u128>,
    /// The answer of each interval: next-hop index + 1, 0 for none.
    values: Vec<u32>,
    /// Sub-indices of crowded chunks, 257 entries each.
    sub: Vec<u32>,
}

impl std::fmt::Debug for Lpm6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lpm6")
            .field("intervals", &self.starts.len())
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

impl Lpm6 {
    /// Build the table for `routes`: (network, prefix length, next-hop
    /// index). Host bits are ignored; of two equal prefixes the later wins.
    pub fn build(routes: &[(u128, u8, usize)]) -> Result<Lpm6, Lpm6Error> {
        if routes.len() > MAX_ROUTES6 {
            return Err(Lpm6Error::TooManyRoutes { count: routes.len() });
        }
        // (network, length, answer, route index)
        let mut norm: Vec<(u128, u8, u32, usize)> = Vec::with_capacity(routes.len());
        for (i, &(net, len, hop)) in routes.iter().enumerate() {
            if len > 128 {
                return Err(Lpm6Error::BadLength { index: i, len });
            }
            if hop > MAX_NEXT_HOPS6 {
                return Err(Lpm6Error::TooManyNextHops { index: i, next_hop: hop });
            }
            norm.push((net & prefix_mask6(len), len, hop as u32 + 1, i));
        }
        // By network, then length: a prefix comes before those it covers
        // (prefixes nest or are disjoint). Equal prefixes by route index,
        // and only the last is kept.
        norm.sort_unstable_by_key(|&(n, l, _, i)| (n, l, i));
        norm.dedup_by(|later, earlier| {
            let same = (later.0, later.1) == (earlier.0, earlier.1);
            if same {
                *earlier = *later;
            }
            same
        });

        let mut l0 = vec![0u64; 1 << L0_BITS].into_boxed_slice();
        let mut short: Vec<&(u128, u8, u32, usize)> =
            norm.iter().filter(|r| u32::from(r.1) <= L0_BITS).collect();
        // Shortest first, so longer prefixes overwrite what they cover.
        short.sort_by_key(|r| r.1);
        for &(net, len, value, _) in short {
            let start = (net >> (128 - L0_BITS)) as usize;
            let count = 1usize << (L0_BITS - u32::from(len));
            l0[start..start + count].fill(u64::from(value));
        }

        let long: Vec<(u128, u128, u32)> = norm
            .iter()
            .filter(|r| u32::from(r.1) > L0_BITS)
            .map(|&(net, len, value, _)| (net, net | !prefix_mask6(len), value))
            .collect();
        let mut t = Lpm6 { l0, starts: Vec::new(), values: Vec::new(), sub: Vec::new() };
        let (mut out, mut stack) = (Vec::new(), Vec::new());
        for group in long.chunk_by(|a, b| a.0 >> (128 - L0_BITS) == b.0 >> (128 - L0_BITS)) {
            let c = (group[0].0 >> (128 - L0_BITS)) as usize;
            let first = (c as u128) << (128 - L0_BITS);
            let last = first | (u128::MAX >> L0_BITS);
            // The chunk's own answer from the prefixes up to /16.
            let base = t.l0[c] as u32;
            chunk_intervals(group, (first, last), base, &mut out, &mut stack);
            t.l0[c] = match out.as_slice() {
                [(_, only)] => u64::from(*only),
                _ => t.push_chunk(&out, first),
            };
        }
        Ok(t)
    }

    /// Store the intervals of one chunk; its first-level entry.
    fn push_chunk(&mut self, out: &[(u128, u32)], first: u128) -> u64 {
        // Fits: at most 2 * MAX_ROUTES6 + 2^16 intervals, below 2^32.
        let at = self.starts.len();
        self.starts.extend(out.iter().map(|x| x.0));
        self.values.extend(out.iter().map(|x| x.1));
        if out.len() <= SUB_MIN {
            return RANGE | (out.len() as u64) << 32 | at as u64;
        }
        // Per /24 of the chunk, the last interval starting at or before its
        // first address; the last entry closes the chunk.
        let s = self.sub.len();
        let mut i = 0;
        for b in 0..1u128 << SUB_BITS {
            let sub_first = first | b << (128 - L0_BITS - SUB_BITS);
            while i + 1 < out.len() && out[i + 1].0 <= sub_first {
                i += 1;
            }
            self.sub.push((at + i) as u32);
        }
        self.sub.push((at + out.len() - 1) as u32);
        INDEXED | s as u64
    }

    /// Intervals stored (over all chunks).
    pub fn intervals(&self) -> usize {
        self.starts.len()
    }

    /// Bytes of the lookup structure.
    pub fn memory_bytes(&self) -> usize {
        self.l0.len() * 8 + self.starts.len() * 16 + self.values.len() * 4 + self.sub.len() * 4
    }

    /// Load the first-level entry of `addr` (see [`Dir24_8::touch`]).
    #[inline]
    pub fn touch(&self, addr: u128) -> u32 {
        self.l0.get((addr >> (128 - L0_BITS)) as usize).copied().unwrap_or(0) as u32
    }

    /// After [`Lpm6::touch`]: load the interval starts a lookup of `addr`
    /// reads first and their answers, so a batch's second-level misses
    /// overlap too. Returns a word of them so the loads are kept.
    #[inline]
    pub fn touch_intervals(&self, addr: u128) -> u32 {
        match self.span(addr) {
            Ok((lo, n)) => {
                let at = |i: usize| self.starts.get(i).copied().unwrap_or(0) as u32;
                let last = lo + n.min(LINEAR_MAX) - 1;
                at(lo)
                    .wrapping_add(at(last))
                    .wrapping_add(self.values.get(lo).copied().unwrap_or(0))
            }
            Err(value) => value,
        }
    }

    /// The intervals (first, count) a lookup of `addr` searches, or the
    /// answer of its chunk if no longer prefix cuts it.
    #[inline]
    fn span(&self, addr: u128) -> Result<(usize, usize), u32> {
        let e = self.l0.get((addr >> (128 - L0_BITS)) as usize).copied().unwrap_or(0);
        if e & RANGE != 0 {
            Ok(((e & 0xffff_ffff) as usize, ((e >> 32) & 0x3fff_ffff) as usize))
        } else if e & INDEXED != 0 {
            let s = (e & 0xffff_ffff) as usize
                + ((addr >> (128 - L0_BITS - SUB_BITS)) as usize & ((1 << SUB_BITS) - 1));
            let lo = self.sub.get(s).copied().unwrap_or(0) as usize;
            let hi = self.sub.get(s + 1).copied().unwrap_or(0) as usize;
            Ok((lo, (hi + 1).saturating_sub(lo)))
        } else {
            Err(e as u32)
        }
    }

    /// The next-hop index for `addr`, if any route covers it.
    #[inline]
    pub fn lookup(&self, addr: u128) -> Option<usize> {
        let (lo, n) = match self.span(addr) {
            Ok(span) => span,
            Err(value) => return (value as usize).checked_sub(1),
        };
        let starts = self.starts.get(lo..lo + n)?;
        // The last start at or below `addr` (the first always is): few
        // starts are counted (no branch on the data), more searched.
        let i = if n <= LINEAR_MAX {
            starts.iter().map(|&s| usize::from(s <= addr)).sum::<usize>().saturating_sub(1)
        } else {
            let (mut base, mut len) = (0, n);
            while len > 1 {
                let half = len / 2;
                let probe = starts.get(base + half).is_some_and(|&s| s <= addr);
                base = if probe { base + half } else { base };
                len -= half;
            }
            base
        };
        (self.values.get(lo + i).copied().unwrap_or(0) as usize).checked_sub(1)
    }
}

/// Cut the chunk `first..=last` into intervals by `prefixes` (start, last
/// address, answer; sorted by start then length, all inside the chunk) over
/// `base`, the chunk's answer without them. `out` gets (start, answer) per
/// interval, neighbours with equal answers merged; `stack` is scratch.
fn chunk_intervals(
    prefixes: &[(u128, u128, u32)],
    (first, last): (u128, u128),
    base: u32,
    out: &mut Vec<(u128, u32)>,
    stack: &mut Vec<(u128, u32)>,
) {
    out.clear();
    stack.clear();
    out.push((first, base));
    for &(start, end, value) in prefixes {
        // Close the open prefixes this one is not inside; after each, its
        // parent (or the base) answers again.
        while let Some(&(open_end, _)) = stack.last() {
            if open_end >= start {
                break;
            }
            stack.pop();
            emit(out, open_end + 1, stack.last().map_or(base, |x| x.1));
        }
        emit(out, start, value);
        stack.push((end, value));
    }
    while let Some((open_end, _)) = stack.pop() {
        if open_end < last {
            emit(out, open_end + 1, stack.last().map_or(base, |x| x.1));
        }
    }
}

/// From `start` on the answer is `value` (starts come in order).
fn emit(out: &mut Vec<(u128, u32)>, start: u128, value: u32) {
    let n = out.len();
    match out.last_mut() {
        Some(l) if l.0 == start => {
            l.1 = value;
            if n >= 2 && out[n - 2].1 == value {
                out.pop();
            }
        }
        Some(l) if l.1 == value => {}
        _ => out.push((start, value)),
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

    fn naive6(routes: &[(u128, u8, usize)], addr: u128) -> Option<usize> {
        let mut best: Option<(u8, usize)> = None;
        for &(net, len, hop) in routes {
            let m = prefix_mask6(len);
            if addr & m == net & m && !matches!(best, Some((l, _)) if len < l) {
                best = Some((len, hop));
            }
        }
        best.map(|(_, h)| h)
    }

    #[test]
    fn lpm6_longest_prefix_at_every_level() {
        let a = |s: &str| u128::from(s.parse::<std::net::Ipv6Addr>().unwrap());
        let routes = [
            (0, 0, 0),
            (a("2000::"), 3, 1),
            (a("2001:db8::"), 32, 2),
            (a("2001:db8:1::"), 48, 3),
            (a("2001:db8:1:2::"), 64, 4),
            (a("2001:db8:1:2::1"), 128, 5),
            (a("2001:db8:1:2::"), 127, 6),
            (a("2001:db8:1:2::"), 100, 7),
        ];
        let t = Lpm6::build(&routes).unwrap();
        for (addr, hop) in [
            ("::1", 0),
            ("3fff::", 1),
            ("2001:db8:ffff::", 2),
            ("2001:db8:1:ffff::", 3),
            ("2001:db8:1:2:8000::", 4),
            ("2001:db8:1:2::1", 5),
            ("2001:db8:1:2::", 6),
            ("2001:db8:1:2::2", 7),
        ] {
            assert_eq!(t.lookup(a(addr)), Some(hop), "{addr}");
        }
        let t = Lpm6::build(&[(a("2001:db8::1"), 128, 9)]).unwrap();
        assert_eq!((t.lookup(a("2001:db8::1")), t.lookup(a("2001:db8::"))), (Some(9), None));
        // One chunk cut in three: before, the /128, after.
        assert_eq!(t.intervals(), 3);
        assert!(matches!(Lpm6::build(&[(0, 129, 0)]), Err(Lpm6Error::BadLength { .. })));
    }

    #[test]
    fn lpm6_edges_of_the_address_space_and_equal_prefixes() {
        let a = |s: &str| u128::from(s.parse::<std::net::Ipv6Addr>().unwrap());
        let routes = [
            (u128::MAX, 128, 1),
            (a("ffff:ffff::"), 32, 2),
            (a("ffff::"), 16, 3),
            (0, 128, 4),
            (a("::8000:0"), 97, 5),
            (a("2001:db8::"), 32, 6),
            // Equal prefixes: the later one wins.
            (a("2001:db8::"), 32, 7),
            // Nested prefixes ending on the same address as their parent.
            (a("2001:db8:ff00::"), 40, 8),
            (a("2001:db8:ffff::"), 48, 9),
        ];
        let t = Lpm6::build(&routes).unwrap();
        for (addr, hop) in [
            (u128::MAX, Some(1)),
            (u128::MAX - 1, Some(2)),
            (a("ffff:fffe:ffff::"), Some(3)),
            (a("ffff::"), Some(3)),
            (0, Some(4)),
            (1, None),
            (a("::7fff:ffff"), None),
            (a("::8000:0"), Some(5)),
            (a("::ffff:ffff"), Some(5)),
            (a("::1:0:0"), None),
            (a("2001:db8::"), Some(7)),
            (a("2001:db8:feff:ffff::"), Some(7)),
            (a("2001:db8:ff00::"), Some(8)),
            (a("2001:db8:fffe:ffff::"), Some(8)),
            (a("2001:db8:ffff::"), Some(9)),
            (a("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"), Some(9)),
            (a("2001:db9::"), None),
        ] {
            assert_eq!(t.lookup(addr), hop, "{:#x}", addr);
        }
        assert_eq!(
            Lpm6::build(&[(0, 0, MAX_NEXT_HOPS6 + 1)]).unwrap_err(),
            Lpm6Error::TooManyNextHops { index: 0, next_hop: MAX_NEXT_HOPS6 + 1 }
        );
        assert_eq!(Lpm6::build(&[]).unwrap().lookup(0), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Many prefixes in one 16-bit chunk, most of them in a few /24s:
        /// the chunk gets a sub-index and long binary searches.
        #[test]
        fn lpm6_crowded_chunk_equals_linear_lpm(
            routes in proptest::collection::vec(
                (any::<u128>(), 17u8..=128, 0usize..8, 0u8..4), 40..300),
            short in proptest::collection::vec((any::<u128>(), 0u8..=16, 0usize..8), 0..3),
            probes in proptest::collection::vec(any::<u128>(), 100),
            chunk in any::<u16>(),
        ) {
            let first = u128::from(chunk) << 112;
            let mut all: Vec<(u128, u8, usize)> = routes.into_iter().map(|(n, l, h, k)| {
                // k picks one of four /24s, or the whole chunk.
                let n = match k {
                    0..=2 => first | u128::from(k) << 104 | (n & !prefix_mask6(24)),
                    _ => first | (n & !prefix_mask6(16)),
                };
                (n & prefix_mask6(l), l, h)
            }).collect();
            all.extend(short.into_iter().map(|(n, l, h)| ((first | (n & !prefix_mask6(16))) & prefix_mask6(l), l, h)));
            let t = Lpm6::build(&all).unwrap();
            prop_assert!(t.intervals() <= 2 * all.len() + 1);
            prop_assert_eq!(t.sub.is_empty(), t.intervals() <= SUB_MIN);
            let mut addrs: Vec<u128> = probes.iter().map(|p| first | (p & !prefix_mask6(16))).collect();
            addrs.extend(probes.iter().map(|p| first | (p & !prefix_mask6(27))));
            for &(n, l, _) in &all {
                let end = n | !prefix_mask6(l);
                addrs.extend([n, end, n.wrapping_sub(1), end.wrapping_add(1)]);
            }
            for a in addrs {
                prop_assert_eq!(t.lookup(a), naive6(&all, a), "{:#x}", a);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn lpm6_equals_linear_lpm(
            routes in proptest::collection::vec((any::<u128>(), 0u8..=128, 0usize..50), 1..60),
            probes in proptest::collection::vec(any::<u128>(), 50),
            shared in any::<u128>(),
        ) {
            // Half the routes under one /20, to nest and overlap.
            let routes: Vec<_> = routes.into_iter().enumerate().map(|(i, (n, l, h))| {
                let n = if i % 2 == 0 { (shared & prefix_mask6(20)) | (n & !prefix_mask6(20)) } else { n };
                (n & prefix_mask6(l), l, h)
            }).collect();
            let t = Lpm6::build(&routes).unwrap();
            let mut addrs = probes;
            for &(n, l, _) in &routes {
                addrs.push(n);
                addrs.push(n | !prefix_mask6(l));
                addrs.push((shared & prefix_mask6(20)) | (n & !prefix_mask6(20)));
            }
            for a in addrs {
                prop_assert_eq!(t.lookup(a), naive6(&routes, a), "{:#x}", a);
            }
        }
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
