//! Proptest strategies for frames (cargo feature `proptest`).
//!
//! * [`frame_spec`]: any [`FrameSpec`] (UDP/TCP/ICMP echo, optional VLAN,
//!   IPv4 options, payload up to 256 bytes); [`valid_frame`] builds it.
//! * [`mutated_frame`]: a valid frame, truncated and/or with random bytes
//!   overwritten, to reach deep into parsers with almost-valid input.
//! * [`garbage_frame`]: random bytes, sometimes behind a plausible Ethernet
//!   + IPv4 prefix.
//! * [`any_frame`]: one of the three.
//! * [`frame6_spec`], [`valid_frame6`], [`mutated_frame6`], [`any_frame6`]:
//!   the same for IPv6, with chains of extension headers (hop-by-hop,
//!   routing, destination options, AH, fragment) and random next headers.
//!
//! Use from another crate's tests with
//! `braid-packet = { workspace = true, features = ["proptest"] }` in
//! `[dev-dependencies]`.

use crate::wire::build::{Ext6Spec, Frame6Spec, FrameSpec, L4Spec};
use crate::wire::MacAddr;
use proptest::collection::vec;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

pub fn mac_addr() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

pub fn ipv4_addr() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

pub fn l4_spec() -> impl Strategy<Value = L4Spec> {
    prop_oneof![
        (any::<u16>(), any::<u16>())
            .prop_map(|(src_port, dst_port)| L4Spec::Udp { src_port, dst_port }),
        (any::<u16>(), any::<u16>(), any::<u8>(), any::<u32>(), any::<u32>(), any::<u16>())
            .prop_map(|(src_port, dst_port, flags, seq, ack, window)| L4Spec::Tcp {
                src_port,
                dst_port,
                flags,
                seq,
                ack,
                window
            }),
        (any::<u16>(), any::<u16>(), any::<bool>())
            .prop_map(|(ident, seq_no, reply)| L4Spec::IcmpEcho { ident, seq_no, reply }),
    ]
}

/// Any valid frame description (payload up to `max_payload` bytes).
pub fn frame_spec_with(max_payload: usize) -> impl Strategy<Value = FrameSpec> {
    (
        (mac_addr(), mac_addr(), proptest::option::of(0u16..4096)),
        (ipv4_addr(), ipv4_addr(), any::<u8>(), any::<u8>(), any::<u16>(), any::<bool>()),
        vec(any::<u8>(), 0..=40),
        l4_spec(),
        vec(any::<u8>(), 0..=max_payload),
    )
        .prop_map(
            |(
                (src_mac, dst_mac, vlan),
                (src_ip, dst_ip, ttl, tos, ip_ident, dont_frag),
                ip_options,
                l4,
                payload,
            )| {
                FrameSpec {
                    src_mac,
                    dst_mac,
                    vlan,
                    src_ip,
                    dst_ip,
                    ttl,
                    tos,
                    ip_ident,
                    dont_frag,
                    ip_options,
                    l4,
                    payload,
                }
            },
        )
}

/// Any valid frame description with up to 256 bytes of payload.
pub fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    frame_spec_with(256)
}

/// The bytes of a valid frame.
pub fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    frame_spec().prop_map(|s| s.build())
}

/// A valid frame with up to 8 random bytes overwritten and, half of the
/// time, cut at a random length.
pub fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        valid_frame(),
        vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut f, edits, cut, at)| {
            for (i, b) in edits {
                let i = i.index(f.len());
                f[i] = b;
            }
            if cut {
                let n = at.index(f.len() + 1);
                f.truncate(n);
            }
            f
        })
}

/// Random bytes (up to 128), most of the time behind a prefix that gets
/// parsers past their first checks: an Ethernet header with ethertype
/// IPv4 and a version/IHL byte; IPv6 with a 40-byte header whose payload
/// length fits (next header TCP, UDP, ICMPv6 or random); ARP; or one or two
/// VLAN tags.
pub fn garbage_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(any::<u8>(), 0..128),
        0u8..6,
        0u8..16,
        prop::sample::select(vec![6u8, 17, 58, 0, 255]),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(bytes, prefix, ihl, next_header, plen)| {
            let eth = |ethertype: u16| {
                let mut f = vec![0u8; 12];
                f.extend_from_slice(&ethertype.to_be_bytes());
                f
            };
            let mut f = match prefix {
                0 => return bytes,
                1 => {
                    let mut f = eth(crate::wire::ethertype::IPV4);
                    f.push(0x40 | ihl);
                    f
                }
                2 => {
                    let mut f = eth(crate::wire::ethertype::IPV6);
                    let mut h = [0u8; 40];
                    h[0] = 0x60;
                    let payload_len = plen.index(bytes.len() + 1) as u16;
                    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
                    h[6] = next_header;
                    f.extend_from_slice(&h);
                    f
                }
                3 => eth(crate::wire::ethertype::ARP),
                4 => {
                    let mut f = eth(crate::wire::ethertype::VLAN);
                    f.extend_from_slice(&[0, 1]);
                    f
                }
                _ => {
                    let mut f = eth(crate::wire::ethertype::QINQ);
                    f.extend_from_slice(&[0, 1, 0x81, 0x00, 0, 2]);
                    f
                }
            };
            f.extend_from_slice(&bytes);
            f
        })
}

/// A valid, mutated or garbage frame.
pub fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![valid_frame(), mutated_frame(), garbage_frame()]
}

pub fn ipv6_addr() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

/// One IPv6 extension header (a fragment header a third of the time, half
/// of those first fragments).
pub fn ext6_spec() -> impl Strategy<Value = Ext6Spec> {
    prop_oneof![
        2 => (prop::sample::select(vec![0u8, 43, 60]), 1usize..6)
            .prop_map(|(kind, units)| Ext6Spec::Plain { kind, len: units * 8 }),
        1 => (3usize..8).prop_map(|words| Ext6Spec::Plain { kind: 51, len: words * 4 }),
        2 => (prop_oneof![Just(0u16), (1u16..8191).prop_map(|o| o * 8)], any::<bool>(), any::<u32>())
            .prop_map(|(offset, more, ident)| Ext6Spec::Fragment { offset, more, ident }),
    ]
}

/// Any valid IPv6 frame description: up to `max_ext` extension headers
/// (hop-by-hop only first, as RFC 8200 wants), payload up to `max_payload`.
pub fn frame6_spec_with(max_ext: usize, max_payload: usize) -> impl Strategy<Value = Frame6Spec> {
    (
        (mac_addr(), mac_addr(), proptest::option::of(0u16..4096)),
        (ipv6_addr(), ipv6_addr(), any::<u8>()),
        vec(ext6_spec(), 0..=max_ext),
        l4_spec(),
        vec(any::<u8>(), 0..=max_payload),
    )
        .prop_map(
            |((src_mac, dst_mac, vlan), (src_ip, dst_ip, hop_limit), mut ext, l4, payload)| {
                // Hop-by-hop may only come first: make later ones destination options.
                for e in ext.iter_mut().skip(1) {
                    if let Ext6Spec::Plain { kind: 0, len } = *e {
                        *e = Ext6Spec::Plain { kind: 60, len };
                    }
                }
                Frame6Spec { src_mac, dst_mac, vlan, src_ip, dst_ip, hop_limit, ext, l4, payload }
            },
        )
}

/// Any valid IPv6 frame description with up to 4 extension headers and
/// 256 bytes of payload.
pub fn frame6_spec() -> impl Strategy<Value = Frame6Spec> {
    frame6_spec_with(4, 256)
}

/// The bytes of a valid IPv6 frame.
pub fn valid_frame6() -> impl Strategy<Value = Vec<u8>> {
    frame6_spec().prop_map(|s| s.build())
}

/// A valid IPv6 frame with up to 8 random bytes overwritten (a third of
/// them in the fixed and extension headers) and, half of the time, cut.
pub fn mutated_frame6() -> impl Strategy<Value = Vec<u8>> {
    (
        valid_frame6(),
        vec((any::<prop::sample::Index>(), any::<u8>(), any::<bool>()), 0..8),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut f, edits, cut, at)| {
            for (i, b, head) in edits {
                let n = if head { f.len().min(120) } else { f.len() };
                let i = i.index(n);
                f[i] = b;
            }
            if cut {
                let n = at.index(f.len() + 1);
                f.truncate(n);
            }
            f
        })
}

/// A valid or mutated IPv6 frame, or garbage (which is IPv6 a sixth of
/// the time).
pub fn any_frame6() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![valid_frame6(), mutated_frame6(), garbage_frame()]
}
