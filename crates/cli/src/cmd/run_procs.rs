//! `braid run-procs CHAIN.yaml`: run every NF of a chain as its own
//! process (`braid nf-proc`), connected by shared-memory ports, supervised.
//!
//! NF `i` listens on the link to NF `i+1` and connects to the link from NF
//! `i-1`; the first NF listens on `DIR/in.sock` and the last on
//! `DIR/out.sock`, where a generator and a sink connect (any program using
//! `ShmPort::connect`). A crashed NF is reported and restarted by policy;
//! its neighbours keep running and keep their state, and reconnect to it
//! when it is back. An NF given up after its maximum restarts stops the
//! chain, and the command exits non-zero. The NF processes die with this
//! one; the sockets (and the directory, when created here) are removed.
//! The library part is `braid_runtime::proc_chain`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use braid_io::virtual_port::{explain, Location};
use braid_runtime::proc_chain::{nf_commands, ChildIdle, SocketDir};
use braid_runtime::supervisor::{ProcSpec, RestartPolicy, Supervisor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Restart {
    Never,
    OnFailure,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  braid run-procs examples/sample.yaml\n  braid run-procs examples/sample.yaml --seconds 30 --netns --watchdog-ms 500"
)]
pub struct Args {
    /// Chain descriptor (YAML).
    pub chain: PathBuf,
    /// Directory for the sockets (created; default: a fresh one in /tmp).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Restart policy for a crashed NF process.
    #[arg(long, value_enum, default_value_t = Restart::OnFailure)]
    pub restart: Restart,
    /// Restarts per NF before giving up (with on-failure).
    #[arg(long, default_value_t = 5)]
    pub max_restarts: u32,
    /// Stop after this many seconds (default: until SIGINT or SIGTERM).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Run each NF process in its own network namespace (created here,
    /// deleted on exit; needs root). The shared-memory sockets are files, so
    /// they cross network namespaces.
    #[arg(long)]
    pub netns: bool,
    /// Kill and restart an NF process whose packet loop stops turning (no
    /// heartbeat) for this many milliseconds; 0 turns the watchdog off.
    #[arg(long, default_value_t = 2000)]
    pub watchdog_ms: u64,
}

pub fn run(a: Args) -> Result<()> {
    let d = braid_runtime::validate::load(&a.chain)?;
    let dir = match a.dir.clone() {
        Some(p) => SocketDir::at(p)?,
        None => SocketDir::temporary(&d.name)?,
    };
    let exe = std::env::current_exe().context("find this executable")?;
    let policy = match a.restart {
        Restart::Never => RestartPolicy::Never,
        Restart::OnFailure => RestartPolicy::on_failure(a.max_restarts),
    };
    let cmds = nf_commands(&d, dir.path(), ChildIdle::Busy)?;
    println!("chain {}: {} NF processes; sockets in {}", d.name, cmds.len(), dir.path().display());
    for i in 0..cmds.len().saturating_sub(1) {
        let (from, to) =
            (Location::user("local", i as u32, 0), Location::user("local", i as u32 + 1, 0));
        println!("  {} -> {}: {}", cmds[i].0, cmds[i + 1].0, explain(&from, &to, true));
    }
    println!("  in: {}  out: {}", dir.input().display(), dir.output().display());
    // Guards delete the namespaces when this function returns, after the
    // supervisor (declared later, dropped first) has stopped the processes.
    let mut namespaces = Vec::new();
    if a.netns {
        if !braid_io::netns::is_root() {
            bail!("--netns needs root (it creates network namespaces)");
        }
        // What a run-procs killed by SIGKILL left behind: its pid (in the
        // names, recorded as they are created) no longer runs.
        for name in braid_io::netns::reap_orphans("nf-")
            .context("remove the namespaces of killed run-procs")?
        {
            println!("  removed network namespace {name} left by a killed run-procs");
        }
        for (name, _) in &cmds {
            let ns = braid_io::netns::NetnsGuard::create(&braid_io::netns::unique_name(&format!(
                "nf-{name}"
            )))
            .with_context(|| format!("create the network namespace of NF {name}"))?;
            println!("  {name}: network namespace {}", ns.name());
            namespaces.push(ns);
        }
    }
    let specs = cmds
        .into_iter()
        .enumerate()
        .map(|(i, (name, args))| ProcSpec {
            name,
            program: exe.clone(),
            args,
            netns: namespaces.get(i).map(|ns| ns.name().to_string()),
            policy,
            watchdog: (a.watchdog_ms > 0).then(|| Duration::from_millis(a.watchdog_ms)),
        })
        .collect();
    let stop =
        braid_probe::signal::stop_on_signals().context("install the SIGINT/SIGTERM handler")?;
    let mut sup = Supervisor::new(specs);
    for e in sup.start() {
        println!("{e}");
    }
    let deadline = a.seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut given_up = None;
    while !stop.load(Ordering::Relaxed)
        && deadline.is_none_or(|t| Instant::now() < t)
        && !sup.finished()
    {
        for e in sup.poll() {
            println!("{e}");
        }
        if let Some(name) = sup.given_up() {
            given_up = Some(name.to_string());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    sup.stop(Duration::from_secs(1));
    println!("chain {}: stopped", d.name);
    drop(dir);
    if let Some(name) = given_up {
        bail!("NF {name} failed and was given up; the chain is stopped");
    }
    Ok(())
}
