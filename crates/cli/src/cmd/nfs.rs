//! `braid nfs`: list the NF kinds.

use braid_nf::REGISTRY;

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  braid nfs\n  braid nfs -v")]
pub struct Args {
    /// Show the parameters of each NF too.
    #[arg(short, long)]
    pub verbose: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    println!("{:<14} {:<11} {:<13} {:<9} summary", "name", "class", "placement", "state");
    for s in REGISTRY {
        let places: Vec<String> = s.placements.iter().map(|p| p.to_string()).collect();
        println!(
            "{:<14} {:<11} {:<13} {:<9} {}",
            s.name,
            s.class.to_string(),
            places.join(","),
            s.state.short(),
            s.summary
        );
        if args.verbose {
            println!("    state: {}", s.state);
            for p in s.params {
                let def = p
                    .default
                    .map(|d| format!(" (default {d})"))
                    .unwrap_or_else(|| " (required)".into());
                println!("    {:<18} {}{}: {}", p.name, p.kind, def, p.help);
            }
        }
    }
    Ok(())
}
