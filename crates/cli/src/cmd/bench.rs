//! `braid bench CHAIN.yaml`: in-memory throughput of a chain, whole and
//! per NF, beside a refill-only baseline measured in the same run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use braid_runtime::bench::{format_result, run as run_bench, BenchConfig};
use braid_runtime::Chain;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braid bench examples/chain4.yaml --frame-size 64 --flows 1024\n  braid bench examples/sample.yaml --frame-size 1400 --duration 5 --json\n  braid bench examples/bench/router6.yaml --ipv6 --flows 1024\n  braid bench examples/sample.yaml --capture fw --capture-filter 'udp port 53'   # what a capture costs"
)]
pub struct Args {
    /// Chain descriptor (YAML).
    pub chain: PathBuf,
    /// Frame size in bytes without FCS (60..=1514).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(60..=1514))]
    pub frame_size: u16,
    /// UDP over IPv6 (2001:db8::1.. -> 2001:db8:1::1) instead of IPv4.
    #[arg(long)]
    pub ipv6: bool,
    /// Number of distinct UDP flows.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub flows: u32,
    /// Measured duration in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Packets per batch; default: the descriptor's batch_size.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub batch_size: Option<u16>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run with a capture tap on this NF (all points: in, out, drops), its
    /// packets taken by a reader thread and discarded: what `braid
    /// capture` costs the dataplane.
    #[arg(long, value_name = "NF")]
    pub capture: Option<String>,
    /// The tap's filter (with --capture); default: every packet.
    #[arg(long, default_value = "", requires = "capture")]
    pub capture_filter: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 3600.0) {
        anyhow::bail!("--duration {} is out of range: seconds, > 0 and <= 3600", args.duration);
    }
    let d = braid_runtime::validate::load(&args.chain)?;
    let mut chain = Chain::from_descriptor(&d)?;
    let reader = match &args.capture {
        Some(nf) => {
            let filter = braid_packet::filter::Filter::parse(&args.capture_filter)
                .map_err(|e| anyhow::anyhow!("--capture-filter: {e}"))?;
            let i = chain.graph_mut().find(nf).map_err(|e| anyhow::anyhow!("--capture: {e}"))?;
            let (tap, rx) = braid_dataplane::tap::tap(
                &braid_dataplane::tap::Point::ALL,
                filter,
                braid_dataplane::tap::DEFAULT_TAP_CAPACITY,
            );
            chain.stages_mut()[i].add_tap(tap);
            Some(std::thread::spawn(move || {
                // Take and discard until the tap goes with the chain.
                let mut taken = 0u64;
                while let Ok(_) | Err(false) =
                    rx.recv(Duration::from_millis(100)).map(|_| taken += 1)
                {}
                (taken, rx.matched(), rx.lost())
            }))
        }
        None => None,
    };
    let cfg = BenchConfig {
        frame_size: args.frame_size as usize,
        flows: args.flows,
        duration: Duration::from_secs_f64(args.duration),
        batch_size: args.batch_size.map(usize::from).unwrap_or(chain.batch_size()),
        ipv6: args.ipv6,
        ..BenchConfig::default()
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {percent:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    let mut last = std::time::Instant::now();
    let result = run_bench(&mut chain, &cfg, |frac, mpps| {
        if let Some(bar) = &bar {
            if last.elapsed() >= Duration::from_millis(100) || frac >= 1.0 {
                last = std::time::Instant::now();
                bar.set_position((frac * 1000.0) as u64);
                if mpps > 0.0 {
                    bar.set_message(format!("{mpps:.2} Mpps"));
                } else {
                    bar.set_message("baseline / warm-up");
                }
            }
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    drop(chain);
    let captured = reader.map(|t| t.join().unwrap_or_default());
    if args.json {
        let mut v = result.to_json();
        v["chain"]["name"] = d.name.clone().into();
        if let Some((taken, matched, lost)) = captured {
            v["capture"] = serde_json::json!({
                "nf": args.capture, "filter": args.capture_filter,
                "mirrored": taken, "matched": matched, "lost": lost,
            });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("chain {}", d.name);
        print!("{}", format_result(&result));
        if let (Some((taken, matched, lost)), Some(nf)) = (captured, &args.capture) {
            println!(
                "capture on {nf} (filter {:?}): {matched} packets matched, {taken} mirrored, {lost} lost (reader behind)",
                args.capture_filter
            );
        }
    }
    Ok(())
}
