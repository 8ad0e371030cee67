//! A chain of NF processes that keeps running (`mapping: processes` in
//! braidd): every NF is a supervised `nf-proc` child linked to its
//! neighbours by shared-memory ports in a socket directory (as
//! [`crate::proc_chain`] lays them out), and an edge [`Worker`] thread in
//! the owner's process owns the descriptor's live `in` and `out` ports and
//! the shared-memory ports to the first and the last NF process.
//!
//! The supervisor runs on a thread of its own for the chain's whole life:
//! the children die with the thread that started them
//! (`PR_SET_PDEATHSIG`), so it must be a thread that lives as long as the
//! chain (not a pooled one), and it restarts them from there too. A child
//! that fails is restarted per the restart policy; the edge's ports and the
//! neighbours' `connect:` ports join the restarted one by themselves. A
//! child given up stops the chain: the edge worker stops (no packet
//! crosses a chain with an NF missing), the other children get SIGTERM,
//! and [`LiveProcesses::state`] says which NF was given up.
//!
//! Per-NF counters come from the stats files the NF processes rewrite
//! every [`crate::procs::STATS_INTERVAL`] (200 ms): a reading is at most
//! that old. When a child exits, its last file is carried into the NF's
//! totals before the restarted one writes its own, so the counters do not
//! go back; what a killed child counted after its last write is lost.
//!
//! Parameters and scheduling change live, and states are exported
//! (checkpoints) and imported (restores), through each NF process's
//! control socket ([`crate::nf_control`]). What changed is also kept in the
//! NF's carry file, so a restarted NF process comes back with the current
//! parameters and scheduling and the last checkpointed state, not with
//! what it was started with.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use braid_dataplane::{Endpoint, Graph, Worker, WorkerHandle, WorkerReport, WorkerSnapshot};
use braid_nf::Counters;

use crate::chain::ChainSnapshot;
use crate::descriptor::{ChainDescriptor, WorkerMapping};
use crate::live::{LiveError, LiveState, StartOptions};
use crate::nf_control::{CaptureRefusal, Carry, Reply, Request, SchedSettings};
use crate::proc_chain::{ChildIdle, ProcChainError, ProcessesConfig, SocketDir};
use crate::procs::{NfProcStats, ReconnectingPort};
use crate::runner::RunReport;
use crate::supervisor::{file_name_part, Event, Supervisor};
use crate::StageSnapshot;

/// How often the supervisor thread looks at its children.
const SUPERVISE_EVERY: Duration = Duration::from_millis(20);
/// How long stopped children get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Supervisor events kept for the owner to show (the latest).
const EVENTS_KEPT: usize = 32;

/// One NF process as the supervisor last saw it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NfProcess {
    /// The NF instance name.
    pub name: String,
    /// Its running process, if one runs.
    pub pid: Option<u32>,
    /// Times it was restarted.
    pub restarts: u32,
}

/// Copies an NF process's worker telemetry: (snapshot, pid, worker thread
/// id), or why it could not.
pub type TelemetryCopy =
    dyn Fn() -> Result<(WorkerSnapshot, u32, Option<u32>), String> + Send + Sync;

/// A capture started in an NF process (its pcapng stream), or refused.
pub type CaptureStart = Result<std::os::unix::net::UnixStream, (CaptureRefusal, String)>;

/// What the supervisor thread shares with the chain's owner.
struct Supervision {
    nfs: Vec<NfProcess>,
    /// Per NF, what its processes that exited had counted.
    carried: Vec<Counters>,
    /// The latest supervisor events, as text, oldest first.
    events: VecDeque<String>,
    /// The NF given up (the chain is stopped).
    given_up: Option<String>,
}

/// The threads of a running chain, until [`LiveProcesses::stop`].
struct Running {
    edge: Option<JoinHandle<WorkerReport>>,
    /// How the edge worker ended, once it did by itself.
    edge_ended: Option<Box<WorkerReport>>,
    supervisor: JoinHandle<()>,
    stop_supervisor: Arc<AtomicBool>,
}

/// A running chain of NF processes (see the module documentation).
/// Dropping it stops the edge, the processes, and removes the socket
/// directory.
pub struct LiveProcesses {
    name: String,
    /// As declared, with the live changes made since the start.
    descriptor: Mutex<ChainDescriptor>,
    /// Per NF, what a restarted process of it must start from (written to
    /// its carry file after each change). One lock for all: changes to a
    /// chain are rare and each is written before the next.
    carry: Mutex<Vec<Carry>>,
    /// How it was started: the edge's idle policy (the processes' follows
    /// from it), how long an NF process may take to answer a request.
    start_opts: StartOptions,
    edge: WorkerHandle,
    stop_edge: Arc<AtomicBool>,
    shared: Arc<Mutex<Supervision>>,
    running: Mutex<Option<Running>>,
    /// Removed on stop, after the children ended.
    socket_dir: Mutex<Option<SocketDir>>,
    dir: PathBuf,
    started: Instant,
}

impl std::fmt::Debug for LiveProcesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveProcesses").field("name", &self.name).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only plain assignments happen under these locks.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The NF processes' idle policy for an owner whose workers idle `idle`.
fn children_idle(idle: braid_dataplane::Idle) -> ChildIdle {
    match idle {
        braid_dataplane::Idle::Busy => ChildIdle::Busy,
        _ => ChildIdle::Sleep,
    }
}

/// The settings of every worker of processes chain `d` started with
/// `opts`: the edge first, then each NF process, in chain order (for the
/// host-wide starvation check).
pub fn worker_settings(
    d: &ChainDescriptor,
    opts: &StartOptions,
) -> Result<Vec<crate::coordinator::WorkerSettings>, crate::coordinator::CoordError> {
    crate::proc_chain::process_settings(d, opts.idle, children_idle(opts.idle))
}

impl LiveProcesses {
    /// Start chain `d` (`mapping: processes`): open its `in` and `out`
    /// ports, start one `cfg.exe nf-proc` child per NF with its sockets
    /// and stats files in `dir` (emptied first: it may hold what a killed
    /// owner left), connect the edge to the first and the last NF, and run
    /// the edge worker. Nothing runs and `dir` is gone if this fails.
    pub fn start(
        d: &ChainDescriptor,
        opts: &StartOptions,
        cfg: &ProcessesConfig,
        dir: PathBuf,
    ) -> Result<LiveProcesses, LiveError> {
        let chain = || d.name.clone();
        let procs = |source| LiveError::Processes { chain: chain(), source };
        if d.mapping != Some(WorkerMapping::Processes) {
            let mapping = d.mapping.unwrap_or_default().name();
            return Err(procs(ProcChainError::Mapping(mapping)));
        }
        crate::live::check_ports(d)?;
        let settings = worker_settings(d, opts)
            .and_then(|s| crate::coordinator::prepare(&s).map(|()| s))
            .map_err(|source| LiveError::Sched { chain: chain(), source })?;
        // Every NF must build here: a bad parameter is refused now rather
        // than by a child that would fail and be restarted.
        crate::chain::build_nfs(d).map_err(|source| LiveError::Build { chain: chain(), source })?;
        let client = crate::live::open_port(d, "in")?;
        let server = crate::live::open_port(d, "out")?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|source| procs(ProcChainError::Dir { path: dir.clone(), source }))?;
        }
        let socket_dir = SocketDir::at(dir.clone()).map_err(procs)?;
        let specs = crate::proc_chain::nf_specs(d, &dir, cfg).map_err(procs)?;
        let shared = Arc::new(Mutex::new(Supervision {
            nfs: specs
                .iter()
                .map(|s| NfProcess { name: s.name.clone(), pid: None, restarts: 0 })
                .collect(),
            carried: vec![Counters::default(); specs.len()],
            events: VecDeque::new(),
            given_up: None,
        }));
        let stop_edge = Arc::new(AtomicBool::new(false));
        let stop_supervisor = Arc::new(AtomicBool::new(false));
        let (connected, edge_ports) = mpsc::channel();
        let supervisor = {
            let job = SupervisorJob {
                sup: Supervisor::new(specs),
                shared: shared.clone(),
                dir: dir.clone(),
                stop_edge: stop_edge.clone(),
                stop: stop_supervisor.clone(),
                start_timeout: cfg.start_timeout,
            };
            std::thread::Builder::new()
                .name(format!("sup-{}", d.name))
                .spawn(move || job.run(connected))
                .map_err(|source| LiveError::Thread { chain: chain(), source })?
        };
        // Stops the supervisor (and so the children) when a later step
        // fails; the socket directory goes with `socket_dir`.
        let abandon = |supervisor: JoinHandle<()>| {
            stop_supervisor.store(true, Ordering::Relaxed);
            let _ = supervisor.join();
        };
        let (to_first, from_last) = match edge_ports.recv() {
            Ok(Ok(ports)) => ports,
            Ok(Err(e)) => {
                abandon(supervisor);
                return Err(procs(e));
            }
            Err(_) => {
                abandon(supervisor);
                return Err(procs(ProcChainError::Panicked));
            }
        };
        let worker_err = |source| LiveError::Worker { chain: chain(), source };
        let edge = (|| {
            let wc = crate::proc_chain::edge_config(&settings[0], stop_edge.clone());
            // No stages: port 0 (`in`) <-> port 1 (the first NF), port 2
            // (the last NF) <-> port 3 (`out`). The live ports bring
            // packets in only while the NF side can take them.
            let (mut w, handle) = Worker::new(wc, Graph::new(Vec::new(), 0))?;
            w.add_port(client, None)?;
            w.add_port(Box::new(to_first), Some(Endpoint::Port(0)))?;
            w.add_port(Box::new(from_last), None)?;
            w.add_port(server, Some(Endpoint::Port(2)))?;
            w.set_rx_to(0, Some(Endpoint::Port(1)))?;
            w.set_rx_to(2, Some(Endpoint::Port(3)))?;
            w.set_backpressure(0, true);
            w.set_backpressure(3, true);
            Ok((w, handle))
        })()
        .map_err(worker_err);
        let (w, handle) = match edge {
            Ok(e) => e,
            Err(e) => {
                abandon(supervisor);
                return Err(e);
            }
        };
        let edge_thread = match w.spawn() {
            Ok(t) => t,
            Err(source) => {
                abandon(supervisor);
                return Err(LiveError::Thread { chain: chain(), source });
            }
        };
        Ok(LiveProcesses {
            name: d.name.clone(),
            descriptor: Mutex::new(d.clone()),
            carry: Mutex::new(vec![Carry::default(); d.nfs.len()]),
            start_opts: opts.clone(),
            edge: handle,
            stop_edge,
            shared,
            running: Mutex::new(Some(Running {
                edge: Some(edge_thread),
                edge_ended: None,
                supervisor,
                stop_supervisor,
            })),
            socket_dir: Mutex::new(Some(socket_dir)),
            dir,
            started: Instant::now(),
        })
    }

    /// The chain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor it runs, with the live changes made since the
    /// start.
    pub fn descriptor(&self) -> ChainDescriptor {
        lock(&self.descriptor).clone()
    }

    /// NF `nf`'s index in the chain.
    fn index_of(&self, nf: &str) -> Result<usize, LiveError> {
        let d = lock(&self.descriptor);
        d.nfs.iter().position(|n| n.name == nf).ok_or_else(|| LiveError::UnknownNf {
            chain: self.name.clone(),
            nf: nf.to_string(),
            known: d.nfs.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    /// Send `req` to NF `index`'s process; a refusal or an unreachable
    /// process is an error naming the NF.
    fn ask(&self, index: usize, req: &Request) -> Result<Reply, LiveError> {
        let nf = lock(&self.descriptor).nfs[index].name.clone();
        let refused = |why: String| LiveError::NfProcess { chain: self.name.clone(), nf, why };
        let socket = crate::nf_control::control_socket(&self.dir, index);
        match crate::nf_control::request(&socket, req, self.start_opts.control_timeout) {
            Ok(Reply::Refused(why)) => Err(refused(why)),
            Ok(r) => Ok(r),
            Err(e) => Err(refused(format!(
                "no answer (is it running? see the chain's processes and events): {e}"
            ))),
        }
    }

    /// For a live profile: per NF, in chain order, a function that copies
    /// its worker's telemetry from its process (the snapshot, its one
    /// stage named as the NF; the process's pid; the worker thread's id).
    /// Each copy is one request on the NF's control socket, answered from
    /// the worker's lock-free cells (the worker is not asked anything).
    pub fn nf_workers(&self) -> Vec<(String, Arc<TelemetryCopy>)> {
        let timeout = self.start_opts.control_timeout;
        self.descriptor()
            .nfs
            .into_iter()
            .enumerate()
            .map(|(i, nf)| {
                let socket = crate::nf_control::control_socket(&self.dir, i);
                let worker = format!("nf-proc-{}", file_name_part(&nf.name));
                let copy =
                    move || match crate::nf_control::request(&socket, &Request::Telemetry, timeout)
                    {
                        Ok(Reply::Telemetry(t)) => {
                            Ok((t.snapshot(&nf.name, &nf.kind), t.pid, t.tid))
                        }
                        Ok(Reply::Refused(why)) => Err(why),
                        Ok(_) => Err("an answer that is not telemetry".to_string()),
                        Err(e) => Err(format!("no answer (is its process running?): {e}")),
                    };
                (worker, Arc::new(copy) as Arc<TelemetryCopy>)
            })
            .collect()
    }

    /// Prepare a planned stop so that a checkpoint taken next holds every
    /// packet's effect, as [`crate::live::LiveChain::quiesce`] does for
    /// worker threads: the edge worker processes what waits and pauses,
    /// and drops what `in` and `out` receive from then on before it
    /// reaches an NF process; each NF process, in chain order, drains and
    /// pauses (a `Drain` request); then rounds of drains downstream and
    /// back carry what is still in the shared-memory channels through,
    /// until a round in which no NF saw a packet (at most
    /// [`crate::live::QUIESCE_ROUNDS`]).
    pub fn quiesce(&self) -> Result<crate::live::Quiesced, LiveError> {
        let control = |source| LiveError::Control { chain: self.name.clone(), source };
        let timeout = self.start_opts.control_timeout;
        let drain_edge = || match self.edge.request(braid_dataplane::Command::Drain, timeout) {
            Ok(braid_dataplane::Reply::Drained { packets }) => Ok(packets),
            Ok(_) => Err(control(braid_dataplane::ControlError::Unexpected("Drain".into()))),
            Err(e) => Err(control(e)),
        };
        let mut packets = drain_edge()?;
        // The edge's ports 0 (`in`) and 3 (`out`) are the live ones.
        for port in [0, 3] {
            let command = braid_dataplane::Command::Reroute {
                stage: String::new(),
                output: braid_dataplane::control::Output::PortRx(port),
                to: Endpoint::Drop,
            };
            self.edge.request(command, timeout).map_err(control)?;
        }
        let n = lock(&self.descriptor).nfs.len();
        let drain = |index: usize| -> Result<u64, LiveError> {
            match self.ask(index, &Request::Drain)? {
                Reply::Drained(p) => Ok(p),
                _ => Err(LiveError::NfProcess {
                    chain: self.name.clone(),
                    nf: lock(&self.descriptor).nfs[index].name.clone(),
                    why: "an answer to a drain that is not one".into(),
                }),
            }
        };
        for index in 0..n {
            packets += drain(index)?;
        }
        let nf_packets = |s: &Self| -> u64 {
            s.nf_workers()
                .iter()
                .filter_map(|(_, copy)| copy().ok())
                .map(|(snap, _, _)| {
                    snap.stages.iter().map(|st| st.counters.packets_in).sum::<u64>()
                })
                .sum()
        };
        let mut seen = nf_packets(self);
        let mut rounds = 0;
        while rounds < crate::live::QUIESCE_ROUNDS {
            rounds += 1;
            for index in 0..n {
                packets += drain(index)?;
            }
            // What left the last NF goes out (and what the NFs sent back
            // towards `in`).
            packets += drain_edge()?;
            for index in (0..n).rev() {
                packets += drain(index)?;
            }
            packets += drain_edge()?;
            let now = nf_packets(self);
            if now == seen {
                break;
            }
            seen = now;
        }
        Ok(crate::live::Quiesced { packets, rounds })
    }

    /// Start a capture of NF `req.nf` in its process: the connection its
    /// pcapng stream comes on (closing it ends the capture), or why the
    /// process refused ([`crate::nf_control::start_capture`]).
    pub fn start_capture(
        &self,
        req: &braid_dataplane::tap::CaptureRequest,
    ) -> Result<CaptureStart, LiveError> {
        let index = self.index_of(&req.nf)?;
        let socket = crate::nf_control::control_socket(&self.dir, index);
        crate::nf_control::start_capture(&socket, req, self.start_opts.control_timeout).map_err(
            |e| LiveError::NfProcess {
                chain: self.name.clone(),
                nf: req.nf.clone(),
                why: format!("no answer (is it running?): {e}"),
            },
        )
    }

    /// Change what NF `index`'s restarted process starts from, and write
    /// its carry file. A carry file that cannot be written leaves the
    /// running process changed but a restart would not be: an error.
    fn carry(&self, index: usize, change: impl FnOnce(&mut Carry)) -> Result<(), LiveError> {
        let mut carry = lock(&self.carry);
        change(&mut carry[index]);
        carry[index].write(&crate::nf_control::carry_file(&self.dir, index)).map_err(|e| {
            LiveError::NfProcess {
                chain: self.name.clone(),
                nf: lock(&self.descriptor).nfs[index].name.clone(),
                why: format!("changed, but a restart would not keep it: {e}"),
            }
        })
    }

    /// Change NF `nf`'s parameters live (its process rebuilds the NF and
    /// carries its state over, as a thread chain's worker does). Nothing
    /// changes if the process refuses.
    pub fn reconfigure(&self, nf: &str, params: braid_nf::Params) -> Result<(), LiveError> {
        let index = self.index_of(nf)?;
        self.ask(index, &Request::Reconfigure(params.clone()))?;
        lock(&self.descriptor).nfs[index].params = params.clone();
        self.carry(index, |c| c.params = Some(params))
    }

    /// Change NF `nf`'s scheduling live: `sched` becomes its `sched`
    /// block, its process's settings are resolved from the whole
    /// descriptor as at start, refused if they would starve the machine
    /// together with `others` (the host's other workers), then applied by
    /// the process's worker (which puts its thread back if the kernel
    /// refuses any part). The process's resolved settings.
    pub fn set_sched(
        &self,
        nf: &str,
        sched: Option<crate::descriptor::SchedDecl>,
        others: &[crate::coordinator::WorkerSettings],
    ) -> Result<crate::coordinator::WorkerSettings, LiveError> {
        let index = self.index_of(nf)?;
        let mut d = self.descriptor();
        d.nfs[index].sched = sched.filter(|s| !s.is_empty());
        let sched_err = |source| LiveError::Sched { chain: self.name.clone(), source };
        let all_own = worker_settings(&d, &self.start_opts).map_err(sched_err)?;
        // The edge first, then each NF process.
        let settings =
            crate::coordinator::live_change(all_own, index + 1, others).map_err(sched_err)?;
        let wanted = SchedSettings::of(&settings);
        self.ask(index, &Request::SetSched(wanted.clone()))?;
        lock(&self.descriptor).nfs[index].sched = d.nfs[index].sched.clone();
        self.carry(index, |c| c.sched = Some(wanted))?;
        Ok(settings)
    }

    /// The state of every stateful NF, by name, from its process; each is
    /// also kept for a restart of that process (its carry file). Stops at
    /// the first process that does not answer.
    pub fn export_states(&self) -> Result<Vec<(String, braid_nf::NfState)>, LiveError> {
        let names: Vec<String> = self.descriptor().nfs.into_iter().map(|n| n.name).collect();
        let mut out = Vec::new();
        for (index, nf) in names.into_iter().enumerate() {
            if let Reply::State(Some(state)) = self.ask(index, &Request::Export)? {
                self.carry(index, |c| c.state = Some(state.clone()))?;
                out.push((nf, state));
            }
        }
        Ok(out)
    }

    /// Import `states` (from [`LiveProcesses::export_states`] or a
    /// checkpoint) into the NFs of the same names, and keep each for a
    /// restart. Stops at the first NF that refuses (it is unchanged; the
    /// ones before it have their state).
    pub fn import_states(&self, states: Vec<(String, braid_nf::NfState)>) -> Result<(), LiveError> {
        for (nf, state) in states {
            let index = self.index_of(&nf)?;
            self.ask(index, &Request::Import(state.clone()))?;
            self.carry(index, |c| c.state = Some(state))?;
        }
        Ok(())
    }

    /// Since when it runs.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The socket directory (sockets and stats files of the NF processes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The edge worker (its loop counters and telemetry).
    pub fn edge(&self) -> &WorkerHandle {
        &self.edge
    }

    /// Each NF process: pid, restarts.
    pub fn processes(&self) -> Vec<NfProcess> {
        lock(&self.shared).nfs.clone()
    }

    /// The latest supervisor events (starts, exits, restarts, hangs),
    /// oldest first.
    pub fn events(&self) -> Vec<String> {
        lock(&self.shared).events.iter().cloned().collect()
    }

    /// Per NF, in chain order: everything its processes counted (the
    /// exited ones' totals and the running one's stats file, at most
    /// [`crate::procs::STATS_INTERVAL`] old). An NF whose process has not
    /// written its file yet counts what the exited ones did.
    pub fn nf_stages(&self) -> Vec<StageSnapshot> {
        let carried = lock(&self.shared).carried.clone();
        self.descriptor()
            .nfs
            .iter()
            .enumerate()
            .map(|(i, nf)| {
                let spec = braid_nf::registry::find(&nf.kind);
                let mut counters = carried.get(i).cloned().unwrap_or_default();
                if let Ok(now) = NfProcStats::read(&crate::proc_chain::stats_file(&self.dir, i)) {
                    counters.merge(&now.counters);
                }
                StageSnapshot {
                    name: nf.name.clone(),
                    kind: spec.map_or("?", |s| s.name),
                    class: spec.map_or(braid_nf::NfClass::Basic, |s| s.class),
                    counters,
                }
            })
            .collect()
    }

    /// The chain's counters: the edge worker's ports (`in`, to the first
    /// NF, from the last NF, `out`) and loop, with the NF processes'
    /// counters as its stages ([`LiveProcesses::nf_stages`]).
    pub fn snapshot(&self) -> WorkerSnapshot {
        self.snapshots().0
    }

    /// [`LiveProcesses::snapshot`] and the edge worker's own snapshot (no
    /// stages), from one read of its telemetry.
    pub fn snapshots(&self) -> (WorkerSnapshot, WorkerSnapshot) {
        let edge = self.edge.snapshot();
        (WorkerSnapshot { stages: self.nf_stages(), ..edge.clone() }, edge)
    }

    /// Running; exited (an NF given up, or the edge worker stopped by
    /// itself, with why); or stopped.
    pub fn state(&self) -> LiveState {
        if let Some(nf) = &lock(&self.shared).given_up {
            return LiveState::Exited(Some(ProcChainError::GaveUp(nf.clone()).to_string()));
        }
        let mut running = lock(&self.running);
        let Some(r) = running.as_mut() else { return LiveState::Stopped };
        if r.edge.as_ref().is_some_and(JoinHandle::is_finished) {
            if let Some(t) = r.edge.take() {
                r.edge_ended = Some(Box::new(self.join_edge(t)));
            }
        }
        match &r.edge_ended {
            None => LiveState::Running,
            Some(report) => LiveState::Exited(Some(match &report.error {
                Some(e) => format!("the edge worker stopped: {e}"),
                None => "the edge worker stopped".into(),
            })),
        }
    }

    fn join_edge(&self, t: JoinHandle<WorkerReport>) -> WorkerReport {
        // The edge has no NF; if its thread panicked anyway, its counters
        // are still readable from the telemetry.
        t.join().unwrap_or_else(|_| self.lost_edge_report())
    }

    /// What is known of an edge worker whose thread cannot be joined: its
    /// last published counters.
    fn lost_edge_report(&self) -> WorkerReport {
        WorkerReport {
            snapshot: self.edge.snapshot(),
            ports: Vec::new(),
            elapsed: self.started.elapsed(),
            error: None,
            disconnects: 0,
            adaptations: Vec::new(),
        }
    }

    /// Stop the edge worker (it flushes what it holds), then the NF
    /// processes (SIGTERM, SIGKILL after a second; each writes its final
    /// counters), then remove the socket directory. The final counters.
    pub fn stop(&self) -> Result<RunReport, LiveError> {
        let Some(mut r) = lock(&self.running).take() else {
            return Err(LiveError::Stopped { chain: self.name.clone() });
        };
        self.stop_edge.store(true, Ordering::Relaxed);
        let edge = match (r.edge.take(), r.edge_ended.take()) {
            (Some(t), _) => self.join_edge(t),
            (None, Some(report)) => *report,
            (None, None) => self.lost_edge_report(),
        };
        r.stop_supervisor.store(true, Ordering::Relaxed);
        let _ = r.supervisor.join();
        let stages = self.nf_stages();
        lock(&self.socket_dir).take();
        let port = |i: usize| edge.ports.get(i).copied().unwrap_or_default();
        Ok(RunReport {
            chain: ChainSnapshot {
                chain: self.name.clone(),
                taken_ns: edge.snapshot.taken_ns,
                stages,
            },
            input: port(0),
            output: port(3),
            elapsed: self.started.elapsed(),
            error: edge.error,
        })
    }
}

impl Drop for LiveProcesses {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// What the supervisor thread owns.
struct SupervisorJob {
    sup: Supervisor,
    shared: Arc<Mutex<Supervision>>,
    dir: PathBuf,
    stop_edge: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    start_timeout: Duration,
}

type EdgePorts = Result<(ReconnectingPort, ReconnectingPort), ProcChainError>;

impl SupervisorJob {
    /// Start the children, hand the edge its two ports (or why not), then
    /// supervise until told to stop or an NF is given up; the children
    /// are stopped before this returns.
    fn run(mut self, connected: mpsc::Sender<EdgePorts>) {
        let mut events = self.sup.start();
        let ports = crate::proc_chain::connect_edge(
            &mut self.sup,
            &mut events,
            &self.dir,
            self.start_timeout,
        );
        self.record(std::mem::take(&mut events));
        let failed = ports.is_err();
        if connected.send(ports).is_err() || failed {
            self.sup.stop(STOP_GRACE);
            return;
        }
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(SUPERVISE_EVERY);
            let outcome = crate::proc_chain::watch(&mut self.sup, &mut events);
            self.record(std::mem::take(&mut events));
            if let Err(ProcChainError::GaveUp(nf)) = outcome {
                // Never run on without the NF: the edge stops taking
                // packets in, the other NFs stop.
                self.stop_edge.store(true, Ordering::Relaxed);
                lock(&self.shared).given_up = Some(nf);
                break;
            }
        }
        self.sup.stop(STOP_GRACE);
        let mut shared = lock(&self.shared);
        for nf in &mut shared.nfs {
            nf.pid = None;
        }
    }

    /// Keep `events` for the owner, carry the counters of a child that
    /// exited into its NF's totals, and note pids and restarts.
    fn record(&mut self, events: Vec<Event>) {
        let mut shared = lock(&self.shared);
        for e in events {
            if let Event::Exited { name, .. } = &e {
                if let Some(i) = shared.nfs.iter().position(|n| &n.name == name) {
                    // Read before the restarted child writes its own (it
                    // starts after the back-off, from this thread).
                    let file = crate::proc_chain::stats_file(&self.dir, i);
                    if let Ok(last) = NfProcStats::read(&file) {
                        shared.carried[i].merge(&last.counters);
                    }
                    let _ = std::fs::remove_file(&file);
                }
            }
            if shared.events.len() == EVENTS_KEPT {
                shared.events.pop_front();
            }
            shared.events.push_back(e.to_string());
        }
        for nf in &mut shared.nfs {
            nf.pid = self.sup.pid(&nf.name);
            nf.restarts = self.sup.restarts(&nf.name).unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(mapping: &str, ports: &str) -> ChainDescriptor {
        crate::validate::validate_str(
            "t.yaml",
            &format!("name: c\n{mapping}ports:\n  in: {{ kind: af_packet, iface: braid-no-such0 }}\n  out: {{ kind: af_packet, iface: braid-no-such1 }}\n{ports}nfs:\n  - {{ name: s, type: steer, params: {{ instances: 2 }} }}\n"),
        )
        .descriptor
        .expect("a valid descriptor")
    }

    fn config() -> ProcessesConfig {
        ProcessesConfig::new("/nonexistent/braidd".into())
    }

    #[test]
    fn gate_ports_are_refused_with_processes_before_anything_opens() {
        let gate2 = "  gate2: { kind: af_packet, iface: lo }\n";
        crate::live::check_ports(&descriptor("", gate2)).expect("one switch NF on threads");
        let d = descriptor("mapping: processes\n", gate2);
        let e = crate::live::check_ports(&d).unwrap_err().to_string();
        assert!(
            e.starts_with("chain `c`: ports.gate2: with `mapping: processes` a chain's ports are `in` and `out` only"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("braid-lp-gate-{}", std::process::id()));
        let e = LiveProcesses::start(&d, &StartOptions::default(), &config(), dir.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ports.gate2"), "{e}");
        assert!(!dir.exists());
    }

    #[test]
    fn another_mapping_or_a_missing_interface_starts_nothing_and_leaves_no_directory() {
        let dir = std::env::temp_dir().join(format!("braid-lp-start-{}", std::process::id()));
        let e = LiveProcesses::start(
            &descriptor("mapping: threads\n", ""),
            &StartOptions::default(),
            &config(),
            dir.clone(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "chain `c` (mapping processes): mapping `threads` is not `processes`");
        let d = descriptor("mapping: processes\n", "");
        let e = LiveProcesses::start(&d, &StartOptions::default(), &config(), dir.clone())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("chain `c`: ports.in: cannot open"), "{e}");
        assert!(!dir.exists());
    }

    #[test]
    fn the_settings_are_the_edge_then_each_nf_process() {
        let d = descriptor("mapping: processes\nsched: { nice: 3 }\n", "");
        let s = worker_settings(&d, &StartOptions::default()).unwrap();
        let names: Vec<&str> = s.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["edge-c", "s"]);
        assert!(s.iter().all(|w| w.sched.nice == Some(3)), "{s:?}");
    }
}
