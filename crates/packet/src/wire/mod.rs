//! Zero-copy typed header views (in the style of smoltcp's `wire`).
//!
//! Every header has a view `Xxx<T: AsRef<[u8]>>` over a byte buffer:
//!
//! * `Xxx::new_unchecked(buf)` wraps without looking at the bytes;
//! * `Xxx::new_checked(buf)` validates every length the accessors rely on,
//!   so that afterwards no getter, setter or payload accessor can panic,
//!   whatever the bytes are;
//! * getters read fields in network byte order, setters (on
//!   `T: AsRef<[u8]> + AsMut<[u8]>`) write them;
//! * `XxxRepr` is a parsed, owned summary with `parse`, `emit` and
//!   `buffer_len`.
//!
//! Payload accessors honour the length fields (an IPv4 payload ends at
//! `total_len`, so Ethernet padding is excluded).
//!
//! [`checksum`] has the Internet checksum (RFC 1071) and incremental
//! updates (RFC 1624); [`build::FrameSpec`] builds valid test frames.

pub mod arp;
pub mod build;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod ipv6ext;
pub mod tcp;
pub mod udp;
pub mod vlan;

pub use arp::{ArpPacket, ArpRepr};
pub use ethernet::{EthernetFrame, EthernetRepr, MacAddr, ParseMacError};
pub use icmpv4::{Icmpv4Packet, Icmpv4Repr};
pub use icmpv6::{Icmpv6Packet, Icmpv6Repr};
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use ipv6::{Ipv6Packet, Ipv6Repr};
pub use ipv6ext::{Ipv6ExtHeader, Ipv6ExtRepr, Ipv6FragHeader, Ipv6FragRepr};
pub use tcp::{TcpPacket, TcpRepr};
pub use udp::{UdpPacket, UdpRepr};
pub use vlan::{VlanRepr, VlanTag};

/// Why a buffer could not be viewed as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header or than a length field says.
    #[error("truncated packet: buffer shorter than the header or its length field")]
    Truncated,
    /// A field has a value that makes the header meaningless (bad version,
    /// a length field smaller than the fixed header, ...).
    #[error("malformed packet: a header field has an impossible value")]
    Malformed,
    /// Well-formed, but not something this code handles (another
    /// ethertype, hardware type, ...).
    #[error("unsupported packet: valid but of a kind not handled here")]
    Unsupported,
}

/// Ethertypes (IEEE 802 numbers) used by braid.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    /// 802.1Q customer VLAN tag (C-tag).
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service VLAN tag (S-tag, "QinQ").
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

/// IP protocol numbers (IPv4 `protocol`, IPv6 `next_header`).
pub mod ip_proto {
    /// IPv6 hop-by-hop options (an extension header).
    pub const HOPOPT: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    /// IPv6 routing header.
    pub const IPV6_ROUTE: u8 = 43;
    /// IPv6 fragment header.
    pub const IPV6_FRAG: u8 = 44;
    /// Encapsulating security payload.
    pub const ESP: u8 = 50;
    /// Authentication header.
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const IPV6_NONXT: u8 = 59;
    /// IPv6 destination options.
    pub const IPV6_OPTS: u8 = 60;
    /// Mobility header (RFC 6275).
    pub const MOBILITY: u8 = 135;
    /// Host identity protocol (RFC 7401).
    pub const HIP: u8 = 139;
    /// Shim6 (RFC 5533).
    pub const SHIM6: u8 = 140;
}

/// TCP flag bits as returned by [`TcpPacket::flags`].
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Where the layer-3 header of an Ethernet frame starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L3Info {
    /// The ethertype after any VLAN tags.
    pub ethertype: u16,
    /// Byte offset of the layer-3 header in the frame.
    pub offset: usize,
    /// VLAN ID of the first (outermost) tag, if the frame is tagged.
    pub vlan: Option<u16>,
}

/// Locates the layer-3 header of an Ethernet frame, skipping up to two VLAN
/// tags (802.1Q and/or 802.1ad). A third tag is [`WireError::Unsupported`].
///
/// The returned offset is only checked to lie within the frame; the
/// caller validates the layer-3 header with its own `new_checked`.
pub fn l3(frame: &[u8]) -> Result<L3Info, WireError> {
    let eth = EthernetFrame::new_checked(frame)?;
    let mut ethertype = eth.ethertype();
    let mut offset = ethernet::HEADER_LEN;
    let mut vlan = None;
    let mut tags = 0;
    while ethertype == ethertype::VLAN || ethertype == ethertype::QINQ {
        if tags == 2 {
            return Err(WireError::Unsupported);
        }
        let tag = VlanTag::new_checked(&frame[offset..])?;
        if vlan.is_none() {
            vlan = Some(tag.vid());
        }
        ethertype = tag.inner_ethertype();
        offset += vlan::HEADER_LEN;
        tags += 1;
    }
    Ok(L3Info { ethertype, offset, vlan })
}

/// Reads a big-endian u16 at `at`. Callers guarantee the bounds (checked in
/// `new_checked`).
#[inline(always)]
pub(crate) fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

#[inline(always)]
pub(crate) fn set_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
pub(crate) fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[inline(always)]
pub(crate) fn set_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l3_untagged_single_and_double_tag() {
        let mut f = vec![0u8; 14 + 8 + 20];
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        assert_eq!(l3(&f).unwrap(), L3Info { ethertype: 0x0800, offset: 14, vlan: None });

        f[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        f[14..16].copy_from_slice(&0x2064u16.to_be_bytes()); // pcp 1, vid 100
        f[16..18].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        assert_eq!(l3(&f).unwrap(), L3Info { ethertype: 0x0800, offset: 18, vlan: Some(100) });

        f[12..14].copy_from_slice(&ethertype::QINQ.to_be_bytes());
        f[16..18].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        f[18..20].copy_from_slice(&7u16.to_be_bytes());
        f[20..22].copy_from_slice(&ethertype::ARP.to_be_bytes());
        assert_eq!(l3(&f).unwrap(), L3Info { ethertype: 0x0806, offset: 22, vlan: Some(100) });
    }

    #[test]
    fn l3_rejects_three_tags_and_truncation() {
        let mut f = vec![0u8; 40];
        f[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        f[16..18].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        f[20..22].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        assert_eq!(l3(&f), Err(WireError::Unsupported));
        assert_eq!(l3(&f[..16]), Err(WireError::Truncated));
        assert_eq!(l3(&f[..13]), Err(WireError::Truncated));
    }
}
