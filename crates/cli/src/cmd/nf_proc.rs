//! `braid nf-proc`: run one NF as its own process between shared-memory
//! ports. This is the unit that `braid run-procs` supervises and that
//! `braid shm-bench` puts between a generator and a sink.
//!
//! Ports are `listen:PATH` (this process creates the channel and waits for
//! a peer; a peer that dies is reported and the next one is accepted) or
//! `connect:PATH` (this process joins a channel created by another). Every
//! packet received on port `i` gets `meta.in_port = i`. Routing after the
//! NF: `pair` sends what came in on port `i` out of port `i ^ 1` (a blind
//! forwarder between two ports); `out-port` sends each packet out of
//! `meta.out_port`, as set by a switching NF such as `l2switch`.
//!
//! A `listen:` port whose peer dies waits for the next one; a `connect:`
//! port whose peer dies reconnects as soon as the peer listens again, so a
//! restarted neighbour is taken back without restarting this process (and
//! this NF keeps its state).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use braid_io::shm::{ShmConfig, ShmPort};
use braid_io::{Port, PortError};
use braid_nf::{Context, Counters, Params};
use braid_packet::Batch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    /// Port i -> port i^1.
    Pair,
    /// Each packet to its meta.out_port.
    OutPort,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Idle {
    Busy,
    Sleep,
}

/// Longest wait for a `connect:` port's listener (without `--seconds`).
const CONNECT_WAIT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// NF kind (see `braid nfs`).
    #[arg(long)]
    pub nf: String,
    /// NF parameters as YAML (e.g. `{ports: 2}`).
    #[arg(long)]
    pub params: Option<String>,
    /// A port, `listen:PATH` or `connect:PATH`; repeat in port order.
    #[arg(long = "port", required = true)]
    pub ports: Vec<String>,
    /// How packets leave after the NF.
    #[arg(long, value_enum, default_value_t = Route::Pair)]
    pub route: Route,
    /// Packets per batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Slots of the channels this process creates.
    #[arg(long, default_value_t = ShmConfig::default().slots)]
    pub slots: u32,
    /// When idle: `busy` keeps polling (lowest latency on a dedicated core),
    /// `sleep` blocks on the ports' eventfds (for shared cores).
    #[arg(long, value_enum, default_value_t = Idle::Busy)]
    pub idle: Idle,
    /// Stop after this many seconds (default: until SIGINT or SIGTERM).
    #[arg(long)]
    pub seconds: Option<f64>,
}

/// A port spec from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    Listen(PathBuf),
    Connect(PathBuf),
}

impl PortSpec {
    pub fn parse(s: &str) -> Result<PortSpec> {
        match s.split_once(':') {
            Some(("listen", p)) if !p.is_empty() => Ok(PortSpec::Listen(p.into())),
            Some(("connect", p)) if !p.is_empty() => Ok(PortSpec::Connect(p.into())),
            _ => bail!("port `{s}`: expected listen:PATH or connect:PATH"),
        }
    }

    /// Open the port; a `connect:` waits at most `wait` for its listener.
    pub fn open(&self, cfg: ShmConfig, wait: Duration) -> Result<ShmPort> {
        Ok(match self {
            PortSpec::Listen(p) => {
                ShmPort::listen(p, cfg).with_context(|| format!("listen on {}", p.display()))?
            }
            PortSpec::Connect(p) => ShmPort::connect(p, wait).with_context(|| {
                format!("no listener at {} within {:.1} s", p.display(), wait.as_secs_f64())
            })?,
        })
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.batch == 0 || a.batch > 1024 {
        bail!("--batch {}: must be 1..=1024", a.batch);
    }
    if let Some(s) = a.seconds.filter(|s| !(s.is_finite() && *s >= 0.0 && *s < 1e9)) {
        bail!("--seconds {s}: must be a number of seconds, 0 or more");
    }
    let params: Params = match &a.params {
        Some(y) => {
            serde_yaml_ng::from_str(y).with_context(|| format!("--params {y:?} is not YAML"))?
        }
        None => Params::Null,
    };
    let mut nf = braid_nf::build(&a.nf, &params).with_context(|| format!("NF `{}`", a.nf))?;
    let specs = a.ports.iter().map(|s| PortSpec::parse(s)).collect::<Result<Vec<_>>>()?;
    if a.route == Route::Pair && specs.len() != 2 {
        bail!("--route pair needs exactly 2 ports, got {}", specs.len());
    }
    let cfg = ShmConfig { slots: a.slots, ..ShmConfig::default() };
    // A `connect:` listener may not be up yet: wait for it, but never past
    // `--seconds` (a missing socket used to take 30 s whatever was asked).
    let deadline = a.seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut ports = Vec::with_capacity(specs.len());
    for s in &specs {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        ports.push(s.open(cfg, left.map_or(CONNECT_WAIT, |l| l.min(CONNECT_WAIT)))?);
    }
    let n = ports.len();
    let mut counters = Counters::default();
    let mut inb = Batch::with_capacity(a.batch);
    let mut outs: Vec<Batch> = (0..n).map(|_| Batch::with_capacity(a.batch)).collect();
    let stop =
        braid_probe::signal::stop_on_signals().context("install the SIGINT/SIGTERM handler")?;
    // The ports are open and the loop starts: the first heartbeat arms the
    // supervisor's watchdog.
    let mut heartbeat = Heartbeat::from_env()?;
    heartbeat.beat();
    let mut last_tick = Instant::now();
    let mut idle = 0u32;
    loop {
        let mut moved = 0;
        for i in 0..n {
            // Backpressure: take from port i only what the outputs can take,
            // so a slow neighbour slows its upstream instead of losing
            // packets here (the input keeps them in its ring).
            let room = match a.route {
                Route::Pair => ports[i ^ 1].tx_room(),
                Route::OutPort => (0..n)
                    .filter(|&o| o != i)
                    .map(|o| ports[o].tx_room())
                    .min()
                    .unwrap_or(usize::MAX),
            };
            if room < a.batch {
                continue;
            }
            match ports[i].recv(&mut inb, a.batch) {
                Ok(_) => {}
                Err(PortError::Disconnected(m)) => eprintln!("braid nf-proc {}: {m}", a.nf),
                Err(e) => return Err(e).with_context(|| format!("receive on port {i}")),
            }
            if inb.is_empty() {
                continue;
            }
            moved += inb.len();
            counters.packets_in += inb.len() as u64;
            counters.batches += 1;
            for p in inb.iter_mut() {
                p.meta.in_port = i as u16;
            }
            let now = braid_nf::monotonic_ns();
            nf.process(&mut inb, &mut Context::new(now, &mut counters));
            counters.packets_out += inb.len() as u64;
            route(&mut inb, &mut outs, i, a.route);
            send_all(&mut ports, &mut outs, &a.nf)?;
        }
        if last_tick.elapsed() >= Duration::from_millis(10) {
            last_tick = Instant::now();
            heartbeat.beat();
            nf.tick(&mut inb, &mut Context::new(braid_nf::monotonic_ns(), &mut counters));
            route(&mut inb, &mut outs, 0, a.route);
            send_all(&mut ports, &mut outs, &a.nf)?;
            if deadline.is_some_and(|d| Instant::now() >= d) || stop.load(Ordering::Relaxed) {
                break;
            }
            // A `connect:` peer that went away (crashed and being restarted
            // by the supervisor) is joined again as soon as it listens.
            for (i, spec) in specs.iter().enumerate() {
                if let (PortSpec::Connect(path), true) = (spec, ports[i].at_end()) {
                    if let Ok(p) = ShmPort::connect(path, Duration::from_millis(200)) {
                        eprintln!(
                            "braid nf-proc {}: port {i} reconnected to {}",
                            a.nf,
                            path.display()
                        );
                        ports[i] = p;
                    }
                }
            }
        }
        if moved == 0 {
            idle = idle.saturating_add(1);
            match a.idle {
                // After a few empty rounds, sleep until a peer sends.
                Idle::Sleep if idle > 64 => {
                    braid_io::shm::wait_any(&mut ports, Duration::from_millis(10))
                        .context("wait on the ports")?
                }
                // Busy-poll while traffic flows; after a long idle spell
                // yield the core so a quiet NF does not burn it.
                Idle::Busy if idle > 100_000 => std::thread::yield_now(),
                _ => {}
            }
        } else {
            idle = 0;
        }
    }
    eprintln!(
        "braid nf-proc {}: {} packets in, {} out, {} dropped",
        a.nf,
        counters.packets_in,
        counters.packets_out,
        counters.drops.iter().sum::<u64>()
    );
    Ok(())
}

/// The heartbeat to a supervising `braid run-procs` (see
/// `braid_runtime::supervisor`): one byte down an inherited pipe at most
/// every `HEARTBEAT_INTERVAL`, written from the packet loop itself so that
/// it stops when the loop does.
struct Heartbeat {
    pipe: Option<std::fs::File>,
    last: Option<Instant>,
}

impl Heartbeat {
    fn from_env() -> Result<Heartbeat> {
        use braid_runtime::supervisor::HEARTBEAT_FD_ENV;
        let Ok(v) = std::env::var(HEARTBEAT_FD_ENV) else {
            return Ok(Heartbeat { pipe: None, last: None });
        };
        let fd: i32 = v
            .parse()
            .ok()
            .filter(|fd| *fd > 2)
            .with_context(|| format!("{HEARTBEAT_FD_ENV}={v:?} is not a descriptor number"))?;
        // SAFETY: fcntl(2) on a descriptor number: F_GETFD only asks
        // whether it is open; F_GETFL/F_SETFL make writes to it
        // non-blocking (a supervisor that stops reading must not stall the
        // packet loop).
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) < 0 {
                bail!("{HEARTBEAT_FD_ENV}={fd}: no such open descriptor");
            }
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                bail!("{HEARTBEAT_FD_ENV}={fd}: {}", std::io::Error::last_os_error());
            }
        }
        // SAFETY: the supervisor passed this descriptor (the write end of
        // its heartbeat pipe) for this process to own; it was checked open
        // and nothing else in this process uses it.
        let pipe = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Heartbeat { pipe: Some(pipe), last: None })
    }

    fn beat(&mut self) {
        use braid_runtime::supervisor::HEARTBEAT_INTERVAL;
        use std::io::Write;
        let Some(pipe) = &mut self.pipe else { return };
        if self.last.is_some_and(|t| t.elapsed() < HEARTBEAT_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        // A full pipe (a supervisor that stopped reading) or a closed one
        // (supervisor gone) is not this loop's problem.
        let _ = pipe.write(b".");
    }
}

fn route(inb: &mut Batch, outs: &mut [Batch], in_port: usize, how: Route) {
    match how {
        Route::Pair => outs[in_port ^ 1].append(inb),
        Route::OutPort => {
            for p in inb.drain() {
                if let Some(o) = outs.get_mut(p.meta.out_port as usize) {
                    o.push(p);
                }
            }
        }
    }
}

fn send_all(ports: &mut [ShmPort], outs: &mut [Batch], nf: &str) -> Result<()> {
    for (i, (port, out)) in ports.iter_mut().zip(outs.iter_mut()).enumerate() {
        if out.is_empty() {
            continue;
        }
        match port.send(out) {
            Ok(_) => {}
            Err(PortError::Disconnected(m)) => eprintln!("braid nf-proc {nf}: {m}"),
            Err(e) => return Err(e).with_context(|| format!("send on port {i}")),
        }
        out.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!(PortSpec::parse("listen:/tmp/a").unwrap(), PortSpec::Listen("/tmp/a".into()));
        assert_eq!(PortSpec::parse("connect:/x").unwrap(), PortSpec::Connect("/x".into()));
        for bad in ["listen:", "tcp:/x", "/x"] {
            assert!(PortSpec::parse(bad).unwrap_err().to_string().contains(bad));
        }
    }
}
