//! A chain with one process per NF (`braid run-procs`, `braid run
//! --mapping processes`): every NF is a `braid nf-proc` child, supervised
//! ([`crate::supervisor`]), linked to its neighbours by shared-memory
//! ports in a socket directory.
//!
//! NF `i` gets its gates as ports: gate 0 connects to the link from NF
//! `i-1` (the first NF listens on `DIR/in.sock`), gate 1 listens on the
//! link to NF `i+1` (the last NF listens on `DIR/out.sock`). Nothing here
//! looks at the NF kind: a switching NF (router, l2switch) picks gate 0 or
//! 1 itself; further gates of a switching NF stay unconnected.
//!
//! [`run_processes`] runs a chain offline this way: an edge [`Worker`] in
//! the calling process owns the input and output ports and the two
//! shared-memory ports to the first and the last NF process.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_dataplane::{Endpoint, Graph, Idle, Worker, WorkerConfig, WorkerError};
use braid_io::shm::ShmPort;
use braid_io::{Port, PortError, PortStats, WaitReadiness};
use braid_packet::Batch;

use crate::descriptor::ChainDescriptor;
use crate::procs::{NfProcStats, ReconnectingPort};
use crate::supervisor::{Event, ProcSpec, RestartPolicy, Supervisor};
use crate::StageSnapshot;

/// Why a chain of NF processes could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProcChainError {
    #[error("chain `{0}` has no NFs")]
    Empty(String),
    #[error("nfs[{index}] ({name}): params: {source}")]
    Params {
        index: usize,
        name: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("NF {0} failed and was given up; the chain is stopped")]
    GaveUp(String),
    #[error("the NF processes did not listen on {path} within {seconds} s: {source}")]
    Connect {
        path: PathBuf,
        seconds: u64,
        #[source]
        source: PortError,
    },
    #[error("mapping `{0}` is not `processes`")]
    Mapping(&'static str),
    #[error("edge worker: {0}")]
    Worker(#[from] WorkerError),
    #[error("the edge worker thread panicked")]
    Panicked,
    #[error(transparent)]
    Coordinator(#[from] crate::coordinator::CoordError),
}

/// Where NF `index` writes its final counters (`nf-proc --stats`).
pub fn stats_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("nf{index}.stats.json"))
}

/// How the NF processes idle (their `--idle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildIdle {
    Busy,
    Sleep,
}

/// The `braid nf-proc` argument lists for each NF of the chain (see the
/// module documentation), named by NF instance.
pub fn nf_commands(
    d: &ChainDescriptor,
    dir: &Path,
    idle: ChildIdle,
) -> Result<Vec<(String, Vec<String>)>, ProcChainError> {
    let n = d.nfs.len();
    if n == 0 {
        return Err(ProcChainError::Empty(d.name.clone()));
    }
    let sock = |name: &str| dir.join(format!("{name}.sock")).display().to_string();
    let mut out = Vec::new();
    for (i, nf) in d.nfs.iter().enumerate() {
        let port0 = if i == 0 {
            format!("listen:{}", sock("in"))
        } else {
            format!("connect:{}", sock(&format!("link{}", i - 1)))
        };
        let port1 = if i + 1 == n {
            format!("listen:{}", sock("out"))
        } else {
            format!("listen:{}", sock(&format!("link{i}")))
        };
        let mut args = vec![
            "nf-proc".into(),
            "--nf".into(),
            nf.kind.clone(),
            "--name".into(),
            nf.name.clone(),
            "--port".into(),
            port0,
            "--port".into(),
            port1,
        ];
        if !nf.params.is_null() {
            let params = serde_yaml_ng::to_string(&nf.params).map_err(|source| {
                ProcChainError::Params { index: i, name: nf.name.clone(), source }
            })?;
            args.extend(["--params".into(), params]);
        }
        args.extend(["--stats".into(), stats_file(dir, i).display().to_string()]);
        let control = crate::nf_control::control_socket(dir, i);
        args.extend(["--control".into(), control.display().to_string()]);
        args.extend([
            "--carry".into(),
            crate::nf_control::carry_file(dir, i).display().to_string(),
        ]);
        // The NF's `sched` over the chain's (the coordinator's settings).
        let decl = crate::coordinator::unit_decl(d, &nf.name, &[i])?;
        let set = crate::coordinator::to_settings(&nf.name, &decl, child_idle(idle), d.batch_size)?;
        args.extend(["--batch".into(), set.batch_size.to_string()]);
        args.extend(["--idle".into(), idle_arg(set.idle).into()]);
        args.extend(sched_args(&set.sched));
        if set.adapt {
            args.push("--adapt".into());
        }
        out.push((nf.name.clone(), args));
    }
    Ok(out)
}

/// `braid nf-proc --idle` for a worker idle policy.
fn idle_arg(idle: Idle) -> &'static str {
    match idle {
        Idle::Busy => "busy",
        Idle::Poll => "sleep",
        Idle::Sleep => "nap",
    }
}

/// `braid nf-proc` arguments for a scheduling setting (none for the
/// default).
pub fn sched_args(s: &braid_dataplane::Sched) -> Vec<String> {
    use braid_dataplane::SchedPolicy;
    let mut args = Vec::new();
    let (policy, prio) = match s.policy {
        SchedPolicy::Other => ("other", None),
        SchedPolicy::Batch => ("batch", None),
        SchedPolicy::Idle => ("idle", None),
        SchedPolicy::Fifo(p) => ("fifo", Some(p)),
        SchedPolicy::Rr(p) => ("rr", Some(p)),
    };
    if s.policy != SchedPolicy::Other {
        args.extend(["--policy".into(), policy.into()]);
    }
    if let Some(p) = prio {
        args.extend(["--priority".into(), p.to_string()]);
    }
    if let Some(n) = s.nice {
        args.push(format!("--nice={n}"));
    }
    if let Some(us) = s.slice_us {
        args.extend(["--slice-us".into(), us.to_string()]);
    }
    if !s.cpus.is_empty() {
        args.extend(["--cpus".into(), crate::coordinator::cpu_list(&s.cpus)]);
    }
    args
}

/// Where the first NF of the chain with sockets in `dir` takes packets in.
pub fn input_socket(dir: &Path) -> PathBuf {
    dir.join("in.sock")
}

/// Where the last NF of the chain with sockets in `dir` sends packets out.
pub fn output_socket(dir: &Path) -> PathBuf {
    dir.join("out.sock")
}

/// The socket directory of a chain of processes. Dropping it removes the
/// socket files, and the directory itself when it was created here.
#[derive(Debug)]
pub struct SocketDir {
    path: PathBuf,
    created: bool,
}

impl SocketDir {
    /// Use `path`, creating it if needed (then it is removed on drop).
    pub fn at(path: PathBuf) -> Result<SocketDir, ProcChainError> {
        let created = !path.exists();
        let dir_err = |source| ProcChainError::Dir { path: path.clone(), source };
        std::fs::create_dir_all(&path).map_err(dir_err)?;
        if created {
            // Only the owner's user may reach the NFs' ports and control
            // sockets (a control socket changes an NF and reads its state).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                .map_err(dir_err)?;
        }
        Ok(SocketDir { path, created })
    }

    /// A fresh directory in the system's temporary folder.
    pub fn temporary(tag: &str) -> Result<SocketDir, ProcChainError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        // Only characters that are safe in a file name.
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .collect();
        SocketDir::at(std::env::temp_dir().join(format!("braid-{tag}-{}-{n}", std::process::id())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the first NF takes packets in.
    pub fn input(&self) -> PathBuf {
        input_socket(&self.path)
    }

    /// Where the last NF sends packets out.
    pub fn output(&self) -> PathBuf {
        output_socket(&self.path)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir_all(&self.path);
            return;
        }
        // A directory the caller gave: remove only the sockets of a chain.
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name == "in.sock" || name == "out.sock" || name.starts_with("link") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// How [`run_processes`] runs.
#[derive(Clone, Debug)]
pub struct ProcessesConfig {
    /// The `braid` binary to start as `braid nf-proc` (e.g.
    /// `std::env::current_exe()`).
    pub exe: PathBuf,
    pub restart: RestartPolicy,
    /// Kill an NF process whose heartbeat stops for this long.
    pub watchdog: Option<Duration>,
    /// How the NF processes idle. `Sleep` suits offline runs on shared
    /// cores; `Busy` gives the lowest latency.
    pub idle: ChildIdle,
    /// The run ends once the input is at its end and no packet has moved
    /// through the edge's ports for this long.
    pub quiet: Duration,
    /// How long to wait for the NF processes to listen.
    pub start_timeout: Duration,
    /// Send the children's output to /dev/null.
    pub quiet_children: bool,
}

impl ProcessesConfig {
    pub fn new(exe: PathBuf) -> ProcessesConfig {
        ProcessesConfig {
            exe,
            restart: RestartPolicy::on_failure(5),
            watchdog: Some(Duration::from_secs(2)),
            idle: ChildIdle::Sleep,
            quiet: Duration::from_millis(300),
            start_timeout: Duration::from_secs(30),
            quiet_children: false,
        }
    }
}

/// What [`run_processes`] did.
#[derive(Debug)]
pub struct ProcessesReport {
    pub input: PortStats,
    pub output: PortStats,
    /// Edge -> first NF, last NF -> edge.
    pub to_first: PortStats,
    pub from_last: PortStats,
    /// Supervisor events (starts with pids, exits, restarts), in order.
    pub events: Vec<Event>,
    /// Per NF, in chain order: the counters each NF process wrote when it
    /// stopped. An NF restarted during the run counts from its last start.
    pub stages: Vec<StageSnapshot>,
    /// NFs whose counters could not be read (a process killed before it
    /// wrote them): their `stages` entry is all zeros, and why.
    pub stats_missing: Vec<(String, String)>,
    /// The socket directory the run used (removed when it returns).
    pub socket_dir: PathBuf,
    pub elapsed: Duration,
}

/// Run chain `d` offline with one process per NF: read `input` to its end
/// through the NF processes into `output` (what leaves the chain either
/// way, downstream from the last NF or upstream from the first, goes to
/// `output`).
///
/// The run ends when the input is at its end and no packet has moved
/// through any of the edge's ports for `cfg.quiet` (what is still inside
/// an NF process then is what it holds back or dropped). Then the edge
/// worker stops, the NF processes get SIGTERM (SIGKILL after 1 s), and the
/// socket directory is removed. An NF given up by the supervisor stops the
/// run with [`ProcChainError::GaveUp`].
///
/// The supervisor lives on the calling thread: children die with it
/// (`PR_SET_PDEATHSIG` follows the thread that started them).
pub fn run_processes(
    d: &ChainDescriptor,
    input: &mut dyn Port,
    output: &mut dyn Port,
    cfg: &ProcessesConfig,
) -> Result<ProcessesReport, ProcChainError> {
    let start = Instant::now();
    // Every NF process's and the edge's scheduling, refused before any
    // process starts if it would starve the machine or cannot be applied.
    let all = process_settings(d, Idle::Poll, cfg.idle)?;
    crate::coordinator::prepare(&all)?;
    let dir = SocketDir::temporary(&d.name)?;
    let mut sup = Supervisor::new(nf_specs(d, dir.path(), cfg)?);
    if cfg.quiet_children {
        sup = sup.quiet();
    }
    let mut events = sup.start();
    let (to_first, from_last) = connect_edge(&mut sup, &mut events, dir.path(), cfg.start_timeout)?;

    let stop = Arc::new(AtomicBool::new(false));
    let input_ended = Arc::new(AtomicBool::new(false));
    // Only the input is gated: the edge always drains what comes back from
    // the chain, or full queues both ways could wait on each other.
    let wc = edge_config(&all[0], stop.clone());
    // No stages: the edge only moves packets between its ports. Port 0
    // output; 1 to (and back from) the first NF; 2 from (and to) the last
    // NF; 3 input, into the first NF.
    let (mut w, handle) = Worker::new(wc, Graph::new(Vec::new(), 0))?;
    w.add_port(Box::new(output), None)?;
    w.add_port(Box::new(to_first), Some(Endpoint::Port(0)))?;
    w.add_port(Box::new(from_last), Some(Endpoint::Port(0)))?;
    let ended = input_ended.clone();
    let input_port =
        w.add_port(Box::new(EndWatch { inner: input, ended }), Some(Endpoint::Port(1)))?;
    w.set_backpressure(input_port, true);
    let report = std::thread::scope(|s| -> Result<_, ProcChainError> {
        let worker = s.spawn(move || w.run());
        let mut last_moved = None;
        let mut quiet_since = Instant::now();
        let outcome = loop {
            std::thread::sleep(Duration::from_millis(10));
            if let Err(e) = watch(&mut sup, &mut events) {
                break Err(e);
            }
            if worker.is_finished() {
                break Ok(());
            }
            let snap = handle.snapshot();
            let moved: u64 =
                snap.ports.iter().map(|p| p.stats.rx_packets + p.stats.tx_packets).sum();
            if last_moved != Some(moved) {
                last_moved = Some(moved);
                quiet_since = Instant::now();
            } else if input_ended.load(Ordering::Relaxed) && quiet_since.elapsed() >= cfg.quiet {
                break Ok(());
            }
        };
        stop.store(true, Ordering::Relaxed);
        let report = worker.join().map_err(|_| ProcChainError::Panicked)?;
        outcome.map(|()| report)
    });
    sup.stop(Duration::from_secs(1));
    events.extend(sup.poll());
    let (stages, stats_missing) = read_stages(d, dir.path());
    let socket_dir = dir.path().to_path_buf();
    drop(dir);
    let report = report?;
    if let Some(e) = report.error {
        return Err(e.into());
    }
    let port = |i: usize| report.ports.get(i).copied().unwrap_or_default();
    Ok(ProcessesReport {
        input: port(3),
        output: port(0),
        to_first: port(1),
        from_last: port(2),
        events,
        stages,
        stats_missing,
        socket_dir,
        elapsed: start.elapsed(),
    })
}

/// The name of chain `d`'s edge worker (the one that owns its ports).
pub fn edge_name(d: &ChainDescriptor) -> String {
    format!("edge-{}", d.name)
}

/// The worker idle policy of an NF process that idles `idle`.
fn child_idle(idle: ChildIdle) -> Idle {
    match idle {
        ChildIdle::Busy => Idle::Busy,
        ChildIdle::Sleep => Idle::Poll,
    }
}

/// The scheduling of chain `d`'s edge worker (first, idling `edge_idle`
/// by default) and of each NF process (idling `children` by default), in
/// chain order, each resolved from the descriptor's `sched` blocks; not
/// yet checked against the machine ([`crate::coordinator::prepare`]).
pub fn process_settings(
    d: &ChainDescriptor,
    edge_idle: Idle,
    children: ChildIdle,
) -> Result<Vec<crate::coordinator::WorkerSettings>, crate::coordinator::CoordError> {
    let mut all = vec![crate::coordinator::edge_settings(d, &edge_name(d), edge_idle)?];
    for (i, nf) in d.nfs.iter().enumerate() {
        let decl = crate::coordinator::unit_decl(d, &nf.name, &[i])?;
        all.push(crate::coordinator::to_settings(
            &nf.name,
            &decl,
            child_idle(children),
            d.batch_size,
        )?);
    }
    Ok(all)
}

/// The supervised `nf-proc` children of chain `d`, their sockets and
/// stats files in `dir` ([`nf_commands`]), run as `cfg.exe`.
pub fn nf_specs(
    d: &ChainDescriptor,
    dir: &Path,
    cfg: &ProcessesConfig,
) -> Result<Vec<ProcSpec>, ProcChainError> {
    Ok(nf_commands(d, dir, cfg.idle)?
        .into_iter()
        .map(|(name, args)| ProcSpec {
            name,
            program: cfg.exe.clone(),
            args,
            netns: None,
            policy: cfg.restart,
            watchdog: cfg.watchdog,
        })
        .collect())
}

/// One look at the supervisor: [`ProcChainError::GaveUp`] for an NF that
/// failed for good, else its new events appended to `events`.
pub fn watch(sup: &mut Supervisor, events: &mut Vec<Event>) -> Result<(), ProcChainError> {
    match sup.given_up() {
        Some(name) => Err(ProcChainError::GaveUp(name.to_string())),
        None => {
            events.extend(sup.poll());
            Ok(())
        }
    }
}

/// Connect the edge to the first NF (`in.sock`) and the last (`out.sock`)
/// of the chain in `dir`: wait for each socket file (the NF listens),
/// watching the supervisor, then connect; the handshake completes once
/// the NF's loop runs. (A connection given up half-way would be a peer
/// that vanished mid handshake, which the NF's port reports as an
/// error.) Both ports reconnect by themselves when their NF restarts.
pub fn connect_edge(
    sup: &mut Supervisor,
    events: &mut Vec<Event>,
    dir: &Path,
    timeout: Duration,
) -> Result<(ReconnectingPort, ReconnectingPort), ProcChainError> {
    let mut connect = |path: PathBuf| -> Result<ReconnectingPort, ProcChainError> {
        let deadline = Instant::now() + timeout;
        while !path.exists() && Instant::now() < deadline {
            watch(sup, events)?;
            std::thread::sleep(Duration::from_millis(5));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match ShmPort::connect(&path, left) {
            Ok(p) => Ok(ReconnectingPort::new(path, p)),
            Err(source) => {
                watch(sup, events)?;
                Err(ProcChainError::Connect { path, seconds: timeout.as_secs(), source })
            }
        }
    };
    let to_first = connect(input_socket(dir))?;
    let from_last = connect(output_socket(dir))?;
    Ok((to_first, from_last))
}

/// The edge worker's configuration from its settings (the first of
/// [`process_settings`]), stopping when `stop` is set. Backpressure is
/// off: the edge always drains what comes back from the NF processes (or
/// full queues both ways could wait on each other); the caller turns it
/// on for the ports that bring packets into the chain.
pub fn edge_config(
    set: &crate::coordinator::WorkerSettings,
    stop: Arc<AtomicBool>,
) -> WorkerConfig {
    let mut wc = WorkerConfig::new(set.name.clone());
    wc.batch_size = set.batch_size;
    wc.idle = set.idle;
    wc.sched = set.sched.clone();
    wc.backpressure = false;
    wc.stop_flag = Some(stop);
    wc
}

/// The counters the NF processes left in `dir`, in chain order.
fn read_stages(d: &ChainDescriptor, dir: &Path) -> (Vec<StageSnapshot>, Vec<(String, String)>) {
    let mut stages = Vec::with_capacity(d.nfs.len());
    let mut missing = Vec::new();
    for (i, nf) in d.nfs.iter().enumerate() {
        let spec = braid_nf::registry::find(&nf.kind);
        let counters = match NfProcStats::read(&stats_file(dir, i)) {
            Ok(s) => s.counters,
            Err(e) => {
                missing.push((nf.name.clone(), e.to_string()));
                Default::default()
            }
        };
        stages.push(StageSnapshot {
            name: nf.name.clone(),
            kind: spec.map_or("?", |s| s.name),
            class: spec.map_or(braid_nf::NfClass::Basic, |s| s.class),
            counters,
        });
    }
    (stages, missing)
}

/// The input port, raising `ended` once it is at its end.
struct EndWatch<'a> {
    inner: &'a mut dyn Port,
    ended: Arc<AtomicBool>,
}

impl Port for EndWatch<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        let r = self.inner.recv(batch, max);
        if self.inner.at_end() {
            self.ended.store(true, Ordering::Relaxed);
        }
        r
    }
    fn send(&mut self, batch: &mut Batch) -> Result<usize, PortError> {
        self.inner.send(batch)
    }
    fn flush(&mut self) -> Result<(), PortError> {
        self.inner.flush()
    }
    fn wait(&mut self, timeout: Duration) -> Result<(), PortError> {
        self.inner.wait(timeout)
    }
    fn at_end(&self) -> bool {
        self.inner.at_end()
    }
    fn tx_room(&mut self) -> usize {
        self.inner.tx_room()
    }
    fn prepare_wait(&mut self, fds: &mut Vec<std::os::fd::RawFd>) -> WaitReadiness {
        self.inner.prepare_wait(fds)
    }
    fn finish_wait(&mut self) {
        self.inner.finish_wait()
    }
    fn stats(&self) -> PortStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_nf_process_gets_its_sched_settings() {
        let d = crate::validate::validate_str(
            "t.yaml",
            "name: c\nsched: { nice: 4 }\nnfs:\n  - { name: a, type: fwd, sched: { policy: batch, cpus: [0], idle: busy, batch_size: 8 } }\n  - { name: b, type: fwd }\n",
        )
        .descriptor
        .unwrap();
        let cmds = nf_commands(&d, Path::new("/tmp/x"), ChildIdle::Sleep).unwrap();
        let tail = |i: usize| {
            cmds[i].1[cmds[i].1.iter().position(|a| a == "--batch").unwrap()..].join(" ")
        };
        assert_eq!(tail(0), "--batch 8 --idle busy --policy batch --nice=4 --cpus 0");
        assert_eq!(tail(1), "--batch 32 --idle sleep --nice=4");
        // Disagreeing settings cannot happen here (one NF per process),
        // but invalid ones built in code are refused with the NF's name.
        let mut bad = d.clone();
        bad.nfs[1].sched = Some(crate::SchedDecl { priority: Some(5), ..Default::default() });
        let e = nf_commands(&bad, Path::new("/tmp/x"), ChildIdle::Sleep).unwrap_err().to_string();
        assert!(
            e.starts_with("worker `b`: sched.priority: `priority` is for the real-time"),
            "{e}"
        );
    }
}
