//! `braid stats`: the live per-NF counters of the running `braid deploy`.

use super::deploy::DEFAULT_STATS_PATH;
use anyhow::Context;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braid stats\n  braid stats --watch\n  braid stats --json | jq '.nfs[].dropped'"
)]
pub struct Args {
    /// The stats file `braid deploy` writes.
    #[arg(long, default_value = DEFAULT_STATS_PATH)]
    pub stats_file: PathBuf,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    /// Refresh in place every SECONDS (default 1) until Ctrl-C or the
    /// deployment ends.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1")]
    pub watch: Option<f64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(every) = args.watch else {
        print!("{}", render(&args.stats_file, args.json)?);
        return Ok(());
    };
    if !(every.is_finite() && every >= 0.1) {
        anyhow::bail!("--watch {every}: the refresh interval must be at least 0.1 seconds");
    }
    let stop = braid_probe::signal::stop_on_signals().context("installing signal handlers")?;
    let mut shown = false;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match render(&args.stats_file, args.json) {
            // Home, clear to the end: the table redraws in place.
            Ok(text) => print!("\x1b[H\x1b[2J{text}"),
            // The deployment ended (file removed, or stale): say so and stop.
            Err(e) if shown => {
                println!("\n{e:#}");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        shown = true;
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let until = std::time::Instant::now() + Duration::from_secs_f64(every);
        while std::time::Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The table (or JSON) of the stats file at `path`.
fn render(path: &Path, json: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!(
                "no chain is deployed ({} not found); start one with `braid deploy`",
                path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let f: serde_json::Value = serde_json::from_str(&text)
        .ok()
        .filter(|v: &serde_json::Value| v["nfs"].is_array())
        .with_context(|| format!("{} is not a braid stats file", path.display()))?;
    if let Some(pid) = f["pid"].as_u64().filter(|p| !super::deploy::pid_running(*p)) {
        anyhow::bail!(
            "{} is stale: the braid deploy that wrote it (pid {pid}) is no longer running (killed?); no chain is deployed",
            path.display()
        );
    }
    if json {
        return Ok(format!("{text}\n"));
    }
    let _ = writeln!(
        out,
        "chain {} (braid deploy pid {}, up {:.0} s)",
        f["chain"].as_str().unwrap_or("?"),
        f["pid"],
        f["uptime_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "{:<12} {:<6} {:<8} {:<13} {:>12} {:>12} {:>12} {:>8} {:>9}",
        "nf",
        "kind",
        "host",
        "placement",
        "rx_packets",
        "rx_bytes",
        "redirected",
        "dropped",
        "malformed"
    );
    for n in f["nfs"].as_array().into_iter().flatten() {
        let s = |k: &str| n[k].as_str().unwrap_or("-").to_string();
        let u = |k: &str| n[k].as_u64().map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            out,
            "{:<12} {:<6} {:<8} {:<13} {:>12} {:>12} {:>12} {:>8} {:>9}",
            s("name"),
            s("kind"),
            s("host"),
            s("placement"),
            u("rx_packets"),
            u("rx_bytes"),
            u("redirected"),
            u("dropped"),
            u("malformed")
        );
        // User-space NFs: why frames were dropped, and what the kernel lost
        // before the NF saw them (AF_XDP sockets).
        if let Some(r) = n["drop_reasons"].as_object().filter(|r| !r.is_empty()) {
            let list: Vec<String> = r.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "{:<12} drops: {}", "", list.join(", "));
        }
        if let Some(w) = n["user"].as_object() {
            let g = |f: &str| w.get(f).and_then(|v| v.as_f64()).unwrap_or(0.0);
            let _ = writeln!(
                out,
                "{:<12} batches {}, mean batch {:.1}, max batch {}, {:.0} ns/packet",
                "",
                g("batches"),
                g("mean_batch"),
                g("max_batch"),
                g("ns_per_packet")
            );
        }
        if let Some(k) = n["sockets"].as_object() {
            let g = |f: &str| k.get(f).and_then(|v| v.as_u64()).unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<12} AF_XDP sockets of {}: rx_dropped {}, fill_ring_empty {}, rx_ring_full {}",
                "",
                s("host"),
                g("rx_dropped"),
                g("fill_ring_empty"),
                g("rx_ring_full")
            );
        }
    }
    // The ports of the user-space groups: `tx_full` counts frames an NF
    // passed on that the outgoing socket had no room for.
    let ports: Vec<&serde_json::Value> = f["ports"].as_array().into_iter().flatten().collect();
    if !ports.is_empty() {
        let _ = writeln!(
            out,
            "{:<8} {:<24} {:>12} {:>12} {:>10} {:>8}",
            "host", "port", "rx_packets", "tx_packets", "rx_dropped", "tx_full"
        );
    }
    for p in ports {
        let s = |k: &str| p[k].as_str().unwrap_or("-").to_string();
        let u = |k: &str| p[k].as_u64().map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            out,
            "{:<8} {:<24} {:>12} {:>12} {:>10} {:>8}",
            s("host"),
            s("port"),
            u("rx_packets"),
            u("tx_packets"),
            u("rx_dropped"),
            u("tx_full")
        );
    }
    Ok(out)
}
