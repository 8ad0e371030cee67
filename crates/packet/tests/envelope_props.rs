//! Properties of the packet envelope (`braid_packet::envelope`): it never
//! panics, its offsets stay within the frame, its class agrees with the
//! wire views' `new_checked`, and headers written with `Repr::emit` parse
//! back to what was written.

use braid_packet::envelope::{self, Class, L3Kind, Layer, Unsupported, L4};
use braid_packet::strategy::{any_frame, frame_spec, ipv4_addr, mac_addr};
use braid_packet::wire::build::L4Spec;
use braid_packet::wire::*;
use proptest::prelude::*;

/// What the wire views say about `frame`, layer by layer, as an envelope
/// class (the reference the envelope must agree with).
fn class_by_views(frame: &[u8]) -> Class {
    let info = match l3(frame) {
        Ok(i) => i,
        Err(WireError::Unsupported) => {
            return Class::Unsupported { what: Unsupported::VlanDepth };
        }
        Err(_) => return Class::Truncated { layer: Layer::L2 },
    };
    match info.ethertype {
        ethertype::IPV4 => {}
        ethertype::ARP => return Class::Unsupported { what: Unsupported::Arp },
        ethertype::IPV6 => return Class::Unsupported { what: Unsupported::Ipv6 },
        t => return Class::Unsupported { what: Unsupported::EtherType(t) },
    }
    let ip = match Ipv4Packet::new_checked(&frame[info.offset..]) {
        Ok(ip) => ip,
        Err(WireError::Truncated) => return Class::Truncated { layer: Layer::L3 },
        // The kind of malformation is compared separately.
        Err(_) => {
            return Class::Malformed { layer: Layer::L3, why: envelope::Malformation::Ipv4Version }
        }
    };
    if ip.frag_offset() != 0 {
        return Class::Fragment { first: false, offset: ip.frag_offset() };
    }
    let l4 = ip.payload();
    let r = match ip.protocol() {
        ip_proto::TCP => TcpPacket::new_checked(l4).map(|_| ()),
        ip_proto::UDP if ip.more_frags() => {
            if l4.len() < 8 {
                Err(WireError::Truncated)
            } else {
                Ok(())
            }
        }
        ip_proto::UDP => UdpPacket::new_checked(l4).map(|_| ()),
        ip_proto::ICMP => Icmpv4Packet::new_checked(l4).map(|_| ()),
        _ => Ok(()),
    };
    match r {
        Ok(()) if ip.more_frags() => Class::Fragment { first: true, offset: 0 },
        Ok(()) => Class::Ok,
        Err(WireError::Truncated) => Class::Truncated { layer: Layer::L4 },
        Err(_) => Class::Malformed { layer: Layer::L4, why: envelope::Malformation::UdpLength },
    }
}

/// `class` with the malformation detail erased (compared on layer only).
fn coarse(class: Class) -> Class {
    match class {
        Class::Malformed { layer: Layer::L3, .. } => {
            Class::Malformed { layer: Layer::L3, why: envelope::Malformation::Ipv4Version }
        }
        Class::Malformed { layer, .. } => {
            Class::Malformed { layer, why: envelope::Malformation::UdpLength }
        }
        c => c,
    }
}

fn check(frame: &[u8]) -> Result<(), TestCaseError> {
    let p = envelope::parse(frame);
    prop_assert!(p.l3_offset <= frame.len());
    prop_assert_eq!(coarse(p.class), class_by_views(frame), "frame {:02x?}", frame);
    if let Some(ip) = p.ipv4() {
        prop_assert_eq!(p.l3, L3Kind::Ipv4);
        prop_assert_eq!(ip.l3, p.l3_offset);
        prop_assert!(ip.ihl >= 20 && ip.l4_offset() <= ip.end() && ip.end() <= frame.len());
        let view = Ipv4Packet::new_checked(&frame[ip.l3..]).unwrap();
        prop_assert_eq!((ip.ihl, ip.total_len), (view.header_len(), view.total_len() as usize));
        prop_assert_eq!((ip.src, ip.dst), (u32::from(view.src_addr()), u32::from(view.dst_addr())));
        prop_assert_eq!((ip.proto, ip.ttl), (view.protocol(), view.ttl()));
        if let Some((at, end)) = ip.udp_span() {
            prop_assert!(at + 8 <= ip.end());
            if p.class == Class::Ok {
                prop_assert!(end <= ip.end());
                let u = UdpPacket::new_checked(&frame[at..ip.end()]).unwrap();
                prop_assert_eq!(end - at, u.len() as usize);
            }
        }
        if let L4::Tcp { src_port, dst_port, flags } = ip.l4 {
            let t = TcpPacket::new_checked(view.payload()).unwrap();
            prop_assert_eq!((src_port, dst_port, flags), (t.src_port(), t.dst_port(), t.flags()));
        }
    } else if !matches!(
        p.class,
        Class::Truncated { layer: Layer::L4 } | Class::Malformed { layer: Layer::L4, .. }
    ) {
        // Nothing of IPv4 is reported for a frame that is not (valid) IPv4.
        prop_assert_eq!(p.ip, envelope::Ipv4Headers::EMPTY);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Arbitrary bytes, mutated valid frames, garbage behind valid headers:
    /// no panic, offsets in bounds, the same verdict as the wire views.
    #[test]
    fn agrees_with_the_views_on_any_frame(frame in any_frame()) {
        check(&frame)?;
    }

    #[test]
    fn agrees_with_the_views_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        check(&bytes)?;
    }

    /// Every truncation of a valid frame is `Truncated` at some layer.
    #[test]
    fn truncations_are_truncated(spec in frame_spec(), cut in any::<prop::sample::Index>()) {
        let f = spec.build();
        let n = cut.index(f.len());
        check(&f[..n])?;
        let truncated = matches!(envelope::parse(&f[..n]).class, Class::Truncated { .. });
        prop_assert!(truncated);
    }

    /// Headers written with `Repr::emit` parse back to what was written.
    #[test]
    fn round_trip_with_repr_emit(
        src_addr in mac_addr(), dst_addr in mac_addr(), vid in proptest::option::of(0u16..4096),
        src in ipv4_addr(), dst in ipv4_addr(), ttl in any::<u8>(), l4 in l4_repr(), payload_len in 0usize..64,
    ) {
        let vlan_len = if vid.is_some() { vlan::HEADER_LEN } else { 0 };
        let (proto, l4_len) = match l4 {
            L4Spec::Udp { .. } => (ip_proto::UDP, udp::HEADER_LEN),
            L4Spec::Tcp { .. } => (ip_proto::TCP, tcp::HEADER_LEN),
            L4Spec::IcmpEcho { .. } => (ip_proto::ICMP, icmpv4::HEADER_LEN),
        };
        let l3 = ethernet::HEADER_LEN + vlan_len;
        let mut f = vec![0u8; l3 + ipv4::HEADER_LEN + l4_len + payload_len];
        let outer = if vid.is_some() { ethertype::VLAN } else { ethertype::IPV4 };
        EthernetRepr { src_addr, dst_addr, ethertype: outer }
            .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
        if let Some(vid) = vid {
            VlanRepr { vid, pcp: 0, dei: false, inner_ethertype: ethertype::IPV4 }
                .emit(&mut VlanTag::new_unchecked(&mut f[14..]));
        }
        let ipr = Ipv4Repr { src_addr: src, dst_addr: dst, protocol: proto, payload_len: l4_len + payload_len, ttl };
        ipr.emit(&mut Ipv4Packet::new_unchecked(&mut f[l3..]));
        let at = l3 + ipv4::HEADER_LEN;
        let expect = match l4 {
            L4Spec::Udp { src_port, dst_port } => {
                UdpRepr { src_port, dst_port, payload_len }.emit(&mut UdpPacket::new_unchecked(&mut f[at..]));
                L4::Udp { src_port, dst_port, len: (8 + payload_len) as u16 }
            }
            L4Spec::Tcp { src_port, dst_port, flags, seq, ack, window } => {
                TcpRepr { src_port, dst_port, seq_number: seq, ack_number: ack, flags, window_len: window }
                    .emit(&mut TcpPacket::new_unchecked(&mut f[at..]));
                L4::Tcp { src_port, dst_port, flags }
            }
            L4Spec::IcmpEcho { ident, seq_no, reply } => {
                let r = if reply { Icmpv4Repr::EchoReply { ident, seq_no } } else { Icmpv4Repr::EchoRequest { ident, seq_no } };
                r.emit(&mut Icmpv4Packet::new_unchecked(&mut f[at..]));
                L4::IcmpEcho { msg_type: if reply { 0 } else { 8 }, ident }
            }
        };
        let p = envelope::parse(&f);
        prop_assert_eq!(p.class, Class::Ok);
        prop_assert_eq!((p.vlan, p.l3_offset, p.ethertype), (vid, l3, ethertype::IPV4));
        prop_assert_eq!((p.ip.src, p.ip.dst), (u32::from(src), u32::from(dst)));
        prop_assert_eq!((p.ip.proto, p.ip.ttl, p.ip.l4_offset(), p.ip.end()), (proto, ttl, at, f.len()));
        prop_assert_eq!(p.ip.l4, expect);
        check(&f)?;
    }
}

fn l4_repr() -> impl Strategy<Value = L4Spec> {
    braid_packet::strategy::l4_spec()
}
