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
use braid_nf::{NfState, Params, StateError};

use crate::graph::{Endpoint, GraphError};
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
    /// brings nothing, flush the outputs, then pause. Answers
    /// [`Reply::Drained`] with the number of packets processed.
    Drain,
    /// The whole state of the stage named `stage` (None: stateless NF).
    ExportState { stage: String },
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
    /// Install a capture tap on stage `stage` ([`crate::tap`]).
    Tap { stage: String, tap: Tap },
    /// Remove the tap with identity `id` from stage `stage` (`Done` also
    /// if it already removed itself).
    Untap { stage: String, id: u64 },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Counters => f.write_str("Counters"),
            Command::Pause => f.write_str("Pause"),
            Command::Resume => f.write_str("Resume"),
            Command::Drain => f.write_str("Drain"),
            Command::ExportState { stage } => write!(f, "ExportState({stage})"),
            Command::ImportState { stage, state } => {
                write!(f, "ImportState({stage}, {} {} bytes)", state.kind, state.data.len())
            }
            Command::Reroute { stage, output, to } => {
                write!(f, "Reroute({stage}, {output:?} -> {to})")
            }
            Command::AddPort { port, rx_to } => write!(f, "AddPort({}, {rx_to:?})", port.name()),
            Command::Reconfigure { stage, .. } => write!(f, "Reconfigure({stage})"),
            Command::Stop => f.write_str("Stop"),
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
    Drained { packets: u64 },
    State(Option<NfState>),
    Port(usize),
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
    #[error("worker `{0}` has stopped")]
    Gone(String),
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
