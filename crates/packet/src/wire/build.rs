//! [`FrameSpec`]: builds valid Ethernet/(VLAN)/IPv4/{UDP,TCP,ICMP echo}
//! frames ([`Frame6Spec`]: IPv6 with extension headers and ICMPv6 echo) with every length and checksum right, for tests, benches and
//! traffic generators. Every header is written by its `Repr::emit`.
//!
//! ```
//! use braid_packet::wire::build::FrameSpec;
//! use std::net::Ipv4Addr;
//! let a = Ipv4Addr::new(10, 0, 0, 1);
//! let b = Ipv4Addr::new(10, 0, 0, 2);
//! let mut spec = FrameSpec::udp((a, 1000), (b, 2000), 22);
//! spec.vlan = Some(7);
//! let frame = spec.build();
//! assert_eq!(frame.len(), 68);
//! assert_eq!(FrameSpec::udp_frame_len((a, 1), (b, 2), 64).build().len(), 64);
//! ```

use super::{ethernet, ethertype, icmpv4, ip_proto, ipv4, ipv6, tcp, udp, vlan};
use super::{EthernetFrame, Icmpv4Packet, Ipv4Packet, MacAddr, TcpPacket, UdpPacket, VlanTag};
use super::{EthernetRepr, Icmpv4Repr, Ipv4Repr, TcpRepr, UdpRepr, VlanRepr};
use super::{Icmpv6Packet, Icmpv6Repr, Ipv6ExtHeader, Ipv6ExtRepr, Ipv6FragHeader, Ipv6FragRepr};
use super::{Ipv6Packet, Ipv6Repr};
use crate::Packet;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Layer-4 part of a [`FrameSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Spec {
    Udp { src_port: u16, dst_port: u16 },
    Tcp { src_port: u16, dst_port: u16, flags: u8, seq: u32, ack: u32, window: u16 },
    IcmpEcho { ident: u16, seq_no: u16, reply: bool },
}

impl L4Spec {
    fn header_len(&self) -> usize {
        match self {
            L4Spec::Udp { .. } => udp::HEADER_LEN,
            L4Spec::Tcp { .. } => tcp::HEADER_LEN,
            L4Spec::IcmpEcho { .. } => icmpv4::HEADER_LEN,
        }
    }

    fn protocol(&self) -> u8 {
        match self {
            L4Spec::Udp { .. } => ip_proto::UDP,
            L4Spec::Tcp { .. } => ip_proto::TCP,
            L4Spec::IcmpEcho { .. } => ip_proto::ICMP,
        }
    }
}

/// Everything needed to build one IPv4 test frame. Construct with
/// [`FrameSpec::udp`], [`FrameSpec::tcp`], [`FrameSpec::icmp_echo`] or
/// [`FrameSpec::udp_frame_len`], adjust the public fields, then
/// [`FrameSpec::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// One 802.1Q tag with this VID (PCP 0) when set.
    pub vlan: Option<u16>,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub ttl: u8,
    pub tos: u8,
    pub ip_ident: u16,
    pub dont_frag: bool,
    /// Raw IPv4 option bytes; padded with zeros (EOL) to a multiple of 4
    /// and cut at 40 bytes.
    pub ip_options: Vec<u8>,
    pub l4: L4Spec,
    /// Bytes after the layer-4 header.
    pub payload: Vec<u8>,
}

/// Default source MAC of built frames (locally administered).
pub const DEFAULT_SRC_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
/// Default destination MAC of built frames (locally administered).
pub const DEFAULT_DST_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);

/// Ethernet + IPv4 + UDP header bytes of an untagged frame without IP
/// options: the smallest UDP/IPv4 frame.
pub const UDP_OVERHEAD: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN;

/// A recognisable, position-dependent payload pattern.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

impl FrameSpec {
    fn new(src_ip: Ipv4Addr, dst_ip: Ipv4Addr, l4: L4Spec, payload: Vec<u8>) -> FrameSpec {
        FrameSpec {
            src_mac: DEFAULT_SRC_MAC,
            dst_mac: DEFAULT_DST_MAC,
            vlan: None,
            src_ip,
            dst_ip,
            ttl: 64,
            tos: 0,
            ip_ident: 0,
            dont_frag: false,
            ip_options: Vec::new(),
            l4,
            payload,
        }
    }

    /// A UDP datagram with `payload_len` bytes of patterned payload.
    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload_len: usize) -> FrameSpec {
        let l4 = L4Spec::Udp { src_port: src.1, dst_port: dst.1 };
        FrameSpec::new(src.0, dst.0, l4, pattern(payload_len))
    }

    /// An untagged UDP frame of exactly `frame_len` bytes (no FCS): 64 B
    /// gives 22 B of payload. Lengths below 42 give the 42-byte minimum.
    /// Setting `vlan` or `ip_options` afterwards makes the frame longer.
    pub fn udp_frame_len(
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        frame_len: usize,
    ) -> FrameSpec {
        FrameSpec::udp(src, dst, frame_len.saturating_sub(UDP_OVERHEAD))
    }

    /// A TCP segment with the given flags (see [`super::tcp_flags`]), no
    /// payload, seq 1, ack 0 (or 1 with ACK), window 65535.
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> FrameSpec {
        let ack = if flags & super::tcp_flags::ACK != 0 { 1 } else { 0 };
        let l4 =
            L4Spec::Tcp { src_port: src.1, dst_port: dst.1, flags, seq: 1, ack, window: 65535 };
        FrameSpec::new(src.0, dst.0, l4, Vec::new())
    }

    /// An ICMP echo request with 32 bytes of patterned data.
    pub fn icmp_echo(src_ip: Ipv4Addr, dst_ip: Ipv4Addr, ident: u16, seq_no: u16) -> FrameSpec {
        let l4 = L4Spec::IcmpEcho { ident, seq_no, reply: false };
        FrameSpec::new(src_ip, dst_ip, l4, pattern(32))
    }

    /// Replaces the payload with `len` bytes of the default pattern.
    pub fn with_payload_len(mut self, len: usize) -> FrameSpec {
        self.payload = pattern(len);
        self
    }

    fn options_len(&self) -> usize {
        self.ip_options.len().div_ceil(4).min(10) * 4
    }

    /// Length of the frame [`FrameSpec::build`] makes.
    pub fn frame_len(&self) -> usize {
        ethernet::HEADER_LEN
            + if self.vlan.is_some() { vlan::HEADER_LEN } else { 0 }
            + ipv4::HEADER_LEN
            + self.options_len()
            + self.l4.header_len()
            + self.payload.len()
    }

    /// The frame bytes, with the IPv4 and layer-4 checksums filled in.
    /// The IPv4 total length is written modulo 2^16: keep the payload
    /// below 65,000 bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0u8; self.frame_len()];
        let outer = if self.vlan.is_some() { ethertype::VLAN } else { ethertype::IPV4 };
        let eth = EthernetRepr { src_addr: self.src_mac, dst_addr: self.dst_mac, ethertype: outer };
        eth.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
        let mut off = ethernet::HEADER_LEN;
        if let Some(vid) = self.vlan {
            let tag = VlanRepr { vid, pcp: 0, dei: false, inner_ethertype: ethertype::IPV4 };
            tag.emit(&mut VlanTag::new_unchecked(&mut f[off..]));
            off += vlan::HEADER_LEN;
        }

        let opt_len = self.options_len();
        let ip_hl = ipv4::HEADER_LEN + opt_len;
        let l4_len = self.l4.header_len() + self.payload.len();
        let repr = Ipv4Repr {
            src_addr: self.src_ip,
            dst_addr: self.dst_ip,
            protocol: self.l4.protocol(),
            payload_len: l4_len,
            ttl: self.ttl,
        };
        let mut ip = Ipv4Packet::new_unchecked(&mut f[off..]);
        repr.emit(&mut ip);
        // What `Ipv4Repr` leaves at its defaults: TOS, ident, DF, options.
        ip.set_header_len(ip_hl);
        ip.set_total_len((ip_hl + l4_len) as u16);
        ip.set_tos(self.tos);
        ip.set_ident(self.ip_ident);
        ip.set_dont_frag(self.dont_frag);
        let n = self.ip_options.len().min(opt_len);
        ip.options_mut()[..n].copy_from_slice(&self.ip_options[..n]);
        ip.fill_checksum();

        let l4 = &mut f[off + ip_hl..];
        let hl = self.l4.header_len();
        l4[hl..].copy_from_slice(&self.payload);
        match self.l4 {
            L4Spec::Udp { src_port, dst_port } => {
                let mut u = UdpPacket::new_unchecked(l4);
                UdpRepr { src_port, dst_port, payload_len: self.payload.len() }.emit(&mut u);
                u.fill_checksum_v4(self.src_ip, self.dst_ip);
            }
            L4Spec::Tcp { src_port, dst_port, flags, seq, ack, window } => {
                let mut t = TcpPacket::new_unchecked(l4);
                let repr = TcpRepr {
                    src_port,
                    dst_port,
                    seq_number: seq,
                    ack_number: ack,
                    flags,
                    window_len: window,
                };
                repr.emit(&mut t);
                t.fill_checksum_v4(self.src_ip, self.dst_ip);
            }
            L4Spec::IcmpEcho { ident, seq_no, reply } => {
                let repr = if reply {
                    Icmpv4Repr::EchoReply { ident, seq_no }
                } else {
                    Icmpv4Repr::EchoRequest { ident, seq_no }
                };
                // The data is in place: the checksum covers it.
                repr.emit(&mut Icmpv4Packet::new_unchecked(l4));
            }
        }
        f
    }

    /// The frame in a pooled [`Packet`] (truncated if it exceeds the
    /// buffer, like [`Packet::from_bytes`]).
    pub fn packet(&self) -> Packet {
        Packet::from_bytes(&self.build())
    }
}

/// One IPv6 extension header of a [`Frame6Spec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext6Spec {
    /// Hop-by-hop (0), routing (43), destination options (60) or AH (51)
    /// of `len` bytes (see [`Ipv6ExtRepr`]; the body is zero).
    Plain { kind: u8, len: usize },
    /// A fragment header.
    Fragment { offset: u16, more: bool, ident: u32 },
}

impl Ext6Spec {
    fn len(&self) -> usize {
        match *self {
            Ext6Spec::Plain { len, .. } => len,
            Ext6Spec::Fragment { .. } => super::ipv6ext::FRAG_HEADER_LEN,
        }
    }

    fn kind(&self) -> u8 {
        match *self {
            Ext6Spec::Plain { kind, .. } => kind,
            Ext6Spec::Fragment { .. } => ip_proto::IPV6_FRAG,
        }
    }
}

/// Everything needed to build one IPv6 test frame: [`Frame6Spec::udp`],
/// [`Frame6Spec::tcp`] or [`Frame6Spec::icmp_echo`], adjust the public
/// fields, then [`Frame6Spec::build`]. The transport checksum covers the
/// IPv6 pseudo header (RFC 8200 §8.1) with the upper-layer length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame6Spec {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub vlan: Option<u16>,
    pub src_ip: Ipv6Addr,
    pub dst_ip: Ipv6Addr,
    pub hop_limit: u8,
    /// Extension headers, in order, between the fixed header and `l4`.
    pub ext: Vec<Ext6Spec>,
    /// `IcmpEcho` is ICMPv6 echo (128/129).
    pub l4: L4Spec,
    pub payload: Vec<u8>,
}

impl Frame6Spec {
    fn new(src_ip: Ipv6Addr, dst_ip: Ipv6Addr, l4: L4Spec, payload: Vec<u8>) -> Frame6Spec {
        Frame6Spec {
            src_mac: DEFAULT_SRC_MAC,
            dst_mac: DEFAULT_DST_MAC,
            vlan: None,
            src_ip,
            dst_ip,
            hop_limit: 64,
            ext: Vec::new(),
            l4,
            payload,
        }
    }

    /// A UDP datagram with `payload_len` bytes of patterned payload.
    pub fn udp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload_len: usize) -> Frame6Spec {
        let l4 = L4Spec::Udp { src_port: src.1, dst_port: dst.1 };
        Frame6Spec::new(src.0, dst.0, l4, pattern(payload_len))
    }

    /// A TCP segment as [`FrameSpec::tcp`] makes it.
    pub fn tcp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), flags: u8) -> Frame6Spec {
        let ack = if flags & super::tcp_flags::ACK != 0 { 1 } else { 0 };
        let l4 =
            L4Spec::Tcp { src_port: src.1, dst_port: dst.1, flags, seq: 1, ack, window: 65535 };
        Frame6Spec::new(src.0, dst.0, l4, Vec::new())
    }

    /// An ICMPv6 echo request with 32 bytes of patterned data.
    pub fn icmp_echo(src_ip: Ipv6Addr, dst_ip: Ipv6Addr, ident: u16, seq_no: u16) -> Frame6Spec {
        let l4 = L4Spec::IcmpEcho { ident, seq_no, reply: false };
        Frame6Spec::new(src_ip, dst_ip, l4, pattern(32))
    }

    /// An untagged UDP frame of `frame_len` bytes (62 at least).
    pub fn udp_frame_len(
        src: (Ipv6Addr, u16),
        dst: (Ipv6Addr, u16),
        frame_len: usize,
    ) -> Frame6Spec {
        let overhead = ethernet::HEADER_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN;
        Frame6Spec::udp(src, dst, frame_len.saturating_sub(overhead))
    }

    /// The upper-layer protocol number.
    pub fn protocol(&self) -> u8 {
        match self.l4 {
            L4Spec::IcmpEcho { .. } => ip_proto::ICMPV6,
            l4 => l4.protocol(),
        }
    }

    /// Bytes of extension headers.
    pub fn ext_len(&self) -> usize {
        self.ext.iter().map(Ext6Spec::len).sum()
    }

    /// Length of the frame [`Frame6Spec::build`] makes.
    pub fn frame_len(&self) -> usize {
        ethernet::HEADER_LEN
            + if self.vlan.is_some() { vlan::HEADER_LEN } else { 0 }
            + ipv6::HEADER_LEN
            + self.ext_len()
            + self.l4.header_len()
            + self.payload.len()
    }

    /// The frame bytes; every header written by its `Repr::emit`. Panics
    /// only on an `Ext6Spec::Plain` length its kind cannot have (a test
    /// bug). The payload length is written modulo 2^16.
    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0u8; self.frame_len()];
        let outer = if self.vlan.is_some() { ethertype::VLAN } else { ethertype::IPV6 };
        let eth = EthernetRepr { src_addr: self.src_mac, dst_addr: self.dst_mac, ethertype: outer };
        eth.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
        let mut off = ethernet::HEADER_LEN;
        if let Some(vid) = self.vlan {
            let tag = VlanRepr { vid, pcp: 0, dei: false, inner_ethertype: ethertype::IPV6 };
            tag.emit(&mut VlanTag::new_unchecked(&mut f[off..]));
            off += vlan::HEADER_LEN;
        }
        let l4_len = self.l4.header_len() + self.payload.len();
        let first = self.ext.first().map_or(self.protocol(), Ext6Spec::kind);
        let repr = Ipv6Repr {
            src_addr: self.src_ip,
            dst_addr: self.dst_ip,
            next_header: first,
            payload_len: self.ext_len() + l4_len,
            hop_limit: self.hop_limit,
        };
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut f[off..]));
        off += ipv6::HEADER_LEN;
        for (i, e) in self.ext.iter().enumerate() {
            let next_header = self.ext.get(i + 1).map_or(self.protocol(), Ext6Spec::kind);
            let b = &mut f[off..off + e.len()];
            match *e {
                Ext6Spec::Plain { kind, len } => Ipv6ExtRepr { kind, next_header, len }
                    .emit(&mut Ipv6ExtHeader::new_unchecked(b, kind))
                    .expect("extension header length valid for its kind"),
                Ext6Spec::Fragment { offset, more, ident } => {
                    Ipv6FragRepr { next_header, offset, more, ident }
                        .emit(&mut Ipv6FragHeader::new_unchecked(b))
                }
            }
            off += e.len();
        }
        let l4 = &mut f[off..];
        let hl = self.l4.header_len();
        l4[hl..].copy_from_slice(&self.payload);
        let (s, d) = (self.src_ip, self.dst_ip);
        match self.l4 {
            L4Spec::Udp { src_port, dst_port } => {
                let mut u = UdpPacket::new_unchecked(l4);
                UdpRepr { src_port, dst_port, payload_len: self.payload.len() }.emit(&mut u);
                u.fill_checksum_v6(s, d);
            }
            L4Spec::Tcp { src_port, dst_port, flags, seq, ack, window } => {
                let mut t = TcpPacket::new_unchecked(l4);
                let repr = TcpRepr {
                    src_port,
                    dst_port,
                    seq_number: seq,
                    ack_number: ack,
                    flags,
                    window_len: window,
                };
                repr.emit(&mut t);
                t.fill_checksum_v6(s, d);
            }
            L4Spec::IcmpEcho { ident, seq_no, reply } => {
                let repr = if reply {
                    Icmpv6Repr::EchoReply { ident, seq_no }
                } else {
                    Icmpv6Repr::EchoRequest { ident, seq_no }
                };
                repr.emit(&mut Icmpv6Packet::new_unchecked(l4), s, d);
            }
        }
        f
    }

    /// The frame in a pooled [`Packet`].
    pub fn packet(&self) -> Packet {
        Packet::from_bytes(&self.build())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tcp_flags, EthernetFrame};
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    fn check_all(frame: &[u8]) -> (usize, u8) {
        let info = super::super::l3(frame).unwrap();
        let ip = Ipv4Packet::new_checked(&frame[info.offset..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.total_len() as usize, frame.len() - info.offset);
        let (s, d) = (ip.src_addr(), ip.dst_addr());
        match ip.protocol() {
            17 => assert!(UdpPacket::new_checked(ip.payload()).unwrap().verify_checksum_v4(s, d)),
            6 => assert!(TcpPacket::new_checked(ip.payload()).unwrap().verify_checksum_v4(s, d)),
            1 => assert!(Icmpv4Packet::new_checked(ip.payload()).unwrap().verify_checksum()),
            p => panic!("unexpected protocol {p}"),
        }
        (info.offset, ip.protocol())
    }

    #[test]
    fn udp_frame_lengths() {
        for len in [0, 41, 42, 60, 64, 128, 1514] {
            let f = FrameSpec::udp_frame_len((A, 1), (B, 2), len).build();
            assert_eq!(f.len(), len.max(42));
            check_all(&f);
        }
        let f = FrameSpec::udp_frame_len((A, 1), (B, 2), 64).build();
        let u = UdpPacket::new_checked(&f[34..]).unwrap();
        assert_eq!(u.payload().len(), 22);
    }

    #[test]
    fn every_kind_verifies() {
        let mut s = FrameSpec::tcp((A, 5), (B, 443), tcp_flags::SYN | tcp_flags::ACK);
        s.vlan = Some(4095);
        s.ip_options = vec![0x94, 0x04, 0, 0, 1]; // router alert + NOP, padded
        let f = s.build();
        assert_eq!(check_all(&f), (18, 6));
        let ip = Ipv4Packet::new_checked(&f[18..]).unwrap();
        assert_eq!(ip.options(), &[0x94, 0x04, 0, 0, 1, 0, 0, 0]);
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((t.flags(), t.ack_number()), (tcp_flags::SYN | tcp_flags::ACK, 1));

        let f = FrameSpec::icmp_echo(A, B, 9, 10).build();
        assert_eq!(check_all(&f), (14, 1));
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!((e.src_addr(), e.dst_addr()), (DEFAULT_SRC_MAC, DEFAULT_DST_MAC));
        assert_eq!(
            FrameSpec::icmp_echo(A, B, 1, 1).packet().data(),
            &FrameSpec::icmp_echo(A, B, 1, 1).build()[..]
        );
    }

    #[test]
    fn ipv6_frames_verify() {
        let (a, b): (Ipv6Addr, Ipv6Addr) =
            ("2001:db8::1".parse().unwrap(), "2001:db8:1::7".parse().unwrap());
        let mut s = Frame6Spec::udp((a, 5), (b, 53), 11);
        s.ext = vec![
            Ext6Spec::Plain { kind: 0, len: 8 },
            Ext6Spec::Fragment { offset: 0, more: false, ident: 9 },
            Ext6Spec::Plain { kind: 60, len: 16 },
        ];
        let f = s.build();
        assert_eq!(f.len(), 14 + 40 + 32 + 8 + 11);
        let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
        assert_eq!((ip.next_header(), ip.payload_len()), (0, 32 + 19));
        let w = super::super::ipv6ext::walk(ip.next_header(), ip.payload()).unwrap();
        assert_eq!((w.proto, w.ext_len), (17, 32));
        let u = UdpPacket::new_checked(&ip.payload()[32..]).unwrap();
        assert!(u.verify_checksum_v6(a, b));
        let f = Frame6Spec::tcp((a, 1), (b, 2), super::super::tcp_flags::SYN).build();
        let t = TcpPacket::new_checked(&f[54..]).unwrap();
        assert!(t.verify_checksum_v6(a, b));
        let f = Frame6Spec::icmp_echo(a, b, 3, 4).build();
        let i = Icmpv6Packet::new_checked(&f[54..]).unwrap();
        assert!(i.verify_checksum(a, b));
        assert_eq!((i.msg_type(), i.echo_ident()), (128, 3));
        assert_eq!(Frame6Spec::udp_frame_len((a, 1), (b, 2), 78).build().len(), 78);
    }
}
