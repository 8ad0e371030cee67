//! The control mailbox of a running worker.
//!
//! A [`WorkerHandle`] sends a [`Command`] and waits for its answer. The
//! worker drains its mailbox between batches, never in the middle of one:
//! the packet path only reads one flag per loop turn. A worker sleeping in
//! `poll(2)` is woken through a socket pair whose read end is part of its
//! poll set. Every command gets an answer or a [`ControlError`]; a command
//! that cannot be applied changes nothing.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use braid_io::Port;
use braid_nf::{NfState, Params, StateError, Statelet};

use crate::graph::{Endpoint, GraphError};
use crate::migration::{MarkerRelay, StreamOut};
use crate::tap::Tap;
use crate::telemetry::{WorkerSnapshot, WorkerTelemetry};

/// Which output is rerouted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Output gate `gate` of the stage named in [`Command::Reroute`]'s
    /// `stage`.
    Gate(u16),
    /// What arrives on the worker's port number `port`.
    PortRx(usize),
}

/// What a worker can be asked between batches.
pub enum Command {
    /// Exact counters, published first (the lock-free
    /// [`WorkerHandle::snapshot`] may be up to one tick old for drops and
    /// ports).
    Counters,
    /// Stop receiving; packets wait in the input rings/queues. Ticks and
    /// the mailbox go on.
    Pause,
    /// Receive again.
    Resume,
    /// Receive and process everything waiting on the inputs until a round
    /// brings nothing (at most [`crate::worker::DRAIN_ROUNDS`] rounds),
    /// flush the outputs, then pause. Answers [`Reply::Drained`] with the
    /// number of packets processed.
    Drain,
    /// The whole state of the stage named `stage` (None: stateless NF).
    ExportState { stage: String },
    /// The whole state of stage `stage` in the compact binary encoding
    /// (what a stop-and-copy migration sends).
    ExportBinary { stage: String },
    /// Replace the state of stage `stage` with `state`.
    ImportState { stage: String, state: NfState },
    /// Send what leaves `output` to `to` from now on. For
    /// [`Output::Gate`], `stage` names the stage; ignored for
    /// [`Output::PortRx`].
    Reroute { stage: String, output: Output, to: Endpoint },
    /// Add a port to the worker; what it receives goes to `rx_to` (None:
    /// transmit only). Answers [`Reply::Port`] with its number.
    AddPort { port: Box<dyn Port>, rx_to: Option<Endpoint> },
    /// Build a new instance of stage `stage`'s NF kind with `params`, move
    /// the state over, and put it in place. Refused (nothing changes) if
    /// the parameters are invalid or the state does not fit the new one.
    Reconfigure { stage: String, params: Params },
    /// Take what already waits on the inputs (a bounded number of
    /// rounds), answer, then give the NFs a last tick, flush and leave the
    /// loop; the worker's `run` returns.
    Stop,
    /// Live migration, source: start streaming a stage's per-flow state
    /// while it keeps processing (see [`crate::migration`]).
    StreamOut(StreamOut),
    /// Live migration, source: stop the stream of stage `stage` (the
    /// rollback's thaw); the stage keeps its state and keeps running.
    StreamStop { stage: String },
    /// Live migration, destination: install statelets into stage `stage`,
    /// in order. Answers [`Reply::Installed`]. On error the statelets
    /// before the refused one stay installed (the migration is then
    /// abandoned and the destination's state discarded).
    Install { stage: String, statelets: Vec<Statelet> },
    /// Live migration: drop the flows of stage `stage` in `scope` (a
    /// tombstone for every held key in it; [`braid_nf::FlowScope::All`]:
    /// every flow). The source after the destination's Done (what moved
    /// is the destination's now), the destination when a merge fails (what
    /// it installed goes). Answers [`Reply::Installed`] with the number of
    /// flows dropped.
    Forget { stage: String, scope: braid_nf::FlowScope },
    /// Live migration, destination, duplication baseline: process copies of
    /// packets the source received, as (port, frame), through stage
    /// `stage` as if they had arrived on those ports, output suppressed:
    /// only their effect on the state matters.
    Replay { stage: String, frames: Vec<(usize, Vec<u8>)> },
    /// Live migration, destination: the last statelet is in; rebuild and
    /// check derived state ([`braid_nf::FlowStream::finish_install`]).
    FinishInstall { stage: String },
    /// Live migration, destination: `true` keeps what arrives, in order,
    /// instead of processing it; `false` processes what was kept, then
    /// goes on as usual. Answers [`Reply::Held`].
    Hold(bool),
    /// Live migration, destination (rollback, once the traffic is back on
    /// the source): receive what still waits on the inputs into the hold,
    /// stop holding and hand everything held over, as (port, frame) in
    /// arrival order, so the source can process it. Answers
    /// [`Reply::Frames`].
    TakeHeld,
    /// Live migration, source (rollback): process `frames` as if each had
    /// just arrived on its port, in order. With `readdress`, each frame
    /// first gets the Ethernet addresses of the last unicast frame that
    /// arrived on its port (frames the destination held came by another
    /// path, addressed to its next hop: the neighbours of this path would
    /// drop them).
    Inject { frames: Vec<(usize, Vec<u8>)>, readdress: bool },
    /// Live migration, source, on a worker between a chain port and the
    /// migrating NF's worker: pass the drain markers of a migration on
    /// ([`crate::migration::MarkerRelay`]). Refused while the worker holds
    /// its arrivals.
    Relay(MarkerRelay),
    /// Stop passing on migration `id`'s markers (`Done` also when its
    /// relay already retired).
    Unrelay { id: u64 },
    /// Change how the worker runs from its next turn on: scheduling of its
    /// thread, batch size, idle policy, adaptive mode (each `None`:
    /// unchanged). Everything is checked first; refused, nothing changes.
    SetSched(SchedChange),
    /// Install a capture tap on stage `stage` ([`crate::tap`]).
    Tap { stage: String, tap: Tap },
    /// Remove the tap with identity `id` from stage `stage` (`Done` also
    /// if it already removed itself).
    Untap { stage: String, id: u64 },
}

/// What [`Command::SetSched`] changes; `None` leaves a setting as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchedChange {
    /// The thread's CPUs, policy and nice, all of them (an empty CPU list:
    /// every CPU; no nice: 0).
    pub sched: Option<crate::sched::Sched>,
    pub batch_size: Option<usize>,
    pub idle: Option<crate::worker::Idle>,
    /// `Some(Some(cfg))`: adaptive mode on (or with new bounds), starting
    /// from the batch size and idle policy after this change;
    /// `Some(None)`: off (the settings stay where the controller left
    /// them unless given here).
    pub adapt: Option<Option<crate::adapt::AdaptConfig>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Counters => f.write_str("Counters"),
            Command::Pause => f.write_str("Pause"),
            Command::Resume => f.write_str("Resume"),
            Command::Drain => f.write_str("Drain"),
            Command::ExportState { stage } => write!(f, "ExportState({stage})"),
            Command::ExportBinary { stage } => write!(f, "ExportBinary({stage})"),
            Command::ImportState { stage, state } => {
                write!(f, "ImportState({stage}, {} {} bytes)", state.kind, state.data.len())
            }
            Command::Reroute { stage, output, to } => {
                write!(f, "Reroute({stage}, {output:?} -> {to})")
            }
            Command::AddPort { port, rx_to } => write!(f, "AddPort({}, {rx_to:?})", port.name()),
            Command::Reconfigure { stage, .. } => write!(f, "Reconfigure({stage})"),
            Command::Stop => f.write_str("Stop"),
            Command::StreamOut(s) => write!(f, "{s:?}"),
            Command::StreamStop { stage } => write!(f, "StreamStop({stage})"),
            Command::Install { stage, statelets } => {
                write!(f, "Install({stage}, {} statelets)", statelets.len())
            }
            Command::FinishInstall { stage } => write!(f, "FinishInstall({stage})"),
            Command::Forget { stage, .. } => write!(f, "Forget({stage})"),
            Command::Replay { stage, frames } => {
                write!(f, "Replay({stage}, {} frames)", frames.len())
            }
            Command::Hold(on) => write!(f, "Hold({on})"),
            Command::TakeHeld => f.write_str("TakeHeld"),
            Command::Inject { frames, readdress } => {
                write!(f, "Inject({} frames, readdress {readdress})", frames.len())
            }
            Command::Relay(r) => write!(f, "Relay({}, {:?})", r.id, r.routes),
            Command::Unrelay { id } => write!(f, "Unrelay({id})"),
            Command::SetSched(c) => write!(f, "SetSched({c:?})"),
            Command::Tap { stage, tap } => write!(f, "Tap({stage}, {})", tap.id()),
            Command::Untap { stage, id } => write!(f, "Untap({stage}, {id})"),
        }
    }
}

/// The answer to a [`Command`].
#[derive(Debug)]
pub enum Reply {
    Done,
    Counters(WorkerSnapshot),
    Drained {
        packets: u64,
    },
    State(Option<NfState>),
    Port(usize),
    /// Statelets installed.
    Installed(usize),
    /// After [`Command::Hold`]: packets held now (0 after a release), the
    /// most held at once, and arrivals dropped because the hold was full.
    Held {
        held: usize,
        peak: usize,
        dropped: u64,
    },
    /// (port, frame) pairs.
    Frames(Vec<(usize, Vec<u8>)>),
}

/// Why a command was refused or got no answer. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("stage `{stage}`: {source}")]
    State {
        stage: String,
        #[source]
        source: StateError,
    },
    #[error("stage `{stage}`: {source}")]
    Build {
        stage: String,
        #[source]
        source: braid_nf::registry::BuildError,
    },
    #[error(
        "stage `{stage}`: the new `{kind}` instance does not take the running state: {source}"
    )]
    StateDoesNotFit {
        stage: String,
        kind: &'static str,
        #[source]
        source: StateError,
    },
    #[error("stage `{stage}`: {source}")]
    Stream {
        stage: String,
        #[source]
        source: crate::migration::StreamError,
    },
    #[error("worker `{worker}`: {source}")]
    Relay {
        worker: String,
        #[source]
        source: crate::migration::RelayError,
    },
    #[error("worker `{0}` has stopped")]
    Gone(String),
    #[error("worker `{worker}`: {source}")]
    Sched {
        worker: String,
        #[source]
        source: crate::sched::SchedError,
    },
    #[error("worker `{worker}`: batch size {size} is out of range 1..={max}")]
    BatchSize { worker: String, size: usize, max: usize },
    #[error("worker `{worker}`: {source}")]
    Adapt {
        worker: String,
        #[source]
        source: crate::adapt::AdaptError,
    },
    #[error("worker `{worker}` did not answer {command} within {timeout:?}")]
    Timeout { worker: String, command: String, timeout: Duration },
    #[error("unexpected answer to {0}")]
    Unexpected(String),
}

pub(crate) struct Envelope {
    pub command: Command,
    pub reply: SyncSender<Result<Reply, ControlError>>,
}

/// The worker's side: commands waiting, a flag that says so, the wake-up
/// socket it polls.
pub(crate) struct Mailbox {
    pub rx: Receiver<Envelope>,
    pub pending: Arc<AtomicBool>,
    pub wake: UnixDatagram,
}

impl Mailbox {
    /// True when a command may be waiting (one relaxed load).
    #[inline]
    pub fn has_mail(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// The next command, if any.
    pub fn next(&self) -> Option<Envelope> {
        self.pending.store(false, Ordering::Relaxed);
        let mut buf = [0u8; 64];
        while self.wake.recv(&mut buf).is_ok() {}
        match self.rx.try_recv() {
            Ok(e) => {
                // More may follow: look again next turn.
                self.pending.store(true, Ordering::Relaxed);
                Some(e)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// Wait up to `timeout` for a command (while paused).
    pub fn wait(&self, timeout: Duration) -> Option<Envelope> {
        self.rx.recv_timeout(timeout).ok()
    }
}

/// The outside's handle on a worker: send commands, read telemetry.
/// Cheap to clone; `Send` and `Sync`.
#[derive(Clone)]
pub struct WorkerHandle {
    name: String,
    tx: Sender<Envelope>,
    pending: Arc<AtomicBool>,
    wake: Arc<UnixDatagram>,
    telemetry: Arc<WorkerTelemetry>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle").field("name", &self.name).finish()
    }
}

/// A fresh mailbox and its handle.
pub(crate) fn mailbox(
    name: &str,
    telemetry: Arc<WorkerTelemetry>,
) -> std::io::Result<(Mailbox, WorkerHandle)> {
    let (tx, rx) = mpsc::channel();
    let (a, b) = UnixDatagram::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let pending = Arc::new(AtomicBool::new(false));
    Ok((
        Mailbox { rx, pending: pending.clone(), wake: a },
        WorkerHandle { name: name.to_string(), tx, pending, wake: Arc::new(b), telemetry },
    ))
}

/// How long [`WorkerHandle`]'s convenience calls wait for an answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl WorkerHandle {
    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counters as last published, read without locks and without
    /// disturbing the worker.
    pub fn snapshot(&self) -> WorkerSnapshot {
        self.telemetry.snapshot()
    }

    /// The shared telemetry record itself.
    pub fn telemetry(&self) -> Arc<WorkerTelemetry> {
        self.telemetry.clone()
    }

    /// Send `command` and wait up to `timeout` for the answer.
    pub fn request(&self, command: Command, timeout: Duration) -> Result<Reply, ControlError> {
        let what = format!("{command:?}");
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx
            .send(Envelope { command, reply })
            .map_err(|_| ControlError::Gone(self.name.clone()))?;
        self.pending.store(true, Ordering::Release);
        // Wake a worker sleeping in poll(2); a full socket buffer means
        // wake-ups are already queued.
        let _ = self.wake.send(&[1]);
        match answer.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(ControlError::Timeout { worker: self.name.clone(), command: what, timeout })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ControlError::Gone(self.name.clone())),
        }
    }

    fn done(&self, command: Command) -> Result<(), ControlError> {
        let what = format!("{command:?}");
        match self.request(command, DEFAULT_TIMEOUT)? {
            Reply::Done => Ok(()),
            _ => Err(ControlError::Unexpected(what)),
        }
    }

    /// Exact counters (asks the worker).
    pub fn counters(&self) -> Result<WorkerSnapshot, ControlError> {
        match self.request(Command::Counters, DEFAULT_TIMEOUT)? {
            Reply::Counters(s) => Ok(s),
            _ => Err(ControlError::Unexpected("Counters".into())),
        }
    }

    pub fn pause(&self) -> Result<(), ControlError> {
        self.done(Command::Pause)
    }

    pub fn resume(&self) -> Result<(), ControlError> {
        self.done(Command::Resume)
    }

    /// Process what waits on the inputs, flush, pause; the packets
    /// processed.
    pub fn drain(&self) -> Result<u64, ControlError> {
        match self.request(Command::Drain, DEFAULT_TIMEOUT)? {
            Reply::Drained { packets } => Ok(packets),
            _ => Err(ControlError::Unexpected("Drain".into())),
        }
    }

    pub fn export_state(&self, stage: &str) -> Result<Option<NfState>, ControlError> {
        match self.request(Command::ExportState { stage: stage.into() }, DEFAULT_TIMEOUT)? {
            Reply::State(s) => Ok(s),
            _ => Err(ControlError::Unexpected("ExportState".into())),
        }
    }

    /// The whole state in the binary encoding (None: stateless).
    pub fn export_binary(&self, stage: &str) -> Result<Option<NfState>, ControlError> {
        match self.request(Command::ExportBinary { stage: stage.into() }, DEFAULT_TIMEOUT)? {
            Reply::State(s) => Ok(s),
            _ => Err(ControlError::Unexpected("ExportBinary".into())),
        }
    }

    pub fn import_state(&self, stage: &str, state: NfState) -> Result<(), ControlError> {
        self.done(Command::ImportState { stage: stage.into(), state })
    }

    pub fn reroute(&self, stage: &str, output: Output, to: Endpoint) -> Result<(), ControlError> {
        self.done(Command::Reroute { stage: stage.into(), output, to })
    }

    pub fn add_port(
        &self,
        port: Box<dyn Port>,
        rx_to: Option<Endpoint>,
    ) -> Result<usize, ControlError> {
        match self.request(Command::AddPort { port, rx_to }, DEFAULT_TIMEOUT)? {
            Reply::Port(i) => Ok(i),
            _ => Err(ControlError::Unexpected("AddPort".into())),
        }
    }

    pub fn reconfigure(&self, stage: &str, params: Params) -> Result<(), ControlError> {
        self.done(Command::Reconfigure { stage: stage.into(), params })
    }

    /// Start streaming a stage's state (live migration, source).
    pub fn stream_out(&self, req: StreamOut) -> Result<(), ControlError> {
        self.done(Command::StreamOut(req))
    }

    /// Stop a stage's stream; it keeps running with its state.
    pub fn stream_stop(&self, stage: &str) -> Result<(), ControlError> {
        self.done(Command::StreamStop { stage: stage.into() })
    }

    /// Install statelets into a stage, in order (live migration,
    /// destination).
    pub fn install(&self, stage: &str, statelets: Vec<Statelet>) -> Result<usize, ControlError> {
        let cmd = Command::Install { stage: stage.into(), statelets };
        match self.request(cmd, DEFAULT_TIMEOUT)? {
            Reply::Installed(n) => Ok(n),
            _ => Err(ControlError::Unexpected("Install".into())),
        }
    }

    /// Process copies of the source's packets through a stage, output
    /// suppressed (duplication baseline).
    pub fn replay(&self, stage: &str, frames: Vec<(usize, Vec<u8>)>) -> Result<(), ControlError> {
        self.done(Command::Replay { stage: stage.into(), frames })
    }

    pub fn finish_install(&self, stage: &str) -> Result<(), ControlError> {
        self.done(Command::FinishInstall { stage: stage.into() })
    }

    /// Drop the flows of `stage` in `scope` ([`Command::Forget`]); how many
    /// were dropped.
    pub fn forget(&self, stage: &str, scope: braid_nf::FlowScope) -> Result<usize, ControlError> {
        match self.request(Command::Forget { stage: stage.into(), scope }, DEFAULT_TIMEOUT)? {
            Reply::Installed(n) => Ok(n),
            _ => Err(ControlError::Unexpected("Forget".into())),
        }
    }

    /// Hold arrivals (`true`) or process what was held and go on
    /// (`false`). Returns (held now, peak held, dropped).
    pub fn hold(&self, on: bool) -> Result<(usize, usize, u64), ControlError> {
        match self.request(Command::Hold(on), DEFAULT_TIMEOUT)? {
            Reply::Held { held, peak, dropped } => Ok((held, peak, dropped)),
            _ => Err(ControlError::Unexpected("Hold".into())),
        }
    }

    /// Stop holding and take what was held, as (port, frame) in arrival
    /// order (a rolled-back destination).
    pub fn take_held(&self) -> Result<Vec<(usize, Vec<u8>)>, ControlError> {
        match self.request(Command::TakeHeld, DEFAULT_TIMEOUT)? {
            Reply::Frames(f) => Ok(f),
            _ => Err(ControlError::Unexpected("TakeHeld".into())),
        }
    }

    /// Process `frames` as if each had arrived on its port, as they are.
    pub fn inject(&self, frames: Vec<(usize, Vec<u8>)>) -> Result<(), ControlError> {
        self.done(Command::Inject { frames, readdress: false })
    }

    /// Process `frames` as if each had arrived on its port, with the
    /// Ethernet addresses of that port's last unicast arrival (a
    /// rolled-back source taking back what the destination held:
    /// [`Command::Inject`]).
    pub fn inject_readdressed(&self, frames: Vec<(usize, Vec<u8>)>) -> Result<(), ControlError> {
        self.done(Command::Inject { frames, readdress: true })
    }

    /// Pass the drain markers of a migration on ([`Command::Relay`]).
    pub fn relay(&self, relay: MarkerRelay) -> Result<(), ControlError> {
        self.done(Command::Relay(relay))
    }

    /// Stop passing on migration `id`'s markers ([`Command::Unrelay`]).
    pub fn unrelay(&self, id: u64) -> Result<(), ControlError> {
        self.done(Command::Unrelay { id })
    }

    /// Change the worker's scheduling, batch size, idle policy or adaptive
    /// mode while it runs ([`Command::SetSched`]).
    pub fn set_sched(&self, change: SchedChange) -> Result<(), ControlError> {
        self.done(Command::SetSched(change))
    }

    /// Install capture tap `tap` on stage `stage` (see [`crate::tap`]).
    pub fn tap(&self, stage: &str, tap: Tap) -> Result<(), ControlError> {
        self.done(Command::Tap { stage: stage.into(), tap })
    }

    /// Remove tap `id` from stage `stage`.
    pub fn untap(&self, stage: &str, id: u64) -> Result<(), ControlError> {
        self.done(Command::Untap { stage: stage.into(), id })
    }

    /// Ask the worker to stop; `Ok` also if it already has.
    pub fn stop(&self) -> Result<(), ControlError> {
        match self.done(Command::Stop) {
            Err(ControlError::Gone(_)) => Ok(()),
            r => r,
        }
    }
}
