//! What braidd owns: the chains it runs (each a [`LiveChain`] on its own
//! worker thread, or one per NF with `mapping: threads`; with `mapping:
//! processes` a [`LiveProcesses`]: an NF process each, braidd's edge
//! worker owning the ports), the store that
//! declares them, and the operations on them. Every operation here blocks (it opens sockets, starts threads,
//! talks to workers): the API runs them on tokio's blocking pool, one at
//! a time.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use braid_runtime::live::{check_ports, LiveChain, LiveError, LiveState, StartOptions};
use braid_runtime::live_procs::LiveProcesses;
use braid_runtime::proc_chain::ProcessesConfig;
use braid_runtime::validate::{validate_str, Problem};
use braid_runtime::{ChainDescriptor, WorkerMapping};

use crate::kernel::{ChainPlacement, KernelChain, KernelChainError, NfPlacement, PlacementError};
use crate::store::{Store, StoreError};

/// One declared chain: running, or declared but not running (it could
/// not start when braidd restarted, or its worker stopped by itself).
pub struct Deployed {
    declared: ChainDescriptor,
    /// Running in user space.
    live: Option<LiveChain>,
    /// Running in the kernel, as one XDP program (`crate::kernel`).
    kernel: Option<KernelChain>,
    /// Running in user space as one process per NF (`mapping: processes`).
    procs: Option<LiveProcesses>,
    /// Where each NF runs (or would run), and why.
    placements: Vec<NfPlacement>,
    /// Why it does not run, when it does not.
    error: Option<String>,
    /// At start-up: the NFs whose checkpointed state was restored, or why
    /// none was.
    restored: Option<Result<Vec<String>, String>>,
}

impl Deployed {
    /// The chain's name.
    pub fn name(&self) -> &str {
        &self.declared.name
    }

    /// The descriptor as declared and running (live changes included).
    pub fn descriptor(&self) -> ChainDescriptor {
        match (&self.live, &self.kernel, &self.procs) {
            (Some(l), _, _) => l.descriptor(),
            (None, Some(k), _) => k.descriptor(),
            (None, None, Some(p)) => p.descriptor(),
            (None, None, None) => self.declared.clone(),
        }
    }

    /// The running chain, if it runs as one process per NF.
    pub fn procs(&self) -> Option<&LiveProcesses> {
        self.procs.as_ref()
    }

    /// Whether something runs (or ran) for it: a worker, an XDP program
    /// or NF processes; not when it could not start.
    pub fn started(&self) -> bool {
        self.live.is_some() || self.kernel.is_some() || self.procs.is_some()
    }

    /// The running chain, if it runs in user space.
    pub fn live(&self) -> Option<&LiveChain> {
        self.live.as_ref()
    }

    /// The running chain, if it runs in the kernel.
    pub fn kernel(&self) -> Option<&KernelChain> {
        self.kernel.as_ref()
    }

    /// `kernel` when the chain runs (or, not running, would run) as one
    /// XDP program, else `user`.
    pub fn placement(&self) -> &'static str {
        let all_kernel =
            !self.placements.is_empty() && self.placements.iter().all(|p| p.placement == "kernel");
        if self.kernel.is_some() || (self.live.is_none() && all_kernel) {
            "kernel"
        } else {
            "user"
        }
    }

    /// The running chain in user space, on worker threads or as NF
    /// processes, for the operations both have (live parameter and
    /// scheduling changes, checkpoints), or why not.
    pub fn running_in_user_space(&self, what: &str) -> Result<UserSpace<'_>, OpError> {
        match (&self.live, &self.procs) {
            (None, Some(p)) if self.state().0 == "running" => Ok(UserSpace::Processes(p)),
            _ => self.user_space(what).map(UserSpace::Threads),
        }
    }

    /// The running user-space chain, or why an operation for user-space
    /// chains (`what`) cannot be done on this one.
    pub fn user_space(&self, what: &str) -> Result<&LiveChain, OpError> {
        match (&self.live, &self.kernel, &self.procs) {
            (Some(l), _, _) if self.state().0 == "running" => Ok(l),
            (None, Some(_), _) => {
                Err(OpError::KernelChain { chain: self.name().into(), what: what.into() })
            }
            (None, None, Some(_)) => {
                Err(OpError::ProcessesChain { chain: self.name().into(), what: what.into() })
            }
            _ => Err(OpError::NotRunning(self.name().into())),
        }
    }

    /// `running`, `exited` (its worker stopped by itself) or `failed`
    /// (could not start), and the error.
    pub fn state(&self) -> (&'static str, Option<String>) {
        if let Some(k) = &self.kernel {
            if !k.running() {
                return ("stopped", None);
            }
            return match k.broken() {
                None => ("running", None),
                Some(why) => ("exited", Some(why)),
            };
        }
        let state = match (&self.live, &self.procs) {
            (Some(l), _) => l.state(),
            (None, Some(p)) => p.state(),
            (None, None) => return ("failed", self.error.clone()),
        };
        match state {
            LiveState::Running => ("running", None),
            LiveState::Exited(e) => ("exited", e),
            LiveState::Stopped => ("stopped", None),
        }
    }

    /// The chain as the API shows it: state, descriptor, live counters.
    pub fn to_json(&self) -> serde_json::Value {
        let (state, error) = self.state();
        let mut v = serde_json::json!({
            "name": self.name(),
            "state": state,
            "error": error,
            "descriptor": serde_json::to_value(self.descriptor()).unwrap_or_default(),
            "placement": self.placement(),
            "mapping": self.descriptor().mapping.unwrap_or_default().name(),
            "nfs": serde_json::to_value(&self.placements).unwrap_or_default(),
        });
        match &self.restored {
            Some(Ok(nfs)) => v["restored_state"] = serde_json::json!({ "nfs": nfs }),
            Some(Err(e)) => v["restored_state"] = serde_json::json!({ "error": e }),
            None => {}
        }
        if let Some(k) = &self.kernel {
            v["uptime_seconds"] = k.uptime().as_secs_f64().into();
            v["stats"] = match k.stats() {
                Ok(stats) => crate::kernel::stats_json(k, &stats),
                Err(e) => serde_json::json!({ "placement": "kernel", "error": e.to_string() }),
            };
            v["workers"] = serde_json::json!([]);
        }
        if let Some(l) = &self.live {
            v["uptime_seconds"] = l.uptime().as_secs_f64().into();
            v["stats"] = l.snapshot().to_json();
            // The worker threads (one, or one per NF with `mapping:
            // threads`): what runs on each and its loop counters.
            let workers: Vec<serde_json::Value> =
                l.worker_snapshots().iter().map(worker_json).collect();
            v["workers"] = workers.into();
        }
        if let Some(p) = &self.procs {
            v["uptime_seconds"] = p.uptime().as_secs_f64().into();
            // The NFs' counters as their processes last wrote them (at
            // most `procs::STATS_INTERVAL` old), the edge's ports live.
            let (chain, edge) = p.snapshots();
            v["stats"] = chain.to_json();
            v["workers"] = serde_json::json!([worker_json(&edge)]);
            v["processes"] = serde_json::to_value(p.processes()).unwrap_or_default();
            v["process_events"] = p.events().into();
        }
        v
    }
}

/// A worker as `GET` shows it: its name, the NFs it runs, its ports and
/// its loop counters.
fn worker_json(w: &braid_dataplane::WorkerSnapshot) -> serde_json::Value {
    serde_json::json!({
        "name": w.worker,
        "nfs": w.stages.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "ports": w.ports.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        "loop": w.looped,
    })
}

/// The chains, by name: shared by the API and the metrics collector.
pub type Chains = Arc<RwLock<BTreeMap<String, Arc<Deployed>>>>;

/// Why an operation was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("invalid descriptor:\n{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    #[error("chain `{0}` is already deployed; delete it first or choose another name")]
    Duplicate(String),
    #[error("no chain named `{0}`")]
    UnknownChain(String),
    #[error("chain `{chain}`: no NF named `{nf}`; its NFs: {known}")]
    UnknownNf { chain: String, nf: String, known: String },
    #[error("chain `{0}` is not running; delete it and deploy it again")]
    NotRunning(String),
    #[error("{0}")]
    Start(braid_runtime::live::LiveError),
    #[error("{0}")]
    Control(braid_runtime::live::LiveError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("migration: {0}")]
    Migration(#[from] crate::migration::AgentError),
    /// A scale out or in refused or failed (its own status and kind).
    #[error(transparent)]
    Scale(#[from] crate::scale::ScaleError),
    /// A scheduling change the coordinator refuses (it would starve the
    /// machine, NFs of the one worker disagree).
    #[error("{0}")]
    Sched(braid_runtime::live::LiveError),
    #[error("profile of chain `{chain}`: {source}")]
    Profile {
        chain: String,
        #[source]
        source: braid_profile::ProfileError,
    },
    /// Where the chain's NFs would run is refused (an NF pinned to the
    /// kernel beside one that cannot run there).
    #[error(transparent)]
    Placement(PlacementError),
    /// A kernel chain did not start (its XDP program did not load or
    /// attach).
    #[error("{0}")]
    KernelStart(KernelChainError),
    /// A kernel chain's program refused a change.
    #[error("{0}")]
    KernelControl(KernelChainError),
    /// An operation only user-space chains have.
    #[error("chain `{chain}` runs in the kernel (one XDP program, no worker thread): {what} is for chains in user space; deploy it with `placement: user` on an NF to run it there")]
    KernelChain { chain: String, what: String },
    /// An operation that does not reach NF processes (yet).
    #[error("chain `{chain}` runs with `mapping: processes` (one process per NF): {what} is not available for that mapping; deploy it with `mapping: thread` or `mapping: threads` for it")]
    ProcessesChain { chain: String, what: String },
}

/// A running chain in user space: its NFs on worker threads of braidd, or
/// each in a process of its own.
pub enum UserSpace<'a> {
    Threads(&'a LiveChain),
    Processes(&'a LiveProcesses),
}

impl UserSpace<'_> {
    pub fn reconfigure(&self, nf: &str, params: braid_nf::Params) -> Result<(), LiveError> {
        match self {
            UserSpace::Threads(l) => l.reconfigure(nf, params),
            UserSpace::Processes(p) => p.reconfigure(nf, params),
        }
    }

    pub fn set_sched(
        &self,
        nf: &str,
        sched: Option<braid_runtime::SchedDecl>,
        others: &[braid_runtime::coordinator::WorkerSettings],
    ) -> Result<braid_runtime::coordinator::WorkerSettings, LiveError> {
        match self {
            UserSpace::Threads(l) => l.set_sched(nf, sched, others),
            UserSpace::Processes(p) => p.set_sched(nf, sched, others),
        }
    }

    pub fn export_states(&self) -> Result<Vec<(String, braid_nf::NfState)>, LiveError> {
        match self {
            UserSpace::Threads(l) => l.export_states(),
            UserSpace::Processes(p) => p.export_states(),
        }
    }

    pub fn import_states(&self, states: Vec<(String, braid_nf::NfState)>) -> Result<(), LiveError> {
        match self {
            UserSpace::Threads(l) => l.import_states(states),
            UserSpace::Processes(p) => p.import_states(states),
        }
    }

    pub fn quiesce(&self) -> Result<braid_runtime::live::Quiesced, LiveError> {
        match self {
            UserSpace::Threads(l) => l.quiesce(),
            UserSpace::Processes(p) => p.quiesce(),
        }
    }
}

/// The settings of every worker or NF process chain `d` runs on when
/// started with `opts` (for the host-wide starvation check).
fn own_workers(
    d: &ChainDescriptor,
    opts: &StartOptions,
) -> Result<Vec<braid_runtime::coordinator::WorkerSettings>, braid_runtime::coordinator::CoordError>
{
    match d.mapping {
        Some(WorkerMapping::Processes) => braid_runtime::live_procs::worker_settings(d, opts),
        _ => braid_runtime::live::worker_settings(d, opts),
    }
}

/// braidd's chains and their store.
pub struct Daemon {
    chains: Chains,
    store: Store,
    start: StartOptions,
    /// Where `mapping: processes` chains keep their socket directories
    /// (one per chain, named after it).
    procs_dir: std::path::PathBuf,
    /// Checkpoint rounds written.
    checkpoints: std::sync::atomic::AtomicU64,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Writers only insert or remove whole entries; a panicking reader
    // cannot leave the map half-changed.
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Longest chain name the daemon accepts.
pub const MAX_NAME: usize = 64;

/// A chain name usable in URLs, metric labels and thread names.
fn good_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The problems of descriptor `text` (YAML or JSON) as `braid validate`
/// reports them, plus the daemon's own rule: `in` and `out` must be live
/// ports.
pub fn check_descriptor(file: &str, text: &str) -> Result<ChainDescriptor, Vec<Problem>> {
    let report = validate_str(file, text);
    match report.descriptor {
        Some(d) if report.problems.is_empty() && !good_name(&d.name) => Err(vec![Problem {
            file: file.to_string(),
            location: None,
            path: "name".into(),
            message: format!(
                "chain name `{}` cannot be used by the daemon (it names the chain in URLs, metrics and its worker thread)",
                d.name.escape_debug()
            ),
            help: Some(format!("1 to {MAX_NAME} characters among A-Z a-z 0-9 . _ -")),
        }]),
        Some(d) if report.problems.is_empty() => match check_ports(&d) {
            Ok(()) => Ok(d),
            Err(e) => Err(vec![Problem {
                file: file.to_string(),
                location: None,
                path: "ports".into(),
                message: e.to_string(),
                help: Some("`in` and `out` ports of kind af_packet or af_xdp".into()),
            }]),
        },
        _ => Err(report.problems),
    }
}

impl Daemon {
    /// A daemon over `store`, with no chain running yet (see
    /// [`Daemon::restore`]).
    pub fn new(store: Store, start: StartOptions) -> Daemon {
        let procs_dir = std::env::temp_dir().join(format!("braidd-procs-{}", std::process::id()));
        Daemon { chains: Arc::default(), store, start, procs_dir, checkpoints: Default::default() }
    }

    /// Keep the socket directories of `mapping: processes` chains under
    /// `dir` (braidd: `braidd-procs` beside its API socket) instead of a
    /// folder of the system's temporary directory named after this
    /// process. Whatever `dir` holds is braidd's: [`Daemon::restore`]
    /// empties it (a killed braidd may have left sockets there).
    pub fn with_procs_dir(mut self, dir: std::path::PathBuf) -> Daemon {
        self.procs_dir = dir;
        self
    }

    /// How NF processes of `mapping: processes` chains are started:
    /// braidd itself re-executed (`braidd nf-proc`, through
    /// `/proc/self/exe`, so no other binary must be found), restarted per
    /// the default policy (on failure, 5 times).
    fn processes_config(&self) -> ProcessesConfig {
        let mut cfg = ProcessesConfig::new("/proc/self/exe".into());
        cfg.start_timeout = std::time::Duration::from_secs(10);
        cfg
    }

    /// The chain workers' idle policy (`poll`, `busy`, `sleep`).
    pub fn idle_policy(&self) -> String {
        format!("{:?}", self.start.idle).to_lowercase()
    }

    /// The shared map, for readers (API, metrics).
    pub fn chains(&self) -> Chains {
        self.chains.clone()
    }

    /// Every chain, by name.
    pub fn list(&self) -> Vec<Arc<Deployed>> {
        read(&self.chains).values().cloned().collect()
    }

    /// Chain `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Deployed>, OpError> {
        read(&self.chains).get(name).cloned().ok_or_else(|| OpError::UnknownChain(name.into()))
    }

    /// Deploy every chain the store declares. The store is read whole
    /// first (an unreadable store or a bad record deploys nothing); a
    /// chain that cannot start stays declared, in state `failed` with its
    /// error. Returns (started, failed).
    pub fn restore(&self) -> Result<(usize, usize), StoreError> {
        let declared = self.store.load()?;
        // Socket directories a killed braidd left (its NF processes died
        // with it): every processes chain makes its own again.
        if self.procs_dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.procs_dir) {
                tracing::warn!(dir = %self.procs_dir.display(), error = %e, "stale NF process sockets");
            }
        }
        let (mut ok, mut failed) = (0, 0);
        for d in declared {
            let started = crate::kernel::decide(&d)
                .map_err(OpError::Placement)
                .and_then(|decided| self.start_chain(d.clone(), decided));
            let entry = match started {
                Ok(mut entry) => {
                    ok += 1;
                    if let Ok(running) = entry.running_in_user_space("a restore") {
                        entry.restored = Some(self.restore_state(&d.name, &running));
                    }
                    entry
                }
                Err(e) => {
                    failed += 1;
                    tracing::error!(chain = %d.name, error = %e, "declared chain did not start");
                    let placements = crate::kernel::decide(&d).map(|(_, p)| p).unwrap_or_default();
                    Deployed {
                        declared: d,
                        live: None,
                        kernel: None,
                        procs: None,
                        placements,
                        error: Some(e.to_string()),
                        restored: None,
                    }
                }
            };
            write(&self.chains).insert(entry.name().to_string(), Arc::new(entry));
        }
        Ok((ok, failed))
    }

    /// Import chain `name`'s last checkpoint into `live`: the NFs restored,
    /// or why nothing was (a damaged checkpoint is decoded whole before
    /// anything is imported, so it is never half-loaded).
    fn restore_state(&self, name: &str, live: &UserSpace<'_>) -> Result<Vec<String>, String> {
        let states = match self.store.checkpoint(name) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => {
                tracing::error!(chain = name, error = %e, "checkpoint not restored");
                return Err(e.to_string());
            }
        };
        let nfs: Vec<String> = states.iter().map(|(n, _)| n.clone()).collect();
        live.import_states(states).map_err(|e| {
            tracing::error!(chain = name, error = %e, "checkpoint not restored");
            e.to_string()
        })?;
        Ok(nfs)
    }

    /// Export the state of every running chain's stateful NFs and write it
    /// to the store in one transaction; (chains, NFs) written. A chain whose
    /// worker does not answer is skipped (its previous checkpoint stays).
    pub fn checkpoint_all(&self) -> Result<(usize, usize), StoreError> {
        let mut all = Vec::new();
        for e in self.list() {
            let Ok(l) = e.running_in_user_space("a checkpoint") else { continue };
            match l.export_states() {
                Ok(states) if !states.is_empty() => all.push((e.name().to_string(), states)),
                Ok(_) => {}
                Err(err) => tracing::warn!(chain = %e.name(), error = %err, "checkpoint skipped"),
            }
        }
        let nfs = all.iter().map(|(_, s)| s.len()).sum();
        if !all.is_empty() {
            self.store.put_checkpoints(&all)?;
        }
        self.checkpoints.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((all.len(), nfs))
    }

    /// Checkpoint rounds written so far.
    pub fn checkpoints(&self) -> u64 {
        self.checkpoints.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Start `d` where [`crate::kernel::decide`] put it: whole in the
    /// kernel as one XDP program, or in user space on worker threads.
    fn start_chain(
        &self,
        d: ChainDescriptor,
        (placement, placements): (ChainPlacement, Vec<NfPlacement>),
    ) -> Result<Deployed, OpError> {
        let (mut live, mut kernel, mut procs) = (None, None, None);
        match placement {
            ChainPlacement::Kernel(configs) => {
                kernel = Some(KernelChain::start(&d, configs).map_err(OpError::KernelStart)?);
            }
            ChainPlacement::User if d.mapping == Some(WorkerMapping::Processes) => {
                let dir = self.procs_dir.join(braid_runtime::supervisor::file_name_part(&d.name));
                let cfg = self.processes_config();
                procs =
                    Some(LiveProcesses::start(&d, &self.start, &cfg, dir).map_err(OpError::Start)?);
            }
            ChainPlacement::User => {
                live = Some(LiveChain::start(&d, self.start.clone()).map_err(OpError::Start)?);
            }
        }
        Ok(Deployed { declared: d, live, kernel, procs, placements, error: None, restored: None })
    }

    /// Validate descriptor `text`, start it and declare it. Refused with
    /// nothing changed when it is invalid, its name is taken, or it cannot
    /// start.
    pub fn deploy(&self, text: &str) -> Result<Arc<Deployed>, OpError> {
        let d = check_descriptor("request body", text).map_err(OpError::Invalid)?;
        if read(&self.chains).contains_key(&d.name) {
            return Err(OpError::Duplicate(d.name));
        }
        let decided = crate::kernel::decide(&d).map_err(OpError::Placement)?;
        if decided.0 == ChainPlacement::User {
            self.check_starvation(&d)?;
        }
        let entry = Arc::new(self.start_chain(d, decided)?);
        // Declared only once it runs; if the store fails, it stops again
        // (dropping the entry stops its workers or detaches its program).
        self.store.put(&entry.declared)?;
        write(&self.chains).insert(entry.name().to_string(), entry.clone());
        Ok(entry)
    }

    /// The host's workers together, `d`'s new ones included, must not
    /// starve it (real-time busy polling on every CPU); each chain's own
    /// settings are checked when it starts.
    fn check_starvation(&self, d: &ChainDescriptor) -> Result<(), OpError> {
        let mut all = self.other_workers(&d.name);
        let own = own_workers(d, &self.start).map_err(|source| {
            OpError::Sched(braid_runtime::live::LiveError::Sched { chain: d.name.clone(), source })
        })?;
        all.extend(own);
        braid_runtime::coordinator::check_starvation(
            &all,
            &braid_runtime::coordinator::online_cpus(),
        )
        .map_err(|source| {
            OpError::Sched(braid_runtime::live::LiveError::Sched { chain: d.name.clone(), source })
        })
    }

    /// Stop chain `name` and forget it; its final counters.
    pub fn remove(&self, name: &str) -> Result<serde_json::Value, OpError> {
        let entry = self.get(name)?;
        self.store.remove(name)?;
        write(&self.chains).remove(name);
        if let Some(k) = entry.kernel() {
            return Ok(match k.stop() {
                Ok(last) => {
                    let nfs: Vec<serde_json::Value> = entry
                        .descriptor()
                        .nfs
                        .iter()
                        .zip(&last)
                        .map(|(nf, s)| {
                            serde_json::json!({
                                "name": nf.name,
                                "packets_in": s.counters.rx_packets,
                                "packets_out": s.counters.redirect,
                                "dropped": s.counters.drop,
                            })
                        })
                        .collect();
                    serde_json::json!({
                        "name": name,
                        "stopped": true,
                        "placement": "kernel",
                        "seconds": k.uptime().as_secs_f64(),
                        "nfs": nfs,
                        "error": null,
                    })
                }
                Err(e) => {
                    serde_json::json!({ "name": name, "stopped": true, "error": e.to_string() })
                }
            });
        }
        let stopped = match (entry.live(), entry.procs()) {
            (Some(l), _) => Some(l.stop()),
            (None, Some(p)) => Some(p.stop()),
            (None, None) => None,
        };
        Ok(match stopped {
            Some(Ok(r)) => serde_json::json!({
                "name": name,
                "stopped": true,
                "seconds": r.elapsed.as_secs_f64(),
                "in": { "rx_packets": r.input.rx_packets, "tx_packets": r.input.tx_packets },
                "out": { "rx_packets": r.output.rx_packets, "tx_packets": r.output.tx_packets },
                "error": r.error.map(|e| e.to_string()),
            }),
            Some(Err(e)) => {
                serde_json::json!({ "name": name, "stopped": false, "error": e.to_string() })
            }
            None => serde_json::json!({ "name": name, "stopped": true, "error": null }),
        })
    }

    /// Chain `name`'s entry and its descriptor with NF `nf` changed by
    /// `change`, checked as a deploy would check it (the locations would be
    /// those of a re-serialised text, so only field paths are kept).
    fn changed_nf(
        &self,
        name: &str,
        nf: &str,
        change: impl FnOnce(&mut braid_runtime::NfDecl),
    ) -> Result<(Arc<Deployed>, ChainDescriptor), OpError> {
        let entry = self.get(name)?;
        let mut d = entry.descriptor();
        let Some(i) = d.nfs.iter().position(|n| n.name == nf) else {
            return Err(OpError::UnknownNf {
                chain: name.into(),
                nf: nf.into(),
                known: d.nfs.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
            });
        };
        change(&mut d.nfs[i]);
        check_descriptor("request body", &d.to_yaml()).map_err(|mut problems| {
            for p in &mut problems {
                p.location = None;
            }
            OpError::Invalid(problems)
        })?;
        Ok((entry, d))
    }

    /// Change NF `nf`'s parameters in running chain `name`: checked as the
    /// whole descriptor would be, applied live through the worker's control
    /// channel, then declared (a restart keeps it).
    pub fn reconfigure(
        &self,
        name: &str,
        nf: &str,
        params: braid_nf::Params,
    ) -> Result<Arc<Deployed>, OpError> {
        let (entry, d) = self.changed_nf(name, nf, |n| n.params = params.clone())?;
        if let Some(k) = entry.kernel() {
            k.reconfigure(nf, params).map_err(OpError::KernelControl)?;
            self.store.put(&d)?;
            return Ok(entry);
        }
        let live = entry.running_in_user_space("a live parameter change")?;
        live.reconfigure(nf, params).map_err(OpError::Control)?;
        self.store.put(&d)?;
        Ok(entry)
    }

    /// Change the scheduling of NF `nf`'s worker in running chain `name`
    /// live: `sched` becomes the NF's `sched` block (an empty one: none),
    /// checked as the whole descriptor would be (400 with the field path),
    /// resolved for the chain's one worker and refused if it would starve
    /// the machine, applied by the worker (which puts its thread back if
    /// the kernel refuses any part), then declared (a restart applies it
    /// again). Nothing changes on a refusal. The chain and the worker's
    /// resolved settings.
    pub fn set_sched(
        &self,
        name: &str,
        nf: &str,
        sched: braid_runtime::SchedDecl,
    ) -> Result<(Arc<Deployed>, braid_runtime::coordinator::WorkerSettings), OpError> {
        let sched = (!sched.is_empty()).then_some(sched);
        let (entry, _checked) = self.changed_nf(name, nf, |n| n.sched = sched.clone())?;
        let live = entry.running_in_user_space("live scheduling (`sched`)")?;
        let others = self.other_workers(name);
        let settings = live.set_sched(nf, sched, &others).map_err(|e| match e {
            // The worker (or the NF process) said no, or could not be asked.
            LiveError::Control { .. } | LiveError::NfProcess { .. } => OpError::Control(e),
            e => OpError::Sched(e),
        })?;
        self.store.put(&entry.descriptor())?;
        Ok((entry, settings))
    }

    /// The settings of every running chain's worker but `name`'s (for the
    /// host-wide starvation check).
    fn other_workers(&self, name: &str) -> Vec<braid_runtime::coordinator::WorkerSettings> {
        self.list()
            .iter()
            .filter(|e| e.name() != name && e.state().0 == "running")
            .filter_map(|e| match (e.live(), e.procs()) {
                (Some(l), _) => l.settings().ok(),
                (None, Some(p)) => own_workers(&p.descriptor(), &self.start).ok(),
                (None, None) => None,
            })
            .flatten()
            .collect()
    }

    /// Profile running chain `name`'s workers over an interval (blocks for
    /// it): two copies of their telemetry and of their threads' OS counters,
    /// the interval apart (no control message reaches the worker).
    pub fn profile(
        &self,
        name: &str,
        opts: braid_profile::LiveOptions,
    ) -> Result<braid_profile::Profile, OpError> {
        let entry = self.get(name)?;
        use braid_profile::LiveWorker;
        let workers: Vec<LiveWorker> = match entry.running_in_user_space("a live profile")? {
            UserSpace::Threads(l) => l.telemetries().into_iter().map(LiveWorker::Thread).collect(),
            // braidd's edge worker, then each NF process's worker.
            UserSpace::Processes(p) => std::iter::once(LiveWorker::Thread(p.edge().telemetry()))
                .chain(
                    p.nf_workers()
                        .into_iter()
                        .map(|(name, copy)| LiveWorker::Process { name, copy }),
                )
                .collect(),
        };
        braid_profile::profile_live(name, &workers, opts)
            .map_err(|source| OpError::Profile { chain: name.into(), source })
    }

    /// Stop every chain (SIGTERM) without losing NF state: each running
    /// chain's worker first processes what waits on its inputs and pauses,
    /// dropping before its NFs whatever arrives later
    /// ([`LiveChain::quiesce`]); then every stateful NF's state is
    /// checkpointed, and the workers flush and end. The chains stay
    /// declared, so the next braidd starts them again with exactly that
    /// state. (chains stopped, packets drained.)
    pub fn shutdown(&self) -> (usize, u64) {
        let mut drained = 0;
        for e in self.list() {
            let Ok(l) = e.running_in_user_space("a drain") else { continue };
            match l.quiesce() {
                Ok(q) => {
                    drained += q.packets;
                    tracing::info!(chain = %e.name(), packets = q.packets, rounds = q.rounds, "drained before the stop");
                }
                Err(err) => tracing::warn!(chain = %e.name(), error = %err, "drain before stop"),
            }
        }
        if let Err(e) = self.checkpoint_all() {
            tracing::error!(error = %e, "last checkpoint failed");
        }
        let all: Vec<_> = std::mem::take(&mut *write(&self.chains)).into_values().collect();
        let mut stopped = 0;
        for e in all {
            if let Some(k) = e.kernel() {
                // Detached and unloaded: SIGTERM leaves no XDP program.
                match k.stop() {
                    Ok(_) => stopped += 1,
                    Err(err) => tracing::warn!(chain = %e.name(), error = %err, "stop"),
                }
            }
            let stop = match (e.live(), e.procs()) {
                (Some(l), _) => Some(l.stop()),
                // Its NF processes end and its socket directory goes.
                (None, Some(p)) => Some(p.stop()),
                (None, None) => None,
            };
            match stop {
                Some(Ok(_)) => stopped += 1,
                Some(Err(err)) => tracing::warn!(chain = %e.name(), error = %err, "stop"),
                None => {}
            }
        }
        (stopped, drained)
    }
}
