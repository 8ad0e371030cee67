//! The Worker: braid's one packet loop. One per thread; it owns its ports,
//! a [`Graph`] of NF stages, its telemetry and a control mailbox.
//!
//! A loop turn: answer waiting control commands (one flag read when there
//! are none); unless paused, receive a batch from every port that has
//! somewhere to send it (skipping a port whose outputs have no room, when
//! backpressure is on) and push it through the graph to completion;
//! transmit what reached the ports; every tick interval run the NFs'
//! `tick`, beat the heartbeat and publish the ports' counters; when a turn
//! brought nothing, wait as the idle policy says.
//!
//! An idle worker ticks only when something needs it: while an NF wants a
//! tick ([`braid_nf::NetworkFunction::wants_tick`]: packets held, state to
//! expire), while a heartbeat, the adaptive mode, a stop flag, a deadline
//! or a migration stream is there, and once after traffic or a command (to
//! publish the counters). Otherwise its `poll` sleep lasts until a port or
//! the control mailbox has work, or [`WorkerConfig::idle_tick`] at most.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_io::{Port, PortError, PortStats};
use braid_packet::Batch;

use crate::adapt::{AdaptConfig, Adaptation, Adapter, Sample};
use crate::control::{
    mailbox, Command, ControlError, Envelope, Mailbox, Output, Reply, SchedChange, WorkerHandle,
};
use crate::graph::{Endpoint, Graph, GraphError};
use crate::heartbeat::Heartbeat;
use crate::migration::{Held, RelayError, Relays, StreamError, Streaming};
use crate::sched::{Sched, SchedError};
use crate::telemetry::{LoopStats, PortTelemetry, WorkerSnapshot, WorkerTelemetry};

/// What a worker does when a loop turn brought no packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Idle {
    /// Spin: a core at 100 %, no wake-up latency.
    Busy,
    /// Sleep in `poll(2)` on the ports' descriptors and the control
    /// mailbox until one is readable or the next tick (ports without a
    /// descriptor are looked at again after a short sleep).
    #[default]
    Poll,
    /// Sleep a short while (50 µs, doubling up to 1 ms while idle), without
    /// descriptors.
    Sleep,
}

impl std::str::FromStr for Idle {
    type Err = crate::UnknownWord;
    fn from_str(s: &str) -> Result<Idle, crate::UnknownWord> {
        match s {
            "busy" => Ok(Idle::Busy),
            "poll" => Ok(Idle::Poll),
            "sleep" => Ok(Idle::Sleep),
            other => Err(crate::UnknownWord {
                what: "idle policy",
                given: other.to_string(),
                expected: "busy, poll or sleep",
            }),
        }
    }
}

/// How a worker runs.
#[derive(Debug)]
pub struct WorkerConfig {
    /// For telemetry and errors.
    pub name: String,
    /// Packets received per port per turn at most.
    pub batch_size: usize,
    pub idle: Idle,
    /// How often NFs get their `tick`, ports' counters are published and
    /// the heartbeat beats.
    pub tick_interval: Duration,
    /// How often an idle worker with nothing that needs a tick still ticks
    /// (see the module documentation); never shorter than `tick_interval`.
    pub idle_tick: Duration,
    /// CPU affinity and scheduling of the worker's thread, applied when
    /// `run` starts.
    pub sched: Sched,
    /// Receive from a port only while every other port can take a batch.
    pub backpressure: bool,
    /// Stop once every receiving port is at its end (offline runs).
    pub stop_when_inputs_end: bool,
    /// Stop when this flag is set (another thread).
    pub stop_flag: Option<Arc<AtomicBool>>,
    /// Stop when this flag is set (a signal handler's static flag).
    pub stop_signal: Option<&'static AtomicBool>,
    /// Stop at this time.
    pub deadline: Option<Instant>,
    pub heartbeat: Option<Heartbeat>,
    /// Adaptive mode: batch size and idle policy set by a feedback loop
    /// within these bounds ([`crate::adapt`]); None: fixed.
    pub adapt: Option<AdaptConfig>,
}

impl WorkerConfig {
    pub fn new(name: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            name: name.into(),
            batch_size: braid_packet::DEFAULT_BATCH_SIZE,
            idle: Idle::Poll,
            tick_interval: Duration::from_millis(10),
            idle_tick: Duration::from_secs(1),
            sched: Sched::default(),
            backpressure: false,
            stop_when_inputs_end: false,
            stop_flag: None,
            stop_signal: None,
            deadline: None,
            heartbeat: None,
            adapt: None,
        }
    }
}

/// Why a worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker `{worker}`: batch size {size} is out of range 1..={max}")]
    BatchSize { worker: String, size: usize, max: usize },
    #[error("worker `{worker}`: {source}")]
    Sched {
        worker: String,
        #[source]
        source: SchedError,
    },
    #[error("worker `{worker}`: {source}")]
    Graph {
        worker: String,
        #[source]
        source: GraphError,
    },
    #[error("worker `{worker}`, port {port}: {source}")]
    Port {
        worker: String,
        port: String,
        #[source]
        source: PortError,
    },
    #[error("worker `{worker}`: {source}")]
    Adapt {
        worker: String,
        #[source]
        source: crate::adapt::AdaptError,
    },
    #[error("worker `{worker}`: control mailbox: {source}")]
    Mailbox {
        worker: String,
        #[source]
        source: std::io::Error,
    },
}

/// Receive rounds a stopping worker runs to take what waits on its inputs.
pub const STOP_DRAIN_ROUNDS: usize = 64;

/// Receive rounds a `Drain` runs at most before it pauses anyway.
pub const DRAIN_ROUNDS: usize = 4096;

/// The largest batch a worker takes.
pub const MAX_BATCH: usize = 1024;

/// The graph a worker runs: its own, or one borrowed for the run (an
/// offline run whose caller reads the counters afterwards).
pub enum GraphRef<'a> {
    Owned(Box<Graph>),
    Borrowed(&'a mut Graph),
}

impl GraphRef<'_> {
    fn get(&mut self) -> &mut Graph {
        match self {
            GraphRef::Owned(g) => g,
            GraphRef::Borrowed(g) => g,
        }
    }
}

impl From<Graph> for GraphRef<'_> {
    fn from(g: Graph) -> Self {
        GraphRef::Owned(Box::new(g))
    }
}

impl<'a> From<&'a mut Graph> for GraphRef<'a> {
    fn from(g: &'a mut Graph) -> Self {
        GraphRef::Borrowed(g)
    }
}

/// The destination and source MAC of an Ethernet frame sent to one
/// station (the group bit of the destination clear), else None.
#[inline]
fn unicast_l2(frame: &[u8]) -> Option<[u8; 12]> {
    let head: [u8; 12] = frame.get(..12)?.try_into().ok()?;
    (head[0] & 1 == 0).then_some(head)
}

struct PortSlot<'a> {
    port: Box<dyn Port + 'a>,
    /// Where received packets go; None: transmit only.
    rx_to: Option<Endpoint>,
    rx_ended: bool,
    /// Destination and source MAC of the last unicast frame received, for
    /// frames injected "as if arrived here" ([`Command::Inject`]).
    last_l2: Option<[u8; 12]>,
    /// Receive only while every other port can take a batch
    /// ([`WorkerConfig::backpressure`] unless set per port).
    backpressure: bool,
    telemetry: Arc<PortTelemetry>,
}

/// How a run ended.
#[derive(Debug)]
pub struct WorkerReport {
    /// Every counter at the end.
    pub snapshot: WorkerSnapshot,
    /// Each port's counters, in port order.
    pub ports: Vec<PortStats>,
    pub elapsed: Duration,
    /// The error that stopped the worker, if one did. What was received
    /// before it was processed and sent.
    pub error: Option<WorkerError>,
    /// Peers that went away on shared-memory or channel ports (the port
    /// waits for or reconnects to the next one).
    pub disconnects: u64,
    /// What the adaptive mode changed, and why (empty without it).
    pub adaptations: Vec<Adaptation>,
}

/// See the module documentation.
pub struct Worker<'a> {
    cfg: WorkerConfig,
    graph: GraphRef<'a>,
    ports: Vec<PortSlot<'a>>,
    /// Per port: what leaves by it this turn.
    tx: Vec<Batch>,
    rx: Batch,
    mailbox: Mailbox,
    telemetry: Arc<WorkerTelemetry>,
    paused: bool,
    looped: LoopStats,
    idle_backoff: Duration,
    /// Something happened since the last tick (packets, a command) that
    /// the next tick publishes.
    dirty: bool,
    disconnects: u64,
    /// Live migration, source: the stage streaming its state out.
    streaming: Option<Streaming>,
    /// Live migration, destination: arrivals kept until the state is in.
    held: Option<Held>,
    /// Live migration, on a worker between a chain port and the migrating
    /// NF's worker: drain markers passed on instead of fed to the NFs.
    relays: Relays,
    /// Of the last hold: most packets held at once, arrivals dropped.
    held_last: (usize, u64),
    /// The adaptive mode's controller, its counters of the current period
    /// and its log.
    adapter: Option<Adapter>,
    period: PeriodCounters,
    adaptations: Vec<Adaptation>,
    /// The policy the adaptive mode last applied to the thread.
    applied_policy: crate::sched::SchedPolicy,
}

/// What the loop counted since the adaptive controller last looked.
#[derive(Default)]
struct PeriodCounters {
    start: Option<Instant>,
    /// The worker thread's CPU time and run-queue wait when the period
    /// started.
    times: crate::os::ThreadTimes,
    packets: u64,
    receives: u64,
    full: u64,
    turns: u64,
    sleeps: u64,
}

/// What the loop does after a control command.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

impl<'a> Worker<'a> {
    /// A worker running `graph`, without ports yet; and the handle to
    /// control it.
    pub fn new(
        cfg: WorkerConfig,
        graph: impl Into<GraphRef<'a>>,
    ) -> Result<(Worker<'a>, WorkerHandle), WorkerError> {
        if cfg.batch_size == 0 || cfg.batch_size > MAX_BATCH {
            return Err(WorkerError::BatchSize {
                worker: cfg.name.clone(),
                size: cfg.batch_size,
                max: MAX_BATCH,
            });
        }
        cfg.sched
            .check()
            .map_err(|source| WorkerError::Sched { worker: cfg.name.clone(), source })?;
        let adapter = match &cfg.adapt {
            Some(a) => Some(
                Adapter::new(a.clone(), cfg.batch_size, cfg.idle)
                    .map_err(|source| WorkerError::Adapt { worker: cfg.name.clone(), source })?,
            ),
            None => None,
        };
        if let Some(a) = cfg.adapt.as_ref().filter(|a| a.log) {
            // The log says the controller runs even when it has nothing
            // to change (a steady load).
            eprintln!(
                "worker `{}`: adapt: on (batch {} within {}..={}, idle {:?}, a look every {:?})",
                cfg.name, cfg.batch_size, a.min_batch, a.max_batch, cfg.idle, a.period
            );
        }
        let mut graph = graph.into();
        let stages = graph.get().stages().iter().map(|s| s.telemetry()).collect();
        let telemetry = Arc::new(WorkerTelemetry::new(&cfg.name, stages));
        crate::telemetry::announce(&telemetry);
        let (mailbox, handle) = mailbox(&cfg.name, telemetry.clone())
            .map_err(|source| WorkerError::Mailbox { worker: cfg.name.clone(), source })?;
        graph.get().set_ports(0);
        let mut w = Worker {
            rx: Batch::with_capacity(cfg.batch_size),
            cfg,
            graph,
            ports: Vec::new(),
            tx: Vec::new(),
            mailbox,
            telemetry,
            paused: false,
            looped: LoopStats::default(),
            idle_backoff: Duration::ZERO,
            dirty: true,
            disconnects: 0,
            streaming: None,
            held: None,
            relays: Relays::default(),
            held_last: (0, 0),
            adapter,
            period: PeriodCounters::default(),
            adaptations: Vec::new(),
            // `run` applies `cfg.sched` on the worker's thread.
            applied_policy: crate::sched::SchedPolicy::Other,
        };
        w.applied_policy = w.cfg.sched.policy;
        w.apply_adapter();
        Ok((w, handle))
    }

    /// Add a port; what it receives goes to `rx_to` (None: transmit only).
    /// Returns its number, which graph links name as [`Endpoint::Port`].
    pub fn add_port(
        &mut self,
        port: Box<dyn Port + 'a>,
        rx_to: Option<Endpoint>,
    ) -> Result<usize, WorkerError> {
        let i = self.ports.len();
        let g = self.graph.get();
        g.set_ports(i + 1);
        if let Some(to) = rx_to {
            if let Err(source) = g.check(to) {
                g.set_ports(i);
                return Err(WorkerError::Graph { worker: self.cfg.name.clone(), source });
            }
        }
        let telemetry = Arc::new(PortTelemetry::new(port.name()));
        self.telemetry.add_port(telemetry.clone());
        let backpressure = self.cfg.backpressure;
        self.ports.push(PortSlot {
            port,
            rx_to,
            rx_ended: false,
            last_l2: None,
            backpressure,
            telemetry,
        });
        self.tx.push(Batch::new());
        Ok(i)
    }

    /// Send what port `port` receives to `to` instead (None: transmit
    /// only): for ports that feed each other, added before the other
    /// exists (an edge worker between two pairs of ports).
    pub fn set_rx_to(&mut self, port: usize, to: Option<Endpoint>) -> Result<(), WorkerError> {
        let worker = || self.cfg.name.clone();
        if let Some(to) = to {
            self.graph
                .get()
                .check(to)
                .map_err(|source| WorkerError::Graph { worker: worker(), source })?;
        }
        match self.ports.get_mut(port) {
            Some(slot) => {
                slot.rx_to = to;
                Ok(())
            }
            None => Err(WorkerError::Graph {
                worker: worker(),
                source: GraphError::NoPort(port, self.ports.len()),
            }),
        }
    }

    /// Backpressure for port `port` alone (overriding
    /// [`WorkerConfig::backpressure`]): receive from it only while every
    /// other port can take a batch. An edge worker that must drain both
    /// directions of a chain gates only its source this way; gating every
    /// port there could close a cycle of full queues (the chain waiting for
    /// the edge, the edge waiting for the chain).
    pub fn set_backpressure(&mut self, port: usize, on: bool) {
        if let Some(slot) = self.ports.get_mut(port) {
            slot.backpressure = on;
        }
    }

    /// The graph (to link stages to ports once they exist).
    pub fn graph_mut(&mut self) -> &mut Graph {
        self.graph.get()
    }

    /// Run on the calling thread until stopped (control `Stop`, the stop
    /// flag, the deadline, every input at its end when so configured, or
    /// a port error).
    pub fn run(mut self) -> WorkerReport {
        let start = Instant::now();
        let mut error = match self.cfg.sched.apply_to_current_thread() {
            Err(source) => Some(WorkerError::Sched { worker: self.cfg.name.clone(), source }),
            Ok(()) => {
                self.telemetry.record_os(false);
                self.run_loop().err()
            }
        };
        // Final tick: NFs flush what they hold back.
        self.tick();
        if let Err(e) = self.flush() {
            error.get_or_insert(e);
        }
        for s in &mut self.ports {
            if let Err(source) = s.port.flush() {
                error.get_or_insert(WorkerError::Port {
                    worker: self.cfg.name.clone(),
                    port: s.port.name(),
                    source,
                });
            }
        }
        self.publish();
        self.telemetry.record_os(true);
        WorkerReport {
            snapshot: self.telemetry.snapshot(),
            ports: self.ports.iter().map(|s| s.port.stats()).collect(),
            elapsed: start.elapsed(),
            error,
            disconnects: self.disconnects,
            adaptations: self.adaptations,
        }
    }

    /// Run on a new thread named after the worker.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<WorkerReport>>
    where
        'a: 'static,
    {
        let name = self.cfg.name.clone();
        std::thread::Builder::new().name(name).spawn(move || self.run())
    }

    fn run_loop(&mut self) -> Result<(), WorkerError> {
        let mut next_tick = Instant::now() + self.cfg.tick_interval;
        self.publish();
        if let Some(h) = &mut self.cfg.heartbeat {
            // The ports are open and the loop starts: the first beat arms
            // the supervisor's watchdog.
            h.beat();
        }
        loop {
            self.looped.turns += 1;
            if self.mailbox.has_mail() {
                self.dirty = true;
                if self.serve_mail()? == Flow::Stop {
                    return Ok(());
                }
            }
            let moved = if self.paused { 0 } else { self.receive_round()? };
            self.period.packets += moved as u64;
            if moved > 0 {
                self.flush()?;
                self.idle_backoff = Duration::ZERO;
                self.dirty = true;
                self.stream_step();
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + self.cfg.tick_interval;
                self.adapt(now);
                self.tick();
                self.flush()?;
                if self.stop_requested() || self.cfg.deadline.is_some_and(|d| now >= d) {
                    return Ok(());
                }
            }
            if moved == 0 && self.streaming.as_ref().is_some_and(Streaming::walking) {
                // A snapshot walk in progress is work: on an idle turn it
                // goes on at full speed.
                if let Some(s) = &mut self.streaming {
                    if s.idle_step(self.graph.get()) {
                        self.streaming = None;
                    }
                }
                continue;
            }
            if moved == 0 {
                self.looped.idle_turns += 1;
                if self.cfg.stop_when_inputs_end
                    && self.ports.iter().all(|s| s.rx_to.is_none() || s.rx_ended)
                {
                    return Ok(());
                }
                self.idle(next_tick)?;
            }
        }
    }

    /// Receive one batch from every port that feeds the graph and push
    /// each through it. Returns the packets received.
    fn receive_round(&mut self) -> Result<usize, WorkerError> {
        let mut moved = 0;
        for i in 0..self.ports.len() {
            let Some(to) = self.ports[i].rx_to else { continue };
            if self.ports[i].rx_ended {
                continue;
            }
            if self.ports[i].backpressure && self.min_tx_room(i) < self.cfg.batch_size {
                continue;
            }
            let slot = &mut self.ports[i];
            match slot.port.recv(&mut self.rx, self.cfg.batch_size) {
                Ok(0) => {
                    if slot.port.at_end() {
                        slot.rx_ended = true;
                    }
                }
                Ok(n) => {
                    moved += n;
                    // One copy per batch (its last unicast frame, found
                    // from the end: nearly always the last), not per packet.
                    if let Some(l2) = self.rx.iter().rev().find_map(|p| unicast_l2(p.data())) {
                        slot.last_l2 = Some(l2);
                    }
                    // The batch's time is read after it was received, so
                    // it is never before any of its packets arrived (read
                    // before, a preemption between the two would stamp a
                    // packet early and a `delay` line release it early).
                    let now_ns = braid_nf::monotonic_ns();
                    if let Some(s) = &mut self.streaming {
                        if !s.markers_pending.is_empty() {
                            s.strip_markers(i, &mut self.rx);
                            s.duplicate(i, &self.rx);
                        }
                    }
                    match &mut self.held {
                        Some(h) => h.keep(i, to, &mut self.rx),
                        // A relay and a hold never meet (each refuses the
                        // other): a relayed marker would overtake what is
                        // held.
                        None if !self.relays.is_empty() => self.relays.push(
                            self.graph.get(),
                            i,
                            to,
                            &mut self.rx,
                            now_ns,
                            &mut self.tx,
                        ),
                        None => self.graph.get().push(to, &mut self.rx, now_ns, &mut self.tx),
                    }
                    self.period.receives += 1;
                    self.period.full += u64::from(n >= self.cfg.batch_size);
                }
                Err(PortError::Disconnected(_)) => self.disconnects += 1,
                Err(source) => {
                    // Keep what was read before the error.
                    if !self.rx.is_empty() {
                        let now_ns = braid_nf::monotonic_ns();
                        self.graph.get().push(to, &mut self.rx, now_ns, &mut self.tx);
                    }
                    return Err(WorkerError::Port {
                        worker: self.cfg.name.clone(),
                        port: slot.port.name(),
                        source,
                    });
                }
            }
        }
        Ok(moved)
    }

    fn min_tx_room(&mut self, except: usize) -> usize {
        let mut room = usize::MAX;
        for (j, s) in self.ports.iter_mut().enumerate() {
            if j != except {
                room = room.min(s.port.tx_room());
            }
        }
        room
    }

    /// Transmit what reached the ports.
    fn flush(&mut self) -> Result<(), WorkerError> {
        for (slot, out) in self.ports.iter_mut().zip(self.tx.iter_mut()) {
            if out.is_empty() {
                continue;
            }
            let r = slot.port.send(out).and_then(|_| slot.port.flush());
            out.clear();
            match r {
                Ok(()) => {}
                Err(PortError::Disconnected(_)) => self.disconnects += 1,
                Err(source) => {
                    return Err(WorkerError::Port {
                        worker: self.cfg.name.clone(),
                        port: slot.port.name(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Adaptive mode: once a period, hand the controller what the loop
    /// counted and apply what it decides.
    fn adapt(&mut self, now: Instant) {
        let Some(a) = &mut self.adapter else { return };
        if self.period.start.is_none() {
            self.period.times = crate::os::ThreadTimes::now();
        }
        let start = *self.period.start.get_or_insert(now);
        if now.duration_since(start) < a.config().period {
            return;
        }
        let times = crate::os::ThreadTimes::now();
        let spent = times.since(&self.period.times);
        let l = &self.looped;
        let p = &self.period;
        let sample = Sample {
            packets: p.packets,
            receives: p.receives,
            full: p.full,
            turns: l.turns - p.turns,
            sleeps: l.sleeps - p.sleeps,
            elapsed_ns: now.duration_since(start).as_nanos() as u64,
            cpu_ns: spent.cpu_ns,
            wait_ns: spent.wait_ns,
        };
        if let Some(change) = a.observe(&sample) {
            if a.config().log {
                eprintln!("worker `{}`: adapt: {change}", self.cfg.name);
            }
            self.adaptations.push(change);
            self.apply_adapter();
        }
        self.period = PeriodCounters {
            start: Some(now),
            times,
            turns: self.looped.turns,
            sleeps: self.looped.sleeps,
            ..PeriodCounters::default()
        };
    }

    /// Take the controller's batch size and idle policy.
    fn apply_adapter(&mut self) {
        let Some(a) = &mut self.adapter else { return };
        self.cfg.batch_size = a.batch();
        self.cfg.idle = a.idle();
        // The real-time raise: applied to this (the worker's) thread; the
        // worker's own setting (`cfg.sched`) stays what to go back to.
        let want = match a.rt() {
            Some(p) => Sched {
                policy: crate::sched::SchedPolicy::Fifo(p),
                nice: None,
                ..self.cfg.sched.clone()
            },
            None => self.cfg.sched.clone(),
        };
        if want.policy != self.applied_policy {
            match want.reapply_to_current_thread() {
                Ok(()) => self.applied_policy = want.policy,
                Err(e) => {
                    if a.config().log {
                        eprintln!(
                            "worker `{}`: adapt: cannot raise to real time: {e}",
                            self.cfg.name
                        );
                    }
                    a.rt_refused();
                    let _ = self.cfg.sched.reapply_to_current_thread();
                    self.applied_policy = self.cfg.sched.policy;
                }
            }
        }
    }

    fn stop_requested(&self) -> bool {
        self.cfg.stop_flag.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
            || self.cfg.stop_signal.is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Live migration, source: queue what changed and the next chunk;
    /// drop the stream once it is over.
    fn stream_step(&mut self) {
        if let Some(s) = &mut self.streaming {
            if s.step(self.graph.get()) {
                self.streaming = None;
            }
        }
    }

    /// Live migration, destination: process what was held, in arrival
    /// order, then go on as usual.
    /// While holding, receive what already waits on the inputs into the
    /// hold (bounded: a live input may never run dry).
    fn hold_what_waits(&mut self) -> Result<(), WorkerError> {
        if self.held.is_some() {
            for _ in 0..STOP_DRAIN_ROUNDS {
                if self.receive_round()? == 0 {
                    break;
                }
            }
        }
        Ok(())
    }

    fn release_held(&mut self) -> Result<(), WorkerError> {
        let Some(held) = self.held.take() else { return Ok(()) };
        self.held_last = (held.peak, held.dropped);
        for (_, to, mut batch) in held.batches {
            let now_ns = braid_nf::monotonic_ns();
            self.graph.get().push(to, &mut batch, now_ns, &mut self.tx);
            self.flush()?;
        }
        Ok(())
    }

    fn tick(&mut self) {
        self.looped.ticks += 1;
        self.dirty = false;
        self.graph.get().tick(braid_nf::monotonic_ns(), &mut self.tx);
        self.stream_step();
        if let Some(h) = &mut self.cfg.heartbeat {
            h.beat();
        }
        for s in &self.ports {
            s.telemetry.publish(&s.port.stats(), s.rx_ended);
        }
        self.telemetry.publish_loop(&self.looped);
    }

    fn publish(&mut self) {
        self.graph.get().publish();
        for s in &self.ports {
            s.telemetry.publish(&s.port.stats(), s.rx_ended);
        }
        self.telemetry.publish_loop(&self.looped);
    }

    /// Whether the next tick is needed on time (see the module
    /// documentation), or an idle worker may sleep past it.
    fn tick_due_on_time(&mut self) -> bool {
        self.dirty
            || self.cfg.heartbeat.is_some()
            || self.adapter.is_some()
            || self.streaming.is_some()
            || self.cfg.stop_flag.is_some()
            || self.cfg.stop_signal.is_some()
            || self.cfg.deadline.is_some()
            || self.graph.get().stages().iter().any(|s| s.nf().wants_tick())
    }

    fn idle(&mut self, next_tick: Instant) -> Result<(), WorkerError> {
        match self.cfg.idle {
            Idle::Busy => std::hint::spin_loop(),
            Idle::Poll => {
                let until = if self.tick_due_on_time() {
                    next_tick
                } else {
                    // The last tick was at `next_tick - tick_interval`.
                    next_tick + self.cfg.idle_tick.saturating_sub(self.cfg.tick_interval)
                };
                let mut timeout = until.saturating_duration_since(Instant::now());
                if self.streaming.as_ref().is_some_and(Streaming::waits_for_link) {
                    // The state stream waits for the peer to acknowledge
                    // (back-pressure); nothing wakes the worker for that.
                    timeout = timeout.min(crate::migration::LINK_POLL);
                }
                let wake = self.mailbox.wake.as_raw_fd();
                let mut ports: Vec<&mut dyn Port> = self
                    .ports
                    .iter_mut()
                    .filter(|s| s.rx_to.is_some() && !s.rx_ended)
                    .map(|s| &mut *s.port as &mut dyn Port)
                    .collect();
                braid_io::wait_any(&mut ports, &[wake], timeout).map_err(|source| {
                    WorkerError::Port {
                        worker: self.cfg.name.clone(),
                        port: "(poll)".into(),
                        source,
                    }
                })?;
                self.looped.sleeps += 1;
            }
            Idle::Sleep => {
                self.idle_backoff = (self.idle_backoff * 2)
                    .clamp(Duration::from_micros(50), Duration::from_millis(1));
                std::thread::sleep(self.idle_backoff);
                self.looped.sleeps += 1;
            }
        }
        Ok(())
    }

    /// Answer every waiting command; while paused, wait for commands until
    /// resumed or stopped, ticking every tick interval only while
    /// something needs the tick ([`Worker::tick_due_on_time`]: an NF that
    /// holds packets or state to expire, a heartbeat, a stop flag, news to
    /// publish), else every [`WorkerConfig::idle_tick`].
    fn serve_mail(&mut self) -> Result<Flow, WorkerError> {
        while let Some(env) = self.mailbox.next() {
            if self.answer(env)? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
        while self.paused {
            let wait = if self.tick_due_on_time() {
                self.cfg.tick_interval
            } else {
                self.cfg.idle_tick.max(self.cfg.tick_interval)
            };
            match self.mailbox.wait(wait) {
                Some(env) => {
                    if self.answer(env)? == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                }
                None => {
                    self.tick();
                    self.flush()?;
                    if self.stop_requested() {
                        return Ok(Flow::Stop);
                    }
                }
            }
        }
        Ok(Flow::Go)
    }

    fn answer(&mut self, env: Envelope) -> Result<Flow, WorkerError> {
        self.looped.control_messages += 1;
        let Envelope { command, reply } = env;
        let stop = matches!(command, Command::Stop);
        match self.apply(command) {
            Ok(r) => {
                let _ = reply.send(Ok(r));
            }
            Err(ControlFailure::Refused(e)) => {
                let _ = reply.send(Err(e));
            }
            Err(ControlFailure::Worker(e)) => {
                let _ = reply.send(Err(ControlError::Gone(self.cfg.name.clone())));
                return Err(e);
            }
        }
        Ok(if stop { Flow::Stop } else { Flow::Go })
    }

    fn relay_error(&self, source: RelayError) -> ControlError {
        ControlError::Relay { worker: self.cfg.name.clone(), source }
    }

    fn stage_index(&mut self, name: &str) -> Result<usize, ControlError> {
        Ok(self.graph.get().find(name)?)
    }

    fn apply(&mut self, command: Command) -> Result<Reply, ControlFailure> {
        let refused = ControlFailure::Refused;
        match command {
            Command::Counters => {
                self.publish();
                Ok(Reply::Counters(self.telemetry.snapshot()))
            }
            Command::Pause => {
                self.paused = true;
                Ok(Reply::Done)
            }
            Command::Resume => {
                self.paused = false;
                Ok(Reply::Done)
            }
            Command::Drain => {
                let mut packets = 0u64;
                // Bounded: an input that never runs dry (a generator, a
                // flood that was not redirected) must not keep the worker
                // in this command for ever.
                for _ in 0..DRAIN_ROUNDS {
                    let n = self.receive_round().map_err(ControlFailure::Worker)?;
                    self.flush().map_err(ControlFailure::Worker)?;
                    if n == 0 {
                        break;
                    }
                    packets += n as u64;
                }
                self.paused = true;
                self.publish();
                Ok(Reply::Drained { packets })
            }
            Command::ExportState { stage } => {
                let i = self.stage_index(&stage).map_err(refused)?;
                Ok(Reply::State(self.graph.get().stages()[i].nf().export_state()))
            }
            Command::ExportBinary { stage } => {
                let i = self.stage_index(&stage).map_err(refused)?;
                let nf = self.graph.get().stages()[i].nf();
                match nf.export_scoped(&braid_nf::FlowScope::All, braid_nf::Encoding::Binary) {
                    Ok(s) => Ok(Reply::State(Some(s))),
                    Err(braid_nf::StateError::Stateless) => Ok(Reply::State(None)),
                    Err(source) => Err(refused(ControlError::State { stage, source })),
                }
            }
            Command::ImportState { stage, state } => {
                let i = self.stage_index(&stage).map_err(refused)?;
                self.graph.get().stages_mut()[i]
                    .nf_mut()
                    .import_state(&state)
                    .map_err(|source| refused(ControlError::State { stage, source }))?;
                Ok(Reply::Done)
            }
            Command::Reroute { stage, output, to } => {
                match output {
                    Output::Gate(gate) => {
                        let i = self.stage_index(&stage).map_err(refused)?;
                        self.graph
                            .get()
                            .link(i, gate, to)
                            .map_err(|e| refused(ControlError::Graph(e)))?;
                    }
                    Output::PortRx(p) => {
                        let n = self.ports.len();
                        if p >= n {
                            return Err(refused(ControlError::Graph(GraphError::NoPort(p, n))));
                        }
                        self.graph.get().check(to).map_err(|e| refused(ControlError::Graph(e)))?;
                        self.ports[p].rx_to = Some(to);
                        self.ports[p].rx_ended = false;
                    }
                }
                Ok(Reply::Done)
            }
            Command::AddPort { port, rx_to } => {
                let i = self.add_port(port, rx_to).map_err(|e| match e {
                    WorkerError::Graph { source, .. } => refused(ControlError::Graph(source)),
                    other => ControlFailure::Worker(other),
                })?;
                Ok(Reply::Port(i))
            }
            Command::Reconfigure { stage, params } => {
                let i = self.stage_index(&stage).map_err(refused)?;
                let g = self.graph.get();
                let kind = g.stages()[i].spec().name;
                let mut fresh = braid_nf::build(kind, &params).map_err(|source| {
                    refused(ControlError::Build { stage: stage.clone(), source })
                })?;
                if let Some(state) = g.stages()[i].nf().export_state() {
                    fresh.import_state(&state).map_err(|source| {
                        refused(ControlError::StateDoesNotFit {
                            stage: stage.clone(),
                            kind,
                            source,
                        })
                    })?;
                }
                g.stages_mut()[i].replace_nf(fresh).map_err(|e| refused(ControlError::Graph(e)))?;
                Ok(Reply::Done)
            }
            Command::StreamOut(req) => {
                let i = self.stage_index(&req.stage).map_err(refused)?;
                let stage = req.stage.clone();
                let stream_err =
                    |source| refused(ControlError::Stream { stage: stage.clone(), source });
                if self.streaming.is_some() {
                    return Err(stream_err(StreamError::Busy(stage.clone())));
                }
                if let Some(&p) = req.markers.iter().find(|&&p| p >= self.ports.len()) {
                    return Err(stream_err(StreamError::NoPort(p, self.ports.len())));
                }
                let s = Streaming::start(self.graph.get(), i, req).map_err(stream_err)?;
                self.streaming = Some(s);
                Ok(Reply::Done)
            }
            Command::StreamStop { stage } => {
                let i = self.stage_index(&stage).map_err(refused)?;
                if let Some(mut s) = self.streaming.take_if(|s| s.stage == i) {
                    s.thaw(self.graph.get());
                }
                Ok(Reply::Done)
            }
            Command::Install { stage, statelets } => {
                let i = self.stage_index(&stage).map_err(refused)?;
                let nf = self.graph.get().stages_mut()[i].nf_mut();
                let name = stage.clone();
                let fs = nf.flow_stream().ok_or_else(|| {
                    refused(ControlError::Stream {
                        stage: name.clone(),
                        source: StreamError::NotStreamable(name.clone()),
                    })
                })?;
                for s in &statelets {
                    fs.install(s).map_err(|source| {
                        refused(ControlError::State { stage: stage.clone(), source })
                    })?;
                }
                Ok(Reply::Installed(statelets.len()))
            }
            Command::Replay { stage, frames } => {
                let i = self.stage_index(&stage).map_err(refused)?;
                let n = self.ports.len();
                let mut counters = braid_nf::Counters::default();
                let mut batch = Batch::new();
                let mut at = 0;
                while at < frames.len() {
                    let port = frames[at].0;
                    let gate = match self.ports.get(port).and_then(|p| p.rx_to) {
                        Some(Endpoint::Stage { stage, gate }) if stage == i => gate,
                        _ if port >= n => {
                            return Err(refused(ControlError::Graph(GraphError::NoPort(port, n))))
                        }
                        _ => {
                            return Err(refused(ControlError::Stream {
                                stage: stage.clone(),
                                source: StreamError::NotFedBy(port),
                            }))
                        }
                    };
                    while at < frames.len() && frames[at].0 == port {
                        let mut p = braid_packet::Packet::from_bytes(&frames[at].1);
                        p.meta.in_port = gate;
                        batch.push(p);
                        at += 1;
                    }
                    let mut cx = braid_nf::Context::new(braid_nf::monotonic_ns(), &mut counters);
                    // Output suppressed: only the state change matters.
                    self.graph.get().stages_mut()[i].nf_mut().process(&mut batch, &mut cx);
                    batch.clear();
                }
                Ok(Reply::Done)
            }
            Command::Forget { stage, scope } => {
                let i = self.stage_index(&stage).map_err(refused)?;
                let nf = self.graph.get().stages_mut()[i].nf_mut();
                let name = stage.clone();
                let fs = nf.flow_stream().ok_or_else(|| {
                    refused(ControlError::Stream {
                        stage: name.clone(),
                        source: StreamError::NotStreamable(name.clone()),
                    })
                })?;
                let n = crate::migration::forget(fs, &scope)
                    .map_err(|source| refused(ControlError::State { stage, source }))?;
                Ok(Reply::Installed(n))
            }
            Command::FinishInstall { stage } => {
                let i = self.stage_index(&stage).map_err(refused)?;
                let nf = self.graph.get().stages_mut()[i].nf_mut();
                if let Some(fs) = nf.flow_stream() {
                    fs.finish_install()
                        .map_err(|source| refused(ControlError::State { stage, source }))?;
                }
                Ok(Reply::Done)
            }
            Command::Hold(on) => {
                if let (true, Some(id)) = (on, self.relays.first_id()) {
                    return Err(refused(self.relay_error(RelayError::Relaying(id))));
                }
                if on {
                    self.held.get_or_insert_with(Held::default);
                } else {
                    // What already waits on the inputs arrived before the
                    // release: into the hold with it (the order is the
                    // same either way, and the peak counts it).
                    self.hold_what_waits().map_err(ControlFailure::Worker)?;
                    self.release_held().map_err(ControlFailure::Worker)?;
                }
                let (held, peak, dropped) = match &self.held {
                    Some(h) => (h.packets, h.peak, h.dropped),
                    None => (0, self.held_last.0, self.held_last.1),
                };
                Ok(Reply::Held { held, peak, dropped })
            }
            Command::TakeHeld => {
                // What already waits on the inputs was sent before the
                // traffic went back: it is held (and handed over) too.
                self.hold_what_waits().map_err(ControlFailure::Worker)?;
                let h = self.held.take().unwrap_or_default();
                self.held_last = (h.peak, h.dropped);
                Ok(Reply::Frames(h.frames()))
            }
            Command::Inject { mut frames, readdress } => {
                let n = self.ports.len();
                if let Some((p, _)) = frames.iter().find(|(p, _)| *p >= n) {
                    return Err(refused(ControlError::Graph(GraphError::NoPort(*p, n))));
                }
                if readdress {
                    for (p, f) in &mut frames {
                        if let (Some(l2), Some(head)) = (self.ports[*p].last_l2, f.get_mut(..12)) {
                            head.copy_from_slice(&l2);
                        }
                    }
                }
                let now_ns = braid_nf::monotonic_ns();
                // Consecutive frames of one port go through as one batch.
                let mut i = 0;
                while i < frames.len() {
                    let port = frames[i].0;
                    let mut batch = Batch::new();
                    while i < frames.len() && frames[i].0 == port {
                        batch.push(braid_packet::Packet::from_bytes(&frames[i].1));
                        i += 1;
                    }
                    if let Some(s) = &mut self.streaming {
                        s.strip_markers(port, &mut batch);
                    }
                    if let Some(to) = self.ports[port].rx_to {
                        let g = self.graph.get();
                        self.relays.push(g, port, to, &mut batch, now_ns, &mut self.tx);
                        self.flush().map_err(ControlFailure::Worker)?;
                    }
                }
                Ok(Reply::Done)
            }
            Command::Relay(relay) => {
                if self.held.is_some() {
                    return Err(refused(self.relay_error(RelayError::Held)));
                }
                let ports = self.ports.len();
                self.relays.add(relay, ports).map_err(|e| refused(self.relay_error(e)))?;
                Ok(Reply::Done)
            }
            Command::Unrelay { id } => {
                self.relays.remove(id);
                Ok(Reply::Done)
            }
            Command::SetSched(change) => self.set_sched(change).map_err(refused),
            Command::Tap { stage, tap } => {
                let i = self.stage_index(&stage).map_err(refused)?;
                self.graph.get().stages_mut()[i].add_tap(tap);
                Ok(Reply::Done)
            }
            Command::Untap { stage, id } => {
                let i = self.stage_index(&stage).map_err(refused)?;
                self.graph.get().stages_mut()[i].remove_tap(id);
                Ok(Reply::Done)
            }
            Command::Stop => {
                // What a destination held is processed, not lost.
                self.release_held().map_err(ControlFailure::Worker)?;
                // Take what is already waiting on the inputs (bounded: a
                // live input may never run dry).
                for _ in 0..STOP_DRAIN_ROUNDS {
                    let n = self.receive_round().map_err(ControlFailure::Worker)?;
                    self.flush().map_err(ControlFailure::Worker)?;
                    if n == 0 {
                        break;
                    }
                }
                Ok(Reply::Done)
            }
        }
    }
}

impl Worker<'_> {
    /// [`Command::SetSched`]: check everything first, then apply; the
    /// thread's scheduling is put back if the kernel refuses part of it.
    fn set_sched(&mut self, c: SchedChange) -> Result<Reply, ControlError> {
        let worker = self.cfg.name.clone();
        if let Some(b) = c.batch_size {
            if b == 0 || b > MAX_BATCH {
                return Err(ControlError::BatchSize { worker, size: b, max: MAX_BATCH });
            }
        }
        let adapter = match (&c.adapt, &self.adapter) {
            (Some(Some(cfg)), _) => Some(
                Adapter::new(
                    cfg.clone(),
                    c.batch_size.unwrap_or(self.cfg.batch_size),
                    c.idle.unwrap_or(self.cfg.idle),
                )
                .map_err(|source| ControlError::Adapt { worker: worker.clone(), source })?,
            ),
            (Some(None), _) => None,
            (None, Some(a)) if c.batch_size.is_some() || c.idle.is_some() => Some(
                Adapter::new(
                    a.config().clone(),
                    c.batch_size.unwrap_or(self.cfg.batch_size),
                    c.idle.unwrap_or(self.cfg.idle),
                )
                .map_err(|source| ControlError::Adapt { worker: worker.clone(), source })?,
            ),
            (None, a) => a.clone(),
        };
        if let Some(s) = &c.sched {
            s.check().map_err(|source| ControlError::Sched { worker: worker.clone(), source })?;
            if let Err(source) = s.reapply_to_current_thread() {
                let _ = self.cfg.sched.reapply_to_current_thread();
                return Err(ControlError::Sched { worker, source });
            }
            self.cfg.sched = s.clone();
            self.applied_policy = s.policy;
        }
        if let Some(b) = c.batch_size {
            self.cfg.batch_size = b;
        }
        if let Some(i) = c.idle {
            self.cfg.idle = i;
        }
        if c.adapt.is_some() || c.batch_size.is_some() || c.idle.is_some() {
            self.adapter = adapter;
            self.period = PeriodCounters::default();
            self.apply_adapter();
        }
        Ok(Reply::Done)
    }
}

enum ControlFailure {
    /// The command was refused; nothing changed.
    Refused(ControlError),
    /// Carrying it out failed the worker (a port error while draining).
    Worker(WorkerError),
}
