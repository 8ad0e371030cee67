//! Flow identification: the 5-tuple of a frame (IPv4 [`FiveTuple`], IPv6
//! [`FiveTuple6`]) and a fast hash of it.

use crate::wire::{ip_proto, Icmpv4Packet, Ipv4Packet, TcpPacket, UdpPacket};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The 5-tuple of an IPv4 flow.
///
/// For ICMP echo request/reply both ports hold the echo identifier (so a
/// ping and its reply map to reversed tuples of one flow, as NAT and
/// conntrack treat them). For non-first fragments and protocols without
/// ports both ports are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FiveTuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl FiveTuple {
    /// The tuple of the reply direction (addresses and ports swapped).
    #[inline]
    pub fn reversed(&self) -> FiveTuple {
        FiveTuple {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }

    /// A fast, well-mixed 64-bit hash (two multiplications and a murmur3
    /// finalizer; every input bit affects every output bit). Not keyed, so
    /// not resistant to chosen-flow flooding (tables that face untrusted
    /// senders use [`FiveTuple::keyed_hash`]); use the low 32 bits where a
    /// 32-bit hash is wanted.
    ///
    /// Note: `FiveTuple` also implements [`std::hash::Hash`] by feeding
    /// this value to the hasher; with [`FlowHasher`] a `HashMap` uses it
    /// directly. Call the trait method as `Hash::hash(&t, &mut state)`.
    #[inline]
    pub fn hash(&self) -> u64 {
        self.keyed_hash(&FlowHashKey::FIXED)
    }

    /// [`FiveTuple::hash`] with the two multipliers taken from `key`: with
    /// a [`FlowHashKey::random`] per table, which flows share a bucket
    /// depends on the key, so a sender who chooses its addresses and ports
    /// cannot pile its flows into one bucket of a table it cannot see.
    /// Same cost as the fixed hash.
    #[inline]
    pub fn keyed_hash(&self, key: &FlowHashKey) -> u64 {
        let a = ((u32::from(self.src) as u64) << 32) | u32::from(self.dst) as u64;
        let b = ((self.src_port as u64) << 32) | ((self.dst_port as u64) << 16) | self.proto as u64;
        fmix64(a.wrapping_mul(key.k1).rotate_left(29) ^ b.wrapping_mul(key.k2))
    }

    /// The same hash for both directions of a flow (`t.symmetric_hash() ==
    /// t.reversed().symmetric_hash()`), for sharding both directions of a
    /// connection to one worker.
    #[inline]
    pub fn symmetric_hash(&self) -> u64 {
        let r = self.reversed();
        if (self.src, self.src_port) <= (r.src, r.src_port) {
            self.hash()
        } else {
            r.hash()
        }
    }
}

/// The multipliers of [`FiveTuple::keyed_hash`] (both odd, so each
/// multiplication is a bijection and no input bit is lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowHashKey {
    k1: u64,
    k2: u64,
}

impl FlowHashKey {
    /// The key of the unkeyed [`FiveTuple::hash`].
    pub const FIXED: FlowHashKey =
        FlowHashKey { k1: 0x9E37_79B9_7F4A_7C15, k2: 0xC2B2_AE3D_27D4_EB4F };

    /// A key from the OS random source (through `std`'s `RandomState`,
    /// which is seeded from it: no extra dependency).
    pub fn random() -> FlowHashKey {
        use std::hash::BuildHasher;
        let s = std::collections::hash_map::RandomState::new();
        FlowHashKey { k1: s.hash_one(1u64) | 1, k2: s.hash_one(2u64) | 1 }
    }
}

/// Murmur3's 64-bit finalizer: full avalanche.
#[inline(always)]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

impl Hash for FiveTuple {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(FiveTuple::hash(self));
    }
}

impl fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            ip_proto::TCP => "tcp".to_string(),
            ip_proto::UDP => "udp".to_string(),
            ip_proto::ICMP => "icmp".to_string(),
            n => format!("proto {n}"),
        };
        write!(f, "{p} {}:{} -> {}:{}", self.src, self.src_port, self.dst, self.dst_port)
    }
}

/// The 5-tuple of an IPv6 flow, with ports as [`FiveTuple`] has them (the
/// ICMPv6 echo identifier as both ports; 0 for non-first fragments and
/// protocols without ports). `proto` is the upper-layer protocol after the
/// extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FiveTuple6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl FiveTuple6 {
    /// The tuple of the reply direction (addresses and ports swapped).
    #[inline]
    pub fn reversed(&self) -> FiveTuple6 {
        FiveTuple6 {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }

    /// [`FiveTuple::hash`]'s mixing over the 128-bit addresses.
    #[inline]
    pub fn hash(&self) -> u64 {
        self.keyed_hash(&FlowHashKey::FIXED)
    }

    /// [`FiveTuple::keyed_hash`] for IPv6: each address half is multiplied
    /// by a key word before the halves are combined, so that flows a
    /// sender chooses do not collide without the key.
    #[inline]
    pub fn keyed_hash(&self, key: &FlowHashKey) -> u64 {
        let s = u128::from(self.src);
        let d = u128::from(self.dst);
        let a = ((s >> 64) as u64).wrapping_mul(key.k1).rotate_left(23)
            ^ (s as u64).wrapping_mul(key.k2).rotate_left(41)
            ^ ((d >> 64) as u64).wrapping_mul(key.k2).rotate_left(7)
            ^ (d as u64).wrapping_mul(key.k1);
        let b = ((self.src_port as u64) << 32) | ((self.dst_port as u64) << 16) | self.proto as u64;
        fmix64(a.wrapping_mul(key.k1).rotate_left(29) ^ b.wrapping_mul(key.k2))
    }

    /// The same hash for both directions of a flow.
    #[inline]
    pub fn symmetric_hash(&self) -> u64 {
        let r = self.reversed();
        if (self.src, self.src_port) <= (r.src, r.src_port) {
            self.hash()
        } else {
            r.hash()
        }
    }
}

impl Hash for FiveTuple6 {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(FiveTuple6::hash(self));
    }
}

impl fmt::Display for FiveTuple6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            ip_proto::TCP => "tcp".to_string(),
            ip_proto::UDP => "udp".to_string(),
            ip_proto::ICMPV6 => "icmpv6".to_string(),
            n => format!("proto {n}"),
        };
        write!(f, "{p} [{}]:{} -> [{}]:{}", self.src, self.src_port, self.dst, self.dst_port)
    }
}

/// A [`Hasher`] for keys whose `Hash` impl writes one already-mixed `u64`
/// (like [`FiveTuple`]): it passes that value through. Other writes are
/// mixed with FNV-1a so it stays correct (if slower) for any key.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlowHasher(u64);

impl Hasher for FlowHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = if self.0 == 0 { v } else { fmix64(self.0 ^ v) };
    }
}

/// `BuildHasher` for `HashMap<FiveTuple, V, FlowBuildHasher>`.
pub type FlowBuildHasher = BuildHasherDefault<FlowHasher>;

/// A hash map keyed by flow using [`FiveTuple::hash`].
pub type FlowMap<V> = std::collections::HashMap<FiveTuple, V, FlowBuildHasher>;

/// The packet quoted in an ICMPv4 error message: where its IPv4 header is
/// and its 5-tuple as it appears there (in the direction it was sent, so
/// the reverse of the flow the error travels back on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotedFlow {
    pub tuple: FiveTuple,
    /// Offset of the quoted IPv4 header from the start of the ICMP message
    /// (always 8).
    pub l3_offset: usize,
    /// Length of the quoted IPv4 header, options included.
    pub header_len: usize,
}

/// The flow quoted by an ICMPv4 error, for NAT and conntrack to relate the
/// error to a connection.
///
/// `icmp` is the ICMP message, from its type byte to the end of the IPv4
/// packet that carries it. Returns `Some` when the message is an error
/// (destination unreachable, source quench, redirect, time exceeded,
/// parameter problem) that quotes a first fragment of TCP, UDP or ICMP echo
/// with a well-formed IPv4 header and at least the first 8 bytes of its
/// transport header (RFC 792), `None` otherwise. The quoted header's total
/// length is not checked: a quote is truncated by design.
pub fn parse_icmp_error_quote(icmp: &[u8]) -> Option<QuotedFlow> {
    let outer = Icmpv4Packet::new_checked(icmp).ok()?;
    if !matches!(outer.msg_type(), 3 | 4 | 5 | 11 | 12) {
        return None;
    }
    let l3_offset = Icmpv4Packet::<&[u8]>::HEADER_LEN;
    let quote = &icmp[l3_offset..];
    if quote.len() < Ipv4Packet::<&[u8]>::HEADER_LEN {
        return None;
    }
    let ip = Ipv4Packet::new_unchecked(quote);
    let header_len = ip.header_len();
    if ip.version() != 4
        || header_len < Ipv4Packet::<&[u8]>::HEADER_LEN
        || header_len + 8 > quote.len()
        || ip.frag_offset() != 0
    {
        return None;
    }
    // Only the first 8 transport bytes are present: read them through
    // unchecked views (ports and the echo identifier lie within them).
    let l4 = &quote[header_len..];
    let proto = ip.protocol();
    let (src_port, dst_port) = match proto {
        ip_proto::TCP => {
            let t = TcpPacket::new_unchecked(l4);
            (t.src_port(), t.dst_port())
        }
        ip_proto::UDP => {
            let u = UdpPacket::new_unchecked(l4);
            (u.src_port(), u.dst_port())
        }
        ip_proto::ICMP => {
            let i = Icmpv4Packet::new_unchecked(l4);
            if !i.is_echo() {
                return None;
            }
            (i.echo_ident(), i.echo_ident())
        }
        _ => return None,
    };
    Some(QuotedFlow {
        tuple: FiveTuple { src: ip.src_addr(), dst: ip.dst_addr(), proto, src_port, dst_port },
        l3_offset,
        header_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{parse, Class, Layer, Parsed, Unsupported};
    use crate::wire::build::FrameSpec;
    use crate::wire::{ethertype, tcp_flags};

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn flow(frame: &[u8]) -> (Parsed, FiveTuple) {
        let p = parse(frame);
        (p, p.flow().expect("an IPv4 frame"))
    }

    #[test]
    fn udp_tcp_icmp_flows() {
        let (p, t) = flow(&FrameSpec::udp((A, 1000), (B, 53), 10).build());
        assert_eq!(t, FiveTuple { src: A, dst: B, proto: 17, src_port: 1000, dst_port: 53 });
        assert_eq!((p.ip.l3, p.ip.l4_offset(), p.vlan, p.class), (14, 34, None, Class::Ok));

        let (_, t) = flow(&FrameSpec::tcp((A, 1), (B, 80), tcp_flags::SYN).build());
        assert_eq!((t.proto, t.src_port, t.dst_port), (6, 1, 80));

        let (_, t) = flow(&FrameSpec::icmp_echo(A, B, 77, 3).build());
        assert_eq!((t.proto, t.src_port, t.dst_port), (1, 77, 77));
    }

    #[test]
    fn vlan_options_fragments_other() {
        let mut s = FrameSpec::udp((A, 1), (B, 2), 0);
        s.vlan = Some(42);
        s.ip_options = vec![1, 1, 1, 1, 1, 1, 1, 0];
        let (p, t) = flow(&s.build());
        assert_eq!((p.ip.l3, p.ip.l4_offset(), p.vlan), (18, 18 + 28, Some(42)));
        assert_eq!((t.src_port, t.dst_port), (1, 2));

        // Non-first fragment: the bytes after the IP header are not a UDP
        // header, so ports are 0.
        let mut frame = FrameSpec::udp((A, 1), (B, 2), 16).build();
        frame[14 + 6] = 0x00;
        frame[14 + 7] = 0x02; // offset 16 bytes
        let (p, t) = flow(&frame);
        assert_eq!((t.src_port, t.dst_port), (0, 0));
        assert_eq!(p.class, Class::Fragment { first: false, offset: 16 });

        // First fragment (MF set) still has ports.
        let mut frame = FrameSpec::udp((A, 1), (B, 2), 16).build();
        frame[14 + 6] = 0x20;
        let (p, t) = flow(&frame);
        assert_eq!((t.src_port, p.class), (1, Class::Fragment { first: true, offset: 0 }));

        let mut frame = FrameSpec::udp((A, 1), (B, 2), 16).build();
        frame[14 + 9] = 47; // GRE
        let (_, t) = flow(&frame);
        assert_eq!((t.proto, t.src_port, t.dst_port), (47, 0, 0));
    }

    #[test]
    fn errors() {
        let frame = FrameSpec::udp((A, 1), (B, 2), 0).build();
        assert_eq!(parse(&frame[..40]).class, Class::Truncated { layer: Layer::L3 });
        assert_eq!(parse(&frame[..40]).flow(), None);
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        assert_eq!(parse(&arp).class, Class::Unsupported { what: Unsupported::Arp });
        // Non-echo ICMP has ports 0.
        let mut icmp = FrameSpec::icmp_echo(A, B, 5, 5).build();
        icmp[34] = 3;
        assert_eq!(flow(&icmp).1.src_port, 0);
    }

    /// An ICMP error (type, code, checksum, unused) quoting `packet`.
    fn icmp_error(msg_type: u8, packet: &[u8]) -> Vec<u8> {
        [&[msg_type, 1, 0, 0, 0, 0, 0, 0][..], packet].concat()
    }

    #[test]
    fn icmp_error_quotes() {
        let udp = FrameSpec::udp((A, 1000), (B, 53), 10).build();
        let q = parse_icmp_error_quote(&icmp_error(3, &udp[14..14 + 28])).unwrap();
        let want = FiveTuple { src: A, dst: B, proto: 17, src_port: 1000, dst_port: 53 };
        assert_eq!((q.tuple, q.l3_offset, q.header_len), (want, 8, 20));

        let tcp = FrameSpec::tcp((A, 5), (B, 80), tcp_flags::SYN).build();
        let q = parse_icmp_error_quote(&icmp_error(11, &tcp[14..14 + 28])).unwrap();
        assert_eq!((q.tuple.proto, q.tuple.src_port, q.tuple.dst_port), (6, 5, 80));

        let echo = FrameSpec::icmp_echo(A, B, 77, 1).build();
        let q = parse_icmp_error_quote(&icmp_error(12, &echo[14..14 + 28])).unwrap();
        assert_eq!((q.tuple.proto, q.tuple.src_port, q.tuple.dst_port), (1, 77, 77));

        let mut opts = FrameSpec::udp((A, 1), (B, 2), 0);
        opts.ip_options = vec![1, 1, 1, 1, 1, 1, 1, 0];
        let opts = opts.build();
        let q = parse_icmp_error_quote(&icmp_error(4, &opts[14..14 + 36])).unwrap();
        assert_eq!((q.header_len, q.tuple.src_port), (28, 1));
    }

    #[test]
    fn icmp_error_quote_rejects() {
        let udp = FrameSpec::udp((A, 1000), (B, 53), 10).build();
        let ip = &udp[14..14 + 28];
        // Not an error message (echo request).
        assert_eq!(parse_icmp_error_quote(&icmp_error(8, ip)), None);
        // Fewer than 8 transport bytes, at every length.
        for n in 0..28 {
            assert_eq!(parse_icmp_error_quote(&icmp_error(3, &ip[..n])), None, "len {n}");
        }
        // A non-first fragment, another protocol, a non-echo ICMP quote.
        let mut frag = ip.to_vec();
        frag[7] = 1;
        assert_eq!(parse_icmp_error_quote(&icmp_error(3, &frag)), None);
        let mut gre = ip.to_vec();
        gre[9] = 47;
        assert_eq!(parse_icmp_error_quote(&icmp_error(3, &gre)), None);
        let mut unreach = FrameSpec::icmp_echo(A, B, 7, 1).build();
        unreach[34] = 3;
        assert_eq!(parse_icmp_error_quote(&icmp_error(3, &unreach[14..14 + 28])), None);
        let mut v6 = ip.to_vec();
        v6[0] = 0x65;
        assert_eq!(parse_icmp_error_quote(&icmp_error(3, &v6)), None);
    }

    /// Sequential keys (what a NAT or a traffic generator produces: one
    /// port or address counting up) spread evenly over a power-of-two
    /// table indexed by the low bits and by the high bits.
    #[test]
    fn hash_spreads_sequential_keys() {
        const BUCKETS: usize = 1024;
        const KEYS: u32 = 64 * 1024;
        let base = FiveTuple { src: A, dst: B, proto: 17, src_port: 0, dst_port: 80 };
        let variants: [&dyn Fn(u32) -> FiveTuple; 3] = [
            &|i| FiveTuple { src_port: i as u16, ..base },
            &|i| FiveTuple { src: Ipv4Addr::from(0x0a00_0000 + i), ..base },
            &|i| FiveTuple {
                dst: Ipv4Addr::from(0xc0a8_0000 + (i >> 8)),
                src_port: i as u16 & 0xff,
                ..base
            },
        ];
        for (v, make) in variants.iter().enumerate() {
            let mut low = vec![0u32; BUCKETS];
            let mut high = vec![0u32; BUCKETS];
            for i in 0..KEYS {
                let h = make(i).hash();
                low[h as usize % BUCKETS] += 1;
                high[(h >> 54) as usize] += 1;
            }
            // Expected 64 per bucket; a uniform hash stays well inside
            // [24, 112] (more than 5 standard deviations).
            for (name, t) in [("low", &low), ("high", &high)] {
                let (min, max) = (*t.iter().min().unwrap(), *t.iter().max().unwrap());
                assert!(
                    (24..=112).contains(&min) && max <= 112,
                    "variant {v} {name} bits: {min}..{max}"
                );
            }
        }
    }

    #[test]
    fn keyed_hash_depends_on_the_key() {
        let t = FiveTuple {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            proto: 17,
            src_port: 1000,
            dst_port: 53,
        };
        assert_eq!(t.keyed_hash(&FlowHashKey::FIXED), t.hash());
        let (k1, k2) = (FlowHashKey::random(), FlowHashKey::random());
        assert_ne!(k1, k2);
        // Which of 256 flows share a bucket of 16 differs between keys.
        let buckets = |k: &FlowHashKey| -> Vec<u64> {
            (0..256u16).map(|p| FiveTuple { src_port: p, ..t }.keyed_hash(k) & 15).collect()
        };
        assert_ne!(buckets(&k1), buckets(&k2));
    }

    #[test]
    fn hash_properties() {
        let t = FiveTuple { src: A, dst: B, proto: 17, src_port: 1000, dst_port: 53 };
        assert_ne!(t.hash(), t.reversed().hash());
        assert_eq!(t.symmetric_hash(), t.reversed().symmetric_hash());
        assert_eq!(t.reversed().reversed(), t);
        // Every single-bit change of the key flips about half of the hash
        // bits (avalanche); check the mean over all 104 key bits.
        let mut flipped = 0u32;
        let mut n = 0u32;
        for bit in 0..32 {
            for which in 0..2 {
                let mut u = t;
                if which == 0 {
                    u.src = Ipv4Addr::from(u32::from(u.src) ^ (1 << bit));
                } else {
                    u.dst = Ipv4Addr::from(u32::from(u.dst) ^ (1 << bit));
                }
                flipped += (t.hash() ^ u.hash()).count_ones();
                n += 1;
            }
        }
        for bit in 0..16 {
            let mut u = t;
            u.src_port ^= 1 << bit;
            flipped += (t.hash() ^ u.hash()).count_ones();
            let mut v = t;
            v.dst_port ^= 1 << bit;
            flipped += (t.hash() ^ v.hash()).count_ones();
            n += 2;
        }
        for bit in 0..8 {
            let mut u = t;
            u.proto ^= 1 << bit;
            flipped += (t.hash() ^ u.hash()).count_ones();
            n += 1;
        }
        let mean = flipped as f64 / n as f64;
        assert!((28.0..36.0).contains(&mean), "mean flipped bits {mean}");

        let mut m: FlowMap<u32> = FlowMap::default();
        m.insert(t, 1);
        m.insert(t.reversed(), 2);
        assert_eq!(m[&t], 1);
        assert_eq!(m[&t.reversed()], 2);
        assert_eq!(t.to_string(), "udp 10.0.0.1:1000 -> 10.0.0.2:53");
    }
}
