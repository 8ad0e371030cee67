//! The Internet checksum (RFC 1071) and incremental updates (RFC 1624).
//!
//! A checksum is computed in three steps: [`sum`] the covered bytes (and,
//! for UDP/TCP/ICMPv6, a pseudo header from [`pseudo_header_v4`] or
//! [`pseudo_header_v6`]), add the partial sums as `u32`, [`fold`] to 16 bits
//! and complement. [`checksum`] does it for one slice.
//!
//! When a NF rewrites a 16- or 32-bit field it adjusts the existing
//! checksum with [`update16`] / [`update32`] instead of summing the whole
//! packet again.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The ones' complement sum of `data` read as big-endian 16-bit words (an
/// odd trailing byte is padded with a zero), not yet complemented.
///
/// The result is at most `0xFFFF` (already carried), so many partial sums
/// can be added in a `u32` before [`fold`]ing. It is 0 only when every byte
/// of `data` is 0.
///
/// Reads 16 bytes per step into four `u64` accumulators; the sum is taken
/// in native byte order and swapped at the end, which RFC 1071 §2(B) shows
/// is equivalent.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    let mut acc = [0u64; 4];
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        // Each addend is < 2^32, so a u64 accumulator cannot overflow for
        // any slice shorter than 2^32 * 16 bytes.
        acc[0] += u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) as u64;
        acc[1] += u32::from_ne_bytes([c[4], c[5], c[6], c[7]]) as u64;
        acc[2] += u32::from_ne_bytes([c[8], c[9], c[10], c[11]]) as u64;
        acc[3] += u32::from_ne_bytes([c[12], c[13], c[14], c[15]]) as u64;
    }
    // Tail of 0..=15 bytes in at most four steps (not a word loop: small
    // headers are the common case).
    let mut rest = chunks.remainder();
    if rest.len() >= 8 {
        acc[0] += u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64;
        acc[1] += u32::from_ne_bytes([rest[4], rest[5], rest[6], rest[7]]) as u64;
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        acc[2] += u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64;
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc[3] += u16::from_ne_bytes([rest[0], rest[1]]) as u64;
        rest = &rest[2..];
    }
    if let [last] = rest {
        // The odd byte sits at an even offset: it is the high byte of a
        // big-endian word whose low byte is zero.
        acc[3] += u16::from_ne_bytes([*last, 0]) as u64;
    }
    fold_lanes(acc)
}

/// The end of [`sum`], for a pass that sums 16-byte chunks itself while
/// it has them in registers (a cipher's XOR): `lanes` are four u64
/// accumulators of native-order 32-bit words (each below 2^32 chunks);
/// the result is what [`sum`] of those bytes returns.
#[inline(always)]
pub fn fold_lanes(lanes: [u64; 4]) -> u32 {
    // 2^32 = 1 (mod 0xFFFF), so adding the 32-bit halves keeps the sum;
    // eight values below 2^32 cannot overflow a u64.
    let halves: u64 = lanes.iter().map(|a| (a & 0xFFFF_FFFF) + (a >> 32)).sum();
    let native = fold64(halves);
    u16::from_be(native) as u32
}

/// Folds a u64 ones'-complement sum down to 16 bits (end-around carry),
/// not complemented: for sums of many 16-bit words (or of wider lanes, as
/// [`sum`] keeps them) added in a `u64` without intermediate carries. Any
/// `u64` is accepted; the result is 0 only for a 0 input.
#[inline(always)]
pub fn fold64(mut s: u64) -> u16 {
    s = (s & 0xFFFF_FFFF) + (s >> 32);
    s = (s & 0xFFFF_FFFF) + (s >> 32);
    s = (s & 0xFFFF) + (s >> 16);
    s = (s & 0xFFFF) + (s >> 16);
    s = (s & 0xFFFF) + (s >> 16);
    s as u16
}

/// Folds a 32-bit ones'-complement sum to 16 bits (end-around carry), not
/// complemented.
#[inline(always)]
pub fn fold(s: u32) -> u16 {
    fold64(s as u64)
}

/// The Internet checksum of `data`: `!fold(sum(data))`.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Partial sum of the IPv4 pseudo header (RFC 768 / RFC 793): source,
/// destination, protocol and the layer-4 length (header + payload).
///
/// Result is below 2^19, so it can be added to a few [`sum`]s in a `u32`.
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let s = u32::from(src);
    let d = u32::from(dst);
    // A layer-4 length never exceeds 16 bits over IPv4; masking keeps a
    // bogus caller value from overflowing (result is still a valid sum).
    (s >> 16) + (s & 0xFFFF) + (d >> 16) + (d & 0xFFFF) + proto as u32 + (len as u32 & 0xFFFF)
}

/// Partial sum of the IPv6 pseudo header (RFC 8200 §8.1), already carried
/// to at most `0xFFFF`.
#[inline]
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: usize) -> u32 {
    let len = len as u64 & 0xFFFF_FFFF;
    let s = sum(&src.octets()) + sum(&dst.octets());
    fold64(s as u64 + (len >> 16) + (len & 0xFFFF) + next_header as u64) as u32
}

/// Adds partial sums with end-around carry; result at most `0xFFFF`.
#[inline]
pub fn add(a: u32, b: u32) -> u32 {
    fold64(a as u64 + b as u64) as u32
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word covered by checksum
/// `ck` changed from `old` to `new`: `HC' = ~(~HC + ~m + m')`.
///
/// Equals the full recomputation whenever the covered data, before and
/// after the change, is not entirely zero (an all-zero block sums to +0,
/// which ones' complement arithmetic cannot tell apart from -0; no real
/// IPv4/UDP/TCP header is all zero).
///
/// For a UDP-over-IPv4 checksum, a stored 0 means "no checksum": leave it
/// alone, and store a computed 0 as `0xFFFF` (see [`update16_udp`]).
#[inline]
pub fn update16(ck: u16, old: u16, new: u16) -> u16 {
    let s = (!ck) as u64 + (!old) as u64 + new as u64;
    !fold64(s)
}

/// [`update16`] for a 32-bit field (an IPv4 address, a TCP sequence
/// number), as two 16-bit words.
#[inline]
pub fn update32(ck: u16, old: u32, new: u32) -> u16 {
    let s = (!ck) as u64
        + (!(old >> 16) & 0xFFFF) as u64
        + (!old & 0xFFFF) as u64
        + (new >> 16) as u64
        + (new & 0xFFFF) as u64;
    !fold64(s)
}

/// [`update16`] for a 128-bit field (an IPv6 address), as eight 16-bit
/// words: the checksum of a TCP, UDP or ICMPv6 message after an address
/// of its pseudo header changed from `old` to `new`.
///
/// Over IPv6 a UDP checksum is mandatory (RFC 8200 §8.1): there is no "no
/// checksum" 0 to keep, so apply [`udp_on_wire`] to the result rather than
/// using the `_udp` variants.
#[inline]
pub fn update128(ck: u16, old: Ipv6Addr, new: Ipv6Addr) -> u16 {
    let (o, n) = (old.octets(), new.octets());
    let mut s = (!ck) as u64;
    for i in 0..8 {
        let ow = u16::from_be_bytes([o[2 * i], o[2 * i + 1]]);
        let nw = u16::from_be_bytes([n[2 * i], n[2 * i + 1]]);
        s += (!ow) as u64 + nw as u64;
    }
    !fold64(s)
}

/// A computed UDP-over-IPv4 checksum as it goes on the wire: 0 means "no
/// checksum" there (RFC 768), so a computed 0 is sent as `0xFFFF` (the
/// other ones' complement zero). Apply it once, after the last of several
/// chained [`update16`]/[`update32`] steps.
#[inline]
pub fn udp_on_wire(computed: u16) -> u16 {
    match computed {
        0 => 0xFFFF,
        c => c,
    }
}

/// [`update16`] with the UDP-over-IPv4 rules: a 0 checksum ("none") stays
/// 0, and a result of 0 is sent as `0xFFFF`.
#[inline]
pub fn update16_udp(ck: u16, old: u16, new: u16) -> u16 {
    if ck == 0 {
        return 0;
    }
    udp_on_wire(update16(ck, old, new))
}

/// [`update32`] with the UDP-over-IPv4 rules of [`update16_udp`].
#[inline]
pub fn update32_udp(ck: u16, old: u32, new: u32) -> u16 {
    if ck == 0 {
        return 0;
    }
    udp_on_wire(update32(ck, old, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-at-a-time reference implementation.
    fn naive(data: &[u8]) -> u32 {
        let mut s: u64 = 0;
        for (i, b) in data.iter().enumerate() {
            s += if i % 2 == 0 { (*b as u64) << 8 } else { *b as u64 };
        }
        while s > 0xFFFF {
            s = (s & 0xFFFF) + (s >> 16);
        }
        s as u32
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2 (after carry).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn known_ipv4_header() {
        // Wikipedia's IPv4 header checksum example: checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(fold(sum(&h)), 0xFFFF);
    }

    #[test]
    fn matches_naive_for_all_lengths_and_alignments() {
        let data: Vec<u8> = (0..600u32).map(|i| (i.wrapping_mul(167) ^ (i >> 3)) as u8).collect();
        for start in 0..4 {
            for len in 0..(data.len() - start) {
                let s = &data[start..start + len];
                assert_eq!(sum(s), naive(s), "start {start} len {len}");
            }
        }
        let ff = vec![0xFFu8; 4099];
        assert_eq!(sum(&ff), naive(&ff));
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn fold64_carries_every_bit() {
        assert_eq!(fold64(0), 0);
        assert_eq!(fold64(0xFFFF), 0xFFFF);
        assert_eq!(fold64(0x1_0000), 1);
        assert_eq!(fold64(0x1_FFFE), 0xFFFF);
        // 2^64 - 1 = 0xFFFF * (2^48 + 2^32 + 2^16 + 1): the ones'
        // complement "negative zero".
        assert_eq!(fold64(u64::MAX), 0xFFFF);
        // Agrees with folding 16 bits at a time, for scattered inputs.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..10_000 {
            x = x.rotate_left(17).wrapping_mul(0xff51_afd7_ed55_8ccd) ^ (x >> 7);
            let mut s = x;
            while s >> 16 != 0 {
                s = (s & 0xFFFF) + (s >> 16);
            }
            assert_eq!(fold64(x), s as u16, "{x:#x}");
        }
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 §4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285 gives 0x0000
        // by eqn 3 (eqn 2 would give the wrong 0xFFFF).
        assert_eq!(update16(0xDD2F, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn udp_update_rules() {
        assert_eq!(update16_udp(0, 1, 2), 0);
        assert_eq!(update16_udp(0xDD2F, 0x5555, 0x3285), 0xFFFF);
        assert_eq!(update32_udp(0, 1, 2), 0);
        assert_eq!(udp_on_wire(0), 0xFFFF);
        assert_eq!(udp_on_wire(0x1234), 0x1234);
        assert_eq!(udp_on_wire(0xFFFF), 0xFFFF);
    }

    #[test]
    fn pseudo_headers() {
        let v4 =
            pseudo_header_v4(Ipv4Addr::new(192, 168, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 17, 28);
        assert_eq!(v4, 0xc0a8 + 0x0001 + 0x0a00 + 0x0002 + 17 + 28);
        let a: Ipv6Addr = "fe80::1".parse().unwrap();
        let b: Ipv6Addr = "ff02::2".parse().unwrap();
        let v6 = pseudo_header_v6(a, b, 58, 16);
        assert_eq!(
            v6,
            naive(&[&a.octets()[..], &b.octets(), &[0, 0, 0, 16, 0, 0, 0, 58]].concat())
        );
    }

    proptest::proptest! {
        /// Rewriting an IPv6 address of the pseudo header with
        /// [`update128`] gives the checksum computed from scratch.
        #[test]
        fn update128_equals_full_recompute(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 8..64),
            a in proptest::prelude::any::<u128>(),
            b in proptest::prelude::any::<u128>(),
            c in proptest::prelude::any::<u128>(),
        ) {
            let (a, b, c) = (Ipv6Addr::from(a), Ipv6Addr::from(b), Ipv6Addr::from(c));
            let full = |src: Ipv6Addr| !fold(add(pseudo_header_v6(src, b, 17, payload.len()), sum(&payload)));
            let inc = update128(full(a), a, c);
            let after = full(c);
            proptest::prop_assert!(inc == after || (inc ^ after) == 0xffff && (inc == 0 || after == 0),
                "{inc:#x} vs {after:#x}");
        }
    }

    proptest::proptest! {
        /// The incremental updates agree with summing the whole block
        /// again (up to the two encodings of zero).
        #[test]
        fn incremental_checksum_equals_full_recompute(
            mut data in proptest::collection::vec(proptest::prelude::any::<u8>(), 8..64),
            at in 0usize..3,
            new in proptest::prelude::any::<u32>(),
        ) {
            let at = at * 2;
            let before = checksum(&data);
            let old = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            data[at..at + 4].copy_from_slice(&new.to_be_bytes());
            let after = checksum(&data);
            let inc = update32(before, old, new);
            // One's complement has two zeros; both encodings verify.
            proptest::prop_assert!(inc == after || (inc ^ after) == 0xffff && (inc == 0 || after == 0),
                "{inc:#x} vs {after:#x}");
            let old16 = u16::from_be_bytes([data[at], data[at + 1]]);
            let before = checksum(&data);
            data[at..at + 2].copy_from_slice(&(new as u16 ^ 0x5a5a).to_be_bytes());
            let inc = update16(before, old16, new as u16 ^ 0x5a5a);
            let after = checksum(&data);
            proptest::prop_assert!(inc == after || (inc ^ after) == 0xffff && (inc == 0 || after == 0));
        }
    }
}
