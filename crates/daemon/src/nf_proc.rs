//! `nf-proc`: run one NF as its own process between shared-memory ports,
//! the arguments `braid_runtime::proc_chain::nf_commands` writes. Both
//! `braid nf-proc` and braidd's hidden `braidd nf-proc` (the children of a
//! `mapping: processes` chain: braidd re-executed, so no second binary
//! must be found) parse and run them here; the library part is
//! `braid_runtime::procs` (port `i` is the NF's gate `i`: a pair NF
//! crosses ports 0 and 1, a switching NF picks its port).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use braid_io::shm::ShmConfig;
use braid_nf::Params;
use braid_runtime::procs::{run_nf_proc, Idle as WorkerIdle, NfProcConfig, PortSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Idle {
    /// Keep polling (lowest latency on a dedicated core).
    Busy,
    /// Sleep on the ports' eventfds when idle (for shared cores): the
    /// worker's `poll` policy.
    #[value(alias = "poll")]
    Sleep,
    /// Short sleeps (50 µs doubling to 1 ms) without descriptors: the
    /// worker's `sleep` policy.
    Nap,
}

/// `--policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    Other,
    Batch,
    Idle,
    Fifo,
    Rr,
}

#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  braid nf-proc --nf fwd --port listen:/tmp/a.sock --port listen:/tmp/b.sock\n  braid nf-proc --nf nat --params '{external_ip: 192.0.2.1}' --port connect:/tmp/a.sock --port listen:/tmp/c.sock --idle sleep"
)]
pub struct Args {
    /// NF kind (see `braid nfs`).
    #[arg(long)]
    pub nf: String,
    /// The NF instance's name (its stage in control requests and captures;
    /// default: the kind).
    #[arg(long)]
    pub name: Option<String>,
    /// NF parameters as YAML (e.g. `{ports: 2}`).
    #[arg(long)]
    pub params: Option<String>,
    /// A port, `listen:PATH` or `connect:PATH`; repeat in gate order.
    #[arg(long = "port", required = true)]
    pub ports: Vec<String>,
    /// Packets per batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Slots of the channels this process creates.
    #[arg(long, default_value_t = ShmConfig::default().slots)]
    pub slots: u32,
    /// Largest IP packet through the channels this process listens on
    /// (their slot size: 2 KiB up to 1500, 9.25 KiB above; up to 9000).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(68..=9000))]
    pub mtu: u16,
    /// When idle: `busy` keeps polling, `sleep` blocks on the ports'
    /// eventfds.
    #[arg(long, value_enum, default_value_t = Idle::Busy)]
    pub idle: Idle,
    /// Scheduling policy of the NF's thread (fifo and rr need --priority).
    #[arg(long, value_enum, default_value_t = Policy::Other)]
    pub policy: Policy,
    /// Real-time priority 1..=99 for --policy fifo or rr.
    #[arg(long)]
    pub priority: Option<i32>,
    /// Nice -20..=19 for the other, batch and idle policies.
    #[arg(long, allow_negative_numbers = true)]
    pub nice: Option<i32>,
    /// EEVDF slice in µs (100..=100000) for the other and batch policies
    /// (Linux 6.12+, `sched_setattr`; read back and refused on a kernel
    /// without custom slices).
    #[arg(long)]
    pub slice_us: Option<u64>,
    /// CPUs the NF's thread may run on (`0-1,3`).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Adaptive mode: the worker sets its batch size (1..=--batch) and
    /// idle policy from what it measures, printing each change and why.
    #[arg(long)]
    pub adapt: bool,
    /// Stop after this many seconds (default: until SIGINT or SIGTERM).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Write the NF's counters to this file (JSON) every 200 ms while it
    /// runs, and when it stops.
    #[arg(long)]
    pub stats: Option<std::path::PathBuf>,
    /// Listen on this unix socket for the owner's live changes, state
    /// exports and imports (braidd's processes chains).
    #[arg(long)]
    pub control: Option<std::path::PathBuf>,
    /// Start from this carry file if it exists (parameters, scheduling and
    /// state the owner kept for a restart); it overrides the options above.
    #[arg(long)]
    pub carry: Option<std::path::PathBuf>,
}

/// The scheduling the arguments ask for, checked before anything opens.
fn sched(a: &Args) -> Result<braid_dataplane::Sched> {
    use braid_dataplane::SchedPolicy;
    let policy = match (a.policy, a.priority) {
        (Policy::Fifo, Some(p)) => SchedPolicy::Fifo(p),
        (Policy::Rr, Some(p)) => SchedPolicy::Rr(p),
        (Policy::Fifo | Policy::Rr, None) => {
            anyhow::bail!("--policy {:?}: needs --priority 1..=99", a.policy)
        }
        (_, Some(_)) => anyhow::bail!("--priority is for --policy fifo or rr"),
        (Policy::Other, None) => SchedPolicy::Other,
        (Policy::Batch, None) => SchedPolicy::Batch,
        (Policy::Idle, None) => SchedPolicy::Idle,
    };
    let cpus = match &a.cpus {
        Some(list) => braid_runtime::coordinator::parse_cpu_list(list)
            .filter(|c| !c.is_empty())
            .with_context(|| format!("--cpus {list:?}: expected a CPU list like 0-1,3"))?,
        None => Vec::new(),
    };
    let s = braid_dataplane::Sched { cpus, policy, nice: a.nice, slice_us: a.slice_us };
    s.check()?;
    Ok(s)
}

/// Run the NF the arguments describe until SIGINT or SIGTERM (or
/// `--seconds`), then print its report to standard error.
pub fn run(a: Args) -> Result<()> {
    let params: Params = match &a.params {
        Some(y) => {
            serde_yaml_ng::from_str(y).with_context(|| format!("--params {y:?} is not YAML"))?
        }
        None => Params::Null,
    };
    let ports = a.ports.iter().map(|s| s.parse::<PortSpec>()).collect::<Result<Vec<_>, _>>()?;
    let mut cfg = NfProcConfig::new(a.nf.clone(), ports);
    cfg.params = params;
    cfg.name = a.name.clone();
    cfg.batch_size = a.batch;
    cfg.slots = a.slots;
    cfg.mtu = a.mtu.into();
    cfg.stats = a.stats.clone();
    cfg.control = a.control.clone();
    cfg.carry = a.carry.clone();
    cfg.idle = match a.idle {
        Idle::Busy => WorkerIdle::Busy,
        Idle::Sleep => WorkerIdle::Poll,
        Idle::Nap => WorkerIdle::Sleep,
    };
    cfg.sched = sched(&a)?;
    cfg.adapt = a.adapt.then(|| braid_dataplane::AdaptConfig {
        max_batch: a.batch.max(1),
        // Sleeping between packets, it may run woken at real time.
        rt_priority: (a.idle != Idle::Busy
            && !matches!(
                cfg.sched.policy,
                braid_dataplane::SchedPolicy::Fifo(_) | braid_dataplane::SchedPolicy::Rr(_)
            ))
        .then_some(braid_runtime::coordinator::ADAPT_RT_PRIORITY),
        log: true,
        ..braid_dataplane::AdaptConfig::default()
    });
    if let Some(s) = a.seconds.filter(|s| !(s.is_finite() && *s >= 0.0)) {
        anyhow::bail!("--seconds {s}: must be a number of seconds >= 0");
    }
    cfg.deadline = a.seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    cfg.stop = Some(
        braid_probe::signal::stop_flag_on_signals()
            .context("install the SIGINT/SIGTERM handler")?,
    );
    let report = run_nf_proc(cfg).with_context(|| format!("braid nf-proc {}", a.nf))?;
    eprintln!("braid nf-proc {report}");
    Ok(())
}
