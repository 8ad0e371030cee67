//! emit -> parse round trips for every Repr, and FrameSpec -> parse.

use braid_packet::envelope::{self, Class};
use braid_packet::flow::FiveTuple;
use braid_packet::strategy::{frame_spec, ipv4_addr, mac_addr};
use braid_packet::wire::build::L4Spec;
use braid_packet::wire::*;
use proptest::prelude::*;
use std::net::Ipv6Addr;

fn ipv6_addr() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

proptest! {
    #[test]
    fn ethernet(src_addr in mac_addr(), dst_addr in mac_addr(), ethertype in any::<u16>(), extra in 0usize..10) {
        let r = EthernetRepr { src_addr, dst_addr, ethertype };
        let mut buf = vec![0u8; r.buffer_len() + extra];
        r.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(EthernetRepr::parse(&f).unwrap(), r);
        prop_assert_eq!(f.payload().len(), extra);
        prop_assert_eq!(src_addr.to_string().parse::<MacAddr>().unwrap(), src_addr);
    }

    #[test]
    fn vlan(vid in 0u16..4096, pcp in 0u8..8, dei in any::<bool>(), inner_ethertype in any::<u16>()) {
        let r = VlanRepr { vid, pcp, dei, inner_ethertype };
        let mut buf = [0u8; 4];
        r.emit(&mut VlanTag::new_unchecked(&mut buf[..]));
        prop_assert_eq!(VlanRepr::parse(&VlanTag::new_checked(&buf[..]).unwrap()).unwrap(), r);
    }

    #[test]
    fn arp(operation in any::<u16>(), sender_mac in mac_addr(), sender_ip in ipv4_addr(),
           target_mac in mac_addr(), target_ip in ipv4_addr()) {
        let r = ArpRepr { operation, sender_mac, sender_ip, target_mac, target_ip };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap(), r);
    }

    #[test]
    fn ipv4(src_addr in ipv4_addr(), dst_addr in ipv4_addr(), protocol in any::<u8>(),
            payload_len in 0usize..300, ttl in any::<u8>(), padding in 0usize..8) {
        let r = Ipv4Repr { src_addr, dst_addr, protocol, payload_len, ttl };
        let mut buf = vec![0u8; r.buffer_len() + payload_len + padding];
        r.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        prop_assert!(p.verify_checksum());
        prop_assert_eq!(p.payload().len(), payload_len);
        prop_assert_eq!(Ipv4Repr::parse(&p).unwrap(), r);
    }

    #[test]
    fn ipv6(src_addr in ipv6_addr(), dst_addr in ipv6_addr(), next_header in any::<u8>(),
            payload_len in 0usize..300, hop_limit in any::<u8>()) {
        let r = Ipv6Repr { src_addr, dst_addr, next_header, payload_len, hop_limit };
        let mut buf = vec![0u8; r.buffer_len() + payload_len];
        r.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
        prop_assert_eq!(Ipv6Repr::parse(&Ipv6Packet::new_checked(&buf[..]).unwrap()).unwrap(), r);
    }

    #[test]
    fn udp(src_port in any::<u16>(), dst_port in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..300),
           src in ipv4_addr(), dst in ipv4_addr()) {
        let r = UdpRepr { src_port, dst_port, payload_len: payload.len() };
        let mut buf = vec![0u8; r.buffer_len()];
        let mut p = UdpPacket::new_unchecked(&mut buf[..]);
        r.emit(&mut p);
        p.payload_mut().copy_from_slice(&payload);
        p.fill_checksum_v4(src, dst);
        prop_assert!(p.checksum() != 0);
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        prop_assert!(p.verify_checksum_v4(src, dst));
        prop_assert_eq!(p.payload(), &payload[..]);
        prop_assert_eq!(UdpRepr::parse(&p).unwrap(), r);
    }

    #[test]
    fn tcp(src_port in any::<u16>(), dst_port in any::<u16>(), seq_number in any::<u32>(),
           ack_number in any::<u32>(), flags in any::<u8>(), window_len in any::<u16>(), payload_len in 0usize..100) {
        let r = TcpRepr { src_port, dst_port, seq_number, ack_number, flags, window_len };
        let mut buf = vec![0xAAu8; r.buffer_len() + payload_len];
        r.emit(&mut TcpPacket::new_unchecked(&mut buf[..]));
        let p = TcpPacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(p.payload().len(), payload_len);
        prop_assert_eq!(TcpRepr::parse(&p).unwrap(), r);
    }

    #[test]
    fn icmpv4(kind in 0u8..3, a in any::<u16>(), b in any::<u16>(), t in any::<u8>(), c in any::<u8>(), rest in any::<u32>(),
              data_len in 0usize..64) {
        let r = match kind {
            0 => Icmpv4Repr::EchoRequest { ident: a, seq_no: b },
            1 => Icmpv4Repr::EchoReply { ident: a, seq_no: b },
            // Types 0 and 8 with code 0 are echo: Other never parses back as them.
            _ => Icmpv4Repr::Other { msg_type: if t == 0 || t == 8 { 3 } else { t }, msg_code: c, rest_of_header: rest },
        };
        let mut buf = vec![0x55u8; r.buffer_len() + data_len];
        r.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        let p = Icmpv4Packet::new_checked(&buf[..]).unwrap();
        prop_assert!(p.verify_checksum());
        prop_assert_eq!(Icmpv4Repr::parse(&p).unwrap(), r);
    }

    #[test]
    fn icmpv6(kind in 0u8..3, a in any::<u16>(), b in any::<u16>(), t in any::<u8>(), c in any::<u8>(), rest in any::<u32>(),
              src in ipv6_addr(), dst in ipv6_addr(), data_len in 0usize..64) {
        let r = match kind {
            0 => Icmpv6Repr::EchoRequest { ident: a, seq_no: b },
            1 => Icmpv6Repr::EchoReply { ident: a, seq_no: b },
            _ => Icmpv6Repr::Other { msg_type: if t == 128 || t == 129 { 1 } else { t }, msg_code: c, rest_of_header: rest },
        };
        let mut buf = vec![0x55u8; r.buffer_len() + data_len];
        r.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), src, dst);
        let p = Icmpv6Packet::new_checked(&buf[..]).unwrap();
        prop_assert!(p.verify_checksum(src, dst));
        prop_assert_eq!(Icmpv6Repr::parse(&p).unwrap(), r);
    }

    /// A built frame parses back to what was specified, and all its
    /// checksums verify.
    #[test]
    fn frame_spec_builds_what_it_says(spec in frame_spec()) {
        let f = spec.build();
        prop_assert_eq!(f.len(), spec.frame_len());
        let p = envelope::parse(&f);
        prop_assert_eq!(p.class, Class::Ok);
        let flow = p.ip;
        let (proto, sp, dp) = match spec.l4 {
            L4Spec::Udp { src_port, dst_port } => (ip_proto::UDP, src_port, dst_port),
            L4Spec::Tcp { src_port, dst_port, .. } => (ip_proto::TCP, src_port, dst_port),
            L4Spec::IcmpEcho { ident, .. } => (ip_proto::ICMP, ident, ident),
        };
        prop_assert_eq!(flow.tuple(), FiveTuple { src: spec.src_ip, dst: spec.dst_ip, proto, src_port: sp, dst_port: dp });
        prop_assert_eq!(p.vlan, spec.vlan);
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        prop_assert_eq!((eth.src_addr(), eth.dst_addr()), (spec.src_mac, spec.dst_mac));
        let ip = Ipv4Packet::new_checked(&f[flow.l3..]).unwrap();
        prop_assert!(ip.verify_checksum());
        prop_assert_eq!((ip.ttl(), ip.tos(), ip.ident(), ip.dont_frag()), (spec.ttl, spec.tos, spec.ip_ident, spec.dont_frag));
        prop_assert_eq!(flow.l4_offset(), flow.l3 + ip.header_len());
        let l4 = ip.payload();
        let (s, d) = (ip.src_addr(), ip.dst_addr());
        match spec.l4 {
            L4Spec::Udp { .. } => {
                let u = UdpPacket::new_checked(l4).unwrap();
                prop_assert!(u.checksum() != 0 && u.verify_checksum_v4(s, d));
                prop_assert_eq!(u.payload(), &spec.payload[..]);
            }
            L4Spec::Tcp { flags, seq, ack, window, .. } => {
                let t = TcpPacket::new_checked(l4).unwrap();
                prop_assert!(t.verify_checksum_v4(s, d));
                prop_assert_eq!((t.flags(), t.seq_number(), t.ack_number(), t.window_len()), (flags, seq, ack, window));
                prop_assert_eq!(t.payload(), &spec.payload[..]);
            }
            L4Spec::IcmpEcho { seq_no, reply, .. } => {
                let i = Icmpv4Packet::new_checked(l4).unwrap();
                prop_assert!(i.verify_checksum());
                prop_assert_eq!(i.echo_seq_no(), seq_no);
                prop_assert_eq!(i.msg_type(), if reply { 0 } else { 8 });
                prop_assert_eq!(i.data(), &spec.payload[..]);
            }
        }
    }
}
