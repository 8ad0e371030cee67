//! ARP packets (RFC 826). The view handles any hardware/protocol address
//! lengths; [`ArpRepr`] covers Ethernet/IPv4, the only kind braid uses.

use super::{ethertype, get_u16, set_u16, MacAddr, WireError};
use std::net::Ipv4Addr;

/// Fixed part: htype, ptype, hlen, plen, oper.
pub const HEADER_LEN: usize = 8;
/// Length of an Ethernet/IPv4 ARP packet.
pub const ETH_IPV4_LEN: usize = 28;

/// ARP operation codes.
pub mod operation {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;
}

/// Hardware type of Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;

/// A view of an ARP packet.
///
/// After [`ArpPacket::new_checked`] the buffer holds the fixed part and
/// all four addresses (`8 + 2 * (hlen + plen)` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl ArpPacket<&'static [u8]> {
    pub const HEADER_LEN: usize = HEADER_LEN;
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> ArpPacket<T> {
        ArpPacket { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<ArpPacket<T>, WireError> {
        let p = ArpPacket::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if len < self.packet_len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Length implied by the address lengths.
    #[inline]
    pub fn packet_len(&self) -> usize {
        HEADER_LEN + 2 * (self.hardware_len() as usize + self.protocol_len() as usize)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    pub fn hardware_type(&self) -> u16 {
        get_u16(self.b(), 0)
    }

    #[inline]
    pub fn protocol_type(&self) -> u16 {
        get_u16(self.b(), 2)
    }

    #[inline]
    pub fn hardware_len(&self) -> u8 {
        self.b()[4]
    }

    #[inline]
    pub fn protocol_len(&self) -> u8 {
        self.b()[5]
    }

    #[inline]
    pub fn operation(&self) -> u16 {
        get_u16(self.b(), 6)
    }

    /// Byte range of one of the four addresses: 0 sender hw, 1 sender
    /// proto, 2 target hw, 3 target proto. Clamped to the buffer.
    fn addr_range(&self, which: usize) -> std::ops::Range<usize> {
        let (h, p) = (self.hardware_len() as usize, self.protocol_len() as usize);
        let start = HEADER_LEN + (which / 2) * (h + p) + if which % 2 == 1 { h } else { 0 };
        let len = if which % 2 == 1 { p } else { h };
        let n = self.b().len();
        start.min(n)..(start + len).min(n)
    }

    #[inline]
    pub fn sender_hardware_addr(&self) -> &[u8] {
        &self.b()[self.addr_range(0)]
    }

    #[inline]
    pub fn sender_protocol_addr(&self) -> &[u8] {
        &self.b()[self.addr_range(1)]
    }

    #[inline]
    pub fn target_hardware_addr(&self) -> &[u8] {
        &self.b()[self.addr_range(2)]
    }

    #[inline]
    pub fn target_protocol_addr(&self) -> &[u8] {
        &self.b()[self.addr_range(3)]
    }

    /// True for Ethernet/IPv4 ARP (htype 1, ptype 0x0800, hlen 6, plen 4).
    #[inline]
    pub fn is_ethernet_ipv4(&self) -> bool {
        self.hardware_type() == HTYPE_ETHERNET
            && self.protocol_type() == ethertype::IPV4
            && self.hardware_len() == 6
            && self.protocol_len() == 4
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_hardware_type(&mut self, v: u16) {
        set_u16(self.bm(), 0, v);
    }

    pub fn set_protocol_type(&mut self, v: u16) {
        set_u16(self.bm(), 2, v);
    }

    pub fn set_hardware_len(&mut self, v: u8) {
        self.bm()[4] = v;
    }

    pub fn set_protocol_len(&mut self, v: u8) {
        self.bm()[5] = v;
    }

    pub fn set_operation(&mut self, v: u16) {
        set_u16(self.bm(), 6, v);
    }

    fn set_addr(&mut self, which: usize, addr: &[u8]) {
        let r = self.addr_range(which);
        let n = r.len().min(addr.len());
        self.bm()[r.start..r.start + n].copy_from_slice(&addr[..n]);
    }

    /// Copies `addr` into the field (as many bytes as both hold).
    pub fn set_sender_hardware_addr(&mut self, addr: &[u8]) {
        self.set_addr(0, addr);
    }

    pub fn set_sender_protocol_addr(&mut self, addr: &[u8]) {
        self.set_addr(1, addr);
    }

    pub fn set_target_hardware_addr(&mut self, addr: &[u8]) {
        self.set_addr(2, addr);
    }

    pub fn set_target_protocol_addr(&mut self, addr: &[u8]) {
        self.set_addr(3, addr);
    }
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

fn ip4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl ArpRepr {
    /// Parses an Ethernet/IPv4 ARP packet; other kinds are
    /// [`WireError::Unsupported`].
    pub fn parse<T: AsRef<[u8]>>(p: &ArpPacket<T>) -> Result<ArpRepr, WireError> {
        p.check_len()?;
        if !p.is_ethernet_ipv4() {
            return Err(WireError::Unsupported);
        }
        Ok(ArpRepr {
            operation: p.operation(),
            sender_mac: MacAddr::from_bytes(p.sender_hardware_addr()),
            sender_ip: ip4(p.sender_protocol_addr()),
            target_mac: MacAddr::from_bytes(p.target_hardware_addr()),
            target_ip: ip4(p.target_protocol_addr()),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        ETH_IPV4_LEN
    }

    /// Writes the packet; the buffer must be at least 28 bytes long.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut ArpPacket<T>) {
        p.set_hardware_type(HTYPE_ETHERNET);
        p.set_protocol_type(ethertype::IPV4);
        p.set_hardware_len(6);
        p.set_protocol_len(4);
        p.set_operation(self.operation);
        p.set_sender_hardware_addr(&self.sender_mac.0);
        p.set_sender_protocol_addr(&self.sender_ip.octets());
        p.set_target_hardware_addr(&self.target_mac.0);
        p.set_target_protocol_addr(&self.target_ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Who has 192.168.1.1? Tell 192.168.1.100" from 00:1b:21:3a:4f:5c.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x00, 0x1b, 0x21, 0x3a, 0x4f, 0x5c, 0xc0,
        0xa8, 0x01, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xa8, 0x01, 0x01,
    ];

    #[test]
    fn parse_request_and_round_trip() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        let r = ArpRepr::parse(&p).unwrap();
        assert_eq!(r.operation, operation::REQUEST);
        assert_eq!(r.sender_mac.to_string(), "00:1b:21:3a:4f:5c");
        assert_eq!(r.sender_ip, Ipv4Addr::new(192, 168, 1, 100));
        assert_eq!(r.target_ip, Ipv4Addr::new(192, 168, 1, 1));
        let mut out = [0u8; 28];
        r.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
        assert_eq!(out, REQUEST);
    }

    #[test]
    fn lengths_and_other_kinds() {
        assert_eq!(ArpPacket::new_checked(&REQUEST[..27]), Err(WireError::Truncated));
        assert_eq!(ArpPacket::new_checked(&REQUEST[..7]), Err(WireError::Truncated));
        let mut b = REQUEST.to_vec();
        b[4] = 8; // hlen 8 needs 8 + 2*12 = 32 bytes
        assert_eq!(ArpPacket::new_checked(&b[..]), Err(WireError::Truncated));
        b.extend_from_slice(&[0; 4]);
        let p = ArpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.sender_hardware_addr().len(), 8);
        assert_eq!(ArpRepr::parse(&p), Err(WireError::Unsupported));
    }
}
