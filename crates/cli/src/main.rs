//! The `braid` command line.
//!
//! One module per subcommand under `cmd/`; each has an `Args` struct and a
//! `run` function. Errors print as one clear line (with context), never a
//! backtrace, and exit with status 1; usage errors exit with 2 (clap).

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "braid",
    version,
    about = "Low-latency network-function chains on commodity Linux"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the NFs with class, placement and parameters.
    Nfs(cmd::nfs::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Nfs(a) => cmd::nfs::run(a),
    };
    if let Err(e) = result {
        eprintln!("braid: error: {e:#}");
        std::process::exit(1);
    }
}
