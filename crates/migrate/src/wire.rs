//! The migration protocol on the wire: one TCP connection, a preamble each
//! way, then checked frames.
//!
//! Preamble (both ends, first thing sent): `BRMG`, protocol version (u16
//! big endian). A peer with another magic or version is refused before
//! anything else is read.
//!
//! Frame: body length (u32 big endian, at most [`MAX_FRAME`]), body (a
//! postcard-encoded [`Message`]), CRC-32 (IEEE) of the body (u32 big
//! endian). A frame with a wrong checksum, an oversized length or a body
//! that does not decode ends the migration with an error naming the frame
//! number; nothing of it is installed.

use std::io::{Read, Write};

use braid_nf::Statelet;

/// First bytes of each direction of a migration connection.
pub const MAGIC: &[u8; 4] = b"BRMG";
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Largest frame body accepted (a statelet of a few thousand entries is
/// tens of kilobytes; a snapshot chunk is bounded by the chunk size).
pub const MAX_FRAME: usize = 64 << 20;

/// How the state moves (see `docs/migration.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Snapshot chunks and statelets while the source keeps processing.
    Statelet,
    /// Pause the source, copy its whole state, switch, resume.
    StopCopy,
    /// OpenNF-style baseline: the snapshot walk, then every packet the
    /// source receives copied whole to the destination, which re-processes
    /// it with output suppressed.
    Duplicate,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Statelet => "statelet",
            Mode::StopCopy => "stop-copy",
            Mode::Duplicate => "duplicate",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "statelet" => Ok(Mode::Statelet),
            "stop-copy" => Ok(Mode::StopCopy),
            "duplicate" => Ok(Mode::Duplicate),
            other => {
                Err(format!("migration mode `{other}`: expected statelet, duplicate or stop-copy"))
            }
        }
    }
}

/// Every message of the protocol. Source → destination unless noted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Message {
    /// What is about to move: the migration id (carried by the drain
    /// markers), the stage name and its NF kind on the source, the mode.
    Hello { id: u64, stage: String, kind: String, mode: Mode },
    /// Destination → source: ready; its stage holds arrivals.
    Accept,
    /// Destination → source: will not take it (wrong kind, busy, ...).
    Refuse { reason: String },
    /// The state of some flows, in the order it must be installed.
    Statelet(Statelet),
    /// The table walk is complete.
    SnapshotDone { chunks: u64 },
    /// Duplication baseline: copies of what the source received on `port`,
    /// in order with the statelets.
    Packets { port: u16, frames: Vec<Vec<u8>> },
    /// Destination → source: the snapshot is in and the backlog is small:
    /// redirect the traffic and send the drain markers.
    SwitchRequest { installed: u64 },
    /// The traffic is redirected; markers are on their way.
    Switched,
    /// Every old path brought its drain marker; nothing follows.
    End { statelets: u64, chunks: u64 },
    /// Destination → source: everything is installed and the held
    /// packets are processed.
    Done { installed: u64, peak_held: u64, dropped_held: u64 },
    /// Stop-and-copy: the whole state (source paused).
    Whole(braid_nf::NfState),
    /// Either way: the migration is abandoned, with why.
    Abort { reason: String },
    /// Destination → source, after an abort: what the destination held
    /// since the switch, as (port, frame) in arrival order, for the
    /// source to process.
    Returned { packets: Vec<(u16, Vec<u8>)> },
}

impl Message {
    /// A short name for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Accept => "Accept",
            Message::Refuse { .. } => "Refuse",
            Message::Statelet(_) => "Statelet",
            Message::SnapshotDone { .. } => "SnapshotDone",
            Message::Packets { .. } => "Packets",
            Message::SwitchRequest { .. } => "SwitchRequest",
            Message::Switched => "Switched",
            Message::End { .. } => "End",
            Message::Done { .. } => "Done",
            Message::Whole(_) => "Whole",
            Message::Abort { .. } => "Abort",
            Message::Returned { .. } => "Returned",
        }
    }
}

/// What is wrong with a migration stream.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("state link: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer is not a braid migration endpoint (magic {0:02x?}, expected `BRMG`)")]
    Magic([u8; 4]),
    #[error("the peer speaks migration protocol version {0}, this braid speaks {VERSION}")]
    Version(u16),
    #[error("frame {frame}: length {len} exceeds the limit of {MAX_FRAME} bytes")]
    TooLong { frame: u64, len: usize },
    #[error(
        "frame {frame}: checksum mismatch (frame says {stored:#010x}, body gives {computed:#010x})"
    )]
    Checksum { frame: u64, stored: u32, computed: u32 },
    #[error("frame {frame}: does not decode: {reason}")]
    Decode { frame: u64, reason: String },
}

impl WireError {
    /// True for a read that hit the socket's timeout (nothing arrived in
    /// time), as opposed to a broken or bad stream.
    pub fn is_timeout(&self) -> bool {
        matches!(self, WireError::Io(e)
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }
}

/// Write the preamble.
pub fn write_preamble(w: &mut impl Write) -> Result<(), WireError> {
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_be_bytes())?;
    w.flush()?;
    Ok(())
}

/// Read and check the peer's preamble.
pub fn read_preamble(r: &mut impl Read) -> Result<(), WireError> {
    let mut b = [0u8; 6];
    r.read_exact(&mut b)?;
    let magic = [b[0], b[1], b[2], b[3]];
    if &magic != MAGIC {
        return Err(WireError::Magic(magic));
    }
    let v = u16::from_be_bytes([b[4], b[5]]);
    if v != VERSION {
        return Err(WireError::Version(v));
    }
    Ok(())
}

/// Frames written and read on one connection, counted.
#[derive(Default)]
pub struct Counts {
    pub frames: u64,
    pub bytes: u64,
}

/// Write one message as a frame (not flushed). Returns the bytes written.
pub fn write_message(w: &mut impl Write, m: &Message, c: &mut Counts) -> Result<(), WireError> {
    let body = postcard::to_allocvec(m).expect("migration messages serialize infallibly");
    let crc = crc32fast::hash(&body);
    w.write_all(&(body.len() as u32).to_be_bytes())?;
    w.write_all(&body)?;
    w.write_all(&crc.to_be_bytes())?;
    c.frames += 1;
    c.bytes += body.len() as u64 + 8;
    Ok(())
}

/// Read one frame and decode its message.
pub fn read_message(r: &mut impl Read, c: &mut Counts) -> Result<Message, WireError> {
    let frame = c.frames;
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLong { frame, len });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let mut crc = [0u8; 4];
    r.read_exact(&mut crc)?;
    let stored = u32::from_be_bytes(crc);
    let computed = crc32fast::hash(&body);
    if stored != computed {
        return Err(WireError::Checksum { frame, stored, computed });
    }
    let m = postcard::from_bytes(&body)
        .map_err(|e| WireError::Decode { frame, reason: e.to_string() })?;
    c.frames += 1;
    c.bytes += len as u64 + 8;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Message {
        Message::Hello { id: 7, stage: "nat".into(), kind: "nat".into(), mode: Mode::Statelet }
    }

    #[test]
    fn a_message_round_trips_and_a_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        let mut c = Counts::default();
        write_message(&mut buf, &hello(), &mut c).unwrap();
        let mut rc = Counts::default();
        assert_eq!(read_message(&mut buf.as_slice(), &mut rc).unwrap(), hello());
        assert_eq!((rc.frames, rc.bytes), (c.frames, c.bytes));
        for i in 4..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            let e = read_message(&mut bad.as_slice(), &mut Counts::default()).unwrap_err();
            assert!(
                matches!(e, WireError::Checksum { frame: 0, .. } | WireError::Decode { .. }),
                "byte {i}: {e}"
            );
        }
    }

    #[test]
    fn foreign_preambles_and_huge_lengths_are_refused() {
        let e = read_preamble(&mut &b"HTTP/1"[..]).unwrap_err();
        assert!(e.to_string().contains("not a braid migration endpoint"), "{e}");
        let e = read_preamble(&mut &b"BRMG\x00\x09"[..]).unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
        let e =
            read_message(&mut &[0xff, 0xff, 0xff, 0xff][..], &mut Counts::default()).unwrap_err();
        assert!(matches!(e, WireError::TooLong { .. }), "{e}");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = bytes.as_slice();
            let _ = read_preamble(&mut r);
            let _ = read_message(&mut r, &mut Counts::default());
        }
    }
}
