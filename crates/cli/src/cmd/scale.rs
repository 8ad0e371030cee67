//! `braid scale out|in CHAIN NF --to HOST --steer ...`: add an instance of
//! a per-flow NF on another host and move share K of N of its flows there
//! (out), or merge an instance's flows into another and remove it (in),
//! steering by hash bucket so every flow keeps its state
//! (docs/migration.md, "Scale out and in"). A thin client of braidd's
//! `POST /v1/chains/{name}/nfs/{nf}/scale`: the request is checked here
//! (`braid_daemon::scale::ScaleRequest::check`), sent as one call, and
//! its operation followed to its end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use braid_daemon::client::Client;
use braid_daemon::migration::DeployPorts;
use braid_daemon::scale::{self, Direction, ScaleRequest, Share, SteerPoint};
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

fn request(
    c: &Common,
    direction: Direction,
    share: Option<Share>,
    deploy: Option<DeployPorts>,
) -> anyhow::Result<ScaleRequest> {
    let steer = c
        .steer
        .iter()
        .map(|s| s.parse::<SteerPoint>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let req = ScaleRequest {
        direction,
        to: c.to.clone(),
        share,
        steer,
        here: c.here,
        there: c.there,
        deploy,
        timeout_ms: Some(c.timeout_ms),
    };
    // Refused here, before braidd is called (it checks the same).
    req.check()?;
    Ok(req)
}

/// `K/N` of `--share`.
fn share(s: &str) -> anyhow::Result<Share> {
    let parsed = s.split_once('/').and_then(|(k, n)| Some((k.parse().ok()?, n.parse().ok()?)));
    match parsed {
        Some((k, n)) => Ok(Share { k, n }),
        None => bail!("--share `{}`: expected K/N, e.g. 1/2", s.escape_debug()),
    }
}

/// How long `braid scale` follows the operation at most.
const FOLLOW_LIMIT: Duration = Duration::from_secs(3600);

pub fn run(a: Args) -> anyhow::Result<()> {
    let (common, what, req) = match &a.action {
        Action::Out { common, share: s, deploy_ports } => {
            let deploy = match deploy_ports.as_slice() {
                [] => None,
                [i, o] => Some(DeployPorts { in_iface: i.clone(), out_iface: o.clone() }),
                other => {
                    bail!("--deploy-ports: `{}`: expected two interfaces, IN,OUT", other.join(","))
                }
            };
            (common, "scaled out", request(common, Direction::Out, Some(share(s)?), deploy)?)
        }
        Action::In { common } => (common, "scaled in", request(common, Direction::In, None, None)?),
    };
    let client = Client::new(&common.socket);
    let id = client.scale_async(&common.chain, &common.nf, &req)?;
    eprintln!("operation {id} on {}", client.at());
    let t = Instant::now();
    let (mut phase_shown, mut steps_shown) = (String::new(), 0);
    let summary = scale::follow(&client, &id, FOLLOW_LIMIT, |op| {
        let p = &op["progress"];
        if let Some(phase) = p["phase"].as_str().filter(|ph| *ph != phase_shown) {
            eprintln!(
                "{:>7.1} s  {phase:<16} {} B sent, {} changed flows waiting",
                t.elapsed().as_secs_f64(),
                p["state_bytes"].as_u64().unwrap_or(0),
                p["backlog"].as_u64().unwrap_or(0)
            );
            phase_shown = phase.to_string();
        }
        let steps = p["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
        for step in steps.iter().skip(steps_shown) {
            eprintln!("{:>7.1} s  {}", t.elapsed().as_secs_f64(), describe(step));
        }
        steps_shown = steps_shown.max(steps.len());
    })?;
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
        "  time           {:.1} ms (until switch {:.1} ms, redirect {:.1} ms, drain {:.1} ms)",
        f("total_ms"),
        f("until_switch_ms"),
        f("redirect_ms"),
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

/// One step of the operation, for a person.
fn describe(step: &Value) -> String {
    let s = |k: &str| step[k].as_str().unwrap_or("?");
    let what = match s("step") {
        "check_steering" => format!(
            "steering tables checked: flows {}, buckets {} of {}",
            s("flows"),
            step["buckets"],
            step["of"]
        ),
        "migrate" => format!("migration of flows {} to {}", s("flows"), s("to")),
        kind @ ("steer" | "steer_back") => format!(
            "{} `{}/{}` at {}: buckets {} from instance {} to {}",
            if kind == "steer" { "steered" } else { "steered back" },
            s("chain"),
            s("nf"),
            s("at"),
            step["buckets"],
            step["from"],
            step["to"]
        ),
        "remove" => format!("removal of chain `{}`", s("chain")),
        other => other.to_string(),
    };
    match step["error"].as_str() {
        Some(e) => format!("{what}: {} ({e})", s("outcome")),
        None => format!("{what}: {}", s("outcome")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_read_as_what_was_done() {
        let steer = json!({ "step": "steer", "chain": "su", "nf": "st", "at": "this braidd",
                            "from": 0, "to": 1, "buckets": [128, 255], "outcome": "done" });
        assert_eq!(
            describe(&steer),
            "steered `su/st` at this braidd: buckets [128,255] from instance 0 to 1: done"
        );
        let failed = json!({ "step": "migrate", "flows": "share:1/2", "to": "10.0.9.2:9480",
                             "outcome": "failed", "error": "no answer" });
        assert_eq!(
            describe(&failed),
            "migration of flows share:1/2 to 10.0.9.2:9480: failed (no answer)"
        );
        let removed = json!({ "step": "remove", "chain": "edge", "outcome": "done" });
        assert_eq!(describe(&removed), "removal of chain `edge`: done");
    }
}
