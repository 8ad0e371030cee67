//! `braid scale out|in CHAIN NF --to HOST --steer ...`: add an instance of
//! a per-flow NF on another host and move share K of N of its flows there
//! (out), or merge an instance's flows into another and remove it (in),
//! steering by hash bucket so every flow keeps its state
//! (docs/migration.md, "Scale out and in"). A thin client of
//! `braid_daemon::scale`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use braid_daemon::client::Client;
use braid_daemon::scale::{self, ScaleRequest, SteerPoint};
use serde_json::Value;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  braid scale out edge fw --to 10.0.9.2:9480 --share 1/2 --deploy-ports bi,bo --steer su/st:in@/run/s.sock --steer sd/st:out@/run/s.sock
  braid scale in edge fw --to 10.0.9.1:9480 --here 1 --there 0 --socket /run/b.sock --steer su/st:in@/run/s.sock --steer sd/st:out@/run/s.sock

--steer CHAIN/NF:PORT[@SOCKET]: a `steer` NF in front of the instances, on the
braidd at SOCKET (default: --socket), whose traffic enters this instance's
chain by PORT (in or out). Instance I of its table is its gate 1+I.")]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Move share K of N of the flows (with their state) to a new instance.
    Out {
        #[command(flatten)]
        common: Common,
        /// Which share moves: K/N (share K of N equal hash ranges; N must
        /// divide the steering tables' bucket count).
        #[arg(long, default_value = "1/2")]
        share: String,
        /// Deploy the chain (empty) at the destination if it does not run
        /// it, on these interfaces there: IN,OUT.
        #[arg(long, value_delimiter = ',')]
        deploy_ports: Vec<String>,
    },
    /// Merge every flow of this instance into another, then remove it.
    In {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args)]
pub struct Common {
    /// The chain (in the braidd at --socket) running the instance.
    pub chain: String,
    /// The NF (its name in the chain).
    pub nf: String,
    /// The other instance's braidd migration listener: HOST[:PORT] (9480).
    #[arg(long)]
    pub to: String,
    /// A steering NF (repeat for each): CHAIN/NF:PORT[@SOCKET].
    #[arg(long = "steer", required = true)]
    pub steer: Vec<String>,
    /// This instance's index in the steering tables.
    #[arg(long, default_value_t = 0)]
    pub here: u16,
    /// The other instance's index in the steering tables.
    #[arg(long, default_value_t = 1)]
    pub there: u16,
    /// How long any answer of the other side may take, ms.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// The braidd running the instance.
    #[arg(long, default_value = braid_daemon::config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

fn request(c: &Common, deploy: Option<(String, String)>) -> anyhow::Result<ScaleRequest> {
    let steer = c
        .steer
        .iter()
        .map(|s| s.parse::<SteerPoint>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ScaleRequest {
        chain: c.chain.clone(),
        nf: c.nf.clone(),
        to: c.to.clone(),
        steer,
        here: c.here,
        there: c.there,
        deploy,
        timeout: Duration::from_millis(c.timeout_ms),
    })
}

/// `K/N` of `--share`.
fn share(s: &str) -> anyhow::Result<(u64, u64)> {
    let parsed = s.split_once('/').and_then(|(k, n)| Some((k.parse().ok()?, n.parse().ok()?)));
    match parsed {
        Some(kn) => Ok(kn),
        None => bail!("--share `{}`: expected K/N, e.g. 1/2", s.escape_debug()),
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut shown = String::new();
    let progress = |p: &Value| {
        if let Some(phase) = p["phase"].as_str().filter(|ph| *ph != shown) {
            eprintln!(
                "{:>7.1} s  {phase:<16} {} B sent, {} changed flows waiting",
                t.elapsed().as_secs_f64(),
                p["state_bytes"].as_u64().unwrap_or(0),
                p["backlog"].as_u64().unwrap_or(0)
            );
            shown = phase.to_string();
        }
    };
    let (common, what, summary) = match &a.action {
        Action::Out { common, share: s, deploy_ports } => {
            let deploy = match deploy_ports.as_slice() {
                [] => None,
                [i, o] => Some((i.clone(), o.clone())),
                other => {
                    bail!("--deploy-ports: `{}`: expected two interfaces, IN,OUT", other.join(","))
                }
            };
            let req = request(common, deploy)?;
            let kn = share(s)?;
            let client = Client::new(&common.socket);
            (common, "scaled out", scale::scale_out(&client, &req, kn, progress)?)
        }
        Action::In { common } => {
            let req = request(common, None)?;
            let client = Client::new(&common.socket);
            (common, "scaled in", scale::scale_in(&client, &req, progress)?)
        }
    };
    if common.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let f = |k: &str| summary[k].as_f64().unwrap_or(0.0);
    println!(
        "{what}: NF `{}` of chain `{}`, flows {} moved from instance {} to {} ({})",
        common.nf,
        common.chain,
        summary["flows"].as_str().unwrap_or("?"),
        common.here,
        common.there,
        common.to
    );
    println!(
        "  time           {:.1} ms (until switch {:.1} ms, drain {:.1} ms)",
        f("total_ms"),
        f("until_switch_ms"),
        f("drain_ms")
    );
    println!(
        "  state          {} B in {} frames: {} snapshot chunks, {} statelets",
        f("state_bytes"),
        f("frames"),
        f("chunks"),
        f("statelets")
    );
    println!(
        "  destination    {} installed, {} packets buffered (peak), {} dropped",
        f("installed"),
        f("packets_buffered"),
        f("packets_dropped_at_destination")
    );
    println!("  source         {} moved flows dropped", f("flows_dropped_at_source"));
    if let Some(c) = summary["removed"].as_str() {
        println!("  removed        chain `{c}` (this instance)");
    }
    Ok(())
}
