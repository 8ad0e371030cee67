//! `braid probe`: UDP round-trip latency (and optionally the maximum
//! lossless throughput) against `braid echo`.

use anyhow::Context;
use braid_probe::rtt::RttConfig;
use braid_probe::session::{run_probe, ProbeConfig};
use braid_probe::svg::cdf_svg;
use braid_probe::throughput::ThroughputConfig;
use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braid probe --netns braid-client 10.71.3.2\n  braid probe 127.0.0.1 --sizes 64,1400 --count 5000 --interval-us 200 --json\n  braid probe --netns braid-client 10.71.3.2 --throughput --no-latency"
)]
pub struct Args {
    /// Echo server, HOST[:PORT] (port 7007 if omitted).
    pub target: String,
    /// Run inside this network namespace (e.g. braid-client on the testbed).
    #[arg(long)]
    pub netns: Option<String>,
    /// Payload sizes in bytes, comma separated (each at least 24).
    #[arg(long, value_delimiter = ',', default_value = "256,1400")]
    pub sizes: Vec<usize>,
    /// Packets per repetition.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Repetitions per size; the confidence interval is over their means
    /// when there are two or more.
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// Inter-packet delay in microseconds.
    #[arg(long, default_value_t = 5000)]
    pub interval_us: u64,
    /// How long to wait for late answers after the last packet, ms.
    #[arg(long, default_value_t = 1000)]
    pub wait_ms: u64,
    /// SO_BUSY_POLL time on the probe socket, microseconds.
    #[arg(long)]
    pub busy_poll_us: Option<u32>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Also write every latency run with all its RTT samples (ns) as JSON
    /// to this file, to pool repetitions from separate invocations.
    #[arg(long)]
    pub raw_out: Option<PathBuf>,
    /// Write the latency CDF plot (SVG) here.
    #[arg(long, default_value = "probe-cdf.svg")]
    pub svg: PathBuf,
    /// Do not write the CDF plot.
    #[arg(long)]
    pub no_svg: bool,
    /// Title of the CDF plot.
    #[arg(long)]
    pub title: Option<String>,
    /// Also search the maximum lossless packet rate for each size.
    #[arg(long)]
    pub throughput: bool,
    /// Only the throughput search, no latency runs.
    #[arg(long, requires = "throughput")]
    pub no_latency: bool,
    /// Sending time of each throughput step, ms.
    #[arg(long, default_value_t = 1000)]
    pub step_ms: u64,
    /// Lowest rate of the search, packets/s.
    #[arg(long, default_value_t = 1000)]
    pub min_rate: u64,
    /// Highest rate of the search, packets/s.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_rate: u64,
    /// Stop the search when the bracket is within this fraction.
    #[arg(long, default_value_t = 0.02)]
    pub precision: f64,
    /// At most this many throughput steps per size.
    #[arg(long, default_value_t = 16)]
    pub max_steps: u32,
    /// Packets per sendmmsg/recvmmsg in the throughput search.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    let with_port = if target.parse::<SocketAddr>().is_ok()
        || target.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        target.to_string()
    } else {
        format!("{target}:7007")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("target {target:?} is not HOST[:PORT]"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("target {target:?} has no IPv4 address"))
}

/// Create output file `p` now, so a bad path fails before the measurement
/// rather than after it.
fn create(p: &Path, created: &mut Vec<PathBuf>) -> anyhow::Result<File> {
    let f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
    created.push(p.to_path_buf());
    Ok(f)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let target = resolve(&args.target)?;
    let sock = match &args.netns {
        Some(ns) => braid_io::netns::in_netns(ns, || UdpSocket::bind("0.0.0.0:0"))
            .with_context(|| format!("entering network namespace {ns}"))?,
        None => UdpSocket::bind("0.0.0.0:0"),
    }
    .context("binding the probe socket")?;
    sock.connect(target).with_context(|| format!("connecting to {target}"))?;
    let cfg = ProbeConfig {
        sizes: args.sizes.clone(),
        repetitions: if args.no_latency { 0 } else { args.reps },
        rtt: RttConfig {
            payload_len: 0,
            count: args.count,
            interval: Duration::from_micros(args.interval_us),
            wait: Duration::from_millis(args.wait_ms),
            busy_poll_us: args.busy_poll_us,
            ..Default::default()
        },
        throughput: args.throughput.then(|| ThroughputConfig {
            step: Duration::from_millis(args.step_ms),
            min_rate: args.min_rate,
            max_rate: args.max_rate,
            precision: args.precision,
            max_steps: args.max_steps,
            batch: args.batch,
            ..Default::default()
        }),
    };
    cfg.validate()?;
    let mut created = Vec::new();
    let files = (|| -> anyhow::Result<_> {
        let json_out = args.json_out.as_deref().map(|p| create(p, &mut created)).transpose()?;
        let raw_out = args.raw_out.as_deref().map(|p| create(p, &mut created)).transpose()?;
        let svg = (!args.no_svg && cfg.repetitions > 0)
            .then(|| create(&args.svg, &mut created))
            .transpose()?;
        Ok((json_out, raw_out, svg))
    })();
    let remove_created = |created: &[PathBuf]| {
        for p in created {
            let _ = std::fs::remove_file(p);
        }
    };
    let (json_out, raw_out, svg) = files.inspect_err(|_| remove_created(&created))?;
    let out = match run_probe(&sock, &cfg, |line| eprintln!("braid probe: {line}")) {
        Ok(out) => out,
        Err(e) => {
            remove_created(&created);
            return Err(e).with_context(|| format!("probing {target}"));
        }
    };
    let json = out.report.json();
    let text = if args.json { format!("{json}\n") } else { out.report.table() };
    // A closed pipe (`| head`) is not an error worth a panic.
    if let Err(e) = std::io::stdout().write_all(text.as_bytes()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("writing the report");
        }
    }
    let write = |f: Option<File>, p: &Path, text: &str| -> anyhow::Result<()> {
        match f {
            Some(mut f) => {
                f.write_all(text.as_bytes()).with_context(|| format!("writing {}", p.display()))
            }
            None => Ok(()),
        }
    };
    if let Some(p) = &args.json_out {
        write(json_out, p, &json)?;
    }
    if let Some(p) = &args.raw_out {
        write(raw_out, p, &out.raw_json())?;
    }
    if svg.is_some() {
        let title = args.title.clone().unwrap_or_else(|| format!("UDP RTT CDF to {target}"));
        write(svg, &args.svg, &cdf_svg(&title, &out.samples))?;
        eprintln!("braid probe: CDF plot written to {}", args.svg.display());
    }
    // Reported above; a size of which nothing came back fails the command
    // (exit 1), so scripts do not take a dead path for a measured one.
    if let Some(failure) = out.report.failure() {
        anyhow::bail!(failure);
    }
    Ok(())
}
