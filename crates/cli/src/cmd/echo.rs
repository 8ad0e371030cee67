//! `braid echo`: the UDP echo server the probe measures against.

use anyhow::Context;
use braid_probe::echo::{run_echo, EchoConfig};
use std::net::{SocketAddr, UdpSocket};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  braid echo --netns braid-server\n  braid echo --bind 127.0.0.1:7007 --batch 32"
)]
pub struct Args {
    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:7007")]
    pub bind: SocketAddr,
    /// Run inside this network namespace (e.g. braid-server on the testbed).
    #[arg(long)]
    pub netns: Option<String>,
    /// Datagrams per recvmmsg/sendmmsg call; 1 answers each packet before
    /// reading the next (latency runs), larger batches keep up with the
    /// throughput search.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// SO_BUSY_POLL time in microseconds.
    #[arg(long)]
    pub busy_poll_us: Option<u32>,
    /// Exit after echoing this many datagrams.
    #[arg(long)]
    pub count: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.batch == 0 || args.batch > 1024 {
        anyhow::bail!("--batch {} is out of range 1..=1024", args.batch);
    }
    let bind = args.bind;
    let sock = match &args.netns {
        Some(ns) => braid_io::netns::in_netns(ns, || UdpSocket::bind(bind))
            .with_context(|| format!("entering network namespace {ns}"))?,
        None => UdpSocket::bind(bind),
    }
    .with_context(|| format!("binding UDP {bind}"))?;
    let stop = braid_probe::signal::stop_on_signals().context("installing signal handlers")?;
    eprintln!(
        "braid echo: listening on {}{} (batch {}), Ctrl-C to stop",
        sock.local_addr()?,
        args.netns.as_deref().map(|n| format!(" in {n}")).unwrap_or_default(),
        args.batch
    );
    let cfg = EchoConfig { batch: args.batch, busy_poll_us: args.busy_poll_us, limit: args.count };
    let st = run_echo(&sock, &cfg, stop).context("echo server")?;
    eprintln!(
        "braid echo: received {} datagrams ({} bytes), echoed {}, send errors {}",
        st.received, st.bytes, st.echoed, st.send_errors
    );
    Ok(())
}
