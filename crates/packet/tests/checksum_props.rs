//! Checksum properties: the fast sum equals a byte-wise reference, and
//! RFC 1624 incremental updates equal full recomputation.

use braid_packet::strategy::{frame_spec, ipv4_addr};
use braid_packet::wire::build::L4Spec;
use braid_packet::wire::checksum::{self, update16, update16_udp, update32, update32_udp};
use braid_packet::wire::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn naive_sum(data: &[u8]) -> u32 {
    let mut s: u64 = 0;
    for (i, b) in data.iter().enumerate() {
        s += if i % 2 == 0 { (*b as u64) << 8 } else { *b as u64 };
    }
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s as u32
}

/// Full recomputation of a checksum stored at `at` in `data`.
fn full(data: &mut [u8], at: usize) -> u16 {
    data[at] = 0;
    data[at + 1] = 0;
    checksum::checksum(data)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn sum_matches_bytewise(data in vec(any::<u8>(), 0..2000), start in 0usize..8) {
        let s = &data[start.min(data.len())..];
        prop_assert_eq!(checksum::sum(s), naive_sum(s));
        prop_assert!(checksum::sum(s) <= 0xFFFF);
    }

    #[test]
    fn sum_of_concatenation_at_even_split(a in vec(any::<u8>(), 0..200), b in vec(any::<u8>(), 0..200)) {
        // Partial sums add: sum(a ++ b) == sum(a) + sum(b) when a is even.
        let mut a = a;
        if a.len() % 2 == 1 { a.pop(); }
        let whole = [&a[..], &b[..]].concat();
        prop_assert_eq!(checksum::fold(checksum::sum(&a) + checksum::sum(&b)), checksum::fold(checksum::sum(&whole)));
    }

    /// Any 16-bit word of a block covered by a checksum changes; the
    /// incremental update equals the recomputation. Blocks are kept
    /// non-zero outside the word (like any real header), see
    /// `checksum::update16`.
    #[test]
    fn update16_equals_full(mut data in vec(any::<u8>(), 4..100), word in any::<prop::sample::Index>(),
                            new in any::<u16>(), nz in any::<prop::sample::Index>()) {
        let len = data.len() & !1;
        data.truncate(len);
        let words = len / 2;
        // Checksum in word 0, changed word elsewhere.
        let w = 1 + word.index(words - 1);
        let keep = nz.index(len);
        if keep / 2 != w && keep / 2 != 0 && data[keep] == 0 { data[keep] = 1; }
        let before = full(&mut data, 0);
        let others_zero = data.iter().enumerate().all(|(i, b)| i / 2 == w || *b == 0);
        data[0..2].copy_from_slice(&before.to_be_bytes());
        let old = u16::from_be_bytes([data[2 * w], data[2 * w + 1]]);
        data[2 * w..2 * w + 2].copy_from_slice(&new.to_be_bytes());
        let inc = update16(before, old, new);
        let recomputed = full(&mut data, 0);
        if !others_zero {
            prop_assert_eq!(inc, recomputed);
        }
        // Either way the updated packet verifies.
        data[0..2].copy_from_slice(&inc.to_be_bytes());
        prop_assert_eq!(checksum::fold(checksum::sum(&data)), 0xFFFF);
    }

    /// Rewriting addresses, TTL and ports of real frames (what NAT and
    /// routers do) with RFC 1624 updates gives the same IPv4 and L4
    /// checksums as recomputing them.
    #[test]
    fn nat_rewrite_incremental_equals_full(spec in frame_spec(), new_src in ipv4_addr(), new_port in any::<u16>(), dec_ttl in any::<bool>()) {
        let mut f = spec.build();
        let ip = braid_packet::envelope::parse(&f).ip;
        let (l3, l4) = (ip.l3, ip.l4_offset());
        let old_src = u32::from(spec.src_ip);
        let new_src_u = u32::from(new_src);

        // IPv4 header: source address (32-bit) and TTL (16-bit word).
        {
            let mut ip = Ipv4Packet::new_checked(&mut f[l3..]).unwrap();
            ip.set_src_addr(new_src);
            let ck = update32(ip.checksum(), old_src, new_src_u);
            ip.set_checksum(ck);
            if dec_ttl { ip.decrement_ttl(); }
            let inc = ip.checksum();
            ip.fill_checksum();
            prop_assert_eq!(inc, ip.checksum());
        }
        // Layer 4: pseudo-header address change plus a port change.
        let dst = spec.dst_ip;
        match spec.l4 {
            L4Spec::Udp { src_port, .. } => {
                let end = f.len();
                let mut u = UdpPacket::new_checked(&mut f[l4..end]).unwrap();
                let mut ck = update32_udp(u.checksum(), old_src, new_src_u);
                ck = update16_udp(ck, src_port, new_port);
                u.set_src_port(new_port);
                u.set_checksum(ck);
                prop_assert!(u.verify_checksum_v4(new_src, dst));
                u.fill_checksum_v4(new_src, dst);
                prop_assert_eq!(ck, u.checksum());
            }
            L4Spec::Tcp { src_port, .. } => {
                let mut t = TcpPacket::new_checked(&mut f[l4..]).unwrap();
                let mut ck = update32(t.checksum(), old_src, new_src_u);
                ck = update16(ck, src_port, new_port);
                t.set_src_port(new_port);
                t.set_checksum(ck);
                prop_assert!(t.verify_checksum_v4(new_src, dst));
                t.fill_checksum_v4(new_src, dst);
                prop_assert_eq!(ck, t.checksum());
            }
            L4Spec::IcmpEcho { ident, .. } => {
                // ICMP has no pseudo header: only the identifier changes.
                let mut i = Icmpv4Packet::new_checked(&mut f[l4..]).unwrap();
                let ck = update16(i.checksum(), ident, new_port);
                i.set_echo_ident(new_port);
                i.set_checksum(ck);
                prop_assert!(i.verify_checksum());
                i.fill_checksum();
                prop_assert_eq!(ck, i.checksum());
            }
        }
    }

    /// 32-bit update equals two 16-bit updates and a full recomputation.
    #[test]
    fn update32_equals_full(mut data in vec(any::<u8>(), 8..64), new in any::<u32>()) {
        data[7] |= 1; // never an all-zero block
        let len = data.len() & !1;
        data.truncate(len);
        let before = full(&mut data, 0);
        data[0..2].copy_from_slice(&before.to_be_bytes());
        let old = u32::from_be_bytes([data[2], data[3], data[4], data[5]]);
        data[2..6].copy_from_slice(&new.to_be_bytes());
        let inc = update32(before, old, new);
        let two = update16(update16(before, (old >> 16) as u16, (new >> 16) as u16), old as u16, new as u16);
        prop_assert_eq!(inc, two);
        prop_assert_eq!(inc, full(&mut data, 0));
    }
}

#[test]
fn update_corner_cases() {
    // RFC 1624 §4: eqn 3 gives 0x0000 where the older eqn 2 gave 0xFFFF.
    let mut block = [0xDDu8, 0x2F, 0x55, 0x55, 0xCD, 0x7A];
    assert_eq!(checksum::fold(checksum::sum(&block)), 0xFFFF, "test vector verifies");
    let inc = update16(0xDD2F, 0x5555, 0x3285);
    block[2..4].copy_from_slice(&0x3285u16.to_be_bytes());
    assert_eq!(inc, full(&mut block, 0));
    assert_eq!(inc, 0x0000);

    // A checksum of 0 (data sums to -0) updated with an unchanged word
    // stays 0.
    assert_eq!(update16(0x0000, 0x1234, 0x1234), 0x0000);
    assert_eq!(update16(0x0000, 0xFFFF, 0xFFFF), 0x0000);

    // The one case where eqn 3 and recomputation differ: the block
    // becomes all zero. Recomputation gives 0xFFFF (+0 complemented),
    // eqn 3 gives 0x0000 (-0 complemented): the same number in ones'
    // complement, but a receiver summing the block would see 0, not
    // 0xFFFF. No real IPv4/TCP/UDP block (with pseudo header) is all
    // zero; `checksum::update16` documents this.
    let mut block = [0u8, 0, 0x12, 0x34];
    let ck = full(&mut block, 0);
    assert_eq!(ck, !0x1234);
    block[2..4].copy_from_slice(&[0, 0]);
    assert_eq!(full(&mut block, 0), 0xFFFF);
    assert_eq!(update16(ck, 0x1234, 0), 0x0000);
}
