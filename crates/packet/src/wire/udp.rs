//! UDP datagrams (RFC 768).

use super::checksum;
use super::{get_u16, ip_proto, set_u16, WireError};
use std::net::{Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 8;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A view of a UDP datagram.
///
/// After [`UdpPacket::new_checked`] the length field is within
/// `[8, buffer length]`; the payload ends at the length field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl UdpPacket<&'static [u8]> {
    pub const HEADER_LEN: usize = HEADER_LEN;
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> UdpPacket<T> {
        UdpPacket { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<UdpPacket<T>, WireError> {
        let p = UdpPacket::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let buf_len = self.buffer.as_ref().len();
        if buf_len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = self.len() as usize;
        if len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len > buf_len {
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
    pub fn src_port(&self) -> u16 {
        get_u16(self.b(), field::SRC_PORT)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        get_u16(self.b(), field::DST_PORT)
    }

    /// The length field: header + payload, in bytes.
    #[inline]
    pub fn len(&self) -> u16 {
        get_u16(self.b(), field::LENGTH)
    }

    /// True if the datagram carries no payload.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() as usize <= HEADER_LEN
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.b(), field::CHECKSUM)
    }

    /// End of the datagram per the length field, clamped to the buffer so a
    /// length changed through a setter cannot cause a panic.
    #[inline]
    fn end(&self) -> usize {
        (self.len() as usize).clamp(HEADER_LEN, self.b().len())
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..self.end()]
    }

    #[inline]
    fn sum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let end = self.end();
        let ph = checksum::pseudo_header_v4(src, dst, ip_proto::UDP, end);
        checksum::fold(ph + checksum::sum(&self.b()[..end]))
    }

    /// True if the checksum is correct or absent (0) over IPv4.
    #[inline]
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || self.sum_v4(src, dst) == 0xFFFF
    }

    /// True if the checksum is correct over IPv6 (where it is mandatory).
    #[inline]
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let end = self.end();
        let ph = checksum::pseudo_header_v6(src, dst, ip_proto::UDP, end);
        self.checksum() != 0 && checksum::fold(ph + checksum::sum(&self.b()[..end])) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    #[inline]
    pub fn set_src_port(&mut self, p: u16) {
        set_u16(self.bm(), field::SRC_PORT, p);
    }

    #[inline]
    pub fn set_dst_port(&mut self, p: u16) {
        set_u16(self.bm(), field::DST_PORT, p);
    }

    #[inline]
    pub fn set_len(&mut self, len: u16) {
        set_u16(self.bm(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_checksum(&mut self, ck: u16) {
        set_u16(self.bm(), field::CHECKSUM, ck);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.end();
        &mut self.bm()[HEADER_LEN..end]
    }

    /// Computes and stores the checksum over IPv4. A computed 0 is stored
    /// as `0xFFFF`, since 0 means "no checksum" (RFC 768).
    #[inline]
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let ck = match !self.sum_v4(src, dst) {
            0 => 0xFFFF,
            c => c,
        };
        self.set_checksum(ck);
    }

    /// Computes and stores the checksum over IPv6 (0 stored as `0xFFFF`).
    #[inline]
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let end = self.end();
        let ph = checksum::pseudo_header_v6(src, dst, ip_proto::UDP, end);
        let ck = match !checksum::fold(ph + checksum::sum(&self.b()[..end])) {
            0 => 0xFFFF,
            c => c,
        };
        self.set_checksum(ck);
    }
}

/// The fields of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    /// Payload length in bytes (the length field minus 8).
    pub payload_len: usize,
}

impl UdpRepr {
    /// Reads the header fields (the checksum needs the IP addresses; see
    /// [`UdpPacket::verify_checksum_v4`]).
    pub fn parse<T: AsRef<[u8]>>(p: &UdpPacket<T>) -> Result<UdpRepr, WireError> {
        p.check_len()?;
        Ok(UdpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: p.len() as usize - HEADER_LEN,
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header with a zero checksum; call `fill_checksum_v4` or
    /// `fill_checksum_v6` once the payload is in place. The buffer must be
    /// at least 8 bytes long.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut UdpPacket<T>) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len((HEADER_LEN + self.payload_len) as u16);
        p.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DNS query for "example.com A", 192.168.1.100:51289 -> 8.8.8.8:53,
    /// with the checksum field zeroed.
    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 100);
    const DST: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);

    fn dns_query() -> Vec<u8> {
        let mut d = vec![0xc8, 0x59, 0x00, 0x35, 0x00, 0x25, 0x00, 0x00];
        d.extend_from_slice(&[0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00]);
        d.extend_from_slice(&[0x00, 0x00, 0x07]);
        d.extend_from_slice(b"example");
        d.extend_from_slice(&[0x03]);
        d.extend_from_slice(b"com");
        d.extend_from_slice(&[0x00, 0x00, 0x01, 0x00, 0x01]);
        d
    }

    #[test]
    fn fields_and_checksum() {
        let mut d = dns_query();
        assert_eq!(d.len(), 0x25);
        let mut p = UdpPacket::new_checked(&mut d[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (51289, 53, 37));
        assert_eq!(p.payload().len(), 29);
        p.fill_checksum_v4(SRC, DST);
        assert!(p.verify_checksum_v4(SRC, DST));
        assert!(!p.verify_checksum_v4(SRC, Ipv4Addr::new(8, 8, 4, 4)));
        // Independent computation by hand of the same sum.
        let mut words: u32 = 0xc0a8 + 0x0164 + 0x0808 + 0x0808 + 17 + 37;
        let bytes = dns_query();
        for c in bytes.chunks(2) {
            words += ((c[0] as u32) << 8) | *c.get(1).unwrap_or(&0) as u32;
        }
        while words > 0xFFFF {
            words = (words & 0xFFFF) + (words >> 16);
        }
        assert_eq!(p.checksum(), !(words as u16));
    }

    #[test]
    fn zero_checksum_means_none_and_is_never_emitted() {
        let mut d = dns_query();
        let p = UdpPacket::new_checked(&d[..]).unwrap();
        assert!(p.verify_checksum_v4(SRC, DST), "0 = no checksum over IPv4");
        // Pick the payload so that the computed checksum is 0: set the
        // last two bytes so the sum folds to 0xFFFF.
        let n = d.len();
        d.push(0); // even length makes the last word easy
        d[5] += 1;
        d[n - 1] = 0;
        d[n] = 0;
        let s =
            checksum::fold(checksum::pseudo_header_v4(SRC, DST, 17, d.len()) + checksum::sum(&d));
        let fix = 0xFFFF - s; // the word that brings the sum to 0xFFFF
        d[n - 1] = (fix >> 8) as u8;
        d[n] = fix as u8;
        let mut p = UdpPacket::new_checked(&mut d[..]).unwrap();
        p.fill_checksum_v4(SRC, DST);
        assert_eq!(p.checksum(), 0xFFFF);
        assert!(p.verify_checksum_v4(SRC, DST));
    }

    #[test]
    fn check_len_errors_and_padding() {
        let mut d = dns_query();
        assert_eq!(UdpPacket::new_checked(&d[..7]), Err(WireError::Truncated));
        assert_eq!(UdpPacket::new_checked(&d[..36]), Err(WireError::Truncated));
        d[5] = 7;
        assert_eq!(UdpPacket::new_checked(&d[..]), Err(WireError::Malformed));
        d[5] = 10;
        let p = UdpPacket::new_checked(&d[..]).unwrap();
        assert_eq!(p.payload().len(), 2, "bytes past the length field are padding");
    }

    #[test]
    fn v6_checksum() {
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut d = dns_query();
        let mut p = UdpPacket::new_checked(&mut d[..]).unwrap();
        assert!(!p.verify_checksum_v6(a, b), "0 is invalid over IPv6");
        p.fill_checksum_v6(a, b);
        assert!(p.verify_checksum_v6(a, b));
        assert!(!p.verify_checksum_v6(b, b));
    }

    #[test]
    fn repr_round_trip() {
        let r = UdpRepr { src_port: 1, dst_port: 65535, payload_len: 3 };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut UdpPacket::new_unchecked(&mut buf[..]));
        assert_eq!(UdpRepr::parse(&UdpPacket::new_checked(&buf[..]).unwrap()).unwrap(), r);
    }
}
