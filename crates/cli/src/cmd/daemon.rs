//! `braid daemon ...`: a thin client of braidd, the per-host daemon
//! (`braid_daemon::client`). The foreground commands (`braid run`,
//! `braid deploy`) are unchanged.

use std::path::PathBuf;

use anyhow::Context as _;
use braid_daemon::client::Client;
use serde_json::Value;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braidd &   # the daemon, on /run/braid/braidd.sock\n  braid daemon status\n  braid daemon deploy live-chain.yaml\n  braid daemon show live --json\n  braid daemon set live fw '{default: drop}'\n  braid daemon events --since 0\n  braid daemon operations\n  braid daemon profile live --interval-ms 2000 --svg live.svg\n  braid daemon sched live fw --policy batch --slice-us 3000 --batch 64\n  braid daemon --socket /tmp/b.sock chains\n  braid daemon --url https://192.0.2.10:9479 --ca cert.pem --token-file token status"
)]
pub struct Args {
    /// braidd's unix socket.
    #[arg(long, global = true, default_value = braid_daemon::config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// braidd's TCP API instead of the unix socket: https://HOST[:PORT]
    /// (braidd's `listen`; TLS 1.3; needs --ca and --token-file).
    #[arg(long, global = true, value_name = "URL", conflicts_with = "socket", requires_all = ["ca", "token_file"])]
    pub url: Option<String>,
    /// With --url: the PEM certificate(s) to trust (braidd's self-signed
    /// certificate or the CA that signed it).
    #[arg(long, global = true, value_name = "FILE", requires = "url")]
    pub ca: Option<PathBuf>,
    /// With --url: the file holding the bearer token (its first line).
    #[arg(long, global = true, value_name = "FILE", requires = "url")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// braidd's version, pid, uptime and chain counts.
    Status,
    /// Every chain braidd runs, with its state.
    Chains {
        /// The whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One chain: state, descriptor and live per-NF counters.
    Show {
        name: String,
        /// The whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deploy a chain descriptor (its `in` and `out` ports must be af_packet or af_xdp).
    Deploy { file: PathBuf },
    /// Replace an NF's parameters while its chain runs.
    Set {
        chain: String,
        nf: String,
        /// The new parameters, YAML or JSON (`'{default: drop}'`).
        params: String,
    },
    /// Stop a chain and forget it.
    Remove { name: String },
    /// Print braidd's metrics (OpenMetrics text).
    Metrics,
    /// Follow braidd's event stream: one JSON object per line (chains
    /// deployed, removed, reconfigured, state changes, operations).
    Events {
        /// Replay the kept events after this sequence number first (0: all kept).
        #[arg(long)]
        since: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// The last operations (deploy, remove, reconfigure), or one of them.
    Operations { id: Option<String> },
    /// Profile a running chain over an interval: per NF at the call edge
    /// and per worker thread with its OS counters (the tables of `braid
    /// profile`, mapping `live`).
    Profile {
        chain: String,
        /// How long to watch, in milliseconds (10..=60000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
        interval_ms: u64,
        /// Calibrate context-switch and system-call costs first (on the
        /// last CPU, before the interval), so they are modelled.
        #[arg(long)]
        calibrate: bool,
        /// Print the profile as JSON.
        #[arg(long)]
        json: bool,
        /// Also write the per-packet cost by component as an SVG.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Change how the worker running an NF is scheduled, live (the NF's
    /// `sched` block; kept across braidd restarts). Fields not given keep
    /// the chain's or braidd's default.
    Sched {
        chain: String,
        nf: String,
        /// Scheduling policy.
        #[arg(long, value_enum)]
        policy: Option<crate::cmd::nf_proc::Policy>,
        /// Real-time priority 1..=99, for --policy fifo or rr.
        #[arg(long)]
        priority: Option<i32>,
        /// Nice -20..=19, for other, batch and idle.
        #[arg(long, allow_negative_numbers = true)]
        nice: Option<i32>,
        /// CPUs the worker may run on (`0-1,3`).
        #[arg(long)]
        cpus: Option<String>,
        /// Packets per receive (1..=1024).
        #[arg(long)]
        batch: Option<usize>,
        /// When idle: busy, poll or sleep.
        #[arg(long)]
        idle: Option<braid_dataplane::Idle>,
        /// Adaptive mode on (true) or off (false).
        #[arg(long)]
        adapt: Option<bool>,
        /// EEVDF slice in µs (100..=100000), for other and batch (Linux 6.12+).
        #[arg(long)]
        slice_us: Option<u64>,
        /// Remove the NF's `sched` block (back to the chain's and braidd's
        /// defaults); no other option with it.
        #[arg(long, conflicts_with_all = ["policy", "priority", "nice", "cpus", "batch", "idle", "adapt", "slice_us"])]
        clear: bool,
    },
}

fn pretty(v: &Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)?)
}

/// A chain's per-NF counters, one line each, with where each NF runs
/// (`kernel` NFs have no time per packet: "-").
fn stages_table(v: &Value) -> String {
    let mut out = format!(
        "{:<12} {:<12} {:<6} {:>10} {:>10} {:>10} {:>9}\n",
        "nf", "type", "where", "in", "out", "dropped", "ns/pkt"
    );
    for s in v["stats"]["stages"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("");
        let placement = v["nfs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == name)
            .and_then(|n| n["placement"].as_str())
            .unwrap_or("");
        let ns = s["ns_per_packet"].as_f64().map_or("-".to_string(), |ns| format!("{ns:.1}"));
        // As text: a JSON value's Display ignores width and alignment.
        let count = |field: &str| s[field].as_u64().map_or("-".to_string(), |n| n.to_string());
        out.push_str(&format!(
            "{:<12} {:<12} {:<6} {:>10} {:>10} {:>10} {:>9}\n",
            name,
            s["kind"].as_str().unwrap_or(""),
            placement,
            count("packets_in"),
            count("packets_out"),
            count("dropped"),
            ns,
        ));
    }
    out
}

/// With `mapping: processes`, one line naming each NF's process and its
/// restarts (`down` while it is being restarted or after it was given up).
fn processes_line(v: &Value) -> Option<String> {
    let procs = v["processes"].as_array()?;
    let each: Vec<String> = procs
        .iter()
        .map(|p| {
            let pid = p["pid"].as_u64().map_or("down".to_string(), |pid| format!("pid {pid}"));
            format!("{} {pid} ({} restarts)", p["name"].as_str().unwrap_or(""), p["restarts"])
        })
        .collect();
    Some(format!("NF processes: {}", each.join(", ")))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let c = match (&args.url, &args.ca, &args.token_file) {
        (Some(url), Some(ca), Some(token)) => Client::tls(url, ca, token)?,
        _ => Client::new(&args.socket),
    };
    match args.command {
        Cmd::Status => println!("{}", pretty(&c.status()?)?),
        Cmd::Chains { json } => {
            let chains = c.chains()?;
            if json {
                println!("{}", pretty(&Value::Array(chains))?);
            } else {
                println!("{:<20} {:<8} {:>4}  error", "chain", "state", "nfs");
                for ch in &chains {
                    println!(
                        "{:<20} {:<8} {:>4}  {}",
                        ch["name"].as_str().unwrap_or(""),
                        ch["state"].as_str().unwrap_or(""),
                        ch["descriptor"]["nfs"].as_array().map_or(0, Vec::len),
                        ch["error"].as_str().unwrap_or("-"),
                    );
                }
            }
        }
        Cmd::Show { name, json } => {
            let v = c.chain(&name)?;
            if json {
                println!("{}", pretty(&v)?);
            } else {
                println!(
                    "chain {} ({}){}",
                    name,
                    v["state"].as_str().unwrap_or(""),
                    v["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default()
                );
                print!("{}", stages_table(&v));
                if let Some(line) = processes_line(&v) {
                    println!("{line}");
                }
            }
        }
        Cmd::Deploy { file } => {
            let text = braid_runtime::validate::read_descriptor(&file)?;
            let shown = file.display().to_string();
            // The daemon names the body; the user knows it as this file.
            let v = c.deploy(&text).map_err(|e| {
                anyhow::anyhow!("{}", e.to_string().replace("request body:", &format!("{shown}:")))
            })?;
            println!(
                "deployed chain `{}` ({} NFs): {}",
                v["name"].as_str().unwrap_or(""),
                v["descriptor"]["nfs"].as_array().map_or(0, Vec::len),
                v["state"].as_str().unwrap_or("")
            );
        }
        Cmd::Set { chain, nf, params } => {
            let params: Value = serde_yaml_ng::from_str(&params)
                .with_context(|| format!("parameters `{params}`: not YAML or JSON"))?;
            c.reconfigure(&chain, &nf, &params)?;
            println!("chain `{chain}`: NF `{nf}` reconfigured");
        }
        Cmd::Remove { name } => {
            let v = c.remove(&name)?;
            println!("removed chain `{name}`");
            if let Some(e) = v["error"].as_str() {
                eprintln!("its worker had stopped with: {e}");
            }
        }
        Cmd::Metrics => print!("{}", c.metrics()?),
        Cmd::Events { since, count } => {
            // Events can be hours apart: wait for the next one a day.
            let c = c.with_timeout(std::time::Duration::from_secs(24 * 3600));
            for e in c.events(since)?.take(count.unwrap_or(usize::MAX)) {
                println!("{}", e?);
            }
        }
        Cmd::Profile { chain, interval_ms, calibrate, json, svg } => {
            let v = c.profile(&chain, interval_ms, calibrate)?;
            let p: braid_profile::Profile = serde_json::from_value(v.clone())
                .context("braidd's profile does not read as a braid profile")?;
            if let Some(path) = &svg {
                std::fs::write(path, braid_profile::report::to_svg(&p))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if json {
                println!("{}", pretty(&v)?);
            } else {
                print!("{}", braid_profile::report::format_table(&p));
            }
        }
        Cmd::Sched {
            chain,
            nf,
            policy,
            priority,
            nice,
            cpus,
            batch,
            idle,
            adapt,
            slice_us,
            clear,
        } => {
            let cpus = match &cpus {
                Some(list) => Some(
                    braid_runtime::coordinator::parse_cpu_list(list)
                        .filter(|c| !c.is_empty())
                        .with_context(|| {
                            format!("--cpus {list:?}: expected a CPU list like 0-1,3")
                        })?,
                ),
                None => None,
            };
            let decl = braid_runtime::SchedDecl {
                policy: policy.map(|p| match p {
                    crate::cmd::nf_proc::Policy::Other => braid_runtime::PolicyDecl::Other,
                    crate::cmd::nf_proc::Policy::Batch => braid_runtime::PolicyDecl::Batch,
                    crate::cmd::nf_proc::Policy::Idle => braid_runtime::PolicyDecl::Idle,
                    crate::cmd::nf_proc::Policy::Fifo => braid_runtime::PolicyDecl::Fifo,
                    crate::cmd::nf_proc::Policy::Rr => braid_runtime::PolicyDecl::Rr,
                }),
                priority,
                nice,
                cpus,
                batch_size: batch,
                idle,
                adapt,
                slice_us,
            };
            if decl.is_empty() && !clear {
                anyhow::bail!(
                    "nothing to change: give --policy, --priority, --nice, --cpus, --batch, --idle, --adapt or --slice-us (or --clear to remove the NF's sched block)"
                );
            }
            let v = c.set_sched(&chain, &nf, &serde_json::to_value(&decl)?)?;
            println!(
                "chain `{chain}`: NF `{nf}`'s worker now runs with {}",
                serde_json::to_string(&v["worker_sched"])?
            );
        }
        Cmd::Operations { id: Some(id) } => println!("{}", pretty(&c.operation(&id)?)?),
        Cmd::Operations { id: None } => {
            let v = c.json("GET", "/v1/operations", None)?;
            println!("{:<8} {:<12} {:<20} {:<10} {:>6}", "id", "kind", "chain", "state", "status");
            for o in v["operations"].as_array().into_iter().flatten() {
                println!(
                    "{:<8} {:<12} {:<20} {:<10} {:>6}",
                    o["id"].as_str().unwrap_or(""),
                    o["kind"].as_str().unwrap_or(""),
                    o["chain"].as_str().unwrap_or(""),
                    o["state"].as_str().unwrap_or(""),
                    o["status"].as_u64().map_or("-".into(), |s| s.to_string()),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stages_table_says_where_each_nf_runs() {
        let v = serde_json::json!({
            "nfs": [{ "name": "fw", "placement": "kernel" }, { "name": "f", "placement": "user" }],
            "stats": { "stages": [
                { "name": "fw", "kind": "firewall", "packets_in": 3, "packets_out": 2, "dropped": 1 },
                { "name": "f", "kind": "fwd", "packets_in": 2, "packets_out": 2, "dropped": 0, "ns_per_packet": 41.26 },
            ] }
        });
        let rows: Vec<Vec<String>> = stages_table(&v)
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect();
        assert_eq!(rows[0], ["nf", "type", "where", "in", "out", "dropped", "ns/pkt"]);
        assert_eq!(rows[1], ["fw", "firewall", "kernel", "3", "2", "1", "-"]);
        assert_eq!(rows[2], ["f", "fwd", "user", "2", "2", "0", "41.3"]);
        // Right-aligned under their headings: the columns end together.
        let ends = |line: &str| {
            line.char_indices()
                .filter(|&(i, c)| c != ' ' && line[i + 1..].starts_with(' ') || i + 1 == line.len())
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        let table = stages_table(&v);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(ends(lines[1])[3..], ends(lines[0])[3..], "{table}");
        assert_eq!(ends(lines[2])[3..], ends(lines[0])[3..], "{table}");
        assert_eq!(processes_line(&v), None, "not a processes chain");
    }

    #[test]
    fn a_processes_chain_names_its_nf_processes() {
        let v = serde_json::json!({ "processes": [
            { "name": "fw", "pid": 4242, "restarts": 1 },
            { "name": "f", "pid": null, "restarts": 5 },
        ] });
        assert_eq!(
            processes_line(&v).unwrap(),
            "NF processes: fw pid 4242 (1 restarts), f down (5 restarts)"
        );
    }
}
