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

use std::collections::HashMap;

/// One rule's match fields; every range is inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    pub src: (u32, u32),
    pub dst: (u32, u32),
    /// Protocol range: `(p, p)` for one protocol, `(0, 255)` for any.
    pub proto: (u8, u8),
    pub src_ports: (u16, u16),
    pub dst_ports: (u16, u16),
}

/// The fields a packet is classified on. Packets without ports (ICMP,
/// fragments, other protocols) use port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fields {
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl RuleMatch {
    /// Does this rule match `f`? (The linear reference.)
    #[inline]
    pub fn matches(&self, f: &Fields) -> bool {
        (self.src.0..=self.src.1).contains(&f.src)
            && (self.dst.0..=self.dst.1).contains(&f.dst)
            && (self.proto.0..=self.proto.1).contains(&f.proto)
            && (self.src_ports.0..=self.src_ports.1).contains(&f.src_port)
            && (self.dst_ports.0..=self.dst_ports.1).contains(&f.dst_port)
    }
}

/// Interval classes of one field: `starts[i]..starts[i+1]` is interval `i`,
/// whose bit vector is `class[i]`.
struct Intervals {
    starts: Vec<u32>,
    class: Vec<u32>,
}

/// Build the elementary intervals of `ranges` over `0..=max` and their
/// deduplicated bit vectors, appended to `bits` (`words` per vector).
fn intervals(ranges: &[(u32, u32)], max: u32, words: usize, bits: &mut Vec<u64>) -> Intervals {
    let mut starts: Vec<u32> = vec![0];
    for &(lo, hi) in ranges {
        starts.push(lo);
        if hi < max {
            starts.push(hi + 1);
        }
    }
    starts.sort_unstable();
    starts.dedup();
    // Sweep: rules sorted by start; an active set ended by `hi`.
    let mut dedup: HashMap<Vec<u64>, u32> = HashMap::new();
    let mut class = Vec::with_capacity(starts.len());
    let mut v = vec![0u64; words];
    for &s in &starts {
        v.fill(0);
        for (i, &(lo, hi)) in ranges.iter().enumerate() {
            if lo <= s && s <= hi {
                v[i / 64] |= 1 << (i % 64);
            }
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

/// A 32-bit field (an address): intervals plus, for each /16, the first
/// interval that overlaps it, so a lookup searches only a few intervals.
struct AddrField {
    starts: Vec<u32>,
    class: Vec<u32>,
    /// `bucket[h]`: index of the interval containing `h << 16`; one extra
    /// entry at the end.
    bucket: Vec<u32>,
}

impl AddrField {
    fn new(iv: Intervals) -> AddrField {
        let mut bucket = Vec::with_capacity(65537);
        let mut i = 0usize;
        for h in 0u32..=65535 {
            let a = h << 16;
            while i + 1 < iv.starts.len() && iv.starts[i + 1] <= a {
                i += 1;
            }
            bucket.push(i as u32);
        }
        bucket.push((iv.starts.len() - 1) as u32);
        AddrField { starts: iv.starts, class: iv.class, bucket }
    }

    #[inline]
    fn class_of(&self, a: u32) -> u32 {
        let h = (a >> 16) as usize;
        let lo = self.bucket[h] as usize;
        let hi = self.bucket[h + 1] as usize;
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
    fn new(iv: &Intervals) -> PortField {
        let mut class: Box<[u32; 65536]> =
            vec![0u32; 65536].into_boxed_slice().try_into().expect("65536 entries");
        for (i, &s) in iv.starts.iter().enumerate() {
            let end = iv.starts.get(i + 1).map_or(65536, |&e| e as usize);
            class[s as usize..end].fill(iv.class[i]);
        }
        PortField { class }
    }
}

/// The compiled rule set.
pub struct Classifier {
    words: usize,
    rules: usize,
    src: AddrField,
    dst: AddrField,
    proto: [u32; 256],
    sport: PortField,
    dport: PortField,
    src_bits: Vec<u64>,
    dst_bits: Vec<u64>,
    proto_bits: Vec<u64>,
    sport_bits: Vec<u64>,
    dport_bits: Vec<u64>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("rules", &self.rules)
            .field("src_intervals", &self.src.starts.len())
            .field("dst_intervals", &self.dst.starts.len())
            .finish()
    }
}

impl Classifier {
    /// Compile `rules` (first match wins).
    pub fn new(rules: &[RuleMatch]) -> Classifier {
        let words = rules.len().div_ceil(64).max(1);
        let r = |f: fn(&RuleMatch) -> (u32, u32)| rules.iter().map(f).collect::<Vec<_>>();
        let mut src_bits = Vec::new();
        let src = AddrField::new(intervals(&r(|m| m.src), u32::MAX, words, &mut src_bits));
        let mut dst_bits = Vec::new();
        let dst = AddrField::new(intervals(&r(|m| m.dst), u32::MAX, words, &mut dst_bits));
        let mut proto_bits = Vec::new();
        let piv =
            intervals(&r(|m| (m.proto.0 as u32, m.proto.1 as u32)), 255, words, &mut proto_bits);
        let mut proto = [0u32; 256];
        for (i, &s) in piv.starts.iter().enumerate() {
            let end = piv.starts.get(i + 1).map_or(256, |&e| e as usize);
            proto[s as usize..end].fill(piv.class[i]);
        }
        let mut sport_bits = Vec::new();
        let sport = PortField::new(&intervals(
            &r(|m| (m.src_ports.0 as u32, m.src_ports.1 as u32)),
            65535,
            words,
            &mut sport_bits,
        ));
        let mut dport_bits = Vec::new();
        let dport = PortField::new(&intervals(
            &r(|m| (m.dst_ports.0 as u32, m.dst_ports.1 as u32)),
            65535,
            words,
            &mut dport_bits,
        ));
        Classifier {
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
        }
    }

    /// Index of the first rule matching `f`, if any.
    #[inline]
    pub fn classify(&self, f: &Fields) -> Option<usize> {
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
        let c = Classifier::new(&rules);
        let f = |src, dst, proto, dport| Fields { src, dst, proto, src_port: 5, dst_port: dport };
        assert_eq!(c.classify(&f(0xc0a8_0101, 0x0a01_0101, 6, 80)), Some(0));
        assert_eq!(c.classify(&f(0xc0a8_0101, 0x0a01_0101, 17, 80)), Some(1));
        assert_eq!(c.classify(&f(0x0101_0101, 0x0a01_0101, 17, 1500)), Some(2));
        assert_eq!(c.classify(&f(0x0101_0101, 0x0a01_0101, 17, 2001)), None);
        assert_eq!(Classifier::new(&[]).classify(&f(1, 2, 3, 4)), None);
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
            let c = Classifier::new(&rules);
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
