//! ICMPv6 messages (RFC 4443). The message is the whole buffer; its
//! checksum covers the IPv6 pseudo header.

use super::checksum;
use super::{get_u16, get_u32, ip_proto, set_u16, set_u32, WireError};
use std::net::Ipv6Addr;

pub const HEADER_LEN: usize = 8;

/// ICMPv6 message types.
pub mod msg_type {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
}

/// A view of an ICMPv6 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl Icmpv6Packet<&'static [u8]> {
    pub const HEADER_LEN: usize = HEADER_LEN;
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> Icmpv6Packet<T> {
        Icmpv6Packet { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<Icmpv6Packet<T>, WireError> {
        let p = Icmpv6Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.b()[0]
    }

    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.b()[1]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.b(), 2)
    }

    #[inline]
    pub fn echo_ident(&self) -> u16 {
        get_u16(self.b(), 4)
    }

    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        get_u16(self.b(), 6)
    }

    #[inline]
    pub fn rest_of_header(&self) -> u32 {
        get_u32(self.b(), 4)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }

    fn sum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> u16 {
        let b = self.b();
        let ph = checksum::pseudo_header_v6(src, dst, ip_proto::ICMPV6, b.len());
        checksum::fold(ph + checksum::sum(b))
    }

    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        self.sum(src, dst) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_msg_type(&mut self, t: u8) {
        self.bm()[0] = t;
    }

    pub fn set_msg_code(&mut self, c: u8) {
        self.bm()[1] = c;
    }

    pub fn set_checksum(&mut self, ck: u16) {
        set_u16(self.bm(), 2, ck);
    }

    pub fn set_echo_ident(&mut self, v: u16) {
        set_u16(self.bm(), 4, v);
    }

    pub fn set_echo_seq_no(&mut self, v: u16) {
        set_u16(self.bm(), 6, v);
    }

    pub fn set_rest_of_header(&mut self, v: u32) {
        set_u32(self.bm(), 4, v);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.bm()[HEADER_LEN..]
    }

    /// Computes and stores the checksum (pseudo header + whole message).
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let ck = !self.sum(src, dst);
        self.set_checksum(ck);
    }
}

/// The header of an ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv6Repr {
    EchoRequest { ident: u16, seq_no: u16 },
    EchoReply { ident: u16, seq_no: u16 },
    Other { msg_type: u8, msg_code: u8, rest_of_header: u32 },
}

impl Icmpv6Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Icmpv6Packet<T>) -> Result<Icmpv6Repr, WireError> {
        p.check_len()?;
        Ok(match (p.msg_type(), p.msg_code()) {
            (msg_type::ECHO_REQUEST, 0) => {
                Icmpv6Repr::EchoRequest { ident: p.echo_ident(), seq_no: p.echo_seq_no() }
            }
            (msg_type::ECHO_REPLY, 0) => {
                Icmpv6Repr::EchoReply { ident: p.echo_ident(), seq_no: p.echo_seq_no() }
            }
            (t, c) => {
                Icmpv6Repr::Other { msg_type: t, msg_code: c, rest_of_header: p.rest_of_header() }
            }
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header and the checksum over the whole buffer (put the
    /// payload in place first).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut Icmpv6Packet<T>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) {
        let (t, c, rest) = match *self {
            Icmpv6Repr::EchoRequest { ident, seq_no } => {
                (msg_type::ECHO_REQUEST, 0, ((ident as u32) << 16) | seq_no as u32)
            }
            Icmpv6Repr::EchoReply { ident, seq_no } => {
                (msg_type::ECHO_REPLY, 0, ((ident as u32) << 16) | seq_no as u32)
            }
            Icmpv6Repr::Other { msg_type, msg_code, rest_of_header } => {
                (msg_type, msg_code, rest_of_header)
            }
        };
        p.set_msg_type(t);
        p.set_msg_code(c);
        p.set_rest_of_header(rest);
        p.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_round_trip_and_checksum() {
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("fe80::1".parse().unwrap(), "fe80::2".parse().unwrap());
        let r = Icmpv6Repr::EchoRequest { ident: 0x1234, seq_no: 7 };
        let mut buf = [0u8; 8 + 5];
        buf[8..].copy_from_slice(b"hello");
        r.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), a, b);
        let p = Icmpv6Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum(a, b));
        assert!(!p.verify_checksum(a, a));
        assert_eq!(Icmpv6Repr::parse(&p).unwrap(), r);
        assert_eq!(p.payload(), b"hello");
        assert_eq!(Icmpv6Packet::new_checked(&buf[..7]), Err(WireError::Truncated));
    }
}
