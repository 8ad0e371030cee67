//! TCP segments (RFC 9293). TCP has no length field: the segment is the
//! whole buffer, so pass the IP payload (which already excludes padding).

use super::checksum;
use super::{get_u16, get_u32, ip_proto, set_u16, set_u32, WireError};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

/// A view of a TCP segment.
///
/// After [`TcpPacket::new_checked`] the data offset is at least 5 and the
/// header (options included) fits the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl TcpPacket<&'static [u8]> {
    pub const HEADER_LEN: usize = HEADER_LEN;
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> TcpPacket<T> {
        TcpPacket { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<TcpPacket<T>, WireError> {
        let p = TcpPacket::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if hl > len {
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

    #[inline]
    pub fn seq_number(&self) -> u32 {
        get_u32(self.b(), field::SEQ)
    }

    #[inline]
    pub fn ack_number(&self) -> u32 {
        get_u32(self.b(), field::ACK)
    }

    /// Header length in bytes (data offset * 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        ((self.b()[field::DATA_OFF] >> 4) as usize) * 4
    }

    /// The 8 flag bits (see [`super::tcp_flags`]); the NS bit is [`Self::ns`].
    #[inline]
    pub fn flags(&self) -> u8 {
        self.b()[field::FLAGS]
    }

    #[inline]
    pub fn has_flags(&self, mask: u8) -> bool {
        self.flags() & mask == mask
    }

    /// The ECN nonce-sum bit (RFC 3540, historic).
    #[inline]
    pub fn ns(&self) -> bool {
        self.b()[field::DATA_OFF] & 0x01 != 0
    }

    #[inline]
    pub fn window_len(&self) -> u16 {
        get_u16(self.b(), field::WINDOW)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.b(), field::CHECKSUM)
    }

    #[inline]
    pub fn urgent_at(&self) -> u16 {
        get_u16(self.b(), field::URGENT)
    }

    /// End of the header, clamped to the buffer.
    #[inline]
    fn header_end(&self) -> usize {
        self.header_len().clamp(HEADER_LEN, self.b().len())
    }

    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.b()[HEADER_LEN..self.header_end()]
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_end()..]
    }

    /// Length of the whole segment (the buffer).
    #[inline]
    pub fn segment_len(&self) -> usize {
        self.b().len()
    }

    /// True if the checksum over IPv4 is correct.
    #[inline]
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.b();
        let ph = checksum::pseudo_header_v4(src, dst, ip_proto::TCP, b.len());
        checksum::fold(ph + checksum::sum(b)) == 0xFFFF
    }

    /// True if the checksum over IPv6 is correct.
    #[inline]
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let b = self.b();
        let ph = checksum::pseudo_header_v6(src, dst, ip_proto::TCP, b.len());
        checksum::fold(ph + checksum::sum(b)) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
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
    pub fn set_seq_number(&mut self, v: u32) {
        set_u32(self.bm(), field::SEQ, v);
    }

    #[inline]
    pub fn set_ack_number(&mut self, v: u32) {
        set_u32(self.bm(), field::ACK, v);
    }

    /// Sets the header length in bytes (rounded down to 4, max 60).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        let off = (len / 4).min(15) as u8;
        let b = self.bm();
        b[field::DATA_OFF] = (b[field::DATA_OFF] & 0x0F) | (off << 4);
    }

    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.bm()[field::FLAGS] = flags;
    }

    #[inline]
    pub fn set_window_len(&mut self, w: u16) {
        set_u16(self.bm(), field::WINDOW, w);
    }

    #[inline]
    pub fn set_checksum(&mut self, ck: u16) {
        set_u16(self.bm(), field::CHECKSUM, ck);
    }

    #[inline]
    pub fn set_urgent_at(&mut self, v: u16) {
        set_u16(self.bm(), field::URGENT, v);
    }

    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_end();
        &mut self.bm()[HEADER_LEN..end]
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_end();
        &mut self.bm()[start..]
    }

    /// Computes and stores the checksum over IPv4 (whole buffer).
    #[inline]
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.b();
        let ph = checksum::pseudo_header_v4(src, dst, ip_proto::TCP, b.len());
        let ck = !checksum::fold(ph + checksum::sum(b));
        self.set_checksum(ck);
    }

    /// Computes and stores the checksum over IPv6 (whole buffer).
    #[inline]
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let b = self.b();
        let ph = checksum::pseudo_header_v6(src, dst, ip_proto::TCP, b.len());
        let ck = !checksum::fold(ph + checksum::sum(b));
        self.set_checksum(ck);
    }
}

/// The fields of a TCP header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: u8,
    pub window_len: u16,
}

impl TcpRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &TcpPacket<T>) -> Result<TcpRepr, WireError> {
        p.check_len()?;
        Ok(TcpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq_number: p.seq_number(),
            ack_number: p.ack_number(),
            flags: p.flags(),
            window_len: p.window_len(),
        })
    }

    /// Header length emitted (no options).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with a zero checksum and urgent pointer;
    /// call `fill_checksum_v4`/`_v6` once the payload is in place.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut TcpPacket<T>) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq_number(self.seq_number);
        p.set_ack_number(self.ack_number);
        p.bm()[field::DATA_OFF] = 0;
        p.set_header_len(HEADER_LEN);
        p.set_flags(self.flags);
        p.set_window_len(self.window_len);
        p.set_checksum(0);
        p.set_urgent_at(0);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tcp_flags;
    use super::*;

    /// A SYN with MSS/SACK-permitted/timestamps/window-scale options, as
    /// Linux sends it (data offset 10, 40 bytes), checksum field zeroed.
    fn syn() -> Vec<u8> {
        vec![
            0xd4, 0x31, 0x00, 0x50, 0x1e, 0x6b, 0x9a, 0x01, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02,
            0xfa, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a,
            0x00, 0x01, 0x02, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
        ]
    }

    #[test]
    fn syn_fields() {
        let d = syn();
        let p = TcpPacket::new_checked(&d[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (54321, 80));
        assert_eq!(p.seq_number(), 0x1e6b9a01);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), tcp_flags::SYN);
        assert!(p.has_flags(tcp_flags::SYN) && !p.has_flags(tcp_flags::SYN | tcp_flags::ACK));
        assert_eq!(p.window_len(), 64240);
        assert_eq!(&p.options()[..4], &[0x02, 0x04, 0x05, 0xb4]);
        assert!(p.payload().is_empty());
        assert!(!p.ns());
    }

    #[test]
    fn checksum_v4_and_v6() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let mut d = syn();
        d.extend_from_slice(b"hello");
        let mut p = TcpPacket::new_checked(&mut d[..]).unwrap();
        p.fill_checksum_v4(a, b);
        assert!(p.verify_checksum_v4(a, b));
        assert!(!p.verify_checksum_v4(a, Ipv4Addr::new(10, 0, 0, 3)));
        p.payload_mut()[0] ^= 1;
        assert!(!p.verify_checksum_v4(a, b));
        let (x, y): (Ipv6Addr, Ipv6Addr) = ("::1".parse().unwrap(), "::2".parse().unwrap());
        p.fill_checksum_v6(x, y);
        assert!(p.verify_checksum_v6(x, y));
    }

    #[test]
    fn check_len_errors() {
        let mut d = syn();
        assert_eq!(TcpPacket::new_checked(&d[..19]), Err(WireError::Truncated));
        assert_eq!(TcpPacket::new_checked(&d[..39]), Err(WireError::Truncated));
        d[12] = 0x40;
        assert_eq!(TcpPacket::new_checked(&d[..]), Err(WireError::Malformed));
    }

    #[test]
    fn repr_round_trip() {
        let r = TcpRepr {
            src_port: 1,
            dst_port: 2,
            seq_number: 3,
            ack_number: 4,
            flags: tcp_flags::ACK | tcp_flags::PSH,
            window_len: 5,
        };
        let mut buf = [0xFFu8; 20];
        r.emit(&mut TcpPacket::new_unchecked(&mut buf[..]));
        let p = TcpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(TcpRepr::parse(&p).unwrap(), r);
        assert!(!p.ns());
    }
}
