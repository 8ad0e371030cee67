//! `braid profile CHAIN.yaml`: run a chain offline under the profiler and
//! print per NF, per worker and per packet where the time goes (see
//! `docs/profiling.md`); `--costs` measures the context-switch and
//! system-call cost per scheduling policy (SCC Table 2).

use std::path::PathBuf;

use anyhow::Context as _;
use braid_io::memory::{GeneratorConfig, GeneratorPort, MemoryPort};
use braid_io::Port;
use braid_profile::report::{format_table, to_json, to_svg};
use braid_profile::{cost_table, profile_offline, ProfileOptions};
use braid_runtime::descriptor::{PcapPortDecl, PortDecl};
use braid_runtime::runner::open_input;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braid profile examples/chain4-memory.yaml\n  braid profile examples/chain4.yaml --packets 1000000 --mapping threads --svg chain4.svg\n  braid profile examples/sample.yaml --json\n  braid profile --costs 5\n  braid profile --bpf-stats 5"
)]
pub struct Args {
    /// Chain descriptor (YAML); optional with --costs.
    #[arg(required_unless_present_any = ["costs", "bpf_stats"])]
    pub chain: Option<PathBuf>,
    /// Input capture (pcap or pcapng); default: the descriptor's `in` port,
    /// else generated UDP packets (--packets, --frame-size, --flows).
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Generated packets when there is no input.
    #[arg(long, default_value_t = 1_000_000)]
    pub packets: u64,
    /// Generated frame size in bytes without FCS.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(60..=1514))]
    pub frame_size: u16,
    /// Generated distinct UDP flows.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub flows: u32,
    /// Packets per batch; default: the descriptor's.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub batch_size: Option<u16>,
    /// `thread`: every NF in one worker on this thread; `threads`: a
    /// worker thread per NF (the descriptor's `sched` applied).
    #[arg(long, value_enum, default_value = "thread")]
    pub mapping: crate::cmd::plan::MappingArg,
    /// Print the profile as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the per-packet cost by worker and component as an SVG.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Do not calibrate the unit costs (then context switches are not
    /// modelled).
    #[arg(long)]
    pub no_calibrate: bool,
    /// Do not ask for hardware counters.
    #[arg(long)]
    pub no_hardware: bool,
    /// Measure the cost of a context switch and of a system call under
    /// each scheduling policy (SCC Table 2), in this many interleaved
    /// rounds, before any profile.
    #[arg(long, value_name = "ROUNDS", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub costs: Option<u32>,
    /// Runs and ns per run of every loaded XDP program (the kernel NFs of
    /// a running `braid deploy`) over this many seconds (BPF run-time
    /// statistics enabled for the interval only; needs root).
    #[arg(long, value_name = "SECONDS")]
    pub bpf_stats: Option<f64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(rounds) = args.costs {
        print_costs(rounds, args.json && args.chain.is_none())?;
    }
    if let Some(secs) = args.bpf_stats {
        if !(secs.is_finite() && (0.01..=600.0).contains(&secs)) {
            anyhow::bail!("--bpf-stats {secs}: seconds must be in 0.01..=600");
        }
        let stats = braid_profile::bpf::sample_xdp(std::time::Duration::from_secs_f64(secs))?;
        if args.json && args.chain.is_none() {
            println!("{}", serde_json::json!({ "xdp_programs": stats }));
        } else {
            println!("XDP programs over {secs} s (BPF run-time statistics):");
            println!("{:>6} {:<16} {:>12} {:>10}", "id", "name", "runs", "ns/run");
            for s in &stats {
                let per = s.ns_per_run.map_or("-".to_string(), |n| format!("{n:.1}"));
                println!("{:>6} {:<16} {:>12} {:>10}", s.id, s.name, s.runs, per);
            }
            if stats.is_empty() {
                println!("(no XDP program is loaded)");
            }
        }
    }
    let Some(path) = &args.chain else { return Ok(()) };
    let mut d = braid_runtime::validate::load(path)?;
    if let Some(b) = args.batch_size {
        d.batch_size = usize::from(b);
    }
    let input: Box<dyn Port> = match (&args.input, d.ports.get("in")) {
        (Some(p), _) => open_input(&PortDecl::Pcap(PcapPortDecl::new(p)))
            .with_context(|| format!("open {}", p.display()))?,
        (None, Some(decl)) => open_input(decl).context("open the descriptor's `in` port")?,
        (None, None) => Box::new(GeneratorPort::new(&GeneratorConfig {
            frame_size: usize::from(args.frame_size),
            flows: args.flows,
            packets: Some(args.packets),
            ..GeneratorConfig::default()
        })?),
    };
    let output = Box::new(MemoryPort::sink("out"));
    let opts = ProfileOptions { calibrate: !args.no_calibrate, hardware: !args.no_hardware };
    let (report, profile) = profile_offline(&d, args.mapping.into(), input, output, opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&profile))?);
    } else {
        print!("{}", format_table(&profile));
    }
    if let Some(svg) = &args.svg {
        std::fs::write(svg, to_svg(&profile))
            .with_context(|| format!("write {}", svg.display()))?;
    }
    if let Some(e) = report.error {
        anyhow::bail!("the run stopped early: {e} (profiled up to there)");
    }
    Ok(())
}

fn print_costs(rounds: u32, json: bool) -> anyhow::Result<()> {
    let cpu = braid_runtime::coordinator::online_cpus().last().copied().unwrap_or(0);
    let table = cost_table(cpu, 5000, rounds as usize)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&table)?);
        return Ok(());
    }
    println!(
        "context switch and system call cost per policy (CPU {cpu}, median of {rounds} interleaved rounds of 5000 round trips)"
    );
    println!(
        "{:<10} {:>16} {:>14} {:>22}",
        "policy", "ctx switch ns", "syscall ns", "socket write+read ns"
    );
    for u in &table {
        println!(
            "{:<10} {:>16.0} {:>14.0} {:>22.0}",
            u.policy, u.context_switch_ns, u.syscall_ns, u.socket_write_read_ns
        );
    }
    Ok(())
}
