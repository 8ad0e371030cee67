//! `braid plan CHAIN.yaml`: where each NF will run, and why.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Chain descriptor (YAML).
    pub chain: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let d = braid_runtime::validate::load(&args.chain)?;
    let plan = braid_runtime::plan::plan(&d)?;
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
    Ok(())
}
