//! The packet envelope: one pass over a frame's headers that every NF
//! shares, with one policy for frames that are not plain, whole IP.
//!
//! [`parse`] reads Ethernet, up to two VLAN tags (802.1Q / 802.1ad), the
//! IPv4 header and the first bytes of TCP, UDP or ICMP, and returns a
//! [`Parsed`]: where each header is, the fields the NFs key on, and a
//! [`Class`] that says what kind of frame it is. For [`parse`] an IPv6
//! frame is `Unsupported` (NFs that do not handle IPv6 keep calling it);
//! [`parse_dual`] also parses IPv6 — the fixed header, the extension
//! headers (walked by [`crate::wire::ipv6ext::walk`]) and the same
//! transport headers (ICMPv6 instead of ICMP) — into [`Parsed::ip6`], with
//! the same classes. For an IPv4 frame both give the same result by the
//! same code.
//!
//! | class | when |
//! |---|---|
//! | [`Class::Ok`] | IPv4 or (with [`parse_dual`]) IPv6, not a fragment, every header present and consistent |
//! | [`Class::Fragment`] | IPv4 fragment, or IPv6 with a fragment header whose offset or M flag is set; a first fragment's transport header is checked like `Ok`'s |
//! | [`Class::Truncated`] | the frame ends before a header (or a length field) says it does; for IPv6 also an extension header that runs past the payload (layer 3) |
//! | [`Class::Malformed`] | a header field is impossible (version, header length, total length, TCP data offset, UDP length; IPv6: a hop-by-hop header that is not the first) |
//! | [`Class::Unsupported`] | ARP, IPv6 (with [`parse`]), another ethertype, more than two VLAN tags; with [`parse_dual`], an IPv6 extension header chain longer than [`crate::wire::ipv6ext::MAX_EXT_HEADERS`] headers or [`crate::wire::ipv6ext::MAX_EXT_BYTES`] bytes |
//!
//! IPv6 details: ESP (50) and No Next Header (59) end the walk and are
//! `Ok` with that protocol and [`L4::Other`]; an atomic fragment (offset 0,
//! M clear, RFC 6946) is `Ok` (its identification is kept in
//! [`Ipv6Headers::frag_ident`]); jumbograms (payload length 0 with a
//! jumbo option) are not supported: their payload is empty, so a header
//! after the fixed one is `Truncated`.
//!
//! Truncated and malformed follow the wire views exactly: `Truncated` where
//! the view's `new_checked` says [`WireError::Truncated`](crate::wire::WireError),
//! `Malformed` where it says `Malformed` (the property tests check this).
//! The UDP length is checked only for whole datagrams: in a first fragment
//! it covers bytes carried by later fragments.
//!
//! Each NF then decides with one `match` on [`Parsed::class`] what it does
//! with each class (the table is in `docs/nfs.md`).
//!
//! The envelope is a plain `Copy` value (no allocation); offsets are
//! always within the frame. It is parsed once per NF call, inlined: the
//! NFs run fewer instructions than with the parsers it replaced
//! (`docs/benchmarks.md`, "Packet envelope: no regression"), and no cached
//! offsets have to be invalidated when an NF rewrites a header.

use crate::flow::{FiveTuple, FiveTuple6};
use crate::wire::{ethernet, ethertype, icmpv4, icmpv6, ip_proto, ipv4, ipv6, ipv6ext, tcp, udp};
use crate::wire::{vlan, WireError};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The layer a header belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Ethernet and VLAN tags.
    L2,
    /// IPv4, IPv6 and its extension headers.
    L3,
    /// TCP, UDP, ICMP, ICMPv6.
    L4,
}

/// What is wrong with a malformed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformation {
    /// IPv4 version field is not 4.
    Ipv4Version,
    /// IPv4 header length below 20 bytes.
    Ipv4HeaderLen,
    /// IPv4 total length below the header length.
    Ipv4TotalLen,
    /// TCP data offset below 20 bytes.
    TcpDataOffset,
    /// UDP length field below 8 bytes.
    UdpLength,
    /// IPv6 version field is not 6.
    Ipv6Version,
    /// An IPv6 hop-by-hop options header that is not the first header
    /// after the fixed one (RFC 8200 §4.1).
    Ipv6HopByHop,
}

/// A frame the envelope does not parse past layer 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unsupported {
    /// A third VLAN tag.
    VlanDepth,
    Arp,
    /// IPv6 (from [`parse`], which does not parse it).
    Ipv6,
    /// IPv6 (from [`parse_dual`]) with more extension headers than the
    /// walk accepts ([`ipv6ext::MAX_EXT_HEADERS`] headers,
    /// [`ipv6ext::MAX_EXT_BYTES`] bytes).
    Ipv6ExtChain,
    /// Any other ethertype.
    EtherType(u16),
}

/// The policy class of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Whole IPv4 (or IPv6, from [`parse_dual`]) packet, headers consistent.
    Ok,
    /// The frame ends inside the header of `layer`.
    Truncated { layer: Layer },
    /// A header field of `layer` is impossible.
    Malformed { layer: Layer, why: Malformation },
    /// An IPv4 or IPv6 fragment: `first` if it carries the transport
    /// header (offset 0, more fragments follow); `offset` in bytes.
    Fragment { first: bool, offset: u16 },
    /// Not IPv4 (or IPv6 with [`parse_dual`]), or too many VLAN tags: not
    /// parsed past layer 2; or an IPv6 extension header chain too long.
    Unsupported { what: Unsupported },
}

/// The layer-3 protocol named by the (innermost) ethertype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L3Kind {
    Ipv4,
    Ipv6,
    Arp,
    Other,
    /// The layer-2 header was not complete (or had too many tags).
    Unknown,
}

/// What follows the IPv4 header (or IPv6's extension headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP with its ports and flags byte.
    Tcp { src_port: u16, dst_port: u16, flags: u8 },
    /// UDP with its ports and length field (header included).
    Udp { src_port: u16, dst_port: u16, len: u16 },
    /// ICMP echo request (type 8) or reply (type 0) with its identifier;
    /// for IPv6, ICMPv6 echo request (128) or reply (129).
    IcmpEcho { msg_type: u8, ident: u16 },
    /// Any other ICMP (or ICMPv6) message (errors, timestamps, neighbour
    /// discovery, ...).
    IcmpOther { msg_type: u8 },
    /// A non-first fragment: no transport header in this packet.
    Fragment,
    /// Another IP protocol, or no IPv4 header parsed.
    Other,
}

/// Offsets and fields of the IPv4 part of a frame. Filled as far as the
/// parse got: complete when the class is [`Class::Ok`] or
/// [`Class::Fragment`]; zero ([`Ipv4Headers::EMPTY`]) for frames that are
/// not IPv4. When filled, `l3 + total_len <= frame.len()` and
/// `l4_offset() <= l3 + total_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Headers {
    /// Offset of the IPv4 header.
    pub l3: usize,
    /// IPv4 header length in bytes (20..=60).
    pub ihl: usize,
    /// IPv4 total length.
    pub total_len: usize,
    pub proto: u8,
    pub ttl: u8,
    /// Source address, host order.
    pub src: u32,
    /// Destination address, host order.
    pub dst: u32,
    pub l4: L4,
}

impl Ipv4Headers {
    /// Nothing parsed.
    pub const EMPTY: Ipv4Headers = Ipv4Headers {
        l3: 0,
        ihl: 0,
        total_len: 0,
        proto: 0,
        ttl: 0,
        src: 0,
        dst: 0,
        l4: L4::Other,
    };

    /// Offset of the transport header.
    #[inline]
    pub fn l4_offset(&self) -> usize {
        self.l3 + self.ihl
    }

    /// End of the IPv4 packet in the frame (bytes after it are padding).
    #[inline]
    pub fn end(&self) -> usize {
        self.l3 + self.total_len
    }

    /// The TCP flags byte, 0 for other protocols.
    #[inline]
    pub fn tcp_flags(&self) -> u8 {
        match self.l4 {
            L4::Tcp { flags, .. } => flags,
            _ => 0,
        }
    }

    /// The 5-tuple: TCP/UDP ports, the ICMP echo identifier as both ports,
    /// 0 for anything else (other protocols, other ICMP, non-first
    /// fragments).
    #[inline]
    pub fn tuple(&self) -> FiveTuple {
        let (src_port, dst_port) = match self.l4 {
            L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port, .. } => {
                (src_port, dst_port)
            }
            L4::IcmpEcho { ident, .. } => (ident, ident),
            _ => (0, 0),
        };
        FiveTuple {
            src: Ipv4Addr::from(self.src),
            dst: Ipv4Addr::from(self.dst),
            proto: self.proto,
            src_port,
            dst_port,
        }
    }

    /// Where the UDP datagram is, if this is UDP with a header:
    /// `(udp header offset, end of the datagram)`. The end is the UDP
    /// length's end for a whole datagram (checked within the IPv4 packet).
    #[inline]
    pub fn udp_span(&self) -> Option<(usize, usize)> {
        match self.l4 {
            L4::Udp { len, .. } => {
                let at = self.l4_offset();
                Some((at, at + len as usize))
            }
            _ => None,
        }
    }
}

/// Offsets and fields of the IPv6 part of a frame ([`parse_dual`]).
/// Filled as far as the parse got: complete when the class is
/// [`Class::Ok`] or [`Class::Fragment`]; [`Ipv6Headers::EMPTY`] for frames
/// that are not IPv6 and for everything [`parse`] returns. When filled,
/// `l4_offset() <= end() <= frame.len()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Headers {
    /// Offset of the fixed header.
    pub l3: usize,
    /// The fixed header's payload length.
    pub payload_len: usize,
    /// Bytes of extension headers between the fixed header and the
    /// upper-layer header (for a non-first fragment: up to and with its
    /// fragment header).
    pub ext_len: usize,
    /// The fixed header's next header field.
    pub next_header: u8,
    /// The upper-layer protocol after the extension headers (ESP or No
    /// Next Header if the walk stopped there).
    pub proto: u8,
    pub hop_limit: u8,
    /// Source address, host order (`u128::from(Ipv6Addr)`).
    pub src: u128,
    /// Destination address, host order.
    pub dst: u128,
    /// The fragment header's identification, if there is one (an atomic
    /// fragment's too).
    pub frag_ident: Option<u32>,
    pub l4: L4,
}

impl Ipv6Headers {
    /// Nothing parsed.
    pub const EMPTY: Ipv6Headers = Ipv6Headers {
        l3: 0,
        payload_len: 0,
        ext_len: 0,
        next_header: 0,
        proto: 0,
        hop_limit: 0,
        src: 0,
        dst: 0,
        frag_ident: None,
        l4: L4::Other,
    };

    /// Offset of the upper-layer header.
    #[inline]
    pub fn l4_offset(&self) -> usize {
        self.l3 + ipv6::HEADER_LEN + self.ext_len
    }

    /// End of the IPv6 packet in the frame (bytes after it are padding).
    #[inline]
    pub fn end(&self) -> usize {
        self.l3 + ipv6::HEADER_LEN + self.payload_len
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.src)
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.dst)
    }

    /// The TCP flags byte, 0 for other protocols.
    #[inline]
    pub fn tcp_flags(&self) -> u8 {
        match self.l4 {
            L4::Tcp { flags, .. } => flags,
            _ => 0,
        }
    }

    /// The 5-tuple, with ports as [`Ipv4Headers::tuple`] has them (the
    /// ICMPv6 echo identifier as both ports).
    #[inline]
    pub fn tuple(&self) -> FiveTuple6 {
        let (src_port, dst_port) = match self.l4 {
            L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port, .. } => {
                (src_port, dst_port)
            }
            L4::IcmpEcho { ident, .. } => (ident, ident),
            _ => (0, 0),
        };
        FiveTuple6 {
            src: Ipv6Addr::from(self.src),
            dst: Ipv6Addr::from(self.dst),
            proto: self.proto,
            src_port,
            dst_port,
        }
    }

    /// Where the UDP datagram is, if this is UDP with a header:
    /// `(udp header offset, end of the datagram)`, as
    /// [`Ipv4Headers::udp_span`].
    #[inline]
    pub fn udp_span(&self) -> Option<(usize, usize)> {
        match self.l4 {
            L4::Udp { len, .. } => {
                let at = self.l4_offset();
                Some((at, at + len as usize))
            }
            _ => None,
        }
    }
}

/// A parsed frame: its class and its headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Parsed {
    pub class: Class,
    /// VLAN ID of the outermost tag, if any.
    pub vlan: Option<u16>,
    /// The ethertype after the VLAN tags (0 if layer 2 is truncated).
    pub ethertype: u16,
    /// Offset of the layer-3 header (0 if layer 2 is truncated).
    pub l3_offset: usize,
    pub l3: L3Kind,
    /// The IPv4 headers (see [`Ipv4Headers`] for when they are filled).
    pub ip: Ipv4Headers,
    /// The IPv6 headers ([`parse_dual`] only; see [`Ipv6Headers`]).
    pub ip6: Ipv6Headers,
}

impl Parsed {
    const fn with(class: Class) -> Parsed {
        Parsed {
            class,
            vlan: None,
            ethertype: 0,
            l3_offset: 0,
            l3: L3Kind::Unknown,
            ip: Ipv4Headers::EMPTY,
            ip6: Ipv6Headers::EMPTY,
        }
    }

    /// The IPv4 headers if this is IPv4 and the class is `Ok` or `Fragment`.
    #[inline]
    pub fn ipv4(&self) -> Option<&Ipv4Headers> {
        match self.class {
            Class::Ok | Class::Fragment { .. } if self.l3 == L3Kind::Ipv4 => Some(&self.ip),
            _ => None,
        }
    }

    /// The IPv6 headers if this is IPv6 (parsed by [`parse_dual`]) and the
    /// class is `Ok` or `Fragment`.
    #[inline]
    pub fn ipv6(&self) -> Option<&Ipv6Headers> {
        match self.class {
            Class::Ok | Class::Fragment { .. } if self.l3 == L3Kind::Ipv6 => Some(&self.ip6),
            _ => None,
        }
    }

    /// The 5-tuple of an IPv4 `Ok` or `Fragment` frame (see
    /// [`Ipv4Headers::tuple`]).
    #[inline]
    pub fn flow(&self) -> Option<FiveTuple> {
        self.ipv4().map(Ipv4Headers::tuple)
    }

    /// The 5-tuple of an IPv6 `Ok` or `Fragment` frame (see
    /// [`Ipv6Headers::tuple`]).
    #[inline]
    pub fn flow6(&self) -> Option<FiveTuple6> {
        self.ipv6().map(Ipv6Headers::tuple)
    }

    /// True if this is an IPv4 packet carrying UDP (whatever its class).
    #[inline]
    pub fn is_udp(&self) -> bool {
        self.l3 == L3Kind::Ipv4 && self.ip.proto == ip_proto::UDP
    }

    /// True if this is an IPv6 packet (parsed by [`parse_dual`]) whose
    /// upper-layer protocol is UDP (whatever its class).
    #[inline]
    pub fn is_udp6(&self) -> bool {
        self.l3 == L3Kind::Ipv6 && self.ip6.proto == ip_proto::UDP
    }
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse `frame` (see the module documentation). Never panics; every
/// offset in the result lies within `frame`.
///
/// Always inlined: each NF reads only some fields of the result, and
/// inlined the compiler drops the stores to the others and the copy of
/// the whole value (measured: not inlined, it cost twice the instructions
/// of the parsers it replaced).
#[inline(always)]
pub fn parse(frame: &[u8]) -> Parsed {
    parse_l2::<false>(frame)
}

/// [`parse`], and IPv6 too (see the module documentation): an IPv6 frame
/// gets the classes IPv4 frames get and its headers in [`Parsed::ip6`].
/// For an IPv4 frame the result (and the code that computes it) is
/// [`parse`]'s.
#[inline(always)]
pub fn parse_dual(frame: &[u8]) -> Parsed {
    parse_l2::<true>(frame)
}

#[inline(always)]
fn parse_l2<const V6: bool>(frame: &[u8]) -> Parsed {
    if frame.len() < ethernet::HEADER_LEN {
        return Parsed::with(Class::Truncated { layer: Layer::L2 });
    }
    let mut et = be16(frame, 12);
    let mut off = ethernet::HEADER_LEN;
    let mut vid = None;
    let mut tags = 0;
    while et == ethertype::VLAN || et == ethertype::QINQ {
        if tags == 2 {
            let mut p = Parsed::with(Class::Unsupported { what: Unsupported::VlanDepth });
            p.vlan = vid;
            return p;
        }
        if frame.len() < off + vlan::HEADER_LEN {
            return Parsed::with(Class::Truncated { layer: Layer::L2 });
        }
        if vid.is_none() {
            vid = Some(be16(frame, off) & 0x0FFF);
        }
        et = be16(frame, off + 2);
        off += vlan::HEADER_LEN;
        tags += 1;
    }
    let (l3, class) = match et {
        ethertype::IPV4 => (L3Kind::Ipv4, Class::Ok),
        ethertype::ARP => (L3Kind::Arp, Class::Unsupported { what: Unsupported::Arp }),
        ethertype::IPV6 => (L3Kind::Ipv6, Class::Unsupported { what: Unsupported::Ipv6 }),
        t => (L3Kind::Other, Class::Unsupported { what: Unsupported::EtherType(t) }),
    };
    let mut p = Parsed {
        class,
        vlan: vid,
        ethertype: et,
        l3_offset: off,
        l3,
        ip: Ipv4Headers::EMPTY,
        ip6: Ipv6Headers::EMPTY,
    };
    if l3 == L3Kind::Ipv4 {
        p.class = parse_ipv4(&frame[off..], off, &mut p.ip);
    } else if V6 && l3 == L3Kind::Ipv6 {
        p.class = parse_ipv6(&frame[off..], off, &mut p.ip6);
    }
    p
}

/// The IPv4 header at `b` (= `frame[l3..]`) and its transport header.
#[inline(always)]
fn parse_ipv4(b: &[u8], l3: usize, ip: &mut Ipv4Headers) -> Class {
    if b.len() < ipv4::HEADER_LEN {
        return Class::Truncated { layer: Layer::L3 };
    }
    if b[0] >> 4 != 4 {
        return Class::Malformed { layer: Layer::L3, why: Malformation::Ipv4Version };
    }
    let ihl = (b[0] & 0x0F) as usize * 4;
    if ihl < ipv4::HEADER_LEN {
        return Class::Malformed { layer: Layer::L3, why: Malformation::Ipv4HeaderLen };
    }
    if ihl > b.len() {
        return Class::Truncated { layer: Layer::L3 };
    }
    let total = be16(b, 2) as usize;
    if total < ihl {
        return Class::Malformed { layer: Layer::L3, why: Malformation::Ipv4TotalLen };
    }
    if total > b.len() {
        return Class::Truncated { layer: Layer::L3 };
    }
    let flags_frag = be16(b, 6);
    let more = flags_frag & 0x2000 != 0;
    let offset = (flags_frag & 0x1FFF) << 3;
    ip.l3 = l3;
    ip.ihl = ihl;
    ip.total_len = total;
    ip.ttl = b[8];
    ip.proto = b[9];
    ip.src = be32(b, 12);
    ip.dst = be32(b, 16);
    if offset != 0 {
        ip.l4 = L4::Fragment;
        return Class::Fragment { first: false, offset };
    }
    // Bounded by the total length.
    ip.l4 = match parse_l4::<false>(&b[ihl..total], ip.proto, !more) {
        Ok(l4) => l4,
        Err(c) => return c,
    };
    if more {
        Class::Fragment { first: true, offset: 0 }
    } else {
        Class::Ok
    }
}

/// The transport header at `t` (bounded by the IP packet's end) of
/// protocol `proto`; `whole` if the packet is not a first fragment (the
/// UDP length is checked only then). `V6`: ICMPv6 instead of ICMP.
#[inline(always)]
fn parse_l4<const V6: bool>(t: &[u8], proto: u8, whole: bool) -> Result<L4, Class> {
    Ok(match proto {
        ip_proto::TCP => {
            if t.len() < tcp::HEADER_LEN {
                return Err(Class::Truncated { layer: Layer::L4 });
            }
            let doff = (t[12] >> 4) as usize * 4;
            if doff < tcp::HEADER_LEN {
                return Err(Class::Malformed {
                    layer: Layer::L4,
                    why: Malformation::TcpDataOffset,
                });
            }
            if doff > t.len() {
                return Err(Class::Truncated { layer: Layer::L4 });
            }
            L4::Tcp { src_port: be16(t, 0), dst_port: be16(t, 2), flags: t[13] }
        }
        ip_proto::UDP => {
            if t.len() < udp::HEADER_LEN {
                return Err(Class::Truncated { layer: Layer::L4 });
            }
            let len = be16(t, 4);
            if whole {
                if (len as usize) < udp::HEADER_LEN {
                    return Err(Class::Malformed {
                        layer: Layer::L4,
                        why: Malformation::UdpLength,
                    });
                }
                if len as usize > t.len() {
                    return Err(Class::Truncated { layer: Layer::L4 });
                }
            }
            L4::Udp { src_port: be16(t, 0), dst_port: be16(t, 2), len }
        }
        ip_proto::ICMP if !V6 => {
            if t.len() < icmpv4::HEADER_LEN {
                return Err(Class::Truncated { layer: Layer::L4 });
            }
            match t[0] {
                m @ (icmpv4::msg_type::ECHO_REQUEST | icmpv4::msg_type::ECHO_REPLY) => {
                    L4::IcmpEcho { msg_type: m, ident: be16(t, 4) }
                }
                m => L4::IcmpOther { msg_type: m },
            }
        }
        ip_proto::ICMPV6 if V6 => {
            if t.len() < icmpv6::HEADER_LEN {
                return Err(Class::Truncated { layer: Layer::L4 });
            }
            match t[0] {
                m @ (icmpv6::msg_type::ECHO_REQUEST | icmpv6::msg_type::ECHO_REPLY) => {
                    L4::IcmpEcho { msg_type: m, ident: be16(t, 4) }
                }
                m => L4::IcmpOther { msg_type: m },
            }
        }
        _ => L4::Other,
    })
}

/// The IPv6 fixed header at `b` (= `frame[l3..]`), its extension headers
/// and its transport header.
#[inline(always)]
fn parse_ipv6(b: &[u8], l3: usize, ip: &mut Ipv6Headers) -> Class {
    if b.len() < ipv6::HEADER_LEN {
        return Class::Truncated { layer: Layer::L3 };
    }
    if b[0] >> 4 != 6 {
        return Class::Malformed { layer: Layer::L3, why: Malformation::Ipv6Version };
    }
    let plen = be16(b, 4) as usize;
    if ipv6::HEADER_LEN + plen > b.len() {
        return Class::Truncated { layer: Layer::L3 };
    }
    let payload = &b[ipv6::HEADER_LEN..ipv6::HEADER_LEN + plen];
    let nh = b[6];
    let walk = match ipv6ext::walk(nh, payload) {
        Ok(w) => w,
        Err(WireError::Truncated) => return Class::Truncated { layer: Layer::L3 },
        Err(WireError::Malformed) => {
            return Class::Malformed { layer: Layer::L3, why: Malformation::Ipv6HopByHop }
        }
        Err(WireError::Unsupported) => {
            return Class::Unsupported { what: Unsupported::Ipv6ExtChain }
        }
    };
    ip.l3 = l3;
    ip.payload_len = plen;
    ip.ext_len = walk.ext_len;
    ip.next_header = nh;
    ip.proto = walk.proto;
    ip.hop_limit = b[7];
    ip.src = u128::from_be_bytes(b[8..24].try_into().unwrap_or_default());
    ip.dst = u128::from_be_bytes(b[24..40].try_into().unwrap_or_default());
    ip.frag_ident = walk.frag.map(|f| f.ident);
    let (first, more) = match walk.frag {
        Some(f) if f.offset != 0 => {
            ip.l4 = L4::Fragment;
            return Class::Fragment { first: false, offset: f.offset };
        }
        Some(f) => (f.more, f.more),
        None => (false, false),
    };
    ip.l4 = match parse_l4::<true>(&payload[walk.ext_len..], walk.proto, !more) {
        Ok(l4) => l4,
        Err(c) => return c,
    };
    if first {
        Class::Fragment { first: true, offset: 0 }
    } else {
        Class::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::FrameSpec;
    use crate::wire::tcp_flags;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn parses_each_protocol() {
        let mut s = FrameSpec::udp((A, 1000), (B, 53), 10);
        s.vlan = Some(7);
        let f = s.build();
        let p = parse(&f);
        assert_eq!((p.class, p.vlan, p.l3, p.l3_offset), (Class::Ok, Some(7), L3Kind::Ipv4, 18));
        assert_eq!(p.ip.l4, L4::Udp { src_port: 1000, dst_port: 53, len: 18 });
        assert_eq!((p.ip.l4_offset(), p.ip.end()), (38, f.len()));
        assert_eq!(p.ip.udp_span(), Some((38, f.len())));
        assert_eq!(p.flow().unwrap().to_string(), "udp 10.0.0.1:1000 -> 10.0.0.2:53");

        let f = FrameSpec::tcp((A, 1), (B, 80), tcp_flags::SYN).build();
        let p = parse(&f);
        assert_eq!(p.class, Class::Ok);
        assert_eq!(p.ip.l4, L4::Tcp { src_port: 1, dst_port: 80, flags: tcp_flags::SYN });
        assert_eq!(p.ip.tcp_flags(), tcp_flags::SYN);

        let f = FrameSpec::icmp_echo(A, B, 77, 3).build();
        let p = parse(&f);
        assert_eq!(p.ip.l4, L4::IcmpEcho { msg_type: 8, ident: 77 });
        let t = p.flow().unwrap();
        assert_eq!((t.src_port, t.dst_port, t.proto), (77, 77, 1));
    }

    #[test]
    fn classes_of_bad_frames() {
        let good = FrameSpec::udp((A, 1), (B, 2), 20).build();
        assert_eq!(parse(&good[..13]).class, Class::Truncated { layer: Layer::L2 });
        assert_eq!(parse(&good[..30]).class, Class::Truncated { layer: Layer::L3 });
        assert_eq!(parse(&good[..40]).class, Class::Truncated { layer: Layer::L3 });
        let mut f = good.clone();
        f[14] = 0x44;
        let malformed = |why| Class::Malformed { layer: Layer::L3, why };
        assert_eq!(parse(&f).class, malformed(Malformation::Ipv4HeaderLen));
        f[14] = 0x65;
        assert_eq!(parse(&f).class, malformed(Malformation::Ipv4Version));
        let mut f = good.clone();
        f[16..18].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(parse(&f).class, malformed(Malformation::Ipv4TotalLen));
        let mut f = good.clone();
        f[38..40].copy_from_slice(&7u16.to_be_bytes());
        let why = Malformation::UdpLength;
        assert_eq!(parse(&f).class, Class::Malformed { layer: Layer::L4, why });
        f[38..40].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(parse(&f).class, Class::Truncated { layer: Layer::L4 });

        // Fragments: the first keeps its ports, the others have none.
        let mut f = good.clone();
        f[20] = 0x20; // MF
        let p = parse(&f);
        assert_eq!(p.class, Class::Fragment { first: true, offset: 0 });
        assert!(matches!(p.ip.l4, L4::Udp { src_port: 1, dst_port: 2, .. }));
        f[21] = 3;
        let p = parse(&f);
        assert_eq!(p.class, Class::Fragment { first: false, offset: 24 });
        assert_eq!((p.ip.l4, p.flow().unwrap().src_port), (L4::Fragment, 0));

        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        let p = parse(&arp);
        assert_eq!((p.class, p.l3), (Class::Unsupported { what: Unsupported::Arp }, L3Kind::Arp));
        assert_eq!(p.flow(), None);
        let mut tags = vec![0u8; 40];
        for at in [12, 16, 20] {
            tags[at..at + 2].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        }
        assert_eq!(parse(&tags).class, Class::Unsupported { what: Unsupported::VlanDepth });
        assert_eq!(parse(&tags[..17]).class, Class::Truncated { layer: Layer::L2 });
    }
}
