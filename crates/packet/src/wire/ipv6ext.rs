//! IPv6 extension headers (RFC 8200 §4; AH is RFC 4302) and the walk from
//! the fixed header to the upper-layer header.
//!
//! Every extension header starts with `next header` and a length byte;
//! [`Ipv6ExtHeader`] views any of them (the length unit depends on the
//! kind: AH counts 4-byte words minus 2, the others 8-byte units minus 1,
//! the fragment header is always 8 bytes). [`Ipv6FragHeader`] adds the
//! fragment fields.
//!
//! [`walk`] follows the chain with a bound on the number of headers
//! ([`MAX_EXT_HEADERS`]) and on their total length ([`MAX_EXT_BYTES`]):
//!
//! * hop-by-hop (0, only directly after the fixed header), routing (43),
//!   fragment (44), destination options (60), AH (51), mobility (135), HIP
//!   (139), shim6 (140) and the experimental 253/254 are walked through;
//! * ESP (50) and No Next Header (59) end the walk: what follows is not
//!   readable (encrypted) or nothing;
//! * a non-first fragment (offset ≠ 0) ends the walk: the rest is fragment
//!   data;
//! * anything else is the upper-layer protocol.

use super::{get_u16, get_u32, ip_proto, set_u16, set_u32, WireError};

/// Most extension headers the walk goes through before it gives up with
/// [`WireError::Unsupported`].
pub const MAX_EXT_HEADERS: usize = 8;
/// Most bytes of extension headers (their sum) the walk accepts before it
/// gives up with [`WireError::Unsupported`].
pub const MAX_EXT_BYTES: usize = 1024;
/// Length of the fragment header.
pub const FRAG_HEADER_LEN: usize = 8;
/// Smallest extension header (and the length unit of all but AH).
pub const MIN_LEN: usize = 8;

/// True if `nh` is an extension header [`walk`] goes through (not ESP or
/// No Next Header, which end it).
#[inline(always)]
pub fn is_extension(nh: u8) -> bool {
    matches!(
        nh,
        ip_proto::HOPOPT
            | ip_proto::IPV6_ROUTE
            | ip_proto::IPV6_FRAG
            | ip_proto::IPV6_OPTS
            | ip_proto::AH
            | ip_proto::MOBILITY
            | ip_proto::HIP
            | ip_proto::SHIM6
            | 253
            | 254
    )
}

/// The length in bytes of an extension header of kind `kind` whose length
/// byte is `len_field`.
#[inline(always)]
pub fn header_len(kind: u8, len_field: u8) -> usize {
    match kind {
        ip_proto::AH => (len_field as usize + 2) * 4,
        ip_proto::IPV6_FRAG => FRAG_HEADER_LEN,
        _ => (len_field as usize + 1) * 8,
    }
}

/// A view of one extension header of kind `kind` (the `next header` value
/// that named it).
///
/// After [`Ipv6ExtHeader::new_checked`] the whole header (its length
/// field's worth) is in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6ExtHeader<T: AsRef<[u8]>> {
    buffer: T,
    kind: u8,
}

impl<T: AsRef<[u8]>> Ipv6ExtHeader<T> {
    #[inline]
    pub fn new_unchecked(buffer: T, kind: u8) -> Ipv6ExtHeader<T> {
        Ipv6ExtHeader { buffer, kind }
    }

    #[inline]
    pub fn new_checked(buffer: T, kind: u8) -> Result<Ipv6ExtHeader<T>, WireError> {
        let h = Ipv6ExtHeader::new_unchecked(buffer, kind);
        h.check_len()?;
        Ok(h)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < 2 || self.header_len() > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn kind(&self) -> u8 {
        self.kind
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// The raw length byte.
    #[inline]
    pub fn len_field(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// The header's length in bytes.
    #[inline]
    pub fn header_len(&self) -> usize {
        header_len(self.kind, self.len_field())
    }

    /// The bytes after next header and length, to the header's end
    /// (clamped to the buffer).
    #[inline]
    pub fn data(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[2.min(b.len())..self.header_len().clamp(2.min(b.len()), b.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6ExtHeader<T> {
    pub fn set_next_header(&mut self, nh: u8) {
        self.buffer.as_mut()[0] = nh;
    }

    pub fn set_len_field(&mut self, v: u8) {
        self.buffer.as_mut()[1] = v;
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        let end = self.header_len().clamp(2, self.buffer.as_ref().len());
        &mut self.buffer.as_mut()[2..end]
    }
}

/// A hop-by-hop, routing, destination options or AH header: its kind, the
/// next header and its length in bytes. `emit` writes the two first bytes
/// and zeroes the rest (zeros are Pad1 options: a valid hop-by-hop or
/// destination options header; a routing header of type 0 with no segment
/// left, which a node ignores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6ExtRepr {
    pub kind: u8,
    pub next_header: u8,
    /// Length in bytes: a multiple of 8 from 8 to 2048 (AH: of 4, from 12
    /// to 1028).
    pub len: usize,
}

impl Ipv6ExtRepr {
    pub fn parse<T: AsRef<[u8]>>(h: &Ipv6ExtHeader<T>) -> Result<Ipv6ExtRepr, WireError> {
        h.check_len()?;
        if h.kind == ip_proto::IPV6_FRAG {
            return Err(WireError::Unsupported);
        }
        Ok(Ipv6ExtRepr { kind: h.kind, next_header: h.next_header(), len: h.header_len() })
    }

    pub const fn buffer_len(&self) -> usize {
        self.len
    }

    /// The length byte for `len` bytes, or `Malformed` if the kind cannot
    /// have that length.
    pub fn len_field(&self) -> Result<u8, WireError> {
        let (unit, minus) = if self.kind == ip_proto::AH { (4, 2) } else { (8, 1) };
        if !self.len.is_multiple_of(unit)
            || self.len / unit < minus
            || self.len / unit - minus > 255
        {
            return Err(WireError::Malformed);
        }
        Ok((self.len / unit - minus) as u8)
    }

    /// Writes the header into the first `len` bytes of the buffer (which
    /// must hold them; a length the kind cannot have is `Malformed`).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        h: &mut Ipv6ExtHeader<T>,
    ) -> Result<(), WireError> {
        let lf = self.len_field()?;
        if h.buffer.as_ref().len() < self.len {
            return Err(WireError::Truncated);
        }
        h.kind = self.kind;
        h.set_next_header(self.next_header);
        h.set_len_field(lf);
        h.buffer.as_mut()[2..self.len].fill(0);
        Ok(())
    }
}

/// A view of the fragment header (RFC 8200 §4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6FragHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6FragHeader<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> Ipv6FragHeader<T> {
        Ipv6FragHeader { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<Ipv6FragHeader<T>, WireError> {
        let h = Ipv6FragHeader::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < FRAG_HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        get_u16(self.buffer.as_ref(), 2) & 0xFFF8
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        self.buffer.as_ref()[3] & 1 != 0
    }

    #[inline]
    pub fn ident(&self) -> u32 {
        get_u32(self.buffer.as_ref(), 4)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6FragHeader<T> {
    pub fn set_next_header(&mut self, nh: u8) {
        self.buffer.as_mut()[0] = nh;
    }

    /// Sets the offset (in bytes, a multiple of 8) and the M flag.
    pub fn set_offset_more(&mut self, offset: u16, more: bool) {
        set_u16(self.buffer.as_mut(), 2, (offset & 0xFFF8) | more as u16);
    }

    pub fn set_ident(&mut self, id: u32) {
        set_u32(self.buffer.as_mut(), 4, id);
    }
}

/// The fields of a fragment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6FragRepr {
    pub next_header: u8,
    /// Offset in bytes (a multiple of 8).
    pub offset: u16,
    pub more: bool,
    pub ident: u32,
}

impl Ipv6FragRepr {
    pub fn parse<T: AsRef<[u8]>>(h: &Ipv6FragHeader<T>) -> Result<Ipv6FragRepr, WireError> {
        h.check_len()?;
        Ok(Ipv6FragRepr {
            next_header: h.next_header(),
            offset: h.frag_offset(),
            more: h.more_frags(),
            ident: h.ident(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        FRAG_HEADER_LEN
    }

    /// Writes the 8 bytes (reserved fields zero). The buffer must hold them.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Ipv6FragHeader<T>) {
        h.set_next_header(self.next_header);
        h.buffer.as_mut()[1] = 0;
        h.set_offset_more(self.offset, self.more);
        h.set_ident(self.ident);
    }
}

/// What [`walk`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Walk {
    /// The protocol after the last extension header walked: the
    /// upper-layer protocol, or ESP (50) / No Next Header (59), or for a
    /// non-first fragment the next header its fragment header names.
    pub proto: u8,
    /// Bytes of extension headers walked (the upper-layer header starts
    /// this far into the payload).
    pub ext_len: usize,
    /// The fragment header's fields, if there was one: the one that
    /// stopped the walk (offset ≠ 0), else the first, with `more` set if
    /// any of the fragment headers walked had it.
    pub frag: Option<Ipv6FragRepr>,
}

impl Walk {
    /// True if this is a fragment whose offset is not 0: the walk stopped
    /// at its fragment header.
    #[inline]
    pub fn later_fragment(&self) -> bool {
        matches!(self.frag, Some(f) if f.offset != 0)
    }
}

/// Walks the extension headers of an IPv6 packet whose fixed header says
/// `next_header` and whose payload is `payload` (the `payload_len` bytes
/// after the fixed header).
///
/// Errors: [`WireError::Truncated`] if a header runs past the payload,
/// [`WireError::Malformed`] for a hop-by-hop header that is not the first,
/// [`WireError::Unsupported`] for more than [`MAX_EXT_HEADERS`] headers or
/// [`MAX_EXT_BYTES`] bytes of them.
#[inline(always)]
pub fn walk(next_header: u8, payload: &[u8]) -> Result<Walk, WireError> {
    let mut nh = next_header;
    let mut off = 0usize;
    let mut n = 0usize;
    let mut frag = None;
    while is_extension(nh) {
        if n == MAX_EXT_HEADERS {
            return Err(WireError::Unsupported);
        }
        if nh == ip_proto::HOPOPT && n != 0 {
            return Err(WireError::Malformed);
        }
        if payload.len() < off + MIN_LEN {
            return Err(WireError::Truncated);
        }
        let h = &payload[off..];
        let len = header_len(nh, h[1]);
        if off + len > MAX_EXT_BYTES {
            return Err(WireError::Unsupported);
        }
        if payload.len() < off + len {
            return Err(WireError::Truncated);
        }
        let kind = nh;
        nh = h[0];
        off += len;
        n += 1;
        if kind == ip_proto::IPV6_FRAG {
            let offset = get_u16(h, 2) & 0xFFF8;
            let more = h[3] & 1 != 0;
            let f = Ipv6FragRepr { next_header: nh, offset, more, ident: get_u32(h, 4) };
            if offset != 0 {
                frag = Some(f);
                break;
            }
            // Several fragment headers (pathological): keep the first,
            // a fragment if any of them says more follow.
            frag = Some(match frag {
                None => f,
                Some(first) => Ipv6FragRepr { more: first.more || more, ..first },
            });
        }
    }
    Ok(Walk { proto: nh, ext_len: off, frag })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(parts: &[(u8, u8, usize)]) -> Vec<u8> {
        // (kind, next, len)
        let mut out = Vec::new();
        for &(kind, next_header, len) in parts {
            let mut b = vec![0u8; len];
            Ipv6ExtRepr { kind, next_header, len }
                .emit(&mut Ipv6ExtHeader::new_unchecked(&mut b[..], kind))
                .unwrap();
            out.extend_from_slice(&b);
        }
        out
    }

    #[test]
    fn walks_a_chain_to_the_upper_layer() {
        let mut p = chain(&[(0, 60, 8), (60, 43, 16), (43, 51, 24), (51, 17, 12)]);
        p.extend_from_slice(&[0u8; 8]);
        let w = walk(0, &p).unwrap();
        assert_eq!(w, Walk { proto: 17, ext_len: 60, frag: None });
        // ESP and No Next Header end it.
        assert_eq!(walk(50, &p).unwrap(), Walk { proto: 50, ext_len: 0, frag: None });
        assert_eq!(walk(59, &[]).unwrap(), Walk { proto: 59, ext_len: 0, frag: None });
        // A header past the payload.
        assert_eq!(walk(0, &p[..20]), Err(WireError::Truncated));
        assert_eq!(walk(0, &p[..4]), Err(WireError::Truncated));
        // Hop-by-hop not first.
        let p = chain(&[(60, 0, 8), (0, 6, 8)]);
        assert_eq!(walk(60, &p), Err(WireError::Malformed));
        // Too many headers, too many bytes.
        let p = chain(&[(60, 60, 8); 9]);
        assert_eq!(walk(60, &p), Err(WireError::Unsupported));
        let mut eight = [(60, 60, 8); 8];
        eight[7].1 = 6;
        let p = chain(&eight);
        assert_eq!(walk(60, &p).unwrap(), Walk { proto: 6, ext_len: 64, frag: None });
        let p = chain(&[(60, 60, 1024), (60, 6, 8)]);
        assert_eq!(walk(60, &p), Err(WireError::Unsupported));
    }

    #[test]
    fn fragment_headers() {
        let mut b = [0u8; 16];
        let r = Ipv6FragRepr { next_header: 6, offset: 0, more: true, ident: 0xDEAD_BEEF };
        r.emit(&mut Ipv6FragHeader::new_unchecked(&mut b[..]));
        let h = Ipv6FragHeader::new_checked(&b[..]).unwrap();
        assert_eq!(Ipv6FragRepr::parse(&h).unwrap(), r);
        let w = walk(44, &b).unwrap();
        assert_eq!((w.proto, w.ext_len, w.frag, w.later_fragment()), (6, 8, Some(r), false));
        let r = Ipv6FragRepr { next_header: 17, offset: 1448, more: false, ident: 7 };
        r.emit(&mut Ipv6FragHeader::new_unchecked(&mut b[..]));
        let w = walk(44, &b).unwrap();
        assert_eq!((w.proto, w.frag, w.later_fragment()), (17, Some(r), true));
        assert_eq!(Ipv6FragHeader::new_checked(&b[..7]), Err(WireError::Truncated));
    }

    #[test]
    fn ext_repr_lengths() {
        let r = Ipv6ExtRepr { kind: 51, next_header: 6, len: 12 };
        assert_eq!(r.len_field(), Ok(1));
        let r = Ipv6ExtRepr { kind: 60, next_header: 6, len: 12 };
        assert_eq!(r.len_field(), Err(WireError::Malformed));
        let r = Ipv6ExtRepr { kind: 0, next_header: 6, len: 2048 };
        assert_eq!(r.len_field(), Ok(255));
        let mut b = [0xFFu8; 2048];
        r.emit(&mut Ipv6ExtHeader::new_unchecked(&mut b[..], 0)).unwrap();
        let h = Ipv6ExtHeader::new_checked(&b[..], 0).unwrap();
        assert_eq!(Ipv6ExtRepr::parse(&h).unwrap(), r);
        assert_eq!(h.data().len(), 2046);
        assert_eq!(Ipv6ExtHeader::new_checked(&b[..2047], 0), Err(WireError::Truncated));
        assert_eq!(Ipv6ExtHeader::new_checked(&b[..1], 0), Err(WireError::Truncated));
    }
}
