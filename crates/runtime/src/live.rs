//! A live chain running in the background: the descriptor's `in` and
//! `out` ports (`af_packet` or `af_xdp`) with every NF in user space on one
//! dataplane [`Worker`] thread, kept with its [`WorkerHandle`] so its owner
//! (the daemon, `braidd`) can read its counters without locks, change NF
//! parameters live and stop it.
//!
//! [`crate::runner::run_live`] runs the same chain on the calling thread
//! until a signal; this module is for owners that keep running.
//!
//! ```no_run
//! use braid_runtime::live::{LiveChain, StartOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let d = braid_runtime::validate::load(std::path::Path::new("chain.yaml"))?;
//! let chain = LiveChain::start(&d, StartOptions::default())?;
//! println!("{}", chain.snapshot().to_json());
//! let report = chain.stop()?;
//! # let _ = report; Ok(()) }
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use braid_dataplane::{
    Command, ControlError, Graph, Idle, Reply, Sched, Worker, WorkerConfig, WorkerError,
    WorkerHandle, WorkerReport, WorkerSnapshot, WorkerTelemetry,
};
use braid_io::{Port, PortError};

use crate::chain::{ChainBuildError, ChainSnapshot};
use crate::descriptor::{ChainDescriptor, PortDecl, MAX_BATCH_SIZE};
use crate::runner::{RunReport, TICK_INTERVAL};

/// How a live chain runs.
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// What the worker does when no packet came (default: sleep in
    /// `poll(2)` on the ports).
    pub idle: Idle,
    /// CPU affinity and scheduling of the worker thread.
    pub sched: Sched,
    /// How long a control command (reconfigure, stop) may wait for the
    /// worker's answer.
    pub control_timeout: Duration,
}

impl Default for StartOptions {
    fn default() -> StartOptions {
        StartOptions {
            idle: Idle::Poll,
            sched: Sched::default(),
            control_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a live chain could not start, or a command on it failed.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(
        "chain `{chain}`: ports.{port}: missing; a live chain needs an `in` and an `out` port"
    )]
    MissingPort { chain: String, port: &'static str },
    #[error(
        "chain `{chain}`: ports.{port}: kind `{kind}` is not a live port; accepted: af_packet, af_xdp"
    )]
    NotLive { chain: String, port: &'static str, kind: &'static str },
    #[error("chain `{chain}`: ports.{port}: cannot open: {source}")]
    Open {
        chain: String,
        port: &'static str,
        #[source]
        source: PortError,
    },
    #[error("chain `{chain}`: {source}")]
    Build {
        chain: String,
        #[source]
        source: ChainBuildError,
    },
    #[error("chain `{chain}`: {source}")]
    Worker {
        chain: String,
        #[source]
        source: WorkerError,
    },
    #[error("chain `{chain}`: cannot start its worker thread: {source}")]
    Thread {
        chain: String,
        #[source]
        source: std::io::Error,
    },
    #[error("chain `{chain}`: no NF named `{nf}`; its NFs: {known}")]
    UnknownNf { chain: String, nf: String, known: String },
    #[error("chain `{chain}`: {source}")]
    Control {
        chain: String,
        #[source]
        source: ControlError,
    },
    #[error("chain `{chain}` has already been stopped")]
    Stopped { chain: String },
    /// A port beyond `in` and `out` that cannot be used.
    #[error("chain `{chain}`: ports.{port}: {why}")]
    ExtraPort { chain: String, port: String, why: String },
    #[error("chain `{chain}`: {source}")]
    Sched {
        chain: String,
        #[source]
        source: crate::coordinator::CoordError,
    },
    /// An NF process did not take a request (a live change, a state
    /// export or import) or could not be reached; nothing changed.
    #[error("chain `{chain}`: NF `{nf}` (its process): {why}")]
    NfProcess { chain: String, nf: String, why: String },
    /// A chain of NF processes (`mapping: processes`) that could not
    /// start: its processes, their sockets, its supervisor.
    #[error("chain `{chain}` (mapping processes): {source}")]
    Processes {
        chain: String,
        #[source]
        source: crate::proc_chain::ProcChainError,
    },
}

/// How a live chain is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiveState {
    /// Its worker thread runs.
    Running,
    /// Its worker stopped by itself (a port failed); the error, if any.
    Exited(Option<String>),
    /// [`LiveChain::stop`] was called.
    Stopped,
}

/// One worker thread of a live chain, or how it ended.
enum Thread {
    Running(JoinHandle<WorkerReport>),
    Ended(Box<WorkerReport>),
}

impl Thread {
    /// The report of a worker that ended.
    fn ended(&self) -> Option<&WorkerReport> {
        match self {
            Thread::Ended(r) => Some(r),
            Thread::Running(_) => None,
        }
    }
}

/// The chain's worker threads, in chain order, and whether
/// [`LiveChain::stop`] was called.
struct Threads {
    units: Vec<Thread>,
    stopped: bool,
}

/// One worker of a live chain: its name, the NFs it runs (indices into
/// the descriptor's `nfs`) and its control handle.
struct Unit {
    nfs: Vec<usize>,
    handle: WorkerHandle,
}

/// Most rounds of drains [`LiveChain::quiesce`] runs through a chain of
/// several workers to empty the channels between them.
pub const QUIESCE_ROUNDS: u32 = 8;

/// What [`LiveChain::quiesce`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quiesced {
    /// Packets the drains received (the NFs' and those dropped at `in`
    /// and `out` once they were cut off).
    pub packets: u64,
    /// Rounds through the workers after the first pass (0 with one
    /// worker); the last one moved nothing unless it is
    /// [`QUIESCE_ROUNDS`].
    pub rounds: u32,
}

/// Packets in flight per channel between two workers of a live chain (a
/// direction): like a NIC's receive queue, what does not fit is dropped
/// and counted (`tx_dropped` of the channel port).
pub const LIVE_CHANNEL_CAPACITY: usize = 4096;

/// A chain running on its own worker thread(s) between two live ports:
/// one worker for every NF (`mapping: thread`, the default), or one per
/// NF joined by in-process channels (`mapping: threads`), the first
/// owning the `in` port and the last the `out` port. Dropping it stops
/// the workers.
pub struct LiveChain {
    name: String,
    descriptor: Mutex<ChainDescriptor>,
    units: Vec<Unit>,
    threads: Mutex<Threads>,
    control_timeout: Duration,
    started: Instant,
    /// What it was started with (the defaults a `sched` change resolves
    /// against).
    start_opts: StartOptions,
}

/// How `d`'s NFs are spread over worker threads: (worker name, NF
/// indices) in chain order. One worker named after the chain, unless the
/// descriptor says `mapping: threads` and has more than one NF: then a
/// worker per run of neighbouring NFs with the same `worker` (an NF
/// without one has its own), named `CHAIN/WORKER` (`CHAIN/NF`). The
/// validator refuses a `worker` whose NFs are not neighbours.
pub fn units(d: &ChainDescriptor) -> Vec<(String, Vec<usize>)> {
    if d.mapping != Some(crate::descriptor::WorkerMapping::Threads) || d.nfs.len() < 2 {
        return vec![(d.name.clone(), (0..d.nfs.len()).collect())];
    }
    let mut units: Vec<(String, Vec<usize>)> = Vec::new();
    let mut last: Option<&str> = None;
    for (i, n) in d.nfs.iter().enumerate() {
        match units.last_mut() {
            Some((_, nfs)) if last == Some(n.worker_name()) => nfs.push(i),
            _ => units.push((format!("{}/{}", d.name, n.worker_name()), vec![i])),
        }
        last = Some(n.worker_name());
    }
    units
}

/// Which workers of a live chain of `units` workers pass drain markers on
/// to worker `target`, and how: (worker, routes (port a marker arrives on,
/// port it leaves by)), for markers arriving on the chain's ports `ports`
/// (0: `in`, 1: `out`). Every worker's port 0 faces `in` and port 1 faces
/// `out` (see [`LiveChain::start`]), so a marker from `in` is passed
/// downstream (0 → 1) by every worker before `target`, one from `out`
/// upstream (1 → 0) by every worker after it, and `target` receives them
/// on ports 0 and 1. Other ports (`gate2`...) exist only on a chain of one
/// NF: nothing to relay.
pub fn relay_routes(
    units: usize,
    target: usize,
    ports: &[usize],
) -> Vec<(usize, Vec<(usize, usize)>)> {
    (0..units)
        .filter_map(|j| {
            let routes: Vec<(usize, usize)> = ports
                .iter()
                .filter_map(|&p| match p {
                    0 if j < target => Some((0, 1)),
                    1 if j > target => Some((1, 0)),
                    _ => None,
                })
                .collect();
            (!routes.is_empty()).then_some((j, routes))
        })
        .collect()
}

/// The settings of the worker `name` running NFs `nfs` of `d`: the
/// descriptor's `sched` (the chain's block overridden by those NFs', which
/// must agree) over the start options' idle policy and the chain's batch
/// size; the start options' CPUs and policy when the descriptor sets none
/// of them.
fn unit_settings(
    d: &ChainDescriptor,
    opts: &StartOptions,
    name: &str,
    nfs: &[usize],
) -> Result<crate::coordinator::WorkerSettings, crate::coordinator::CoordError> {
    let decl = crate::coordinator::unit_decl(d, name, nfs)?;
    let mut s = crate::coordinator::to_settings(name, &decl, opts.idle, d.batch_size)?;
    if decl.cpus.is_none()
        && decl.policy.is_none()
        && decl.nice.is_none()
        && decl.slice_us.is_none()
    {
        s.sched = opts.sched.clone();
    }
    Ok(s)
}

/// The settings of every worker of a live chain `d` ([`units`]), in chain
/// order (see [`unit_settings`] for how each is resolved).
pub fn worker_settings(
    d: &ChainDescriptor,
    opts: &StartOptions,
) -> Result<Vec<crate::coordinator::WorkerSettings>, crate::coordinator::CoordError> {
    units(d).iter().map(|(name, nfs)| unit_settings(d, opts, name, nfs)).collect()
}

impl std::fmt::Debug for LiveChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveChain").field("name", &self.name).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding these locks; if a caller's thread
    // did, the data is still consistent (plain assignments).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open descriptor port `which` of `d` as a live port.
pub(crate) fn open_port(
    d: &ChainDescriptor,
    which: &'static str,
) -> Result<Box<dyn Port>, LiveError> {
    let decl = d
        .ports
        .get(which)
        .ok_or_else(|| LiveError::MissingPort { chain: d.name.clone(), port: which })?;
    match decl {
        PortDecl::AfPacket(_) | PortDecl::AfXdp(_) => {}
        other => {
            return Err(LiveError::NotLive {
                chain: d.name.clone(),
                port: which,
                kind: other.kind_name(),
            })
        }
    }
    match crate::runner::open_live(decl) {
        Some(Ok(p)) => Ok(p),
        Some(Err(source)) => Err(LiveError::Open { chain: d.name.clone(), port: which, source }),
        // Checked above: both kinds are live.
        None => {
            Err(LiveError::NotLive { chain: d.name.clone(), port: which, kind: decl.kind_name() })
        }
    }
}

/// The ports beyond `in` and `out`, in order: `gate2`, `gate3`, ...
/// (contiguous), each a live port linked to that gate of the chain's only
/// NF, a switch NF with that many gates (e.g. `steer`: port `in` is its
/// trunk, `out` instance 0, `gate2` instance 1). Port `gateK` is the
/// worker's port `K`.
fn extra_ports(d: &ChainDescriptor) -> Result<Vec<(String, &PortDecl)>, LiveError> {
    let bad = |port: &str, why: String| LiveError::ExtraPort {
        chain: d.name.clone(),
        port: port.to_string(),
        why,
    };
    let mut extra: Vec<(u16, &String, &PortDecl)> = Vec::new();
    for (name, decl) in &d.ports {
        if name == "in" || name == "out" {
            continue;
        }
        let k = name.strip_prefix("gate").and_then(|k| k.parse::<u16>().ok()).filter(|k| *k >= 2);
        let Some(k) = k else {
            return Err(bad(name, "a live chain's ports are `in`, `out` and, for a chain of one switch NF, `gate2`, `gate3`, ... (its further gates)".into()));
        };
        if !matches!(decl, PortDecl::AfPacket(_) | PortDecl::AfXdp(_)) {
            return Err(bad(
                name,
                format!(
                    "kind `{}` is not a live port; accepted: af_packet, af_xdp",
                    decl.kind_name()
                ),
            ));
        }
        extra.push((k, name, decl));
    }
    extra.sort_by_key(|(k, _, _)| *k);
    for (i, (k, name, _)) in extra.iter().enumerate() {
        if usize::from(*k) != i + 2 {
            return Err(bad(
                name,
                format!("gate ports must be contiguous from gate2; gate{} is missing", i + 2),
            ));
        }
    }
    if !extra.is_empty() && d.nfs.len() != 1 {
        return Err(bad(
            extra[0].1,
            format!("ports beyond `in` and `out` need a chain of exactly one (switch) NF; this one has {}", d.nfs.len()),
        ));
    }
    Ok(extra.into_iter().map(|(_, n, decl)| (n.clone(), decl)).collect())
}

/// Check that `d` names two live ports, without opening anything (and
/// no more with `mapping: processes`, whose NF processes have a gate
/// port each side only).
pub fn check_ports(d: &ChainDescriptor) -> Result<(), LiveError> {
    let extra = extra_ports(d)?;
    if let (Some((port, _)), Some(crate::descriptor::WorkerMapping::Processes)) =
        (extra.first(), d.mapping)
    {
        return Err(LiveError::ExtraPort {
            chain: d.name.clone(),
            port: port.clone(),
            why: "with `mapping: processes` a chain's ports are `in` and `out` only (each NF process links one neighbour per side)".into(),
        });
    }
    for which in ["in", "out"] {
        match d.ports.get(which) {
            None => return Err(LiveError::MissingPort { chain: d.name.clone(), port: which }),
            Some(PortDecl::AfPacket(_) | PortDecl::AfXdp(_)) => {}
            Some(other) => {
                return Err(LiveError::NotLive {
                    chain: d.name.clone(),
                    port: which,
                    kind: other.kind_name(),
                })
            }
        }
    }
    Ok(())
}

impl LiveChain {
    /// Open `d`'s `in` and `out` ports and start its NFs on new worker
    /// threads ([`units`]; each named after its worker): what `in`
    /// receives crosses the chain downstream and leaves by `out`, what
    /// `out` receives crosses it upstream and leaves by `in`. Nothing runs
    /// and nothing stays open if this fails.
    pub fn start(d: &ChainDescriptor, opts: StartOptions) -> Result<LiveChain, LiveError> {
        check_ports(d)?;
        let chain = || d.name.clone();
        // The descriptor's `sched` (chain and NFs, per worker): resolved,
        // refused if it would starve the machine, and tried on a probe
        // thread before anything opens.
        let settings = worker_settings(d, &opts)
            .and_then(|s| crate::coordinator::prepare(&s).map(|()| s))
            .map_err(|source| LiveError::Sched { chain: chain(), source })?;
        let nfs = crate::chain::build_nfs(d)
            .map_err(|source| LiveError::Build { chain: chain(), source })?;
        let extra = extra_ports(d)?;
        if let (Some((name, _)), Some((_, nf))) = (extra.last(), nfs.first()) {
            let gates = nf.gates().count();
            if usize::from(gates) < extra.len() + 2 {
                return Err(LiveError::ExtraPort {
                    chain: chain(),
                    port: name.clone(),
                    why: format!("NF `{}` has {gates} gates", d.nfs[0].name),
                });
            }
        }
        let client = open_port(d, "in")?;
        let server = open_port(d, "out")?;
        let mut more = Vec::with_capacity(extra.len());
        for (name, decl) in &extra {
            match crate::runner::open_live(decl) {
                Some(Ok(p)) => more.push(p),
                Some(Err(e)) => {
                    return Err(LiveError::ExtraPort {
                        chain: chain(),
                        port: name.clone(),
                        why: format!("cannot open: {e}"),
                    })
                }
                None => {
                    return Err(LiveError::ExtraPort {
                        chain: chain(),
                        port: name.clone(),
                        why: "not a live port".into(),
                    })
                }
            }
        }
        let worker_err = |source| LiveError::Worker { chain: chain(), source };
        let plan = units(d);
        // Every worker is built (ports added) before any thread starts.
        let mut workers: Vec<(Worker<'static>, WorkerHandle)> = Vec::with_capacity(plan.len());
        let mut nfs = nfs.into_iter();
        let mut up: Option<Box<dyn Port>> = Some(client);
        let mut server = Some(server);
        let last = plan.len() - 1;
        for (k, ((_, unit_nfs), s)) in plan.iter().zip(&settings).enumerate() {
            let (down, next_up): (Box<dyn Port>, Option<Box<dyn Port>>) = match server.take() {
                Some(out) if k == last => (out, None),
                kept => {
                    server = kept;
                    let (a, b) = braid_io::channel::channel_pair(
                        &format!("{}-{k}", d.name),
                        LIVE_CHANNEL_CAPACITY,
                    );
                    (Box::new(a), Some(Box::new(b)))
                }
            };
            let own: Vec<_> = nfs.by_ref().take(unit_nfs.len()).collect();
            let mut graph = Graph::chain(own, 2 + more.len(), 0, 1).expect("a chain's links fit");
            for (k, (name, _)) in extra.iter().enumerate().map(|(i, e)| (i + 2, e)) {
                graph.link(0, k as u16, braid_dataplane::Endpoint::Port(k)).map_err(|e| {
                    LiveError::ExtraPort { chain: chain(), port: name.clone(), why: e.to_string() }
                })?;
            }
            let entries = [graph.entry(0, 1), graph.entry(1, 0)];
            let mut cfg = WorkerConfig::new(s.name.clone());
            cfg.batch_size = s.batch_size.clamp(1, MAX_BATCH_SIZE);
            cfg.tick_interval = TICK_INTERVAL;
            cfg.idle = s.idle;
            cfg.adapt = s.adapt_config();
            cfg.sched = s.sched.clone();
            let (mut w, handle) = Worker::new(cfg, graph).map_err(worker_err)?;
            let first = up.take().expect("each worker takes the previous one's channel end");
            w.add_port(first, Some(entries[0])).map_err(worker_err)?;
            w.add_port(down, Some(entries[1])).map_err(worker_err)?;
            // Gate ports: only with one switch NF, so one worker.
            for (i, p) in std::mem::take(&mut more).into_iter().enumerate() {
                let gate = braid_dataplane::Endpoint::Stage { stage: 0, gate: (i + 2) as u16 };
                w.add_port(p, Some(gate)).map_err(worker_err)?;
            }
            up = next_up;
            workers.push((w, handle));
        }
        let mut units = Vec::with_capacity(workers.len());
        let mut threads = Vec::with_capacity(workers.len());
        for ((w, handle), (_, unit_nfs)) in workers.into_iter().zip(plan) {
            match w.spawn() {
                Ok(t) => {
                    threads.push(Thread::Running(t));
                    units.push(Unit { nfs: unit_nfs, handle });
                }
                Err(source) => {
                    // Stop what already runs; the rest is dropped unstarted.
                    for (u, t) in units.iter().zip(threads) {
                        let _ = u.handle.request(Command::Stop, opts.control_timeout);
                        if let Thread::Running(t) = t {
                            let _ = t.join();
                        }
                    }
                    return Err(LiveError::Thread { chain: chain(), source });
                }
            }
        }
        Ok(LiveChain {
            name: d.name.clone(),
            descriptor: Mutex::new(d.clone()),
            units,
            threads: Mutex::new(Threads { units: threads, stopped: false }),
            control_timeout: opts.control_timeout,
            started: Instant::now(),
            start_opts: opts,
        })
    }

    /// The chain's first worker: the one that owns the `in` port (with
    /// `mapping: thread`, the only one).
    pub fn worker(&self) -> &WorkerHandle {
        &self.units[0].handle
    }

    /// Every worker, in chain order.
    pub fn workers(&self) -> Vec<&WorkerHandle> {
        self.units.iter().map(|u| &u.handle).collect()
    }

    /// The worker that runs NF `nf` (for a capture tap on it, a live
    /// change); None for an unknown NF.
    pub fn worker_of(&self, nf: &str) -> Option<&WorkerHandle> {
        self.unit_of(nf).ok().map(|(_, k)| &self.units[k].handle)
    }

    /// The chain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor as it runs now (with every accepted live change).
    pub fn descriptor(&self) -> ChainDescriptor {
        lock(&self.descriptor).clone()
    }

    /// Since when it runs.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every counter as last published, read without locks on the
    /// dataplane and without disturbing it: with one worker, its
    /// snapshot; with several, one snapshot named after the chain with
    /// every worker's stages and ports in chain order (the channels
    /// between workers too) and their loop counters added up
    /// ([`LiveChain::worker_snapshots`] has them one by one).
    pub fn snapshot(&self) -> WorkerSnapshot {
        self.combine(self.worker_snapshots())
    }

    /// One snapshot of the chain from its workers' ([`LiveChain::worker_snapshots`]):
    /// the only one as it is, or several as [`LiveChain::snapshot`] says.
    pub fn combine(&self, mut per_worker: Vec<WorkerSnapshot>) -> WorkerSnapshot {
        if per_worker.len() == 1 {
            return per_worker.remove(0);
        }
        let mut all = WorkerSnapshot { worker: self.name.clone(), ..WorkerSnapshot::default() };
        for s in per_worker {
            all.taken_ns = all.taken_ns.max(s.taken_ns);
            all.stages.extend(s.stages);
            all.ports.extend(s.ports);
            let (a, l) = (&mut all.looped, s.looped);
            a.turns += l.turns;
            a.idle_turns += l.idle_turns;
            a.sleeps += l.sleeps;
            a.control_messages += l.control_messages;
            a.ticks += l.ticks;
        }
        all
    }

    /// Each worker's counters as last published, in chain order.
    pub fn worker_snapshots(&self) -> Vec<WorkerSnapshot> {
        self.units.iter().map(|u| u.handle.snapshot()).collect()
    }

    /// The first worker's shared telemetry record.
    pub fn telemetry(&self) -> Arc<WorkerTelemetry> {
        self.units[0].handle.telemetry()
    }

    /// Every worker's shared telemetry record, in chain order.
    pub fn telemetries(&self) -> Vec<Arc<WorkerTelemetry>> {
        self.units.iter().map(|u| u.handle.telemetry()).collect()
    }

    /// Whether every worker runs, one stopped by itself (with its error),
    /// or the chain was stopped.
    pub fn state(&self) -> LiveState {
        let mut t = lock(&self.threads);
        for (u, slot) in self.units.iter().zip(t.units.iter_mut()) {
            if matches!(slot, Thread::Running(h) if h.is_finished()) {
                self.reap(&u.handle, slot);
            }
        }
        if t.stopped {
            return LiveState::Stopped;
        }
        let ended: Vec<&WorkerReport> = t.units.iter().filter_map(Thread::ended).collect();
        if ended.is_empty() {
            return LiveState::Running;
        }
        // The first error of a worker that ended, if one had one.
        LiveState::Exited(ended.iter().find_map(|r| r.error.as_ref().map(|e| e.to_string())))
    }

    /// Join the worker's thread (its slot becomes `Ended` with its report).
    fn reap(&self, handle: &WorkerHandle, slot: &mut Thread) {
        if let Thread::Ended(_) = slot {
            return;
        }
        let placeholder = Thread::Ended(Box::new(self.lost_report(handle)));
        if let Thread::Running(h) = std::mem::replace(slot, placeholder) {
            *slot = Thread::Ended(Box::new(self.join(handle, h)));
        }
    }

    /// What is known of a worker whose thread cannot be joined: its last
    /// published counters.
    fn lost_report(&self, handle: &WorkerHandle) -> WorkerReport {
        WorkerReport {
            snapshot: handle.snapshot(),
            ports: Vec::new(),
            elapsed: self.started.elapsed(),
            error: None,
            disconnects: 0,
            adaptations: Vec::new(),
        }
    }

    fn join(&self, handle: &WorkerHandle, h: JoinHandle<WorkerReport>) -> WorkerReport {
        // The worker's NFs and ports do not panic on any input; if one
        // did, its counters are still readable from the telemetry.
        h.join().unwrap_or_else(|_| self.lost_report(handle))
    }

    /// The chain's report from its workers' (in chain order): every stage,
    /// `in`'s and `out`'s counters, the first error.
    fn report(&self, reports: &[&WorkerReport]) -> RunReport {
        let first = reports.first().and_then(|r| r.ports.first()).copied();
        let last = reports.last().and_then(|r| r.ports.get(1)).copied();
        RunReport {
            chain: ChainSnapshot {
                chain: self.name.clone(),
                taken_ns: reports.iter().map(|r| r.snapshot.taken_ns).max().unwrap_or(0),
                stages: reports.iter().flat_map(|r| r.snapshot.stages.clone()).collect(),
            },
            input: first.unwrap_or_default(),
            output: last.unwrap_or_default(),
            elapsed: reports.iter().map(|r| r.elapsed).max().unwrap_or_default(),
            error: None,
        }
    }

    /// NF `nf`'s index in the descriptor and the position of its worker
    /// in `units`, or `UnknownNf`.
    fn unit_of(&self, nf: &str) -> Result<(usize, usize), LiveError> {
        let d = lock(&self.descriptor);
        let index =
            d.nfs.iter().position(|n| n.name == nf).ok_or_else(|| LiveError::UnknownNf {
                chain: self.name.clone(),
                nf: nf.to_string(),
                known: d.nfs.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
            })?;
        // Every NF is on one worker (`units` covers them all).
        let k = self.units.iter().position(|u| u.nfs.contains(&index)).unwrap_or(0);
        Ok((index, k))
    }

    /// Bring the drain markers of migration `id` that arrive on the
    /// chain's ports `ports` (0: `in`, 1: `out`) to the worker of NF `nf`,
    /// past the NFs of the workers in between ([`relay_routes`]). Nothing
    /// to do with one worker. On a refusal the relays set so far go again.
    pub fn relay_markers(&self, nf: &str, id: u64, ports: &[usize]) -> Result<(), LiveError> {
        let (_, k) = self.unit_of(nf)?;
        let control = |source| LiveError::Control { chain: self.name.clone(), source };
        let mut set = Vec::new();
        for (j, routes) in relay_routes(self.units.len(), k, ports) {
            let unit = &self.units[j];
            let relay = braid_dataplane::migration::MarkerRelay { id, routes };
            let r = match unit.handle.request(Command::Relay(relay), self.control_timeout) {
                Ok(Reply::Done) => Ok(()),
                Ok(_) => Err(ControlError::Unexpected("Relay".into())),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                for u in set {
                    self.unrelay(u, id);
                }
                return Err(control(e));
            }
            set.push(unit);
        }
        Ok(())
    }

    /// Stop relaying migration `id`'s markers on every worker (a relay
    /// whose markers passed has retired already).
    pub fn end_relay(&self, id: u64) {
        for u in &self.units {
            self.unrelay(u, id);
        }
    }

    fn unrelay(&self, unit: &Unit, id: u64) {
        // A worker that does not answer has stopped (its relay with it).
        let _ = unit.handle.request(Command::Unrelay { id }, self.control_timeout);
    }

    /// Replace NF `nf`'s parameters while the chain runs: the NF's worker
    /// builds a new instance, moves the running state over and swaps it
    /// in between two batches. Refused (and nothing changed) when the
    /// parameters are invalid or the state does not fit.
    pub fn reconfigure(&self, nf: &str, params: braid_nf::Params) -> Result<(), LiveError> {
        let (index, k) = self.unit_of(nf)?;
        let unit = &self.units[k];
        let control = |source| LiveError::Control { chain: self.name.clone(), source };
        let command = Command::Reconfigure { stage: nf.to_string(), params: params.clone() };
        match unit.handle.request(command, self.control_timeout).map_err(control)? {
            Reply::Done => {}
            _ => return Err(control(ControlError::Unexpected("Reconfigure".into()))),
        }
        lock(&self.descriptor).nfs[index].params = params;
        Ok(())
    }

    /// Change the scheduling of the worker that runs NF `nf` live:
    /// `sched` becomes the NF's `sched` block, the worker's settings are
    /// resolved from the whole descriptor as at start (the chain's block,
    /// overridden by its NFs'), refused if they conflict, would starve
    /// the machine (real-time busy polling on every CPU, together with
    /// `others`: the settings of the host's other workers) or are
    /// invalid, and then sent to the worker (`SetSched`), which checks
    /// and applies them between two batches and puts its thread back if
    /// the kernel refuses any part. Nothing changes on a refusal. The
    /// worker's resolved settings.
    pub fn set_sched(
        &self,
        nf: &str,
        sched: Option<crate::descriptor::SchedDecl>,
        others: &[crate::coordinator::WorkerSettings],
    ) -> Result<crate::coordinator::WorkerSettings, LiveError> {
        let (index, k) = self.unit_of(nf)?;
        let unit = &self.units[k];
        let mut d = self.descriptor();
        d.nfs[index].sched = sched.filter(|s| !s.is_empty());
        let sched_err = |source| LiveError::Sched { chain: self.name.clone(), source };
        let all_own = worker_settings(&d, &self.start_opts).map_err(sched_err)?;
        let settings = crate::coordinator::live_change(all_own, k, others).map_err(sched_err)?;
        let change = crate::nf_control::SchedSettings::of(&settings).change();
        let control = |source| LiveError::Control { chain: self.name.clone(), source };
        unit.handle.set_sched(change).map_err(control)?;
        lock(&self.descriptor).nfs[index].sched = d.nfs[index].sched.clone();
        Ok(settings)
    }

    /// The settings its workers run with now (as resolved from the
    /// descriptor with every accepted change), in chain order.
    pub fn settings(&self) -> Result<Vec<crate::coordinator::WorkerSettings>, LiveError> {
        worker_settings(&self.descriptor(), &self.start_opts)
            .map_err(|source| LiveError::Sched { chain: self.name.clone(), source })
    }

    /// The first worker's thread id, once its loop runs.
    pub fn tid(&self) -> Option<u32> {
        self.telemetry().os().tid()
    }

    /// The state of every NF that keeps some, exported by its worker
    /// between two batches (a consistent copy per NF).
    pub fn export_states(&self) -> Result<Vec<(String, braid_nf::NfState)>, LiveError> {
        let control = |source| LiveError::Control { chain: self.name.clone(), source };
        let names: Vec<String> =
            lock(&self.descriptor).nfs.iter().map(|n| n.name.clone()).collect();
        let mut out = Vec::new();
        for nf in names {
            let unit = &self.units[self.unit_of(&nf)?.1];
            let command = Command::ExportState { stage: nf.clone() };
            match unit.handle.request(command, self.control_timeout).map_err(control)? {
                Reply::State(Some(state)) => out.push((nf, state)),
                Reply::State(None) => {}
                _ => return Err(control(ControlError::Unexpected("ExportState".into()))),
            }
        }
        Ok(out)
    }

    /// Import `states` (from [`LiveChain::export_states`]) into the NFs of
    /// the same names. Stops at the first NF that refuses (that NF is
    /// unchanged; the ones before it have their state).
    pub fn import_states(&self, states: Vec<(String, braid_nf::NfState)>) -> Result<(), LiveError> {
        let control = |source| LiveError::Control { chain: self.name.clone(), source };
        for (nf, state) in states {
            let unit = &self.units[self.unit_of(&nf)?.1];
            let command = Command::ImportState { stage: nf, state };
            match unit.handle.request(command, self.control_timeout).map_err(control)? {
                Reply::Done => {}
                _ => return Err(control(ControlError::Unexpected("ImportState".into()))),
            }
        }
        Ok(())
    }

    fn drain(&self, unit: &Unit) -> Result<u64, LiveError> {
        let control = |source| LiveError::Control { chain: self.name.clone(), source };
        match unit.handle.request(Command::Drain, self.control_timeout) {
            Ok(Reply::Drained { packets }) => Ok(packets),
            Ok(_) => Err(control(ControlError::Unexpected("Drain".into()))),
            Err(e) => Err(control(e)),
        }
    }

    /// Prepare a planned stop so that a checkpoint taken next holds every
    /// packet's effect: each worker, in chain order, processes everything
    /// waiting on its inputs and pauses (`Drain`), and whatever the `in`
    /// and `out` ports receive from then on is dropped before any NF sees
    /// it (counted `unconnected`), so [`LiveChain::stop`] changes no NF's
    /// state. With several workers, what is still in the channels between
    /// them is then carried through by more drains, downstream and back
    /// upstream, until a round in which no NF saw a packet (at most
    /// [`QUIESCE_ROUNDS`]; the drains' own counts include the arrivals
    /// dropped at `in` and `out`, which under traffic never stop, so they
    /// cannot tell).
    pub fn quiesce(&self) -> Result<Quiesced, LiveError> {
        let control = |source| LiveError::Control { chain: self.name.clone(), source };
        let last = self.units.len() - 1;
        let mut packets = 0;
        for (k, unit) in self.units.iter().enumerate() {
            packets += self.drain(unit)?;
            let live_ports = match (k == 0, k == last) {
                (true, true) => &[0usize, 1][..],
                (true, false) => &[0][..],
                (false, true) => &[1][..],
                (false, false) => &[][..],
            };
            for &port in live_ports {
                let command = Command::Reroute {
                    stage: String::new(),
                    output: braid_dataplane::control::Output::PortRx(port),
                    to: braid_dataplane::Endpoint::Drop,
                };
                unit.handle.request(command, self.control_timeout).map_err(control)?;
            }
        }
        let mut rounds = 0;
        if self.units.len() > 1 {
            let nf_packets = || -> u64 {
                self.worker_snapshots()
                    .iter()
                    .flat_map(|w| &w.stages)
                    .map(|s| s.counters.packets_in)
                    .sum()
            };
            let mut seen = nf_packets();
            while rounds < QUIESCE_ROUNDS {
                rounds += 1;
                for unit in self.units.iter().chain(self.units.iter().rev()) {
                    packets += self.drain(unit)?;
                }
                let now = nf_packets();
                if now == seen {
                    break;
                }
                seen = now;
            }
        }
        Ok(Quiesced { packets, rounds })
    }

    /// Stop the workers in chain order (each flushes what it holds into
    /// the next, still running, and ticks a last time) and return the
    /// final counters.
    pub fn stop(&self) -> Result<RunReport, LiveError> {
        let mut t = lock(&self.threads);
        if t.stopped {
            return Err(LiveError::Stopped { chain: self.name.clone() });
        }
        for (u, slot) in self.units.iter().zip(t.units.iter_mut()) {
            let Thread::Running(h) = slot else { continue };
            if !h.is_finished() {
                // `Gone` (it stopped meanwhile) counts as stopped.
                match u.handle.request(Command::Stop, self.control_timeout) {
                    Ok(_) | Err(ControlError::Gone(_)) => {}
                    // It did not answer: keep the thread to try again.
                    Err(source) => {
                        return Err(LiveError::Control { chain: self.name.clone(), source })
                    }
                }
            }
            self.reap(&u.handle, slot);
        }
        t.stopped = true;
        let reports: Vec<&WorkerReport> = t.units.iter().filter_map(Thread::ended).collect();
        let mut report = self.report(&reports);
        report.error = t.units.iter_mut().find_map(|s| match s {
            Thread::Ended(r) => r.error.take(),
            Thread::Running(_) => None,
        });
        Ok(report)
    }
}

impl Drop for LiveChain {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_or_missing_ports_are_refused_before_anything_opens() {
        let d = ChainDescriptor::from_yaml(
            "name: c\nports:\n  in: { kind: memory }\nnfs:\n  - { name: f, type: fwd }\n",
        )
        .unwrap();
        let e = LiveChain::start(&d, StartOptions::default()).unwrap_err().to_string();
        assert_eq!(
            e,
            "chain `c`: ports.in: kind `memory` is not a live port; accepted: af_packet, af_xdp"
        );
        let d = ChainDescriptor::from_yaml(
            "name: c\nports:\n  in: { kind: af_packet, iface: lo }\nnfs: []\n",
        )
        .unwrap();
        let e = check_ports(&d).unwrap_err().to_string();
        assert!(e.contains("ports.out: missing"), "{e}");
    }

    #[test]
    fn gate_ports_must_be_contiguous_live_and_for_one_switch_nf() {
        let d = |ports: &str, nfs: &str| {
            ChainDescriptor::from_yaml(&format!(
                "name: c\nports:\n  in: {{ kind: af_packet, iface: lo }}\n  out: {{ kind: af_packet, iface: lo }}\n{ports}nfs: {nfs}\n"
            ))
            .unwrap()
        };
        let steer = "[ { name: s, type: steer, params: { instances: 3 } } ]";
        let g = |k: u16| format!("  gate{k}: {{ kind: af_packet, iface: lo }}\n");
        check_ports(&d(&(g(2) + &g(3)), steer)).unwrap();
        for (ports, nfs, want) in [
            (g(3), steer, "ports.gate3: gate ports must be contiguous from gate2"),
            (
                "  side: { kind: af_packet, iface: lo }\n".to_string(),
                steer,
                "ports.side: a live chain's ports",
            ),
            (
                "  gate2: { kind: memory }\n".to_string(),
                steer,
                "ports.gate2: kind `memory` is not a live port",
            ),
            (
                g(2),
                "[ { name: a, type: fwd }, { name: b, type: fwd } ]",
                "need a chain of exactly one (switch) NF; this one has 2",
            ),
        ] {
            let e = check_ports(&d(&ports, nfs)).unwrap_err().to_string();
            assert!(e.contains(want), "{ports}: {e}");
        }
        // More gate ports than the NF has gates: refused before anything opens.
        let e = LiveChain::start(
            &d(&(g(2) + &g(3)), "[ { name: s, type: steer, params: { instances: 1 } } ]"),
            StartOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ports.gate3: NF `s` has 2 gates"), "{e}");
    }

    #[test]
    fn a_missing_interface_is_an_open_error_naming_the_port() {
        let d = ChainDescriptor::from_yaml(
            "name: c\nports:\n  in: { kind: af_packet, iface: braid-no-such0 }\n  out: { kind: af_packet, iface: braid-no-such1 }\nnfs:\n  - { name: f, type: fwd }\n",
        )
        .unwrap();
        let e = LiveChain::start(&d, StartOptions::default()).unwrap_err().to_string();
        assert!(e.starts_with("chain `c`: ports.in: cannot open"), "{e}");
    }

    #[test]
    fn markers_are_relayed_towards_the_migrating_nf_from_both_ends() {
        // Three workers, the middle one migrating: `in`'s marker crosses
        // worker 0 downstream, `out`'s crosses worker 2 upstream.
        assert_eq!(relay_routes(3, 1, &[0, 1]), vec![(0, vec![(0, 1)]), (2, vec![(1, 0)])]);
        // The last one: both workers before it pass `in`'s on; `out`'s
        // arrives at it directly.
        assert_eq!(relay_routes(3, 2, &[0, 1]), vec![(0, vec![(0, 1)]), (1, vec![(0, 1)])]);
        assert_eq!(relay_routes(3, 0, &[0, 1]), vec![(1, vec![(1, 0)]), (2, vec![(1, 0)])]);
        // Only the ports that bring a marker; one worker: nothing.
        assert_eq!(relay_routes(3, 1, &[0]), vec![(0, vec![(0, 1)])]);
        assert!(relay_routes(1, 0, &[0, 1, 2]).is_empty());
        assert!(relay_routes(3, 1, &[]).is_empty());
    }

    #[test]
    fn mapping_threads_gives_a_worker_per_nf_and_a_bad_mapping_is_named() {
        let check = |m: &str| {
            crate::validate::validate_str(
                "t.yaml",
                &format!("name: c\n{m}nfs:\n  - {{ name: a, type: fwd }}\n  - {{ name: b, type: fwd }}\n"),
            )
        };
        let d = check("mapping: threads\n").descriptor.unwrap();
        assert_eq!(units(&d), vec![("c/a".to_string(), vec![0]), ("c/b".to_string(), vec![1])]);
        let settings = worker_settings(&d, &StartOptions::default()).unwrap();
        assert_eq!(settings.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["c/a", "c/b"]);
        // Round trip through the store's YAML keeps it.
        assert_eq!(ChainDescriptor::from_yaml(&d.to_yaml()).unwrap().mapping, d.mapping);
        for m in ["", "mapping: thread\n"] {
            let d = check(m).descriptor.unwrap();
            assert_eq!(units(&d), vec![("c".to_string(), vec![0, 1])]);
        }
        // `worker` groups neighbours on one thread; an NF without one has
        // its own, and may join the worker named after it.
        let grouped = |nfs: &str| {
            crate::validate::validate_str(
                "t.yaml",
                &format!("name: c\nmapping: threads\nnfs:\n{nfs}"),
            )
        };
        let d = grouped("  - { name: a, type: fwd, worker: front }\n  - { name: b, type: fwd, worker: front }\n  - { name: c, type: fwd }\n  - { name: d, type: fwd, worker: c }\n")
            .descriptor
            .unwrap();
        assert_eq!(
            units(&d),
            vec![("c/front".to_string(), vec![0, 1]), ("c/c".to_string(), vec![2, 3])]
        );
        assert_eq!(
            ChainDescriptor::from_yaml(&d.to_yaml()).unwrap().nfs[0].worker.as_deref(),
            Some("front")
        );
        // Neighbours only, names that fit a thread and a label, threads only.
        for (nfs, path, says) in [
            ("  - { name: a, type: fwd, worker: w }\n  - { name: b, type: fwd }\n  - { name: c, type: fwd, worker: w }\n", "nfs[2].worker", "must be neighbours"),
            ("  - { name: a, type: fwd }\n  - { name: b, type: fwd, worker: a }\n  - { name: c, type: fwd, worker: x }\n  - { name: d, type: fwd, worker: a }\n", "nfs[3].worker", "whose NFs end at nfs[1] (`b`)"),
            ("  - { name: a, type: fwd, worker: b }\n  - { name: x, type: fwd }\n  - { name: b, type: fwd }\n", "nfs[2].name", "runs on worker `b`"),
            ("  - { name: a, type: fwd, worker: \"a/b\" }\n  - { name: b, type: fwd }\n", "nfs[0].worker", "not one braid accepts"),
        ] {
            let r = grouped(nfs);
            assert!(r.descriptor.is_none(), "{nfs}");
            assert!(r.problems.iter().any(|p| p.path == path && p.message.contains(says)), "{nfs}: {:?}", r.problems);
        }
        let r = crate::validate::validate_str(
            "t.yaml",
            "name: c\nnfs:\n  - { name: a, type: fwd, worker: w }\n  - { name: b, type: fwd }\n",
        );
        assert!(
            r.problems.iter().any(
                |p| p.path == "nfs[0].worker" && p.message.contains("needs `mapping: threads`")
            ),
            "{:?}",
            r.problems
        );
        // NFs of one worker must agree on its scheduling.
        let d = grouped("  - { name: a, type: fwd, worker: w, sched: { nice: 5 } }\n  - { name: b, type: fwd, worker: w, sched: { nice: 6 } }\n")
            .descriptor
            .unwrap();
        let e = worker_settings(&d, &StartOptions::default()).unwrap_err().to_string();
        assert!(e.contains("nice"), "{e}");
        let r = check("mapping: process\n");
        assert!(r.descriptor.is_none());
        let p = &r.problems[0];
        assert_eq!(p.path, "mapping");
        assert!(p.location.is_some_and(|l| l.line == 2), "{p}");
        assert!(p.message.contains("mapping process is not one"), "{p}");
        assert!(
            p.help.as_deref().unwrap_or("").contains("processes (a supervised process per NF)"),
            "{p}"
        );
        let d = check("mapping: processes\n").descriptor.expect("processes is a mapping");
        assert_eq!(d.mapping, Some(crate::descriptor::WorkerMapping::Processes));
        // `worker` groups threads only: one process per NF has no groups.
        let r = crate::validate::validate_str(
            "t.yaml",
            "name: c\nmapping: processes\nnfs:\n  - { name: a, type: fwd, worker: w }\n",
        );
        assert!(
            r.problems.iter().any(
                |p| p.path == "nfs[0].worker" && p.message.contains("needs `mapping: threads`")
            ),
            "{:?}",
            r.problems
        );
    }
}
