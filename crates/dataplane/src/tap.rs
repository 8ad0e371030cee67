//! Taps: mirror the packets entering or leaving a stage of a running
//! worker, and the packets it drops with their reason, to a reader on
//! another thread (`braid capture`, docs/capture.md).
//!
//! A tap lives in its [`Stage`](crate::Stage) and is installed and removed
//! by the worker itself between batches ([`Command::Tap`],
//! [`Command::Untap`]), so the packet path needs no lock and no atomic to
//! know whether to tap: a stage call reads the length of its own list of
//! taps, which is 0 when nobody captures. While a tap is on, every packet
//! at a tapped point that passes its [`Filter`] is copied into a bounded
//! channel with `try_send`: the worker never waits for the reader; what
//! does not fit is counted as lost ([`TapReceiver::lost`]). A tap whose
//! reader went away removes itself at its next packet.
//!
//! Drops with their reason: while a tap asks for drops, the stage copies
//! its input frames before the NF runs and gives the NF a [`DropLog`]
//! through its `Context`; after the call, the packets that vanished (their
//! buffer is not in the output, see [`Packet::buffer_id`]) are paired with
//! the logged reasons: exactly by index for drops made through
//! `Context::retain`, in order for those counted with
//! `Context::drop_packet`. A packet that vanished with no logged reason was
//! held back by the NF (a shaper queue, a coding generation), not dropped,
//! and is not reported. Packets leaving by a gate linked to nothing are
//! reported as dropped for `unconnected` (after being seen as `out`).
//!
//! [`CaptureSession`] turns a tap into a pcapng stream: one interface per
//! point (`NF:in`, `NF:out`, `NF:drops`), the gate or the drop reason as
//! each packet's comment, interface statistics (received, lost) at the
//! end. [`serve_unix`] serves capture sessions on a unix socket (what
//! `braid deploy` does), [`request_unix`] is its client.
//!
//! [`Command::Tap`]: crate::Command::Tap
//! [`Command::Untap`]: crate::Command::Untap
//! [`Packet::buffer_id`]: braid_packet::Packet::buffer_id

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use braid_io::pcapng::{PcapngError, PcapngWriter};
use braid_nf::{DropLog, DropReason};
use braid_packet::filter::{Filter, FilterError};
use braid_packet::{Batch, Packet};

use braid_io::xdp::XdpError;
use braid_io::xdp_tap::{TapDropReason, TapPoint, TapSample, XdpTapMaps, XdpTapReader};

use crate::control::{ControlError, WorkerHandle};

/// Where on a stage packets are tapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Point {
    /// Entering the NF (as it receives them).
    In,
    /// Leaving the NF (as it sends them on).
    Out,
    /// Dropped by the NF (as they entered it), with the reason.
    Drops,
}

impl Point {
    pub const ALL: [Point; 3] = [Point::In, Point::Out, Point::Drops];

    pub fn name(self) -> &'static str {
        match self {
            Point::In => "in",
            Point::Out => "out",
            Point::Drops => "drops",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl std::str::FromStr for Point {
    type Err = crate::UnknownWord;
    fn from_str(s: &str) -> Result<Point, crate::UnknownWord> {
        match s {
            "in" => Ok(Point::In),
            "out" => Ok(Point::Out),
            "drops" | "drop" => Ok(Point::Drops),
            other => Err(crate::UnknownWord {
                what: "capture point",
                given: other.to_string(),
                expected: "in, out or drops",
            }),
        }
    }
}

/// One mirrored packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// The frame's length before a snap length cut it (kernel NFs: frames
    /// over [`braid_io::xdp_tap::TAP_SNAP`] bytes); `frame.len()` otherwise.
    pub orig_len: usize,
    /// Wall-clock time, ns since the Unix epoch (read once per tapped call).
    pub ts_ns: u64,
    pub point: Point,
    /// The gate it entered by (`in`, `drops`) or leaves by (`out`).
    pub gate: u16,
    /// Why it was dropped (`drops` only).
    pub reason: Option<DropReason>,
    pub frame: Vec<u8>,
}

/// Counters of a tap, shared by the worker (writer) and the reader.
#[derive(Debug, Default)]
struct TapCounters {
    /// Packets that passed the filter at a tapped point.
    matched: AtomicU64,
    /// Of those, packets the channel had no room for.
    lost: AtomicU64,
}

/// A tap as its stage holds it (see the module documentation).
pub struct Tap {
    id: u64,
    points: u8,
    filter: Filter,
    tx: SyncSender<Captured>,
    counters: Arc<TapCounters>,
    closed: bool,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("id", &self.id)
            .field("points", &self.points)
            .field("filter", &self.filter.text())
            .finish()
    }
}

/// The reading end of a tap.
#[derive(Debug)]
pub struct TapReceiver {
    id: u64,
    rx: Receiver<Captured>,
    counters: Arc<TapCounters>,
}

static NEXT_TAP: AtomicU64 = AtomicU64::new(1);

/// Packets a tap's channel holds by default before it counts losses.
pub const DEFAULT_TAP_CAPACITY: usize = 8192;

/// A tap on `points` with `filter` and a channel of `capacity` packets
/// (at least 1), and its receiver. Install it with [`WorkerHandle::tap`].
pub fn tap(points: &[Point], filter: Filter, capacity: usize) -> (Tap, TapReceiver) {
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    let counters = Arc::new(TapCounters::default());
    let id = NEXT_TAP.fetch_add(1, Ordering::Relaxed);
    let points = points.iter().fold(0, |m, p| m | p.bit());
    (
        Tap { id, points, filter, tx, counters: counters.clone(), closed: false },
        TapReceiver { id, rx, counters },
    )
}

impl Tap {
    /// Its identity (for [`crate::Command::Untap`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    #[inline]
    pub(crate) fn wants(&self, p: Point) -> bool {
        self.points & p.bit() != 0
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Offer one packet; never blocks.
    fn offer(&mut self, ts_ns: u64, point: Point, gate: u16, reason: Option<DropReason>, f: &[u8]) {
        if self.closed || !self.wants(point) || !self.filter.matches(f) {
            return;
        }
        self.counters.matched.fetch_add(1, Ordering::Relaxed);
        let c = Captured { orig_len: f.len(), ts_ns, point, gate, reason, frame: f.to_vec() };
        match self.tx.try_send(c) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => self.closed = true,
        }
    }
}

impl TapReceiver {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next mirrored packet, waiting up to `timeout`. `Err(true)`: the
    /// tap is gone (removed, or its worker stopped); `Err(false)`: nothing
    /// came in time.
    pub fn recv(&self, timeout: Duration) -> Result<Captured, bool> {
        match self.rx.recv_timeout(timeout) {
            Ok(c) => Ok(c),
            Err(RecvTimeoutError::Timeout) => Err(false),
            Err(RecvTimeoutError::Disconnected) => Err(true),
        }
    }

    /// A packet already waiting, if any.
    pub fn try_recv(&self) -> Option<Captured> {
        self.rx.try_recv().ok()
    }

    /// Packets that passed the filter at a tapped point so far.
    pub fn matched(&self) -> u64 {
        self.counters.matched.load(Ordering::Relaxed)
    }

    /// Of those, packets lost because the reader was behind.
    pub fn lost(&self) -> u64 {
        self.counters.lost.load(Ordering::Relaxed)
    }
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The input frames a drop tap may report, by index (None: no drop tap's
/// filter takes it), and the gate they came in by.
type DropInputs = (Vec<usize>, Vec<Option<Vec<u8>>>, u16);

/// What a tapped stage call keeps across the NF call.
pub(crate) struct Before {
    ts_ns: u64,
    /// Input buffer identities and the frames a drop tap may report
    /// (None: no drop tap's filter takes it), when drops are tapped.
    inputs: Option<DropInputs>,
}

/// Before the NF runs: mirror what enters, remember the inputs if drops
/// are tapped. `gate` is the gate the batch came in on.
pub(crate) fn before(taps: &mut [Tap], b: &Batch, gate: u16) -> Before {
    let ts_ns = wall_ns();
    if taps.iter().any(|t| t.wants(Point::In)) {
        for p in b.iter() {
            for t in taps.iter_mut() {
                t.offer(ts_ns, Point::In, gate, None, p.data());
            }
        }
    }
    // Drops are reported as the packets entered: keep a copy of those a
    // drop tap's filter takes (only those: a narrow filter costs no copy).
    let inputs = taps.iter().any(|t| t.wants(Point::Drops)).then(|| {
        let keep = |f: &[u8]| {
            taps.iter().any(|t| !t.closed && t.wants(Point::Drops) && t.filter.matches(f))
        };
        (
            b.iter().map(Packet::buffer_id).collect(),
            b.iter().map(|p| keep(p.data()).then(|| p.data().to_vec())).collect(),
            gate,
        )
    });
    Before { ts_ns, inputs }
}

/// Whether [`before`] asked for a drop log.
pub(crate) fn wants_log(b: &Before) -> bool {
    b.inputs.is_some()
}

/// After the NF ran: mirror what leaves (by `out_gate`, or each packet's
/// `meta.out_port` when `switch`), and the drops found from `log`.
pub(crate) fn after(
    taps: &mut Vec<Tap>,
    before: Before,
    b: &Batch,
    out_gate: u16,
    switch: bool,
    log: &DropLog,
) {
    let ts = before.ts_ns;
    if taps.iter().any(|t| t.wants(Point::Out)) {
        for p in b.iter() {
            let g = if switch { p.meta.out_port } else { out_gate };
            for t in taps.iter_mut() {
                t.offer(ts, Point::Out, g, None, p.data());
            }
        }
    }
    if let Some((ids, frames, gate)) = before.inputs {
        for (i, reason) in pair_drops(&ids, b, log) {
            let Some(frame) = &frames[i] else { continue };
            for t in taps.iter_mut() {
                t.offer(ts, Point::Drops, gate, Some(reason), frame);
            }
        }
    }
    taps.retain(|t| !t.is_closed());
}

/// The input indices that were dropped, with their reasons.
fn pair_drops(ids: &[usize], out: &Batch, log: &DropLog) -> Vec<(usize, DropReason)> {
    if log.entries.is_empty() {
        return Vec::new();
    }
    let mut kept: Vec<usize> = out.iter().map(Packet::buffer_id).collect();
    kept.sort_unstable();
    let mut reason: Vec<Option<DropReason>> = vec![None; ids.len()];
    let vanished: Vec<bool> = ids.iter().map(|id| kept.binary_search(id).is_err()).collect();
    let mut unindexed = Vec::new();
    for &(i, r) in &log.entries {
        match i.map(|i| i as usize).filter(|i| *i < ids.len()) {
            Some(i) => reason[i] = Some(r),
            None => unindexed.push(r),
        }
    }
    let mut rest = unindexed.into_iter();
    for i in 0..ids.len() {
        if vanished[i] && reason[i].is_none() {
            match rest.next() {
                Some(r) => reason[i] = Some(r),
                None => break,
            }
        }
    }
    reason.into_iter().enumerate().filter_map(|(i, r)| Some((i, r?))).collect()
}

/// Mirror packets that leave a stage by an unlinked gate as drops.
pub(crate) fn unconnected(taps: &mut Vec<Tap>, b: &Batch, gate: u16) {
    let ts = wall_ns();
    for p in b.iter() {
        for t in taps.iter_mut() {
            t.offer(ts, Point::Drops, gate, Some(DropReason::Unconnected), p.data());
        }
    }
    taps.retain(|t| !t.is_closed());
}

/// Mirror packets an NF emitted from `tick` (leaving by `gate`).
pub(crate) fn emitted(taps: &mut Vec<Tap>, b: &Batch, gate: u16, switch: bool) {
    let ts = wall_ns();
    for p in b.iter() {
        let g = if switch { p.meta.out_port } else { gate };
        for t in taps.iter_mut() {
            t.offer(ts, Point::Out, g, None, p.data());
        }
    }
    taps.retain(|t| !t.is_closed());
}

/// What to capture: the request `braid capture` sends.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// The NF (stage) name.
    pub nf: String,
    /// The points; empty means all three.
    #[serde(default)]
    pub points: Vec<Point>,
    /// A filter expression ([`braid_packet::filter`]); empty: everything.
    #[serde(default)]
    pub filter: String,
    /// Stop after this many packets.
    #[serde(default)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[serde(default)]
    pub seconds: Option<f64>,
}

/// Why a capture could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("--seconds {0}: must be a positive number")]
    Seconds(f64),
    #[error("NF `{nf}`: {source}")]
    Control {
        nf: String,
        #[source]
        source: ControlError,
    },
    #[error("writing the capture: {0}")]
    Write(#[from] PcapngError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("NF `{nf}` in the kernel (XDP): {source}")]
    Xdp {
        nf: String,
        #[source]
        source: XdpError,
    },
}

/// How a capture ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaptureSummary {
    /// Packets written.
    pub written: u64,
    /// Packets that passed the filter at the tapped points.
    pub matched: u64,
    /// Packets lost because the reader was behind (not in the file).
    pub lost: u64,
}

/// An NF placed in the kernel that a capture can tap: its XDP program's
/// tap maps, its slot there, and the gate of each interface frames arrive
/// on (gate 0 towards the client, 1 towards the server). A frame tapped
/// `out` leaves by the other gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpTarget {
    pub maps: XdpTapMaps,
    pub slot: u32,
    /// (ingress ifindex, gate).
    pub gates: Vec<(u32, u16)>,
}

/// Where a capture's NF runs: a stage of a user-space worker, or an XDP
/// program.
#[derive(Clone, Debug)]
pub enum CaptureTarget {
    Worker(WorkerHandle),
    Xdp(XdpTarget),
}

impl From<WorkerHandle> for CaptureTarget {
    fn from(h: WorkerHandle) -> CaptureTarget {
        CaptureTarget::Worker(h)
    }
}

impl From<XdpTarget> for CaptureTarget {
    fn from(t: XdpTarget) -> CaptureTarget {
        CaptureTarget::Xdp(t)
    }
}

/// The kernel side of a capture on an XDP NF: the ring reader (its tap
/// word set; cleared when it drops) and the filter, applied here in user
/// space to each sample.
struct XdpSource {
    reader: XdpTapReader,
    filter: Filter,
    gates: Vec<(u32, u16)>,
    matched: u64,
    error: Option<XdpError>,
}

impl XdpSource {
    fn captured(&self, s: TapSample) -> Captured {
        let gate = self.gates.iter().find(|(i, _)| *i == s.ifindex).map_or(0, |(_, g)| *g);
        let (point, gate, reason) = match s.point {
            TapPoint::In => (Point::In, gate, None),
            TapPoint::Out => (Point::Out, 1 - gate.min(1), None),
            TapPoint::Drop => (
                Point::Drops,
                gate,
                Some(match s.reason {
                    Some(TapDropReason::Malformed) => DropReason::Malformed,
                    Some(TapDropReason::Denied) | None => DropReason::Denied,
                }),
            ),
        };
        Captured {
            orig_len: s.orig_len as usize,
            ts_ns: self.reader.wall_ns(s.mono_ns),
            point,
            gate,
            reason,
            frame: s.frame,
        }
    }

    /// The next sample of this slot that passes the filter, within
    /// `timeout`. `Err(true)`: a sample could not be read (kept in
    /// `error`).
    fn recv(&mut self, timeout: Duration) -> Result<Captured, bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reader.next(left) {
                Ok(Some(s)) if !self.filter.matches(&s.frame) => {}
                Ok(Some(s)) => {
                    self.matched += 1;
                    return Ok(self.captured(s));
                }
                Ok(None) => return Err(false),
                Err(e) => {
                    self.error = Some(e);
                    return Err(true);
                }
            }
            if left.is_zero() {
                return Err(false);
            }
        }
    }
}

/// What a session reads: a worker's tap or an XDP program's ring.
enum Source {
    Worker { handle: WorkerHandle, rx: TapReceiver },
    Xdp(Box<XdpSource>),
}

impl Source {
    fn recv(&mut self, timeout: Duration) -> Result<Captured, bool> {
        match self {
            Source::Worker { rx, .. } => rx.recv(timeout),
            Source::Xdp(x) => x.recv(timeout),
        }
    }

    fn try_recv(&mut self) -> Option<Captured> {
        match self {
            Source::Worker { rx, .. } => rx.try_recv(),
            Source::Xdp(x) => x.recv(Duration::ZERO).ok(),
        }
    }

    fn matched(&self) -> u64 {
        match self {
            Source::Worker { rx, .. } => rx.matched(),
            Source::Xdp(x) => x.matched,
        }
    }

    /// Worker: matched packets the channel had no room for. XDP: samples
    /// of the slot the ring had no room for (counted before the filter).
    fn lost(&self) -> u64 {
        match self {
            Source::Worker { rx, .. } => rx.lost(),
            Source::Xdp(x) => x.reader.lost().unwrap_or(0),
        }
    }
}

/// A tap installed on a running worker or XDP program, to be written as
/// pcapng.
pub struct CaptureSession {
    req: CaptureRequest,
    points: Vec<Point>,
    source: Source,
}

impl CaptureSession {
    /// Check `req` and install its tap on the stage it names in the worker
    /// of `handle`. Errors (bad filter, no such NF) leave nothing behind.
    pub fn start(handle: WorkerHandle, req: CaptureRequest) -> Result<Self, CaptureError> {
        Self::start_on(CaptureTarget::Worker(handle), req)
    }

    /// [`CaptureSession::start`] on a user-space stage or a kernel NF: for
    /// one in XDP, its tap word is set to what its captures ask for
    /// together (the reader's hub hands each capture only its own slot and
    /// points); errors leave it as it was.
    pub fn start_on(target: CaptureTarget, req: CaptureRequest) -> Result<Self, CaptureError> {
        let filter = Filter::parse(&req.filter)?;
        if let Some(s) = req.seconds.filter(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(CaptureError::Seconds(s));
        }
        let mut points: Vec<Point> =
            if req.points.is_empty() { Point::ALL.to_vec() } else { req.points.clone() };
        points.sort_by_key(|p| *p as u8);
        points.dedup();
        let source = match target {
            CaptureTarget::Worker(handle) => {
                let (tap, rx) = tap(&points, filter, DEFAULT_TAP_CAPACITY);
                handle
                    .tap(&req.nf, tap)
                    .map_err(|source| CaptureError::Control { nf: req.nf.clone(), source })?;
                Source::Worker { handle, rx }
            }
            CaptureTarget::Xdp(t) => {
                let kernel_points: Vec<TapPoint> = points
                    .iter()
                    .map(|p| match p {
                        Point::In => TapPoint::In,
                        Point::Out => TapPoint::Out,
                        Point::Drops => TapPoint::Drop,
                    })
                    .collect();
                let reader = XdpTapReader::start(&t.maps, t.slot, &kernel_points)
                    .map_err(|source| CaptureError::Xdp { nf: req.nf.clone(), source })?;
                Source::Xdp(Box::new(XdpSource {
                    reader,
                    filter,
                    gates: t.gates,
                    matched: 0,
                    error: None,
                }))
            }
        };
        Ok(CaptureSession { req, points, source })
    }

    /// Write the capture to `out` as pcapng until the packet count or the
    /// time limit is reached, `stop` is set, the worker stops, or `out`
    /// fails (the reader went away: the summary is returned). The tap is
    /// removed at the end, whatever happens (an XDP tap word is cleared and
    /// its ring emptied).
    pub fn run(
        mut self,
        out: impl Write,
        stop: &AtomicBool,
    ) -> Result<CaptureSummary, CaptureError> {
        let r = self.pump(out, stop);
        match self.source {
            Source::Worker { handle, rx } => {
                let _ = handle.untap(&self.req.nf, rx.id());
            }
            Source::Xdp(x) => {
                let XdpSource { reader, error, .. } = *x;
                drop(reader);
                if let (Ok(_), Some(source)) = (&r, error) {
                    return Err(CaptureError::Xdp { nf: self.req.nf, source });
                }
            }
        }
        r
    }

    fn pump(&mut self, out: impl Write, stop: &AtomicBool) -> Result<CaptureSummary, CaptureError> {
        let mut w = PcapngWriter::new(out)?;
        let mut iface = [u32::MAX; 3];
        for p in &self.points {
            let name = format!("{}:{}", self.req.nf, p.name());
            iface[*p as usize] =
                w.add_interface(braid_io::linktype::ETHERNET as u16, Some(&name))?;
        }
        w.flush()?;
        let deadline = self.req.seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
        let limit = self.req.count.unwrap_or(u64::MAX);
        let mut written = 0u64;
        let mut per_point = [0u64; 3];
        let mut comment = String::new();
        let broken_pipe = |e: &PcapngError| {
            matches!(e, PcapngError::Io { source, .. }
                if matches!(source.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset))
        };
        while written < limit && !stop.load(Ordering::Relaxed) {
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => left.min(Duration::from_millis(100)),
                    None => break,
                },
                None => Duration::from_millis(100),
            };
            let first = match self.source.recv(wait) {
                Ok(c) => c,
                Err(false) => continue,
                Err(true) => break,
            };
            // Write what is waiting, then flush once (live readers see
            // packets within one batch).
            let mut next = Some(first);
            while let Some(c) = next.take() {
                comment.clear();
                use std::fmt::Write as _;
                let _ = match c.reason {
                    Some(r) => write!(comment, "dropped by {}: {}", self.req.nf, r.name()),
                    None => write!(comment, "{} gate {}", c.point.name(), c.gate),
                };
                let r = w.write_cut(
                    iface[c.point as usize],
                    c.ts_ns,
                    &c.frame,
                    c.orig_len,
                    Some(&comment),
                );
                match r {
                    Ok(()) => {}
                    Err(e) if broken_pipe(&e) => return Ok(self.summary(written)),
                    Err(e) => return Err(e.into()),
                }
                per_point[c.point as usize] += 1;
                written += 1;
                if written < limit {
                    next = self.source.try_recv();
                }
            }
            match w.flush() {
                Ok(()) => {}
                Err(e) if broken_pipe(&e) => return Ok(self.summary(written)),
                Err(e) => return Err(e.into()),
            }
        }
        let summary = self.summary(written);
        // Interface statistics: what each point wrote; the losses (one
        // counter for the tap) on the first interface.
        let now = wall_ns();
        for (k, p) in self.points.iter().enumerate() {
            let lost = if k == 0 { summary.lost } else { 0 };
            let r = w.write_statistics(iface[*p as usize], now, per_point[*p as usize], lost);
            if r.is_err() {
                break;
            }
        }
        let _ = w.flush();
        Ok(summary)
    }

    fn summary(&self, written: u64) -> CaptureSummary {
        CaptureSummary { written, matched: self.source.matched(), lost: self.source.lost() }
    }
}

/// Serve capture sessions on `listener` until `stop` is set: each
/// connection sends one JSON [`CaptureRequest`] line; the answer is one
/// JSON line (`{"ok":true}` or `{"error":"..."}`) and then the pcapng
/// stream. `resolve` names the worker or XDP program running an NF (or
/// says why not).
/// One thread per connection; the listener thread ends when `stop` is set.
pub fn serve_unix<T: Into<CaptureTarget>>(
    listener: UnixListener,
    resolve: impl Fn(&str) -> Result<T, String> + Send + Sync + 'static,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let resolve: Arc<Resolve> = Arc::new(move |nf: &str| resolve(nf).map(Into::into));
    std::thread::Builder::new().name("braid-capture".into()).spawn(move || {
        let mut sessions = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let (resolve, stop) = (resolve.clone(), stop.clone());
                    let t = std::thread::Builder::new()
                        .name("braid-capture-session".into())
                        .spawn(move || serve_one(conn, &*resolve, &stop));
                    if let Ok(t) = t {
                        sessions.push(t);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            sessions.retain(|t: &std::thread::JoinHandle<()>| !t.is_finished());
        }
        for t in sessions {
            let _ = t.join();
        }
    })
}

/// Names the target of a capture's NF, or says why there is none.
type Resolve = dyn Fn(&str) -> Result<CaptureTarget, String> + Send + Sync;

fn serve_one(conn: UnixStream, resolve: &Resolve, stop: &Arc<AtomicBool>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    // A client that stops reading ends its capture instead of holding the
    // session (and `braid deploy`'s shutdown) forever.
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let Ok(reader) = conn.try_clone() else { return };
    let mut line = String::new();
    let mut out = conn;
    let answer = |out: &mut UnixStream, r: Result<(), String>| {
        let v = match r {
            Ok(()) => serde_json::json!({ "ok": true }),
            Err(e) => serde_json::json!({ "error": e }),
        };
        let _ = writeln!(out, "{v}");
    };
    if BufReader::new(&reader).take_line(&mut line).is_err() {
        return answer(&mut out, Err("no capture request received".into()));
    }
    let req: CaptureRequest = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return answer(&mut out, Err(format!("bad capture request: {e}"))),
    };
    let session =
        resolve(&req.nf).and_then(|t| CaptureSession::start_on(t, req).map_err(|e| e.to_string()));
    let s = match session {
        Err(e) => return answer(&mut out, Err(e)),
        Ok(s) => s,
    };
    answer(&mut out, Ok(()));
    // The session ends when the server stops or the client hangs up (its
    // end reads as EOF), even while no packet comes to write.
    let ended = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (ended, stop) = (ended.clone(), stop.clone());
        let _ = reader.set_read_timeout(Some(Duration::from_millis(200)));
        std::thread::Builder::new().name("braid-capture-peer".into()).spawn(move || {
            let mut reader = reader;
            let mut b = [0u8; 64];
            while !ended.load(Ordering::Relaxed) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match std::io::Read::read(&mut reader, &mut b) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => break,
                }
            }
            ended.store(true, Ordering::Relaxed);
        })
    };
    let shut = out.try_clone();
    let _ = s.run(std::io::BufWriter::new(out), &ended);
    ended.store(true, Ordering::Relaxed);
    if let Ok(c) = shut {
        // The client sees the end of the stream.
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    if let Ok(w) = watcher {
        let _ = w.join();
    }
}

trait TakeLine {
    fn take_line(self, line: &mut String) -> std::io::Result<()>;
}

impl<R: std::io::Read> TakeLine for BufReader<R> {
    /// One line, at most 64 KiB.
    fn take_line(self, line: &mut String) -> std::io::Result<()> {
        use std::io::Read;
        let n = self.take(64 << 10).read_line(line)?;
        if n == 0 || !line.ends_with('\n') {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no request line"));
        }
        Ok(())
    }
}

/// Ask the capture server at `socket` for `req`; on acceptance, the
/// stream to read the pcapng bytes from. The server's refusal is an error
/// with its reason.
pub fn request_unix(socket: &Path, req: &CaptureRequest) -> Result<UnixStream, CaptureError> {
    let io = |what: String| move |source| CaptureError::Io { what, source };
    let mut s = UnixStream::connect(socket)
        .map_err(io(format!("connecting to {} (is `braid deploy` running?)", socket.display())))?;
    let line = serde_json::to_string(req).expect("a capture request serializes");
    writeln!(s, "{line}").map_err(io("sending the capture request".into()))?;
    // Read the answer line byte by byte: what follows is the pcapng
    // stream, which must stay in the socket.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        use std::io::Read;
        match s.read(&mut byte).map_err(io("reading the answer".into()))? {
            0 => {
                return Err(CaptureError::Refused(
                    "the capture server closed the connection".into(),
                ))
            }
            _ if byte[0] == b'\n' => break,
            _ if answer.len() > 64 << 10 => {
                return Err(CaptureError::Refused("the capture server's answer is too long".into()))
            }
            _ => answer.push(byte[0]),
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|e| CaptureError::Refused(format!("bad answer from the capture server: {e}")))?;
    match v.get("error").and_then(|e| e.as_str()) {
        Some(e) => Err(CaptureError::Refused(e.to_string())),
        None => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        (0..n).map(|i| Packet::from_bytes(&[i as u8; 20])).collect()
    }

    #[test]
    fn drops_pair_by_index_then_in_order() {
        let mut b = batch(4);
        let ids: Vec<usize> = b.iter().map(Packet::buffer_id).collect();
        // Keep 0 and 3: 1 was dropped through retain (indexed), 2 through
        // drop_packet (no index).
        let mut kept = Batch::new();
        for (i, p) in b.drain().enumerate() {
            if i == 0 || i == 3 {
                kept.push(p);
            } else {
                drop(p);
            }
        }
        let log =
            DropLog { entries: vec![(None, DropReason::Denied), (Some(1), DropReason::Malformed)] };
        assert_eq!(
            pair_drops(&ids, &kept, &log),
            [(1, DropReason::Malformed), (2, DropReason::Denied)]
        );
        // Nothing logged: vanished packets were held back, not dropped.
        assert!(pair_drops(&ids, &kept, &DropLog::default()).is_empty());
    }

    #[test]
    fn drop_taps_copy_only_the_frames_their_filter_takes() {
        let (t, _rx) = tap(&[Point::Drops], Filter::parse("greater 15").unwrap(), 4);
        let mut taps = vec![t];
        let mut b = batch(2);
        b.push(Packet::from_bytes(&[9; 10]));
        let before = before(&mut taps, &b, 1);
        assert!(wants_log(&before));
        let (_, frames, gate) = before.inputs.unwrap();
        assert_eq!(gate, 1);
        assert_eq!(frames.iter().map(Option::is_some).collect::<Vec<_>>(), [true, true, false]);
    }

    #[test]
    fn a_full_channel_counts_losses_and_a_gone_reader_closes_the_tap() {
        let (t, rx) = tap(&[Point::In], Filter::parse("greater 15").unwrap(), 2);
        let mut taps = vec![t];
        let b = batch(3);
        let before = before(&mut taps, &b, 0);
        assert!(!wants_log(&before));
        after(&mut taps, before, &b, 1, false, &DropLog::default());
        assert_eq!((rx.matched(), rx.lost()), (3, 1));
        assert_eq!(rx.try_recv().unwrap().frame, [0; 20]);
        drop(rx);
        let _ = super::before(&mut taps, &b, 0);
        assert!(taps[0].is_closed());
    }
}
