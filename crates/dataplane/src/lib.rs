//! braid's dataplane: the [`Worker`], the only packet loop in braid.
//!
//! - [`graph`]: NF stages with gates and the links between them; a batch
//!   runs through it to completion, counted at every call edge.
//! - [`worker`]: one per thread: ports, the graph, the idle policy, ticks,
//!   scheduling, heartbeat, backpressure, and the control mailbox.
//! - [`control`]: commands to a running worker (counters, pause, resume,
//!   drain, export/import state, reroute, add a port, reconfigure, stop)
//!   and the [`WorkerHandle`] that sends them.
//! - [`telemetry`]: per-stage, per-port and per-loop counters written by
//!   the worker thread and read anywhere without locks.
//! - [`sched`]: CPU affinity and scheduling policy of a worker thread.
//! - [`adapt`]: the adaptive mode, a feedback loop that sets a worker's
//!   batch size and idle policy from its own counters.
//! - [`tap`]: captures of the packets entering, leaving or dropped by a
//!   stage of a running worker (`braid capture`), written as pcapng.
//! - [`heartbeat`]: beats to a supervising process.
//! - [`migration`]: live migration on a running worker: streaming a
//!   stage's state out, holding arrivals and installing state, drain
//!   markers.
//! - [`os`]: a thread's OS counters (CPU time, run-queue wait, context
//!   switches, migrations, page faults), sampled by every worker as its
//!   loop starts and ends.
//!
//! `docs/architecture.md` shows where this sits: it uses `braid-packet`,
//! `braid-nf` and `braid-io`; `braid-runtime`, `braid-testbed` and the CLI
//! build workers from plans.
#![deny(unsafe_code)]

/// Built with the `telemetry` feature: stage call-edge times are measured
/// (without it `busy_ns` stays 0 and must not be shown as measured).
pub const TELEMETRY: bool = cfg!(feature = "telemetry");

pub mod adapt;
pub mod control;
pub mod graph;
pub mod heartbeat;
pub mod migration;
#[allow(unsafe_code)] // getrusage(RUSAGE_THREAD), clock_gettime of a thread's CPU clock
pub mod os;
pub mod sched;
pub mod tap;
pub mod telemetry;
pub mod worker;

pub use adapt::{AdaptConfig, Adaptation, Adapter};
pub use control::{Command, ControlError, Output, Reply, SchedChange, WorkerHandle};
pub use graph::{Endpoint, Graph, GraphError, NamedNfs, Stage};
pub use heartbeat::Heartbeat;
pub use os::{OsStatsError, ThreadOs};
pub use sched::{Sched, SchedError, SchedPolicy};
pub use tap::{CaptureRequest, CaptureSession, CaptureSummary, Point};
pub use telemetry::{StageSnapshot, WorkerOs, WorkerSnapshot, WorkerTelemetry, WorkerWatch};
pub use worker::{GraphRef, Idle, Worker, WorkerConfig, WorkerError, WorkerReport};

/// A word that is not one of the accepted ones (an idle policy, a capture
/// point).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} `{given}`: expected {expected}")]
pub struct UnknownWord {
    pub what: &'static str,
    pub given: String,
    pub expected: &'static str,
}
