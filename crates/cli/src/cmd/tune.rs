//! `braid tune CHAIN.yaml`: measure candidate scheduling configurations
//! on a chain run as NF processes sharing one CPU, and recommend the best
//! as a descriptor `sched` block. `braid tune --scc-chains 1-8` runs SCC's
//! chain experiment (Fig. 10) instead: chains of 1..8 routers. The library
//! part is `braid_runtime::tune` (see docs/profiling.md).

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use braid_runtime::tune::{
    best, fit, run_experiment, sched_yaml, summarize, Candidate, Experiment, Load, Summary,
    CANDIDATES,
};
use braid_runtime::ChainDescriptor;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  braid tune examples/chain4.yaml\n  braid tune examples/chain4.yaml --candidates default,poll,poll-fifo,adaptive --reps 5\n  braid tune examples/chain4.yaml --candidates poll,poll-slice-100,poll-fifo --hogs 1\n  braid tune --scc-chains 1-8 --candidates default,batch-1,batch-2,batch-16,batch-32,poll,adaptive\n  braid tune --scc-batch af_packet,af_xdp --rate 100000"
)]
pub struct Args {
    /// Chain descriptor (YAML) to tune.
    #[arg(required_unless_present_any = ["scc_chains", "scc_batch"], conflicts_with_all = ["scc_chains", "scc_batch"])]
    pub chain: Option<PathBuf>,
    /// SCC's batch sweep (Fig. 8): one router between veth pairs in
    /// namespaces, on these port kinds (`af_packet,af_xdp`), at --rate,
    /// for every --batches (needs root).
    #[arg(long, value_name = "KINDS", value_delimiter = ',', conflicts_with = "scc_chains")]
    pub scc_batch: Option<Vec<String>>,
    /// --scc-batch: run the router at SCHED_FIFO with this priority (it
    /// sleeps when idle), so a busy machine does not make it wait for its
    /// CPU.
    #[arg(long, requires = "scc_batch", value_parser = clap::value_parser!(i32).range(1..=99))]
    pub nf_prio: Option<i32>,
    /// Batch sizes of --scc-batch.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64,128,256")]
    pub batches: Vec<usize>,
    /// SCC's chain experiment: chains of FIRST..=LAST routers (`1-8`, or a
    /// list `1,2,4,8`).
    #[arg(long, value_name = "LENGTHS")]
    pub scc_chains: Option<String>,
    /// Candidates to measure, comma separated (`--candidates list` shows
    /// them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "default,per-packet,batch-1,batch-32,poll,poll-fifo,adaptive"
    )]
    pub candidates: Vec<String>,
    /// Packets per second into the chain.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Packets measured per point.
    #[arg(long, default_value_t = 2000)]
    pub packets: u64,
    /// Packets sent first and not measured.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// Repetitions (interleaved).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub reps: u32,
    /// The CPU the NF processes share (default: the last online one).
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Frame length in bytes.
    #[arg(long, default_value_t = 64)]
    pub frame_size: usize,
    /// Busy threads (default policy, nice 0) pinned to the NFs' CPU while
    /// each point is measured: how each candidate holds up beside other
    /// load on its CPU.
    #[arg(long, default_value_t = 0, conflicts_with = "scc_batch",
          value_parser = clap::value_parser!(u32).range(0..=braid_runtime::tune::MAX_HOGS as i64))]
    pub hogs: u32,
    /// Every measurement as JSON lines instead of the tables.
    #[arg(long)]
    pub json: bool,
    /// Keep each NF process's standard error (the adaptive mode's changes
    /// and why) in this directory, one file per NF and point
    /// (`CANDIDATE-Nnf-repR-NF.log`), instead of discarding it.
    #[arg(long, value_name = "DIR", conflicts_with = "scc_batch")]
    pub nf_log: Option<PathBuf>,
}

/// The router of examples/chain4.yaml, its next hop itself, so that any
/// number of them in a row forward the generated traffic.
fn router_chain(n: usize) -> Result<ChainDescriptor> {
    let mut y = String::from("name: scc-routers\nnfs:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  - name: r{i}\n    type: router\n    params:\n      mac: 02:00:00:00:00:fe\n      ip: 10.0.0.254\n      routes:\n        - {{ prefix: 10.1.0.0/16, next_hop_mac: 02:00:00:00:00:fe, port: 1 }}\n"
        ));
    }
    Ok(ChainDescriptor::from_yaml(&y)?)
}

fn lengths(s: &str) -> Result<Vec<usize>> {
    let bad = || anyhow::anyhow!("--scc-chains {s:?}: expected FIRST-LAST or a list, 1..=16");
    let v: Vec<usize> = match s.split_once('-') {
        Some((a, b)) => {
            let (a, b): (usize, usize) =
                (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
            (a..=b).collect()
        }
        None => s.split(',').map(|x| x.trim().parse().map_err(|_| bad())).collect::<Result<_>>()?,
    };
    if v.is_empty() || v.iter().any(|&n| !(1..=16).contains(&n)) {
        return Err(bad());
    }
    Ok(v)
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn ratio(a: u64, b: u64) -> String {
    let r = a as f64 / b as f64;
    match r {
        _ if b == 0 => "-".into(),
        r if r < 0.1 => format!("{r:.4}"),
        r => format!("{r:.2}"),
    }
}

fn print_table(s: &[Summary]) {
    println!(
        "| NFs | candidate | reps | lost | median us | IQR us | p99 us | median vs default | IQR vs default |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in s {
        let def = s.iter().find(|d| d.nfs == r.nfs && d.candidate == "default");
        let (mr, ir) = def.map_or(("-".into(), "-".into()), |d| {
            (ratio(r.p50_ns, d.p50_ns), ratio(r.iqr_ns, d.iqr_ns))
        });
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {mr} | {ir} |",
            r.nfs,
            r.candidate,
            r.reps,
            r.sent.saturating_sub(r.received),
            us(r.p50_ns),
            us(r.iqr_ns),
            us(r.p99_ns)
        );
    }
}

fn run_batch_sweep(a: &Args, kinds: &[String], cpu: usize) -> Result<()> {
    use braid_runtime::batch_sweep::{run_sweep, Io, Sweep};
    let ios = kinds
        .iter()
        .map(|k| k.parse::<Io>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let s = Sweep {
        ios,
        batches: a.batches.clone(),
        rate_pps: a.rate,
        packets: a.packets,
        warmup: a.warmup,
        reps: a.reps,
        cpu,
        rt_prio: a.nf_prio,
    };
    let stop = braid_probe::signal::stop_flag_on_signals()
        .context("install the SIGINT/SIGTERM handler")?;
    println!(
        "one router on CPU {cpu} ({}); {} pps of 80 B frames, {} measured packets per point (+{} warm-up), {} interleaved repetitions",
        a.nf_prio.map_or("policy other".to_string(), |p| format!("SCHED_FIFO {p}")),
        a.rate,
        a.packets,
        a.warmup,
        a.reps
    );
    let ms = run_sweep(&s, Some(&stop), &mut |r| match r {
        Ok(m) => eprintln!(
            "  rep {} {} batch {}: median {} us, IQR {} us, p99 {} us, {}/{} received",
            m.rep,
            m.candidate,
            m.nfs,
            us(m.p50_ns),
            us(m.iqr_ns()),
            us(m.p99_ns),
            m.received,
            m.sent
        ),
        Err(e) => eprintln!("  failed: {e}"),
    })?;
    let s = summarize(&ms);
    if a.json {
        println!("{}", serde_json::json!({ "summaries": s }));
        return Ok(());
    }
    println!("| port | batch | reps | lost | median us | IQR us | p99 us | median vs batch 1 | IQR vs batch 1 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = s.clone();
    rows.sort_by(|x, y| x.candidate.cmp(&y.candidate).then(x.nfs.cmp(&y.nfs)));
    for r in &rows {
        let one = rows.iter().find(|o| o.candidate == r.candidate && o.nfs == 1);
        let (mr, ir) = one.map_or(("-".into(), "-".into()), |o| {
            (ratio(r.p50_ns, o.p50_ns), ratio(r.iqr_ns, o.iqr_ns))
        });
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {mr} | {ir} |",
            r.candidate,
            r.nfs,
            r.reps,
            r.sent.saturating_sub(r.received),
            us(r.p50_ns),
            us(r.iqr_ns),
            us(r.p99_ns)
        );
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    if let Some(dir) = a.nf_log.as_ref().filter(|d| !d.is_dir()) {
        bail!("--nf-log {}: not a directory", dir.display());
    }
    if a.candidates.iter().any(|c| c == "list") {
        for (n, what) in CANDIDATES {
            println!("{n:<12} {what}");
        }
        return Ok(());
    }
    let candidates =
        a.candidates.iter().map(|c| Candidate::named(c)).collect::<Result<Vec<_>, _>>()?;
    let online = braid_runtime::coordinator::online_cpus();
    let cpu = a.cpu.or_else(|| online.last().copied()).unwrap_or(0);
    if !online.contains(&cpu) {
        bail!("--cpu {cpu}: not an online CPU ({})", braid_runtime::coordinator::cpu_list(&online));
    }
    if let Some(kinds) = &a.scc_batch {
        return run_batch_sweep(&a, kinds, cpu);
    }
    let chains = match (&a.scc_chains, &a.chain) {
        (Some(l), _) => lengths(l)?.into_iter().map(router_chain).collect::<Result<Vec<_>>>()?,
        (None, Some(p)) => vec![braid_runtime::validate::load(p)?],
        (None, None) => bail!("give a chain descriptor or --scc-chains"),
    };
    let e = Experiment {
        exe: std::env::current_exe().context("find this executable")?,
        chains,
        candidates,
        cpu,
        load: Load {
            rate_pps: a.rate,
            packets: a.packets,
            warmup: a.warmup,
            frame_size: a.frame_size,
            hogs: a.hogs,
        },
        reps: a.reps,
        nf_log: a.nf_log.clone(),
    };
    let stop = braid_probe::signal::stop_flag_on_signals()
        .context("install the SIGINT/SIGTERM handler")?;
    if !a.json {
        println!(
            "NF processes on CPU {cpu}{}; {} pps of {} B frames, {} measured packets per point (+{} warm-up), {} interleaved repetitions",
            match a.hogs {
                0 => String::new(),
                1 => " beside 1 busy thread".into(),
                n => format!(" beside {n} busy threads"),
            },
            a.rate,
            a.frame_size,
            a.packets,
            a.warmup,
            a.reps
        );
    }
    let ms = run_experiment(&e, Some(&stop), &mut |r| match r {
        Ok(m) if a.json => println!("{}", serde_json::to_string(m).unwrap_or_default()),
        Ok(m) => eprintln!(
            "  rep {} {} NFs {}: median {} us, IQR {} us, p99 {} us, {}/{} received",
            m.rep,
            m.nfs,
            m.candidate,
            us(m.p50_ns),
            us(m.iqr_ns()),
            us(m.p99_ns),
            m.received,
            m.sent
        ),
        Err(e) => eprintln!("  failed: {e}"),
    })?;
    let s = summarize(&ms);
    if a.json {
        println!("{}", serde_json::json!({ "summaries": s }));
        return Ok(());
    }
    print_table(&s);
    if a.scc_chains.is_some() {
        println!(
            "\nmedian latency against chain length (least squares over lengths >= 2, SCC's fit):"
        );
        for c in &a.candidates {
            match fit(&s, c, 2) {
                Some((slope, icpt)) => {
                    println!("  {c:<12} median = {icpt:.1} us + {slope:.1} us per NF")
                }
                None => println!("  {c:<12} (fewer than two lengths >= 2)"),
            }
        }
        return Ok(());
    }
    let Some(b) = best(&s) else {
        bail!("no candidate got every measured packet through the chain; nothing to recommend");
    };
    let cand = Candidate::named(&b.candidate)?;
    println!(
        "\nrecommended: `{}` (median {} us, IQR {} us, p99 {} us{}); put this in the descriptor:\n",
        b.candidate,
        us(b.p50_ns),
        us(b.iqr_ns),
        us(b.p99_ns),
        s.iter().find(|d| d.candidate == "default").map_or(String::new(), |d| format!(
            "; {}x the default's median, {}x its IQR",
            ratio(b.p50_ns, d.p50_ns),
            ratio(b.iqr_ns, d.iqr_ns)
        ))
    );
    print!("{}", sched_yaml(&cand, cpu));
    Ok(())
}
