//! `braid plan CHAIN.yaml`: where each NF will run, and why.

use std::path::PathBuf;

use braid_runtime::plan::{Mapping, RunsAs};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braid plan examples/sample.yaml\n  braid plan examples/sample.yaml --mapping processes --json"
)]
pub struct Args {
    /// Chain descriptor (YAML).
    pub chain: PathBuf,
    /// How NFs are mapped: one thread (`braid run`), a thread per NF, a
    /// process per NF (`braid run-procs`), a host per NF (`braid deploy`), or
    /// a host per run of NFs placed alike (`braid deploy --mapping compact`).
    /// Decides what carries packets between NFs.
    #[arg(long, value_enum, default_value = "thread")]
    pub mapping: MappingArg,
    /// Links between hosts cannot use AF_XDP (use AF_PACKET instead).
    #[arg(long)]
    pub no_af_xdp: bool,
    /// Print the executable plan (placements, units, links) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MappingArg {
    Thread,
    Threads,
    Processes,
    Hosts,
    Compact,
}

impl From<MappingArg> for Mapping {
    fn from(m: MappingArg) -> Mapping {
        match m {
            MappingArg::Thread => Mapping::Thread,
            MappingArg::Threads => Mapping::Threads,
            MappingArg::Processes => Mapping::Processes,
            MappingArg::Hosts => Mapping::Hosts,
            MappingArg::Compact => Mapping::Compact,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let d = braid_runtime::validate::load(&args.chain)?;
    let plan = braid_runtime::plan::plan(&d)?;
    let spec =
        braid_runtime::plan::deployment(&d.name, &plan, args.mapping.into(), !args.no_af_xdp);
    if args.json {
        let placements: Vec<serde_json::Value> = plan
            .iter()
            .map(|e| {
                serde_json::json!({ "name": e.name, "kind": e.kind, "class": e.class.to_string(),
                    "placement": e.placement.to_string(), "reason": e.reason })
            })
            .collect();
        let mut v = serde_json::to_value(&spec)?;
        v["nfs"] = placements.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("chain {}:", d.name);
    println!("{:<12} {:<12} {:<11} {:<7} why", "nf", "type", "class", "runs in");
    for e in &plan {
        println!(
            "{:<12} {:<12} {:<11} {:<7} {}",
            e.name,
            e.kind,
            e.class.to_string(),
            e.placement.to_string(),
            e.reason
        );
    }
    println!();
    println!("mapping {}: {} unit(s)", spec.mapping, spec.units.len());
    for u in &spec.units {
        let runs = match u.runs_as {
            RunsAs::Worker { .. } => "worker thread",
            RunsAs::Xdp => "XDP program",
        };
        let nfs: Vec<&str> = u.nfs.iter().map(|&i| plan[i].name.as_str()).collect();
        println!("  {:<16} {:<14} {}", u.name, runs, nfs.join(" -> "));
    }
    let links = braid_runtime::plan::links(&plan, args.mapping.into(), !args.no_af_xdp);
    if !links.is_empty() {
        println!();
        println!("{:<25} {:<10} why", "link", "carried by");
        for l in &links {
            let name = format!("{} -> {}", l.from, l.to);
            println!("{:<25} {:<10} {}", name, l.backend.to_string(), l.reason);
        }
    }
    Ok(())
}
