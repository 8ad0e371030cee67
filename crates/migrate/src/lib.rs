//! Live migration of an NF's state from one running Worker to another,
//! on the same host or across hosts, without losing, duplicating or
//! reordering a packet (SliM, seed `003` chapter 4).
//!
//! - [`wire`]: the protocol's frames (preamble, version, CRC per frame)
//!   and messages.
//! - [`source`]: the source's side: streams the stage's state out of its
//!   running worker, asks the controller to switch the traffic when the
//!   destination is ready, ends after the drain markers, rolls back on
//!   any failure.
//! - [`destination`]: the destination's side: holds arrivals, installs
//!   the state in order, asks for the switchover, releases what it held.
//!
//! `docs/migration.md` has the protocol (messages, states, timeouts),
//! the failure cases and what was measured.

#![forbid(unsafe_code)]

pub mod destination;
pub mod source;
pub mod wire;

use std::time::Duration;

pub use destination::{migrate_in, DestinationOptions, DestinationReport};
pub use source::{migrate_out, Phase, Progress, SourceOptions, SourceReport, Switch, SwitchError};
pub use wire::{FrameReader, Message, Mode, WireError};

/// Why a migration failed. Whatever the cause, the source keeps serving
/// with its state, and the destination's partial state is discarded.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("worker: {0}")]
    Control(#[from] braid_dataplane::ControlError),
    #[error("the destination refused the migration: {0}")]
    Refused(String),
    #[error("the peer abandoned the migration: {0}")]
    PeerAborted(String),
    #[error("protocol: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("the source's state stream failed: {0}")]
    Stream(String),
    #[error("switching the traffic failed: {0}")]
    Switch(#[from] SwitchError),
    #[error("migration options: {0}")]
    Options(String),
    /// Any of the above after the switch: the traffic went back to the
    /// source, with what the destination had held meanwhile.
    #[error("{cause} (rolled back: traffic is back on the source; {returned} held packets returned{})", if *.lost { ", the destination's held packets are lost" } else { "" })]
    RolledBack {
        cause: Box<MigrateError>,
        returned: usize,
        /// The destination never returned what it held (it died).
        lost: bool,
    },
}

impl MigrateError {
    /// The error of a socket read that hit its timeout, named after what
    /// was awaited.
    pub(crate) fn from_read(e: WireError, what: &str, after: Duration) -> MigrateError {
        match e {
            e if e.is_timeout() => MigrateError::Timeout { what: what.to_string(), after },
            other => MigrateError::Wire(other),
        }
    }
}
