//! The probe header carried at the start of every probe payload.
//!
//! Layout (network byte order), 24 bytes, the rest of the payload is zero
//! padding up to the requested payload size:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `BRDP` |
//! | 4 | 4 | run id (tells repetitions and throughput steps apart, so a late packet of one run is never counted in the next) |
//! | 8 | 8 | sequence number, 0-based within the run |
//! | 16 | 8 | send timestamp, `CLOCK_MONOTONIC` ns of the sender |

/// Bytes the header takes; the smallest payload the probe can send.
pub const HEADER_LEN: usize = 24;

/// `BRDP` in ASCII.
pub const MAGIC: u32 = 0x4252_4450;

/// Why a received payload is not a probe packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload of {0} bytes is shorter than the {HEADER_LEN}-byte probe header")]
    Truncated(usize),
    #[error("payload does not start with the probe magic (found {0:#010x})")]
    BadMagic(u32),
}

/// The fields of one probe packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeHeader {
    pub run: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

impl ProbeHeader {
    /// Write the header at the start of `buf`.
    pub fn write(&self, buf: &mut [u8]) -> Result<(), PayloadError> {
        if buf.len() < HEADER_LEN {
            return Err(PayloadError::Truncated(buf.len()));
        }
        buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        buf[4..8].copy_from_slice(&self.run.to_be_bytes());
        buf[8..16].copy_from_slice(&self.seq.to_be_bytes());
        buf[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
        Ok(())
    }

    /// Read the header from the start of `buf`.
    pub fn read(buf: &[u8]) -> Result<ProbeHeader, PayloadError> {
        if buf.len() < HEADER_LEN {
            return Err(PayloadError::Truncated(buf.len()));
        }
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[8 - r.len()..].copy_from_slice(&buf[r]);
            u64::from_be_bytes(b)
        };
        let magic = word(0..4) as u32;
        if magic != MAGIC {
            return Err(PayloadError::BadMagic(magic));
        }
        Ok(ProbeHeader { run: word(4..8) as u32, seq: word(8..16), sent_ns: word(16..24) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_and_foreign_payloads_are_rejected() {
        assert_eq!(ProbeHeader::read(&[0u8; 23]), Err(PayloadError::Truncated(23)));
        assert_eq!(ProbeHeader::read(&[0u8; 64]), Err(PayloadError::BadMagic(0)));
        let h = ProbeHeader { run: 1, seq: 2, sent_ns: 3 };
        assert_eq!(h.write(&mut [0u8; 10]), Err(PayloadError::Truncated(10)));
    }

    proptest! {
        #[test]
        fn header_round_trips(run: u32, seq: u64, sent_ns: u64, pad in 0usize..1500) {
            let h = ProbeHeader { run, seq, sent_ns };
            let mut buf = vec![0u8; HEADER_LEN + pad];
            h.write(&mut buf).unwrap();
            prop_assert_eq!(&buf[..4], b"BRDP");
            prop_assert_eq!(ProbeHeader::read(&buf).unwrap(), h);
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ProbeHeader::read(&buf);
        }
    }
}
