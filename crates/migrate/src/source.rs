//! The source's side of a migration (see `docs/migration.md`).
//!
//! States: `Hello` (sent; wait for Accept) → `Streaming` (snapshot chunks
//! and statelets flow; wait for SwitchRequest) → `Switched` (traffic
//! redirected, markers sent; wait for every marker) → `Ended` (End sent;
//! wait for Done) → done. Any failure in any state: the stream stops (the
//! table thaws), the traffic goes back to the source if it had been
//! switched, an Abort is sent when the link still works, and the error is
//! returned. The source never stops processing in statelet mode.

use std::io::BufWriter;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_dataplane::migration::{LinkGate, StreamItem, StreamOut};
use braid_dataplane::WorkerHandle;
use braid_nf::FlowScope;

use crate::wire::{self, Counts, Direction, FrameWriter, Message, Mode, Seal, StreamKey};
use crate::MigrateError;

/// Returned packets a rolled-back source injects at once, and the pause
/// between two such slices (the rollback of a run that switched).
const INJECT_SLICE: usize = 128;
const INJECT_PAUSE: Duration = Duration::from_micros(500);

/// What the controller does to the traffic at switchover. braid calls
/// `redirect` once, when the destination has asked for the switch, and
/// `restore` only if the migration fails after `redirect` succeeded.
pub trait Switch {
    /// Send the traffic to the destination from now on, then put a drain
    /// marker for migration `id` as the last packet on every old path
    /// (`braid_dataplane::migration::marker_frame`).
    fn redirect(&mut self, id: u64) -> Result<(), SwitchError>;
    /// Send the traffic to the source again (rollback).
    fn restore(&mut self) -> Result<(), SwitchError>;
}

/// Why a [`Switch`] could not move the traffic.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The controller of the traffic (a switch, a router) said no.
    #[error("{0}")]
    Refused(String),
    /// A step failed: what was attempted, and the cause.
    #[error("{what}: {source}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SwitchError {
    /// A failed step `what` with its cause.
    pub fn failed(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> SwitchError {
        SwitchError::Failed { what: what.into(), source: source.into() }
    }
}

/// How the source runs a migration.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Carried by the drain markers; pick one per migration.
    pub id: u64,
    pub mode: Mode,
    /// Entries per snapshot chunk (one chunk per worker loop turn).
    pub chunk: usize,
    /// The worker ports that receive the migrated traffic: each brings a
    /// drain marker after the switch.
    pub markers: Vec<usize>,
    /// Items the worker may queue before the stream fails (it never waits).
    pub queue: usize,
    /// How long any one answer of the destination may take.
    pub io_timeout: Duration,
    /// How long after the switch every marker must have arrived.
    pub marker_timeout: Duration,
    /// Seal every frame with this key (the destination must have the
    /// same): confidentiality and integrity of the state on the link. One
    /// key per migration (braidd derives it from the offer exchange);
    /// None: frames carry a CRC only.
    pub stream_key: Option<Arc<StreamKey>>,
    /// Which flows move: [`FlowScope::All`] moves the instance; a set of
    /// keys or a hash range splits it (the source keeps the other flows;
    /// `Switch::redirect` must move exactly these).
    pub scope: FlowScope,
    /// Share of the source worker's time the state stream may take while
    /// traffic flows (see `braid_dataplane::migration`). 5 % by default:
    /// with 10 % the NAT's rate while 100,000 flows streamed was 0.82×,
    /// with 5 % 0.90× at 1.2× the time to the switch and 0.6× the bytes
    /// (docs/migration.md, "The dataplane rate while the state streams").
    pub budget: f64,
    /// Switch once fewer changed flows than this wait to be sent (SliM:
    /// when the statelet backlog is small) ...
    pub switch_backlog: usize,
    /// ... and (statelet mode) once at most this many bytes of the state
    /// stream are in flight (queued, in the socket or unacknowledged: what
    /// must still cross the link after the switch, while the destination
    /// holds the traffic) ...
    pub switch_in_flight: usize,
    /// ... or once the destination has waited this long for it anyway.
    pub switch_wait: Duration,
    /// Back-pressure: the worker queues state only while fewer bytes than
    /// `max(in_flight_floor, in_flight_bdps × BDP)` are in flight, where
    /// BDP is the state's acknowledged rate (measured by the source) × the
    /// connection's minimum RTT from `TCP_INFO` (see [`InFlightBound`]).
    /// `in_flight_bdps` 0: no back-pressure (every worker turn with budget
    /// sends, the behaviour before).
    pub in_flight_bdps: f64,
    /// The bound's floor, bytes (one TCP segment: see [`InFlightBound`]).
    pub in_flight_floor: usize,
    /// The state socket's send buffer (`SO_SNDBUF`), fixed so kernel
    /// autotuning cannot queue megabytes behind the bound (0: leave it to
    /// the kernel).
    pub send_buffer: usize,
    /// Where the migration's phase and the bytes sent so far are kept
    /// for a watcher (an API operation's progress); None: not kept.
    pub progress: Option<Arc<Progress>>,
}

/// A source migration's phase, as [`Progress`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Hello sent, waiting for the destination's Accept.
    Connecting,
    /// Snapshot chunks and statelets flow.
    Streaming,
    /// The destination asked for the switch.
    SwitchRequested,
    /// The traffic is redirected; waiting for the drain markers.
    Switched,
    /// Every marker came; End sent, waiting for Done.
    Ended,
    /// Done.
    Done,
    /// Failed; rolling back.
    RollingBack,
}

/// What a running source migration has done so far, read by anyone
/// without disturbing it.
#[derive(Debug, Default)]
pub struct Progress {
    phase: std::sync::atomic::AtomicU8,
    bytes: std::sync::atomic::AtomicU64,
    frames: std::sync::atomic::AtomicU64,
    backlog: std::sync::atomic::AtomicU64,
}

impl Progress {
    const PHASES: [Phase; 7] = [
        Phase::Connecting,
        Phase::Streaming,
        Phase::SwitchRequested,
        Phase::Switched,
        Phase::Ended,
        Phase::Done,
        Phase::RollingBack,
    ];

    fn set(&self, p: Phase) {
        let i = Self::PHASES.iter().position(|q| *q == p).unwrap_or(0);
        self.phase.store(i as u8, Ordering::Relaxed);
    }

    fn sent(&self, c: &Counts, backlog: usize) {
        self.bytes.store(c.bytes, Ordering::Relaxed);
        self.frames.store(c.frames, Ordering::Relaxed);
        self.backlog.store(backlog as u64, Ordering::Relaxed);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Self::PHASES[usize::from(self.phase.load(Ordering::Relaxed)).min(6)]
    }

    /// Bytes and frames written to the state link so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes.load(Ordering::Relaxed), self.frames.load(Ordering::Relaxed))
    }

    /// Changed flows waiting to be sent, as last seen.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            id: 1,
            mode: Mode::Statelet,
            chunk: 256,
            markers: Vec::new(),
            queue: 1 << 16,
            io_timeout: Duration::from_secs(5),
            marker_timeout: Duration::from_secs(2),
            stream_key: None,
            scope: FlowScope::All,
            budget: 0.05,
            switch_backlog: 1024,
            switch_in_flight: 4 << 10,
            switch_wait: Duration::from_secs(2),
            in_flight_bdps: 1.25,
            in_flight_floor: 1448,
            send_buffer: 256 << 10,
            progress: None,
        }
    }
}

/// What a finished migration did, seen from the source.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceReport {
    pub mode: String,
    /// Snapshot chunks and change statelets sent.
    pub chunks: u64,
    pub statelets: u64,
    /// Packets copied to the destination (duplication baseline).
    pub duplicated: u64,
    /// Changed flows not yet sent when the traffic was switched.
    pub backlog_at_switch: u64,
    /// State bytes in flight when the traffic was switched (queued, in
    /// the socket's send queue or unacknowledged).
    pub in_flight_at_switch: u64,
    /// The back-pressure bound then (bytes; 0: no back-pressure).
    pub in_flight_bound: u64,
    /// The most bytes seen in flight before the switch (queued, in the
    /// socket's send queue or unacknowledged), sampled by the link's
    /// writer at least every millisecond and after every write.
    pub peak_in_flight: u64,
    /// Bytes written to the state link before the switch (what was
    /// written after it, `bytes - bytes_at_switch`, and what was still in
    /// flight then, `in_flight_at_switch`, had to cross while the
    /// destination held the traffic).
    pub bytes_at_switch: u64,
    /// Flows sent in change statelets (each time a flow is sent counts;
    /// snapshot chunks are not counted).
    pub changed_flows_sent: u64,
    /// Bytes and frames sent on the state link.
    pub bytes: u64,
    pub frames: u64,
    /// From the start to the destination's switch request.
    pub until_switch: Duration,
    /// How long the switch's `redirect` took (routes, markers, steering):
    /// part of the window in which the destination holds the traffic.
    pub redirect: Duration,
    /// From the end of `redirect` to the last marker (the drain).
    pub drain: Duration,
    /// From the start to Done.
    pub total: Duration,
    /// What the destination reported.
    pub installed: u64,
    pub peak_held: u64,
    pub dropped_held: u64,
    /// Flows the source dropped after the destination's Done (what moved).
    pub forgotten: u64,
    /// Why they could not be dropped (a whole-state NF keeps its state:
    /// it has no per-flow record to clear).
    pub forget_error: Option<String>,
}

/// Migrate stage `stage` (NF kind `kind`) of the worker behind `handle`
/// to the destination at the other end of `conn`. `switch` moves the
/// traffic. On error everything is rolled back (see the module
/// documentation) and the error says why.
pub fn migrate_out(
    handle: &WorkerHandle,
    stage: &str,
    kind: &str,
    conn: TcpStream,
    opts: &SourceOptions,
    switch: &mut (dyn Switch + Send),
) -> Result<SourceReport, MigrateError> {
    if opts.mode == Mode::StopCopy && opts.scope != FlowScope::All {
        return Err(MigrateError::Options(
            "stop-and-copy moves a whole instance; split a flow set with the statelet mode".into(),
        ));
    }
    let mut run = Run {
        handle,
        stage,
        opts,
        switch,
        streaming: false,
        switched: false,
        start: Instant::now(),
        report: SourceReport { mode: opts.mode.to_string(), ..SourceReport::default() },
        from_peer: None,
        backlog: Arc::new(AtomicUsize::new(0)),
        markers_seen: Arc::new(AtomicBool::new(false)),
        gate: Arc::new(if backpressure(opts) {
            LinkGate::new(opts.in_flight_floor.max(1))
        } else {
            LinkGate::open()
        }),
        bound: InFlightBound::new(opts),
    };
    run.phase(Phase::Connecting);
    match run.go(kind, conn) {
        Ok(()) => {
            run.report.total = run.start.elapsed();
            // What moved is the destination's now: no stale copy stays
            // here (a later migration back would otherwise meet it). The
            // migration has succeeded whatever this gives.
            match handle.forget(stage, opts.scope.clone()) {
                Ok(n) => run.report.forgotten = n as u64,
                Err(e) => run.report.forget_error = Some(e.to_string()),
            }
            run.phase(Phase::Done);
            Ok(run.report)
        }
        Err((e, writer)) => {
            run.phase(Phase::RollingBack);
            Err(run.roll_back(e, writer.map(|w| *w)))
        }
    }
}

struct Run<'a> {
    handle: &'a WorkerHandle,
    stage: &'a str,
    opts: &'a SourceOptions,
    switch: &'a mut (dyn Switch + Send),
    streaming: bool,
    switched: bool,
    start: Instant,
    report: SourceReport,
    from_peer: Option<FromPeer>,
    /// Changed flows the worker has not sent yet.
    backlog: Arc<AtomicUsize>,
    /// The worker saw every marker (its End may still be queued).
    markers_seen: Arc<AtomicBool>,
    /// The state stream's bytes in flight and their bound (back-pressure).
    gate: Arc<LinkGate>,
    /// How the bound follows the state connection.
    bound: InFlightBound,
}

/// How often a quiet source tells the destination it is alive: a quarter
/// of the destination's read timeout (the same `io_timeout` on both
/// sides), at least every 100 ms.
fn keepalive_every(opts: &SourceOptions) -> Duration {
    (opts.io_timeout / 4).max(Duration::from_millis(100))
}

/// Whether the state stream runs with back-pressure: asked for
/// (`in_flight_bdps` > 0) and not the duplication baseline, whose copies
/// of every packet must go whatever the link (the gate would only stall
/// its snapshot walk behind them: measured, a 50 % load migration then
/// took 64 s instead of 2) and which runs as it did before back-pressure
/// (no gate, the kernel sizes the send buffer) so the baseline stays
/// the baseline.
fn backpressure(opts: &SourceOptions) -> bool {
    opts.in_flight_bdps > 0.0 && opts.mode != Mode::Duplicate
}

/// The back-pressure bound on the state stream's bytes in flight, kept
/// from what the state connection itself shows (`TCP_INFO` and its send
/// queue): `in_flight_bdps` bandwidth-delay products of the rate the path
/// delivers the state at, at least `in_flight_floor`, at most the send
/// buffer.
///
/// Why this size: one BDP of the state's share of the path is what keeps
/// that share busy; every byte beyond it waits in the bottleneck's queue,
/// and on a link the state shares FIFO with the data (the testbed's WAN
/// link, SliM's), the data queues behind it: with spare capacity `s`, `B`
/// bytes in flight make the queue `B / s - RTT` long *for the data too*.
/// 1.25 BDP adds at most a quarter of a (minimum) RTT of queueing, and
/// lets the bound grow 1.25× per RTT while the link is not full (1.5 was
/// measured too: +18 / +23 ms of peak RTT at 90 % load in the SliM sweep,
/// against +15 / +14 with 1.25, the migration as long). The floor covers
/// the time before the first RTT sample and keeps the stream moving; it
/// is one full-sized TCP segment on a 1500-byte MTU (1448 bytes), no
/// more, because at 90 % load of a 10 Mbit/s link the spare capacity is
/// 125 kB/s, where every kilobyte in flight is 8 ms of queue for the
/// data, and on such a link the floor, not the RTT, sets the bound (the
/// SliM sweep at 90 % load: +17 ms of peak RTT with a 2 KiB floor, +15
/// with 1.2 kB).
///
/// The rate is the state's own delivery rate, measured here: bytes
/// acknowledged over at least one smoothed RTT, counted only over
/// windows in which the bound held the stream back (with less to send,
/// the rate says nothing about the path: the worker says when it left
/// room unused, [`LinkGate::note_app_limited`]). Not the kernel's
/// `tcpi_delivery_rate`: a sender held back by this bound is
/// *application-limited*, and the kernel updates an application-limited
/// connection's delivery rate only with a higher sample, so the rate seen
/// while the link's queue was still empty stayed the bound for the whole
/// migration. On the SliM sweep's link at 90 % load it said 719 kB/s
/// where 125 kB/s were spare: a 12 kB bound and about 100 ms of standing
/// queue in front of the data. With the measured rate `d` and minimum RTT
/// `m`, the bound is `d × a` with `a = 1.25 m` the RTT the state may cause
/// (at least `m` + 1 ms): while the link has room the stream delivers
/// `bound / m` and the bound grows 1.25× per RTT; once the state's bytes
/// queue, `d` is the spare capacity and the RTT settles at `a`, a quarter
/// of a minimum RTT of queue whatever the load. A receiver that reads slowly
/// (flow control, not a queue) shows as a low `d` too.
#[derive(Clone, Debug)]
pub struct InFlightBound {
    bound: usize,
    /// The current delivery-rate window: its start, the bytes acknowledged
    /// then, and whether the bound held the stream back all along.
    window: Option<(Instant, u64, bool)>,
}

/// The least queueing delay the state stream may add (µs): on a path whose
/// minimum RTT is tens of µs (loopback, one switch) a quarter of an RTT
/// would hold the stream at its floor for the hosts' scheduling noise
/// alone.
const MIN_QUEUE_US: f64 = 1_000.0;

/// The shortest delivery-rate window.
const MIN_RATE_WINDOW: Duration = Duration::from_millis(2);

impl InFlightBound {
    /// Start at the floor.
    pub fn new(opts: &SourceOptions) -> InFlightBound {
        InFlightBound { bound: Self::clamp(opts, 0), window: None }
    }

    pub fn bound(&self) -> usize {
        self.bound
    }

    fn clamp(opts: &SourceOptions, b: usize) -> usize {
        let floor = opts.in_flight_floor.max(1);
        let b = b.max(floor);
        if opts.send_buffer > 0 {
            b.min(opts.send_buffer.max(floor))
        } else {
            b
        }
    }

    /// Take the stream's state at `now`: whether the worker left room in
    /// the gate unused since the last update (`app_limited`,
    /// [`LinkGate::take_app_limited`]), `acked` (bytes the peer
    /// acknowledged so far) and the connection's `TCP_INFO`. Returns the
    /// bound.
    pub fn update(
        &mut self,
        opts: &SourceOptions,
        info: &braid_io::tcp::TcpSendInfo,
        app_limited: bool,
        acked: u64,
        now: Instant,
    ) -> usize {
        if info.rtt_us == 0 || info.min_rtt_us == 0 {
            return self.bound;
        }
        let held_now = !app_limited;
        let (start, acked0, held) = self.window.get_or_insert((now, acked, held_now));
        *held &= held_now;
        let elapsed = now.duration_since(*start);
        if elapsed < Duration::from_micros(u64::from(info.rtt_us)).max(MIN_RATE_WINDOW) {
            return self.bound;
        }
        let (acked0, held) = (*acked0, *held);
        self.window = Some((now, acked, held_now));
        if !held {
            return self.bound;
        }
        let rate = acked.saturating_sub(acked0) as f64 / elapsed.as_secs_f64();
        let min_rtt = f64::from(info.min_rtt_us) / 1e6;
        let allowed = (min_rtt * opts.in_flight_bdps).max(min_rtt + MIN_QUEUE_US / 1e6);
        let by_rate = rate * allowed;
        // While the stream delivered most of the bound, grow it by the
        // room the smoothed RTT leaves under the allowed one (`allowed /
        // srtt`, at most `in_flight_bdps` per window): the worker sends
        // items of several entries and waits for room for the next, so
        // it fills the bound less than fully, and `by_rate` alone settled
        // near the floor on an idle link (one item per RTT). Near the
        // allowance the step shrinks to nothing, so on a full link the
        // bound lands on `by_rate` instead of stepping 1.25× past it (a
        // queue of 5.6 ms instead of 2.5 at 90 % load in the model test
        // below). And an RTT a little over the minimum still grows it: on
        // the sweep's 10 Mbit/s link a full segment's own serialization
        // is 1.2 ms over a minimum sampled on a small one, plus its wait
        // behind a 1400-byte data frame; the test until session 15 (grow
        // 1.25× only under half the allowance, 1.25 ms there) left the
        // bound near the floor in 4 of 5 migrations at 1400 B and 50 %
        // load (2.5 s instead of 0.73; docs/migration.md "Session 15").
        // A reader that stopped or slowed down (a low rate without a
        // queue) is followed, not outgrown.
        let srtt = f64::from(info.rtt_us) / 1e6;
        let filled = by_rate >= self.bound as f64 / 2.0;
        let step = (allowed / srtt).min(opts.in_flight_bdps);
        let target =
            if filled && step > 1.0 { by_rate.max(self.bound as f64 * step) } else { by_rate };
        self.bound = Self::clamp(opts, target as usize);
        self.bound
    }
}

type Writer = FrameWriter<BufWriter<TcpStream>>;
/// What failed and the writer to the destination, if it was open (boxed:
/// the error is large enough already).
type Failure = (MigrateError, Option<Box<Writer>>);

/// Messages from the destination, read on their own thread.
type FromPeer = Receiver<Result<Message, MigrateError>>;

impl Run<'_> {
    fn phase(&self, p: Phase) {
        if let Some(g) = &self.opts.progress {
            g.set(p);
        }
    }

    fn go(&mut self, kind: &str, conn: TcpStream) -> Result<(), Failure> {
        let opts = self.opts;
        let fail = |e: MigrateError| (e, None);
        conn.set_nodelay(true).map_err(|e| fail(wire::WireError::Io(e).into()))?;
        if opts.send_buffer > 0 && opts.mode != Mode::Duplicate {
            braid_io::tcp::set_send_buffer(&conn, opts.send_buffer)
                .map_err(|e| fail(wire::WireError::Io(e).into()))?;
        }
        conn.set_read_timeout(Some(opts.io_timeout))
            .and_then(|()| conn.set_write_timeout(Some(opts.io_timeout)))
            .map_err(|e| fail(wire::WireError::Io(e).into()))?;
        let read_half = conn.try_clone().map_err(|e| fail(wire::WireError::Io(e).into()))?;
        let seal = |direction| opts.stream_key.clone().map(|key| Seal { key, direction });
        let mut w = FrameWriter::new(
            BufWriter::with_capacity(256 << 10, conn),
            seal(Direction::ToDestination),
        );
        let hello = Message::Hello {
            id: opts.id,
            stage: self.stage.to_string(),
            kind: kind.to_string(),
            mode: opts.mode,
        };
        let step = w
            .write_preamble()
            .and_then(|()| w.write_message(&hello))
            .and_then(|()| w.flush().map_err(Into::into));
        if let Err(e) = step {
            return Err((e.into(), Some(Box::new(w))));
        }
        let mut r = wire::FrameReader::sealed(read_half, seal(Direction::ToSource));
        let answer = r
            .read_preamble()
            .and_then(|()| r.read_message())
            .map_err(|e| MigrateError::from_read(e, "the destination's answer", opts.io_timeout));
        match answer {
            Ok(Message::Accept) => {}
            Ok(Message::Refuse { reason }) => {
                return Err((MigrateError::Refused(reason), Some(Box::new(w))))
            }
            Ok(other) => {
                let e = MigrateError::Unexpected { expected: "Accept", got: other.name() };
                return Err((e, Some(Box::new(w))));
            }
            Err(e) => return Err((e, Some(Box::new(w)))),
        }
        // The destination's later messages come on their own thread, so a
        // slow state link never keeps the source from reading them.
        let (peer_tx, from_peer) = mpsc::channel();
        let io_timeout = opts.io_timeout;
        std::thread::spawn(move || {
            loop {
                let m = r.read_message();
                let stop = m.is_err();
                // Timeouts while waiting are normal here (the main loop
                // keeps its own deadlines), also in the middle of a frame:
                // the reader keeps what came of it.
                if m.as_ref().is_err_and(wire::WireError::is_timeout) {
                    continue;
                }
                let m = m.map_err(|e| MigrateError::from_read(e, "the destination", io_timeout));
                if peer_tx.send(m).is_err() || stop {
                    return;
                }
            }
        });

        let (sink, items) = mpsc::sync_channel(opts.queue);
        let req = StreamOut {
            stage: self.stage.to_string(),
            sink,
            chunk: opts.chunk,
            markers: opts.markers.clone(),
            id: opts.id,
            send_state: opts.mode != Mode::StopCopy,
            scope: opts.scope.clone(),
            duplicate: opts.mode == Mode::Duplicate,
            budget: opts.budget,
            backlog: self.backlog.clone(),
            markers_seen: self.markers_seen.clone(),
            gate: self.gate.clone(),
        };
        if let Err(e) = self.handle.stream_out(req) {
            return Err((e.into(), Some(Box::new(w))));
        }
        self.streaming = true;
        self.phase(Phase::Streaming);
        let r = self.pump(&mut w, &items, &from_peer);
        self.from_peer = Some(from_peer);
        r.map_err(|e| (e, Some(Box::new(w))))
    }

    /// Back-pressure is on (the gate has a finite bound).
    fn backpressure(&self) -> bool {
        backpressure(self.opts)
    }

    /// The switch waits for the bytes in flight (statelet mode with
    /// back-pressure: the worker can stop adding; duplication cannot stop
    /// copying the traffic, stop-and-copy sends nothing before).
    fn switch_waits_for_bytes(&self) -> bool {
        self.backpressure() && self.opts.mode == Mode::Statelet
    }

    /// Bytes written to the link and not yet acknowledged: the socket's
    /// send queue plus what the writer still buffers.
    fn link_bytes(w: &Writer) -> usize {
        Self::send_queue(w) + w.get_ref().buffer().len()
    }

    /// The socket's send queue (unsent and unacknowledged bytes).
    fn send_queue(w: &Writer) -> usize {
        braid_io::tcp::send_queue_bytes(w.get_ref().get_ref()).unwrap_or(0)
    }

    /// Read the socket's send queue and (with back-pressure) what it has
    /// acknowledged and its RTTs, and update the gate.
    fn watch_link(&mut self, w: &Writer) {
        let buffered = w.get_ref().buffer().len();
        let queued = Self::send_queue(w);
        self.gate.set_link(queued + buffered);
        if self.backpressure() {
            if let Ok(info) = braid_io::tcp::send_info(w.get_ref().get_ref()) {
                // Acknowledged = written to the socket - still in its send queue.
                let in_socket = w.counts().bytes.saturating_sub(buffered as u64);
                let acked = in_socket.saturating_sub(queued as u64);
                let app_limited = self.gate.take_app_limited();
                let b = self.bound.update(self.opts, &info, app_limited, acked, Instant::now());
                self.gate.set_bound(b);
            }
        }
        if !self.switched {
            self.report.peak_in_flight =
                self.report.peak_in_flight.max(self.gate.in_flight() as u64);
        }
    }

    /// Move the worker's stream items to the link and react to the
    /// destination until Done.
    fn pump(
        &mut self,
        w: &mut Writer,
        items: &Receiver<StreamItem>,
        from_peer: &FromPeer,
    ) -> Result<(), MigrateError> {
        let opts = self.opts;
        let mut switched_at: Option<Instant> = None;
        let mut asked_at: Option<Instant> = None;
        let mut ended_at: Option<Instant> = None;
        // When the link last carried a frame: a source with nothing to
        // send (waiting for its link to drain, for the worker, for the
        // destination's request) says it is alive every `keepalive`.
        let keepalive = keepalive_every(opts);
        let mut last_frames = w.counts().frames;
        let mut quiet_since = Instant::now();
        loop {
            if let Some(g) = &opts.progress {
                g.sent(w.counts(), self.backlog.load(Ordering::Relaxed));
            }
            self.watch_link(w);
            // The destination is ready: switch once the changed flows
            // waiting here are few and (statelets with back-pressure) the
            // bytes in flight on the link too (both are what is left to
            // cross after the switch: the outage), or once it has waited
            // long enough.
            if let (Some(asked), None) = (asked_at, switched_at) {
                let backlog = self.backlog.load(Ordering::Relaxed);
                let in_flight = self.gate.in_flight();
                let drained = !self.switch_waits_for_bytes() || in_flight <= opts.switch_in_flight;
                if (backlog < opts.switch_backlog && drained) || asked.elapsed() >= opts.switch_wait
                {
                    self.report.until_switch = self.start.elapsed();
                    self.report.backlog_at_switch = backlog as u64;
                    self.report.in_flight_at_switch = in_flight as u64;
                    self.report.bytes_at_switch = w.counts().bytes;
                    self.report.in_flight_bound =
                        if self.backpressure() { self.gate.bound() as u64 } else { 0 };
                    w.flush().map_err(wire::WireError::Io)?;
                    let redirect_start = Instant::now();
                    self.redirect_keeping_alive(w)?;
                    self.report.redirect = redirect_start.elapsed();
                    self.switched = true;
                    self.phase(Phase::Switched);
                    switched_at = Some(Instant::now());
                    w.write_message(&Message::Switched)?;
                }
            }
            // The destination's messages first.
            loop {
                match from_peer.try_recv() {
                    Ok(Ok(Message::SwitchRequest { .. })) if asked_at.is_none() => {
                        asked_at = Some(Instant::now());
                        if self.switch_waits_for_bytes() {
                            // Let the bytes in flight drain: a small
                            // backlog waits (and coalesces) until the end.
                            self.gate.hold_changes_below(opts.switch_backlog);
                        }
                        self.phase(Phase::SwitchRequested);
                    }
                    Ok(Ok(Message::Done { installed, peak_held, dropped_held })) => {
                        if ended_at.is_none() {
                            return Err(MigrateError::Unexpected {
                                expected: "End first",
                                got: "Done",
                            });
                        }
                        self.report.installed = installed;
                        self.report.peak_held = peak_held;
                        self.report.dropped_held = dropped_held;
                        self.report.bytes = w.counts().bytes;
                        self.report.frames = w.counts().frames;
                        return Ok(());
                    }
                    Ok(Ok(Message::Abort { reason })) => {
                        return Err(MigrateError::PeerAborted(reason))
                    }
                    Ok(Ok(other)) => {
                        return Err(MigrateError::Unexpected {
                            expected: "SwitchRequest or Done",
                            got: other.name(),
                        })
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        return Err(MigrateError::PeerAborted("the state link closed".into()))
                    }
                }
            }
            // Then what the worker queued.
            match items.recv_timeout(Duration::from_millis(1)) {
                Ok(item) => {
                    let bytes = item.wire_bytes();
                    let r = self.write_item(item, w, switched_at, &mut ended_at);
                    if self.backpressure() {
                        // Onto the socket at once: bytes in the writer's
                        // buffer cannot be acknowledged.
                        w.flush().map_err(wire::WireError::Io)?;
                    }
                    self.gate.written(bytes, Self::link_bytes(w));
                    r?;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if w.counts().frames != last_frames {
                        last_frames = w.counts().frames;
                        quiet_since = Instant::now();
                    } else if quiet_since.elapsed() >= keepalive {
                        w.write_message(&Message::KeepAlive)?;
                        last_frames = w.counts().frames;
                        quiet_since = Instant::now();
                    }
                    w.flush().map_err(wire::WireError::Io)?;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if ended_at.is_none() {
                        self.streaming = false;
                        return Err(MigrateError::Stream("the worker stopped".into()));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            // The markers' timeout, not the link's: once the worker saw
            // every marker, its End may still wait behind the items queued
            // before it (duplicated packets on a slow link); the writes'
            // own timeout bounds that.
            if let (Some(t), None) = (switched_at, ended_at) {
                if t.elapsed() > opts.marker_timeout && !self.markers_seen.load(Ordering::Acquire) {
                    return Err(MigrateError::Timeout {
                        what: format!("the drain markers on ports {:?}", opts.markers),
                        after: opts.marker_timeout,
                    });
                }
            }
            if let Some(t) = ended_at {
                if t.elapsed() > opts.io_timeout {
                    return Err(MigrateError::Timeout {
                        what: "the destination's Done".into(),
                        after: opts.io_timeout,
                    });
                }
            }
        }
    }

    /// The switch's `redirect`, run on a thread of its own while this one
    /// tells the destination every [`keepalive_every`] that the source is
    /// still here: route changes and markers sent through other
    /// namespaces may take longer, on a loaded host, than the
    /// destination's read timeout, which must catch a silent source, not
    /// a slow switch.
    fn redirect_keeping_alive(&mut self, w: &mut Writer) -> Result<(), MigrateError> {
        let (id, every) = (self.opts.id, keepalive_every(self.opts));
        let switch = &mut *self.switch;
        std::thread::scope(|s| {
            let (done, result) = std::sync::mpsc::channel();
            s.spawn(move || {
                let _ = done.send(switch.redirect(id));
            });
            loop {
                match result.recv_timeout(every) {
                    Ok(r) => return r.map_err(MigrateError::from),
                    Err(RecvTimeoutError::Timeout) => {
                        w.write_message(&Message::KeepAlive)?;
                        w.flush().map_err(wire::WireError::Io)?;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(MigrateError::Stream("the switch's thread panicked".into()))
                    }
                }
            }
        })
    }

    /// Write one item of the worker's stream to the link.
    fn write_item(
        &mut self,
        item: StreamItem,
        w: &mut Writer,
        switched_at: Option<Instant>,
        ended_at: &mut Option<Instant>,
    ) -> Result<(), MigrateError> {
        match item {
            StreamItem::Statelet(s) => {
                if s.state.data.len() > 8 || !s.keys.is_empty() {
                    let compact = s.compact().map_err(|e| {
                        MigrateError::Stream(format!(
                            "the worker made a statelet that cannot be sent: {e}"
                        ))
                    })?;
                    w.write_message(&Message::Statelet(compact))?;
                }
            }
            StreamItem::SnapshotDone { chunks } => {
                self.report.chunks = chunks;
                w.write_message(&Message::SnapshotDone { chunks })?;
                w.flush().map_err(wire::WireError::Io)?;
            }
            StreamItem::Packets { port, frames } => {
                self.report.duplicated += frames.len() as u64;
                let m = Message::Packets { port: port as u16, frames };
                w.write_message(&m)?;
            }
            StreamItem::End { statelets, chunks, flows } => {
                self.streaming = false;
                self.report.statelets = statelets;
                self.report.changed_flows_sent = flows;
                self.report.chunks = chunks;
                if let Some(t) = switched_at {
                    self.report.drain = t.elapsed();
                }
                if self.opts.mode == Mode::StopCopy {
                    self.send_whole(w)?;
                }
                w.write_message(&Message::End { statelets, chunks })?;
                w.flush().map_err(wire::WireError::Io)?;
                *ended_at = Some(Instant::now());
                self.phase(Phase::Ended);
            }
            StreamItem::Failed(e) => {
                self.streaming = false;
                return Err(MigrateError::Stream(e));
            }
        }
        Ok(())
    }

    /// Stop-and-copy: every old path brought its marker, so nothing more
    /// comes: pause, export the whole state, send it, resume (the stage no
    /// longer gets traffic).
    fn send_whole(&mut self, w: &mut Writer) -> Result<(), MigrateError> {
        self.handle.pause()?;
        let state = self.handle.export_binary(self.stage);
        self.handle.resume()?;
        let state = state?.ok_or_else(|| {
            MigrateError::Stream(format!("stage `{}` keeps no state to copy", self.stage))
        })?;
        w.write_message(&Message::Whole(state))?;
        Ok(())
    }

    /// Undo a failed migration; returns the error to report.
    fn roll_back(&mut self, e: MigrateError, writer: Option<Writer>) -> MigrateError {
        if self.streaming {
            let _ = self.handle.stream_stop(self.stage);
        }
        if !self.switched {
            if let Some(mut w) = writer {
                let abort = Message::Abort { reason: e.to_string() };
                let _ = w.write_message(&abort);
                let _ = w.flush();
            }
            return e;
        }
        // After the switch: hold what arrives here again, move the traffic
        // back, take what the destination held since the switch, process
        // it, then what was held here: the order of every flow is kept.
        let _ = self.handle.hold(true);
        let _ = self.switch.restore();
        // The Abort also tells the destination that nothing more comes its
        // way: it can hand over what it holds.
        if let Some(mut w) = writer {
            let abort = Message::Abort { reason: e.to_string() };
            let _ = w.write_message(&abort);
            let _ = w.flush();
        }
        let mut returned = None;
        if let Some(from_peer) = &self.from_peer {
            let deadline = Instant::now() + self.opts.io_timeout;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match from_peer.recv_timeout(left) {
                    Ok(Ok(Message::Returned { packets })) => {
                        returned = Some(packets);
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) | Err(_) => break,
                }
            }
        }
        let lost = returned.is_none();
        let packets: Vec<(usize, Vec<u8>)> =
            returned.unwrap_or_default().into_iter().map(|(p, f)| (usize::from(p), f)).collect();
        let n = packets.len();
        // In slices with a pause between them: the worker sends what it
        // injects at once, and a thousand frames sent in one go into a
        // veth overflow the receiving CPU's backlog (`netdev_max_backlog`,
        // 1,000 here): about 130 of 1,100 returned packets were lost so.
        for (k, slice) in packets.chunks(INJECT_SLICE).enumerate() {
            if k > 0 {
                std::thread::sleep(INJECT_PAUSE);
            }
            let _ = self.handle.inject_readdressed(slice.to_vec());
        }
        let _ = self.handle.hold(false);
        MigrateError::RolledBack { cause: Box::new(e), returned: n, lost }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_io::tcp::TcpSendInfo;

    fn opts() -> SourceOptions {
        SourceOptions::default()
    }

    fn info(rtt_us: u32, min_rtt_us: u32) -> TcpSendInfo {
        // A delivery rate far above the path's: the kernel's stale
        // application-limited sample, which the bound must not follow.
        TcpSendInfo {
            rtt_us,
            min_rtt_us,
            delivery_rate: 700_000,
            app_limited: true,
            notsent_bytes: 0,
        }
    }

    fn ms(t: u64) -> Duration {
        Duration::from_millis(t)
    }

    #[test]
    fn the_bound_starts_at_the_floor_and_waits_for_an_rtt_sample() {
        let o = opts();
        let mut b = InFlightBound::new(&o);
        assert_eq!(b.bound(), o.in_flight_floor);
        let t0 = Instant::now();
        assert_eq!(b.update(&o, &info(0, 0), false, 0, t0), o.in_flight_floor);
        assert_eq!(b.update(&o, &info(0, 0), false, 1 << 20, t0 + ms(100)), o.in_flight_floor);
    }

    #[test]
    fn it_follows_the_acknowledged_rate_once_per_window() {
        let o = opts();
        let mut b = InFlightBound { bound: 10_000, window: None };
        let t0 = Instant::now();
        let i = info(10_000, 10_000);
        assert_eq!(b.update(&o, &i, false, 0, t0), 10_000);
        // Within one smoothed RTT: no new rate yet.
        assert_eq!(b.update(&o, &i, false, 5_000, t0 + ms(5)), 10_000);
        // 10 kB acknowledged in 10 ms: 1 MB/s, 12.5 ms of it.
        assert_eq!(b.update(&o, &i, false, 10_000, t0 + ms(10)), 12_500);
        // Then 4 kB in 10 ms (a queue, or a slow reader): 5 kB.
        assert_eq!(b.update(&o, &i, false, 14_000, t0 + ms(20)), 5_000);
    }

    #[test]
    fn without_a_queue_it_grows_even_when_the_stream_fills_it_less_than_fully() {
        let o = opts();
        let mut b = InFlightBound { bound: 10_000, window: None };
        let t0 = Instant::now();
        let i = info(10_000, 10_000);
        b.update(&o, &i, false, 0, t0);
        // 8 kB per RTT against a bound of 10 kB (items waiting for room):
        // the rate alone would say 10 kB again; no queue, so it grows.
        assert_eq!(b.update(&o, &i, false, 8_000, t0 + ms(10)), 12_500);
        // With a queue of 3 ms (over the 2.5 ms allowance), the rate
        // decides: 10.4 kB in 13 ms, 10 kB.
        let queued = info(13_000, 10_000);
        assert_eq!(b.update(&o, &queued, false, 18_400, t0 + ms(23)), 10_000);
    }

    /// On a 10 Mbit/s link a full segment takes 1.2 ms to serialize, so
    /// the smoothed RTT of full segments is 1.2 ms over a minimum sampled
    /// on a small one, and more behind a data frame: the bound still
    /// grows, by what the allowance leaves (12.5 / 11.7 ms).
    #[test]
    fn a_segments_own_serialization_on_a_slow_link_does_not_stop_the_growth() {
        let o = opts();
        let mut b = InFlightBound { bound: 4_000, window: None };
        let t0 = Instant::now();
        let slow = info(11_700, 10_000);
        b.update(&o, &slow, false, 0, t0);
        // 3.2 kB acknowledged in 11.7 ms: filled, 1.7 ms over the minimum.
        let grown = b.update(&o, &slow, false, 3_200, t0 + Duration::from_micros(11_700));
        assert_eq!(grown, 4_000 * 12_500 / 11_700);
    }

    #[test]
    fn a_stream_with_less_to_send_than_the_bound_keeps_it() {
        let o = opts();
        let mut b = InFlightBound { bound: 10_000, window: None };
        let t0 = Instant::now();
        let i = info(10_000, 10_000);
        b.update(&o, &i, false, 0, t0);
        // Mid-window the stream ran short: the window's low rate is the
        // stream's, not the path's.
        b.update(&o, &i, true, 500, t0 + ms(5));
        assert_eq!(b.update(&o, &i, false, 1_000, t0 + ms(10)), 10_000);
    }

    #[test]
    fn it_stays_within_the_floor_and_the_send_buffer() {
        let o = SourceOptions { send_buffer: 64 << 10, ..opts() };
        let mut b = InFlightBound { bound: 60 << 10, window: None };
        let t0 = Instant::now();
        let i = info(1_000, 1_000);
        b.update(&o, &i, false, 0, t0);
        assert_eq!(b.update(&o, &i, false, 1 << 30, t0 + ms(2)), 64 << 10);
        assert_eq!(b.update(&o, &i, false, 1 << 30, t0 + ms(4)), o.in_flight_floor);
    }

    /// A FIFO link with `spare` bytes/s left by the data and a minimum RTT
    /// of 10 ms, the stream always with more to send than the bound: it
    /// delivers `min(bound / 10 ms, spare)`, and what it keeps in flight
    /// beyond one BDP of the spare waits in the queue, in front of the
    /// data too. From 1 % to 90 % of a 10 Mbit/s link's capacity spare,
    /// the queue ends at about a quarter of a minimum RTT (the floor's own queue
    /// where the spare is too small for the floor), and the stream uses
    /// the spare — whatever the kernel's delivery rate said.
    #[test]
    fn on_a_shared_link_the_queue_settles_at_a_quarter_of_a_minimum_rtt() {
        let o = opts();
        let min_rtt = 0.010;
        for spare in [12_500.0, 125_000.0, 625_000.0, 1_125_000.0] {
            let mut b = InFlightBound::new(&o);
            let t0 = Instant::now();
            let (mut t, mut acked, mut queue, mut rate) = (0.0, 0.0, 0.0, 0.0);
            for _ in 0..600 {
                let inflight = b.bound() as f64;
                queue = ((inflight - spare * min_rtt) / spare).max(0.0);
                let rtt = min_rtt + queue;
                let i = info((rtt * 1e6) as u32, (min_rtt * 1e6) as u32);
                b.update(&o, &i, false, acked as u64, t0 + Duration::from_secs_f64(t));
                rate = (inflight / min_rtt).min(spare);
                // Polled every 2 ms, as the source reads its socket.
                t += 0.002;
                acked += rate * 0.002;
            }
            let floor_queue = (o.in_flight_floor as f64 / spare - min_rtt).max(0.0);
            let want = (min_rtt / 4.0).max(floor_queue);
            assert!(
                queue <= want * 1.1 + 1e-4,
                "spare {spare} B/s: queue {:.1} ms, want at most {:.1} ms",
                queue * 1e3,
                want * 1e3
            );
            assert!(rate >= spare * 0.99, "spare {spare} B/s: the stream delivers only {rate} B/s");
        }
    }
}
