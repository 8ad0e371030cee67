//! `braid testbed up|down|status|show`: hosts as network namespaces.

use anyhow::Context;
use braid_testbed::daemons::DaemonRecord;
use braid_testbed::{
    calvin, down, netns_name, status, up_with_daemons, Options, Topology, UpOutcome,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braid testbed up\n  braid testbed up --nf-hosts 3 --no-direct\n  braid testbed up --daemons\n  braid testbed status\n  braid testbed down"
)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    /// State file listing what the testbed created.
    #[arg(long, global = true, default_value = braid_testbed::DEFAULT_STATE_PATH)]
    pub state: PathBuf,
}

#[derive(clap::Args)]
pub struct Builtin {
    /// NF hosts between client and server in the built-in CALVIN topology.
    #[arg(long, default_value_t = 2)]
    pub nf_hosts: usize,
    /// Leave out the direct client-server link (the no-NF baseline path).
    #[arg(long)]
    pub no_direct: bool,
    /// Threaded NAPI on every link.
    #[arg(long)]
    pub threaded: bool,
}

impl Builtin {
    fn topology(&self) -> anyhow::Result<Topology> {
        if self.nf_hosts > 99 {
            anyhow::bail!("--nf-hosts {} is more than 99", self.nf_hosts);
        }
        let mut t = calvin(self.nf_hosts, !self.no_direct);
        for l in &mut t.links {
            l.threaded = self.threaded;
        }
        Ok(t)
    }
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Build the testbed (the CALVIN topology unless a file is given).
    Up {
        /// Topology YAML file.
        topology: Option<PathBuf>,
        #[command(flatten)]
        builtin: Builtin,
        /// Start a braidd on every NF host (forwarding, two links), as if
        /// each had `daemon: true` in the topology.
        #[arg(long)]
        daemons: bool,
        /// The braidd binary [default: `braidd` beside this `braid`].
        #[arg(long, value_name = "PATH")]
        braidd: Option<PathBuf>,
        /// Prefix of the namespace names (must start with `braid-`).
        #[arg(long, default_value = "braid-")]
        prefix: String,
    },
    /// Stop the daemons, remove every namespace, link and XDP program the
    /// testbed created.
    Down,
    /// Show the testbed that is up.
    Status,
    /// Print the built-in topology as YAML (a starting point for a file).
    Show {
        #[command(flatten)]
        builtin: Builtin,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut opts = Options { state_path: args.state.clone(), ..Default::default() };
    match args.action {
        Action::Up { topology, builtin, daemons, braidd, prefix } => {
            opts.prefix = prefix;
            let mut topo = match &topology {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    Topology::from_yaml(&text)
                        .with_context(|| format!("topology {}", p.display()))?
                }
                None => builtin.topology()?,
            };
            if daemons {
                let nf_hosts: Vec<String> = topo.nf_hosts().into_iter().map(String::from).collect();
                if nf_hosts.is_empty() {
                    anyhow::bail!("--daemons: topology {:?} has no NF host (a forwarding host with two links); mark hosts with `daemon: true` instead", topo.name);
                }
                for h in topo.hosts.iter_mut().filter(|h| nf_hosts.contains(&h.name)) {
                    h.daemon = true;
                }
            }
            let braidd_given = braidd.is_some();
            let braidd = match braidd {
                Some(p) => Some(p),
                None if topo.hosts.iter().any(|h| h.daemon) => Some(braidd_beside_braid()?),
                None => None,
            };
            let outcome = up_with_daemons(&topo, &opts, braidd.as_deref()).map_err(|e| {
                let hint = match e {
                    braid_testbed::TestbedError::Braidd { .. } if !braidd_given => {
                        " (looked beside this braid; give the braidd binary with --braidd PATH)"
                    }
                    _ => "",
                };
                anyhow::anyhow!("{e}{hint}")
            })?;
            let verb = match outcome {
                UpOutcome::Created => "is up",
                UpOutcome::AlreadyUp => "was already up (nothing changed)",
                UpOutcome::Rebuilt => "was partly missing and has been rebuilt",
            };
            println!("testbed {:?} {verb}", topo.name);
            print_hosts(&topo, &opts);
            if let Some(st) = status(&opts)? {
                print_daemons(&st.daemons, st.migrate_key.as_deref(), false);
            }
        }
        Action::Down => {
            let r = down(&opts)?;
            if r.namespaces.is_empty() {
                println!("no testbed is up ({} not found)", opts.state_path.display());
            } else {
                let d = &r.daemons;
                let daemons = d.terminated + d.killed + d.already_gone;
                if daemons > 0 {
                    let wait = braid_testbed::daemons::STOP_TIMEOUT.as_secs();
                    println!(
                        "stopped {daemons} braidd ({} with SIGTERM, {} killed after {wait} s, {} had already exited)",
                        d.terminated, d.killed, d.already_gone
                    );
                }
                println!(
                    "removed {} namespaces ({}), {} links, {} XDP attachments",
                    r.namespaces.len(),
                    r.namespaces.join(", "),
                    r.links,
                    r.xdp
                );
            }
        }
        Action::Status => match status(&opts)? {
            None => println!("no testbed is up ({} not found)", opts.state_path.display()),
            Some(st) => {
                let missing: Vec<&String> =
                    st.namespaces.iter().filter(|n| !braid_io::netns::netns_exists(n)).collect();
                println!(
                    "testbed {:?}: {}{}",
                    st.topology.name,
                    if st.complete { "up" } else { "incomplete (an up was interrupted; run down)" },
                    if missing.is_empty() {
                        String::new()
                    } else {
                        format!(", missing namespaces {missing:?}")
                    }
                );
                opts.prefix = st.prefix.clone();
                print_hosts(&st.topology, &opts);
                for x in &st.xdp {
                    println!("  xdp program on {}:{}", x.netns, x.dev);
                }
                print_daemons(&st.daemons, st.migrate_key.as_deref(), true);
            }
        },
        Action::Show { builtin } => print!("{}", builtin.topology()?.to_yaml()),
    }
    Ok(())
}

/// `braidd` in the directory of the running `braid`.
fn braidd_beside_braid() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the running braid binary")?;
    let dir = exe.parent().with_context(|| format!("{} has no directory", exe.display()))?;
    Ok(dir.join("braidd"))
}

/// One line per daemon: host, pid, socket, migration address; with
/// `check`, whether the process runs and answers `GET /v1/status`.
fn print_daemons(daemons: &[DaemonRecord], key: Option<&Path>, check: bool) {
    for d in daemons {
        let health = if !check {
            String::new()
        } else if !d.is_running() {
            "  NOT RUNNING (run `braid testbed up` to rebuild, or `down`)".into()
        } else {
            match d.status_pid(Duration::from_secs(2)) {
                Ok(pid) if pid == d.pid => "  answers".into(),
                Ok(pid) => format!("  answered by another braidd (pid {pid})"),
                Err(e) => format!("  running, NOT ANSWERING: {e}"),
            }
        };
        println!(
            "  braidd   on {:<8} pid {:<7} socket {}  migrate_listen {}{health}",
            d.host,
            d.pid,
            d.socket.display(),
            d.migrate_listen
        );
    }
    if let Some(key) = key.filter(|_| !daemons.is_empty()) {
        println!("  migration key (shared by the daemons): {}", key.display());
    }
}

fn print_hosts(topo: &Topology, opts: &Options) {
    for h in &topo.hosts {
        let mut ifaces = Vec::new();
        for l in &topo.links {
            for (a_side, e) in [(true, &l.a), (false, &l.b)] {
                if e.host == h.name {
                    ifaces.push(format!("{} {}", topo.dev_of(l, a_side), e.addr));
                }
            }
        }
        println!(
            "  {:<8} netns {:<16} {}{}",
            h.name,
            netns_name(opts, &h.name),
            ifaces.join(", "),
            if h.forwarding { "  (forwarding)" } else { "" }
        );
    }
}
