//! Live migration on a running worker: streaming a stage's per-flow state
//! out while it keeps processing (the source), holding arrivals until the
//! state is in (the destination), and the drain markers that close the
//! old path. The protocol that ties a source and a destination together
//! is `braid-migrate`'s; this module is what it asks of the packet loop.
//!
//! Source, after [`crate::Command::StreamOut`]: the stage's table records
//! the flows that change ([`braid_nf::FlowStream`]); after every loop
//! turn that processed packets (and after every tick) the worker exports
//! the changed flows as one [`Statelet`] and one chunk of the table
//! walk, and queues both, in that order, on the stream's channel. It
//! never waits on the channel: a full channel fails the stream (the
//! migration rolls back) instead of stalling the dataplane. Drain markers
//! arriving on the watched ports are taken out of the traffic; once every
//! watched port has brought its marker, the last changes and the rest of
//! the walk are queued, then [`StreamItem::End`], and the table stops
//! recording.
//!
//! Destination: [`crate::Command::Hold`] keeps what arrives, in arrival
//! order, instead of processing it; [`crate::Command::Install`] installs
//! statelets between batches; releasing the hold takes what waits on the
//! inputs into it, then processes everything held first, in order.
//!
//! Between the two on a chain of workers ([`MarkerRelay`]): the workers
//! between a chain port and the migrating NF's worker pass the drain
//! markers on to it instead of feeding them to their NFs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_nf::statelet::dedup_keys;
use braid_nf::{FlowScope, PartitionKey, Statelet};
use braid_packet::Batch;

use crate::graph::{Endpoint, Graph};

/// Ethertype of a drain marker (IEEE 802 local experimental 1).
pub const MARKER_ETHERTYPE: u16 = 0x88b5;
/// What follows the ethertype in a drain marker, then the migration id
/// (u64, big endian).
pub const MARKER_MAGIC: &[u8; 8] = b"BRAIDMRK";

/// A drain marker frame for migration `id` (60 bytes, broadcast, so any
/// port passes it on to the worker).
pub fn marker_frame(id: u64) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0x62, 0x72, 0x61, 0x69, 0x64]);
    f[12..14].copy_from_slice(&MARKER_ETHERTYPE.to_be_bytes());
    f[14..22].copy_from_slice(MARKER_MAGIC);
    f[22..30].copy_from_slice(&id.to_be_bytes());
    f
}

/// The migration id of a drain marker frame, `None` for any other frame.
#[inline]
pub fn marker_id(frame: &[u8]) -> Option<u64> {
    if frame.len() < 30 || frame[12..14] != MARKER_ETHERTYPE.to_be_bytes() {
        return None;
    }
    if &frame[14..22] != MARKER_MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(frame[22..30].try_into().ok()?))
}

/// Passing drain markers on along a chain of workers (`mapping: threads`:
/// a worker per NF, neighbours joined by channel ports). The marker of an
/// old path enters the chain at its `in` or `out` port, which belong to the
/// first and the last worker; the stream that watches it runs on the
/// migrating NF's worker, further along. Each worker in between is told
/// (by [`crate::Command::Relay`], with the migration) to take that marker
/// out of what arrives on one port and send it out of another, the port
/// its batch leaves by towards the migrating NF, after the outputs of the
/// packets that arrived before it (so it stays behind every one of them),
/// instead of feeding it to its NFs (which may drop it).
///
/// Markers are looked for only while a worker has a relay (and a stream
/// watches them only while its markers are pending): a worker with
/// neither does nothing per packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkerRelay {
    /// The migration whose markers pass.
    pub id: u64,
    /// (port the marker arrives on, port it leaves by); each route is
    /// used by one marker, then retires.
    pub routes: Vec<(usize, usize)>,
}

/// Why a relay could not be set, or a hold could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay of migration {id}: port {port} does not exist (the worker has {ports})")]
    NoPort { id: u64, port: usize, ports: usize },
    #[error("relay of migration {id}: port {port} is named twice as where markers arrive")]
    SamePort { id: u64, port: usize },
    #[error("the drain markers of migration {0} are already relayed here")]
    Busy(u64),
    #[error("the worker holds its arrivals (a migration into it runs): a marker relayed now would overtake what it holds")]
    Held,
    #[error("the worker relays the drain markers of migration {0}: holding its arrivals now would let the marker overtake them")]
    Relaying(u64),
}

/// A worker's relays ([`MarkerRelay`]).
#[derive(Debug, Default)]
pub(crate) struct Relays {
    list: Vec<MarkerRelay>,
}

impl Relays {
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The id of a relay still waiting for a marker.
    pub fn first_id(&self) -> Option<u64> {
        self.list.first().map(|r| r.id)
    }

    /// Add `relay` on a worker with `ports` ports.
    pub fn add(&mut self, relay: MarkerRelay, ports: usize) -> Result<(), RelayError> {
        let id = relay.id;
        if self.list.iter().any(|r| r.id == id) {
            return Err(RelayError::Busy(id));
        }
        for (k, &(from, to)) in relay.routes.iter().enumerate() {
            if let Some(port) = [from, to].into_iter().find(|&p| p >= ports) {
                return Err(RelayError::NoPort { id, port, ports });
            }
            if relay.routes[..k].iter().any(|&(f, _)| f == from) {
                return Err(RelayError::SamePort { id, port: from });
            }
        }
        if !relay.routes.is_empty() {
            self.list.push(relay);
        }
        Ok(())
    }

    /// Drop migration `id`'s relay (if it is still there).
    pub fn remove(&mut self, id: u64) {
        self.list.retain(|r| r.id != id);
    }

    /// Whether `frame`, received on `port`, is a marker a relay passes on.
    fn relays(&self, port: usize, frame: &[u8]) -> bool {
        marker_id(frame).is_some_and(|id| {
            self.list.iter().any(|r| r.id == id && r.routes.iter().any(|&(f, _)| f == port))
        })
    }

    /// The port a relayed marker `frame` received on `port` leaves by; its
    /// route retires (the relay with it, once it has none left).
    fn take_route(&mut self, port: usize, frame: &[u8]) -> Option<usize> {
        let id = marker_id(frame)?;
        let r = self.list.iter().position(|r| r.id == id)?;
        let routes = &mut self.list[r].routes;
        let k = routes.iter().position(|&(from, _)| from == port)?;
        let (_, to) = routes.remove(k);
        if routes.is_empty() {
            self.list.remove(r);
        }
        Some(to)
    }

    /// Push `batch`, received on `port`, through `graph` from `to`, as
    /// [`Graph::push`] does, except that a marker a relay passes on goes to
    /// `out[its port]` right after the outputs of the packets before it
    /// (those after it are pushed after). `batch` is left empty.
    pub fn push(
        &mut self,
        graph: &mut Graph,
        port: usize,
        to: Endpoint,
        batch: &mut Batch,
        now_ns: u64,
        out: &mut [Batch],
    ) {
        if self.list.is_empty() || !batch.iter().any(|p| self.relays(port, p.data())) {
            graph.push(to, batch, now_ns, out);
            return;
        }
        // Rare (one batch per relayed marker): the batch is cut there.
        let mut before = Batch::with_capacity(batch.len());
        for p in batch.drain() {
            match self.take_route(port, p.data()) {
                Some(by) => {
                    graph.push(to, &mut before, now_ns, out);
                    out[by].push(p);
                }
                None => before.push(p),
            }
        }
        graph.push(to, &mut before, now_ns, out);
    }
}

/// Drop the flows of `fs` in `scope`: a tombstone statelet for every held
/// key in it, then the derived state rebuilt. How many were dropped.
pub fn forget(
    fs: &mut dyn braid_nf::FlowStream,
    scope: &FlowScope,
) -> Result<usize, braid_nf::StateError> {
    let mut keys = Vec::new();
    fs.held_keys(&mut keys);
    keys.retain(|k| scope.contains(k));
    let n = keys.len();
    let mut tombstone = fs.export_flows(&[]);
    tombstone.keys = keys;
    fs.install(&tombstone)?;
    fs.finish_install()?;
    Ok(n)
}

/// What a streaming source queues, in the order the destination must
/// apply it.
#[derive(Debug)]
pub enum StreamItem {
    /// A snapshot chunk or the changes of a loop turn.
    Statelet(Statelet),
    /// The table walk is complete (`chunks` chunks were sent).
    SnapshotDone { chunks: u64 },
    /// Duplication baseline: copies of what port `port` received.
    Packets { port: usize, frames: Vec<Vec<u8>> },
    /// Every watched port brought its marker: nothing follows.
    End {
        statelets: u64,
        chunks: u64,
        /// Flows sent in change statelets (a flow sent twice counts twice).
        flows: u64,
    },
    /// The stream stopped without an end (it could not queue); the
    /// table stopped recording.
    Failed(String),
}

impl StreamItem {
    /// About how many bytes this item takes on the state link (its
    /// payload plus a frame's overhead): what the worker adds to a
    /// [`LinkGate`]'s queued bytes and the link's writer takes off again,
    /// so both must use this. A statelet's keys are not counted: the
    /// entries' own are not sent ([`braid_nf::CompactStatelet`]), and the
    /// flows it clears without an entry (an expiry or a close during the
    /// migration, about 16 bytes each) are few and not known here without
    /// decoding the entries.
    pub fn wire_bytes(&self) -> usize {
        match self {
            StreamItem::Statelet(s) => s.state.data.len() + STATELET_FIXED_BYTES,
            StreamItem::Packets { frames, .. } => {
                frames.iter().map(|f| f.len() + 8).sum::<usize>() + 16
            }
            StreamItem::SnapshotDone { .. } | StreamItem::End { .. } | StreamItem::Failed(_) => 32,
        }
    }
}

/// What a statelet costs on the state link besides its entries (the
/// frame's length and tag, the message's and the NF state's framing), as
/// [`StreamItem::wire_bytes`] estimates it. (Fitted to the SliM sweep's
/// totals, an item's framing was about 48 bytes on the wire, as much as
/// a firewall entry.)
pub const STATELET_FIXED_BYTES: usize = 32;

/// The fewest entries a statelet carries while the stream yields to a
/// busy link, unless a quarter of the gate's bound holds fewer: the
/// worker waits for that much room rather than send an item per small
/// opening of the gate. Sizing each item to the room left made items of
/// one to three entries at 80-95 % load, whose framing was 43 % of the
/// state bytes (docs/migration.md, "Session 14" under the SliM sweep).
pub const MIN_ITEM_ENTRIES: usize = 16;

/// How often an idle worker looks at a closed [`LinkGate`] again (the
/// gate opens as the peer acknowledges, which wakes nothing): at
/// 10 Mbit/s, 1 ms is 1.25 KB of link.
pub const LINK_POLL: Duration = Duration::from_millis(1);

/// Back-pressure on a state stream, shared by the worker (which queues
/// items) and the link's writer (which writes them to the socket and
/// watches the socket's send queue).
///
/// The worker takes changed flows out of the NF's change record, and
/// walks the next snapshot chunk, only while the bytes *in flight*
/// (queued here and not yet written, plus written and not yet
/// acknowledged by the peer: `SIOCOUTQ`) are below [`LinkGate::bound`].
/// While the link is busy the changes stay in the record, where a flow
/// changed a hundred times is still one entry: it is sent once, with its
/// state as it is then. Without a gate every worker turn with budget
/// would export the changed flows again and the copies would queue in
/// the socket and on the link (docs/migration.md, "Back-pressure").
#[derive(Debug)]
pub struct LinkGate {
    queued: AtomicUsize,
    link: AtomicUsize,
    bound: AtomicUsize,
    hold_below: AtomicUsize,
    app_limited: AtomicBool,
}

impl LinkGate {
    /// A gate letting `bound` bytes be in flight.
    pub fn new(bound: usize) -> LinkGate {
        LinkGate {
            queued: AtomicUsize::new(0),
            link: AtomicUsize::new(0),
            bound: AtomicUsize::new(bound),
            hold_below: AtomicUsize::new(0),
            app_limited: AtomicBool::new(false),
        }
    }

    /// A gate that never closes (no back-pressure: every turn with budget
    /// sends).
    pub fn open() -> LinkGate {
        LinkGate::new(usize::MAX)
    }

    /// Bytes between the worker and the peer: queued, plus in the
    /// socket's send queue as last read.
    pub fn in_flight(&self) -> usize {
        self.queued.load(Ordering::Relaxed).saturating_add(self.link.load(Ordering::Relaxed))
    }

    /// Bytes queued by the worker and not yet written to the socket.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// How many bytes may be in flight.
    pub fn bound(&self) -> usize {
        self.bound.load(Ordering::Relaxed)
    }

    /// Set how many bytes may be in flight (the writer, from the link's
    /// bandwidth-delay product).
    pub fn set_bound(&self, bytes: usize) {
        self.bound.store(bytes, Ordering::Relaxed);
    }

    /// What may still be queued now (0: wait for the link).
    pub fn room(&self) -> usize {
        self.bound().saturating_sub(self.in_flight())
    }

    /// The worker left room in the gate unused (nothing more to send, its
    /// CPU budget spent, or its one chunk per turn sent): the stream is
    /// *application-limited*, and the rate acknowledged meanwhile is not
    /// the path's. (The bytes in flight do not tell: the worker waits for
    /// room for a worthwhile item, so after one is acknowledged few bytes
    /// are in flight while the bound still holds the stream back.)
    pub fn note_app_limited(&self) {
        self.app_limited.store(true, Ordering::Relaxed);
    }

    /// Whether the stream was application-limited since the last call
    /// (the link's writer, for its rate window); clears it.
    pub fn take_app_limited(&self) -> bool {
        self.app_limited.swap(false, Ordering::Relaxed)
    }

    /// The worker queued an item of `bytes` ([`StreamItem::wire_bytes`]).
    pub fn add_queued(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The writer wrote an item of `bytes` to the socket, whose send queue
    /// now holds `link` bytes. (The send queue is updated first, so the
    /// sum never misses the item in between.)
    pub fn written(&self, bytes: usize, link: usize) {
        self.link.store(link, Ordering::Relaxed);
        self.unqueue(bytes);
    }

    fn unqueue(&self, bytes: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(bytes)));
    }

    /// The socket's send queue now holds `link` bytes (the writer, as the
    /// peer acknowledges).
    pub fn set_link(&self, link: usize) {
        self.link.store(link, Ordering::Relaxed);
    }

    /// A switch waits for the bytes in flight to drain: from now on the
    /// worker sends changed flows only while at least `flows` of them wait
    /// (it must bring a large backlog down, but a small one is better
    /// left to coalesce until the end). 0 ends this.
    pub fn hold_changes_below(&self, flows: usize) {
        self.hold_below.store(flows, Ordering::Relaxed);
    }

    fn holds(&self, backlog: usize) -> bool {
        let h = self.hold_below.load(Ordering::Relaxed);
        h > 0 && backlog < h
    }
}

/// What [`crate::Command::StreamOut`] starts.
pub struct StreamOut {
    /// The stage whose state streams.
    pub stage: String,
    /// Where the items go; bounded: when full, the stream fails.
    pub sink: SyncSender<StreamItem>,
    /// Entries per snapshot chunk (one chunk per loop turn).
    pub chunk: usize,
    /// The ports whose drain marker ends the stream. Empty: the stream
    /// ends only when stopped.
    pub markers: Vec<usize>,
    /// The migration id markers carry.
    pub id: u64,
    /// Stream the state (statelet migration). `false`: only watch for the
    /// markers and end (stop-and-copy moves the whole state afterwards).
    pub send_state: bool,
    /// Which flows move ([`FlowScope::All`]: the whole instance). With a
    /// narrower scope (a split), only those flows' state streams. The
    /// stage keeps what moved until the controller drops it after the
    /// destination's Done ([`crate::Command::Forget`]).
    pub scope: FlowScope,
    /// Share of the worker's time (0.01 to 1) the stream may take while
    /// traffic flows; the rest waits (see `Streaming::emit`). The walk
    /// runs at full speed on idle turns.
    pub budget: f64,
    /// The number of changed flows not yet sent, kept up to date by the
    /// worker, for the controller to pick the moment of the switch.
    pub backlog: Arc<AtomicUsize>,
    /// Set by the worker once every watched port brought its marker. The
    /// `End` it queues then may wait behind what is queued before it (the
    /// duplication baseline's copies, on a slow state link): this says
    /// the markers came, for the controller's marker timeout.
    pub markers_seen: Arc<AtomicBool>,
    /// Duplication baseline (OpenNF): instead of statelets, copy every
    /// packet received on the watched ports, until their markers, to the
    /// stream (the destination re-processes them, output suppressed). The
    /// snapshot walk still runs.
    pub duplicate: bool,
    /// Back-pressure: changed flows and chunks are queued only while the
    /// gate has room ([`LinkGate::open`]: always). Copied packets of the
    /// duplication baseline are never held back, but count.
    pub gate: Arc<LinkGate>,
}

impl std::fmt::Debug for StreamOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamOut({}, markers {:?}, id {})", self.stage, self.markers, self.id)
    }
}

/// A source stream in progress (the worker's side).
pub(crate) struct Streaming {
    pub stage: usize,
    sink: SyncSender<StreamItem>,
    chunk: usize,
    cursor: usize,
    snapshot_done: bool,
    /// Watched ports whose marker has not arrived yet.
    pub markers_pending: Vec<usize>,
    markers_total: usize,
    pub id: u64,
    /// Flows taken from the NF's change record and not yet sent.
    pending: Vec<PartitionKey>,
    statelets: u64,
    chunks: u64,
    /// Flows sent in change statelets so far.
    flows_sent: u64,
    send_state: bool,
    scope: FlowScope,
    duplicate: bool,
    /// Set when a duplicate could not be queued: the next step fails.
    broken: Option<String>,
    /// Share of the worker's time the stream may take while traffic flows.
    budget: f64,
    started: Instant,
    /// Time spent exporting and queueing so far.
    spent: Duration,
    /// Flows waiting to be sent, published for the migration's controller
    /// (it switches when this is small).
    backlog: Arc<AtomicUsize>,
    /// See [`StreamOut::markers_seen`].
    markers_seen: Arc<AtomicBool>,
    /// The changed flows waiting as of the last step.
    backlog_now: usize,
    /// The last step held the changes back for a switch (see
    /// [`LinkGate::hold_changes_below`]).
    holding: bool,
    gate: Arc<LinkGate>,
    /// Bytes per entry of the statelets made so far (a running mean), to
    /// cut items to the room the gate has.
    entry_bytes: usize,
}

/// Why a stream could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stage `{0}` has no per-flow state to stream (a whole-state or stateless NF moves between batches: export and import)")]
    NotStreamable(String),
    #[error("stage `{0}` is already streaming")]
    Busy(String),
    #[error("marker port {0} does not exist (the worker has {1})")]
    NoPort(usize, usize),
    #[error("port {0} does not feed this stage directly: duplicated packets can only be replayed at the first stage a port leads to")]
    NotFedBy(usize),
    #[error("the duplication baseline's snapshot: {0}")]
    Queue(String),
    #[error("`{0}` makes random choices (a NAT without `port_secret` picks its external ports with a random key): re-processing its packets elsewhere would choose differently; give both instances the same `port_secret`, or move it with statelets or stop-and-copy")]
    NotReplayable(String),
}

impl Streaming {
    pub fn start(
        graph: &mut Graph,
        stage: usize,
        req: StreamOut,
    ) -> Result<Streaming, StreamError> {
        let name = graph.stages()[stage].name().to_string();
        let kind = graph.stages()[stage].spec().name;
        let fs = graph.stages_mut()[stage]
            .nf_mut()
            .flow_stream()
            .ok_or(StreamError::NotStreamable(name))?;
        if req.duplicate && !fs.replays_deterministically() {
            return Err(StreamError::NotReplayable(kind.to_string()));
        }
        fs.record_changes(req.send_state);
        let mut s = Streaming {
            send_state: req.send_state,
            scope: req.scope,
            duplicate: req.duplicate,
            broken: None,
            stage,
            sink: req.sink,
            chunk: req.chunk.max(1),
            cursor: 0,
            snapshot_done: false,
            markers_total: req.markers.len(),
            markers_pending: req.markers,
            id: req.id,
            pending: Vec::new(),
            statelets: 0,
            chunks: 0,
            flows_sent: 0,
            budget: req.budget.clamp(0.01, 1.0),
            started: Instant::now(),
            spent: Duration::ZERO,
            backlog: req.backlog,
            markers_seen: req.markers_seen,
            backlog_now: 0,
            holding: false,
            gate: req.gate,
            entry_bytes: 64,
        };
        if s.duplicate && s.send_state {
            if let Err(e) = s.snapshot_at_once(graph) {
                s.thaw(graph);
                return Err(StreamError::Queue(e));
            }
        }
        Ok(s)
    }

    /// The duplication baseline's snapshot: the whole table (in scope) as
    /// it is now, before any packet is duplicated, so that the copies of
    /// every later packet, replayed on it in order, give the source's
    /// state (OpenNF's export, then the events). The walk of the other
    /// modes spreads over loop turns and sends current values, which the
    /// duplicated packets of a NAT would not reproduce: a replayed new
    /// flow takes its port from what the destination holds at that point.
    /// The worker does nothing else meanwhile (a pause of about a
    /// microsecond per entry).
    fn snapshot_at_once(&mut self, graph: &mut Graph) -> Result<(), String> {
        let Some(fs) = graph.stages_mut()[self.stage].nf_mut().flow_stream() else {
            return Err("the stage's NF has no per-flow state".into());
        };
        let scoped = self.scope != FlowScope::All;
        while let Some(s) = fs.export_from(&mut self.cursor, self.chunk) {
            let item = if scoped {
                let keys: Vec<PartitionKey> =
                    s.keys.into_iter().filter(|k| self.scope.contains(k)).collect();
                if keys.is_empty() {
                    continue;
                }
                StreamItem::Statelet(fs.export_flows(&keys))
            } else {
                StreamItem::Statelet(s)
            };
            self.chunks += 1;
            self.send(item)?;
        }
        self.snapshot_done = true;
        self.send(StreamItem::SnapshotDone { chunks: self.chunks })
    }

    fn send(&self, item: StreamItem) -> Result<(), String> {
        // Counted before it can be taken off the queue (and written).
        let bytes = item.wire_bytes();
        self.gate.add_queued(bytes);
        match self.sink.try_send(item) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.gate.unqueue(bytes);
                Err(match e {
                    TrySendError::Full(_) => "the state stream's queue is full (the state link is slower than the changes)".into(),
                    TrySendError::Disconnected(_) => "the state stream's reader has gone".into(),
                })
            }
        }
    }

    /// Queue changed flows and walk chunks, within the CPU budget and the
    /// room the link's gate has (all that is left when `finish`). Over
    /// budget or without room, nothing is done: the changes stay recorded
    /// in the NF's table, each changed flow once however often it
    /// changes, and are sent later, with their state as it is then (still
    /// correct: a statelet carries the state when it is made).
    fn emit(&mut self, graph: &mut Graph, finish: bool) -> Result<(), String> {
        if !self.send_state {
            return Ok(());
        }
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        let over_budget = |spent: Duration| {
            spent.as_secs_f64() > self.budget * self.started.elapsed().as_secs_f64()
        };
        if !finish && over_budget(self.spent) {
            // The CPU budget, not the link, holds the stream back.
            self.gate.note_app_limited();
            return Ok(());
        }
        let t0 = Instant::now();
        let Some(fs) = graph.stages_mut()[self.stage].nf_mut().flow_stream() else {
            return Err("the stage's NF was replaced by one without per-flow state".into());
        };
        let scoped = self.scope != FlowScope::All;
        let entry_bytes = self.entry_bytes.max(1);
        let least = self.least_room();
        let mut room = if finish { usize::MAX } else { self.usable_room() };
        let waiting = self.pending.len() + fs.changes_waiting();
        self.holding = !finish && !self.duplicate && self.gate.holds(waiting);
        // How many entries fit in the room left (at least one: an item is
        // never cut below one flow, so the stream always moves).
        let fit = |room: usize, chunk: usize| {
            (room.saturating_sub(STATELET_FIXED_BYTES) / entry_bytes).clamp(1, chunk)
        };
        let mut items = Vec::new();
        if (self.pending.is_empty() || finish) && room > 0 && !self.holding {
            fs.take_changes(&mut self.pending);
            if self.duplicate {
                // The packets themselves carry the changes.
                self.pending.clear();
            }
            if scoped {
                let scope = &self.scope;
                self.pending.retain(|k| scope.contains(k));
            }
        }
        // The walk first: a changed flow the walk has not reached yet needs
        // no statelet (its chunk will carry its latest state), and one it
        // has passed needs only its last one, so while the link is busy
        // the changes wait and coalesce. (Changes first, with the gate: at
        // 90 % load the hot flows took every opening of the gate again and
        // again and the walk crawled; docs/migration.md.)
        while !self.snapshot_done && room > 0 && (finish || !over_budget(self.spent + t0.elapsed()))
        {
            let n = if finish { self.chunk } else { fit(room, self.chunk) };
            let item = match fs.export_from(&mut self.cursor, n) {
                Some(s) if scoped => {
                    let keys: Vec<PartitionKey> =
                        s.keys.into_iter().filter(|k| self.scope.contains(k)).collect();
                    if keys.is_empty() {
                        None
                    } else {
                        self.chunks += 1;
                        Some(StreamItem::Statelet(fs.export_flows(&keys)))
                    }
                }
                Some(s) => {
                    self.chunks += 1;
                    let k = s.keys.len();
                    let item = StreamItem::Statelet(s);
                    note_size(&mut self.entry_bytes, &item, k);
                    Some(item)
                }
                None => {
                    self.snapshot_done = true;
                    Some(StreamItem::SnapshotDone { chunks: self.chunks })
                }
            };
            if let Some(item) = item {
                room = room.saturating_sub(item.wire_bytes());
                items.push(item);
            }
            if !finish {
                break;
            }
        }
        // Then changed flows, a slice per turn that fits the room left, all
        // of them at the end.
        while !self.pending.is_empty() && room >= least.max(1) && !self.holding {
            let n = if finish {
                self.pending.len()
            } else {
                fit(room, self.chunk).min(self.pending.len())
            };
            let mut slice = self.pending.split_off(self.pending.len() - n);
            dedup_keys(&mut slice);
            let item = StreamItem::Statelet(fs.export_flows(&slice));
            note_size(&mut self.entry_bytes, &item, slice.len());
            self.flows_sent += slice.len() as u64;
            room = room.saturating_sub(item.wire_bytes());
            items.push(item);
            self.statelets += 1;
            if !finish {
                break;
            }
        }
        if !finish && room >= least.max(1) {
            // Room for another item left unused: nothing (more) to send
            // this turn, or the turn's one chunk was all. The link did not
            // hold the stream back, so its rate says nothing of the path.
            self.gate.note_app_limited();
        }
        self.backlog_now = self.pending.len() + fs.changes_waiting();
        self.backlog.store(self.backlog_now, Ordering::Relaxed);
        for item in items {
            self.send(item)?;
        }
        self.spent += t0.elapsed();
        Ok(())
    }

    /// One step after a loop turn or a tick. Returns `true` when the
    /// stream is over (ended or failed): the caller drops it.
    pub fn step(&mut self, graph: &mut Graph) -> bool {
        let done = self.markers_seen_all();
        if done {
            self.markers_seen.store(true, Ordering::Release);
        }
        let r = self.emit(graph, done).and_then(|()| match done {
            true => self.send(StreamItem::End {
                statelets: self.statelets,
                chunks: self.chunks,
                flows: self.flows_sent,
            }),
            false => Ok(()),
        });
        match r {
            Ok(()) if !done => false,
            Ok(()) => {
                // What moved stays here until the destination's Done (the
                // controller then sends `Command::Forget`): a rollback
                // after the end still finds it.
                self.thaw(graph);
                true
            }
            Err(e) => {
                self.thaw(graph);
                let _ = self.sink.try_send(StreamItem::Failed(e));
                true
            }
        }
    }

    /// True while the snapshot walk has chunks left or changed flows wait
    /// and the link's gate has room for them: the worker keeps turning
    /// instead of sleeping.
    pub fn walking(&self) -> bool {
        self.has_work() && !self.holding && self.usable_room() > 0
    }

    /// True while there is work that waits for room on the link: the
    /// worker should look again soon even without traffic (the gate opens
    /// as the peer acknowledges; nothing wakes the worker for that).
    pub fn waits_for_link(&self) -> bool {
        self.has_work() && !self.holding && self.usable_room() == 0
    }

    /// The least room worth an item: room for [`MIN_ITEM_ENTRIES`]
    /// entries, or a quarter of the bound when the bound is small. (Half
    /// the bound kept the bytes in flight so far below it that the bound
    /// stayed at its floor.)
    fn least_room(&self) -> usize {
        let per_entry = self.entry_bytes.max(1);
        (STATELET_FIXED_BYTES + MIN_ITEM_ENTRIES * per_entry).min(self.gate.bound() / 4)
    }

    /// The gate's room, or 0 while it is less than [`Self::least_room`]:
    /// the worker waits for room for a worthwhile item (the link drains,
    /// so it comes) rather than send one per small opening of the gate.
    fn usable_room(&self) -> usize {
        let room = self.gate.room();
        if room < self.least_room() {
            0
        } else {
            room
        }
    }

    fn has_work(&self) -> bool {
        self.send_state && (!self.snapshot_done || !self.pending.is_empty() || self.backlog_now > 0)
    }

    /// An idle turn: no traffic to protect, so the budget does not apply
    /// to this step (its time is not counted either).
    pub fn idle_step(&mut self, graph: &mut Graph) -> bool {
        let spent = self.spent;
        let budget = self.budget;
        self.budget = 1.0;
        let done = self.step(graph);
        self.budget = budget;
        self.spent = spent;
        done
    }

    fn markers_seen_all(&self) -> bool {
        // A stream without watched ports ends only when stopped.
        self.markers_pending.is_empty() && self.watches_markers()
    }

    fn watches_markers(&self) -> bool {
        self.markers_total > 0
    }

    /// Stop recording (the thaw).
    pub fn thaw(&mut self, graph: &mut Graph) {
        if let Some(fs) = graph.stages_mut()[self.stage].nf_mut().flow_stream() {
            fs.record_changes(false);
        }
    }

    /// Duplication baseline: queue a copy of what port `port` received
    /// (called only while its marker is awaited).
    pub fn duplicate(&mut self, port: usize, batch: &Batch) {
        if !self.duplicate || batch.is_empty() || !self.markers_pending.contains(&port) {
            return;
        }
        let frames = batch.iter().map(|p| p.data().to_vec()).collect();
        if let Err(e) = self.send(StreamItem::Packets { port, frames }) {
            self.broken.get_or_insert(e);
        }
    }

    /// Take the drain markers of this stream out of `batch`, received on
    /// `port`, and note them.
    pub fn strip_markers(&mut self, port: usize, batch: &mut Batch) {
        let id = self.id;
        let mut seen = false;
        batch.retain_mut(|p| match marker_id(p.data()) {
            Some(m) if m == id => {
                seen = true;
                false
            }
            _ => true,
        });
        if seen {
            self.markers_pending.retain(|&p| p != port);
        }
    }
}

/// Keep the running mean of bytes per entry up to date.
fn note_size(entry_bytes: &mut usize, item: &StreamItem, entries: usize) {
    // Per entry, the item's framing left out: counted in, one-entry items
    // looked twice as large per entry and made the next ones smaller still.
    let entries_bytes = item.wire_bytes().saturating_sub(STATELET_FIXED_BYTES).max(1);
    if let Some(per) = entries_bytes.checked_div(entries) {
        *entry_bytes = (*entry_bytes * 3 + per).div_ceil(4);
    }
}

/// Arrivals a destination keeps until the state is installed.
#[derive(Default)]
pub(crate) struct Held {
    /// (port received on, where it goes, the batch), in arrival order.
    pub batches: Vec<(usize, Endpoint, Batch)>,
    pub packets: usize,
    pub peak: usize,
    pub dropped: u64,
}

/// Packets a destination holds at most; beyond, arrivals are dropped and
/// counted.
pub const MAX_HELD_PACKETS: usize = 1 << 20;

impl Held {
    pub fn keep(&mut self, port: usize, to: Endpoint, batch: &mut Batch) {
        let n = batch.len();
        if self.packets + n > MAX_HELD_PACKETS {
            self.dropped += n as u64;
            batch.clear();
            return;
        }
        self.packets += n;
        self.peak = self.peak.max(self.packets);
        self.batches.push((port, to, std::mem::take(batch)));
    }

    /// The held packets as (port, frame), in arrival order.
    pub fn frames(&self) -> Vec<(usize, Vec<u8>)> {
        self.batches
            .iter()
            .flat_map(|(port, _, b)| b.iter().map(move |p| (*port, p.data().to_vec())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::DropOdd;
    use braid_packet::Packet;

    /// Frames `[b; 10]` for each `b`, and `M` for the marker of migration 7.
    fn batch(firsts: &[Option<u8>]) -> Batch {
        firsts
            .iter()
            .map(|b| match b {
                Some(b) => Packet::from_bytes(&[*b; 10]),
                None => Packet::from_bytes(&marker_frame(7)),
            })
            .collect()
    }

    /// What a port got: first bytes, `None` for a marker of migration 7.
    fn seen(b: &Batch) -> Vec<Option<u8>> {
        b.iter()
            .map(|p| match marker_id(p.data()) {
                Some(7) => None,
                Some(other) => panic!("marker of migration {other}"),
                None => Some(p.data()[0]),
            })
            .collect()
    }

    #[test]
    fn a_relayed_marker_passes_a_dropping_nf_behind_what_came_before_it_both_ways() {
        // A stage that drops odd first bytes (and so a marker, 0xff).
        let mut g = Graph::chain(vec![("odd".into(), Box::new(DropOdd) as _)], 2, 0, 1).unwrap();
        let (down, up) = (g.entry(0, 1), g.entry(1, 0));
        let mut out = vec![Batch::new(), Batch::new()];
        let mut relays = Relays::default();
        // Without a relay the NF gets the marker, and drops it.
        relays.push(&mut g, 0, down, &mut batch(&[Some(2), None]), 0, &mut out);
        assert_eq!(seen(&out[1]), [Some(2)]);
        out[1].clear();
        relays.add(MarkerRelay { id: 7, routes: vec![(0, 1), (1, 0)] }, 2).unwrap();
        // Downstream: arrived on port 0, leaves by port 1 between the
        // outputs of the packets before and after it.
        let mut b = batch(&[Some(2), Some(3), Some(4), None, Some(6), Some(5), Some(8)]);
        relays.push(&mut g, 0, down, &mut b, 0, &mut out);
        assert!(b.is_empty());
        assert_eq!(seen(&out[1]), [Some(2), Some(4), None, Some(6), Some(8)]);
        assert!(out[0].is_empty());
        assert_eq!(g.stages()[0].counters().packets_in, 2 + 6, "the marker skipped the NF");
        // Its route retired: a second marker on port 0 is the NF's again.
        out[1].clear();
        relays.push(&mut g, 0, down, &mut batch(&[None, Some(10)]), 0, &mut out);
        assert_eq!(seen(&out[1]), [Some(10)]);
        // Upstream: arrived on port 1, leaves by port 0; then the relay
        // has no route left and is gone.
        relays.push(&mut g, 1, up, &mut batch(&[Some(12), None, Some(14)]), 0, &mut out);
        assert_eq!(seen(&out[0]), [Some(12), None, Some(14)]);
        assert!(relays.is_empty());
    }

    #[test]
    fn only_the_relayed_migration_and_port_pass_and_a_bad_relay_is_refused() {
        let mut g = Graph::chain(vec![("odd".into(), Box::new(DropOdd) as _)], 2, 0, 1).unwrap();
        let (down, up) = (g.entry(0, 1), g.entry(1, 0));
        let mut out = vec![Batch::new(), Batch::new()];
        let mut relays = Relays::default();
        relays.add(MarkerRelay { id: 7, routes: vec![(0, 1)] }, 2).unwrap();
        // Another migration's marker, and ours on a port without a route:
        // the NF's (dropped).
        let mut b: Batch = [Packet::from_bytes(&marker_frame(8)), Packet::from_bytes(&[2; 10])]
            .into_iter()
            .collect();
        relays.push(&mut g, 0, down, &mut b, 0, &mut out);
        relays.push(&mut g, 1, up, &mut batch(&[None]), 0, &mut out);
        assert_eq!(seen(&out[1]), [Some(2)]);
        assert!(out[0].is_empty());
        assert_eq!(relays.first_id(), Some(7));
        for (relay, want) in [
            (MarkerRelay { id: 7, routes: vec![(1, 0)] }, "already relayed"),
            (
                MarkerRelay { id: 9, routes: vec![(0, 2)] },
                "port 2 does not exist (the worker has 2)",
            ),
            (MarkerRelay { id: 9, routes: vec![(0, 1), (0, 0)] }, "port 0 is named twice"),
        ] {
            let e = relays.add(relay, 2).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        relays.remove(7);
        assert!(relays.is_empty());
    }
}
