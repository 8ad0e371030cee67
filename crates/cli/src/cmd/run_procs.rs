//! `braid run-procs CHAIN.yaml`: run every NF of a chain as its own
//! process (`braid nf-proc`), connected by shared-memory ports, supervised.
//!
//! NF `i` listens on the link to NF `i+1` and connects to the link from NF
//! `i-1`; the first NF listens on `DIR/in.sock` and the last on
//! `DIR/out.sock`, where a generator and a sink connect (any program using
//! `ShmPort::connect`). A crashed NF is reported and restarted by policy;
//! its neighbours keep running and keep their state, and reconnect to it
//! when it is back.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use braid_io::virtual_port::{explain, Location};
use braid_runtime::supervisor::{file_name_part, printable, ProcSpec, RestartPolicy, Supervisor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Restart {
    Never,
    OnFailure,
}

#[derive(clap::Args, Debug)]
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

/// The `braid nf-proc` argument lists for each NF of the chain.
pub fn nf_commands(
    d: &braid_runtime::descriptor::ChainDescriptor,
    dir: &std::path::Path,
) -> Result<Vec<(String, Vec<String>)>> {
    let n = d.nfs.len();
    if n == 0 {
        bail!("chain `{}` has no NFs", d.name);
    }
    let sock = |name: &str| dir.join(format!("{name}.sock")).display().to_string();
    let mut out = Vec::new();
    for (i, nf) in d.nfs.iter().enumerate() {
        let port0 = if i == 0 {
            format!("listen:{}", sock("in"))
        } else {
            format!("connect:{}", sock(&format!("link{}", i - 1)))
        };
        let port1 = if i + 1 == n {
            format!("listen:{}", sock("out"))
        } else {
            format!("listen:{}", sock(&format!("link{i}")))
        };
        let params = serde_yaml_ng::to_string(&nf.params)
            .with_context(|| format!("nfs[{i}] ({}): params", nf.name))?;
        let mut args = vec![
            "nf-proc".into(),
            "--nf".into(),
            nf.kind.clone(),
            "--port".into(),
            port0,
            "--port".into(),
            port1,
        ];
        if !nf.params.is_null() {
            args.extend(["--params".into(), params]);
        }
        args.extend(["--batch".into(), d.batch_size.to_string()]);
        if nf.kind == "l2switch" {
            args.extend(["--route".into(), "out-port".into()]);
        }
        out.push((nf.name.clone(), args));
    }
    Ok(out)
}

pub fn run(a: Args) -> Result<()> {
    let d = braid_runtime::validate::load(&a.chain)?;
    let dir = a.dir.clone().unwrap_or_else(|| {
        // The chain name is the descriptor's: one safe component only.
        std::env::temp_dir().join(format!(
            "braid-{}-{}",
            file_name_part(&d.name),
            std::process::id()
        ))
    });
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("create socket directory {}", dir.display()))?;
    let exe = std::env::current_exe().context("find this executable")?;
    let policy = match a.restart {
        Restart::Never => RestartPolicy::Never,
        Restart::OnFailure => RestartPolicy::on_failure(a.max_restarts),
    };
    let cmds = nf_commands(&d, &dir)?;
    println!(
        "chain {}: {} NF processes; sockets in {}",
        printable(&d.name),
        cmds.len(),
        dir.display()
    );
    for i in 0..cmds.len().saturating_sub(1) {
        let (from, to) =
            (Location::user("local", i as u32, 0), Location::user("local", i as u32 + 1, 0));
        println!(
            "  {} -> {}: {}",
            printable(&cmds[i].0),
            printable(&cmds[i + 1].0),
            explain(&from, &to, true)
        );
    }
    println!("  in: {}  out: {}", dir.join("in.sock").display(), dir.join("out.sock").display());
    // Guards delete the namespaces when this function returns, after the
    // supervisor (declared later, dropped first) has stopped the processes.
    let mut namespaces = Vec::new();
    if a.netns {
        if !braid_io::netns::is_root() {
            bail!("--netns needs root (it creates network namespaces)");
        }
        for (name, _) in &cmds {
            let ns = braid_io::netns::NetnsGuard::create(&braid_io::netns::unique_name(&format!(
                "nf-{}",
                file_name_part(name)
            )))
            .with_context(|| format!("create the network namespace of NF {}", printable(name)))?;
            println!("  {}: network namespace {}", printable(name), ns.name());
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
    while !stop.load(Ordering::Relaxed)
        && deadline.is_none_or(|t| Instant::now() < t)
        && !sup.finished()
    {
        for e in sup.poll() {
            println!("{e}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    sup.stop(Duration::from_secs(1));
    println!("chain {}: stopped", printable(&d.name));
    Ok(())
}
