//! Classic pcap files: reader and writer.
//!
//! Reads both byte orders and both microsecond (`0xa1b2c3d4`) and
//! nanosecond (`0xa1b23c4d`) magics, any link type (the ports in
//! [`crate::capture`] turn the ones braid uses into Ethernet). Every inconsistency (bad magic, truncated header or record, capture
//! length above the snap length or the original length) is an error naming
//! the record number and byte offset; nothing panics. Writes nanosecond
//! little-endian files, which Wireshark and tshark open.

use std::io::{ErrorKind, Read, Write};

const MAGIC_MICRO: u32 = 0xa1b2_c3d4;
const MAGIC_NANO: u32 = 0xa1b2_3c4d;
/// `LINKTYPE_ETHERNET` / `DLT_EN10MB`.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Global header length.
pub const FILE_HEADER_LEN: usize = 24;
/// Per-record header length.
pub const RECORD_HEADER_LEN: usize = 16;
/// Snap length the writer declares (and the largest the reader accepts).
pub const MAX_SNAPLEN: u32 = 262_144;

/// Error reading or writing a pcap file.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes do not follow the format. `record` is 1-based, `None` for
    /// the file header.
    #[error("{}byte offset {offset}: {message}", record.map(|r| format!("record {r} at ")).unwrap_or_default())]
    Format { record: Option<u64>, offset: u64, message: String },
}

/// One record's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Timestamp in nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Bytes present in the file.
    pub caplen: u32,
    /// Bytes the frame had on the wire.
    pub orig_len: u32,
}

/// Streaming pcap reader.
pub struct PcapReader<R: Read> {
    inner: R,
    swapped: bool,
    nanos: bool,
    snaplen: u32,
    linktype: u32,
    /// Byte offset of the next unread byte.
    offset: u64,
    /// Records read so far.
    records: u64,
}

/// Read exactly `buf.len()` bytes: `Ok(Ok(true))` when read, `Ok(Ok(false))`
/// on a clean EOF before the first byte, `Ok(Err(got))` on EOF after `got`
/// bytes. Shared with [`crate::pcapng`].
pub(crate) fn read_full<R: Read>(
    r: &mut R,
    buf: &mut [u8],
) -> std::io::Result<Result<bool, usize>> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(if got == 0 { Ok(false) } else { Err(got) }),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Ok(true))
}

impl<R: Read> PcapReader<R> {
    /// Read and check the file header.
    pub fn new(mut inner: R) -> Result<Self, PcapError> {
        let mut h = [0u8; FILE_HEADER_LEN];
        let io = |source| PcapError::Io { what: "reading the pcap file header".into(), source };
        match read_full(&mut inner, &mut h).map_err(io)? {
            Ok(true) => {}
            Ok(false) => {
                return Err(PcapError::Format {
                    record: None,
                    offset: 0,
                    message: "empty file: no pcap file header".into(),
                })
            }
            Err(got) => {
                return Err(PcapError::Format {
                    record: None,
                    offset: got as u64,
                    message: format!(
                        "truncated pcap file header: {got} of {FILE_HEADER_LEN} bytes"
                    ),
                })
            }
        }
        let magic_le = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let (swapped, nanos) = match (magic_le, magic_le.swap_bytes()) {
            (MAGIC_MICRO, _) => (false, false),
            (MAGIC_NANO, _) => (false, true),
            (_, MAGIC_MICRO) => (true, false),
            (_, MAGIC_NANO) => (true, true),
            _ => {
                let hint = if &h[0..4] == b"\x0a\x0d\x0d\x0a" {
                    " (this is pcapng: read it with braid_io::pcapng or braid_io::capture)"
                } else {
                    ""
                };
                return Err(PcapError::Format {
                    record: None,
                    offset: 0,
                    message: format!(
                        "bad magic 0x{:02x}{:02x}{:02x}{:02x}: not a classic pcap file{hint}",
                        h[0], h[1], h[2], h[3]
                    ),
                });
            }
        };
        let u16_at = |i: usize| {
            let v = u16::from_le_bytes([h[i], h[i + 1]]);
            if swapped {
                v.swap_bytes()
            } else {
                v
            }
        };
        let u32_at = |i: usize| {
            let v = u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            if swapped {
                v.swap_bytes()
            } else {
                v
            }
        };
        let (major, minor) = (u16_at(4), u16_at(6));
        if major != 2 {
            return Err(PcapError::Format {
                record: None,
                offset: 4,
                message: format!("unsupported pcap version {major}.{minor} (expected 2.x)"),
            });
        }
        let snaplen = u32_at(16);
        if snaplen == 0 {
            return Err(PcapError::Format {
                record: None,
                offset: 16,
                message: "snap length is 0".into(),
            });
        }
        // The upper bits may carry FCS information; the link type is the low 16.
        let linktype = u32_at(20) & 0xffff;
        Ok(PcapReader {
            inner,
            swapped,
            nanos,
            snaplen,
            linktype,
            offset: FILE_HEADER_LEN as u64,
            records: 0,
        })
    }

    /// The declared snap length.
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    /// The file's `LINKTYPE_*`.
    pub fn linktype(&self) -> u32 {
        self.linktype
    }

    /// True if timestamps have nanosecond resolution.
    pub fn is_nanosecond(&self) -> bool {
        self.nanos
    }

    /// Records read so far.
    pub fn records_read(&self) -> u64 {
        self.records
    }

    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if self.swapped {
            v.swap_bytes()
        } else {
            v
        }
    }

    /// Read the next record into `data` (replacing its contents). `Ok(None)`
    /// at a clean end of file.
    pub fn next_record(&mut self, data: &mut Vec<u8>) -> Result<Option<RecordHeader>, PcapError> {
        let record = self.records + 1;
        let start = self.offset;
        let mut h = [0u8; RECORD_HEADER_LEN];
        let io = |source| PcapError::Io {
            what: format!("reading record {record} at byte offset {start}"),
            source,
        };
        match read_full(&mut self.inner, &mut h).map_err(io)? {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(got) => {
                return Err(PcapError::Format {
                    record: Some(record),
                    offset: start,
                    message: format!("truncated record header: {got} of {RECORD_HEADER_LEN} bytes"),
                })
            }
        }
        let (ts_sec, ts_frac) = (self.u32(&h[0..4]), self.u32(&h[4..8]));
        let (caplen, orig_len) = (self.u32(&h[8..12]), self.u32(&h[12..16]));
        let frac_limit = if self.nanos { 1_000_000_000 } else { 1_000_000 };
        let bad =
            |message: String| PcapError::Format { record: Some(record), offset: start, message };
        if caplen > self.snaplen {
            return Err(bad(format!(
                "capture length {caplen} is larger than the snap length {}",
                self.snaplen
            )));
        }
        if caplen > MAX_SNAPLEN {
            return Err(bad(format!("capture length {caplen} is larger than {MAX_SNAPLEN}")));
        }
        if caplen > orig_len {
            return Err(bad(format!(
                "capture length {caplen} is larger than the original length {orig_len}"
            )));
        }
        if ts_frac >= frac_limit {
            return Err(bad(format!("timestamp fraction {ts_frac} is not below {frac_limit}")));
        }
        data.clear();
        data.resize(caplen as usize, 0);
        let data_at = start + RECORD_HEADER_LEN as u64;
        let io = |source| PcapError::Io {
            what: format!("reading record {record} data at byte offset {data_at}"),
            source,
        };
        match read_full(&mut self.inner, data).map_err(io)? {
            Ok(_) => {}
            Err(got) => {
                return Err(PcapError::Format {
                    record: Some(record),
                    offset: data_at,
                    message: format!("truncated record: {got} of {caplen} bytes of packet data"),
                })
            }
        }
        self.offset = data_at + caplen as u64;
        self.records = record;
        let frac_ns = if self.nanos { ts_frac as u64 } else { ts_frac as u64 * 1000 };
        Ok(Some(RecordHeader { ts_ns: ts_sec as u64 * 1_000_000_000 + frac_ns, caplen, orig_len }))
    }
}

/// pcap writer (nanosecond resolution, little endian, Ethernet).
pub struct PcapWriter<W: Write> {
    inner: W,
    records: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Write the file header.
    pub fn new(mut inner: W) -> Result<Self, PcapError> {
        let mut h = Vec::with_capacity(FILE_HEADER_LEN);
        h.extend_from_slice(&MAGIC_NANO.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&MAX_SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        inner.write_all(&h).map_err(|source| PcapError::Io {
            what: "writing the pcap file header".into(),
            source,
        })?;
        Ok(PcapWriter { inner, records: 0 })
    }

    /// Append one frame with timestamp `ts_ns` (ns since the Unix epoch).
    /// Frames longer than the snap length are cut to it (orig_len keeps
    /// the full length).
    pub fn write(&mut self, ts_ns: u64, frame: &[u8]) -> Result<(), PcapError> {
        let caplen = frame.len().min(MAX_SNAPLEN as usize);
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
        h[4..8].copy_from_slice(&((ts_ns % 1_000_000_000) as u32).to_le_bytes());
        h[8..12].copy_from_slice(&(caplen as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(frame.len().min(u32::MAX as usize) as u32).to_le_bytes());
        let record = self.records + 1;
        let io = |source| PcapError::Io { what: format!("writing record {record}"), source };
        self.inner.write_all(&h).map_err(io)?;
        self.inner.write_all(&frame[..caplen]).map_err(io)?;
        self.records = record;
        Ok(())
    }

    /// Records written so far.
    pub fn records_written(&self) -> u64 {
        self.records
    }

    pub fn flush(&mut self) -> Result<(), PcapError> {
        self.inner
            .flush()
            .map_err(|source| PcapError::Io { what: "flushing the pcap file".into(), source })
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        for (ts, f) in frames {
            w.write(*ts, f).unwrap();
        }
        w.into_inner()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(RecordHeader, Vec<u8>)>, PcapError> {
        let mut r = PcapReader::new(bytes)?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(h) = r.next_record(&mut buf)? {
            out.push((h, buf.clone()));
        }
        Ok(out)
    }

    /// A microsecond file in either byte order, by hand.
    fn micro_file(big_endian: bool, snaplen: u32, records: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let put32 = |v: &mut Vec<u8>, x: u32| {
            v.extend_from_slice(&if big_endian { x.to_be_bytes() } else { x.to_le_bytes() })
        };
        let put16 = |v: &mut Vec<u8>, x: u16| {
            v.extend_from_slice(&if big_endian { x.to_be_bytes() } else { x.to_le_bytes() })
        };
        let mut v = Vec::new();
        put32(&mut v, MAGIC_MICRO);
        put16(&mut v, 2);
        put16(&mut v, 4);
        put32(&mut v, 0);
        put32(&mut v, 0);
        put32(&mut v, snaplen);
        put32(&mut v, 1);
        for (sec, usec, data) in records {
            put32(&mut v, *sec);
            put32(&mut v, *usec);
            put32(&mut v, data.len() as u32);
            put32(&mut v, data.len() as u32);
            v.extend_from_slice(data);
        }
        v
    }

    #[test]
    fn round_trips_frames_and_timestamps() {
        let frames = vec![(1_700_000_000_123_456_789, vec![1u8; 60]), (5, vec![2u8; 1514])];
        let got = read_all(&file(&frames)).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.ts_ns, 1_700_000_000_123_456_789);
        assert_eq!(got[1].1, vec![2u8; 1514]);
        assert_eq!(got[1].0.orig_len, 1514);
    }

    #[test]
    fn reads_both_byte_orders_in_microseconds() {
        for be in [false, true] {
            let f = micro_file(be, 65535, &[(3, 250_000, &[9u8; 64])]);
            let got = read_all(&f).unwrap();
            assert_eq!(got[0].0.ts_ns, 3_250_000_000, "big endian {be}");
            assert_eq!(got[0].1, vec![9u8; 64]);
        }
    }

    #[test]
    fn bad_inputs_name_record_and_offset() {
        let err = |b: &[u8]| read_all(b).unwrap_err().to_string();
        assert_eq!(err(b""), "byte offset 0: empty file: no pcap file header");
        assert!(err(&[0xd4, 0xc3]).contains("truncated pcap file header: 2 of 24"));
        let mut bad_magic = file(&[]);
        bad_magic[0] = 0;
        assert!(
            err(&bad_magic).starts_with("byte offset 0: bad magic 0x003cb2a1"),
            "{}",
            err(&bad_magic)
        );
        let pcapng = [0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0];
        let pcapng = [&pcapng[..], &[0u8; 12]].concat();
        assert!(err(&pcapng).contains("pcapng"));

        let two = file(&[(1, vec![1; 60]), (2, vec![2; 60])]);
        // Second record's data cut short.
        let cut = &two[..two.len() - 10];
        assert_eq!(
            err(cut),
            "record 2 at byte offset 116: truncated record: 50 of 60 bytes of packet data"
        );
        // Second record's header cut short.
        assert_eq!(
            err(&two[..24 + 76 + 5]),
            "record 2 at byte offset 100: truncated record header: 5 of 16 bytes"
        );

        let big = micro_file(false, 100, &[(0, 0, &[0u8; 60]), (0, 0, &[0u8; 200])]);
        assert_eq!(
            err(&big),
            "record 2 at byte offset 100: capture length 200 is larger than the snap length 100"
        );
        // Link types other than Ethernet are read; the capture ports
        // convert or reject them.
        let mut linux_sll = file(&[]);
        linux_sll[20] = 113;
        assert_eq!(PcapReader::new(&linux_sll[..]).unwrap().linktype(), 113);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic the reader.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = read_all(&bytes);
        }

        /// Damaging a valid file anywhere gives either records or an error.
        #[test]
        fn damaged_files_never_panic(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..5),
            at in any::<prop::sample::Index>(),
            val in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let with_ts: Vec<(u64, Vec<u8>)> = frames.iter().cloned().enumerate().map(|(i, f)| (i as u64, f)).collect();
            let mut f = file(&with_ts);
            let i = at.index(f.len());
            f[i] = val;
            let keep = cut.index(f.len() + 1);
            let _ = read_all(&f[..keep]);
            // Undamaged, it reads back exactly.
            let back = read_all(&file(&with_ts)).unwrap();
            prop_assert_eq!(back.into_iter().map(|(_, d)| d).collect::<Vec<_>>(), frames);
        }
    }
}
