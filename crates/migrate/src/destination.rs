//! The destination's side of a migration (see `docs/migration.md`).
//!
//! States: `Hello` (read; check kind and mode; Accept) →
//! `Installing` (snapshot chunks and statelets installed in order while
//! the stage keeps processing what it gets, its own flows in a merge; once
//! the snapshot is in and nothing waits unread, hold arrivals and send
//! SwitchRequest) →
//! `Switched` (the traffic arrives and is held; statelets keep coming) →
//! `End` (the last statelet installed, derived state rebuilt, what was
//! held processed in arrival order, Done sent). Any failure: Abort sent
//! when the link still works, the flows installed dropped again (after a
//! stop-and-copy import or a replay: the state from before put back),
//! what was held returned to the source, the error returned.

use braid_io::tcp::QuickAckStream;
use std::io::BufWriter;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_dataplane::WorkerHandle;
use std::collections::HashSet;

use braid_nf::{FlowScope, PartitionKey, Statelet};

use crate::wire::{self, Direction, FrameReader, FrameWriter, Message, Mode, Seal, StreamKey};
use crate::MigrateError;

/// How the destination runs a migration.
#[derive(Clone, Debug)]
pub struct DestinationOptions {
    /// How long any one message of the source may take.
    pub io_timeout: Duration,
    /// Statelets installed per control command at most (one command is
    /// one pause between two of the worker's batches).
    pub install_batch: usize,
    /// The key the source seals its frames with (see
    /// `SourceOptions::stream_key`); None: frames carry a CRC only.
    pub stream_key: Option<Arc<StreamKey>>,
}

impl Default for DestinationOptions {
    fn default() -> Self {
        DestinationOptions {
            io_timeout: Duration::from_secs(5),
            install_batch: 256,
            stream_key: None,
        }
    }
}

/// What a finished migration did, seen from the destination.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DestinationReport {
    pub mode: String,
    /// Statelets (chunks and changes) installed.
    pub installed: u64,
    /// Duplicated packets re-processed (duplication baseline).
    pub replayed: u64,
    pub bytes: u64,
    /// Most packets held at once, and dropped because the hold was full.
    pub peak_held: u64,
    pub dropped_held: u64,
    /// From Hello to the snapshot being in, and to Done.
    pub snapshot_in: Duration,
    pub total: Duration,
}

/// Take the migration offered on `conn` into stage `stage` (NF kind
/// `kind`) of the worker behind `handle`.
pub fn migrate_in(
    handle: &WorkerHandle,
    stage: &str,
    kind: &str,
    conn: TcpStream,
    opts: &DestinationOptions,
) -> Result<DestinationReport, MigrateError> {
    let start = Instant::now();
    let prior = handle.export_state(stage)?;
    let write_half = conn.try_clone().map_err(wire::WireError::Io)?;
    conn.set_read_timeout(Some(opts.io_timeout)).map_err(wire::WireError::Io)?;
    write_half.set_write_timeout(Some(opts.io_timeout)).map_err(wire::WireError::Io)?;
    let _ = conn.set_nodelay(true);
    let seal = |direction| opts.stream_key.clone().map(|key| Seal { key, direction });
    let mut w = FrameWriter::new(BufWriter::new(write_half), seal(Direction::ToSource));
    // Acknowledge at once: the source's back-pressure reads delayed
    // acknowledgements as a queue on the path (`QuickAckStream`).
    let mut r = FrameReader::sealed(QuickAckStream(conn), seal(Direction::ToDestination));
    let mut run = Run {
        handle,
        stage,
        opts,
        holding: false,
        switched: false,
        report: DestinationReport::default(),
        installed_keys: HashSet::new(),
        whole: false,
        replayed: false,
    };
    match run.go(kind, &mut r, &mut w, start) {
        Ok(()) => {
            run.report.total = start.elapsed();
            Ok(run.report)
        }
        Err(e) => {
            // Put the stage back as it was: drop what was installed (its
            // own flows, which it kept serving, stay as they are now);
            // after a whole import or a replay, the state from before.
            if run.whole || run.replayed {
                if let Some(state) = prior {
                    let _ = handle.import_state(stage, state);
                }
            } else if !run.installed_keys.is_empty() {
                let keys = std::mem::take(&mut run.installed_keys);
                let _ = handle.forget(stage, FlowScope::Keys(keys));
            }
            if !matches!(e, MigrateError::PeerAborted(_)) {
                let abort = Message::Abort { reason: e.to_string() };
                let _ = w.write_message(&abort);
                let _ = w.flush();
                // After the switch, wait until the source has the traffic
                // back (its Abort says so) before handing over what is
                // held: nothing may arrive here after that.
                if run.switched {
                    wait_for_abort(&mut r, opts.io_timeout);
                }
            }
            // After the switch, what was held goes back to the source,
            // which processes it, in order, before anything newer. Before
            // it (no `Switched` came: the source did not move the traffic
            // and waits for nothing), what was held is this stage's own
            // traffic (a merge): processed here, in order.
            let held = match (run.holding, run.switched) {
                (true, true) => handle.take_held().unwrap_or_default(),
                (true, false) => {
                    let _ = handle.hold(false);
                    vec![]
                }
                (false, _) => vec![],
            };
            let packets = held.into_iter().map(|(p, f)| (p as u16, f)).collect();
            let _ = w.write_message(&Message::Returned { packets });
            let _ = w.flush();
            Err(e)
        }
    }
}

/// Read until the peer's Abort (or an error, or `timeout`).
fn wait_for_abort(r: &mut FrameReader<QuickAckStream>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        // A timeout mid-frame keeps the part read: the next try goes on.
        match r.read_message() {
            Ok(Message::Abort { .. }) => return,
            Ok(_) => continue,
            Err(e) if e.is_timeout() => continue,
            Err(_) => return,
        }
    }
}

struct Run<'a> {
    handle: &'a WorkerHandle,
    stage: &'a str,
    opts: &'a DestinationOptions,
    holding: bool,
    /// The source said the traffic now comes here.
    switched: bool,
    report: DestinationReport,
    /// Every flow a statelet set here (dropped again on failure).
    installed_keys: HashSet<PartitionKey>,
    /// A whole state was imported, or packets replayed: a failure puts
    /// back the state from before instead.
    whole: bool,
    replayed: bool,
}

impl Run<'_> {
    fn go(
        &mut self,
        kind: &str,
        r: &mut FrameReader<QuickAckStream>,
        w: &mut FrameWriter<BufWriter<TcpStream>>,
        start: Instant,
    ) -> Result<(), MigrateError> {
        let timeout = self.opts.io_timeout;
        w.write_preamble()?;
        r.read_preamble().map_err(|e| MigrateError::from_read(e, "the source", timeout))?;
        let hello = r
            .read_message()
            .map_err(|e| MigrateError::from_read(e, "the source's Hello", timeout))?;
        let Message::Hello { kind: their_kind, mode, .. } = hello else {
            return Err(MigrateError::Unexpected { expected: "Hello", got: hello.name() });
        };
        if their_kind != kind {
            let reason = format!(
                "stage `{}` here is a `{kind}` NF, the source's is `{their_kind}`",
                self.stage
            );
            w.write_message(&Message::Refuse { reason: reason.clone() })?;
            w.flush().map_err(wire::WireError::Io)?;
            return Err(MigrateError::Refused(reason));
        }
        self.report.mode = mode.to_string();
        w.write_message(&Message::Accept)?;
        if mode == Mode::StopCopy {
            // Nothing streams first: switch at once.
            self.hold()?;
            w.write_message(&Message::SwitchRequest { installed: 0 })?;
        }
        w.flush().map_err(wire::WireError::Io)?;

        let mut pending: Vec<Statelet> = Vec::new();
        let mut snapshot_done = false;
        let mut asked = mode == Mode::StopCopy;
        loop {
            let m = r
                .read_message()
                .map_err(|e| MigrateError::from_read(e, "the source's state stream", timeout))?;
            match m {
                Message::Statelet(compact) => {
                    // Its entries decode and name their flows, or the
                    // stream is refused here, before anything of it is
                    // installed.
                    let frame = r.counts().frames - 1;
                    let s = compact
                        .expand()
                        .map_err(|error| wire::WireError::Statelet { frame, error })?;
                    pending.push(s);
                    // Install when a batch is full or nothing more waits.
                    if pending.len() >= self.opts.install_batch || r.buffered() == 0 {
                        self.install(&mut pending)?;
                    }
                }
                Message::SnapshotDone { .. } => {
                    self.install(&mut pending)?;
                    if mode == Mode::Duplicate {
                        // Replays follow: what the NF derives from its
                        // entries (NAT's port pools) must hold the
                        // snapshot's before it processes a packet.
                        self.handle.finish_install(self.stage)?;
                    }
                    snapshot_done = true;
                    self.report.snapshot_in = start.elapsed();
                }
                Message::Switched => self.switched = true,
                // The source is alive; the read's timeout starts again.
                Message::KeepAlive => {}
                Message::Packets { port, frames } if mode == Mode::Duplicate => {
                    // In stream order: what came before is installed first.
                    self.install(&mut pending)?;
                    self.report.replayed += frames.len() as u64;
                    self.replayed = true;
                    let frames = frames.into_iter().map(|f| (usize::from(port), f)).collect();
                    self.handle.replay(self.stage, frames)?;
                }
                Message::Whole(state) if mode == Mode::StopCopy => {
                    self.whole = true;
                    self.handle.import_state(self.stage, state)?;
                    self.report.installed += 1;
                }
                Message::End { .. } => {
                    self.install(&mut pending)?;
                    self.handle.finish_install(self.stage)?;
                    let (_, peak, dropped) = self.handle.hold(false)?;
                    self.holding = false;
                    self.report.peak_held = peak as u64;
                    self.report.dropped_held = dropped;
                    self.report.bytes = r.counts().bytes;
                    let done = Message::Done {
                        installed: self.report.installed,
                        peak_held: peak as u64,
                        dropped_held: dropped,
                    };
                    w.write_message(&done)?;
                    w.flush().map_err(wire::WireError::Io)?;
                    return Ok(());
                }
                Message::Abort { reason } => return Err(MigrateError::PeerAborted(reason)),
                other => {
                    return Err(MigrateError::Unexpected {
                        expected: "Statelet, SnapshotDone, Switched or End",
                        got: other.name(),
                    })
                }
            }
            // SliM: ask for the switch once the snapshot is in and the
            // statelet backlog (what is read but not installed, and what
            // waits in the reader) is small.
            if snapshot_done && !asked && pending.is_empty() && r.buffered() < 64 << 10 {
                asked = true;
                // The traffic of the moved flows can come from the switch
                // on: hold from now. Before it the stage processes what
                // it gets (its own flows, when it merges).
                self.hold()?;
                let m = Message::SwitchRequest { installed: self.report.installed };
                w.write_message(&m)?;
                w.flush().map_err(wire::WireError::Io)?;
            }
        }
    }

    /// Hold what arrives from now on (until End, or a failure).
    fn hold(&mut self) -> Result<(), MigrateError> {
        if self.holding {
            return Ok(());
        }
        self.handle.hold(true)?;
        self.holding = true;
        Ok(())
    }

    fn install(&mut self, pending: &mut Vec<Statelet>) -> Result<(), MigrateError> {
        if pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(pending);
        for st in &batch {
            self.installed_keys.extend(st.keys.iter().copied());
        }
        self.report.installed += self.handle.install(self.stage, batch)? as u64;
        Ok(())
    }
}
