//! ICMPv4 messages (RFC 792). The message is the whole buffer: pass the
//! IPv4 payload.

use super::checksum;
use super::{get_u16, get_u32, set_u16, set_u32, WireError};

/// Type, code, checksum and the 4-byte rest-of-header.
pub const HEADER_LEN: usize = 8;

/// ICMPv4 message types.
pub mod msg_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAM_PROBLEM: u8 = 12;
}

/// A view of an ICMPv4 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl Icmpv4Packet<&'static [u8]> {
    pub const HEADER_LEN: usize = HEADER_LEN;
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> Icmpv4Packet<T> {
        Icmpv4Packet { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<Icmpv4Packet<T>, WireError> {
        let p = Icmpv4Packet::new_unchecked(buffer);
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

    /// True for echo request and echo reply.
    #[inline]
    pub fn is_echo(&self) -> bool {
        matches!(self.msg_type(), msg_type::ECHO_REQUEST | msg_type::ECHO_REPLY)
    }

    /// Echo identifier (meaningful for echo request/reply).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        get_u16(self.b(), 4)
    }

    /// Echo sequence number (meaningful for echo request/reply).
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        get_u16(self.b(), 6)
    }

    /// The 4 bytes after the checksum, whatever the message type.
    #[inline]
    pub fn rest_of_header(&self) -> u32 {
        get_u32(self.b(), 4)
    }

    /// Everything after the 8-byte header (echo data, or the offending
    /// datagram's header for error messages).
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }

    /// Same as [`Self::data`].
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.data()
    }

    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.b())) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    #[inline]
    pub fn set_msg_type(&mut self, t: u8) {
        self.bm()[0] = t;
    }

    #[inline]
    pub fn set_msg_code(&mut self, c: u8) {
        self.bm()[1] = c;
    }

    #[inline]
    pub fn set_checksum(&mut self, ck: u16) {
        set_u16(self.bm(), 2, ck);
    }

    #[inline]
    pub fn set_echo_ident(&mut self, v: u16) {
        set_u16(self.bm(), 4, v);
    }

    #[inline]
    pub fn set_echo_seq_no(&mut self, v: u16) {
        set_u16(self.bm(), 6, v);
    }

    #[inline]
    pub fn set_rest_of_header(&mut self, v: u32) {
        set_u32(self.bm(), 4, v);
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.bm()[HEADER_LEN..]
    }

    /// Computes and stores the checksum over the whole message.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let ck = checksum::checksum(self.b());
        self.set_checksum(ck);
    }
}

/// The header of an ICMPv4 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv4Repr {
    EchoRequest {
        ident: u16,
        seq_no: u16,
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
    },
    /// Any other message: type, code and the raw rest-of-header.
    Other {
        msg_type: u8,
        msg_code: u8,
        rest_of_header: u32,
    },
}

impl Icmpv4Repr {
    /// Reads the header (checksum not verified; see
    /// [`Icmpv4Packet::verify_checksum`]). An echo with a non-zero code is
    /// reported as `Other`.
    pub fn parse<T: AsRef<[u8]>>(p: &Icmpv4Packet<T>) -> Result<Icmpv4Repr, WireError> {
        p.check_len()?;
        Ok(match (p.msg_type(), p.msg_code()) {
            (msg_type::ECHO_REQUEST, 0) => {
                Icmpv4Repr::EchoRequest { ident: p.echo_ident(), seq_no: p.echo_seq_no() }
            }
            (msg_type::ECHO_REPLY, 0) => {
                Icmpv4Repr::EchoReply { ident: p.echo_ident(), seq_no: p.echo_seq_no() }
            }
            (t, c) => {
                Icmpv4Repr::Other { msg_type: t, msg_code: c, rest_of_header: p.rest_of_header() }
            }
        })
    }

    /// Header length (data not included).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header and the checksum over the whole buffer, so put
    /// the data in place first (or call `fill_checksum` again after).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Icmpv4Packet<T>) {
        let (t, c, rest) = match *self {
            Icmpv4Repr::EchoRequest { ident, seq_no } => {
                (msg_type::ECHO_REQUEST, 0, ((ident as u32) << 16) | seq_no as u32)
            }
            Icmpv4Repr::EchoReply { ident, seq_no } => {
                (msg_type::ECHO_REPLY, 0, ((ident as u32) << 16) | seq_no as u32)
            }
            Icmpv4Repr::Other { msg_type, msg_code, rest_of_header } => {
                (msg_type, msg_code, rest_of_header)
            }
        };
        p.set_msg_type(t);
        p.set_msg_code(c);
        p.set_rest_of_header(rest);
        p.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ICMP part of `ping` on Linux: echo request, ident 0x1c46, seq 1,
    /// 8-byte timestamp + 0x10.. pattern, checksum field zeroed.
    fn ping() -> Vec<u8> {
        let mut d = vec![0x08, 0x00, 0x00, 0x00, 0x1c, 0x46, 0x00, 0x01];
        d.extend((0..56u8).map(|i| if i < 8 { 0x5a } else { i + 8 }));
        d
    }

    #[test]
    fn echo_fields_and_checksum() {
        let mut d = ping();
        let mut p = Icmpv4Packet::new_checked(&mut d[..]).unwrap();
        assert!(p.is_echo());
        assert_eq!((p.msg_type(), p.msg_code()), (8, 0));
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x1c46, 1));
        assert_eq!(p.data().len(), 56);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(
            Icmpv4Repr::parse(&p).unwrap(),
            Icmpv4Repr::EchoRequest { ident: 0x1c46, seq_no: 1 }
        );
        assert_eq!(Icmpv4Packet::new_checked(&d[..7]), Err(WireError::Truncated));
    }

    #[test]
    fn repr_round_trip() {
        for r in [
            Icmpv4Repr::EchoRequest { ident: 1, seq_no: 2 },
            Icmpv4Repr::EchoReply { ident: 3, seq_no: 4 },
            Icmpv4Repr::Other { msg_type: 3, msg_code: 4, rest_of_header: 1500 },
        ] {
            let mut buf = [0u8; 12];
            r.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
            let p = Icmpv4Packet::new_checked(&buf[..]).unwrap();
            assert!(p.verify_checksum());
            assert_eq!(Icmpv4Repr::parse(&p).unwrap(), r);
        }
    }
}
