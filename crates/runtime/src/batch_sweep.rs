//! SCC's batch sweep (Fig. 8): one router at a fixed packet rate, the
//! batch size of its I/O from 1 (a system call per frame) to 256, on
//! AF_PACKET and on AF_XDP; median, IQR and p99 latency.
//!
//! Layout (root; everything is deleted when the sweep ends, also on an
//! error): two network namespaces joined by two veth pairs,
//!
//! ```text
//!   ns H: gen0 ─── veth ─── rin  ns R  (router: a Worker thread with
//!         sink0 ─── veth ─── rout       two ports of the kind measured)
//! ```
//!
//! A generator thread in this process sends UDP frames from `gen0` at the
//! fixed rate (AF_PACKET, `sendmmsg` of the frames due at each wake-up),
//! each stamped with a magic, a sequence number and its send time; the
//! router worker (the `router` NF of examples/chain4.yaml, pinned to one
//! CPU, idle policy `poll`) receives on `rin` with the batch size under
//! test and sends out of `rout`; a sink thread receives on `sink0`
//! (AF_PACKET, sleeping in `poll(2)`) and records `now - sent`. Generator
//! and sink run on the other CPUs, at `SCHED_FIFO` when allowed. Every
//! (port kind, batch) point is measured once per repetition, the order
//! reversed on every other repetition.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_dataplane::{Graph, Idle, Sched, SchedPolicy, Worker, WorkerConfig};
use braid_io::af_packet::{AfPacketConfig, AfPacketPort};
use braid_io::af_xdp::{AfXdpConfig, AfXdpPort, BindMode};
use braid_io::netns::{self, LinkGuard, NetnsError, NetnsGuard};
use braid_io::{Port, PortError};
use braid_packet::clock::monotonic_ns;
use braid_packet::{Batch, Packet};

use crate::tune::Measurement;

const L4_PAYLOAD: usize = 42;
const MAGIC: u64 = 0x6272_6169_6453_4343; // "braidSCC"
/// Frame length: the UDP payload holds the magic, sequence and time.
const FRAME: usize = 80;

/// The port kind of the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    AfPacket,
    AfXdp,
}

impl Io {
    pub fn name(self) -> &'static str {
        match self {
            Io::AfPacket => "af_packet",
            Io::AfXdp => "af_xdp",
        }
    }
}

impl std::str::FromStr for Io {
    type Err = String;
    fn from_str(s: &str) -> Result<Io, String> {
        match s {
            "af_packet" => Ok(Io::AfPacket),
            "af_xdp" => Ok(Io::AfXdp),
            o => Err(format!("port kind `{o}`: expected af_packet or af_xdp")),
        }
    }
}

/// Why the sweep failed.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("the batch sweep needs root (network namespaces, AF_PACKET, AF_XDP)")]
    NotRoot,
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Worker(#[from] braid_dataplane::WorkerError),
    #[error("{0}")]
    Run(String),
    #[error("interrupted")]
    Interrupted,
}

/// What the sweep measures.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub ios: Vec<Io>,
    pub batches: Vec<usize>,
    pub rate_pps: u64,
    pub packets: u64,
    pub warmup: u64,
    pub reps: u32,
    /// The router's CPU.
    pub cpu: usize,
    /// Run the router thread at `SCHED_FIFO` with this priority (it sleeps
    /// in `poll(2)` when idle, so it never spins at real time): on a
    /// machine busy with other work this keeps the router from waiting
    /// for its CPU, so what is measured is the I/O. None: `other`.
    pub rt_prio: Option<i32>,
}

/// The two namespaces and the veth pairs; deleted on drop (links first).
struct Bed {
    _links: Vec<LinkGuard>,
    h: NetnsGuard,
    r: NetnsGuard,
    gen: String,
    sink: String,
    rin: String,
    rout: String,
}

fn bed() -> Result<Bed, SweepError> {
    let h = NetnsGuard::create(&netns::unique_name("sbh"))?;
    let r = NetnsGuard::create(&netns::unique_name("sbr"))?;
    let (gen, rin) = (netns::unique_ifname("sbg"), netns::unique_ifname("sbi"));
    let (sink, rout) = (netns::unique_ifname("sbs"), netns::unique_ifname("sbo"));
    let a = LinkGuard::veth_between(&gen, Some(h.name()), &rin, Some(r.name()))?;
    let b = LinkGuard::veth_between(&sink, Some(h.name()), &rout, Some(r.name()))?;
    for (ns, dev) in [(&h, &gen), (&h, &sink), (&r, &rin), (&r, &rout)] {
        // No IPv6 chatter (router solicitations) on the measured links.
        let _ = netns::run(
            netns::command_in(Some(ns.name()), "sysctl")
                .args(["-qw", &format!("net.ipv6.conf.{dev}.disable_ipv6=1")]),
        );
        netns::set_up(Some(ns.name()), dev)?;
    }
    Ok(Bed { _links: vec![a, b], h, r, gen, sink, rin, rout })
}

fn measurement_thread(router_cpu: usize, prio: i32) {
    let others: Vec<usize> =
        crate::coordinator::online_cpus().into_iter().filter(|&c| c != router_cpu).collect();
    let _ = Sched { cpus: others, ..Sched::default() }.apply_to_current_thread();
    let _ = Sched { policy: SchedPolicy::Fifo(prio), ..Sched::default() }.apply_to_current_thread();
}

fn router_graph() -> Result<Graph, SweepError> {
    let params: braid_nf::Params = serde_yaml_ng::from_str(
        "mac: 02:00:00:00:00:fe\nip: 10.0.0.254\nroutes:\n  - { prefix: 10.1.0.0/16, next_hop_mac: 02:00:00:00:00:fe, port: 1 }\n",
    )
    .map_err(|e| SweepError::Config(format!("router parameters: {e}")))?;
    let nf = braid_nf::build("router", &params)
        .map_err(|e| SweepError::Config(format!("router: {e}")))?;
    Graph::chain(vec![("router".into(), nf)], 2, 0, 1)
        .map_err(|e| SweepError::Config(format!("router graph: {e}")))
}

fn open(io: Io, ns: &str, iface: &str, batch: usize) -> Result<Box<dyn Port>, SweepError> {
    let iface = iface.to_string();
    Ok(netns::in_netns(ns, move || -> Result<Box<dyn Port>, PortError> {
        Ok(match io {
            Io::AfPacket => {
                let mut c = AfPacketConfig::new(&iface);
                c.batch_size = batch;
                Box::new(AfPacketPort::open(&c)?)
            }
            Io::AfXdp => {
                let mut c = AfXdpConfig::new(&iface);
                c.batch_size = batch;
                c.mode = BindMode::Copy;
                Box::new(AfXdpPort::open(&c)?)
            }
        })
    })??)
}

/// One point: the router on `io` with batch `batch`.
fn point(
    bed: &Bed,
    s: &Sweep,
    io: Io,
    batch: usize,
    rep: u32,
    frame: &[u8],
    stop: Option<&AtomicBool>,
) -> Result<Measurement, SweepError> {
    let rin = open(io, bed.r.name(), &bed.rin, batch)?;
    let rout = open(io, bed.r.name(), &bed.rout, batch)?;
    let mut gen = open(Io::AfPacket, bed.h.name(), &bed.gen, 64)?;
    let mut sink = open(Io::AfPacket, bed.h.name(), &bed.sink, 64)?;
    let graph = router_graph()?;
    let entries = [graph.entry(0, 1), graph.entry(1, 0)];
    let mut cfg = WorkerConfig::new(format!("router-{}-{batch}", io.name()));
    cfg.batch_size = batch;
    cfg.idle = Idle::Poll;
    cfg.sched = Sched {
        cpus: vec![s.cpu],
        policy: s.rt_prio.map_or(SchedPolicy::Other, SchedPolicy::Fifo),
        ..Sched::default()
    };
    let stop_router = Arc::new(AtomicBool::new(false));
    cfg.stop_flag = Some(stop_router.clone());
    let (mut w, _h) = Worker::new(cfg, graph)?;
    w.add_port(rin, Some(entries[0]))?;
    w.add_port(rout, Some(entries[1]))?;
    let router = w.spawn().map_err(|e| SweepError::Run(format!("start the router: {e}")))?;
    std::thread::sleep(Duration::from_millis(50));
    let total = s.warmup + s.packets;
    let deadline = Instant::now() + Duration::from_secs_f64(total as f64 / s.rate_pps as f64 + 5.0);
    let warmup = s.warmup;
    let cpu = s.cpu;
    let sink_t = std::thread::spawn(move || -> Result<Vec<u64>, PortError> {
        measurement_thread(cpu, 51);
        let mut lat = Vec::with_capacity(total as usize);
        let mut got = 0u64;
        let mut b = Batch::with_capacity(64);
        while got < total && Instant::now() < deadline {
            sink.recv(&mut b, 64)?;
            if b.is_empty() {
                sink.wait(Duration::from_millis(20))?;
                continue;
            }
            let now = monotonic_ns();
            for p in b.drain() {
                let Some(pl) = p.data().get(L4_PAYLOAD..L4_PAYLOAD + 24) else { continue };
                let word =
                    |i: usize| u64::from_le_bytes(pl[i..i + 8].try_into().unwrap_or_default());
                if word(16) != MAGIC {
                    continue;
                }
                got += 1;
                if word(0) >= warmup {
                    lat.push(now.saturating_sub(word(8)));
                }
            }
        }
        Ok(lat)
    });
    measurement_thread(s.cpu, 50);
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / s.rate_pps as f64);
    let mut seq = 0u64;
    let mut b = Batch::with_capacity(64);
    let mut sent_err = None;
    while seq < total {
        if stop.is_some_and(|f| f.load(Ordering::Relaxed)) {
            sent_err = Some(SweepError::Interrupted);
            break;
        }
        let due = ((start.elapsed().as_secs_f64() * s.rate_pps as f64) as u64 + 1)
            .min(total)
            .saturating_sub(seq)
            .min(64);
        if due == 0 {
            let next = start + interval.mul_f64((seq + 1) as f64);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            continue;
        }
        let now = monotonic_ns();
        for _ in 0..due {
            let mut p = Packet::from_bytes(frame);
            let pl = &mut p.data_mut()[L4_PAYLOAD..L4_PAYLOAD + 24];
            pl[0..8].copy_from_slice(&seq.to_le_bytes());
            pl[8..16].copy_from_slice(&now.to_le_bytes());
            pl[16..24].copy_from_slice(&MAGIC.to_le_bytes());
            b.push(p);
            seq += 1;
        }
        if let Err(e) = gen.send(&mut b).and_then(|_| gen.flush()) {
            sent_err = Some(e.into());
            break;
        }
    }
    let _ = Sched::default().reapply_to_current_thread();
    let lat = sink_t.join().map_err(|_| SweepError::Run("the sink thread panicked".into()));
    stop_router.store(true, Ordering::Relaxed);
    let report = router.join().map_err(|_| SweepError::Run("the router panicked".into()))?;
    if let Some(e) = sent_err {
        return Err(e);
    }
    if let Some(e) = report.error {
        return Err(SweepError::Run(format!("router: {e}")));
    }
    let mut lat = lat??;
    if lat.is_empty() {
        return Err(SweepError::Run(format!(
            "{} batch {batch}: no measured packet came through the router",
            io.name()
        )));
    }
    let received = lat.len() as u64;
    lat.sort_unstable();
    let q = |f: f64| lat[((lat.len() - 1) as f64 * f).round() as usize];
    Ok(Measurement {
        candidate: io.name().to_string(),
        nfs: batch,
        rep,
        sent: seq.saturating_sub(s.warmup),
        received,
        p25_ns: q(0.25),
        p50_ns: q(0.5),
        p75_ns: q(0.75),
        p99_ns: q(0.99),
    })
}

/// Run the sweep (see the module documentation). Each measurement comes
/// back with `candidate` = the port kind and `nfs` = the batch size; a
/// failed point goes to `on_point` as an error and is left out.
pub fn run_sweep(
    s: &Sweep,
    stop: Option<&AtomicBool>,
    on_point: &mut dyn FnMut(&Result<Measurement, SweepError>),
) -> Result<Vec<Measurement>, SweepError> {
    if !netns::is_root() {
        return Err(SweepError::NotRoot);
    }
    if s.ios.is_empty() || s.batches.is_empty() || s.reps == 0 {
        return Err(SweepError::Config("nothing to measure".into()));
    }
    if let Some(b) = s.batches.iter().find(|b| !(1..=256).contains(*b)) {
        return Err(SweepError::Config(format!("batch {b} is outside 1..=256")));
    }
    if !(1..=2_000_000).contains(&s.rate_pps) || s.packets == 0 {
        return Err(SweepError::Config(format!(
            "rate {} pps (1..=2000000) and {} packets (>= 1)",
            s.rate_pps, s.packets
        )));
    }
    let frame = crate::tune::stamped_template(FRAME)?;
    let bed = bed()?;
    let mut points = Vec::new();
    for &io in &s.ios {
        for &b in &s.batches {
            points.push((io, b));
        }
    }
    let mut out = Vec::new();
    for rep in 0..s.reps {
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..points.len()).collect()
        } else {
            (0..points.len()).rev().collect()
        };
        for i in order {
            let (io, b) = points[i];
            let r = point(&bed, s, io, b, rep, &frame, stop);
            if matches!(r, Err(SweepError::Interrupted)) {
                return Err(SweepError::Interrupted);
            }
            on_point(&r);
            if let Ok(m) = r {
                out.push(m);
            }
        }
    }
    drop(bed);
    Ok(out)
}
