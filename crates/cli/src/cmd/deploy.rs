//! `braid deploy CHAIN.yaml`: run a chain on the testbed, one NF per NF
//! host (distributed mapping) or consecutive NFs of one placement per host
//! (`--mapping compact`), until Ctrl-C. Live counters go to a stats file
//! that `braid stats` reads.
//!
//! `braid deploy --processes CHAIN.yaml` instead runs every NF as its own
//! supervised process on this host, chained by shared memory (the
//! `processes` mapping of `braid plan`); that is `braid run-procs`.

use anyhow::Context;
use braid_nf::Placement;
use braid_testbed::deploy::{
    deploy_with, Mapping, NfOnHost, NfStats, PortRow, UserIo, UserOptions, UserWait, Where,
};
use braid_testbed::{Options, State};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Where `deploy` writes live counters and `stats` reads them.
pub const DEFAULT_STATS_PATH: &str = "/run/braid/stats.json";

/// Where `deploy` serves captures of its user-space NFs (`braid capture`).
pub const DEFAULT_CAPTURE_SOCKET: &str = "/run/braid/deploy.sock";

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braid testbed up && braid deploy crates/testbed/chains/xdp-fwd.yaml\n  braid deploy crates/testbed/chains/xdp-fwd-afxdp-nat.yaml --duration-s 60 --quiet &\n  braid deploy crates/testbed/chains/compact-4.yaml --mapping compact --wait busy --cpus 1\n  braid deploy crates/testbed/chains/afpacket-fwd.yaml --user-io af_packet --batch 32 --policy batch --nice 5 --adapt\n  braid deploy examples/sample.yaml --processes --netns"
)]
pub struct Args {
    /// Chain descriptor (YAML); its ports are ignored, the testbed's links
    /// carry the traffic.
    pub chain: PathBuf,
    /// Testbed hosts for the NFs, in chain order: one per NF, or one per
    /// run of NFs with --mapping compact (default: the forwarding hosts of
    /// the testbed with two links, in topology order).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// `distributed`: one NF per host. `compact`: consecutive NFs with the
    /// same placement share a host (kernel NFs as one XDP chain program,
    /// user-space NFs as one thread).
    #[arg(long, value_enum, default_value_t = MappingArg::Distributed)]
    pub mapping: MappingArg,
    /// The testbed's state file.
    #[arg(long, default_value = braid_testbed::DEFAULT_STATE_PATH)]
    pub state: PathBuf,
    /// Live counters are written here.
    #[arg(long, default_value = DEFAULT_STATS_PATH)]
    pub stats_file: PathBuf,
    /// Unix socket serving `braid capture` (mirrors of the packets
    /// entering, leaving or dropped by a user-space NF); beside the stats
    /// file by default.
    #[arg(long, default_value = DEFAULT_CAPTURE_SOCKET)]
    pub capture_socket: PathBuf,
    /// Counter update interval, ms.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Do not print counters, only write the stats file.
    #[arg(long)]
    pub quiet: bool,
    /// Sockets of user-space NFs: `af_xdp` (falls back to `af_packet`,
    /// saying why, when its ports do not open) or `af_packet`.
    #[arg(long, value_enum, default_value_t = UserIoArg::AfXdp)]
    pub user_io: UserIoArg,
    /// How idle user-space NF threads wait: `poll` sleeps in poll(2) on
    /// both sockets; `busy` spins on them (a core per NF host at 100 %, no
    /// wakeup latency; AF_XDP still makes the kernel calls its need-wakeup
    /// flags ask for).
    #[arg(long, value_enum, default_value_t = WaitArg::Poll)]
    pub wait: WaitArg,
    /// Run user-space NF threads as SCHED_FIFO with this priority (1..=99),
    /// like `chrt -f N` for the probe and echo; fails clearly if the kernel
    /// refuses.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=99))]
    pub rt_prio: Option<i32>,
    /// Pin user-space NF threads to these CPUs (e.g. `1` or `0,1`).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Frames per system call of user-space NFs on AF_PACKET (1..=256; 1 is
    /// CALVIN's run-to-completion setting). AF_XDP takes up to 32, only
    /// what is there.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch: u16,
    /// Scheduling policy of user-space NF threads other than real time
    /// (`--rt-prio` is SCHED_FIFO): other, batch or idle.
    #[arg(long, value_enum, default_value_t = PolicyArg::Other, conflicts_with = "rt_prio")]
    pub policy: PolicyArg,
    /// Nice value (-20..=19) of user-space NF threads.
    #[arg(long, allow_negative_numbers = true, conflicts_with = "rt_prio")]
    pub nice: Option<i32>,
    /// EEVDF slice in µs (100..=100000) of user-space NF threads under the
    /// other or batch policy (Linux 6.12+, `sched_setattr`).
    #[arg(long, conflicts_with = "rt_prio")]
    pub slice_us: Option<u64>,
    /// Adaptive mode for user-space NF threads: batch size (up to the
    /// batch size) and idle policy set by a feedback loop; each change is
    /// printed with its reason.
    #[arg(long)]
    pub adapt: bool,
    /// Largest IP packet on the user-space NFs' ports (68..=9000; jumbo
    /// frames above 1500 need AF_PACKET: AF_XDP stops at 3818, see
    /// docs/jumbo.md). The testbed links' MTU is set with `ip link`.
    #[arg(long, default_value_t = braid_packet::DEFAULT_MTU)]
    pub mtu: usize,
    /// Run every NF as its own supervised process on this host, chained by
    /// shared-memory ports (a crashed NF is restarted, its neighbours keep
    /// their state), instead of one NF per testbed host. Same as
    /// `braid run-procs`.
    #[arg(long, conflicts_with = "hosts")]
    pub processes: bool,
    /// With --processes: directory for the shared-memory sockets (default: a
    /// fresh one in /tmp).
    #[arg(long, requires = "processes")]
    pub dir: Option<PathBuf>,
    /// With --processes: each NF process in its own network namespace.
    #[arg(long, requires = "processes")]
    pub netns: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum MappingArg {
    Distributed,
    Compact,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PolicyArg {
    Other,
    Batch,
    Idle,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum WaitArg {
    Poll,
    Busy,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum UserIoArg {
    #[value(name = "af_xdp")]
    AfXdp,
    #[value(name = "af_packet")]
    AfPacket,
}

/// Write the stats file: `{chain, pid, uptime_s, nfs: [NfStats...],
/// ports: [PortRow...]}` (ports: those of the user-space groups).
fn write_stats(
    path: &Path,
    chain: &str,
    uptime: Duration,
    nfs: &[NfStats],
    ports: &[PortRow],
) -> anyhow::Result<()> {
    let f = serde_json::json!({
        "chain": chain,
        "pid": std::process::id(),
        "uptime_s": uptime.as_secs_f64(),
        "nfs": nfs,
        "ports": ports,
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&f)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Whether process `pid` exists (a stats file's writer still running).
pub fn pid_running(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Make sure `path` may become this deployment's stats file before
/// anything is deployed: a file there must be a braid stats file left by a
/// deployment that is gone (it is replaced), never someone else's file or
/// a running deployment's; and the path must be writable.
fn claim_stats_file(path: &Path, chain: &str) -> anyhow::Result<()> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let v: Option<serde_json::Value> = serde_json::from_str(&text).ok();
            let pid = v.as_ref().filter(|v| v["nfs"].is_array()).and_then(|v| v["pid"].as_u64());
            match pid {
                None => anyhow::bail!(
                    "--stats-file {}: the file exists and is not a braid stats file; remove it or choose another path",
                    path.display()
                ),
                Some(pid) if pid != u64::from(std::process::id()) && pid_running(pid) => {
                    anyhow::bail!(
                        "--stats-file {}: written by a running braid deploy (pid {pid}); stop it or choose another path",
                        path.display()
                    )
                }
                Some(_) => {} // left by a deployment that is gone
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("--stats-file {}", path.display()));
        }
    }
    write_stats(path, chain, Duration::ZERO, &[], &[])
        .with_context(|| format!("--stats-file {} is not writable", path.display()))
}

/// Serve `braid capture` on `path` for the NFs of `deployment` (user
/// space and kernel) until `stop` is set. A socket left by a deployment that is
/// gone is replaced; one that answers is another deployment's: refused.
fn serve_captures(
    path: &Path,
    deployment: &braid_testbed::deploy::Deployment,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let listener = bind_capture_socket(path)?;
    let targets = deployment.capture_targets()?;
    let resolve = move |nf: &str| -> Result<braid_dataplane::tap::CaptureTarget, String> {
        if let Some((_, t)) = targets.iter().find(|(n, _)| n == nf) {
            return Ok(t.clone());
        }
        let names: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
        Err(format!("no NF `{nf}` in this deployment (its NFs: {})", names.join(", ")))
    };
    braid_dataplane::tap::serve_unix(listener, resolve, stop.clone())
        .context("starting the capture server")
}

/// The unix socket `braid capture` connects to (`--capture-socket` of
/// `deploy` and `run`), bound and readable by its owner only. A socket
/// left by a process that is gone is replaced; one that answers belongs to
/// a running braid: refused.
pub(crate) fn bind_capture_socket(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::net::{UnixListener, UnixStream};
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "--capture-socket {}: another braid serves captures there; stop it or choose another path",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| {
            format!("--capture-socket {}: removing the stale socket", path.display())
        })?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("--capture-socket {}: binding", path.display()))?;
    // Captures carry traffic: only the owner (root) may connect.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("--capture-socket {}: setting its mode", path.display()))?;
    Ok(listener)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.processes {
        return super::run_procs::run(super::run_procs::Args {
            chain: args.chain,
            dir: args.dir,
            restart: super::run_procs::Restart::OnFailure,
            max_restarts: 5,
            seconds: args.duration_s.map(|s| s as f64),
            netns: args.netns,
            watchdog_ms: 2000,
        });
    }
    let d = braid_runtime::validate::load(&args.chain)?;
    let plan = braid_runtime::plan::plan(&d)?;
    let st = State::load(&args.state).map_err(anyhow::Error::msg)?.with_context(|| {
        format!("no testbed is up ({} missing); run `braid testbed up` first", args.state.display())
    })?;
    // The namespace names come from the testbed itself (its state file).
    let opts = Options { state_path: args.state.clone(), prefix: st.prefix.clone() };
    let hosts: Vec<String> = if args.hosts.is_empty() {
        st.topology.nf_hosts().into_iter().map(String::from).collect()
    } else {
        args.hosts.clone()
    };
    let io = match args.user_io {
        UserIoArg::AfXdp => UserIo::AfXdp,
        UserIoArg::AfPacket => UserIo::AfPacket,
    };
    let placements: Vec<Where> = plan
        .iter()
        .map(|e| match e.placement {
            Placement::Kernel => Where::Kernel,
            Placement::User => Where::User(io),
        })
        .collect();
    let mapping = match args.mapping {
        MappingArg::Distributed => Mapping::Distributed,
        MappingArg::Compact => Mapping::Compact,
    };
    let host_of = mapping.host_indices(&placements);
    let needed = host_of.last().map_or(0, |h| h + 1);
    if needed > hosts.len() {
        anyhow::bail!(
            "chain {} needs {needed} NF hosts ({} mapping of {} NFs) but the testbed offers {} ({}); bring up more (`braid testbed up --nf-hosts {needed}`), list them with --hosts{}",
            d.name,
            match mapping {
                Mapping::Distributed => "distributed",
                Mapping::Compact => "compact",
            },
            plan.len(),
            hosts.len(),
            hosts.join(", "),
            if mapping == Mapping::Compact { "" } else { " or try --mapping compact" }
        );
    }
    let mut specs = Vec::new();
    for ((e, decl), h) in plan.iter().zip(&d.nfs).zip(&host_of) {
        let host = &hosts[*h];
        specs.push(match e.placement {
            Placement::Kernel => NfOnHost::kernel_with(&e.name, e.kind, host, decl.params.clone()),
            Placement::User => NfOnHost::user_on(&e.name, e.kind, host, decl.params.clone(), io),
        });
    }
    let stop = braid_probe::signal::stop_on_signals().context("installing signal handlers")?;
    claim_stats_file(&args.stats_file, &d.name)?;
    let user = UserOptions {
        wait: match args.wait {
            WaitArg::Poll => UserWait::Poll,
            WaitArg::Busy => UserWait::Busy,
        },
        rt_prio: args.rt_prio,
        cpus: args.cpus.clone(),
        batch: args.batch.into(),
        policy: match args.policy {
            PolicyArg::Other => braid_dataplane::SchedPolicy::Other,
            PolicyArg::Batch => braid_dataplane::SchedPolicy::Batch,
            PolicyArg::Idle => braid_dataplane::SchedPolicy::Idle,
        },
        nice: args.nice,
        slice_us: args.slice_us,
        adapt: args.adapt,
        mtu: args.mtu,
    };
    let mut deployment = match deploy_with(&opts, &specs, &user) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&args.stats_file);
            return Err(e.into());
        }
    };
    let capture_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let capture_server = match serve_captures(&args.capture_socket, &deployment, &capture_stop) {
        Ok(t) => t,
        Err(e) => {
            drop(deployment);
            let _ = std::fs::remove_file(&args.stats_file);
            return Err(e);
        }
    };
    for (name, why) in deployment.fallbacks() {
        eprintln!("braid deploy: {name} runs on AF_PACKET instead of AF_XDP: {why}");
    }
    let placed = deployment.stats()?;
    for (s, e) in specs.iter().zip(&plan) {
        let place = placed.iter().find(|p| p.name == s.name).map_or("?", |p| p.placement);
        eprintln!(
            "braid deploy: {} ({}) in {place} of host {} ({})",
            s.name, s.kind, s.host, e.reason
        );
    }
    for (h, host) in hosts.iter().enumerate().take(needed) {
        let on: Vec<&str> = specs
            .iter()
            .zip(&host_of)
            .filter(|(_, i)| **i == h)
            .map(|(s, _)| s.name.as_str())
            .collect();
        let kernel = host_of.iter().position(|i| *i == h).map(|i| placements[i] == Where::Kernel);
        let why = match (mapping, on.len(), kernel) {
            (Mapping::Distributed, ..) => "distributed mapping: one NF per host",
            (Mapping::Compact, 1, _) => "compact mapping: the only NF of its placement run",
            (Mapping::Compact, _, Some(true)) => {
                "compact mapping: consecutive kernel NFs share a host, one XDP chain program"
            }
            (Mapping::Compact, ..) => {
                "compact mapping: consecutive user-space NFs share a host, one thread"
            }
        };
        eprintln!("braid deploy: host {host}: {} ({why})", on.join(", "));
    }
    eprintln!(
        "braid deploy: chain {} running; Ctrl-C to stop; `braid stats` shows the counters",
        d.name
    );
    let start = Instant::now();
    let interval = Duration::from_millis(args.interval_ms.max(10));
    let mut next_report = start;
    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) {
        if args.duration_s.is_some_and(|s| start.elapsed() >= Duration::from_secs(s)) {
            break;
        }
        if Instant::now() < next_report {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        next_report += interval;
        let stats = match deployment.stats() {
            Ok(s) => s,
            Err(e) => {
                result = Err(e.into());
                break;
            }
        };
        let ports = deployment.port_stats();
        if let Err(e) = write_stats(&args.stats_file, &d.name, start.elapsed(), &stats, &ports) {
            result = Err(e);
            break;
        }
        if !args.quiet {
            for s in &stats {
                eprintln!(
                    "  {:<10} {:<5} host {:<8} rx {:>10} redirected {:>10} dropped {:>6}",
                    s.name, s.kind, s.host, s.rx_packets, s.redirected, s.dropped
                );
            }
        }
    }
    capture_stop.store(true, Ordering::Relaxed);
    let _ = capture_server.join();
    let _ = std::fs::remove_file(&args.capture_socket);
    drop(deployment);
    let _ = std::fs::remove_file(&args.stats_file);
    eprintln!("braid deploy: stopped; every XDP program is detached");
    result
}
