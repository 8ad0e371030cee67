//! pcapng files (Wireshark's and dumpcap's default format): reader and writer.
//!
//! The reader follows draft-ietf-opsawg-pcapng: any number of sections, each
//! with its own byte order (Section Header Block magic `0x1A2B3C4D`); per
//! interface link type, snap length and timestamp resolution (`if_tsresol`,
//! decimal or binary) and offset (`if_tsoffset`), so nanosecond captures keep
//! their nanoseconds; Enhanced, Simple and the obsolete Packet blocks carry
//! packets; every other block (name resolution, statistics, decryption
//! secrets, custom) is skipped. A packet's `opt_comment` is returned with it.
//!
//! Memory is bounded: a block longer than [`MAX_BLOCK_LEN`] is an error, and
//! a block body is read as it arrives, so a huge declared length in a short
//! file costs no allocation. Every inconsistency is an error naming the
//! block number (1-based, counting every block) and its byte offset.
//!
//! The writer writes little-endian sections with interfaces at nanosecond
//! resolution (`if_tsresol` 9), which tshark and Wireshark open.

use std::io::{ErrorKind, Read, Write};

use crate::pcap::read_full;

/// Block type of a Section Header Block (also the file magic).
pub const BLOCK_SHB: u32 = 0x0A0D_0D0A;
/// Interface Description Block.
pub const BLOCK_IDB: u32 = 1;
/// Obsolete Packet Block.
pub const BLOCK_PB: u32 = 2;
/// Simple Packet Block.
pub const BLOCK_SPB: u32 = 3;
/// Interface Statistics Block.
pub const BLOCK_ISB: u32 = 5;
/// Enhanced Packet Block.
pub const BLOCK_EPB: u32 = 6;
/// Byte-order magic inside a Section Header Block.
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// Longest block the reader accepts (16 MiB): far above any packet
/// (262,144 B snap length) plus options, far below what would hurt.
pub const MAX_BLOCK_LEN: u32 = 16 << 20;
/// Snap length the writer declares and largest capture length accepted.
pub const MAX_SNAPLEN: u32 = crate::pcap::MAX_SNAPLEN;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const OPT_SHB_USERAPPL: u16 = 4;
const OPT_IF_NAME: u16 = 2;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_IF_TSOFFSET: u16 = 14;
const OPT_ISB_IFRECV: u16 = 4;
const OPT_ISB_IFDROP: u16 = 5;

/// Error reading or writing a pcapng file.
#[derive(Debug, thiserror::Error)]
pub enum PcapngError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes do not follow the format. `block` is 1-based and counts
    /// every block of the file (section headers and skipped blocks too).
    #[error("block {block} at byte offset {offset}: {message}")]
    Format { block: u64, offset: u64, message: String },
}

/// One interface of the current section, from its Interface Description
/// Block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// `LINKTYPE_*` of its packets.
    pub linktype: u32,
    /// Declared snap length (0: no limit).
    pub snaplen: u32,
    /// Timestamp units per second (`if_tsresol`; 1,000,000 by default).
    pub units_per_sec: u128,
    /// Seconds added to every timestamp (`if_tsoffset`).
    pub offset_sec: i64,
    /// `if_name`, if given.
    pub name: Option<String>,
}

/// One packet's header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketRecord {
    /// Timestamp in nanoseconds since the Unix epoch (0 for Simple Packet
    /// Blocks, which have none).
    pub ts_ns: u64,
    /// Index of the interface in its section.
    pub interface: u32,
    /// Link type of that interface.
    pub linktype: u32,
    /// Bytes the frame had on the wire.
    pub orig_len: u32,
    /// `opt_comment` of the block (the first, if several).
    pub comment: Option<String>,
}

/// Byte order of the current section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Little,
    Big,
}

impl Order {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        match self {
            Order::Little => u16::from_le_bytes(a),
            Order::Big => u16::from_be_bytes(a),
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self {
            Order::Little => u32::from_le_bytes(a),
            Order::Big => u32::from_be_bytes(a),
        }
    }
    fn i64(self, b: &[u8]) -> i64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        match self {
            Order::Little => i64::from_le_bytes(a),
            Order::Big => i64::from_be_bytes(a),
        }
    }
}

/// Streaming pcapng reader.
pub struct PcapngReader<R: Read> {
    inner: R,
    order: Order,
    interfaces: Vec<Interface>,
    /// Byte offset of the next unread byte.
    offset: u64,
    /// Blocks read so far.
    blocks: u64,
    /// Packets returned so far.
    packets: u64,
    /// The current block's body (reused).
    body: Vec<u8>,
    /// `shb_userappl` of the current section, if any.
    application: Option<String>,
}

impl<R: Read> PcapngReader<R> {
    /// Read and check the first Section Header Block.
    pub fn new(inner: R) -> Result<Self, PcapngError> {
        let mut r = PcapngReader {
            inner,
            order: Order::Little,
            interfaces: Vec::new(),
            offset: 0,
            blocks: 0,
            packets: 0,
            body: Vec::new(),
            application: None,
        };
        match r.next_block()? {
            Some(BLOCK_SHB) => Ok(r),
            Some(other) => Err(PcapngError::Format {
                block: 1,
                offset: 0,
                message: format!("first block has type 0x{other:08x}, not a section header"),
            }),
            None => Err(PcapngError::Format {
                block: 1,
                offset: 0,
                message: "empty file: no pcapng section header".into(),
            }),
        }
    }

    /// Interfaces of the current section.
    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// `shb_userappl` of the current section (the program that wrote it).
    pub fn application(&self) -> Option<&str> {
        self.application.as_deref()
    }

    /// Packets read so far.
    pub fn packets_read(&self) -> u64 {
        self.packets
    }

    /// Byte offset of the next block.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Read the next packet into `data` (replacing its contents), skipping
    /// blocks that carry none. `Ok(None)` at a clean end of file.
    pub fn next_packet(&mut self, data: &mut Vec<u8>) -> Result<Option<PacketRecord>, PcapngError> {
        loop {
            let start = self.offset;
            let Some(kind) = self.next_block()? else { return Ok(None) };
            let block = self.blocks;
            let bad = |message: String| PcapngError::Format { block, offset: start, message };
            let record = match kind {
                BLOCK_EPB => self.enhanced_packet(data).map_err(bad)?,
                BLOCK_SPB => self.simple_packet(data).map_err(bad)?,
                BLOCK_PB => self.obsolete_packet(data).map_err(bad)?,
                _ => continue,
            };
            self.packets += 1;
            return Ok(Some(record));
        }
    }

    /// Read one block. Section headers and interface descriptions update
    /// the reader's state; the body of any block stays in `self.body`.
    /// Returns the block type, `None` at a clean end of file.
    fn next_block(&mut self) -> Result<Option<u32>, PcapngError> {
        let block = self.blocks + 1;
        let start = self.offset;
        let fmt = |offset: u64, message: String| PcapngError::Format { block, offset, message };
        let io = |source| PcapngError::Io {
            what: format!("reading block {block} at byte offset {start}"),
            source,
        };
        let mut head = [0u8; 8];
        match read_full(&mut self.inner, &mut head).map_err(io)? {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(got) => {
                return Err(fmt(start, format!("truncated block header: {got} of 8 bytes")))
            }
        }
        let is_shb = head[0..4] == BLOCK_SHB.to_le_bytes();
        if is_shb {
            // The section's byte order comes from the magic after the length.
            let mut magic = [0u8; 4];
            match read_full(&mut self.inner, &mut magic).map_err(io)? {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    return Err(fmt(start, "truncated section header: no byte-order magic".into()))
                }
            }
            self.order = if u32::from_le_bytes(magic) == BYTE_ORDER_MAGIC {
                Order::Little
            } else if u32::from_be_bytes(magic) == BYTE_ORDER_MAGIC {
                Order::Big
            } else {
                return Err(fmt(
                    start + 8,
                    format!(
                        "bad byte-order magic 0x{:02x}{:02x}{:02x}{:02x} in the section header",
                        magic[0], magic[1], magic[2], magic[3]
                    ),
                ));
            };
            self.body.clear();
            self.body.extend_from_slice(&magic);
        } else {
            self.body.clear();
        }
        let kind = self.order.u32(&head[0..4]);
        let total = self.order.u32(&head[4..8]);
        let min = if is_shb { 28 } else { 12 };
        if total < min || total & 3 != 0 {
            return Err(fmt(
                start + 4,
                format!("block length {total} is not a multiple of 4 of at least {min}"),
            ));
        }
        if total > MAX_BLOCK_LEN {
            return Err(fmt(
                start + 4,
                format!("block length {total} is larger than the {MAX_BLOCK_LEN} bytes accepted"),
            ));
        }
        // Body then the trailing copy of the length; read as it arrives so a
        // lying length in a short file allocates nothing.
        let rest = total as u64 - 8 - self.body.len() as u64;
        let got = (&mut self.inner).take(rest).read_to_end(&mut self.body).map_err(io)? as u64;
        if got < rest {
            return Err(fmt(
                start,
                format!("truncated block: {} of {total} bytes", total as u64 - rest + got),
            ));
        }
        let trailer_at = self.body.len() - 4;
        let trailer = self.order.u32(&self.body[trailer_at..]);
        if trailer != total {
            return Err(fmt(
                start + total as u64 - 4,
                format!("trailing block length {trailer} differs from the leading {total}"),
            ));
        }
        self.body.truncate(trailer_at);
        self.offset = start + total as u64;
        self.blocks = block;
        match kind {
            BLOCK_SHB => self.section_header().map_err(|m| fmt(start, m))?,
            BLOCK_IDB => self.interface_description().map_err(|m| fmt(start, m))?,
            _ => {}
        }
        Ok(Some(kind))
    }

    fn section_header(&mut self) -> Result<(), String> {
        // body: magic(4) major(2) minor(2) section length(8) options
        let b = &self.body;
        let major = self.order.u16(&b[4..6]);
        if major != 1 {
            return Err(format!(
                "unsupported pcapng version {major}.{} (expected 1.x)",
                self.order.u16(&b[6..8])
            ));
        }
        self.interfaces.clear();
        self.application = None;
        let mut app = None;
        for_each_option(self.order, &self.body[16..], |code, value| {
            if code == OPT_SHB_USERAPPL && app.is_none() {
                app = Some(String::from_utf8_lossy(value).into_owned());
            }
            Ok(())
        })?;
        self.application = app;
        Ok(())
    }

    fn interface_description(&mut self) -> Result<(), String> {
        let b = &self.body;
        if b.len() < 8 {
            return Err(format!("interface description body is {} bytes, needs 8", b.len()));
        }
        let linktype = self.order.u16(&b[0..2]) as u32;
        let snaplen = self.order.u32(&b[4..8]);
        let mut iface =
            Interface { linktype, snaplen, units_per_sec: 1_000_000, offset_sec: 0, name: None };
        let order = self.order;
        for_each_option(order, &b[8..], |code, value| {
            match code {
                OPT_IF_TSRESOL => {
                    let &[r] = value else {
                        return Err(format!("if_tsresol has {} bytes, not 1", value.len()));
                    };
                    iface.units_per_sec = if r & 0x80 == 0 {
                        if r > 18 {
                            return Err(format!("if_tsresol 10^-{r} is finer than 10^-18"));
                        }
                        10u128.pow(r as u32)
                    } else {
                        let e = r & 0x7f;
                        if e > 63 {
                            return Err(format!("if_tsresol 2^-{e} is finer than 2^-63"));
                        }
                        1u128 << e
                    };
                }
                OPT_IF_TSOFFSET => {
                    if value.len() != 8 {
                        return Err(format!("if_tsoffset has {} bytes, not 8", value.len()));
                    }
                    iface.offset_sec = order.i64(value);
                }
                OPT_IF_NAME if iface.name.is_none() => {
                    iface.name = Some(String::from_utf8_lossy(value).into_owned());
                }
                _ => {}
            }
            Ok(())
        })?;
        self.interfaces.push(iface);
        Ok(())
    }

    fn interface(&self, id: u32) -> Result<&Interface, String> {
        self.interfaces.get(id as usize).ok_or_else(|| {
            format!(
                "packet names interface {id} but the section describes {}",
                self.interfaces.len()
            )
        })
    }

    fn timestamp(&self, iface: &Interface, high: u32, low: u32) -> Result<u64, String> {
        let units = ((high as u128) << 32) | low as u128;
        let ns = units * 1_000_000_000 / iface.units_per_sec;
        let ns = ns as i128 + iface.offset_sec as i128 * 1_000_000_000;
        u64::try_from(ns)
            .map_err(|_| format!("timestamp {units} (+{} s) is out of range", iface.offset_sec))
    }

    /// Copy `caplen` bytes at `at` of the body into `data`, checking the
    /// lengths against the block and the interface.
    fn packet_data(
        &self,
        data: &mut Vec<u8>,
        at: usize,
        caplen: u32,
        orig_len: u32,
        iface: &Interface,
    ) -> Result<usize, String> {
        if caplen > MAX_SNAPLEN {
            return Err(format!("capture length {caplen} is larger than {MAX_SNAPLEN}"));
        }
        if iface.snaplen != 0 && caplen > iface.snaplen {
            return Err(format!(
                "capture length {caplen} is larger than the interface's snap length {}",
                iface.snaplen
            ));
        }
        if caplen > orig_len {
            return Err(format!(
                "capture length {caplen} is larger than the original length {orig_len}"
            ));
        }
        let end = at + caplen as usize;
        if end > self.body.len() {
            return Err(format!(
                "capture length {caplen} runs past the block's end ({} bytes of data)",
                self.body.len().saturating_sub(at)
            ));
        }
        data.clear();
        data.extend_from_slice(&self.body[at..end]);
        Ok((end + 3) & !3)
    }

    fn enhanced_packet(&self, data: &mut Vec<u8>) -> Result<PacketRecord, String> {
        if self.body.len() < 20 {
            return Err(format!("enhanced packet body is {} bytes, needs 20", self.body.len()));
        }
        self.timestamped_packet(data, self.order.u32(&self.body[0..4]))
    }

    /// The rest of an Enhanced or obsolete Packet Block, which share their
    /// layout after the interface field: timestamp high and low, captured
    /// and original length, data, options.
    fn timestamped_packet(
        &self,
        data: &mut Vec<u8>,
        interface: u32,
    ) -> Result<PacketRecord, String> {
        let (b, o) = (&self.body, self.order);
        let iface = self.interface(interface)?;
        let (caplen, orig_len) = (o.u32(&b[12..16]), o.u32(&b[16..20]));
        let ts_ns = self.timestamp(iface, o.u32(&b[4..8]), o.u32(&b[8..12]))?;
        let opts = self.packet_data(data, 20, caplen, orig_len, iface)?;
        let comment = first_comment(o, b.get(opts..).unwrap_or(&[]))?;
        Ok(PacketRecord { ts_ns, interface, linktype: iface.linktype, orig_len, comment })
    }

    fn simple_packet(&self, data: &mut Vec<u8>) -> Result<PacketRecord, String> {
        let b = &self.body;
        if b.len() < 4 {
            return Err(format!("simple packet body is {} bytes, needs 4", b.len()));
        }
        let iface = self.interface(0)?;
        let orig_len = self.order.u32(&b[0..4]);
        // The captured length is implied: the original length cut to the
        // snap length and to what the block holds.
        let mut caplen = orig_len.min((b.len() - 4) as u32);
        if iface.snaplen != 0 {
            caplen = caplen.min(iface.snaplen);
        }
        self.packet_data(data, 4, caplen, orig_len, iface)?;
        Ok(PacketRecord {
            ts_ns: 0,
            interface: 0,
            linktype: iface.linktype,
            orig_len,
            comment: None,
        })
    }

    fn obsolete_packet(&self, data: &mut Vec<u8>) -> Result<PacketRecord, String> {
        if self.body.len() < 20 {
            return Err(format!("packet block body is {} bytes, needs 20", self.body.len()));
        }
        self.timestamped_packet(data, self.order.u16(&self.body[0..2]) as u32)
    }
}

/// Call `f(code, value)` for each option until `opt_endofopt` or the end.
fn for_each_option(
    order: Order,
    mut opts: &[u8],
    mut f: impl FnMut(u16, &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    while opts.len() >= 4 {
        let (code, len) = (order.u16(&opts[0..2]), order.u16(&opts[2..4]) as usize);
        if code == OPT_END {
            return Ok(());
        }
        let padded = (len + 3) & !3;
        if 4 + len > opts.len() {
            return Err(format!(
                "option {code} of {len} bytes runs past the block's end ({} left)",
                opts.len() - 4
            ));
        }
        f(code, &opts[4..4 + len])?;
        opts = &opts[(4 + padded).min(opts.len())..];
    }
    Ok(())
}

fn first_comment(order: Order, opts: &[u8]) -> Result<Option<String>, String> {
    let mut comment = None;
    for_each_option(order, opts, |code, value| {
        if code == OPT_COMMENT && comment.is_none() {
            comment = Some(String::from_utf8_lossy(value).into_owned());
        }
        Ok(())
    })?;
    Ok(comment)
}

/// pcapng writer: one little-endian section, interfaces at nanosecond
/// resolution.
pub struct PcapngWriter<W: Write> {
    inner: W,
    interfaces: u32,
    packets: u64,
    block: Vec<u8>,
}

fn put_option(b: &mut Vec<u8>, code: u16, value: &[u8]) {
    let len = value.len().min(u16::MAX as usize - 3);
    b.extend_from_slice(&code.to_le_bytes());
    b.extend_from_slice(&(len as u16).to_le_bytes());
    b.extend_from_slice(&value[..len]);
    b.resize((b.len() + 3) & !3, 0);
}

impl<W: Write> PcapngWriter<W> {
    /// Write the section header (naming braid as the writing application).
    pub fn new(inner: W) -> Result<Self, PcapngError> {
        let mut w = PcapngWriter { inner, interfaces: 0, packets: 0, block: Vec::new() };
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(-1i64).to_le_bytes());
        put_option(
            &mut body,
            OPT_SHB_USERAPPL,
            concat!("braid ", env!("CARGO_PKG_VERSION")).as_bytes(),
        );
        put_option(&mut body, OPT_END, &[]);
        w.write_block(BLOCK_SHB, &body, "the section header")?;
        Ok(w)
    }

    /// A writer with one Ethernet interface (index 0), what `braid run`
    /// writes.
    pub fn ethernet(inner: W) -> Result<Self, PcapngError> {
        let mut w = PcapngWriter::new(inner)?;
        w.add_interface(crate::linktype::ETHERNET as u16, None)?;
        Ok(w)
    }

    /// Describe an interface with link type `linktype`; returns its index
    /// for [`PcapngWriter::write`].
    pub fn add_interface(&mut self, linktype: u16, name: Option<&str>) -> Result<u32, PcapngError> {
        let mut body = Vec::with_capacity(32);
        body.extend_from_slice(&linktype.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&MAX_SNAPLEN.to_le_bytes());
        if let Some(name) = name {
            put_option(&mut body, OPT_IF_NAME, name.as_bytes());
        }
        put_option(&mut body, OPT_IF_TSRESOL, &[9]);
        put_option(&mut body, OPT_END, &[]);
        let index = self.interfaces;
        self.write_block(BLOCK_IDB, &body, &format!("interface {index}"))?;
        self.interfaces += 1;
        Ok(index)
    }

    /// Append one packet of interface `interface` with timestamp `ts_ns`
    /// (ns since the Unix epoch) and an optional comment. Frames longer
    /// than the snap length are cut to it (the original length keeps the
    /// full length).
    pub fn write(
        &mut self,
        interface: u32,
        ts_ns: u64,
        frame: &[u8],
        comment: Option<&str>,
    ) -> Result<(), PcapngError> {
        self.write_cut(interface, ts_ns, frame, frame.len(), comment)
    }

    /// [`PcapngWriter::write`] for a frame already cut from one of
    /// `orig_len` bytes (a capture's snap length): the record keeps the
    /// original length (at least `frame.len()`).
    pub fn write_cut(
        &mut self,
        interface: u32,
        ts_ns: u64,
        frame: &[u8],
        orig_len: usize,
        comment: Option<&str>,
    ) -> Result<(), PcapngError> {
        let packet = self.packets + 1;
        if interface >= self.interfaces {
            return Err(PcapngError::Io {
                what: format!("writing packet {packet}"),
                source: std::io::Error::new(
                    ErrorKind::InvalidInput,
                    format!("interface {interface} was not added ({} are)", self.interfaces),
                ),
            });
        }
        let caplen = frame.len().min(MAX_SNAPLEN as usize);
        let mut body = std::mem::take(&mut self.block);
        body.clear();
        body.extend_from_slice(&interface.to_le_bytes());
        body.extend_from_slice(&((ts_ns >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ts_ns as u32).to_le_bytes());
        body.extend_from_slice(&(caplen as u32).to_le_bytes());
        body.extend_from_slice(
            &(orig_len.max(frame.len()).min(u32::MAX as usize) as u32).to_le_bytes(),
        );
        body.extend_from_slice(&frame[..caplen]);
        body.resize((body.len() + 3) & !3, 0);
        if let Some(c) = comment {
            put_option(&mut body, OPT_COMMENT, c.as_bytes());
            put_option(&mut body, OPT_END, &[]);
        }
        let r = self.write_block(BLOCK_EPB, &body, &format!("packet {packet}"));
        self.block = body;
        r?;
        self.packets = packet;
        Ok(())
    }

    /// Append an Interface Statistics Block for `interface` at `ts_ns`:
    /// packets the capture point saw (`isb_ifrecv`) and lost before they
    /// could be written (`isb_ifdrop`), what `capinfos` and Wireshark's
    /// capture file properties show.
    pub fn write_statistics(
        &mut self,
        interface: u32,
        ts_ns: u64,
        received: u64,
        dropped: u64,
    ) -> Result<(), PcapngError> {
        let mut body = Vec::with_capacity(48);
        body.extend_from_slice(&interface.to_le_bytes());
        body.extend_from_slice(&((ts_ns >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ts_ns as u32).to_le_bytes());
        put_option(&mut body, OPT_ISB_IFRECV, &received.to_le_bytes());
        put_option(&mut body, OPT_ISB_IFDROP, &dropped.to_le_bytes());
        put_option(&mut body, OPT_END, &[]);
        self.write_block(BLOCK_ISB, &body, &format!("statistics of interface {interface}"))
    }

    fn write_block(&mut self, kind: u32, body: &[u8], what: &str) -> Result<(), PcapngError> {
        let total = (body.len() + 12) as u32;
        let io = |source| PcapngError::Io { what: format!("writing {what}"), source };
        self.inner.write_all(&kind.to_le_bytes()).map_err(io)?;
        self.inner.write_all(&total.to_le_bytes()).map_err(io)?;
        self.inner.write_all(body).map_err(io)?;
        self.inner.write_all(&total.to_le_bytes()).map_err(io)?;
        Ok(())
    }

    /// Packets written so far.
    pub fn packets_written(&self) -> u64 {
        self.packets
    }

    pub fn flush(&mut self) -> Result<(), PcapngError> {
        self.inner
            .flush()
            .map_err(|source| PcapngError::Io { what: "flushing the pcapng file".into(), source })
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

    type Records = Vec<(PacketRecord, Vec<u8>)>;

    fn read_all(bytes: &[u8]) -> Result<Records, PcapngError> {
        let mut r = PcapngReader::new(bytes)?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(h) = r.next_packet(&mut buf)? {
            out.push((h, buf.clone()));
        }
        Ok(out)
    }

    /// Hand-built blocks in either byte order.
    struct Hand {
        big: bool,
        out: Vec<u8>,
    }

    impl Hand {
        fn u16(&self, v: u16) -> [u8; 2] {
            if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }
        fn u32(&self, v: u32) -> [u8; 4] {
            if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }
        fn block(&mut self, kind: u32, body: &[u8]) {
            let total = (body.len() + 12) as u32;
            let (k, t) = (self.u32(kind), self.u32(total));
            self.out.extend_from_slice(&k);
            self.out.extend_from_slice(&t);
            self.out.extend_from_slice(body);
            self.out.extend_from_slice(&t);
        }
        fn opt(&self, body: &mut Vec<u8>, code: u16, value: &[u8]) {
            body.extend_from_slice(&self.u16(code));
            body.extend_from_slice(&self.u16(value.len() as u16));
            body.extend_from_slice(value);
            body.resize((body.len() + 3) & !3, 0);
        }
        fn shb(&mut self) {
            let mut b = Vec::new();
            b.extend_from_slice(&self.u32(BYTE_ORDER_MAGIC));
            b.extend_from_slice(&self.u16(1));
            b.extend_from_slice(&self.u16(0));
            b.extend_from_slice(&[0xff; 8]);
            self.block(BLOCK_SHB, &b);
        }
        fn idb(&mut self, linktype: u16, tsresol: Option<u8>, tsoffset: Option<i64>) {
            let mut b = Vec::new();
            b.extend_from_slice(&self.u16(linktype));
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&self.u32(65535));
            if let Some(r) = tsresol {
                self.opt(&mut b, OPT_IF_TSRESOL, &[r]);
            }
            if let Some(o) = tsoffset {
                let v = if self.big { o.to_be_bytes() } else { o.to_le_bytes() };
                self.opt(&mut b, OPT_IF_TSOFFSET, &v);
            }
            self.opt(&mut b, OPT_END, &[]);
            self.block(BLOCK_IDB, &b);
        }
        fn epb(&mut self, iface: u32, ts: u64, data: &[u8], comment: Option<&str>) {
            let mut b = Vec::new();
            b.extend_from_slice(&self.u32(iface));
            b.extend_from_slice(&self.u32((ts >> 32) as u32));
            b.extend_from_slice(&self.u32(ts as u32));
            b.extend_from_slice(&self.u32(data.len() as u32));
            b.extend_from_slice(&self.u32(data.len() as u32));
            b.extend_from_slice(data);
            b.resize((b.len() + 3) & !3, 0);
            if let Some(c) = comment {
                self.opt(&mut b, OPT_COMMENT, c.as_bytes());
                self.opt(&mut b, OPT_END, &[]);
            }
            self.block(BLOCK_EPB, &b);
        }
    }

    #[test]
    fn round_trips_frames_timestamps_and_comments() {
        let mut w = PcapngWriter::ethernet(Vec::new()).unwrap();
        w.write(0, 1_700_000_000_123_456_789, &[1u8; 61], Some("dropped: no route")).unwrap();
        w.write(0, 5, &[2u8; 1514], None).unwrap();
        assert_eq!(w.packets_written(), 2);
        let bytes = w.into_inner();
        let mut r = PcapngReader::new(&bytes[..]).unwrap();
        assert!(r.application().unwrap().starts_with("braid "));
        let mut buf = Vec::new();
        let a = r.next_packet(&mut buf).unwrap().unwrap();
        assert_eq!(a.ts_ns, 1_700_000_000_123_456_789);
        assert_eq!(a.comment.as_deref(), Some("dropped: no route"));
        assert_eq!((a.linktype, a.orig_len, buf.clone()), (1, 61, vec![1u8; 61]));
        let b = r.next_packet(&mut buf).unwrap().unwrap();
        assert_eq!((b.ts_ns, b.comment, buf.len()), (5, None, 1514));
        assert!(r.next_packet(&mut buf).unwrap().is_none());
        assert_eq!(r.interfaces()[0].units_per_sec, 1_000_000_000);
    }

    #[test]
    fn reads_both_byte_orders_resolutions_sections_and_skips_unknown_blocks() {
        for big in [false, true] {
            let mut h = Hand { big, out: Vec::new() };
            h.shb();
            h.idb(1, None, None); // microseconds by default
            h.idb(113, Some(0x80 | 10), Some(100)); // 2^-10 s, +100 s
            h.block(4, &[0u8; 8]); // name resolution: skipped
            h.block(0x4000_0BAD, &[1, 2, 3, 4, 5, 6, 7, 8]); // custom: skipped
            h.epb(0, 3_250_000, &[9u8; 64], None);
            h.epb(1, 1024 + 512, &[7u8; 30], Some("hello"));
            // A second section in the other byte order replaces the
            // interfaces.
            let mut other = Hand { big: !big, out: Vec::new() };
            other.shb();
            other.idb(101, Some(9), None);
            other.epb(0, 42, &[0x45; 20], None);
            h.out.extend_from_slice(&other.out);
            let got = read_all(&h.out).unwrap();
            assert_eq!(got.len(), 3, "big endian {big}");
            assert_eq!((got[0].0.ts_ns, got[0].0.linktype), (3_250_000_000, 1));
            assert_eq!(got[0].1, vec![9u8; 64]);
            assert_eq!(got[1].0.ts_ns, 101_500_000_000);
            assert_eq!((got[1].0.linktype, got[1].0.comment.as_deref()), (113, Some("hello")));
            assert_eq!((got[2].0.ts_ns, got[2].0.linktype), (42, 101));
        }
    }

    #[test]
    fn bad_inputs_name_block_and_offset() {
        let err = |b: &[u8]| read_all(b).unwrap_err().to_string();
        assert_eq!(err(b""), "block 1 at byte offset 0: empty file: no pcapng section header");
        let mut h = Hand { big: false, out: Vec::new() };
        h.shb();
        h.idb(1, Some(9), None);
        h.epb(0, 1, &[1; 60], None);
        h.epb(0, 2, &[2; 60], None);
        let good = h.out.clone();
        let shb_len = 28;
        let idb_len = 20 + 8 + 4;
        let epb_len = 12 + 20 + 60;
        let second_epb = (shb_len + idb_len + epb_len) as u64;
        assert_eq!(read_all(&good).unwrap().len(), 2);
        // Cut in the last block.
        assert_eq!(
            err(&good[..good.len() - 10]),
            format!("block 4 at byte offset {second_epb}: truncated block: 82 of 92 bytes")
        );
        // A 4 GB block length is an error, not an allocation.
        let mut huge = good.clone();
        huge[second_epb as usize + 4..second_epb as usize + 8]
            .copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert_eq!(
            err(&huge),
            format!(
                "block 4 at byte offset {}: block length 4294967280 is larger than the 16777216 bytes accepted",
                second_epb + 4
            )
        );
        // Trailing length differs.
        let mut trail = good.clone();
        let end = trail.len();
        trail[end - 4] = 0x10;
        assert!(err(&trail).contains("trailing block length 16 differs from the leading 92"));
        // Unknown interface.
        let mut h2 = Hand { big: false, out: Vec::new() };
        h2.shb();
        h2.epb(0, 1, &[1; 60], None);
        assert_eq!(
            err(&h2.out),
            "block 2 at byte offset 28: packet names interface 0 but the section describes 0"
        );
        // Not a section header first; bad byte-order magic.
        assert!(err(&good[shb_len..]).contains("first block has type 0x00000001"));
        let mut magic = good.clone();
        magic[8] = 0;
        assert!(err(&magic).contains("bad byte-order magic 0x003c2b1a"), "{}", err(&magic));
        // Capture length past the block.
        let mut cap = good.clone();
        let at = shb_len + idb_len + 20;
        cap[at..at + 4].copy_from_slice(&200u32.to_le_bytes());
        cap[at + 4..at + 8].copy_from_slice(&200u32.to_le_bytes());
        assert!(err(&cap).contains("block 3 at byte offset 60: capture length 200 runs past"));
        // Resolution finer than we can express.
        let mut res = Hand { big: false, out: Vec::new() };
        res.shb();
        res.idb(1, Some(40), None);
        assert!(err(&res.out).contains("if_tsresol 10^-40 is finer than 10^-18"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary bytes (after a valid magic or not) never panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), shb in any::<bool>()) {
            let mut v = if shb { BLOCK_SHB.to_le_bytes().to_vec() } else { Vec::new() };
            v.extend_from_slice(&bytes);
            let _ = read_all(&v);
        }

        /// Write then read gives back every frame, timestamp and comment;
        /// damaging the file anywhere gives records or an error, no panic.
        #[test]
        fn round_trip_and_damage(
            frames in proptest::collection::vec(
                (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..200), proptest::option::of("[ -~]{0,20}")),
                0..6),
            at in any::<prop::sample::Index>(),
            val in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut w = PcapngWriter::ethernet(Vec::new()).unwrap();
            for (ts, f, c) in &frames {
                w.write(0, *ts, f, c.as_deref()).unwrap();
            }
            let bytes = w.into_inner();
            let back = read_all(&bytes).unwrap();
            prop_assert_eq!(back.len(), frames.len());
            for ((h, d), (ts, f, c)) in back.iter().zip(&frames) {
                prop_assert_eq!(h.ts_ns, *ts);
                prop_assert_eq!(d, f);
                prop_assert_eq!(&h.comment, c);
            }
            let mut damaged = bytes.clone();
            let i = at.index(damaged.len());
            damaged[i] = val;
            let keep = cut.index(damaged.len() + 1);
            let _ = read_all(&damaged[..keep]);
        }
    }
}
