//! Latency of a chain of NF processes that share one CPU, under candidate
//! scheduling configurations: SCC's chain experiment (Fig. 10, chains of
//! 1–8 routers on one core, default vs batch CFS with and without batched
//! I/O) and `braid tune`, which measures the candidates on a chain and
//! recommends the best as a descriptor `sched` block.
//!
//! One measurement ([`measure`]): every NF of the chain runs as its own
//! `braid nf-proc` (the processes mapping, [`crate::proc_chain`]), all
//! pinned to one CPU with the candidate's `sched` block, connected by
//! shared memory. A generator thread of this process sends UDP frames at
//! a fixed rate into the first NF, each stamped with a sequence number and
//! its `CLOCK_MONOTONIC` send time; a sink thread takes what leaves the
//! last NF and records `now - sent`. Both run on the other CPUs (at
//! `SCHED_FIFO` when allowed, like the probe of `calvin-baseline.sh`, so
//! that a busy machine does not delay the measurement itself). The first
//! `warmup` packets are not counted. The candidates of one run are
//! interleaved ([`run_experiment`]: every repetition measures each point
//! once, the order reversed on every other repetition) so a drift in the
//! machine's load hits them alike.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_dataplane::{Idle, Sched, SchedPolicy};
use braid_io::memory::{GeneratorConfig, GeneratorPort};
use braid_io::shm::ShmPort;
use braid_io::{Port, PortError};
use braid_packet::clock::monotonic_ns;
use braid_packet::Batch;

use crate::descriptor::{PolicyDecl, SchedDecl};
use crate::proc_chain::{nf_commands, ChildIdle, ProcChainError, SocketDir};
use crate::supervisor::die_with_this_process;
use crate::ChainDescriptor;

/// Offset of the UDP payload in the generated frames (no VLAN).
const L4_PAYLOAD: usize = 42;

/// Why a tuning run failed.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error("unknown candidate `{0}`: expected one of {1}")]
    UnknownCandidate(String, String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Chain(#[from] ProcChainError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("candidate `{candidate}`, {nfs} NFs: {msg}")]
    Measure { candidate: String, nfs: usize, msg: String },
    #[error("interrupted")]
    Interrupted,
}

/// A scheduling configuration to try: the `sched` block every NF of the
/// chain gets (the CPU is set by the run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub sched: SchedDecl,
}

/// The built-in candidates: name, what it is.
pub const CANDIDATES: &[(&str, &str)] = &[
    ("default", "braid's default for NF processes: other, busy polling, the chain's batch size"),
    ("per-packet", "other, busy polling, batch 1 (SCC's default CFS without batched I/O)"),
    ("batch-1", "SCHED_BATCH, busy polling, batch 1 (SCC's batch CFS without batched I/O)"),
    ("batch-2", "SCHED_BATCH, busy polling, batch 2"),
    ("batch-16", "SCHED_BATCH, busy polling, batch 16"),
    ("batch-32", "SCHED_BATCH, busy polling, batch 32"),
    (
        "slice-100",
        "other, busy polling, the chain's batch size, a 0.1 ms EEVDF slice (Linux 6.12+): NFs sharing a CPU take turns sooner",
    ),
    ("slice-1000", "other, busy polling, the chain's batch size, a 1 ms EEVDF slice (Linux 6.12+)"),
    ("poll", "other, sleeping on the ports' eventfds when idle, the chain's batch size"),
    (
        "poll-slice-100",
        "other, sleeping on the eventfds when idle, a 0.1 ms EEVDF slice (Linux 6.12+): a woken NF gets an earlier deadline than other load on its CPU",
    ),
    ("poll-fifo", "SCHED_FIFO 10, sleeping on the eventfds when idle (never spins at real time)"),
    (
        "adaptive",
        "other, poll, the adaptive mode (batch up to the chain's, idle policy, real-time wake-ups)",
    ),
];

impl Candidate {
    /// A built-in candidate by name.
    pub fn named(name: &str) -> Result<Candidate, TuneError> {
        let busy = |policy: Option<PolicyDecl>, batch: Option<usize>| SchedDecl {
            policy,
            batch_size: batch,
            idle: Some(Idle::Busy),
            ..SchedDecl::default()
        };
        let sched = match name {
            "default" => SchedDecl::default(),
            "per-packet" => busy(None, Some(1)),
            "batch-1" => busy(Some(PolicyDecl::Batch), Some(1)),
            "batch-2" => busy(Some(PolicyDecl::Batch), Some(2)),
            "batch-16" => busy(Some(PolicyDecl::Batch), Some(16)),
            "batch-32" => busy(Some(PolicyDecl::Batch), Some(32)),
            "slice-100" => SchedDecl { slice_us: Some(100), ..busy(None, None) },
            "slice-1000" => SchedDecl { slice_us: Some(1000), ..busy(None, None) },
            "poll" => SchedDecl { idle: Some(Idle::Poll), ..SchedDecl::default() },
            "poll-slice-100" => {
                SchedDecl { idle: Some(Idle::Poll), slice_us: Some(100), ..SchedDecl::default() }
            }
            "poll-fifo" => SchedDecl {
                policy: Some(PolicyDecl::Fifo),
                priority: Some(10),
                idle: Some(Idle::Poll),
                ..SchedDecl::default()
            },
            "adaptive" => {
                SchedDecl { idle: Some(Idle::Poll), adapt: Some(true), ..SchedDecl::default() }
            }
            other => {
                let names: Vec<&str> = CANDIDATES.iter().map(|(n, _)| *n).collect();
                return Err(TuneError::UnknownCandidate(other.into(), names.join(", ")));
            }
        };
        Ok(Candidate { name: name.to_string(), sched })
    }
}

/// The traffic of a measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    /// Packets per second, sent at even intervals (several per wake-up
    /// when the interval is shorter than a sleep).
    pub rate_pps: u64,
    /// Packets measured per point.
    pub packets: u64,
    /// Packets sent first and not measured.
    pub warmup: u64,
    /// Frame length in bytes (60..=1514); the generator's UDP frame from
    /// 10.0.0.1 to 10.1.0.1:5000 (the traffic of `braid bench`).
    pub frame_size: usize,
    /// Threads that only burn CPU, at the default policy and nice 0,
    /// pinned to the NFs' CPU while each point is measured: a noisy
    /// neighbour, the other load a scheduling configuration must hold up
    /// against (0..=[`MAX_HOGS`]).
    pub hogs: u32,
}

/// Most [`Load::hogs`].
pub const MAX_HOGS: u32 = 8;

impl Load {
    fn check(&self) -> Result<(), TuneError> {
        if !(1..=2_000_000).contains(&self.rate_pps) {
            return Err(TuneError::Config(format!(
                "rate {} pps is outside 1..=2000000",
                self.rate_pps
            )));
        }
        if !(1..=10_000_000).contains(&self.packets) {
            return Err(TuneError::Config(format!(
                "{} packets per point is outside 1..=10000000",
                self.packets
            )));
        }
        if self.frame_size < L4_PAYLOAD + 16 || self.frame_size > 1514 {
            return Err(TuneError::Config(format!(
                "frame size {} is outside {}..=1514",
                self.frame_size,
                L4_PAYLOAD + 16
            )));
        }
        if self.hogs > MAX_HOGS {
            return Err(TuneError::Config(format!(
                "{} busy neighbour threads is more than {MAX_HOGS}",
                self.hogs
            )));
        }
        Ok(())
    }
}

/// Busy threads pinned to one CPU ([`Load::hogs`]); stopped and joined on
/// drop, so no measurement leaves one behind, even when it fails.
struct Hogs {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Hogs {
    /// Start `n` threads that spin on `cpu` at the default policy (the
    /// policy and nice of this process's threads are not inherited: each
    /// sets the default first).
    fn start(n: u32, cpu: usize) -> Result<Hogs, TuneError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut hogs = Hogs { stop: stop.clone(), threads: Vec::new() };
        for i in 0..n {
            let stop = stop.clone();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let t = std::thread::Builder::new()
                .name(format!("tune-hog{i}"))
                .spawn(move || {
                    let placed = Sched { cpus: vec![cpu], ..Sched::default() }
                        .reapply_to_current_thread()
                        .map_err(|e| e.to_string());
                    let ok = placed.is_ok();
                    let _ = ready_tx.send(placed);
                    let mut spins = 0u64;
                    while ok && !stop.load(Ordering::Relaxed) {
                        spins = std::hint::black_box(spins + 1);
                    }
                    spins
                })
                .map_err(|source| TuneError::Io {
                    what: "start a busy neighbour thread".into(),
                    source,
                })?;
            hogs.threads.push(t);
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(TuneError::Config(format!(
                        "pin a busy neighbour thread to CPU {cpu}: {e}"
                    )))
                }
                Err(_) => return Err(TuneError::Config("a busy neighbour thread died".into())),
            }
        }
        Ok(hogs)
    }

    /// Stop the threads; what each counted (loop turns: it ran).
    #[cfg(test)]
    fn stop(mut self) -> Vec<u64> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).map(|t| t.join().unwrap_or(0)).collect()
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// One point: a candidate on a chain, one repetition.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Measurement {
    pub candidate: String,
    pub nfs: usize,
    pub rep: u32,
    pub sent: u64,
    pub received: u64,
    pub p25_ns: u64,
    pub p50_ns: u64,
    pub p75_ns: u64,
    pub p99_ns: u64,
}

impl Measurement {
    pub fn iqr_ns(&self) -> u64 {
        self.p75_ns.saturating_sub(self.p25_ns)
    }
}

/// Kills and reaps the NF processes on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// The chain `d` as run for `cand` on `cpu`: the candidate's block as the
/// chain's `sched`, the CPU added, the NFs' own blocks removed.
pub fn candidate_chain(d: &ChainDescriptor, cand: &Candidate, cpu: usize) -> ChainDescriptor {
    let mut d = d.clone();
    d.sched = Some(SchedDecl { cpus: Some(vec![cpu]), ..cand.sched.clone() });
    for nf in &mut d.nfs {
        nf.sched = None;
    }
    d
}

fn stamp(payload: &mut [u8], seq: u64, ts: u64) {
    payload[0..8].copy_from_slice(&seq.to_le_bytes());
    payload[8..16].copy_from_slice(&ts.to_le_bytes());
}

/// The generator's frame of `size` bytes, its UDP checksum cleared (the
/// stamps change the payload; 0 means "no checksum" in IPv4). Shared with
/// the batch sweep.
pub(crate) fn stamped_template(size: usize) -> Result<Vec<u8>, braid_io::PortError> {
    let g =
        GeneratorPort::new(&GeneratorConfig { frame_size: size, ..GeneratorConfig::default() })?;
    let mut f = g.templates()[0].clone();
    f[40..42].copy_from_slice(&[0, 0]);
    Ok(f)
}

fn template(size: usize) -> Result<Vec<u8>, TuneError> {
    let f = stamped_template(size)?;
    if f.len() < L4_PAYLOAD + 16 {
        return Err(TuneError::Config(format!(
            "generated frame of {} bytes is too short",
            f.len()
        )));
    }
    Ok(f)
}

/// The measurement threads: every online CPU but the NFs' one (all if
/// that leaves none), at real-time priority `prio` when the kernel lets
/// us (ignored otherwise: the measurement is then only less protected).
fn measurement_thread(nf_cpu: usize, prio: i32) {
    let others: Vec<usize> =
        crate::coordinator::online_cpus().into_iter().filter(|&c| c != nf_cpu).collect();
    let _ = Sched { cpus: others, ..Sched::default() }.apply_to_current_thread();
    let _ = Sched { policy: SchedPolicy::Fifo(prio), ..Sched::default() }.apply_to_current_thread();
}

/// Measure `cand` on chain `d` (see the module documentation). `exe` is
/// the `braid` binary (run as `braid nf-proc`). With `nf_log`, each NF
/// process's standard error (the adaptive mode's changes and why) goes to
/// [`nf_log_file`] in that directory instead of nowhere.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    exe: &Path,
    d: &ChainDescriptor,
    cand: &Candidate,
    cpu: usize,
    load: &Load,
    rep: u32,
    stop: Option<&AtomicBool>,
    nf_log: Option<&Path>,
) -> Result<Measurement, TuneError> {
    load.check()?;
    let d = candidate_chain(d, cand, cpu);
    let nfs = d.nfs.len();
    let fail = |msg: String| TuneError::Measure { candidate: cand.name.clone(), nfs, msg };
    let dir = SocketDir::temporary(&format!("tune-{}", cand.name))?;
    let cmds = nf_commands(&d, dir.path(), ChildIdle::Busy)?;
    let mut children = Children(Vec::new());
    for (name, args) in &cmds {
        let mut c = Command::new(exe);
        c.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(dir) = nf_log {
            let path = dir.join(nf_log_file(&cand.name, nfs, rep, name));
            let log = std::fs::File::create(&path).map_err(|source| TuneError::Io {
                what: format!("create {}", path.display()),
                source,
            })?;
            c.stderr(log);
        }
        die_with_this_process(&mut c);
        children.0.push(c.spawn().map_err(|source| TuneError::Io {
            what: format!("start `{} nf-proc` for NF `{name}`", exe.display()),
            source,
        })?);
    }
    let mut tx = ShmPort::connect(dir.input(), Duration::from_secs(10))?;
    let mut rx = ShmPort::connect(dir.output(), Duration::from_secs(10))?;
    let frame = template(load.frame_size)?;
    let hogs = Hogs::start(load.hogs, cpu)?;
    let total = load.warmup + load.packets;
    let send_secs = total as f64 / load.rate_pps as f64;
    let deadline = Instant::now() + Duration::from_secs_f64(send_secs + 10.0);
    let done = Arc::new(AtomicBool::new(false));
    let sink_done = done.clone();
    let warmup = load.warmup;
    let sink = std::thread::spawn(move || -> Result<Vec<u64>, PortError> {
        measurement_thread(cpu, 51);
        let mut lat = Vec::with_capacity(total as usize);
        let mut got = 0u64;
        let mut b = Batch::with_capacity(64);
        while got < total && Instant::now() < deadline && !sink_done.load(Ordering::Relaxed) {
            rx.recv(&mut b, 64)?;
            if b.is_empty() {
                rx.wait(Duration::from_millis(20))?;
                continue;
            }
            let now = monotonic_ns();
            for p in b.drain() {
                let Some(pl) = p.data().get(L4_PAYLOAD..L4_PAYLOAD + 16) else { continue };
                let seq = u64::from_le_bytes(pl[0..8].try_into().unwrap_or_default());
                let ts = u64::from_le_bytes(pl[8..16].try_into().unwrap_or_default());
                got += 1;
                if seq >= warmup {
                    lat.push(now.saturating_sub(ts));
                }
            }
        }
        Ok(lat)
    });
    // The generator, on this thread.
    let sent = {
        measurement_thread(cpu, 50);
        let interval = Duration::from_secs_f64(1.0 / load.rate_pps as f64);
        let start = Instant::now();
        let mut seq = 0u64;
        let mut b = Batch::with_capacity(64);
        let mut result = Ok(());
        while seq < total {
            if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                result = Err(TuneError::Interrupted);
                break;
            }
            let due = ((start.elapsed().as_secs_f64() * load.rate_pps as f64) as u64 + 1)
                .min(total)
                .saturating_sub(seq)
                .min(64) as usize;
            if due == 0 {
                let next = start + interval.mul_f64((seq + 1) as f64);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                continue;
            }
            let got = tx.alloc(&mut b, due)?;
            for p in b.iter_mut() {
                p.extend_from_slice(&frame).map_err(|e| fail(format!("frame: {e}")))?;
            }
            let now = monotonic_ns();
            for p in b.iter_mut() {
                stamp(&mut p.data_mut()[L4_PAYLOAD..], seq, now);
                seq += 1;
            }
            tx.send(&mut b)?;
            if got == 0 {
                // The first NF's ring is full: it is not keeping up.
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        // Restore this thread's scheduling for the caller.
        let _ = Sched::default().reapply_to_current_thread();
        result.map(|()| seq)
    };
    if sent.is_err() {
        done.store(true, Ordering::Relaxed);
    }
    let lat = sink.join().map_err(|_| fail("the sink thread panicked".into()))?;
    let sent = sent?;
    let mut lat = lat?;
    drop(hogs);
    drop(children);
    drop(tx);
    drop(dir);
    if lat.is_empty() {
        return Err(fail(format!(
            "none of the {} measured packets came out of the chain (does it pass UDP from 10.0.0.1 to 10.1.0.1:5000?)",
            load.packets
        )));
    }
    let received = lat.len() as u64;
    lat.sort_unstable();
    let q = |f: f64| lat[((lat.len() - 1) as f64 * f).round() as usize];
    Ok(Measurement {
        candidate: cand.name.clone(),
        nfs,
        rep,
        sent: sent.saturating_sub(load.warmup),
        received,
        p25_ns: q(0.25),
        p50_ns: q(0.5),
        p75_ns: q(0.75),
        p99_ns: q(0.99),
    })
}

/// The file (in `--nf-log`'s directory) of NF `nf`'s standard error in
/// repetition `rep` of candidate `candidate` on a chain of `nfs` NFs.
pub fn nf_log_file(candidate: &str, nfs: usize, rep: u32, nf: &str) -> String {
    use crate::supervisor::file_name_part as part;
    format!("{}-{nfs}nf-rep{rep}-{}.log", part(candidate), part(nf))
}

/// What [`run_experiment`] measures.
#[derive(Clone, Debug)]
pub struct Experiment {
    pub exe: PathBuf,
    /// The chains, e.g. 1..=8 routers, or the one chain `braid tune` tunes.
    pub chains: Vec<ChainDescriptor>,
    pub candidates: Vec<Candidate>,
    /// The CPU every NF process is pinned to.
    pub cpu: usize,
    pub load: Load,
    pub reps: u32,
    /// Keep each NF process's standard error here ([`nf_log_file`]).
    pub nf_log: Option<PathBuf>,
}

/// Measure every candidate on every chain, `reps` times, interleaved;
/// `on_point` sees each measurement as it is made. A point that fails is
/// reported to `on_point` as an error and left out.
pub fn run_experiment(
    e: &Experiment,
    stop: Option<&AtomicBool>,
    on_point: &mut dyn FnMut(&Result<Measurement, TuneError>),
) -> Result<Vec<Measurement>, TuneError> {
    if e.reps == 0 || e.chains.is_empty() || e.candidates.is_empty() {
        return Err(TuneError::Config("nothing to measure".into()));
    }
    let mut points: Vec<(&ChainDescriptor, &Candidate)> = Vec::new();
    for d in &e.chains {
        for c in &e.candidates {
            points.push((d, c));
        }
    }
    let mut out = Vec::new();
    for rep in 0..e.reps {
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..points.len()).collect()
        } else {
            (0..points.len()).rev().collect()
        };
        for i in order {
            let (d, c) = points[i];
            let r = measure(&e.exe, d, c, e.cpu, &e.load, rep, stop, e.nf_log.as_deref());
            if matches!(r, Err(TuneError::Interrupted)) {
                return Err(TuneError::Interrupted);
            }
            on_point(&r);
            if let Ok(m) = r {
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// The medians over repetitions of one candidate on one chain length.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    pub candidate: String,
    pub nfs: usize,
    pub reps: usize,
    pub sent: u64,
    pub received: u64,
    pub p50_ns: u64,
    pub iqr_ns: u64,
    pub p99_ns: u64,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    if v.is_empty() {
        0
    } else {
        v[v.len() / 2]
    }
}

/// Per candidate and chain length: the median over the repetitions of
/// each statistic, in the order of first appearance.
pub fn summarize(ms: &[Measurement]) -> Vec<Summary> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for m in ms {
        let k = (m.candidate.clone(), m.nfs);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort_by_key(|(_, n)| *n);
    keys.into_iter()
        .map(|(c, n)| {
            let of: Vec<&Measurement> =
                ms.iter().filter(|m| m.candidate == c && m.nfs == n).collect();
            Summary {
                candidate: c,
                nfs: n,
                reps: of.len(),
                sent: of.iter().map(|m| m.sent).sum(),
                received: of.iter().map(|m| m.received).sum(),
                p50_ns: median(of.iter().map(|m| m.p50_ns).collect()),
                iqr_ns: median(of.iter().map(|m| m.iqr_ns()).collect()),
                p99_ns: median(of.iter().map(|m| m.p99_ns).collect()),
            }
        })
        .collect()
}

/// Least-squares line `median = intercept + slope * nfs` of a candidate's
/// medians (µs), over chain lengths from `from` on (SCC fits from 2).
pub fn fit(summaries: &[Summary], candidate: &str, from: usize) -> Option<(f64, f64)> {
    let pts: Vec<(f64, f64)> = summaries
        .iter()
        .filter(|s| s.candidate == candidate && s.nfs >= from)
        .map(|s| (s.nfs as f64, s.p50_ns as f64 / 1000.0))
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = pts.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

/// The best summary of one chain: lowest median, then lowest IQR; only
/// candidates that lost nothing (received every measured packet).
pub fn best(summaries: &[Summary]) -> Option<&Summary> {
    summaries
        .iter()
        .filter(|s| s.received >= s.sent && s.sent > 0)
        .min_by_key(|s| (s.p50_ns, s.iqr_ns))
}

/// The `sched:` block to put in the descriptor for `cand` on `cpu`.
pub fn sched_yaml(cand: &Candidate, cpu: usize) -> String {
    let s = SchedDecl { cpus: Some(vec![cpu]), ..cand.sched.clone() };
    let body = serde_yaml_ng::to_string(&s).unwrap_or_default();
    let mut out = String::from("sched:\n");
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(c: &str, nfs: usize, rep: u32, p50: u64, p25: u64, p75: u64) -> Measurement {
        Measurement {
            candidate: c.into(),
            nfs,
            rep,
            sent: 100,
            received: 100,
            p25_ns: p25,
            p50_ns: p50,
            p75_ns: p75,
            p99_ns: p75 * 2,
        }
    }

    #[test]
    fn summaries_fits_and_the_best_candidate() {
        let ms = vec![
            m("a", 1, 0, 10_000, 9_000, 12_000),
            m("a", 1, 1, 12_000, 9_000, 14_000),
            m("a", 1, 2, 11_000, 9_000, 13_000),
            m("a", 2, 0, 20_000, 18_000, 22_000),
            m("a", 3, 0, 30_000, 28_000, 32_000),
            m("b", 1, 0, 5_000, 4_000, 7_000),
            m("b", 2, 0, 7_000, 6_000, 8_000),
            m("b", 3, 0, 9_000, 8_000, 10_000),
        ];
        let s = summarize(&ms);
        let a1 = s.iter().find(|s| s.candidate == "a" && s.nfs == 1).unwrap();
        assert_eq!((a1.reps, a1.p50_ns, a1.iqr_ns, a1.sent), (3, 11_000, 4_000, 300));
        let (slope, icpt) = fit(&s, "a", 1).unwrap();
        assert!((slope - 9.5).abs() < 1e-9 && (icpt - 4.0 / 3.0).abs() < 1e-9, "{slope} {icpt}");
        let (slope, icpt) = fit(&s, "b", 2).unwrap();
        assert!((slope - 2.0).abs() < 1e-9 && (icpt - 3.0).abs() < 1e-9, "{slope} {icpt}");
        assert!(fit(&s, "b", 3).is_none(), "one point is no line");
        let one: Vec<Summary> = s.iter().filter(|s| s.nfs == 1).cloned().collect();
        assert_eq!(best(&one).unwrap().candidate, "b");
        // A candidate that lost packets is never the best.
        let mut lossy = one.clone();
        lossy[1].received = 99;
        assert_eq!(best(&lossy).unwrap().candidate, "a");
    }

    #[test]
    fn candidates_by_name_and_their_sched_blocks() {
        for (name, _) in CANDIDATES {
            let c = Candidate::named(name).unwrap();
            let y = sched_yaml(&c, 1);
            let body: String = y.lines().skip(1).map(|l| format!("{}\n", &l[2..])).collect();
            let d: SchedDecl =
                serde_yaml_ng::from_str(&body).unwrap_or_else(|e| panic!("{name}: {y}: {e}"));
            assert_eq!(d, SchedDecl { cpus: Some(vec![1]), ..c.sched.clone() }, "{y}");
        }
        let y = sched_yaml(&Candidate::named("batch-16").unwrap(), 1);
        assert!(y.contains("policy: batch") && y.contains("batch_size: 16"), "{y}");
        let e = Candidate::named("turbo").unwrap_err().to_string();
        assert!(e.contains("`turbo`") && e.contains("batch-16"), "{e}");
    }

    #[test]
    fn bad_loads_are_refused() {
        let l = Load { rate_pps: 0, packets: 10, warmup: 0, frame_size: 64, hogs: 0 };
        assert!(l.check().unwrap_err().to_string().contains("rate 0"));
        let l = Load { rate_pps: 10, packets: 10, warmup: 0, frame_size: 50, hogs: 0 };
        assert!(l.check().unwrap_err().to_string().contains("frame size 50"));
        let l = Load { rate_pps: 10, packets: 10, warmup: 0, frame_size: 64, hogs: 9 };
        assert!(l.check().unwrap_err().to_string().contains("9 busy neighbour"));
    }

    #[test]
    fn busy_neighbours_run_on_their_cpu_and_stop() {
        let cpu = crate::coordinator::online_cpus()[0];
        let hogs = Hogs::start(2, cpu).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let spins = hogs.stop();
        assert_eq!(spins.len(), 2);
        assert!(spins.iter().all(|&n| n > 0), "{spins:?}");
        // Dropped without `stop` (a failed measurement): joined all the same.
        let hogs = Hogs::start(1, cpu).unwrap();
        drop(hogs);
        let e = Hogs::start(1, 4096).err().expect("CPU 4096 is not online").to_string();
        assert!(e.contains("CPU 4096"), "{e}");
    }
}
