//! First-match packet classification over ordered 5-tuple rules with the
//! bit-vector scheme (Lakshman and Stiliadis, SIGCOMM 1998).
//!
//! Each field (source address, destination address, protocol, source port,
//! destination port) is cut into elementary intervals at every rule edge.
//! Every interval gets a bit vector with bit `i` set when rule `i` covers
//! it; intervals with equal vectors share one. A lookup finds the interval
//! of each field (direct tables for ports and protocol, a /16 bucket index
//! plus a short binary search for addresses), ANDs the five vectors word
//! by word and stops at the first set bit: that is the first matching rule.
//! Work per packet is `O(log intervals + rules / 64)` word operations, with
//! no per-rule branch: 1,000 rules are 16 words.
//!
//! The address type is a parameter ([`Addr`]): `u32` for IPv4 (the
//! default) and `u128` for IPv6. IPv6 addresses are cut the same way; the
//! bucket index takes the top 16 bits of either, so a lookup in a table of
//! IPv6 prefixes is still a direct index plus a short binary search.

use std::collections::HashMap;
use std::hash::Hash;

/// An address type the classifier cuts into intervals: `u32` (IPv4) or
/// `u128` (IPv6), host order.
pub trait Addr: Copy + Ord + Hash + std::fmt::Debug + Send + Sync + 'static {
    /// The zero address.
    const ZERO: Self;
    /// The highest address.
    const MAX: Self;
    /// `self + 1` (never called on `MAX`).
    fn succ(self) -> Self;
    /// The top 16 bits (the bucket of an address).
    fn top16(self) -> u32;
    /// The first address of bucket `h` (`h << (bits - 16)`).
    fn bucket_start(h: u32) -> Self;
    /// The 8 bits below the top 16 (the sub-bucket of an address).
    fn next8(self) -> u32;
    /// The first address of sub-bucket `j` of bucket `h`.
    fn sub_start(h: u32, j: u32) -> Self;
}

impl Addr for u32 {
    const ZERO: u32 = 0;
    const MAX: u32 = u32::MAX;
    #[inline]
    fn succ(self) -> u32 {
        self + 1
    }
    #[inline]
    fn top16(self) -> u32 {
        self >> 16
    }
    #[inline]
    fn bucket_start(h: u32) -> u32 {
        h << 16
    }
    #[inline]
    fn next8(self) -> u32 {
        (self >> 8) & 0xff
    }
    #[inline]
    fn sub_start(h: u32, j: u32) -> u32 {
        (h << 16) | (j << 8)
    }
}

impl Addr for u128 {
    const ZERO: u128 = 0;
    const MAX: u128 = u128::MAX;
    #[inline]
    fn succ(self) -> u128 {
        self + 1
    }
    #[inline]
    fn top16(self) -> u32 {
        (self >> 112) as u32
    }
    #[inline]
    fn bucket_start(h: u32) -> u128 {
        u128::from(h) << 112
    }
    #[inline]
    fn next8(self) -> u32 {
        ((self >> 104) & 0xff) as u32
    }
    #[inline]
    fn sub_start(h: u32, j: u32) -> u128 {
        (u128::from(h) << 112) | (u128::from(j) << 104)
    }
}

/// One rule's match fields; every range is inclusive. `A` is the address
/// type (`u32` for IPv4, `u128` for IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMatch<A = u32> {
    pub src: (A, A),
    pub dst: (A, A),
    /// Protocol range: `(p, p)` for one protocol, `(0, 255)` for any.
    pub proto: (u8, u8),
    pub src_ports: (u16, u16),
    pub dst_ports: (u16, u16),
}

/// The fields a packet is classified on. Packets without ports (ICMP,
/// fragments, other protocols) use port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fields<A = u32> {
    pub src: A,
    pub dst: A,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl<A: Addr> RuleMatch<A> {
    /// Does this rule match `f`? (The linear reference.)
    #[inline]
    pub fn matches(&self, f: &Fields<A>) -> bool {
        (self.src.0..=self.src.1).contains(&f.src)
            && (self.dst.0..=self.dst.1).contains(&f.dst)
            && (self.proto.0..=self.proto.1).contains(&f.proto)
            && (self.src_ports.0..=self.src_ports.1).contains(&f.src_port)
            && (self.dst_ports.0..=self.dst_ports.1).contains(&f.dst_port)
    }
}

/// Most bytes of bit vectors a classifier may need, summed over the five
/// fields before vectors are shared (elementary intervals x rules / 8).
/// Building costs about as much work, so this bounds both memory and time:
/// 256 MiB is about 32,000 rules on distinct /32 addresses, and far more
/// when rules share addresses and ports.
pub const MAX_TABLE_BYTES: u64 = 256 << 20;

/// The rule set is too large for the bit-vector classifier.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{rules} rules cut the fields into {intervals} elementary intervals: the classifier \
     would need {} MiB of bit vectors, more than the limit of {} MiB; use fewer rules, or \
     wider prefixes and port ranges that rules share",
    .bytes >> 20,
    MAX_TABLE_BYTES >> 20
)]
pub struct TooManyRules {
    pub rules: usize,
    /// Elementary intervals over all five fields.
    pub intervals: u64,
    /// Bytes the bit vectors would take before sharing.
    pub bytes: u64,
}

/// The elementary intervals of `ranges` over `0..=max`: every rule edge
/// starts one.
fn interval_starts<T: Addr>(ranges: &[(T, T)], max: T) -> Vec<T> {
    let mut starts: Vec<T> = vec![T::ZERO];
    for &(lo, hi) in ranges {
        starts.push(lo);
        if hi < max {
            starts.push(hi.succ());
        }
    }
    starts.sort_unstable();
    starts.dedup();
    starts
}

/// Interval classes of one field: `starts[i]..starts[i+1]` is interval `i`,
/// whose bit vector is `class[i]`.
struct Intervals<T> {
    starts: Vec<T>,
    class: Vec<u32>,
}

/// The deduplicated bit vectors of the intervals `starts` of `ranges`
/// (over `0..=max`), appended to `bits` (`words` per vector).
fn intervals<T: Addr>(
    ranges: &[(T, T)],
    starts: Vec<T>,
    max: T,
    words: usize,
    bits: &mut Vec<u64>,
) -> Intervals<T> {
    // One sweep over the edges: rule i enters the active set at `lo` and
    // leaves it at `hi + 1`, so each interval costs its own edges plus one
    // hash of the vector, not a scan of every rule.
    let mut edges: Vec<(T, bool, usize)> = Vec::with_capacity(2 * ranges.len());
    for (i, &(lo, hi)) in ranges.iter().enumerate() {
        edges.push((lo, true, i));
        if hi < max {
            edges.push((hi.succ(), false, i));
        }
    }
    edges.sort_unstable_by_key(|&(at, _, _)| at);
    let mut dedup: HashMap<Vec<u64>, u32> = HashMap::new();
    let mut class = Vec::with_capacity(starts.len());
    let mut v = vec![0u64; words];
    let mut e = 0;
    for &s in &starts {
        while e < edges.len() && edges[e].0 == s {
            let (_, enter, i) = edges[e];
            if enter {
                v[i / 64] |= 1 << (i % 64);
            } else {
                v[i / 64] &= !(1 << (i % 64));
            }
            e += 1;
        }
        let next = (bits.len() / words.max(1)) as u32;
        let id = *dedup.entry(v.clone()).or_insert_with(|| {
            bits.extend_from_slice(&v);
            next
        });
        class.push(id);
    }
    Intervals { starts, class }
}

/// An address field: intervals plus, for each value of the top 16 bits
/// (each IPv4 /16, each IPv6 /16), the first interval that overlaps it, so
/// a lookup searches only a few intervals. A bucket that many intervals
/// cut (IPv6 rules tend to share a few /16s, like 2001::/16) gets a second
/// level over the next 8 bits.
struct AddrField<A> {
    starts: Vec<A>,
    class: Vec<u32>,
    /// `index[h]`: the index of the interval containing the first address
    /// of bucket `h`, or [`SUB`] plus the offset of its sub-buckets in
    /// `sub`; one extra entry at the end.
    index: Vec<u32>,
    /// Sub-buckets, 257 entries per split bucket: entry `j` is the index
    /// of the interval containing the first address of sub-bucket `j`,
    /// the last one that of the next bucket.
    sub: Vec<u32>,
}

/// Tag of an [`AddrField::index`] entry that points into `sub`.
const SUB: u32 = 1 << 31;
/// A bucket cut into more intervals than this gets sub-buckets.
const SPLIT_ABOVE: usize = 16;

impl<A: Addr> AddrField<A> {
    fn new(iv: Intervals<A>) -> AddrField<A> {
        let starts = iv.starts;
        // The interval containing `a`, searching forward from `i`.
        let containing = |mut i: usize, a: A| {
            while i + 1 < starts.len() && starts[i + 1] <= a {
                i += 1;
            }
            i
        };
        let mut first = Vec::with_capacity(65537);
        let mut i = 0usize;
        for h in 0u32..=65535 {
            i = containing(i, A::bucket_start(h));
            first.push(i as u32);
        }
        first.push((starts.len() - 1) as u32);
        let mut index = first.clone();
        let mut sub = Vec::new();
        for h in 0..65536usize {
            let (lo, hi) = (first[h] as usize, first[h + 1] as usize);
            if hi - lo <= SPLIT_ABOVE {
                continue;
            }
            index[h] = SUB | sub.len() as u32;
            let mut i = lo;
            for j in 0u32..256 {
                i = containing(i, A::sub_start(h as u32, j));
                sub.push(i as u32);
            }
            sub.push(hi as u32);
        }
        AddrField { starts, class: iv.class, index, sub }
    }

    /// The interval index of the first address of bucket `h`.
    #[inline]
    fn first_of(&self, h: usize) -> usize {
        let e = self.index[h];
        match e & SUB {
            0 => e as usize,
            _ => self.sub[(e & !SUB) as usize] as usize,
        }
    }

    #[inline]
    fn class_of(&self, a: A) -> u32 {
        let h = a.top16() as usize;
        let e = self.index[h];
        let (lo, hi) = match e & SUB {
            0 => (e as usize, self.first_of(h + 1)),
            _ => {
                let j = (e & !SUB) as usize + a.next8() as usize;
                (self.sub[j] as usize, self.sub[j + 1] as usize)
            }
        };
        // The interval containing `a` is the last one in lo..=hi starting at
        // or before `a`; `starts[lo] <= a` holds by construction.
        let window = &self.starts[lo + 1..=hi];
        let idx = lo + window.partition_point(|&s| s <= a);
        self.class[idx]
    }
}

/// A 16-bit field (a port): a direct table.
struct PortField {
    class: Box<[u32; 65536]>,
}

impl PortField {
    fn new(iv: &Intervals<u32>) -> PortField {
        let mut class: Box<[u32; 65536]> =
            vec![0u32; 65536].into_boxed_slice().try_into().expect("65536 entries");
        for (i, &s) in iv.starts.iter().enumerate() {
            let end = iv.starts.get(i + 1).map_or(65536, |&e| e as usize);
            class[s as usize..end].fill(iv.class[i]);
        }
        PortField { class }
    }
}

/// The compiled rule set over addresses of type `A`.
pub struct Classifier<A = u32> {
    words: usize,
    rules: usize,
    src: AddrField<A>,
    dst: AddrField<A>,
    proto: [u32; 256],
    sport: PortField,
    dport: PortField,
    src_bits: Vec<u64>,
    dst_bits: Vec<u64>,
    proto_bits: Vec<u64>,
    sport_bits: Vec<u64>,
    dport_bits: Vec<u64>,
}

impl<A> std::fmt::Debug for Classifier<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("rules", &self.rules)
            .field("src_intervals", &self.src.starts.len())
            .field("src_split_buckets", &(self.src.sub.len() / 257))
            .field("dst_intervals", &self.dst.starts.len())
            .finish()
    }
}

impl<A: Addr> Classifier<A> {
    /// Compile `rules` (first match wins); refused, before any table is
    /// built, when the tables would exceed [`MAX_TABLE_BYTES`].
    pub fn new(rules: &[RuleMatch<A>]) -> Result<Classifier<A>, TooManyRules> {
        let words = rules.len().div_ceil(64).max(1);
        let addrs = |f: fn(&RuleMatch<A>) -> (A, A)| rules.iter().map(f).collect::<Vec<_>>();
        let (src_r, dst_r) = (addrs(|m| m.src), addrs(|m| m.dst));
        let (src_s, dst_s) = (interval_starts(&src_r, A::MAX), interval_starts(&dst_r, A::MAX));
        let r = |f: fn(&RuleMatch<A>) -> (u32, u32)| rules.iter().map(f).collect::<Vec<_>>();
        let fields = [
            (r(|m| (m.proto.0 as u32, m.proto.1 as u32)), 255),
            (r(|m| (m.src_ports.0 as u32, m.src_ports.1 as u32)), 65535),
            (r(|m| (m.dst_ports.0 as u32, m.dst_ports.1 as u32)), 65535),
        ];
        let starts: Vec<Vec<u32>> =
            fields.iter().map(|(ranges, max)| interval_starts(ranges, *max)).collect();
        let total: u64 = starts.iter().map(|s| s.len() as u64).sum::<u64>()
            + src_s.len() as u64
            + dst_s.len() as u64;
        let bytes = total.saturating_mul(words as u64 * 8);
        if bytes > MAX_TABLE_BYTES {
            return Err(TooManyRules { rules: rules.len(), intervals: total, bytes });
        }
        let [proto_r, sport_r, dport_r] = fields;
        let [proto_s, sport_s, dport_s]: [Vec<u32>; 3] = starts.try_into().expect("three fields");
        let mut src_bits = Vec::new();
        let src = AddrField::new(intervals(&src_r, src_s, A::MAX, words, &mut src_bits));
        let mut dst_bits = Vec::new();
        let dst = AddrField::new(intervals(&dst_r, dst_s, A::MAX, words, &mut dst_bits));
        let mut proto_bits = Vec::new();
        let piv = intervals(&proto_r.0, proto_s, 255, words, &mut proto_bits);
        let mut proto = [0u32; 256];
        for (i, &s) in piv.starts.iter().enumerate() {
            let end = piv.starts.get(i + 1).map_or(256, |&e| e as usize);
            proto[s as usize..end].fill(piv.class[i]);
        }
        let mut sport_bits = Vec::new();
        let sport = PortField::new(&intervals(&sport_r.0, sport_s, 65535, words, &mut sport_bits));
        let mut dport_bits = Vec::new();
        let dport = PortField::new(&intervals(&dport_r.0, dport_s, 65535, words, &mut dport_bits));
        Ok(Classifier {
            words,
            rules: rules.len(),
            src,
            dst,
            proto,
            sport,
            dport,
            src_bits,
            dst_bits,
            proto_bits,
            sport_bits,
            dport_bits,
        })
    }

    /// Index of the first rule matching `f`, if any.
    #[inline]
    pub fn classify(&self, f: &Fields<A>) -> Option<usize> {
        let w = self.words;
        let at = |c: u32| (c as usize) * w..(c as usize + 1) * w;
        let s = &self.src_bits[at(self.src.class_of(f.src))];
        let d = &self.dst_bits[at(self.dst.class_of(f.dst))];
        let p = &self.proto_bits[at(self.proto[f.proto as usize])];
        let sp = &self.sport_bits[at(self.sport.class[f.src_port as usize])];
        let dp = &self.dport_bits[at(self.dport.class[f.dst_port as usize])];
        for i in 0..w {
            let x = s[i] & d[i] & p[i] & sp[i] & dp[i];
            if x != 0 {
                let rule = i * 64 + x.trailing_zeros() as usize;
                return (rule < self.rules).then_some(rule);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn prefix(a: u32, len: u8) -> (u32, u32) {
        let m = crate::conntrack::prefix_mask(len);
        (a & m, (a & m) | !m)
    }

    fn any_rule() -> RuleMatch {
        RuleMatch {
            src: (0, u32::MAX),
            dst: (0, u32::MAX),
            proto: (0, 255),
            src_ports: (0, 65535),
            dst_ports: (0, 65535),
        }
    }

    #[test]
    fn first_match_wins() {
        let rules = [
            RuleMatch {
                dst: prefix(0x0a00_0000, 8),
                dst_ports: (80, 80),
                proto: (6, 6),
                ..any_rule()
            },
            RuleMatch { src: prefix(0xc0a8_0000, 16), ..any_rule() },
            RuleMatch { dst_ports: (1000, 2000), ..any_rule() },
        ];
        let c = Classifier::new(&rules).unwrap();
        let f = |src, dst, proto, dport| Fields { src, dst, proto, src_port: 5, dst_port: dport };
        assert_eq!(c.classify(&f(0xc0a8_0101, 0x0a01_0101, 6, 80)), Some(0));
        assert_eq!(c.classify(&f(0xc0a8_0101, 0x0a01_0101, 17, 80)), Some(1));
        assert_eq!(c.classify(&f(0x0101_0101, 0x0a01_0101, 17, 1500)), Some(2));
        assert_eq!(c.classify(&f(0x0101_0101, 0x0a01_0101, 17, 2001)), None);
        assert_eq!(Classifier::new(&[]).unwrap().classify(&f(1, 2, 3, 4)), None);
    }

    /// 664,000 rules on distinct /32 addresses once took 159 s and 19.6 GB
    /// to validate: now refused from the interval count, before any table.
    #[test]
    fn too_many_distinct_rules_are_refused_before_building() {
        let n = 664_000u32;
        let rules: Vec<RuleMatch> =
            (0..n).map(|i| RuleMatch { dst: (i, i), ..any_rule() }).collect();
        let e = Classifier::new(&rules).unwrap_err();
        assert_eq!(e.rules, n as usize);
        // dst: 0..=n (adjacent /32s share edges); the other four fields:
        // one interval each.
        assert_eq!(e.intervals, n as u64 + 1 + 4);
        assert!(e.bytes > MAX_TABLE_BYTES);
        assert!(e.to_string().contains("664000 rules"), "{e}");
    }

    /// Many rules that share their fields stay cheap: the limit counts
    /// intervals, not rules.
    #[test]
    fn many_rules_sharing_fields_are_accepted() {
        let rules: Vec<RuleMatch> = (0..20_000u32)
            .map(|i| {
                RuleMatch { dst: prefix(0x0a00_0000, 8), dst_ports: (80, 80), ..any_rule() }
                    .with_proto(if i % 2 == 0 { 6 } else { 17 })
            })
            .collect();
        let c = Classifier::new(&rules).unwrap();
        let f = Fields { src: 1, dst: 0x0a01_0203, proto: 17, src_port: 9, dst_port: 80 };
        assert_eq!(c.classify(&f), Some(1));
    }

    impl RuleMatch {
        fn with_proto(self, p: u8) -> RuleMatch {
            RuleMatch { proto: (p, p), ..self }
        }
    }

    fn arb_rule() -> impl Strategy<Value = RuleMatch> {
        let addr = (any::<u32>(), 0u8..=32).prop_map(|(a, l)| prefix(a, l));
        let port = prop_oneof![
            Just((0u16, 65535u16)),
            any::<u16>().prop_map(|p| (p, p)),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| (a.min(b), a.max(b))),
        ];
        let proto = prop_oneof![Just((0u8, 255u8)), Just((6, 6)), Just((17, 17)), Just((1, 1))];
        (addr.clone(), addr, proto, port.clone(), port).prop_map(
            |(src, dst, proto, src_ports, dst_ports)| RuleMatch {
                src,
                dst,
                proto,
                src_ports,
                dst_ports,
            },
        )
    }

    /// Many rules inside one /16 split its bucket into sub-buckets; the
    /// result is still the linear first match (IPv4 and IPv6).
    #[test]
    fn dense_buckets_are_split_and_still_exact() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let rules4: Vec<RuleMatch> = (0..300)
            .map(|_| {
                let len = 20 + (next() % 13) as u8;
                RuleMatch { dst: prefix(0x0a00_0000 | (next() as u32 & 0xffff), len), ..any_rule() }
            })
            .collect();
        let c4 = Classifier::new(&rules4).unwrap();
        assert!(!c4.dst.sub.is_empty());
        let any6 = RuleMatch::<u128> {
            src: (0, u128::MAX),
            dst: (0, u128::MAX),
            proto: (0, 255),
            src_ports: (0, 65535),
            dst_ports: (0, 65535),
        };
        let rules6: Vec<RuleMatch<u128>> = (0..300)
            .map(|_| {
                let a =
                    (0x2001u128 << 112) | (u128::from(next()) << 48) | u128::from(next() & 0xffff);
                RuleMatch { src: prefix6(a, 24 + (next() % 100) as u8), ..any6 }
            })
            .collect();
        let c6 = Classifier::new(&rules6).unwrap();
        assert!(!c6.src.sub.is_empty());
        for _ in 0..20_000 {
            let d = 0x0a00_0000 | (next() as u32 & 0xffff);
            let f = Fields { src: 1, dst: d, proto: 6, src_port: 1, dst_port: 2 };
            assert_eq!(c4.classify(&f), rules4.iter().position(|r| r.matches(&f)), "{f:?}");
            let r = &rules6[next() as usize % rules6.len()];
            let a = if next() % 2 == 0 { r.src.0 } else { r.src.1 };
            let a = a.wrapping_add(u128::from(next() % 3)).wrapping_sub(1);
            let f = Fields { src: a, dst: 1, proto: 6, src_port: 1, dst_port: 2 };
            assert_eq!(c6.classify(&f), rules6.iter().position(|r| r.matches(&f)), "{f:?}");
        }
    }

    fn prefix6(a: u128, len: u8) -> (u128, u128) {
        let m = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
        (a & m, (a & m) | !m)
    }

    /// IPv6 rules: 128-bit prefixes, first match, the /16 bucket index
    /// (rules inside one /16 and rules spanning many).
    #[test]
    fn ipv6_first_match() {
        let any6 = RuleMatch::<u128> {
            src: (0, u128::MAX),
            dst: (0, u128::MAX),
            proto: (0, 255),
            src_ports: (0, 65535),
            dst_ports: (0, 65535),
        };
        let db8: u128 = 0x2001_0db8 << 96;
        let rules = [
            RuleMatch { dst: prefix6(db8 | 0x80, 121), ..any6 },
            RuleMatch { dst: prefix6(db8, 32), proto: (6, 6), dst_ports: (443, 443), ..any6 },
            RuleMatch { src: prefix6(0xfc00 << 112, 7), ..any6 },
            RuleMatch { dst: (db8 | 5, db8 | 5), ..any6 },
        ];
        let c = Classifier::new(&rules).unwrap();
        let f = |src, dst, proto, dst_port| Fields { src, dst, proto, src_port: 1, dst_port };
        assert_eq!(c.classify(&f(1, db8 | 0xff, 17, 9)), Some(0));
        assert_eq!(c.classify(&f(1, db8 | 0x7f, 6, 443)), Some(1));
        assert_eq!(c.classify(&f(0xfd00 << 112, db8 | 0x7f, 6, 444)), Some(2));
        assert_eq!(c.classify(&f(1, db8 | 5, 17, 9)), Some(3));
        assert_eq!(c.classify(&f(1, db8 | 6, 17, 9)), None);
        assert_eq!(c.classify(&f(1, u128::MAX, 17, 9)), None);
    }

    fn arb_rule6() -> impl Strategy<Value = RuleMatch<u128>> {
        // Prefixes under a few common /16s, so rules overlap and share
        // buckets, plus fully random ones.
        let base = prop_oneof![
            Just(0x2001u128 << 112),
            Just(0xfd00u128 << 112),
            Just(0xfe80u128 << 112),
            any::<u128>()
        ];
        let addr =
            (base, any::<u128>(), 0u8..=128).prop_map(|(b, low, l)| prefix6(b | (low >> 16), l));
        let port = prop_oneof![
            Just((0u16, 65535u16)),
            any::<u16>().prop_map(|p| (p, p)),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| (a.min(b), a.max(b))),
        ];
        let proto = prop_oneof![Just((0u8, 255u8)), Just((6, 6)), Just((17, 17)), Just((58, 58))];
        (addr.clone(), addr, proto, port.clone(), port).prop_map(
            |(src, dst, proto, src_ports, dst_ports)| RuleMatch {
                src,
                dst,
                proto,
                src_ports,
                dst_ports,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn ipv6_equals_linear_first_match(
            rules in proptest::collection::vec(arb_rule6(), 0..120),
            packets in proptest::collection::vec(
                (any::<u128>(), any::<u128>(), prop_oneof![Just(6u8), Just(17), Just(58)],
                 any::<u16>(), any::<u16>()), 32),
            pick in proptest::collection::vec(any::<prop::sample::Index>(), 64),
        ) {
            let c = Classifier::new(&rules).unwrap();
            let mut fields: Vec<Fields<u128>> = packets.into_iter()
                .map(|(src, dst, proto, src_port, dst_port)| Fields { src, dst, proto, src_port, dst_port })
                .collect();
            if !rules.is_empty() {
                for (i, ix) in pick.iter().enumerate() {
                    let r = &rules[ix.index(rules.len())];
                    let edge = |lohi: (u128, u128)| if i % 2 == 0 { lohi.0 } else { lohi.1 };
                    let pedge = |lohi: (u16, u16)| if i % 3 == 0 { lohi.0 } else { lohi.1 };
                    fields.push(Fields {
                        src: edge(r.src),
                        dst: edge(r.dst),
                        proto: r.proto.0.max(if i % 3 == 0 { 6 } else { 0 }).min(r.proto.1),
                        src_port: pedge(r.src_ports),
                        dst_port: pedge(r.dst_ports),
                    });
                }
            }
            for f in &fields {
                let linear = rules.iter().position(|r| r.matches(f));
                prop_assert_eq!(c.classify(f), linear, "{:?}", f);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn equals_linear_first_match(
            rules in proptest::collection::vec(arb_rule(), 0..150),
            packets in proptest::collection::vec(
                (any::<u32>(), any::<u32>(), prop_oneof![Just(6u8), Just(17), Just(1), any::<u8>()],
                 any::<u16>(), any::<u16>()), 64),
            pick in proptest::collection::vec(any::<prop::sample::Index>(), 64),
        ) {
            let c = Classifier::new(&rules).unwrap();
            let mut fields: Vec<Fields> = packets.into_iter()
                .map(|(src, dst, proto, src_port, dst_port)| Fields { src, dst, proto, src_port, dst_port })
                .collect();
            // Random packets rarely hit narrow rules: also take points on
            // the edges of random rules.
            if !rules.is_empty() {
                for (i, ix) in pick.iter().enumerate() {
                    let r = &rules[ix.index(rules.len())];
                    let edge = |lohi: (u32, u32)| if i % 2 == 0 { lohi.0 } else { lohi.1 };
                    fields.push(Fields {
                        src: edge(r.src),
                        dst: edge(r.dst),
                        proto: r.proto.0.max(if i % 3 == 0 { 6 } else { 0 }).min(r.proto.1),
                        src_port: edge((r.src_ports.0 as u32, r.src_ports.1 as u32)) as u16,
                        dst_port: edge((r.dst_ports.0 as u32, r.dst_ports.1 as u32)) as u16,
                    });
                }
            }
            for f in &fields {
                let linear = rules.iter().position(|r| r.matches(f));
                prop_assert_eq!(c.classify(f), linear, "{:?}", f);
            }
        }
    }
}
