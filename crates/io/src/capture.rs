//! Capture files as [`Port`]s: pcap or pcapng, files or standard streams.
//!
//! [`CaptureInPort`] reads classic pcap or pcapng (told apart by the first
//! four bytes), from a file or from standard input (`-`), and hands the
//! chain Ethernet frames: other link types are rewritten by
//! [`crate::linktype::to_ethernet`]. [`CaptureOutPort`] writes classic pcap
//! or pcapng to standard output (`-`) or to a file; a file is written
//! under a temporary name in the same directory and renamed into place by
//! [`Port::finish`], so an output that failed or never finished does not
//! replace an older file of the same name.

use std::fs::File;
use std::io::{BufReader, BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};

use braid_packet::{Batch, Packet};

use crate::linktype::{to_ethernet, Framing};
use crate::pcap::{PcapError, PcapReader, PcapWriter};
use crate::pcapng::{PcapngError, PcapngReader, PcapngWriter, BLOCK_SHB};
use crate::{Port, PortError, PortStats};

/// The path that means standard input (as input) or output (as output).
pub const STDIO: &str = "-";

/// File format of a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFormat {
    /// Classic libpcap format (nanosecond timestamps when written).
    Pcap,
    /// pcapng.
    Pcapng,
}

impl CaptureFormat {
    /// The format an output path asks for: pcapng when it ends in
    /// `.pcapng`, classic pcap otherwise (standard output included).
    pub fn for_output_path(path: &Path) -> CaptureFormat {
        match path.extension() {
            Some(ext) if ext.eq_ignore_ascii_case("pcapng") => CaptureFormat::Pcapng,
            _ => CaptureFormat::Pcap,
        }
    }
}

/// Error reading a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Pcap(#[from] PcapError),
    #[error(transparent)]
    Pcapng(#[from] PcapngError),
}

/// The first bytes, read to tell the format, put back in front.
type Sniffed<R> = std::io::Chain<Cursor<Vec<u8>>, R>;

/// Reader of either capture format.
pub enum CaptureReader<R: Read> {
    Pcap(PcapReader<Sniffed<R>>),
    Pcapng(PcapngReader<Sniffed<R>>),
}

/// One record of a [`CaptureReader`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureRecord {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// `LINKTYPE_*` of the frame.
    pub linktype: u32,
    /// Bytes the frame had on the wire.
    pub orig_len: u32,
    /// pcapng `opt_comment`, if any.
    pub comment: Option<String>,
}

impl<R: Read> CaptureReader<R> {
    /// Read the first bytes and open the matching reader.
    pub fn new(mut inner: R) -> Result<Self, CaptureError> {
        let mut magic = Vec::with_capacity(4);
        (&mut inner).take(4).read_to_end(&mut magic).map_err(|source| PcapError::Io {
            what: "reading the capture file header".into(),
            source,
        })?;
        let is_pcapng = magic == BLOCK_SHB.to_le_bytes();
        let inner = Cursor::new(magic).chain(inner);
        Ok(if is_pcapng {
            CaptureReader::Pcapng(PcapngReader::new(inner)?)
        } else {
            CaptureReader::Pcap(PcapReader::new(inner)?)
        })
    }

    /// The format being read.
    pub fn format(&self) -> CaptureFormat {
        match self {
            CaptureReader::Pcap(_) => CaptureFormat::Pcap,
            CaptureReader::Pcapng(_) => CaptureFormat::Pcapng,
        }
    }

    /// Read the next record into `data`. `Ok(None)` at a clean end.
    pub fn next_record(
        &mut self,
        data: &mut Vec<u8>,
    ) -> Result<Option<CaptureRecord>, CaptureError> {
        Ok(match self {
            CaptureReader::Pcap(r) => {
                let linktype = r.linktype();
                r.next_record(data)?.map(|h| CaptureRecord {
                    ts_ns: h.ts_ns,
                    linktype,
                    orig_len: h.orig_len,
                    comment: None,
                })
            }
            CaptureReader::Pcapng(r) => r.next_packet(data)?.map(|p| CaptureRecord {
                ts_ns: p.ts_ns,
                linktype: p.linktype,
                orig_len: p.orig_len,
                comment: p.comment,
            }),
        })
    }
}

fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn display(path: &Path) -> String {
    if path == Path::new(STDIO) {
        "standard input/output".into()
    } else {
        path.display().to_string()
    }
}

fn format_error(name: &str, e: impl Into<CaptureError>) -> PortError {
    match e.into() {
        CaptureError::Pcap(PcapError::Io { what, source })
        | CaptureError::Pcapng(PcapngError::Io { what, source }) => {
            PortError::Os { what: format!("{name}: {what}"), source }
        }
        e => PortError::Format(format!("{name}: {e}")),
    }
}

/// Input port reading a pcap or pcapng capture. Each packet's
/// `meta.rx_ns` is its capture timestamp (ns since the Unix epoch).
/// Frames that do not fit a packet buffer, and frames with no Ethernet
/// form, are dropped and counted in `rx_dropped`; a link type braid cannot
/// use at all is an error.
pub struct CaptureInPort {
    name: String,
    reader: CaptureReader<Box<dyn Read + Send>>,
    scratch: Vec<u8>,
    framed: Vec<u8>,
    at_end: bool,
    in_port: u16,
    stats: PortStats,
}

impl CaptureInPort {
    /// Open `path` (`-`: standard input) and check its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PortError> {
        let path = path.as_ref();
        let source: Box<dyn Read + Send> = if path == Path::new(STDIO) {
            Box::new(BufReader::with_capacity(1 << 16, std::io::stdin()))
        } else {
            let file = File::open(path).map_err(|source| PortError::Os {
                what: format!("cannot open {}", path.display()),
                source,
            })?;
            Box::new(BufReader::with_capacity(1 << 16, file))
        };
        let name = if path == Path::new(STDIO) { "stdin".into() } else { display(path) };
        Self::from_reader(name, source)
    }

    /// Read a capture from any byte source; `name` prefixes error messages.
    pub fn from_reader(name: String, source: Box<dyn Read + Send>) -> Result<Self, PortError> {
        let reader = CaptureReader::new(source).map_err(|e| format_error(&name, e))?;
        Ok(CaptureInPort {
            name,
            reader,
            scratch: Vec::with_capacity(2048),
            framed: Vec::with_capacity(2048),
            at_end: false,
            in_port: 0,
            stats: PortStats::default(),
        })
    }

    /// The format being read.
    pub fn format(&self) -> CaptureFormat {
        self.reader.format()
    }

    /// Set `meta.in_port` of received packets.
    pub fn set_in_port(&mut self, index: u16) {
        self.in_port = index;
    }
}

impl Port for CaptureInPort {
    fn name(&self) -> String {
        format!("capture:{}", self.name)
    }

    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        let mut n = 0;
        while n < max && !self.at_end {
            let record = match self.reader.next_record(&mut self.scratch) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    self.at_end = true;
                    break;
                }
                Err(e) => {
                    // Nothing after a format error can be trusted.
                    self.at_end = true;
                    return Err(format_error(&self.name, e));
                }
            };
            let Some(framing) = Framing::for_linktype(record.linktype) else {
                self.at_end = true;
                return Err(PortError::Format(format!(
                    "{}: record {}: link type {} is not supported (braid reads {})",
                    self.name,
                    self.stats.rx_packets + self.stats.rx_dropped + 1,
                    record.linktype,
                    Framing::SUPPORTED
                )));
            };
            let frame = if framing == Framing::Ethernet {
                &self.scratch
            } else {
                match to_ethernet(framing, &self.scratch, &mut self.framed) {
                    Ok(()) => &self.framed,
                    Err(_) => {
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                }
            };
            match Packet::try_from_bytes(frame) {
                Ok(mut p) => {
                    p.meta.rx_ns = record.ts_ns;
                    p.meta.in_port = self.in_port;
                    self.stats.rx_packets += 1;
                    self.stats.rx_bytes += frame.len() as u64;
                    batch.push(p);
                    n += 1;
                }
                Err(_) => self.stats.rx_dropped += 1,
            }
        }
        Ok(n)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        self.stats.tx_dropped += batch.len() as u64;
        batch.clear();
        Err(PortError::Config(format!("{} is an input port: it cannot send", self.name())))
    }

    fn at_end(&self) -> bool {
        self.at_end
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

/// Where an output capture goes.
enum Sink {
    Stdout(std::io::Stdout),
    File(File),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout(s) => s.write(buf),
            Sink::File(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            Sink::File(f) => f.flush(),
        }
    }
}

enum Writer {
    Pcap(PcapWriter<BufWriter<Sink>>),
    Pcapng(PcapngWriter<BufWriter<Sink>>),
}

/// A file being written aside, to be renamed into place.
struct Pending {
    temp: PathBuf,
    dest: PathBuf,
}

/// Output port writing pcap or pcapng (Ethernet) to a file or standard
/// output. A packet's timestamp is its `meta.rx_ns` when that looks like
/// a wall-clock time (read from a capture), else the current time.
pub struct CaptureOutPort {
    name: String,
    /// `None` once finished (or after a failed finish).
    writer: Option<Writer>,
    /// For files: the temporary file and its final name.
    pending: Option<Pending>,
    /// A write failed: the output is incomplete and must not replace
    /// anything.
    failed: bool,
    stats: PortStats,
}

/// 2001-09-09 in ns: anything later is taken as a wall-clock timestamp,
/// anything earlier as a monotonic one.
const WALL_CLOCK_FLOOR_NS: u64 = 1_000_000_000 * 1_000_000_000;

impl CaptureOutPort {
    /// Start writing `path` (`-`: standard output) in `format` (default:
    /// [`CaptureFormat::for_output_path`]). A file is written to a
    /// temporary name next to it until [`Port::finish`].
    pub fn create(
        path: impl AsRef<Path>,
        format: Option<CaptureFormat>,
    ) -> Result<Self, PortError> {
        let path = path.as_ref();
        let format = format.unwrap_or_else(|| CaptureFormat::for_output_path(path));
        let (name, sink, pending) = if path == Path::new(STDIO) {
            ("stdout".to_string(), Sink::Stdout(std::io::stdout()), None)
        } else if let Some(special) = special_file(path) {
            // A device or FIFO (`/dev/null`, a named pipe) is written in
            // place: renaming a file over it would replace the device.
            let file = File::options().write(true).open(&special).map_err(|source| {
                PortError::Os { what: format!("cannot open {}", path.display()), source }
            })?;
            (path.display().to_string(), Sink::File(file), None)
        } else {
            // Through a symbolic link, the file it points to is replaced.
            let dest = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            let temp = temp_path_for(&dest)?;
            let file =
                File::options().write(true).create_new(true).open(&temp).map_err(|source| {
                    PortError::Os {
                        what: format!(
                            "cannot create {} (to become {})",
                            temp.display(),
                            path.display()
                        ),
                        source,
                    }
                })?;
            let pending = Pending { temp, dest };
            (path.display().to_string(), Sink::File(file), Some(pending))
        };
        let mut port = CaptureOutPort {
            name,
            writer: None,
            pending,
            failed: false,
            stats: PortStats::default(),
        };
        let out = BufWriter::with_capacity(1 << 16, sink);
        let writer = match format {
            CaptureFormat::Pcap => {
                PcapWriter::new(out).map(Writer::Pcap).map_err(CaptureError::from)
            }
            CaptureFormat::Pcapng => {
                PcapngWriter::ethernet(out).map(Writer::Pcapng).map_err(CaptureError::from)
            }
        };
        // On error `port` drops and removes the temporary file.
        port.writer = Some(writer.map_err(|e| format_error(&port.name, e))?);
        Ok(port)
    }

    fn write_one(&mut self, ts: u64, frame: &[u8]) -> Result<(), PortError> {
        let r = match self.writer.as_mut() {
            Some(Writer::Pcap(w)) => w.write(ts, frame).map_err(CaptureError::from),
            Some(Writer::Pcapng(w)) => w.write(0, ts, frame, None).map_err(CaptureError::from),
            None => {
                return Err(PortError::Config(format!("{}: output already finished", self.name)))
            }
        };
        r.map_err(|e| format_error(&self.name, e))
    }

    fn flush_writer(&mut self) -> Result<(), PortError> {
        let r = match self.writer.as_mut() {
            Some(Writer::Pcap(w)) => w.flush().map_err(CaptureError::from),
            Some(Writer::Pcapng(w)) => w.flush().map_err(CaptureError::from),
            None => Ok(()),
        };
        r.map_err(|e| format_error(&self.name, e))
    }
}

/// `path` (links followed) if it exists and is not a regular file or a
/// directory: a character or block device, FIFO or socket.
fn special_file(path: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    (!meta.is_file() && !meta.is_dir()).then(|| path.to_path_buf())
}

/// `.NAME.braid-PID.tmp` next to `dest`.
fn temp_path_for(dest: &Path) -> Result<PathBuf, PortError> {
    let file_name = dest.file_name().ok_or_else(|| {
        PortError::Config(format!("output path {} does not name a file", dest.display()))
    })?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(file_name);
    temp.push(format!(".braid-{}.tmp", std::process::id()));
    Ok(dest.with_file_name(temp))
}

impl Port for CaptureOutPort {
    fn name(&self) -> String {
        format!("capture:{}", self.name)
    }

    fn recv(&mut self, _batch: &mut Batch, _max: usize) -> Result<usize, PortError> {
        Ok(0)
    }

    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        let now = wall_clock_ns();
        let mut sent = 0;
        let mut result = Ok(());
        for p in batch.drain() {
            if result.is_err() {
                self.stats.tx_dropped += 1;
                continue;
            }
            let ts = if p.meta.rx_ns >= WALL_CLOCK_FLOOR_NS { p.meta.rx_ns } else { now };
            if let Err(e) = self.write_one(ts, p.data()) {
                self.failed = true;
                self.stats.tx_dropped += 1;
                result = Err(e);
                continue;
            }
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += p.len() as u64;
            sent += 1;
        }
        result?;
        Ok(sent)
    }

    fn flush(&mut self) -> Result<(), PortError> {
        let r = self.flush_writer();
        self.failed |= r.is_err();
        r
    }

    /// Flush; for a file, sync it and rename it over its final name. Fails
    /// (leaving any older file in place) if a write failed before.
    fn finish(&mut self) -> Result<(), PortError> {
        let flushed = self.flush();
        let Some(writer) = self.writer.take() else { return flushed };
        flushed?;
        if self.failed {
            return Err(PortError::Config(format!(
                "{}: not written because an earlier write failed",
                self.name
            )));
        }
        let buffered = match writer {
            Writer::Pcap(w) => w.into_inner(),
            Writer::Pcapng(w) => w.into_inner(),
        };
        let sink = buffered.into_inner().map_err(|e| PortError::Os {
            what: format!("{}: flushing", self.name),
            source: e.into_error(),
        })?;
        // Only a file written aside is synced and renamed; a device or FIFO
        // written in place is done once flushed.
        if let (Sink::File(file), Some(p)) = (sink, self.pending.as_ref()) {
            file.sync_all().map_err(|source| PortError::Os {
                what: format!("syncing {}", p.temp.display()),
                source,
            })?;
            std::fs::rename(&p.temp, &p.dest).map_err(|source| PortError::Os {
                what: format!("renaming {} to {}", p.temp.display(), p.dest.display()),
                source,
            })?;
            self.pending = None;
        }
        Ok(())
    }

    fn at_end(&self) -> bool {
        true
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

impl Drop for CaptureOutPort {
    fn drop(&mut self) {
        // Not finished: nothing replaces the destination.
        if let Some(p) = self.pending.take() {
            let _ = std::fs::remove_file(&p.temp);
        }
    }
}

/// True if `a` and `b` are the same existing file (same device and inode,
/// after following symbolic links; hard links count). `-` stands for
/// standard input or output, which may be redirected to a file. A path
/// that does not exist is no file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let resolve = |p: &Path, stdio: &str| {
        if p == Path::new(STDIO) {
            std::fs::metadata(stdio).ok()
        } else {
            std::fs::metadata(p).ok()
        }
    };
    match (resolve(a, "/dev/stdin"), resolve(b, "/dev/stdout")) {
        (Some(x), Some(y)) => x.is_file() && x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed on drop, also when a test fails.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("braid-capture-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pcap(frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        for (ts, f) in frames {
            w.write(*ts, f).unwrap();
        }
        w.into_inner()
    }

    fn read_back(path: &Path) -> Vec<(CaptureRecord, Vec<u8>)> {
        let mut r = CaptureReader::new(File::open(path).unwrap()).unwrap();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(h) = r.next_record(&mut buf).unwrap() {
            out.push((h, buf.clone()));
        }
        out
    }

    #[test]
    fn port_reads_what_precedes_an_error_then_fails() {
        let dir = TempDir::new("cut");
        let path = dir.0.join("cut.pcap");
        let three = pcap(&[(1, vec![1; 60]), (2, vec![2; 60]), (3, vec![3; 60])]);
        std::fs::write(&path, &three[..three.len() - 1]).unwrap();
        let mut port = CaptureInPort::open(&path).unwrap();
        assert_eq!(port.format(), CaptureFormat::Pcap);
        let mut b = Batch::new();
        let e = port.recv(&mut b, 32).unwrap_err();
        assert_eq!(b.len(), 2);
        assert!(e.to_string().contains("cut.pcap: record 3 at byte offset"), "{e}");
        assert!(port.at_end());

        for (name, format) in
            [("out.pcap", CaptureFormat::Pcap), ("out.pcapng", CaptureFormat::Pcapng)]
        {
            let out = dir.0.join(name);
            let mut w = CaptureOutPort::create(&out, None).unwrap();
            let mut copy = Batch::new();
            for p in b.iter() {
                copy.push(Packet::try_from_bytes(p.data()).unwrap());
            }
            assert_eq!(w.send(&mut copy).unwrap(), 2);
            assert!(!out.exists(), "the output appears only when finished");
            w.finish().unwrap();
            drop(w);
            let back = read_back(&out);
            assert_eq!(back.len(), 2);
            assert_eq!(CaptureReader::new(File::open(&out).unwrap()).unwrap().format(), format);
            assert!(
                back[0].0.ts_ns > WALL_CLOCK_FLOOR_NS,
                "timestamps below the wall-clock floor are replaced"
            );
        }
        // Only the two outputs and the input: no temporary files left.
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 3);
    }

    #[test]
    fn unfinished_or_failed_output_leaves_the_old_file() {
        let dir = TempDir::new("atomic");
        let out = dir.0.join("keep.pcap");
        std::fs::write(&out, b"old contents").unwrap();
        let mut w = CaptureOutPort::create(&out, Some(CaptureFormat::Pcapng)).unwrap();
        let mut b = Batch::new();
        b.push(Packet::try_from_bytes(&[7; 60]).unwrap());
        w.send(&mut b).unwrap();
        w.flush().unwrap();
        drop(w); // as when a run fails before finishing
        assert_eq!(std::fs::read(&out).unwrap(), b"old contents");
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1, "temporary file removed");

        // A write that fails marks the output failed: finish refuses.
        let mut w = CaptureOutPort::create(&out, None).unwrap();
        w.failed = true;
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("an earlier write failed"), "{e}");
        drop(w);
        assert_eq!(std::fs::read(&out).unwrap(), b"old contents");

        // A FIFO (like a device such as /dev/null) is written in place,
        // never replaced by a renamed file; a symbolic link's target is
        // replaced, the link stays. (A FIFO, not /dev/null: a regression
        // here must not be able to replace a device of the machine.)
        let fifo = dir.0.join("fifo.pcap");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let mut w = CaptureOutPort::create(&fifo, None).unwrap();
        w.finish().unwrap();
        drop(w);
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(reader.join().unwrap().len(), crate::pcap::FILE_HEADER_LEN);
        std::fs::remove_file(&fifo).unwrap();
        let link = dir.0.join("link.pcap");
        std::os::unix::fs::symlink(&out, &link).unwrap();
        let mut w = CaptureOutPort::create(&link, None).unwrap();
        w.finish().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&out).unwrap().len(), crate::pcap::FILE_HEADER_LEN);
        std::fs::remove_file(&link).unwrap();

        // An explicit format wins over the extension.
        let mut w = CaptureOutPort::create(&out, Some(CaptureFormat::Pcapng)).unwrap();
        w.finish().unwrap();
        assert_eq!(&std::fs::read(&out).unwrap()[0..4], &BLOCK_SHB.to_le_bytes());
    }

    #[test]
    fn other_link_types_become_ethernet_or_are_refused() {
        let dir = TempDir::new("link");
        // A pcapng with a raw IPv4 interface and an 802.11 one.
        let mut w = PcapngWriter::new(Vec::new()).unwrap();
        let raw = w.add_interface(228, Some("tun0")).unwrap();
        let wifi = w.add_interface(105, None).unwrap();
        let mut ip = vec![0u8; 28];
        ip[0] = 0x45;
        w.write(raw, 1_700_000_000_000_000_001, &ip, Some("first")).unwrap();
        w.write(raw, 1_700_000_000_000_000_002, &[0x45], None).unwrap();
        w.write(wifi, 3, &[0; 30], None).unwrap();
        let path = dir.0.join("mixed.pcapng");
        std::fs::write(&path, w.into_inner()).unwrap();
        let mut port = CaptureInPort::open(&path).unwrap();
        assert_eq!(port.format(), CaptureFormat::Pcapng);
        let mut b = Batch::new();
        let e = port.recv(&mut b, 32).unwrap_err().to_string();
        assert!(
            e.contains("record 3: link type 105 is not supported (braid reads 1 (Ethernet)"),
            "{e}"
        );
        assert_eq!(b.len(), 2);
        let p = &b.as_slice()[0];
        assert_eq!(p.meta.rx_ns, 1_700_000_000_000_000_001);
        assert_eq!(&p.data()[12..14], &[0x08, 0x00]);
        assert_eq!(&p.data()[14..], &ip[..]);
        assert_eq!(p.len(), 14 + 28);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Arbitrary bytes after either format's magic, through the whole
        /// input port (format sniffing, reader, link-type framing): packets
        /// or an error, never a panic, and the port reaches its end.
        #[test]
        fn arbitrary_input_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            magic in 0usize..3,
        ) {
            let mut v = match magic {
                0 => BLOCK_SHB.to_le_bytes().to_vec(),
                1 => 0xa1b2_3c4du32.to_le_bytes().to_vec(),
                _ => Vec::new(),
            };
            v.extend_from_slice(&bytes);
            if let Ok(mut port) = CaptureInPort::from_reader("fuzz".into(), Box::new(Cursor::new(v))) {
                let mut b = Batch::new();
                for _ in 0..1000 {
                    if port.at_end() || port.recv(&mut b, 32).is_err() {
                        break;
                    }
                }
                proptest::prop_assert!(port.at_end());
            }
        }
    }

    #[test]
    fn same_file_follows_links_and_ignores_missing_paths() {
        let dir = TempDir::new("same");
        let a = dir.0.join("a.pcap");
        std::fs::write(&a, b"x").unwrap();
        std::os::unix::fs::symlink(&a, dir.0.join("sym.pcap")).unwrap();
        std::fs::hard_link(&a, dir.0.join("hard.pcap")).unwrap();
        std::fs::write(dir.0.join("b.pcap"), b"x").unwrap();
        assert!(same_file(&a, &a));
        assert!(same_file(&a, &dir.0.join("sym.pcap")));
        assert!(same_file(&a, &dir.0.join("hard.pcap")));
        assert!(!same_file(&a, &dir.0.join("b.pcap")));
        assert!(!same_file(&a, &dir.0.join("missing.pcap")));
    }
}
