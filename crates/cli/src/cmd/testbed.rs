//! `braid testbed up|down|status|show`: hosts as network namespaces.

use anyhow::Context;
use braid_testbed::{calvin, down, netns_name, status, up, Options, Topology, UpOutcome};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braid testbed up\n  braid testbed up --nf-hosts 3 --no-direct\n  braid testbed status\n  braid testbed down"
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
    },
    /// Remove every namespace, link and XDP program the testbed created.
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
    let opts = Options { state_path: args.state.clone(), ..Default::default() };
    match args.action {
        Action::Up { topology, builtin } => {
            let topo = match &topology {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    Topology::from_yaml(&text)
                        .with_context(|| format!("topology {}", p.display()))?
                }
                None => builtin.topology()?,
            };
            let outcome = up(&topo, &opts)?;
            let verb = match outcome {
                UpOutcome::Created => "is up",
                UpOutcome::AlreadyUp => "was already up (nothing changed)",
                UpOutcome::Rebuilt => "was partly missing and has been rebuilt",
            };
            println!("testbed {:?} {verb}", topo.name);
            print_hosts(&topo, &opts);
        }
        Action::Down => {
            let r = down(&opts)?;
            if r.namespaces.is_empty() {
                println!("no testbed is up ({} not found)", opts.state_path.display());
            } else {
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
                print_hosts(&st.topology, &opts);
                for x in &st.xdp {
                    println!("  xdp program on {}:{}", x.netns, x.dev);
                }
            }
        },
        Action::Show { builtin } => print!("{}", builtin.topology()?.to_yaml()),
    }
    Ok(())
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
