//! `braid nf-proc`: run one NF as its own process between shared-memory
//! ports; the library part is `braid_runtime::procs` (port `i` is the NF's
//! gate `i`: a pair NF crosses ports 0 and 1, a switching NF picks its
//! port).

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
}

#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  braid nf-proc --nf fwd --port listen:/tmp/a.sock --port listen:/tmp/b.sock\n  braid nf-proc --nf nat --params '{external_ip: 192.0.2.1}' --port connect:/tmp/a.sock --port listen:/tmp/c.sock --idle sleep"
)]
pub struct Args {
    /// NF kind (see `braid nfs`).
    #[arg(long)]
    pub nf: String,
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
    /// When idle: `busy` keeps polling, `sleep` blocks on the ports'
    /// eventfds.
    #[arg(long, value_enum, default_value_t = Idle::Busy)]
    pub idle: Idle,
    /// Stop after this many seconds (default: until SIGINT or SIGTERM).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// When stopping, write the NF's counters to this file (JSON).
    #[arg(long)]
    pub stats: Option<std::path::PathBuf>,
}

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
    cfg.batch_size = a.batch;
    cfg.slots = a.slots;
    cfg.stats = a.stats.clone();
    cfg.idle = match a.idle {
        Idle::Busy => WorkerIdle::Busy,
        Idle::Sleep => WorkerIdle::Poll,
    };
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
