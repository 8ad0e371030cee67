//! The coding header: 12 bytes in front of every source, coded and recoded
//! symbol, followed (recoded packets only) by the explicit coefficient
//! vector. Layout (all integers big-endian), see `docs/network-coding.md`:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version (high nibble, = 1) and kind (low nibble, [`Kind`]) |
//! | 1 | 1 | count: generation size (block) or window length (sliding coded) |
//! | 2 | 4 | id: generation id (block) or sequence number (sliding) |
//! | 6 | 2 | index: symbol index (block source) or coded packet number |
//! | 8 | 4 | seed: coefficient seed (seeded coded kinds), else 0 |
//! | 12 | count | coefficients (recoded kind only) |

use thiserror::Error;

/// Length of the fixed part of the header.
pub const HEADER_LEN: usize = 12;
/// Header format version carried in the high nibble of byte 0.
pub const VERSION: u8 = 1;

/// What a packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Block code: an original payload, unchanged (systematic part).
    BlockSource = 0,
    /// Block code: a coded symbol whose coefficients derive from `seed`.
    BlockCoded = 1,
    /// Block code: a recoded symbol with explicit coefficients.
    BlockRecoded = 2,
    /// Sliding window: an original payload with its sequence number.
    SlidingSource = 3,
    /// Sliding window: a coded symbol over `count` sources from `id`.
    SlidingCoded = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            0 => Kind::BlockSource,
            1 => Kind::BlockCoded,
            2 => Kind::BlockRecoded,
            3 => Kind::SlidingSource,
            4 => Kind::SlidingCoded,
            _ => return None,
        })
    }

    /// Whether the payload is an original (not a combination).
    pub fn is_source(self) -> bool {
        matches!(self, Kind::BlockSource | Kind::SlidingSource)
    }
}

/// Why a header does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("coding header truncated: {0} bytes, need {HEADER_LEN}")]
    Truncated(usize),
    #[error("coding header version {0} is not supported (expected {VERSION})")]
    Version(u8),
    #[error("unknown coding packet kind {0}")]
    Kind(u8),
    #[error("coding header count is 0")]
    ZeroCount,
    #[error("symbol index {index} is outside a generation of {count}")]
    Index { index: u16, count: u8 },
    #[error("recoded packet has {have} coefficient bytes, needs {need}")]
    Coefficients { have: usize, need: usize },
}

/// The fixed header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub count: u8,
    pub id: u32,
    pub index: u16,
    pub seed: u32,
}

/// A parsed packet: its header, explicit coefficients (recoded only, else
/// empty) and the symbol bytes after them.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub header: Header,
    pub coefficients: &'a [u8],
    pub payload: &'a [u8],
}

impl Header {
    /// Bytes this header takes on the wire, including explicit coefficients.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + if self.kind == Kind::BlockRecoded { self.count as usize } else { 0 }
    }

    /// Parse and validate a header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Parsed<'_>, HeaderError> {
        if buf.len() < HEADER_LEN {
            return Err(HeaderError::Truncated(buf.len()));
        }
        let version = buf[0] >> 4;
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        let kind = Kind::from_u8(buf[0] & 15).ok_or(HeaderError::Kind(buf[0] & 15))?;
        let header = Header {
            kind,
            count: buf[1],
            id: u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]),
            index: u16::from_be_bytes([buf[6], buf[7]]),
            seed: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        };
        if header.count == 0 && kind != Kind::SlidingSource {
            return Err(HeaderError::ZeroCount);
        }
        if kind == Kind::BlockSource && header.index >= header.count as u16 {
            return Err(HeaderError::Index { index: header.index, count: header.count });
        }
        let need = header.wire_len();
        if buf.len() < need {
            return Err(HeaderError::Coefficients {
                have: buf.len() - HEADER_LEN,
                need: need - HEADER_LEN,
            });
        }
        Ok(Parsed { header, coefficients: &buf[HEADER_LEN..need], payload: &buf[need..] })
    }

    /// Write the fixed part into `buf[..HEADER_LEN]` (the caller writes the
    /// coefficients of a recoded packet after it).
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = (VERSION << 4) | self.kind as u8;
        buf[1] = self.count;
        buf[2..6].copy_from_slice(&self.id.to_be_bytes());
        buf[6..8].copy_from_slice(&self.index.to_be_bytes());
        buf[8..12].copy_from_slice(&self.seed.to_be_bytes());
    }
}

/// The coefficient generator: SplitMix64 seeded with the 32-bit seed; each
/// output word gives 8 bytes, least significant first; zero bytes are
/// skipped so every coefficient is non-zero. Fills `out`.
pub fn coefficients(seed: u32, out: &mut [u8]) {
    let mut state = seed as u64;
    let mut i = 0;
    while i < out.len() {
        let mut word = splitmix64(&mut state);
        for _ in 0..8 {
            let b = word as u8;
            word >>= 8;
            if b != 0 && i < out.len() {
                out[i] = b;
                i += 1;
            }
        }
    }
}

/// One step of SplitMix64 (Steele, Lea, Flood 2014).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Frame a payload as a symbol: 2-byte big-endian length, then the bytes.
/// Shorter symbols are implicitly zero-padded when combined with longer
/// ones, so the length recovers the original size after decoding.
pub fn write_symbol(payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
}

/// The original payload inside a decoded symbol, `None` if the length
/// field does not fit (a corrupted or wrongly combined symbol).
pub fn read_symbol(symbol: &[u8]) -> Option<&[u8]> {
    let len = u16::from_be_bytes([*symbol.first()?, *symbol.get(1)?]) as usize;
    symbol.get(2..2 + len)
}

/// Largest payload a symbol can frame.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn coefficients_are_nonzero_and_repeatable() {
        let mut a = [0u8; 300];
        let mut b = [0u8; 300];
        coefficients(77, &mut a);
        coefficients(77, &mut b);
        assert_eq!(a, b);
        assert!(a.iter().all(|&c| c != 0));
        coefficients(78, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(Header::parse(&[0x10; 5]).unwrap_err(), HeaderError::Truncated(5));
        let mut b = [0u8; 12];
        Header { kind: Kind::BlockSource, count: 4, id: 1, index: 3, seed: 0 }.emit(&mut b);
        assert!(Header::parse(&b).is_ok());
        b[7] = 4;
        assert!(matches!(Header::parse(&b), Err(HeaderError::Index { .. })));
        b[0] = 0x20;
        assert_eq!(Header::parse(&b).unwrap_err(), HeaderError::Version(2));
        b[0] = 0x19;
        assert_eq!(Header::parse(&b).unwrap_err(), HeaderError::Kind(9));
        let mut r = [0u8; 14];
        Header { kind: Kind::BlockRecoded, count: 4, id: 1, index: 0, seed: 0 }.emit(&mut r);
        assert!(matches!(Header::parse(&r), Err(HeaderError::Coefficients { have: 2, need: 4 })));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_roundtrips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Header::parse(&bytes) {
                let mut out = vec![0u8; HEADER_LEN];
                p.header.emit(&mut out);
                prop_assert_eq!(&out[..], &bytes[..HEADER_LEN]);
                prop_assert_eq!(p.coefficients.len() + p.payload.len() + HEADER_LEN, bytes.len());
            }
        }

        #[test]
        fn symbol_roundtrip(payload in proptest::collection::vec(any::<u8>(), 0..300), pad in 0usize..40) {
            let mut s = Vec::new();
            write_symbol(&payload, &mut s);
            s.resize(s.len() + pad, 0);
            prop_assert_eq!(read_symbol(&s), Some(&payload[..]));
        }
    }
}
