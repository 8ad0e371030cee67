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
    /// Run the demo: build a sample capture, run it through a sample chain, print statistics.
    Demo(cmd::demo::Args),
    /// Check chain descriptors; report every problem with file, line and field.
    Validate(cmd::validate::Args),
    /// Show where each NF of a chain will run (kernel or user space) and why.
    Plan(cmd::plan::Args),
    /// Push a pcap through a chain and write what leaves it.
    Run(cmd::run::Args),
    /// In-memory throughput of a chain, whole and per NF.
    Bench(cmd::bench::Args),
    /// Run a chain under the profiler: per NF, per worker thread (OS and
    /// hardware counters) and per packet, measured vs modelled.
    Profile(cmd::profile::Args),
    /// UDP echo server for `braid probe`.
    Echo(cmd::echo::Args),
    /// UDP round-trip latency and maximum lossless throughput.
    Probe(cmd::probe::Args),
    /// Network-namespace testbed: up, down, status, show.
    Testbed(cmd::testbed::Args),
    /// Run a chain on the testbed (XDP in the kernel, AF_XDP or AF_PACKET in user space) until stopped.
    Deploy(cmd::deploy::Args),
    /// Live per-NF counters of the running `braid deploy`.
    Stats(cmd::stats::Args),
    /// Mirror the packets entering, leaving or dropped by an NF of a running deployment to pcapng.
    Capture(cmd::capture::Args),
    /// Move an NF of a braidd chain live to the braidd of another host.
    Migrate(cmd::migrate::Args),
    /// Add or remove an instance of a per-flow NF behind steering NFs, moving
    /// hash buckets of flows with their state.
    Scale(cmd::scale::Args),
    /// Packet rate and one-way latency between NF processes over shared
    /// memory, veth+UDP, veth+AF_XDP and in-process hand-over, side by side.
    ShmBench(cmd::shm_bench::Args),
    /// Run one NF as its own process between shared-memory ports.
    NfProc(cmd::nf_proc::Args),
    /// Run each NF of a chain as its own supervised process over shared
    /// memory.
    RunProcs(cmd::run_procs::Args),
    /// Measure scheduling configurations of a chain of NF processes on one
    /// CPU and recommend a `sched` block (or run SCC's chain experiment).
    Tune(cmd::tune::Args),
    /// Talk to braidd, the per-host daemon: status, chains, show, deploy, set, remove, metrics.
    Daemon(cmd::daemon::Args),
}

/// Let a closed standard output end the process quietly, as it ends `cat`
/// or `ls`: `braid nfs -v | head -1` stops when `head` has its line, with
/// no message (the shell sees status 141, killed by SIGPIPE). Rust's
/// runtime ignores SIGPIPE, so a write to a closed pipe returns an error and
/// `println!` panics; the default action is restored only for commands that
/// print and hold nothing that needs cleaning up. Commands with sockets,
/// children or testbed state (deploy, run-procs, nf-proc, shm-bench,
/// probe, echo, testbed) keep ignoring it, so a peer closing a socket is an
/// error they handle rather than a silent death.
#[allow(unsafe_code)]
fn end_quietly_on_closed_stdout() {
    // SAFETY: signal(2) only sets the disposition of SIGPIPE; it is called
    // before any thread is started, and SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Nfs(_)
            | Command::Demo(_)
            | Command::Validate(_)
            | Command::Plan(_)
            | Command::Run(_)
            | Command::Bench(_)
            | Command::Profile(_)
            | Command::Stats(_)
            | Command::Daemon(_)
    ) {
        end_quietly_on_closed_stdout();
    }
    let result = match cli.command {
        Command::Nfs(a) => cmd::nfs::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Validate(a) => cmd::validate::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Profile(a) => cmd::profile::run(a),
        Command::Echo(a) => cmd::echo::run(a),
        Command::Probe(a) => cmd::probe::run(a),
        Command::Testbed(a) => cmd::testbed::run(a),
        Command::Deploy(a) => cmd::deploy::run(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Capture(a) => cmd::capture::run(a),
        Command::Migrate(a) => cmd::migrate::run(a),
        Command::Scale(a) => cmd::scale::run(a),
        Command::ShmBench(a) => cmd::shm_bench::run(a),
        Command::NfProc(a) => cmd::nf_proc::run(a),
        Command::RunProcs(a) => cmd::run_procs::run(a),
        Command::Daemon(a) => cmd::daemon::run(a),
        Command::Tune(a) => cmd::tune::run(a),
    };
    if let Err(e) = result {
        eprintln!("braid: error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

/// `e` and its causes joined by ": ", like `{e:#}`, but without a cause
/// whose text the message before it already ends with: library errors
/// that name their source in their message (`cannot read x: No such
/// file`) would otherwise print it twice.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.ends_with(&text) {
            out = format!("{out}: {text}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;
    use clap::Parser as _;

    #[test]
    fn a_cause_already_in_the_message_prints_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        /// Names its source in its message and returns it as its source.
        #[derive(Debug)]
        struct Named(std::io::Error);
        impl std::fmt::Display for Named {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot read x: {}", self.0)
            }
        }
        impl std::error::Error for Named {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(Named(io));
        assert_eq!(error_chain(&e), "cannot read x: no such file");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&e), "outer: inner");
    }

    /// The `braid ...` commands of a help text's examples, as argument
    /// lists: each pipeline or `&&` part that starts with `braid`, up to a
    /// comment or `&`, split on spaces with '...' kept together.
    fn example_commands(help: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for line in help.lines().skip_while(|l| !l.starts_with("Examples:")).skip(1) {
            let line = line.split(" #").next().unwrap();
            for part in line.split(['|', '&']) {
                let mut words = Vec::new();
                let mut quoted: Option<String> = None;
                for w in part.split_whitespace() {
                    match quoted.as_mut() {
                        Some(q) => {
                            q.push(' ');
                            q.push_str(w.trim_end_matches('\''));
                            if w.ends_with('\'') {
                                words.push(quoted.take().unwrap());
                            }
                        }
                        None if w.starts_with('\'') && !(w.len() > 1 && w.ends_with('\'')) => {
                            quoted = Some(w.trim_start_matches('\'').to_string())
                        }
                        None => words.push(w.trim_matches('\'').to_string()),
                    }
                }
                if words.first().is_some_and(|w| w == "braid") {
                    out.push(words);
                }
            }
        }
        out
    }

    #[test]
    fn every_subcommand_has_examples_that_parse() {
        use clap::CommandFactory;
        let cli = super::Cli::command();
        for sub in cli.get_subcommands() {
            let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            let examples = example_commands(&help);
            assert!(
                examples.iter().any(|a| a[1] == sub.get_name()),
                "`braid {}` has no example of itself in --help",
                sub.get_name()
            );
            for args in examples {
                if let Err(e) = super::Cli::try_parse_from(&args) {
                    panic!("example `{}` does not parse: {e}", args.join(" "));
                }
            }
        }
    }
}
