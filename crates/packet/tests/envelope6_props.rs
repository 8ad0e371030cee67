//! Properties of the IPv6 part of the packet envelope
//! (`braid_packet::envelope::parse_dual`): it never panics, its offsets
//! stay within the frame, its class agrees with the wire views (fixed
//! header, extension headers one by one, transport header), IPv4 frames
//! parse exactly as with `parse`, and frames written with `Repr::emit`
//! (`Frame6Spec`) parse back to what was written.

use braid_packet::envelope::{self, Class, L3Kind, Layer, Malformation, Unsupported, L4};
use braid_packet::strategy::{any_frame, any_frame6, frame6_spec};
use braid_packet::wire::build::{Ext6Spec, L4Spec};
use braid_packet::wire::ipv6ext::{self, Ipv6ExtHeader, Ipv6FragHeader};
use braid_packet::wire::*;
use proptest::prelude::*;

/// The class of an IPv6 frame by the wire views, header by header.
fn class_by_views(frame: &[u8]) -> Option<Class> {
    let info = l3(frame).ok()?;
    if info.ethertype != ethertype::IPV6 {
        return None;
    }
    let ip = match Ipv6Packet::new_checked(&frame[info.offset..]) {
        Ok(ip) => ip,
        Err(WireError::Truncated) => return Some(Class::Truncated { layer: Layer::L3 }),
        Err(_) => {
            return Some(Class::Malformed { layer: Layer::L3, why: Malformation::Ipv6Version })
        }
    };
    let payload = ip.payload();
    let (mut nh, mut at, mut count) = (ip.next_header(), 0usize, 0usize);
    let mut first_frag = false;
    while ipv6ext::is_extension(nh) {
        if count == ipv6ext::MAX_EXT_HEADERS {
            return Some(Class::Unsupported { what: Unsupported::Ipv6ExtChain });
        }
        if nh == 0 && count > 0 {
            return Some(Class::Malformed { layer: Layer::L3, why: Malformation::Ipv6HopByHop });
        }
        if payload.len() < at + 8 {
            return Some(Class::Truncated { layer: Layer::L3 });
        }
        let h = Ipv6ExtHeader::new_unchecked(&payload[at..], nh);
        if at + h.header_len() > ipv6ext::MAX_EXT_BYTES {
            return Some(Class::Unsupported { what: Unsupported::Ipv6ExtChain });
        }
        if Ipv6ExtHeader::new_checked(&payload[at..], nh).is_err() {
            return Some(Class::Truncated { layer: Layer::L3 });
        }
        if nh == ip_proto::IPV6_FRAG {
            let f = Ipv6FragHeader::new_checked(&payload[at..]).unwrap();
            if f.frag_offset() != 0 {
                return Some(Class::Fragment { first: false, offset: f.frag_offset() });
            }
            first_frag |= f.more_frags();
        }
        nh = h.next_header();
        at += h.header_len();
        count += 1;
    }
    let t = &payload[at..];
    let r = match nh {
        ip_proto::TCP => TcpPacket::new_checked(t).map(|_| ()),
        ip_proto::UDP if first_frag => {
            if t.len() < 8 {
                Err(WireError::Truncated)
            } else {
                Ok(())
            }
        }
        ip_proto::UDP => UdpPacket::new_checked(t).map(|_| ()),
        ip_proto::ICMPV6 => Icmpv6Packet::new_checked(t).map(|_| ()),
        _ => Ok(()),
    };
    Some(match r {
        Ok(()) if first_frag => Class::Fragment { first: true, offset: 0 },
        Ok(()) => Class::Ok,
        Err(WireError::Truncated) => Class::Truncated { layer: Layer::L4 },
        Err(_) => Class::Malformed { layer: Layer::L4, why: Malformation::UdpLength },
    })
}

fn coarse(class: Class) -> Class {
    match class {
        Class::Malformed { layer: Layer::L4, .. } => {
            Class::Malformed { layer: Layer::L4, why: Malformation::UdpLength }
        }
        c => c,
    }
}

fn check(frame: &[u8]) -> Result<(), TestCaseError> {
    let p = envelope::parse_dual(frame);
    prop_assert!(p.l3_offset <= frame.len());
    if p.l3 != L3Kind::Ipv6 {
        // Not IPv6: exactly what `parse` says.
        prop_assert_eq!(p, envelope::parse(frame));
        return Ok(());
    }
    prop_assert_eq!(envelope::parse(frame).class, Class::Unsupported { what: Unsupported::Ipv6 });
    prop_assert_eq!(Some(coarse(p.class)), class_by_views(frame), "frame {:02x?}", frame);
    prop_assert_eq!(p.flow(), None);
    if let Some(ip) = p.ipv6() {
        prop_assert_eq!(ip.l3, p.l3_offset);
        prop_assert!(ip.l4_offset() <= ip.end() && ip.end() <= frame.len());
        let view = Ipv6Packet::new_checked(&frame[ip.l3..]).unwrap();
        prop_assert_eq!((ip.src_addr(), ip.dst_addr()), (view.src_addr(), view.dst_addr()));
        prop_assert_eq!((ip.hop_limit, ip.next_header), (view.hop_limit(), view.next_header()));
        prop_assert_eq!(ip.payload_len, view.payload_len() as usize);
        match ip.l4 {
            L4::Tcp { src_port, dst_port, flags } => {
                let t = TcpPacket::new_checked(&frame[ip.l4_offset()..ip.end()]).unwrap();
                prop_assert_eq!(
                    (src_port, dst_port, flags),
                    (t.src_port(), t.dst_port(), t.flags())
                );
            }
            L4::Udp { len, .. } => {
                let (at, end) = ip.udp_span().unwrap();
                prop_assert!(at + 8 <= ip.end());
                if p.class == Class::Ok {
                    prop_assert!(end <= ip.end());
                    prop_assert_eq!(end - at, len as usize);
                }
            }
            L4::IcmpEcho { msg_type, .. } => prop_assert!(msg_type == 128 || msg_type == 129),
            L4::Fragment => {
                let later = matches!(p.class, Class::Fragment { first: false, .. });
                prop_assert!(later);
            }
            _ => {}
        }
    } else if !matches!(
        p.class,
        Class::Truncated { layer: Layer::L4 } | Class::Malformed { layer: Layer::L4, .. }
    ) {
        prop_assert_eq!(p.ip6, envelope::Ipv6Headers::EMPTY);
    }
    prop_assert_eq!(p.ip, envelope::Ipv4Headers::EMPTY);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Valid, mutated and garbage IPv6 frames: no panic, offsets in
    /// bounds, the verdict of the views.
    #[test]
    fn agrees_with_the_views_on_any_ipv6_frame(frame in any_frame6()) {
        check(&frame)?;
    }

    /// Random bytes behind an IPv6 ethertype.
    #[test]
    fn random_bytes_after_an_ipv6_ethertype(bytes in proptest::collection::vec(any::<u8>(), 0..200), v6 in any::<bool>()) {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype::IPV6.to_be_bytes());
        if v6 {
            f.push(0x60);
        }
        f.extend_from_slice(&bytes);
        check(&f)?;
    }

    /// IPv4 (and everything else `any_frame` makes) parses as with `parse`.
    #[test]
    fn ipv4_frames_parse_as_before(frame in any_frame()) {
        check(&frame)?;
    }

    /// Every truncation of a valid IPv6 frame is `Truncated`.
    #[test]
    fn truncations_are_truncated(spec in frame6_spec(), cut in any::<prop::sample::Index>()) {
        let f = spec.build();
        let n = cut.index(f.len());
        check(&f[..n])?;
        let class = envelope::parse_dual(&f[..n]).class;
        let in_chain_limit = spec.ext.len() <= ipv6ext::MAX_EXT_HEADERS;
        prop_assert!(!in_chain_limit || matches!(class, Class::Truncated { .. }), "{:?}", class);
    }

    /// Frames written by `Repr::emit` parse back to what was written.
    #[test]
    fn round_trip_with_repr_emit(spec in frame6_spec()) {
        let f = spec.build();
        check(&f)?;
        let p = envelope::parse_dual(&f);
        let l3 = if spec.vlan.is_some() { 18 } else { 14 };
        prop_assert_eq!((p.vlan, p.l3_offset, p.l3, p.ethertype), (spec.vlan, l3, L3Kind::Ipv6, ethertype::IPV6));
        let ip = p.ipv6().expect("IPv6 headers");
        prop_assert_eq!((ip.src_addr(), ip.dst_addr(), ip.hop_limit), (spec.src_ip, spec.dst_ip, spec.hop_limit));
        prop_assert_eq!(ip.end(), f.len());
        // Where the walk stops: at the first non-first fragment, or at the end.
        let later = spec.ext.iter().position(|e| matches!(e, Ext6Spec::Fragment { offset, .. } if *offset != 0));
        let walked = later.map_or(spec.ext.len(), |i| i + 1);
        let ext_len: usize = spec.ext[..walked].iter().map(|e| match e {
            Ext6Spec::Plain { len, .. } => *len,
            Ext6Spec::Fragment { .. } => 8,
        }).sum();
        prop_assert_eq!(ip.ext_len, ext_len);
        let frags = spec.ext[..walked].iter().filter_map(|e| match e {
            Ext6Spec::Fragment { offset, more, ident } => Some((*offset, *more, *ident)),
            _ => None,
        });
        let first_more = if later.is_some() { frags.clone().next_back() } else { frags.clone().next() };
        prop_assert_eq!(ip.frag_ident, first_more.map(|f| f.2));
        match (later, first_more) {
            (Some(_), Some((offset, _, _))) => {
                prop_assert_eq!(p.class, Class::Fragment { first: false, offset });
                prop_assert_eq!(ip.l4, L4::Fragment);
            }
            _ => {
                let frag_first = frags.clone().any(|f| f.1);
                let expect_class = if frag_first { Class::Fragment { first: true, offset: 0 } } else { Class::Ok };
                prop_assert_eq!(p.class, expect_class);
                prop_assert_eq!(ip.proto, spec.protocol());
                let expect = match spec.l4 {
                    L4Spec::Udp { src_port, dst_port } => L4::Udp { src_port, dst_port, len: (8 + spec.payload.len()) as u16 },
                    L4Spec::Tcp { src_port, dst_port, flags, .. } => L4::Tcp { src_port, dst_port, flags },
                    L4Spec::IcmpEcho { ident, reply, .. } => L4::IcmpEcho { msg_type: if reply { 129 } else { 128 }, ident },
                };
                prop_assert_eq!(ip.l4, expect);
                let t = p.flow6().unwrap();
                prop_assert_eq!((t.src, t.dst, t.proto), (spec.src_ip, spec.dst_ip, spec.protocol()));
            }
        }
    }
}

#[test]
fn documented_ipv6_classes() {
    use braid_packet::wire::build::Frame6Spec;
    let (a, b): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
        ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap());
    // ESP ends the walk: Ok, protocol 50, nothing after it parsed.
    let mut s = Frame6Spec::udp((a, 1), (b, 2), 0);
    s.ext = vec![Ext6Spec::Plain { kind: 0, len: 8 }];
    let mut f = s.build();
    f[54] = ip_proto::ESP;
    let p = envelope::parse_dual(&f);
    assert_eq!((p.class, p.ip6.proto, p.ip6.l4, p.ip6.ext_len), (Class::Ok, 50, L4::Other, 8));
    // No Next Header.
    f[54] = ip_proto::IPV6_NONXT;
    assert_eq!(envelope::parse_dual(&f).ip6.proto, 59);
    // Atomic fragment: Ok, identification kept.
    s.ext = vec![Ext6Spec::Fragment { offset: 0, more: false, ident: 77 }];
    let p = envelope::parse_dual(&s.build());
    assert_eq!((p.class, p.ip6.frag_ident), (Class::Ok, Some(77)));
    // Nine headers: too many.
    s.ext = vec![Ext6Spec::Plain { kind: 60, len: 8 }; 9];
    let p = envelope::parse_dual(&s.build());
    assert_eq!(p.class, Class::Unsupported { what: Unsupported::Ipv6ExtChain });
    // Hop-by-hop second.
    s.ext = vec![Ext6Spec::Plain { kind: 60, len: 8 }, Ext6Spec::Plain { kind: 0, len: 8 }];
    let p = envelope::parse_dual(&s.build());
    assert_eq!(p.class, Class::Malformed { layer: Layer::L3, why: Malformation::Ipv6HopByHop });
    // Version 4 behind the IPv6 ethertype.
    let mut f = Frame6Spec::udp((a, 1), (b, 2), 0).build();
    f[14] = 0x45;
    let p = envelope::parse_dual(&f);
    assert_eq!(p.class, Class::Malformed { layer: Layer::L3, why: Malformation::Ipv6Version });
    // Ethernet padding after the packet is not part of it.
    let mut f = Frame6Spec::tcp((a, 1), (b, 2), 2).build();
    let len = f.len();
    f.extend_from_slice(&[0u8; 6]);
    let p = envelope::parse_dual(&f);
    assert_eq!((p.class, p.ip6.end()), (Class::Ok, len));
}
