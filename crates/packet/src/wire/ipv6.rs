//! IPv6 fixed headers (RFC 8200). Extension headers are not walked:
//! `next_header` and `payload` are those of the fixed header.

use super::{get_u16, get_u32, set_u16, set_u32, WireError};
use std::net::Ipv6Addr;

pub const HEADER_LEN: usize = 40;

/// A view of an IPv6 packet.
///
/// After [`Ipv6Packet::new_checked`] the version is 6 and
/// `40 + payload_len <= buffer length`; the payload ends at `payload_len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl Ipv6Packet<&'static [u8]> {
    pub const HEADER_LEN: usize = HEADER_LEN;
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> Ipv6Packet<T> {
        Ipv6Packet { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<Ipv6Packet<T>, WireError> {
        let p = Ipv6Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 6 {
            return Err(WireError::Malformed);
        }
        if HEADER_LEN + self.payload_len() as usize > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.b()[0] >> 4
    }

    #[inline]
    pub fn traffic_class(&self) -> u8 {
        ((get_u16(self.b(), 0) >> 4) & 0xFF) as u8
    }

    /// Flow label (20 bits).
    #[inline]
    pub fn flow_label(&self) -> u32 {
        get_u32(self.b(), 0) & 0x000F_FFFF
    }

    #[inline]
    pub fn payload_len(&self) -> u16 {
        get_u16(self.b(), 4)
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.b()[6]
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.b()[7]
    }

    fn addr(&self, at: usize) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[at..at + 16]);
        Ipv6Addr::from(a)
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        self.addr(8)
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        self.addr(24)
    }

    /// The payload (`40..40 + payload_len`, clamped to the buffer).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let end = (HEADER_LEN + self.payload_len() as usize).min(self.b().len());
        &self.b()[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_version(&mut self, v: u8) {
        let b = self.bm();
        b[0] = (b[0] & 0x0F) | (v << 4);
    }

    pub fn set_traffic_class(&mut self, tc: u8) {
        let b = self.bm();
        let w = (get_u16(b, 0) & 0xF00F) | ((tc as u16) << 4);
        set_u16(b, 0, w);
    }

    /// Sets the flow label (masked to 20 bits).
    pub fn set_flow_label(&mut self, fl: u32) {
        let b = self.bm();
        let w = (get_u32(b, 0) & 0xFFF0_0000) | (fl & 0x000F_FFFF);
        set_u32(b, 0, w);
    }

    pub fn set_payload_len(&mut self, len: u16) {
        set_u16(self.bm(), 4, len);
    }

    pub fn set_next_header(&mut self, nh: u8) {
        self.bm()[6] = nh;
    }

    pub fn set_hop_limit(&mut self, hl: u8) {
        self.bm()[7] = hl;
    }

    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.bm()[8..24].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.bm()[24..40].copy_from_slice(&a.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = (HEADER_LEN + self.payload_len() as usize).min(self.b().len());
        &mut self.bm()[HEADER_LEN..end]
    }
}

/// The fields of an IPv6 fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: u8,
    pub payload_len: usize,
    pub hop_limit: u8,
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv6Packet<T>) -> Result<Ipv6Repr, WireError> {
        p.check_len()?;
        Ok(Ipv6Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            next_header: p.next_header(),
            payload_len: p.payload_len() as usize,
            hop_limit: p.hop_limit(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the fixed header (traffic class and flow label 0). The
    /// buffer must be at least 40 bytes; `payload_len` at most 65535.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Ipv6Packet<T>) {
        set_u32(p.bm(), 0, 0x6000_0000);
        p.set_payload_len(self.payload_len as u16);
        p.set_next_header(self.next_header);
        p.set_hop_limit(self.hop_limit);
        p.set_src_addr(self.src_addr);
        p.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_round_trip() {
        let r = Ipv6Repr {
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "ff02::1".parse().unwrap(),
            next_header: 58,
            payload_len: 4,
            hop_limit: 255,
        };
        let mut buf = vec![0u8; 40 + 4 + 2];
        let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
        r.emit(&mut p);
        p.set_traffic_class(0xB8);
        p.set_flow_label(0xABCDE);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Ipv6Repr::parse(&p).unwrap(), r);
        assert_eq!((p.version(), p.traffic_class(), p.flow_label()), (6, 0xB8, 0xABCDE));
        assert_eq!(p.payload().len(), 4, "trailing bytes excluded");
        assert_eq!(Ipv6Packet::new_checked(&buf[..43]), Err(WireError::Truncated));
        assert_eq!(Ipv6Packet::new_checked(&buf[..39]), Err(WireError::Truncated));
        let mut b = buf.clone();
        b[0] = 0x45;
        assert_eq!(Ipv6Packet::new_checked(&b[..]), Err(WireError::Malformed));
    }
}
