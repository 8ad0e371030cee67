//! Fuzz-style property: no input makes a `new_checked` view, any of its
//! accessors, a `Repr::parse`, `wire::l3` or `envelope::parse` panic.

use braid_packet::envelope::{self, Class};
use braid_packet::strategy::{any_frame, garbage_frame, mutated_frame};
use braid_packet::wire::*;
use proptest::prelude::*;
use std::hint::black_box;

fn eth(b: &[u8]) {
    if let Ok(f) = EthernetFrame::new_checked(b) {
        black_box((f.dst_addr(), f.src_addr(), f.ethertype(), f.payload().len()));
        black_box(EthernetRepr::parse(&f).unwrap());
    }
}

fn vlan(b: &[u8]) {
    if let Ok(t) = VlanTag::new_checked(b) {
        black_box((t.tci(), t.vid(), t.pcp(), t.dei(), t.inner_ethertype(), t.payload().len()));
        black_box(VlanRepr::parse(&t).unwrap());
    }
}

fn arp(b: &[u8]) {
    if let Ok(p) = ArpPacket::new_checked(b) {
        black_box((p.hardware_type(), p.protocol_type(), p.operation(), p.is_ethernet_ipv4()));
        black_box((p.sender_hardware_addr(), p.sender_protocol_addr()));
        black_box((p.target_hardware_addr(), p.target_protocol_addr()));
        let _ = black_box(ArpRepr::parse(&p));
        let mut v = b.to_vec();
        let mut m = ArpPacket::new_unchecked(&mut v[..]);
        m.set_hardware_len(255);
        m.set_protocol_len(255);
        m.set_sender_hardware_addr(&[1; 300]);
        m.set_target_protocol_addr(&[1; 300]);
        black_box((m.sender_hardware_addr().len(), m.target_protocol_addr().len()));
    }
}

fn ipv4(b: &[u8]) {
    if let Ok(p) = Ipv4Packet::new_checked(b) {
        black_box((p.version(), p.header_len(), p.tos(), p.dscp(), p.ecn(), p.total_len()));
        black_box((p.ident(), p.dont_frag(), p.more_frags(), p.frag_offset(), p.is_fragment()));
        black_box((p.ttl(), p.protocol(), p.checksum(), p.src_addr(), p.dst_addr()));
        black_box((p.header().len(), p.options().len(), p.payload().len(), p.verify_checksum()));
        black_box(Ipv4Repr::parse(&p).unwrap());
        udp(p.payload());
        tcp(p.payload());
        icmpv4(p.payload());
        // Setters that change lengths after the check must not make the
        // payload accessors panic.
        let mut v = b.to_vec();
        let mut m = Ipv4Packet::new_checked(&mut v[..]).unwrap();
        m.decrement_ttl();
        m.fill_checksum();
        assert!(m.verify_checksum());
        m.set_header_len(60);
        m.set_total_len(u16::MAX);
        black_box((m.options_mut().len(), m.payload_mut().len(), m.verify_checksum()));
        m.set_header_len(0);
        m.set_total_len(0);
        black_box((m.options().len(), m.payload().len(), m.header().len()));
    }
}

fn ipv6(b: &[u8]) {
    if let Ok(p) = Ipv6Packet::new_checked(b) {
        black_box((p.version(), p.traffic_class(), p.flow_label(), p.payload_len()));
        black_box((p.next_header(), p.hop_limit(), p.src_addr(), p.dst_addr()));
        black_box(Ipv6Repr::parse(&p).unwrap());
        let (s, d) = (p.src_addr(), p.dst_addr());
        if let Ok(u) = UdpPacket::new_checked(p.payload()) {
            black_box(u.verify_checksum_v6(s, d));
        }
        if let Ok(t) = TcpPacket::new_checked(p.payload()) {
            black_box(t.verify_checksum_v6(s, d));
        }
        icmpv6(p.payload());
        let mut v = b.to_vec();
        let mut m = Ipv6Packet::new_checked(&mut v[..]).unwrap();
        m.set_payload_len(u16::MAX);
        black_box(m.payload_mut().len());
    }
}

fn udp(b: &[u8]) {
    if let Ok(p) = UdpPacket::new_checked(b) {
        black_box((p.src_port(), p.dst_port(), p.len(), p.is_empty(), p.checksum()));
        black_box(p.payload().len());
        black_box(UdpRepr::parse(&p).unwrap());
        let a = std::net::Ipv4Addr::new(1, 2, 3, 4);
        black_box(p.verify_checksum_v4(a, a));
        let mut v = b.to_vec();
        let mut m = UdpPacket::new_checked(&mut v[..]).unwrap();
        m.fill_checksum_v4(a, a);
        assert!(m.verify_checksum_v4(a, a));
        m.set_len(u16::MAX);
        black_box(m.payload_mut().len());
        m.set_len(0);
        black_box(m.payload().len());
        m.fill_checksum_v4(a, a);
    }
}

fn tcp(b: &[u8]) {
    if let Ok(p) = TcpPacket::new_checked(b) {
        black_box((p.src_port(), p.dst_port(), p.seq_number(), p.ack_number()));
        black_box((p.header_len(), p.flags(), p.ns(), p.window_len(), p.checksum(), p.urgent_at()));
        black_box((p.options().len(), p.payload().len(), p.segment_len()));
        black_box(TcpRepr::parse(&p).unwrap());
        let a = std::net::Ipv4Addr::new(1, 2, 3, 4);
        let mut v = b.to_vec();
        let mut m = TcpPacket::new_checked(&mut v[..]).unwrap();
        m.fill_checksum_v4(a, a);
        assert!(m.verify_checksum_v4(a, a));
        m.set_header_len(60);
        black_box((m.options_mut().len(), m.payload_mut().len()));
    }
}

fn icmpv4(b: &[u8]) {
    if let Ok(p) = Icmpv4Packet::new_checked(b) {
        black_box((p.msg_type(), p.msg_code(), p.checksum(), p.is_echo()));
        black_box((p.echo_ident(), p.echo_seq_no(), p.rest_of_header(), p.data().len()));
        black_box((p.verify_checksum(), Icmpv4Repr::parse(&p).unwrap()));
    }
}

fn icmpv6(b: &[u8]) {
    if let Ok(p) = Icmpv6Packet::new_checked(b) {
        black_box((p.msg_type(), p.msg_code(), p.checksum(), p.echo_ident()));
        black_box((p.echo_seq_no(), p.rest_of_header(), p.payload().len()));
        let a = std::net::Ipv6Addr::LOCALHOST;
        black_box((p.verify_checksum(a, a), Icmpv6Repr::parse(&p).unwrap()));
    }
}

/// Runs every parser over `frame` and over its suffixes at the offsets
/// where headers start in real frames.
fn exercise(frame: &[u8]) {
    eth(frame);
    if let Ok(info) = l3(frame) {
        assert!(info.offset <= frame.len());
        let rest = &frame[info.offset..];
        ipv4(rest);
        ipv6(rest);
        arp(rest);
    }
    let p = envelope::parse(frame);
    assert!(p.l3_offset <= frame.len());
    if let Some(ip) = p.ipv4() {
        assert!(ip.l3 < ip.l4_offset() && ip.l4_offset() <= ip.end() && ip.end() <= frame.len());
        if let Some((at, end)) = ip.udp_span() {
            assert!(at + 8 <= ip.end());
            if p.class == Class::Ok {
                assert!(end <= ip.end());
            }
        }
        let t = ip.tuple();
        assert_eq!(t.reversed().reversed(), t);
        black_box((t.hash(), t.symmetric_hash()));
    }
    for off in [0usize, 14, 18, 22, 34, 38, 54] {
        if let Some(rest) = frame.get(off..) {
            vlan(rest);
            arp(rest);
            ipv4(rest);
            ipv6(rest);
            udp(rest);
            tcp(rest);
            icmpv4(rest);
            icmpv6(rest);
        }
    }
    black_box(checksum::checksum(frame));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        exercise(&bytes);
    }

    #[test]
    fn garbage_behind_headers_never_panics(frame in garbage_frame()) {
        exercise(&frame);
    }

    #[test]
    fn mutated_valid_frames_never_panic(frame in mutated_frame()) {
        exercise(&frame);
    }

    #[test]
    fn any_frame_never_panics(frame in any_frame()) {
        exercise(&frame);
    }
}

/// Every truncation of a valid frame of each kind is rejected or parsed,
/// never a panic; the full frame parses.
#[test]
fn every_truncation_of_real_frames() {
    use braid_packet::wire::build::FrameSpec;
    use std::net::Ipv4Addr;
    let (a, b) = (Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(10, 4, 5, 6));
    let mut tagged = FrameSpec::udp((a, 1), (b, 2), 40);
    tagged.vlan = Some(5);
    tagged.ip_options = vec![1, 1, 1, 1];
    for spec in [
        FrameSpec::udp((a, 1), (b, 2), 30),
        FrameSpec::tcp((a, 1), (b, 2), tcp_flags::SYN),
        FrameSpec::icmp_echo(a, b, 1, 2),
        tagged,
    ] {
        let f = spec.build();
        assert_eq!(envelope::parse(&f).class, Class::Ok);
        for n in 0..f.len() {
            exercise(&f[..n]);
            let class = envelope::parse(&f[..n]).class;
            assert!(matches!(class, Class::Truncated { .. }), "truncated at {n}: {class:?}");
        }
    }
}
