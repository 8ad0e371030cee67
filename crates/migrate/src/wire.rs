//! The migration protocol on the wire: one TCP connection, a preamble each
//! way, then checked frames.
//!
//! Preamble (both ends, first thing sent): `BRMG` (or `BRMS` for a sealed
//! stream), protocol version (u16 big endian). A peer with another magic
//! or version, or that seals when this side does not (or the other way
//! round), is refused before anything else is read.
//!
//! Frame: body length (u32 big endian, at most [`MAX_FRAME`]), body (a
//! postcard-encoded [`Message`]), CRC-32 (IEEE) of the body (u32 big
//! endian). A frame with a wrong checksum, an oversized length or a body
//! that does not decode ends the migration with an error naming the frame
//! number; nothing of it is installed.
//!
//! Sealed frame (both ends given a [`StreamKey`]): body length, the body
//! encrypted with AES-256-GCM, its 16-byte tag instead of the CRC. The
//! nonce is the direction (one byte: 0 towards the destination, 1 back),
//! three zero bytes and the frame's number in its direction (u64 big
//! endian); the associated data is the length field. So a frame changed,
//! dropped, replayed, reordered or sent the other way fails its tag, and
//! a frame number never repeats under one key (a key is made per
//! migration: braidd derives it from the offer's two random challenges).

use std::io::{Read, Write};
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use braid_nf::{CompactStatelet, StateError};

/// First bytes of each direction of a migration connection.
pub const MAGIC: &[u8; 4] = b"BRMG";
/// First bytes of each direction of a sealed migration connection.
pub const SEALED_MAGIC: &[u8; 4] = b"BRMS";
/// Length of a sealed frame's tag.
pub const TAG_LEN: usize = 16;
/// The protocol version this build speaks.
/// Version 2: a statelet goes without its entries' keys
/// ([`CompactStatelet`]).
pub const VERSION: u16 = 2;
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
    /// The state of some flows, in the order it must be installed: the
    /// entries and the flows it clears (the reader derives the entries'
    /// keys, [`CompactStatelet::expand`]).
    Statelet(CompactStatelet),
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
    /// Nothing else to say for a while (the source waits for its link to
    /// drain, or its switch runs): still here. The destination's reads
    /// time out on silence, not on a slow phase of a live source.
    KeepAlive,
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
            Message::KeepAlive => "KeepAlive",
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
    #[error("frame {frame}: does not authenticate under the stream key (changed, replayed, reordered or dropped on the way, or the two sides derived different keys)")]
    Auth { frame: u64 },
    #[error("{0}")]
    Sealing(&'static str),
    #[error("frame {frame}: statelet refused: {error}")]
    Statelet { frame: u64, error: StateError },
}

impl WireError {
    /// True for a read that hit the socket's timeout (nothing arrived in
    /// time), as opposed to a broken or bad stream.
    pub fn is_timeout(&self) -> bool {
        matches!(self, WireError::Io(e)
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }
}

/// Which way a frame goes: part of a sealed frame's nonce, so a frame
/// cannot be sent back the other way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Source to destination.
    ToDestination = 0,
    /// Destination to source.
    ToSource = 1,
}

/// The key a migration's frames are sealed with (AES-256-GCM). Made once
/// per migration: reusing one across connections would repeat nonces.
pub struct StreamKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamKey(<redacted>)")
    }
}

impl StreamKey {
    pub fn new(bytes: &[u8; 32]) -> StreamKey {
        let key = UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256-GCM takes a 32-byte key");
        StreamKey { key: LessSafeKey::new(key) }
    }
}

/// How one direction's frames are sealed.
#[derive(Clone, Debug)]
pub struct Seal {
    pub key: Arc<StreamKey>,
    pub direction: Direction,
}

impl Seal {
    fn nonce(&self, frame: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[0] = self.direction as u8;
        n[4..].copy_from_slice(&frame.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }
}

fn magic(sealed: bool) -> &'static [u8; 4] {
    if sealed {
        SEALED_MAGIC
    } else {
        MAGIC
    }
}

/// Write the preamble of an unsealed stream.
pub fn write_preamble(w: &mut impl Write) -> Result<(), WireError> {
    write_preamble_of(w, false)
}

fn write_preamble_of(w: &mut impl Write, sealed: bool) -> Result<(), WireError> {
    w.write_all(magic(sealed))?;
    w.write_all(&VERSION.to_be_bytes())?;
    w.flush()?;
    Ok(())
}

/// Read and check the peer's preamble (of an unsealed stream).
pub fn read_preamble(r: &mut impl Read) -> Result<(), WireError> {
    read_preamble_of(r, false)
}

fn read_preamble_of(r: &mut impl Read, sealed: bool) -> Result<(), WireError> {
    let mut b = [0u8; 6];
    r.read_exact(&mut b)?;
    let magic = [b[0], b[1], b[2], b[3]];
    match (&magic, sealed) {
        (m, false) if m == SEALED_MAGIC => {
            return Err(WireError::Sealing(
                "the peer seals the stream with a key, this side has none",
            ))
        }
        (m, true) if m == MAGIC => {
            return Err(WireError::Sealing(
                "the peer does not seal the stream, this side requires it",
            ))
        }
        (m, _) if m == MAGIC || m == SEALED_MAGIC => {}
        _ => return Err(WireError::Magic(magic)),
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

/// The frame of `m`, sealed with `seal` as frame number `frame`.
fn encode_frame(m: &Message, seal: Option<&Seal>, frame: u64) -> Result<Vec<u8>, WireError> {
    let body = postcard::to_allocvec(m).expect("migration messages serialize infallibly");
    let mut out = Vec::with_capacity(body.len() + 4 + TAG_LEN);
    let len = (body.len() as u32).to_be_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&body);
    match seal {
        None => out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes()),
        Some(s) => {
            let tag = s
                .key
                .key
                .seal_in_place_separate_tag(s.nonce(frame), Aad::from(len), &mut out[4..])
                .map_err(|_| WireError::Sealing("the cipher refused to seal a frame"))?;
            out.extend_from_slice(tag.as_ref());
        }
    }
    Ok(out)
}

/// Bytes after a frame's body: its CRC, or its tag when sealed.
fn trailer_len(seal: Option<&Seal>) -> usize {
    if seal.is_some() {
        TAG_LEN
    } else {
        4
    }
}

/// Write one message as an unsealed frame (not flushed).
pub fn write_message(w: &mut impl Write, m: &Message, c: &mut Counts) -> Result<(), WireError> {
    let f = encode_frame(m, None, c.frames)?;
    w.write_all(&f)?;
    c.frames += 1;
    c.bytes += f.len() as u64;
    Ok(())
}

/// Writes the preamble and frames of one direction of a migration
/// connection, counting them, and sealing them when it has a [`Seal`]: the
/// frame number of a sealed frame's nonce is this writer's count, so every
/// frame of a direction, an Abort after a failure included, goes through
/// one writer.
pub struct FrameWriter<W> {
    inner: W,
    seal: Option<Seal>,
    counts: Counts,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W, seal: Option<Seal>) -> FrameWriter<W> {
        FrameWriter { inner, seal, counts: Counts::default() }
    }

    pub fn write_preamble(&mut self) -> Result<(), WireError> {
        write_preamble_of(&mut self.inner, self.seal.is_some())
    }

    /// Write one message as a frame (not flushed).
    pub fn write_message(&mut self, m: &Message) -> Result<(), WireError> {
        let f = encode_frame(m, self.seal.as_ref(), self.counts.frames)?;
        self.inner.write_all(&f)?;
        self.counts.frames += 1;
        self.counts.bytes += f.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }

    /// Frames and bytes written so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The wrapped writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

/// Read one unsealed frame and decode its message. A read timeout in the
/// middle of a frame loses what was read of it: a reader that retries
/// after a timeout must use a [`FrameReader`] instead.
pub fn read_message(r: &mut impl Read, c: &mut Counts) -> Result<Message, WireError> {
    let frame = c.frames;
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(WireError::TooLong { frame, len: n });
    }
    let mut whole = vec![0u8; 4 + n + 4];
    whole[..4].copy_from_slice(&len);
    r.read_exact(&mut whole[4..])?;
    decode_frame(&mut whole, None, c)
}

/// Check a whole frame (length, body, CRC or tag) and decode its body;
/// counts it. A sealed frame's body is decrypted in place.
fn decode_frame(f: &mut [u8], seal: Option<&Seal>, c: &mut Counts) -> Result<Message, WireError> {
    let frame = c.frames;
    let total = f.len();
    let (len, rest) = f.split_at_mut(4);
    let body_len = rest.len() - trailer_len(seal);
    let body = match seal {
        None => {
            let (body, crc) = rest.split_at(body_len);
            let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
            let computed = crc32fast::hash(body);
            if stored != computed {
                return Err(WireError::Checksum { frame, stored, computed });
            }
            &rest[..body_len]
        }
        Some(s) => {
            let aad: [u8; 4] = [len[0], len[1], len[2], len[3]];
            s.key
                .key
                .open_in_place(s.nonce(frame), Aad::from(aad), rest)
                .map_err(|_| WireError::Auth { frame })?;
            &rest[..body_len]
        }
    };
    let m = postcard::from_bytes(body)
        .map_err(|e| WireError::Decode { frame, reason: e.to_string() })?;
    c.frames += 1;
    c.bytes += total as u64;
    Ok(m)
}

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 << 10;

/// Reads the preamble and frames of one direction of a migration
/// connection, keeping whatever part of a frame has arrived across read
/// timeouts: a socket with a read timeout may return `WouldBlock` or
/// `TimedOut` in the middle of a frame, and the next call goes on from
/// the byte where the previous one stopped, so a caller that retries
/// after a timeout never misaligns the stream. (A `BufReader` with
/// `read_exact` loses the bytes of a partly read frame on a timeout.)
pub struct FrameReader<R> {
    inner: R,
    /// Received bytes; `buf[pos..]` are not consumed yet.
    buf: Vec<u8>,
    pos: usize,
    counts: Counts,
    /// The peer's frames are sealed, in this direction.
    seal: Option<Seal>,
}

impl<R: Read> FrameReader<R> {
    /// A reader of an unsealed stream.
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader::sealed(inner, None)
    }

    /// A reader of frames sealed with `seal` (none: unsealed).
    pub fn sealed(inner: R, seal: Option<Seal>) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            counts: Counts::default(),
            seal,
        }
    }

    /// Frames and bytes read so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Bytes received and not yet returned as a frame (SliM's backlog of
    /// what waits in the reader).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Make at least `need` unconsumed bytes available, reading as
    /// needed. On an error (a timeout included) what arrived is kept.
    fn fill(&mut self, need: usize) -> Result<(), WireError> {
        while self.buffered() < need {
            if self.pos > 0 && self.pos >= self.buf.len() / 2 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let old = self.buf.len();
            let want = (need - self.buffered()).max(READ_CHUNK);
            self.buf.resize(old + want, 0);
            let got = self.inner.read(&mut self.buf[old..]);
            let n = *got.as_ref().unwrap_or(&0);
            self.buf.truncate(old + n);
            match got {
                Ok(0) => {
                    let what = if self.buffered() == 0 {
                        "the peer closed the state link".to_string()
                    } else {
                        format!(
                            "the peer closed the state link in the middle of frame {} ({} bytes of it came)",
                            self.counts.frames,
                            self.buffered()
                        )
                    };
                    return Err(WireError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        what,
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(WireError::Io(e)),
            }
        }
        Ok(())
    }

    /// Read and check the peer's preamble (see [`read_preamble`]).
    pub fn read_preamble(&mut self) -> Result<(), WireError> {
        self.fill(6)?;
        let mut b = &self.buf[self.pos..self.pos + 6];
        read_preamble_of(&mut b, self.seal.is_some())?;
        self.pos += 6;
        Ok(())
    }

    /// Read one frame and decode its message. A timeout (see
    /// [`WireError::is_timeout`]) may be retried: the frame goes on where
    /// it stopped. Any other error ends the stream.
    pub fn read_message(&mut self) -> Result<Message, WireError> {
        self.fill(4)?;
        let p = self.pos;
        let len =
            u32::from_be_bytes([self.buf[p], self.buf[p + 1], self.buf[p + 2], self.buf[p + 3]])
                as usize;
        if len > MAX_FRAME {
            return Err(WireError::TooLong { frame: self.counts.frames, len });
        }
        let whole = 4 + len + trailer_len(self.seal.as_ref());
        self.fill(whole)?;
        let p = self.pos;
        let m = decode_frame(&mut self.buf[p..p + whole], self.seal.as_ref(), &mut self.counts);
        self.pos += whole;
        m
    }
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
        // Version 1 sent every statelet's keys beside its entries.
        let e = read_preamble(&mut &b"BRMG\x00\x01"[..]).unwrap_err();
        assert!(e.to_string().contains("version 1, this braid speaks 2"), "{e}");
        let e =
            read_message(&mut &[0xff, 0xff, 0xff, 0xff][..], &mut Counts::default()).unwrap_err();
        assert!(matches!(e, WireError::TooLong { .. }), "{e}");
    }

    /// A frame that arrives in pieces separated by more than the reader's
    /// timeout: every timeout is retried and the frames come out whole and
    /// in order (the plain `read_message` loses the piece before the
    /// timeout and misaligns the stream).
    #[test]
    fn a_frame_delivered_in_slow_pieces_survives_read_timeouts() {
        use std::net::{TcpListener, TcpStream};
        use std::time::Duration;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (rx, _) = l.accept().unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        tx.set_nodelay(true).unwrap();
        let big = Message::Abort { reason: "x".repeat(3000) };
        let mut bytes = Vec::new();
        write_preamble(&mut bytes).unwrap();
        let mut c = Counts::default();
        write_message(&mut bytes, &hello(), &mut c).unwrap();
        write_message(&mut bytes, &big, &mut c).unwrap();
        write_message(&mut bytes, &Message::Accept, &mut c).unwrap();
        let total = bytes.len();
        let writer = std::thread::spawn(move || {
            // Cut inside the preamble, inside a length, inside a body,
            // inside a checksum, and between frames.
            let cuts = [3, 8, 20, total - 1500, total - 9, total - 6];
            let mut at = 0;
            for cut in cuts.into_iter().chain([total]) {
                tx.write_all(&bytes[at..cut]).unwrap();
                tx.flush().unwrap();
                at = cut;
                std::thread::sleep(Duration::from_millis(80));
            }
        });
        let mut r = FrameReader::new(rx);
        let mut timeouts = 0;
        let mut retry = |r: &mut FrameReader<TcpStream>, preamble: bool| loop {
            let got = if preamble {
                r.read_preamble().map(|()| None)
            } else {
                r.read_message().map(Some)
            };
            match got {
                Ok(m) => return m,
                Err(e) if e.is_timeout() => timeouts += 1,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(retry(&mut r, true), None);
        assert_eq!(retry(&mut r, false), Some(hello()));
        assert_eq!(retry(&mut r, false), Some(big));
        assert_eq!(retry(&mut r, false), Some(Message::Accept));
        assert_eq!((r.counts().frames, r.counts().bytes), (c.frames, c.bytes));
        assert_eq!(r.buffered(), 0);
        assert!(timeouts >= 6, "the pieces must straddle timeouts ({timeouts})");
        writer.join().unwrap();
        // The end of the stream mid-frame is an error, not a hang.
        let mut part = Vec::new();
        write_message(&mut part, &hello(), &mut Counts::default()).unwrap();
        part.truncate(part.len() - 2);
        let e = FrameReader::new(part.as_slice()).read_message().unwrap_err();
        assert!(e.to_string().contains("in the middle of frame 0"), "{e}");
    }

    fn seal(key: u8, direction: Direction) -> Option<Seal> {
        Some(Seal { key: Arc::new(StreamKey::new(&[key; 32])), direction })
    }

    /// The preamble and `messages`, sealed with key `key` towards the
    /// destination.
    fn sealed_stream(key: u8, messages: &[Message]) -> (Vec<u8>, Vec<usize>) {
        let mut w = FrameWriter::new(Vec::new(), seal(key, Direction::ToDestination));
        w.write_preamble().unwrap();
        let mut ends = vec![6];
        for m in messages {
            w.write_message(m).unwrap();
            ends.push(w.get_ref().len());
        }
        (w.inner, ends)
    }

    fn read_all(bytes: &[u8], key: u8, direction: Direction) -> Result<Vec<Message>, WireError> {
        let mut r = FrameReader::sealed(bytes, seal(key, direction));
        r.read_preamble()?;
        let mut out = Vec::new();
        while r.buffered() > 0 || out.is_empty() {
            out.push(r.read_message()?);
        }
        Ok(out)
    }

    #[test]
    fn a_sealed_stream_hides_its_state_and_refuses_any_change() {
        let secret = Message::Abort { reason: "conntrack 10.1.2.3:4444".into() };
        let msgs = [hello(), secret.clone(), secret.clone(), Message::Accept];
        let (bytes, ends) = sealed_stream(7, &msgs);
        assert_eq!(read_all(&bytes, 7, Direction::ToDestination).unwrap(), msgs);
        assert_eq!(&bytes[..4], SEALED_MAGIC);
        // Nothing of the plaintext shows, and equal messages differ.
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains("conntrack 10.1.2.3"), "{hay}");
        assert_ne!(bytes[ends[1]..ends[2]], bytes[ends[2]..ends[3]]);
        let auth = |r: Result<Vec<Message>, WireError>| {
            let e = r.unwrap_err();
            assert!(matches!(e, WireError::Auth { .. }), "{e}");
            e
        };
        // Another key, the other direction (a frame sent back).
        auth(read_all(&bytes, 8, Direction::ToDestination));
        auth(read_all(&bytes, 7, Direction::ToSource));
        // Two frames swapped, one dropped, one replayed.
        let frame = |k: usize| bytes[ends[k]..ends[k + 1]].to_vec();
        let with = |order: &[usize]| {
            let mut b = bytes[..6].to_vec();
            for &k in order {
                b.extend(frame(k));
            }
            b
        };
        let e = auth(read_all(&with(&[1, 0, 2, 3]), 7, Direction::ToDestination));
        assert!(matches!(e, WireError::Auth { frame: 0 }), "{e}");
        let e = auth(read_all(&with(&[0, 2, 3]), 7, Direction::ToDestination));
        assert!(matches!(e, WireError::Auth { frame: 1 }), "{e}");
        auth(read_all(&with(&[0, 1, 1, 2, 3]), 7, Direction::ToDestination));
        // Every flipped bit after the preamble is refused (a flipped
        // length: too long, or the stream ends inside the frame).
        for i in 6..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x04;
            let r = read_all(&b, 7, Direction::ToDestination);
            assert!(r.is_err(), "byte {i}: {r:?}");
        }
        // A sealed side and an unsealed one refuse each other at once.
        let e = read_preamble(&mut &bytes[..6]).unwrap_err();
        assert!(e.to_string().contains("the peer seals the stream"), "{e}");
        let mut plain = Vec::new();
        write_preamble(&mut plain).unwrap();
        let e = FrameReader::sealed(plain.as_slice(), seal(7, Direction::ToDestination))
            .read_preamble()
            .unwrap_err();
        assert!(e.to_string().contains("the peer does not seal"), "{e}");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = bytes.as_slice();
            let _ = read_preamble(&mut r);
            let _ = read_message(&mut r, &mut Counts::default());
            let mut f = FrameReader::new(bytes.as_slice());
            let _ = f.read_preamble();
            let _ = f.read_message();
            let mut f = FrameReader::sealed(bytes.as_slice(), seal(1, Direction::ToSource));
            let _ = f.read_message();
        }
    }
}
