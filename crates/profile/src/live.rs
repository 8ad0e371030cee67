//! A live profile: what the workers of a running chain did over an
//! interval. Two copies of each worker's lock-free telemetry (the seqlock
//! cells the worker publishes; no control message, the worker never
//! waits) and two samples of its thread's OS counters
//! (`/proc/<pid>/task/<tid>/{stat,schedstat,status,sched}`), `interval`
//! apart; the differences make the same [`Profile`] an offline run does.
//! Hardware counters are opened on the worker threads for the interval
//! where the machine has them; otherwise the profile says "not available
//! on this machine" as the offline profiler does.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use braid_dataplane::{ThreadOs, WorkerSnapshot, WorkerTelemetry};

use crate::calibrate::calibrate;
use crate::hw::{HardwareCounters, HardwareCounts};
use crate::profile::{build_spans, Profile, RunFacts, WorkerSpan};
use crate::run::ProfileError;

/// The intervals a live profile takes, in milliseconds.
pub const INTERVAL_MS: RangeInclusive<u64> = 10..=60_000;

/// What a live profile measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveOptions {
    /// How long to watch.
    pub interval: Duration,
    /// Calibrate the unit costs first (before the interval, a few tens of
    /// milliseconds of ping-pong on the last CPU), so context switches
    /// and system calls are modelled.
    pub calibrate: bool,
    /// Open hardware counters on the worker threads for the interval.
    pub hardware: bool,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions { interval: Duration::from_secs(1), calibrate: false, hardware: true }
    }
}

/// A copy of a worker's telemetry taken in another process: the snapshot,
/// the process's pid and the worker thread's id (None before its loop
/// started), or why it could not be taken.
pub type RemoteSample = Result<(WorkerSnapshot, u32, Option<u32>), String>;

/// A worker a live profile watches.
#[derive(Clone)]
pub enum LiveWorker {
    /// A worker thread of this process: its lock-free telemetry.
    Thread(Arc<WorkerTelemetry>),
    /// A worker in another process (an NF process of a `mapping:
    /// processes` chain), copied on request; its OS counters are read from
    /// `/proc/<pid>/task/<tid>` all the same.
    Process { name: String, copy: Arc<dyn Fn() -> RemoteSample + Send + Sync> },
}

impl LiveWorker {
    /// The worker thread's id, if its loop started (for hardware counters).
    fn tid(&self) -> Option<u32> {
        match self {
            LiveWorker::Thread(w) => w.os().tid(),
            LiveWorker::Process { copy, .. } => copy().ok().and_then(|(_, _, tid)| tid),
        }
    }

    fn sample(&self) -> Result<Sample, ProfileError> {
        let (snapshot, pid, tid) = match self {
            LiveWorker::Thread(w) => (w.snapshot(), std::process::id(), w.os().tid()),
            LiveWorker::Process { name, copy } => {
                copy().map_err(|why| ProfileError::Worker { worker: name.clone(), why })?
            }
        };
        let os = match tid {
            Some(t) => ThreadOs::of(pid, t).map_err(|e| e.to_string()),
            None => Err("its loop has not started".to_string()),
        };
        Ok(Sample { snapshot, tid, os, at_ns: braid_nf::monotonic_ns() })
    }
}

/// One worker at one moment.
struct Sample {
    snapshot: WorkerSnapshot,
    tid: Option<u32>,
    os: Result<ThreadOs, String>,
    at_ns: u64,
}

/// Profile the running workers `workers` of chain `chain` (threads of
/// this process, or workers of NF processes) over `opts.interval`.
/// Blocks for the interval.
pub fn profile_live(
    chain: &str,
    workers: &[LiveWorker],
    opts: LiveOptions,
) -> Result<Profile, ProfileError> {
    let ms = opts.interval.as_millis() as u64;
    if !INTERVAL_MS.contains(&ms) {
        return Err(ProfileError::Interval(ms));
    }
    let unit_costs = if opts.calibrate {
        let cpu = braid_runtime::coordinator::online_cpus().last().copied().unwrap_or(0);
        Some(calibrate(braid_dataplane::SchedPolicy::Other, cpu, 2000)?)
    } else {
        None
    };
    let tids: Vec<u32> = workers.iter().filter_map(LiveWorker::tid).collect();
    let hw = opts.hardware.then(|| HardwareCounters::start_on(&tids));
    let softirq_before = crate::softirq::SoftirqSample::take();
    let before: Vec<Sample> = workers.iter().map(LiveWorker::sample).collect::<Result<_, _>>()?;
    std::thread::sleep(opts.interval);
    let after: Vec<Sample> = workers.iter().map(LiveWorker::sample).collect::<Result<_, _>>()?;
    let softirq_after = crate::softirq::SoftirqSample::take();
    let hardware = match hw {
        Some(h) => h.finish(),
        None => HardwareCounts::NotAvailable {
            event: "all".into(),
            reason: "not asked for (hardware=false)".into(),
        },
    };
    let mut elapsed = 0;
    let spans: Vec<WorkerSpan> = before
        .iter()
        .zip(&after)
        .map(|(a, b)| {
            let wall_ns = b.at_ns.saturating_sub(a.at_ns);
            elapsed = elapsed.max(wall_ns);
            let (os, os_error) = match (&a.os, &b.os) {
                (Ok(x), Ok(y)) => (Some(y.since(x)), None),
                (Err(e), _) | (_, Err(e)) => (None, Some(e.clone())),
            };
            WorkerSpan {
                counts: b.snapshot.since(&a.snapshot),
                tid: b.tid.or(a.tid),
                os,
                os_error,
                wall_ns,
            }
        })
        .collect();
    let input_packets =
        spans.iter().flat_map(|s| &s.counts.ports).map(|p| p.stats.rx_packets).sum();
    let output_packets =
        spans.iter().flat_map(|s| &s.counts.ports).map(|p| p.stats.tx_packets).sum();
    let facts = RunFacts {
        chain: chain.to_string(),
        mapping: "live".to_string(),
        elapsed: Duration::from_nanos(elapsed),
        input_packets,
        output_packets,
    };
    let mut profile = build_spans(facts, spans, hardware, unit_costs);
    profile.not_measured.push(
        "user and system time of a live worker: /proc/<pid>/task/<tid>/stat, in 10 ms ticks (on-CPU time and run-queue wait are schedstat's, ns)".to_string(),
    );
    profile.not_measured.push(
        "max batch of a live interval: the largest batch since the chain started (the interval's is at most that)".to_string(),
    );
    if let (Some(b), Some(a)) = (softirq_before, softirq_after) {
        profile.softirq = b.until(&a);
    }
    Ok(profile)
}
