//! Longest-prefix match: IPv4 with DIR-24-8 (Gupta, Lin, McKeown 1998),
//! IPv6 with a multibit trie of 8-bit strides ([`Lpm6`]).
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

/// Bits resolved by the first level of [`Lpm6`].
const L0_BITS: u32 = 16;
/// Entry bit of [`Lpm6`]: the low 31 bits index a 256-entry group.
const PTR6: u32 = 0x8000_0000;

/// Largest next-hop index of an [`Lpm6`].
pub const MAX_NEXT_HOPS6: usize = 0x7fff_fffe;
/// Most 256-entry groups an [`Lpm6`] allocates (1 KiB each): a prefix
/// of length `l > 16` needs at most `(l - 16) / 8` rounded up new ones.
pub const MAX_GROUPS6: usize = 1 << 18;

/// Why an IPv6 route set does not fit the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lpm6Error {
    #[error("route {index}: prefix length {len} is above 128")]
    BadLength { index: usize, len: u8 },
    #[error("route {index}: next hop {next_hop} is above the limit of {MAX_NEXT_HOPS6}")]
    TooManyNextHops { index: usize, next_hop: usize },
    #[error("route {index}: the table would need more than {MAX_GROUPS6} groups of 256 entries")]
    TooManyGroups { index: usize },
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

/// IPv6 longest-prefix match: a multibit trie with a 16-bit first level
/// and 8-bit strides below it, every level a direct-indexed array of 4-byte
/// entries (the layout of DPDK's `rte_lpm6`, with a smaller first level).
///
/// An entry is 0 (no route), a next-hop index + 1, or [`PTR6`] | the
/// index of a 256-entry group resolving the next 8 bits. Built from the
/// whole route list at once, shortest prefixes first (controlled prefix
/// expansion: a prefix fills the entries of its last level; a group made
/// for a longer prefix inherits the entry it replaces). A lookup reads
/// one entry per level the longest matching prefix reaches: 1 for /16 and
/// shorter, 5 for a /48, 7 for a /64, 15 for a /128.
///
/// Memory: 256 KiB for the first level plus 1 KiB per group.
pub struct Lpm6 {
    l0: Box<[u32]>,
    groups: Vec<u32>,
}

impl std::fmt::Debug for Lpm6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lpm6").field("groups", &(self.groups.len() / 256)).finish()
    }
}

impl Lpm6 {
    /// Build the table for `routes`: (network, prefix length, next-hop
    /// index). Host bits are ignored; of two equal prefixes the later wins.
    pub fn build(routes: &[(u128, u8, usize)]) -> Result<Lpm6, Lpm6Error> {
        let mut t = Lpm6 { l0: vec![0u32; 1 << L0_BITS].into_boxed_slice(), groups: Vec::new() };
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by_key(|&i| routes[i].1);
        for i in order {
            let (net, len, hop) = routes[i];
            if len > 128 {
                return Err(Lpm6Error::BadLength { index: i, len });
            }
            if hop > MAX_NEXT_HOPS6 {
                return Err(Lpm6Error::TooManyNextHops { index: i, next_hop: hop });
            }
            let value = hop as u32 + 1;
            let net = net & prefix_mask6(len);
            if u32::from(len) <= L0_BITS {
                let start = (net >> (128 - L0_BITS)) as usize;
                let count = 1usize << (L0_BITS - u32::from(len));
                t.l0[start..start + count].fill(value);
                continue;
            }
            // Walk (making groups) to the level holding the prefix's last bit.
            let mut slot = Slot::L0((net >> (128 - L0_BITS)) as usize);
            let mut consumed = L0_BITS;
            loop {
                let entry = t.get(slot);
                let group = if entry & PTR6 != 0 {
                    (entry & !PTR6) as usize
                } else {
                    let g = t.groups.len() / 256;
                    if g >= MAX_GROUPS6 {
                        return Err(Lpm6Error::TooManyGroups { index: i });
                    }
                    t.groups.resize(t.groups.len() + 256, entry);
                    t.set(slot, PTR6 | g as u32);
                    g
                };
                let byte = ((net >> (128 - consumed - 8)) & 0xff) as usize;
                consumed += 8;
                if u32::from(len) <= consumed {
                    let count = 1usize << (consumed - u32::from(len));
                    let start = group * 256 + byte;
                    t.groups[start..start + count].fill(value);
                    break;
                }
                slot = Slot::Group(group * 256 + byte);
            }
        }
        Ok(t)
    }

    fn get(&self, s: Slot) -> u32 {
        match s {
            Slot::L0(i) => self.l0[i],
            Slot::Group(i) => self.groups[i],
        }
    }

    fn set(&mut self, s: Slot, v: u32) {
        match s {
            Slot::L0(i) => self.l0[i] = v,
            Slot::Group(i) => self.groups[i] = v,
        }
    }

    /// Groups allocated.
    pub fn groups(&self) -> usize {
        self.groups.len() / 256
    }

    /// Load the first-level entry of `addr` (see [`Dir24_8::touch`]).
    #[inline]
    pub fn touch(&self, addr: u128) -> u32 {
        self.l0[(addr >> (128 - L0_BITS)) as usize & 0xffff]
    }

    /// The next-hop index for `addr`, if any route covers it.
    #[inline]
    pub fn lookup(&self, addr: u128) -> Option<usize> {
        let mut e = self.l0[(addr >> (128 - L0_BITS)) as usize & 0xffff];
        let mut shift = 128 - L0_BITS;
        // At most 14 groups below the first level; bounded whatever the
        // table holds.
        while e & PTR6 != 0 && shift >= 8 {
            shift -= 8;
            let i = (((e & !PTR6) as usize) << 8) | ((addr >> shift) & 0xff) as usize;
            e = self.groups.get(i).copied().unwrap_or(0);
        }
        if e & PTR6 != 0 {
            return None;
        }
        (e as usize).checked_sub(1)
    }
}

#[derive(Clone, Copy)]
enum Slot {
    L0(usize),
    Group(usize),
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
        assert_eq!(t.groups(), 14);
        assert!(matches!(Lpm6::build(&[(0, 129, 0)]), Err(Lpm6Error::BadLength { .. })));
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
