//! IPv4 headers (RFC 791), options included.

use super::checksum;
use super::{get_u16, set_u16, WireError};
use std::net::Ipv4Addr;

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// A view of an IPv4 packet (header, options, payload).
///
/// After [`Ipv4Packet::new_checked`] the version is 4, `IHL >= 5`, the
/// header fits the buffer and `header_len <= total_len <= buffer length`;
/// bytes after `total_len` (Ethernet padding) are not part of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl Ipv4Packet<&'static [u8]> {
    pub const HEADER_LEN: usize = HEADER_LEN;
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> Ipv4Packet<T> {
        Ipv4Packet { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>, WireError> {
        let p = Ipv4Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates version, IHL and total length against the buffer.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 4 {
            return Err(WireError::Malformed);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if hl > len {
            return Err(WireError::Truncated);
        }
        let total = self.total_len() as usize;
        if total < hl {
            return Err(WireError::Malformed);
        }
        if total > len {
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
        self.b()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        ((self.b()[field::VER_IHL] & 0x0F) as usize) * 4
    }

    /// The whole type-of-service byte (DSCP << 2 | ECN).
    #[inline]
    pub fn tos(&self) -> u8 {
        self.b()[field::TOS]
    }

    #[inline]
    pub fn dscp(&self) -> u8 {
        self.tos() >> 2
    }

    #[inline]
    pub fn ecn(&self) -> u8 {
        self.tos() & 0x03
    }

    /// Total length (header + payload) in bytes.
    #[inline]
    pub fn total_len(&self) -> u16 {
        get_u16(self.b(), field::TOTAL_LEN)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        get_u16(self.b(), field::IDENT)
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.b()[field::FLAGS_FRAG] & 0x40 != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        self.b()[field::FLAGS_FRAG] & 0x20 != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (get_u16(self.b(), field::FLAGS_FRAG) & 0x1FFF) << 3
    }

    /// True if this packet is a fragment (first or not).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.b(), field::CHECKSUM)
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[field::SRC], b[field::SRC + 1], b[field::SRC + 2], b[field::SRC + 3])
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[field::DST], b[field::DST + 1], b[field::DST + 2], b[field::DST + 3])
    }

    /// End of the header, clamped to the buffer so that a header length
    /// changed through a setter after `new_checked` cannot cause a panic.
    #[inline]
    fn header_end(&self) -> usize {
        self.header_len().clamp(HEADER_LEN, self.b().len())
    }

    /// End of the packet (`total_len`), clamped the same way.
    #[inline]
    fn total_end(&self) -> usize {
        (self.total_len() as usize).clamp(self.header_end(), self.b().len())
    }

    /// The header bytes, options included.
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_end()]
    }

    /// The option bytes (between the fixed header and `header_len`).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.b()[HEADER_LEN..self.header_end()]
    }

    /// The payload: `header_len..total_len` (padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_end()..self.total_end()]
    }

    /// True if the header checksum is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.header())) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    #[inline]
    pub fn set_version(&mut self, v: u8) {
        let b = self.bm();
        b[field::VER_IHL] = (b[field::VER_IHL] & 0x0F) | (v << 4);
    }

    /// Sets the header length in bytes (rounded down to 4, max 60).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        let ihl = (len / 4).min(15) as u8;
        let b = self.bm();
        b[field::VER_IHL] = (b[field::VER_IHL] & 0xF0) | ihl;
    }

    #[inline]
    pub fn set_tos(&mut self, tos: u8) {
        self.bm()[field::TOS] = tos;
    }

    #[inline]
    pub fn set_dscp(&mut self, dscp: u8) {
        let b = self.bm();
        b[field::TOS] = (b[field::TOS] & 0x03) | (dscp << 2);
    }

    #[inline]
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = self.bm();
        b[field::TOS] = (b[field::TOS] & 0xFC) | (ecn & 0x03);
    }

    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        set_u16(self.bm(), field::TOTAL_LEN, len);
    }

    #[inline]
    pub fn set_ident(&mut self, id: u16) {
        set_u16(self.bm(), field::IDENT, id);
    }

    #[inline]
    pub fn set_dont_frag(&mut self, df: bool) {
        let b = self.bm();
        b[field::FLAGS_FRAG] = (b[field::FLAGS_FRAG] & !0x40) | if df { 0x40 } else { 0 };
    }

    #[inline]
    pub fn set_more_frags(&mut self, mf: bool) {
        let b = self.bm();
        b[field::FLAGS_FRAG] = (b[field::FLAGS_FRAG] & !0x20) | if mf { 0x20 } else { 0 };
    }

    /// Sets the fragment offset in bytes (rounded down to 8).
    #[inline]
    pub fn set_frag_offset(&mut self, offset: u16) {
        let b = self.bm();
        let v = (get_u16(b, field::FLAGS_FRAG) & 0xE000) | (offset >> 3);
        set_u16(b, field::FLAGS_FRAG, v);
    }

    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.bm()[field::TTL] = ttl;
    }

    #[inline]
    pub fn set_protocol(&mut self, p: u8) {
        self.bm()[field::PROTOCOL] = p;
    }

    #[inline]
    pub fn set_checksum(&mut self, ck: u16) {
        set_u16(self.bm(), field::CHECKSUM, ck);
    }

    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.bm()[field::SRC..field::SRC + 4].copy_from_slice(&a.octets());
    }

    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.bm()[field::DST..field::DST + 4].copy_from_slice(&a.octets());
    }

    /// Recomputes the header checksum from scratch.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let ck = checksum::checksum(self.header());
        self.set_checksum(ck);
    }

    /// Decrements the TTL by one and patches the checksum incrementally
    /// (RFC 1624). Returns the new TTL; a TTL of 0 is left unchanged.
    #[inline]
    pub fn decrement_ttl(&mut self) -> u8 {
        let ttl = self.ttl();
        if ttl == 0 {
            return 0;
        }
        let old_word = get_u16(self.b(), field::TTL);
        self.set_ttl(ttl - 1);
        let new_word = get_u16(self.b(), field::TTL);
        let ck = checksum::update16(self.checksum(), old_word, new_word);
        self.set_checksum(ck);
        ttl - 1
    }

    /// The option bytes, writable.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_end();
        &mut self.bm()[HEADER_LEN..end]
    }

    /// The payload (`header_len..total_len`), writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_end(), self.total_end());
        &mut self.bm()[start..end]
    }
}

/// The fields of an IPv4 header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: u8,
    /// Payload length in bytes (total length minus header length).
    pub payload_len: usize,
    pub ttl: u8,
}

impl Ipv4Repr {
    /// Reads the header fields (the checksum is not verified; see
    /// [`Ipv4Packet::verify_checksum`]). Options are skipped.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Result<Ipv4Repr, WireError> {
        p.check_len()?;
        Ok(Ipv4Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: p.total_len() as usize - p.header_len(),
            ttl: p.ttl(),
        })
    }

    /// Header length emitted (no options).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with a correct checksum (TOS 0, ident 0, no
    /// fragmentation flags). The buffer must be at least [`HEADER_LEN`]
    /// long; `payload_len` must not exceed `65535 - 20`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Ipv4Packet<T>) {
        p.set_version(4);
        p.set_header_len(HEADER_LEN);
        p.set_tos(0);
        p.set_total_len((HEADER_LEN + self.payload_len) as u16);
        p.set_ident(0);
        set_u16(p.bm(), field::FLAGS_FRAG, 0);
        p.set_ttl(self.ttl);
        p.set_protocol(self.protocol);
        p.set_src_addr(self.src_addr);
        p.set_dst_addr(self.dst_addr);
        p.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real IPv4 header (Wikipedia's checksum example), UDP, 0x73 bytes
    // long, 192.168.0.1 -> 192.168.0.199, checksum 0xb861.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn packet(total: usize) -> Vec<u8> {
        let mut v = HDR.to_vec();
        v.resize(total, 0xAB);
        v
    }

    #[test]
    fn real_header_fields() {
        let buf = packet(0x73 + 4); // 4 bytes of trailing padding
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 0x73);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.checksum(), 0xb861);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert_eq!(p.payload().len(), 0x73 - 20, "padding excluded");
        assert!(p.options().is_empty());
    }

    #[test]
    fn check_len_errors() {
        let buf = packet(0x73);
        assert_eq!(Ipv4Packet::new_checked(&buf[..19]), Err(WireError::Truncated));
        assert_eq!(Ipv4Packet::new_checked(&buf[..0x72]), Err(WireError::Truncated));
        let mut b = buf.clone();
        b[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&b[..]), Err(WireError::Malformed));
        b[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&b[..]), Err(WireError::Malformed));
        b[0] = 0x4F;
        assert_eq!(Ipv4Packet::new_checked(&b[..40]), Err(WireError::Truncated));
        let mut b = buf.clone();
        b[2] = 0;
        b[3] = 19;
        assert_eq!(Ipv4Packet::new_checked(&b[..]), Err(WireError::Malformed));
    }

    #[test]
    fn options_and_setters() {
        let mut buf = [0u8; 24 + 8];
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_version(4);
        p.set_header_len(24);
        p.set_total_len(32);
        p.options_mut().copy_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        p.payload_mut().fill(7);
        p.set_more_frags(true);
        p.set_frag_offset(1480);
        p.set_dont_frag(true);
        p.set_dscp(46);
        p.set_ecn(1);
        p.set_ident(0x1234);
        p.set_ttl(2);
        p.set_protocol(6);
        p.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), &[7; 8]);
        assert!(p.more_frags() && p.dont_frag() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        assert_eq!((p.dscp(), p.ecn(), p.ident()), (46, 1, 0x1234));
        assert!(p.verify_checksum());
    }

    #[test]
    fn decrement_ttl_keeps_checksum_valid() {
        let mut buf = packet(0x73);
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        for expect in (0..64).rev() {
            assert_eq!(p.decrement_ttl(), expect);
            assert!(p.verify_checksum());
            let inc = p.checksum();
            p.fill_checksum();
            assert_eq!(p.checksum(), inc);
        }
        assert_eq!(p.decrement_ttl(), 0);
    }

    #[test]
    fn length_setters_after_check_never_panic() {
        let mut buf = packet(40);
        buf[3] = 40;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_header_len(60);
        p.set_total_len(0xFFFF);
        assert_eq!(p.options().len(), 20);
        assert!(p.payload().is_empty());
        p.set_header_len(0);
        p.set_total_len(0);
        assert!(p.options().is_empty());
        assert_eq!(p.payload().len(), 0);
        assert_eq!(p.payload_mut().len(), 0);
    }

    #[test]
    fn repr_round_trip() {
        let repr = Ipv4Repr {
            src_addr: Ipv4Addr::new(1, 2, 3, 4),
            dst_addr: Ipv4Addr::new(5, 6, 7, 8),
            protocol: 17,
            payload_len: 10,
            ttl: 9,
        };
        let mut buf = vec![0u8; repr.buffer_len() + 10];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Ipv4Repr::parse(&p).unwrap(), repr);
    }
}
