//! The control channel into an NF process (`mapping: processes`).
//!
//! A thread chain reaches its NFs through its worker's control mailbox
//! ([`braid_dataplane::WorkerHandle`]); an NF process has its worker in
//! another address space. Each NF process therefore listens on a unix
//! socket of its own (`nfI.ctl` in the chain's socket directory, which only
//! the owner's user can enter) and relays what comes there to its worker's
//! mailbox: a live parameter change, a scheduling change, a state export
//! (checkpoint) or import (restore), a drain before a planned stop; and it
//! answers a copy of its worker's
//! telemetry (for a live profile) from the lock-free cells, without
//! asking the worker. One request per connection, one reply.
//!
//! A restarted NF process must not come back with the parameters, the
//! scheduling and the empty state it was started with: the owner keeps,
//! per NF, a *carry file* (`nfI.carry`) with what changed since the start
//! (the parameters, the scheduling, the last checkpointed state), rewritten
//! whole (a temporary file renamed over it) after every change, and an NF
//! process started with `--carry` takes it before its first packet.
//!
//! On the wire (and in the carry file) a message is a JSON head and the
//! bytes of an NF state, if there is one, each preceded by its length
//! (u32 and u64, big endian): a state of a hundred thousand flows does not
//! go through JSON's number arrays. Parameters travel as YAML text, as on
//! `nf-proc`'s command line (a YAML value need not be JSON).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use braid_dataplane::tap::{CaptureError, CaptureRequest, CaptureSession, CaptureTarget};
use braid_dataplane::{AdaptConfig, Idle, Sched, SchedChange, WorkerHandle};
use braid_nf::{NfState, Params};

/// Largest JSON head accepted.
const MAX_HEAD: u32 = 1 << 20;
/// Largest NF state accepted (a NAT's million flows fit many times over).
const MAX_STATE: u64 = 1 << 30;
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the serving thread waits after a failed `accept`.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The control socket of NF `index` in socket directory `dir`.
pub fn control_socket(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("nf{index}.ctl"))
}

/// The carry file of NF `index` in socket directory `dir`.
pub fn carry_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("nf{index}.carry"))
}

/// An NF process's whole scheduling, as the owner resolved it (the
/// coordinator's settings for that process).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SchedSettings {
    pub sched: Sched,
    pub batch_size: usize,
    pub idle: Idle,
    /// The adaptive mode's bounds; `None`: off.
    pub adapt: Option<AdaptConfig>,
}

impl SchedSettings {
    /// What a running worker needs to take `s` (its batch within the
    /// worker's bounds, its adaptive mode's bounds).
    pub fn of(s: &crate::coordinator::WorkerSettings) -> SchedSettings {
        SchedSettings {
            sched: s.sched.clone(),
            batch_size: s.batch_size.clamp(1, crate::descriptor::MAX_BATCH_SIZE),
            idle: s.idle,
            adapt: s.adapt_config(),
        }
    }

    /// The worker's change: every setting given (adaptive mode off
    /// included), so nothing of the previous scheduling stays by accident.
    pub fn change(&self) -> SchedChange {
        SchedChange {
            sched: Some(self.sched.clone()),
            batch_size: Some(self.batch_size),
            idle: Some(self.idle),
            adapt: Some(self.adapt.clone()),
        }
    }
}

/// What the owner asks an NF process.
#[derive(Clone, Debug)]
pub enum Request {
    /// New parameters for the NF (its state carried over, as in a thread
    /// chain's live change).
    Reconfigure(Params),
    SetSched(SchedSettings),
    /// The NF's state (`None` for a stateless NF).
    Export,
    Import(NfState),
    /// A copy of the worker's telemetry.
    Telemetry,
    /// Process everything waiting on the inputs and pause (before a
    /// planned stop's checkpoint).
    Drain,
}

/// An NF process's worker at one moment: its telemetry (one stage, its
/// ports, its loop) and where its thread is, for the OS counters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcTelemetry {
    pub pid: u32,
    /// The worker thread (None until its loop started).
    pub tid: Option<u32>,
    pub worker: String,
    /// `monotonic_ns` (the same clock in every process) of the copy.
    pub taken_ns: u64,
    /// The NF's counters (the worker's one stage).
    pub counters: braid_nf::Counters,
    /// Per port: name, counters, input ended.
    pub ports: Vec<(String, braid_io::PortStats, bool)>,
    pub looped: braid_dataplane::telemetry::LoopStats,
}

impl ProcTelemetry {
    fn of(handle: &WorkerHandle) -> ProcTelemetry {
        let t = handle.telemetry();
        let s = t.snapshot();
        ProcTelemetry {
            pid: std::process::id(),
            tid: t.os().tid(),
            worker: s.worker,
            taken_ns: s.taken_ns,
            counters: s.stages.into_iter().next().map(|st| st.counters).unwrap_or_default(),
            ports: s.ports.into_iter().map(|p| (p.name, p.stats, p.rx_ended)).collect(),
            looped: s.looped,
        }
    }

    /// The worker's snapshot, its one stage named `nf` of kind `kind`.
    pub fn snapshot(&self, nf: &str, kind: &str) -> braid_dataplane::WorkerSnapshot {
        use braid_dataplane::telemetry::PortSnapshot;
        let spec = braid_nf::registry::find(kind);
        braid_dataplane::WorkerSnapshot {
            worker: self.worker.clone(),
            taken_ns: self.taken_ns,
            stages: vec![braid_dataplane::StageSnapshot {
                name: nf.to_string(),
                kind: spec.map_or("?", |s| s.name),
                class: spec.map_or(braid_nf::NfClass::Basic, |s| s.class),
                counters: self.counters.clone(),
            }],
            ports: self
                .ports
                .iter()
                .map(|(name, stats, rx_ended)| PortSnapshot {
                    name: name.clone(),
                    stats: *stats,
                    rx_ended: *rx_ended,
                })
                .collect(),
            looped: self.looped,
        }
    }
}

/// What an NF process answers.
#[derive(Clone, Debug)]
pub enum Reply {
    Done,
    State(Option<NfState>),
    Telemetry(Box<ProcTelemetry>),
    /// The packets the drain received.
    Drained(u64),
    /// Refused; nothing changed. Why.
    Refused(String),
}

/// What a restarted NF process starts from instead of its command line.
#[derive(Clone, Debug, Default)]
pub struct Carry {
    pub params: Option<Params>,
    pub sched: Option<SchedSettings>,
    pub state: Option<NfState>,
}

/// Why a control exchange or a carry file failed.
#[derive(Debug, thiserror::Error)]
pub enum NfControlError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Malformed { path: PathBuf, what: String },
}

/// A state's metadata; its bytes follow the head.
#[derive(serde::Serialize, serde::Deserialize)]
struct StateHead {
    kind: String,
    version: u32,
    encoding: braid_nf::Encoding,
}

impl StateHead {
    fn of(s: &NfState) -> StateHead {
        StateHead { kind: s.kind.clone(), version: s.version, encoding: s.encoding }
    }

    fn with(self, data: Vec<u8>) -> NfState {
        NfState { kind: self.kind, version: self.version, encoding: self.encoding, data }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Head {
    Reconfigure { params: String },
    SetSched { settings: SchedSettings },
    Export,
    Import { state: StateHead },
    Telemetry,
    Drain,
    Capture { request: CaptureRequest },
    CaptureStarted,
    CaptureRefused { kind: CaptureRefusal, error: String },
    Done,
    Drained { packets: u64 },
    State { state: Option<StateHead> },
    TelemetryIs { telemetry: Box<ProcTelemetry> },
    Refused { error: String },
    Carry { params: Option<String>, sched: Option<SchedSettings>, state: Option<StateHead> },
}

fn params_text(p: &Params) -> String {
    // A YAML value always has a YAML text.
    serde_yaml_ng::to_string(p).unwrap_or_default()
}

fn params_of(text: &str) -> Result<Params, String> {
    serde_yaml_ng::from_str(text).map_err(|e| format!("parameters are not YAML: {e}"))
}

/// Write a head and an optional state's bytes.
fn write_message(w: &mut impl Write, head: &Head, data: Option<&[u8]>) -> std::io::Result<()> {
    let head = serde_json::to_vec(head).map_err(std::io::Error::other)?;
    let data = data.unwrap_or_default();
    let mut buf = Vec::with_capacity(12 + head.len() + data.len());
    buf.extend_from_slice(&(head.len() as u32).to_be_bytes());
    buf.extend_from_slice(&head);
    buf.extend_from_slice(&(data.len() as u64).to_be_bytes());
    buf.extend_from_slice(data);
    w.write_all(&buf)?;
    w.flush()
}

/// Read a head and the state bytes after it, refusing sizes over the
/// limits before allocating.
fn read_message(r: &mut impl Read) -> Result<(Head, Vec<u8>), String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|e| format!("reading the head's length: {e}"))?;
    let head_len = u32::from_be_bytes(len);
    if head_len > MAX_HEAD {
        return Err(format!("a head of {head_len} bytes (at most {MAX_HEAD})"));
    }
    let mut head = vec![0u8; head_len as usize];
    r.read_exact(&mut head).map_err(|e| format!("reading the head: {e}"))?;
    let head: Head =
        serde_json::from_slice(&head).map_err(|e| format!("the head is not understood: {e}"))?;
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(|e| format!("reading the state's length: {e}"))?;
    let data_len = u64::from_be_bytes(len);
    if data_len > MAX_STATE {
        return Err(format!("a state of {data_len} bytes (at most {MAX_STATE})"));
    }
    let mut data = vec![0u8; data_len as usize];
    r.read_exact(&mut data).map_err(|e| format!("reading the state: {e}"))?;
    Ok((head, data))
}

fn state_of(head: Option<StateHead>, data: Vec<u8>) -> Option<NfState> {
    head.map(|h| h.with(data))
}

/// Ask the NF process listening on `socket`; `timeout` bounds the whole
/// exchange (a state export of a large NF takes the longest).
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, NfControlError> {
    let io = |source| NfControlError::Io { path: socket.to_path_buf(), source };
    let mut s = UnixStream::connect(socket).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    match req {
        Request::Reconfigure(p) => {
            write_message(&mut s, &Head::Reconfigure { params: params_text(p) }, None)
        }
        Request::SetSched(settings) => {
            write_message(&mut s, &Head::SetSched { settings: settings.clone() }, None)
        }
        Request::Export => write_message(&mut s, &Head::Export, None),
        Request::Telemetry => write_message(&mut s, &Head::Telemetry, None),
        Request::Drain => write_message(&mut s, &Head::Drain, None),
        Request::Import(st) => {
            write_message(&mut s, &Head::Import { state: StateHead::of(st) }, Some(&st.data))
        }
    }
    .map_err(io)?;
    let malformed = |what: String| NfControlError::Malformed { path: socket.to_path_buf(), what };
    match read_message(&mut s).map_err(malformed)? {
        (Head::Done, _) => Ok(Reply::Done),
        (Head::State { state }, data) => Ok(Reply::State(state_of(state, data))),
        (Head::Refused { error }, _) => Ok(Reply::Refused(error)),
        (Head::TelemetryIs { telemetry }, _) => Ok(Reply::Telemetry(telemetry)),
        (Head::Drained { packets }, _) => Ok(Reply::Drained(packets)),
        _ => Err(malformed("an answer that is not one".into())),
    }
}

/// Why an NF process did not start a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureRefusal {
    /// The filter expression does not parse.
    Filter,
    /// A bad request (its time limit).
    Request,
    /// The worker refused the tap.
    Worker,
}

/// Start a capture in the NF process listening on `socket`: on success the
/// connection the pcapng bytes come on until the capture ends (by count,
/// time, or this side closing it: the process then removes its tap); or
/// why the process refused it.
pub fn start_capture(
    socket: &Path,
    req: &CaptureRequest,
    timeout: Duration,
) -> Result<Result<UnixStream, (CaptureRefusal, String)>, NfControlError> {
    let io = |source| NfControlError::Io { path: socket.to_path_buf(), source };
    let mut s = UnixStream::connect(socket).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    write_message(&mut s, &Head::Capture { request: req.clone() }, None).map_err(io)?;
    let malformed = |what: String| NfControlError::Malformed { path: socket.to_path_buf(), what };
    match read_message(&mut s).map_err(malformed)? {
        (Head::CaptureStarted, _) => {
            // Packets may be long apart: no read timeout from now on.
            s.set_read_timeout(None).map_err(io)?;
            Ok(Ok(s))
        }
        (Head::CaptureRefused { kind, error }, _) => Ok(Err((kind, error))),
        (Head::Refused { error }, _) => Ok(Err((CaptureRefusal::Request, error))),
        _ => Err(malformed("an answer to a capture that is not one".into())),
    }
}

/// Run a capture for the owner on connection `s` (its own thread: other
/// requests go on meanwhile): the tap goes in, the answer says whether,
/// then the pcapng stream follows until the capture ends or the owner
/// closes the connection.
fn capture(mut s: UnixStream, handle: WorkerHandle, req: CaptureRequest) {
    let session = match CaptureSession::start_on(CaptureTarget::Worker(handle), req) {
        Ok(session) => session,
        Err(e) => {
            let kind = match &e {
                CaptureError::Filter(_) => CaptureRefusal::Filter,
                CaptureError::Seconds(_) => CaptureRefusal::Request,
                _ => CaptureRefusal::Worker,
            };
            let _ =
                write_message(&mut s, &Head::CaptureRefused { kind, error: e.to_string() }, None);
            return;
        }
    };
    let ended = Arc::new(AtomicBool::new(false));
    if write_message(&mut s, &Head::CaptureStarted, None).is_err()
        || s.set_write_timeout(None).is_err()
        || s.set_read_timeout(None).is_err()
    {
        ended.store(true, Ordering::Relaxed);
    }
    // The owner sends nothing more: a read that returns means it closed
    // the connection (its client left), which ends the capture.
    let watcher = s.try_clone().ok().map(|mut r| {
        let ended = ended.clone();
        std::thread::spawn(move || {
            let _ = r.read(&mut [0u8; 1]);
            ended.store(true, Ordering::Relaxed);
        })
    });
    let out = s.try_clone().map(|w| std::io::BufWriter::with_capacity(16 << 10, w));
    if let Ok(out) = out {
        // The session removes its tap however it ends.
        let _ = session.run(out, &ended);
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    if let Some(w) = watcher {
        let _ = w.join();
    }
}

/// A control socket being served (see [`Server::spawn`]).
pub struct Server {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Listen on `socket` (a stale one a killed process left is replaced)
    /// and relay its requests to the worker of stage `stage` on a thread of
    /// its own, which sleeps in `accept` until a request comes.
    pub fn spawn(socket: &Path, handle: &WorkerHandle, stage: &str) -> std::io::Result<Server> {
        match std::fs::remove_file(socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (handle, stage, stop) = (handle.clone(), stage.to_string(), stop.clone());
            std::thread::Builder::new()
                .name("nf-control".into())
                .spawn(move || serve(listener, handle, stage, stop))?
        };
        Ok(Server { socket: socket.to_path_buf(), stop, thread })
    }

    /// End the serving thread: the flag, then a connection of our own so
    /// that its `accept` returns and sees it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = UnixStream::connect(&self.socket);
        let _ = self.thread.join();
    }
}

/// Answer the requests `listener` accepts until `stop` is set (checked
/// after each `accept`: [`Server::stop`] connects to wake it).
fn serve(listener: UnixListener, handle: WorkerHandle, stage: String, stop: Arc<AtomicBool>) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match accepted {
            Ok((s, _)) => answer(s, &handle, &stage),
            // Out of descriptors, say: not a reason to spin.
            Err(_) => std::thread::sleep(ACCEPT_RETRY),
        }
    }
}

/// One request on `s`, answered. A broken request gets a refusal that
/// says what was wrong (and the worker is not asked anything).
fn answer(mut s: UnixStream, handle: &WorkerHandle, stage: &str) {
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err()
        || s.set_write_timeout(Some(REQUEST_TIMEOUT)).is_err()
    {
        return;
    }
    let refused = |error: String| Head::Refused { error };
    let (head, data) = match read_message(&mut s) {
        Ok((Head::Capture { mut request }, _)) => {
            // The process has one stage, whatever the owner calls it.
            request.nf = stage.to_string();
            let handle = handle.clone();
            let _ = std::thread::Builder::new()
                .name("nf-capture".into())
                .spawn(move || capture(s, handle, request));
            return;
        }
        Ok((head, data)) => match relay(head, data, handle, stage) {
            Ok((head, data)) => (head, data),
            Err(e) => (refused(e), None),
        },
        Err(e) => (refused(format!("a malformed request: {e}")), None),
    };
    // The owner may have given up waiting; nothing to do then.
    let _ = write_message(&mut s, &head, data.as_deref());
}

fn relay(
    head: Head,
    data: Vec<u8>,
    handle: &WorkerHandle,
    stage: &str,
) -> Result<(Head, Option<Vec<u8>>), String> {
    let done = |r: Result<(), braid_dataplane::ControlError>| {
        r.map(|()| (Head::Done, None)).map_err(|e| e.to_string())
    };
    match head {
        Head::Reconfigure { params } => done(handle.reconfigure(stage, params_of(&params)?)),
        Head::SetSched { settings } => done(handle.set_sched(settings.change())),
        Head::Import { state } => done(handle.import_state(stage, state.with(data))),
        Head::Drain => match handle.drain() {
            Ok(packets) => Ok((Head::Drained { packets }, None)),
            Err(e) => Err(e.to_string()),
        },
        Head::Telemetry => {
            Ok((Head::TelemetryIs { telemetry: Box::new(ProcTelemetry::of(handle)) }, None))
        }
        Head::Export => match handle.export_state(stage).map_err(|e| e.to_string())? {
            Some(st) => {
                let head = Head::State { state: Some(StateHead::of(&st)) };
                Ok((head, Some(st.data)))
            }
            None => Ok((Head::State { state: None }, None)),
        },
        _ => Err("not a request".into()),
    }
}

impl Carry {
    /// Write the carry file `path` whole: a temporary file beside it,
    /// renamed over it, so a process starting meanwhile reads the old or
    /// the new one, never a part.
    pub fn write(&self, path: &Path) -> Result<(), NfControlError> {
        let io = |source| NfControlError::Io { path: path.to_path_buf(), source };
        let head = Head::Carry {
            params: self.params.as_ref().map(params_text),
            sched: self.sched.clone(),
            state: self.state.as_ref().map(StateHead::of),
        };
        let tmp = path.with_extension("carry.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        write_message(&mut f, &head, self.state.as_ref().map(|s| s.data.as_slice())).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Read carry file `path`; `None` if there is none (nothing changed
    /// since the start). A damaged file is an error, never half taken.
    pub fn read(path: &Path) -> Result<Option<Carry>, NfControlError> {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(NfControlError::Io { path: path.to_path_buf(), source }),
        };
        let malformed = |what: String| NfControlError::Malformed { path: path.to_path_buf(), what };
        let (head, data) = read_message(&mut f).map_err(malformed)?;
        let mut rest = [0u8; 1];
        if f.read(&mut rest).map_err(|e| malformed(e.to_string()))? != 0 {
            return Err(malformed("bytes after the state".into()));
        }
        match head {
            Head::Carry { params, sched, state } => Ok(Some(Carry {
                params: params.as_deref().map(params_of).transpose().map_err(malformed)?,
                sched,
                state: state_of(state, data),
            })),
            _ => Err(malformed("not a carry file".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(n: u8) -> NfState {
        NfState {
            kind: "nat".into(),
            version: 3,
            encoding: braid_nf::Encoding::Binary,
            data: (0..=n).collect(),
        }
    }

    #[test]
    fn a_carry_file_reads_back_what_was_written_and_a_damaged_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("braid-carry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nf0.carry");
        assert!(Carry::read(&path).unwrap().is_none());
        let params: Params = serde_yaml_ng::from_str("{default: drop, rules: []}").unwrap();
        let sched = SchedSettings {
            sched: Sched { cpus: vec![1], ..Sched::default() },
            batch_size: 8,
            idle: Idle::Poll,
            adapt: None,
        };
        let c = Carry {
            params: Some(params.clone()),
            sched: Some(sched.clone()),
            state: Some(state(200)),
        };
        c.write(&path).unwrap();
        let back = Carry::read(&path).unwrap().unwrap();
        assert_eq!(back.params, Some(params));
        assert_eq!(back.sched, Some(sched));
        let st = back.state.unwrap();
        assert_eq!((st.kind.as_str(), st.version, st.data.len()), ("nat", 3, 201));
        // Cut short, or with bytes after it: refused, naming the file.
        let bytes = std::fs::read(&path).unwrap();
        for damaged in [&bytes[..bytes.len() - 1], &[bytes.as_slice(), &[0]].concat()[..]] {
            std::fs::write(&path, damaged).unwrap();
            let e = Carry::read(&path).unwrap_err().to_string();
            assert!(e.contains("nf0.carry"), "{e}");
        }
        // A length over the limit is refused before anything is allocated.
        let mut huge = 16u32.to_be_bytes().to_vec();
        huge.extend_from_slice(b"{\"op\":\"export\"} ");
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(Carry::read(&path).unwrap_err().to_string().contains("at most"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn requests_and_replies_cross_a_socket_to_a_real_worker() {
        use braid_dataplane::{Graph, Worker, WorkerConfig};
        let dir = std::env::temp_dir().join(format!("braid-nfctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = control_socket(&dir, 0);
        let _ = std::fs::remove_file(&sock);
        let params: Params =
            serde_yaml_ng::from_str("{external_ip: 192.0.2.1, internal: [10.0.0.0/8]}").unwrap();
        let nf = braid_nf::build("nat", &params).unwrap();
        let mut wc = WorkerConfig::new("nfctl-test");
        let stop = Arc::new(AtomicBool::new(false));
        wc.stop_flag = Some(stop.clone());
        let (w, handle) = Worker::new(wc, Graph::new(vec![("n".into(), nf)], 0)).unwrap();
        let worker = w.spawn().unwrap();
        let server = Server::spawn(&sock, &handle, "n").unwrap();
        let t = Duration::from_secs(5);
        let exported = match request(&sock, &Request::Export, t).unwrap() {
            Reply::State(Some(s)) => s,
            r => panic!("{r:?}"),
        };
        assert_eq!(exported.kind, "nat");
        let tel = match request(&sock, &Request::Telemetry, t).unwrap() {
            Reply::Telemetry(tel) => tel,
            r => panic!("{r:?}"),
        };
        assert_eq!((tel.pid, tel.worker.as_str()), (std::process::id(), "nfctl-test"));
        assert!(tel.tid.is_some(), "{tel:?}");
        let snap = tel.snapshot("n", "nat");
        assert_eq!((snap.stages[0].name.as_str(), snap.stages[0].kind), ("n", "nat"));
        assert!(matches!(
            request(&sock, &Request::Import(exported.clone()), t).unwrap(),
            Reply::Done
        ));
        // A state of another NF kind: refused, with the worker's reason.
        let mut wrong = exported;
        wrong.kind = "firewall".into();
        match request(&sock, &Request::Import(wrong), t).unwrap() {
            Reply::Refused(e) => assert!(e.contains("firewall"), "{e}"),
            r => panic!("{r:?}"),
        }
        let bad: Params =
            serde_yaml_ng::from_str("{external_ip: nowhere, internal: [10.0.0.0/8]}").unwrap();
        assert!(matches!(
            request(&sock, &Request::Reconfigure(bad), t).unwrap(),
            Reply::Refused(_)
        ));
        let good: Params =
            serde_yaml_ng::from_str("{external_ip: 192.0.2.7, internal: [10.0.0.0/8]}").unwrap();
        assert!(matches!(request(&sock, &Request::Reconfigure(good), t).unwrap(), Reply::Done));
        // Bytes that are no request: a refusal naming the problem.
        // In one write: the server may answer and close after the body,
        // and a later write of the rest would then fail (EPIPE).
        let mut s = UnixStream::connect(&sock).unwrap();
        let garbage = [&5u32.to_be_bytes()[..], b"hello", &0u64.to_be_bytes()].concat();
        s.write_all(&garbage).unwrap();
        match read_message(&mut s).unwrap().0 {
            Head::Refused { error } => assert!(error.contains("malformed"), "{error}"),
            _ => panic!("not refused"),
        }
        server.stop();
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
