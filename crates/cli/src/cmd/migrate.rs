//! `braid migrate CHAIN NF --to HOST`: move an NF of a chain of braidd
//! live to the braidd of another host (docs/migration.md). A thin client:
//! the request goes to the local braidd as an operation, whose progress
//! is shown while it runs, then the summary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use braid_daemon::client::Client;
use serde_json::{json, Value};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  braid migrate edge fw --to 10.0.9.2:9480 --switch switch.yaml
  braid migrate edge nat --to hostb --mode stop-copy --switch switch.yaml --deploy-ports veth-in,veth-out

switch.yaml (how the traffic moves: routes around the chain, drain marker paths):
  redirect: [{netns: up, to: 10.0.2.0/24, via: 10.0.12.2, dev: to-b}]
  restore:  [{netns: up, to: 10.0.2.0/24, via: 10.0.11.2, dev: to-a}]
  markers:  [{netns: up, dev: to-a, port: in}, {netns: down, dev: to-a, port: out}]")]
pub struct Args {
    /// The chain (in the local braidd).
    pub chain: String,
    /// The NF to move (its name in the chain).
    pub nf: String,
    /// The destination braidd's migration listener: HOST[:PORT] (9480).
    #[arg(long)]
    pub to: String,
    /// statelet, duplicate or stop-copy.
    #[arg(long, default_value = "statelet")]
    pub mode: String,
    /// Which flows: all, share:I/N, hash:FIRST-LAST (hexadecimal).
    #[arg(long, default_value = "all")]
    pub flows: String,
    /// YAML or JSON file: how the traffic moves (redirect, restore, markers).
    #[arg(long)]
    pub switch: PathBuf,
    /// Deploy the chain (empty) at the destination if it does not run it,
    /// on these interfaces there: IN,OUT.
    #[arg(long, value_delimiter = ',')]
    pub deploy_ports: Vec<String>,
    /// How long any answer of the other side may take, ms.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Turn the state stream's back-pressure off (every worker turn
    /// sends; the kernel sizes the socket buffer): the behaviour before
    /// it, for comparisons.
    #[arg(long)]
    pub no_backpressure: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// braidd's socket.
    #[arg(long, default_value = braid_daemon::config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.switch)
        .with_context(|| format!("cannot read {}", a.switch.display()))?;
    let switch: Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{}: not YAML or JSON", a.switch.display()))?;
    let mut req = json!({ "to": a.to, "mode": a.mode, "flows": a.flows, "switch": switch,
                          "timeout_ms": a.timeout_ms });
    match a.deploy_ports.as_slice() {
        [] => {}
        [i, o] => req["deploy"] = json!({ "in": i, "out": o }),
        other => bail!("--deploy-ports: `{}`: expected two interfaces, IN,OUT", other.join(",")),
    }
    if a.no_backpressure {
        req["backpressure"] = json!(false);
    }
    let client = Client::new(&a.socket);
    let id = client.migrate_async(&a.chain, &a.nf, &req)?;
    let t = Instant::now();
    let mut shown = String::new();
    let op = loop {
        let op = client.operation(&id)?;
        if op["state"] != "running" {
            break op;
        }
        let p = &op["progress"];
        if let Some(phase) = p["phase"].as_str() {
            let line = format!(
                "{:>7.1} s  {phase:<16} {} sent, {} changed flows waiting",
                t.elapsed().as_secs_f64(),
                bytes(p["state_bytes"].as_u64().unwrap_or(0)),
                p["backlog"].as_u64().unwrap_or(0)
            );
            if phase != shown {
                eprintln!("{line}");
                shown = phase.to_string();
            }
        }
        if t.elapsed() > Duration::from_secs(3600) {
            bail!("operation {id} still running after an hour");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if op["state"] != "succeeded" {
        bail!(
            "migration of NF `{}` of chain `{}` failed ({id}): {}",
            a.nf,
            a.chain,
            op["error"]["message"].as_str().unwrap_or("no reason given")
        );
    }
    let r = &op["result"];
    if a.json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    println!(
        "migrated NF `{}` of chain `{}` to {} ({} mode, flows {})",
        a.nf,
        a.chain,
        a.to,
        r["mode"].as_str().unwrap_or("?"),
        a.flows
    );
    println!(
        "  time           {:.1} ms (until switch {:.1} ms, redirect {:.1} ms, drain {:.1} ms)",
        f("total_ms"),
        f("until_switch_ms"),
        f("redirect_ms"),
        f("drain_ms")
    );
    println!(
        "  state          {} in {} frames: {} snapshot chunks, {} statelets",
        bytes(f("state_bytes") as u64),
        f("frames"),
        f("chunks"),
        f("statelets")
    );
    println!(
        "  switch         {} changed flows waiting, {} in flight at the switch (bound {}, peak {})",
        f("backlog_at_switch"),
        bytes(f("in_flight_at_switch") as u64),
        bytes(f("in_flight_bound") as u64),
        bytes(f("peak_in_flight") as u64)
    );
    println!(
        "  destination    {} installed, {} packets buffered (peak), {} dropped",
        f("installed"),
        f("packets_buffered"),
        f("packets_dropped_at_destination")
    );
    if f("duplicated_packets") > 0.0 {
        println!("  duplicated     {} packets copied to the destination", f("duplicated_packets"));
    }
    println!("  outcome        {}", r["outcome"].as_str().unwrap_or("?"));
    Ok(())
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 10 << 20 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 10 << 10 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}
