//! `braid shm-bench`: packet rate and one-way latency between two NF
//! processes over each virtual-port backend, side by side in one run. The
//! harness is `braid_runtime::shm_bench` (its documentation describes the
//! rows and the two phases); this parses the arguments and prints the
//! table.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use braid_runtime::shm_bench::{
    run_role, run_shm_bench, table_lines, Role, RoleConfig, Row, ShmBenchConfig, ShmBenchError,
    Timing, TABLE_HEADER,
};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  braid shm-bench\n  braid shm-bench --rows shm,fwd,l2switch --sizes 64 --seconds 2"
)]
pub struct Args {
    /// Seconds of the throughput phase of each row and size.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Frame sizes in bytes (without FCS), at least 64.
    #[arg(long, value_delimiter = ',', default_value = "64,1400")]
    sizes: Vec<usize>,
    /// Packets of the latency phase, sent one at a time.
    #[arg(long, default_value_t = 20_000)]
    latency_samples: u64,
    /// Gap between two latency packets, in microseconds.
    #[arg(long, default_value_t = 20)]
    latency_gap_us: u64,
    /// Rows to run: shm, shm-wake, udp, afxdp, channel, fwd, l2switch,
    /// fwd-wake, l2switch-wake.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "shm,shm-wake,udp,afxdp,channel,fwd,l2switch,fwd-wake,l2switch-wake"
    )]
    rows: Vec<Row>,
    /// Internal: what a child process does.
    #[arg(long, hide = true)]
    role: Option<Role>,
    #[arg(long, hide = true)]
    socket: Option<PathBuf>,
    #[arg(long, hide = true)]
    addr: Option<String>,
    #[arg(long, hide = true)]
    iface: Option<String>,
    #[arg(long, hide = true, default_value_t = 64)]
    size: usize,
    /// Internal: the receiver first sends one frame so a switch learns it.
    #[arg(long, hide = true)]
    learn: bool,
    /// Internal: the receiver sleeps on the eventfd when idle.
    #[arg(long, hide = true)]
    wake: bool,
}

pub fn run(a: Args) -> Result<()> {
    let timing = Timing {
        seconds: a.seconds,
        latency_samples: a.latency_samples,
        latency_gap_us: a.latency_gap_us,
    };
    if let Some(role) = a.role {
        let cfg = RoleConfig {
            role,
            timing,
            size: a.size,
            socket: a.socket,
            addr: a.addr,
            iface: a.iface,
            learn: a.learn,
            wake: a.wake,
        };
        return Ok(run_role(&cfg)?);
    }
    let cfg = ShmBenchConfig {
        timing,
        sizes: a.sizes,
        rows: a.rows,
        exe: std::env::current_exe().context("find this executable to start child processes")?,
        stop: Some(
            braid_probe::signal::stop_flag_on_signals()
                .context("install the SIGINT/SIGTERM handler")?,
        ),
    };
    println!("{TABLE_HEADER}");
    let r = run_shm_bench(&cfg, &mut |rows| {
        for l in table_lines(rows) {
            println!("{l}");
        }
    });
    match r {
        Ok(_) => Ok(()),
        Err(ShmBenchError::Interrupted) => {
            anyhow::bail!("interrupted; children, sockets and namespaces removed")
        }
        Err(e) => Err(e.into()),
    }
}
