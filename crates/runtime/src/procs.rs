//! One NF as its own process between shared-memory ports (`braid
//! nf-proc`): the unit that [`crate::proc_chain`] supervises and that
//! `braid shm-bench` puts between a generator and a sink.
//!
//! The process runs one [`Worker`] whose graph is the one NF, and the NF's
//! gates ARE the ports: port `i` feeds gate `i` and gate `i` leaves by port
//! `i`. A pair NF (two gates) therefore crosses ports 0 and 1; a switching
//! NF (router, l2switch) picks its port in `meta.out_port`. Nothing here
//! looks at the NF kind.
//!
//! Ports are `listen:PATH` (this process creates the channel and waits for
//! a peer; a peer that dies is reported and the next one is accepted) or
//! `connect:PATH` (this process joins a channel created by another). A
//! `connect:` port whose peer dies reconnects as soon as the peer listens
//! again ([`ReconnectingPort`], connecting on a helper thread so the packet
//! loop never blocks), so a restarted neighbour is taken back without
//! restarting this process, and the NF keeps its state.
//!
//! The worker runs with backpressure (a slow neighbour slows its upstream
//! instead of losing packets here), beats the supervisor's heartbeat pipe
//! when one is inherited, and stops on its stop flag (SIGINT/SIGTERM), at
//! its deadline, or on a port error.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub use braid_dataplane::Idle;
use braid_dataplane::{Endpoint, Graph, Heartbeat, Worker, WorkerConfig, WorkerError};
use braid_io::shm::{ShmConfig, ShmPort};
use braid_io::{Port, PortError, PortStats, WaitReadiness};
use braid_nf::Params;
use braid_packet::Batch;

use crate::supervisor::{HEARTBEAT_FD_ENV, HEARTBEAT_INTERVAL};

/// How long a `connect:` port waits for its listener at start, at most.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an NF process could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("port `{0}`: expected listen:PATH or connect:PATH")]
    PortSpec(String),
    #[error("batch size {0}: must be 1..=1024")]
    Batch(usize),
    #[error("NF `{kind}`: {source}")]
    Build {
        kind: String,
        #[source]
        source: braid_nf::registry::BuildError,
    },
    #[error("NF `{kind}` has {gates} gates; got {ports} ports (one port per gate, at most)")]
    TooManyPorts { kind: String, gates: u16, ports: usize },
    #[error("NF `{kind}`: no port given")]
    NoPorts { kind: String },
    #[error("port {index} ({spec}): {source}")]
    Open {
        index: usize,
        spec: String,
        #[source]
        source: PortError,
    },
    #[error("stats file {path}: {source}")]
    Stats {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("heartbeat: {0}")]
    Heartbeat(#[from] braid_dataplane::heartbeat::HeartbeatError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("carry file: {0}")]
    Carry(#[from] crate::nf_control::NfControlError),
    #[error("carry file {path}: NF `{kind}` does not take its state: {source}")]
    CarryState {
        path: PathBuf,
        kind: String,
        #[source]
        source: braid_nf::StateError,
    },
    #[error("control socket {path}: {source}")]
    Control {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A port from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    Listen(PathBuf),
    Connect(PathBuf),
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortSpec::Listen(p) => write!(f, "listen:{}", p.display()),
            PortSpec::Connect(p) => write!(f, "connect:{}", p.display()),
        }
    }
}

impl std::str::FromStr for PortSpec {
    type Err = ProcError;
    fn from_str(s: &str) -> Result<PortSpec, ProcError> {
        match s.split_once(':') {
            Some(("listen", p)) if !p.is_empty() => Ok(PortSpec::Listen(p.into())),
            Some(("connect", p)) if !p.is_empty() => Ok(PortSpec::Connect(p.into())),
            _ => Err(ProcError::PortSpec(s.to_string())),
        }
    }
}

impl PortSpec {
    /// Open the port: listen at once, or connect within `timeout`.
    pub fn open(&self, cfg: ShmConfig, timeout: Duration) -> Result<Box<dyn Port>, PortError> {
        Ok(match self {
            PortSpec::Listen(p) => Box::new(ShmPort::listen(p, cfg)?),
            PortSpec::Connect(p) => {
                Box::new(ReconnectingPort::new(p.clone(), ShmPort::connect(p, timeout)?))
            }
        })
    }
}

/// What `braid nf-proc` runs.
#[derive(Debug)]
pub struct NfProcConfig {
    /// NF kind (see `braid nfs`).
    pub kind: String,
    /// The NF instance's name: its worker's stage, as control requests and
    /// captures name it (None: the kind).
    pub name: Option<String>,
    pub params: Params,
    /// Port `i` is gate `i`.
    pub ports: Vec<PortSpec>,
    pub batch_size: usize,
    /// Slots of the channels this process creates (`listen:` ports).
    pub slots: u32,
    /// Largest IP packet of the channels this process creates: their slot
    /// size ([`ShmConfig::for_mtu`]; a connecting peer takes the
    /// listener's).
    pub mtu: usize,
    pub idle: Idle,
    /// CPU affinity and scheduling of the NF's worker thread.
    pub sched: braid_dataplane::Sched,
    /// Stop at this time (also bounds the wait for `connect:` peers).
    pub deadline: Option<Instant>,
    /// Stop when set (signal handlers).
    pub stop: Option<Arc<AtomicBool>>,
    /// Write the NF's counters here (JSON, [`NfProcStats`]) every
    /// [`STATS_INTERVAL`] while it runs and once more when the run ends,
    /// for a supervisor that wants per-NF statistics.
    pub stats: Option<PathBuf>,
    /// Adaptive mode: batch size and idle policy from the worker's own
    /// feedback loop, within these bounds; its changes are printed to
    /// standard error as they happen.
    pub adapt: Option<braid_dataplane::AdaptConfig>,
    /// Listen for the owner's requests on this unix socket
    /// ([`crate::nf_control`]).
    pub control: Option<PathBuf>,
    /// Start from this carry file if there is one (a restart): its
    /// parameters, scheduling and state replace those above.
    pub carry: Option<PathBuf>,
}

impl NfProcConfig {
    pub fn new(kind: impl Into<String>, ports: Vec<PortSpec>) -> NfProcConfig {
        NfProcConfig {
            kind: kind.into(),
            name: None,
            params: Params::Null,
            ports,
            batch_size: braid_packet::DEFAULT_BATCH_SIZE,
            slots: ShmConfig::default().slots,
            mtu: braid_packet::DEFAULT_MTU,
            idle: Idle::Busy,
            sched: braid_dataplane::Sched::default(),
            deadline: None,
            stop: None,
            stats: None,
            adapt: None,
            control: None,
            carry: None,
        }
    }
}

/// How an NF process's run went.
#[derive(Debug)]
pub struct NfProcReport {
    pub kind: String,
    pub packets_in: u64,
    pub packets_out: u64,
    pub dropped: u64,
    /// Peers that went away on the ports.
    pub disconnects: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for NfProcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} packets in, {} out, {} dropped",
            self.kind, self.packets_in, self.packets_out, self.dropped
        )
    }
}

/// An NF process's final counters, as written to `--stats PATH`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NfProcStats {
    pub kind: String,
    pub counters: braid_nf::Counters,
    /// Peers that went away on the ports (counted in the final write only).
    pub disconnects: u64,
    pub elapsed_ns: u64,
    /// Written while the NF runs (every [`STATS_INTERVAL`]); `false` for
    /// the final write when it stopped.
    #[serde(default)]
    pub running: bool,
}

impl NfProcStats {
    /// Read a stats file written by [`run_nf_proc`].
    pub fn read(path: &Path) -> Result<NfProcStats, ProcError> {
        let bytes = std::fs::read(path)
            .map_err(|source| ProcError::Stats { path: path.to_path_buf(), source })?;
        serde_json::from_slice(&bytes).map_err(|e| ProcError::Stats {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Write under a temporary name and rename, so a reader never sees
    /// half a file.
    fn write(&self, path: &Path) -> Result<(), ProcError> {
        let err = |source| ProcError::Stats { path: path.to_path_buf(), source };
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec(self).expect("plain counters serialize");
        std::fs::write(&tmp, json).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

/// Run one NF between its ports until stopped (see the module
/// documentation). A port error ends the run with that error, after what
/// was received before it was processed and sent.
pub fn run_nf_proc(mut cfg: NfProcConfig) -> Result<NfProcReport, ProcError> {
    let carry = match &cfg.carry {
        Some(path) => crate::nf_control::Carry::read(path)?,
        None => None,
    };
    let mut carried_state = None;
    if let Some(c) = carry {
        if let Some(p) = c.params {
            cfg.params = p;
        }
        if let Some(s) = c.sched {
            cfg.sched = s.sched;
            cfg.batch_size = s.batch_size;
            cfg.idle = s.idle;
            cfg.adapt = s.adapt;
        }
        carried_state = c.state;
    }
    if cfg.batch_size == 0 || cfg.batch_size > braid_dataplane::worker::MAX_BATCH {
        return Err(ProcError::Batch(cfg.batch_size));
    }
    let mut nf = braid_nf::build(&cfg.kind, &cfg.params)
        .map_err(|source| ProcError::Build { kind: cfg.kind.clone(), source })?;
    if let (Some(state), Some(path)) = (&carried_state, &cfg.carry) {
        nf.import_state(state).map_err(|source| ProcError::CarryState {
            path: path.clone(),
            kind: cfg.kind.clone(),
            source,
        })?;
    }
    let gates = nf.gates().count();
    if cfg.ports.is_empty() {
        return Err(ProcError::NoPorts { kind: cfg.kind });
    }
    if cfg.ports.len() > gates as usize {
        return Err(ProcError::TooManyPorts { kind: cfg.kind, gates, ports: cfg.ports.len() });
    }
    let shm = ShmConfig { slots: cfg.slots, ..ShmConfig::for_mtu(cfg.mtu) };
    let connect_timeout = cfg
        .deadline
        .map_or(CONNECT_TIMEOUT, |d| d.saturating_duration_since(Instant::now()))
        .min(CONNECT_TIMEOUT);
    let mut ports = Vec::with_capacity(cfg.ports.len());
    for (index, spec) in cfg.ports.iter().enumerate() {
        let p = spec.open(shm, connect_timeout).map_err(|source| ProcError::Open {
            index,
            spec: spec.to_string(),
            source,
        })?;
        ports.push(p);
    }
    let mut wc = WorkerConfig::new(format!("nf-proc-{}", cfg.kind));
    wc.batch_size = cfg.batch_size;
    wc.idle = cfg.idle;
    wc.sched = cfg.sched.clone();
    wc.adapt = cfg.adapt.clone();
    wc.backpressure = true;
    wc.stop_flag = cfg.stop;
    wc.deadline = cfg.deadline;
    wc.heartbeat = Heartbeat::from_env(HEARTBEAT_FD_ENV, HEARTBEAT_INTERVAL)?;
    let stage = cfg.name.clone().unwrap_or_else(|| cfg.kind.clone());
    let (mut w, handle) = Worker::new(wc, Graph::new(vec![(stage.clone(), nf)], 0))?;
    for (gate, port) in ports.into_iter().enumerate() {
        let gate = gate as u16;
        let i = w.add_port(port, Some(Endpoint::Stage { stage: 0, gate }))?;
        w.graph_mut()
            .link(0, gate, Endpoint::Port(i))
            .map_err(|source| WorkerError::Graph { worker: cfg.kind.clone(), source })?;
    }
    let control = match &cfg.control {
        Some(path) => Some(
            crate::nf_control::Server::spawn(path, &handle, &stage)
                .map_err(|source| ProcError::Control { path: path.clone(), source })?,
        ),
        None => None,
    };
    let report = match &cfg.stats {
        Some(path) => run_writing_stats(w, &handle, &cfg.kind, path),
        None => w.run(),
    };
    if let Some(server) = control {
        server.stop();
    }
    let c = &report.snapshot.stages[0].counters;
    if let Some(path) = &cfg.stats {
        NfProcStats {
            kind: cfg.kind.clone(),
            counters: c.clone(),
            disconnects: report.disconnects,
            elapsed_ns: report.elapsed.as_nanos() as u64,
            running: false,
        }
        .write(path)?;
    }
    let out = NfProcReport {
        kind: cfg.kind,
        packets_in: c.packets_in,
        packets_out: c.packets_out,
        dropped: c.dropped_total(),
        disconnects: report.disconnects,
        elapsed: report.elapsed,
    };
    match report.error {
        Some(e) => Err(e.into()),
        None => Ok(out),
    }
}

/// How often a running NF process rewrites its stats file (`--stats`), so
/// that its supervisor can show live counters.
pub const STATS_INTERVAL: Duration = Duration::from_millis(200);

/// Run `w` on this thread while a helper thread rewrites NF `kind`'s stats
/// file every [`STATS_INTERVAL`] from the worker's published counters (a
/// lock-free copy; the packet loop is not disturbed). An interim write
/// that fails leaves the previous file; the final write, after the run,
/// reports its error.
fn run_writing_stats(
    w: Worker<'_>,
    handle: &braid_dataplane::WorkerHandle,
    kind: &str,
    path: &Path,
) -> braid_dataplane::WorkerReport {
    let started = Instant::now();
    let (done, wake) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = wake.recv_timeout(STATS_INTERVAL) {
                let Some(stage) = handle.snapshot().stages.into_iter().next() else { continue };
                let _ = NfProcStats {
                    kind: kind.to_string(),
                    counters: stage.counters,
                    disconnects: 0,
                    elapsed_ns: started.elapsed().as_nanos() as u64,
                    running: true,
                }
                .write(path);
            }
        });
        let report = w.run();
        // Wakes the writer at once: it ends before the final write.
        drop(done);
        report
    })
}

/// A `connect:` shared-memory port that joins its listener again when the
/// peer goes away (a neighbour NF that crashed and is being restarted).
/// Connection attempts run on a helper thread, one at a time, so the
/// packet loop keeps turning (and beating) meanwhile. Never at its end.
pub struct ReconnectingPort {
    path: PathBuf,
    port: ShmPort,
    /// A connection attempt under way.
    pending: Option<mpsc::Receiver<Result<ShmPort, PortError>>>,
    /// Counters of the ports replaced so far.
    before: PortStats,
    reconnects: u64,
}

/// How long one background connection attempt waits for the listener.
const RECONNECT_ATTEMPT: Duration = Duration::from_millis(500);

impl ReconnectingPort {
    pub fn new(path: PathBuf, port: ShmPort) -> ReconnectingPort {
        ReconnectingPort { path, port, pending: None, before: PortStats::default(), reconnects: 0 }
    }

    /// Times the port joined a new peer.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The path this port connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the peer is gone: start an attempt, or take a finished one.
    fn revive(&mut self) {
        if !self.port.at_end() {
            return;
        }
        match &self.pending {
            None => {
                let (tx, rx) = mpsc::channel();
                let path = self.path.clone();
                let spawned =
                    std::thread::Builder::new().name("shm-reconnect".into()).spawn(move || {
                        // A receiver gone (port dropped) makes this a no-op.
                        let _ = tx.send(ShmPort::connect(&path, RECONNECT_ATTEMPT));
                    });
                if spawned.is_ok() {
                    self.pending = Some(rx);
                }
            }
            Some(rx) => match rx.try_recv() {
                Err(mpsc::TryRecvError::Empty) => {}
                Ok(Ok(fresh)) => {
                    self.pending = None;
                    let old = std::mem::replace(&mut self.port, fresh);
                    add_stats(&mut self.before, &old.stats());
                    self.reconnects += 1;
                    eprintln!("{}: reconnected to {}", self.port.name(), self.path.display());
                }
                // The listener is not back yet: try again next turn.
                Ok(Err(_)) | Err(mpsc::TryRecvError::Disconnected) => self.pending = None,
            },
        }
    }
}

fn add_stats(sum: &mut PortStats, s: &PortStats) {
    sum.rx_packets += s.rx_packets;
    sum.rx_bytes += s.rx_bytes;
    sum.tx_packets += s.tx_packets;
    sum.tx_bytes += s.tx_bytes;
    sum.rx_dropped += s.rx_dropped;
    sum.tx_dropped += s.tx_dropped;
}

impl Port for ReconnectingPort {
    fn name(&self) -> String {
        self.port.name()
    }
    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        self.revive();
        self.port.recv(batch, max)
    }
    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        self.port.send(batch)
    }
    fn flush(&mut self) -> Result<(), PortError> {
        self.port.flush()
    }
    fn wait(&mut self, timeout: Duration) -> Result<(), PortError> {
        if self.port.at_end() {
            std::thread::sleep(timeout.min(Duration::from_millis(1)));
            return Ok(());
        }
        self.port.wait(timeout)
    }
    fn at_end(&self) -> bool {
        false
    }
    fn tx_room(&mut self) -> usize {
        // A port without a peer drops what it is given: no reason to hold
        // the other side back while the neighbour restarts.
        if self.port.at_end() {
            usize::MAX
        } else {
            self.port.tx_room()
        }
    }
    fn prepare_wait(&mut self, fds: &mut Vec<RawFd>) -> WaitReadiness {
        if self.port.at_end() {
            // Look again soon: the reconnection may have finished.
            return WaitReadiness::NoDescriptor;
        }
        self.port.prepare_wait(fds)
    }
    fn finish_wait(&mut self) {
        self.port.finish_wait()
    }
    fn stats(&self) -> PortStats {
        let mut s = self.before;
        add_stats(&mut s, &self.port.stats());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!("listen:/tmp/a".parse::<PortSpec>().unwrap(), PortSpec::Listen("/tmp/a".into()));
        assert_eq!("connect:/x".parse::<PortSpec>().unwrap(), PortSpec::Connect("/x".into()));
        for bad in ["listen:", "tcp:/x", "/x"] {
            let e = bad.parse::<PortSpec>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(PortSpec::Connect("/x".into()).to_string(), "connect:/x");
    }

    #[test]
    fn more_ports_than_gates_is_refused_before_anything_opens() {
        let mut cfg = NfProcConfig::new(
            "fwd",
            ["/nonexistent/a", "/nonexistent/b", "/nonexistent/c"]
                .iter()
                .map(|p| PortSpec::Connect(p.into()))
                .collect(),
        );
        cfg.deadline = Some(Instant::now());
        let e = run_nf_proc(cfg).unwrap_err().to_string();
        assert_eq!(e, "NF `fwd` has 2 gates; got 3 ports (one port per gate, at most)");
        let e = run_nf_proc(NfProcConfig::new("nope", vec![])).unwrap_err().to_string();
        assert!(e.starts_with("NF `nope`:"), "{e}");
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("braid-procs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Send frames `0..n` (first byte, and a fixed MAC header) into `tx`
    /// and read what arrives at `rx`.
    fn pump(tx: &mut ShmPort, rx: &mut ShmPort, n: u8) -> Vec<u8> {
        let mut b: Batch = (0..n).map(|i| braid_packet::Packet::from_bytes(&[i; 60])).collect();
        let mut sent = 0;
        while sent < n as usize {
            sent += tx.send(&mut b).unwrap();
            if !b.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < n as usize && Instant::now() < deadline {
            let _ = rx.recv(&mut b, 64);
            got.extend(b.drain().map(|p| p.data()[0]));
        }
        got
    }

    #[test]
    fn a_pair_nf_crosses_its_two_ports_both_ways_and_a_connect_port_rejoins() {
        let d = dir("pair");
        let (a, b) = (d.join("a.sock"), d.join("b.sock"));
        // Port 0 listens (our `left` connects); port 1 connects to `right`.
        let right = ShmPort::listen(&b, ShmConfig::default()).unwrap();
        let mut cfg = NfProcConfig::new(
            "fwd",
            vec![PortSpec::Listen(a.clone()), PortSpec::Connect(b.clone())],
        );
        cfg.idle = Idle::Poll;
        let stop = Arc::new(AtomicBool::new(false));
        cfg.stop = Some(stop.clone());
        let nf = std::thread::spawn(move || run_nf_proc(cfg));
        // The NF opens its ports in order: listens on `a`, then connects to
        // `right`; its loop, which accepts on `a`, starts after that.
        let mut right = right;
        assert!(right.accept(Duration::from_secs(10)).unwrap());
        let mut left = ShmPort::connect(&a, Duration::from_secs(10)).unwrap();
        assert_eq!(pump(&mut left, &mut right, 50), (0..50).collect::<Vec<_>>(), "gate 0 -> 1");
        assert_eq!(pump(&mut right, &mut left, 20), (0..20).collect::<Vec<_>>(), "gate 1 -> 0");
        // The listener on the right dies and comes back: the NF's
        // connect: port joins the new one and traffic flows again.
        drop(right);
        std::thread::sleep(Duration::from_millis(100));
        let mut right = ShmPort::listen(&b, ShmConfig::default()).unwrap();
        assert!(right.accept(Duration::from_secs(10)).unwrap(), "the NF reconnected");
        // The helper thread made the connection; the worker swaps it in on
        // its next tick (10 ms). Until then what it sends goes to the dead
        // port, so give it a few ticks on a loaded machine.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(pump(&mut left, &mut right, 30), (0..30).collect::<Vec<_>>());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let r = nf.join().unwrap().unwrap();
        assert_eq!((r.packets_in, r.packets_out, r.dropped), (100, 100, 0), "{r}");
        assert!(!a.exists(), "the listening socket file is removed on exit");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_connect_port_with_no_listener_honours_the_deadline() {
        let d = dir("deadline");
        let mut cfg = NfProcConfig::new("fwd", vec![PortSpec::Connect(d.join("none.sock"))]);
        cfg.deadline = Some(Instant::now() + Duration::from_millis(300));
        let t0 = Instant::now();
        let e = run_nf_proc(cfg).unwrap_err().to_string();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(e.starts_with("port 0 (connect:"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
