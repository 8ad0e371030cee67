//! A profile of one run: what each NF and each worker did, what the OS
//! and the hardware counted, and a per-packet cost breakdown.

use std::sync::Arc;
use std::time::Duration;

use braid_dataplane::{ThreadOs, WorkerSnapshot, WorkerTelemetry};

use crate::calibrate::UnitCosts;
use crate::hw::HardwareCounts;

/// One NF at its call edge (VPP `show runtime`: calls, vectors, vectors
/// per call, clocks per vector, max).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NfProfile {
    pub name: String,
    pub kind: String,
    /// The worker that ran it.
    pub worker: String,
    /// Stage calls (one per batch).
    pub calls: u64,
    /// Packets in.
    pub vectors: u64,
    pub vectors_per_call: f64,
    pub packets_out: u64,
    pub dropped: u64,
    /// Time inside the NF's `process`, at the call edge (wall clock: it
    /// includes time the thread was preempted inside a call).
    pub busy_ns: u64,
    pub ns_per_packet: f64,
    /// Largest batch.
    pub max_batch: u64,
}

/// One worker thread over its run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerProfile {
    pub name: String,
    /// Kernel thread id (None if its loop never started).
    pub tid: Option<u32>,
    pub nfs: Vec<String>,
    /// Packets the worker received on all its ports.
    pub packets: u64,
    /// Packets its ports lost (receive rings full, outputs full: the
    /// ports' `rx_dropped` + `tx_dropped`).
    pub port_drops: u64,
    /// System calls its ports made to receive and send (AF_PACKET,
    /// AF_XDP); None when none of its ports counts them.
    pub port_syscalls: Option<u64>,
    /// Loop start to loop end.
    pub wall_ns: u64,
    /// What the OS counted between loop start and end; None with `os_error`.
    pub os: Option<ThreadOs>,
    pub os_error: Option<String>,
    pub turns: u64,
    pub idle_turns: u64,
    /// Times it slept (poll or sleep idle policy): at least one system call each.
    pub sleeps: u64,
}

impl WorkerProfile {
    /// On-CPU time per received packet (schedstat), if measured.
    pub fn cpu_ns_per_packet(&self) -> Option<f64> {
        self.os.map(|o| o.run_ns as f64 / self.packets.max(1) as f64)
    }
}

/// Where a number in the breakdown comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Counted or timed during the run.
    Measured,
    /// A measured count times a unit cost calibrated on this machine.
    Modelled,
}

/// One slice of a worker's per-packet cost.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Component {
    pub name: String,
    pub ns_per_packet: f64,
    pub source: Source,
    /// CPU time (part of the stack) or time waiting (drawn apart).
    pub cpu: bool,
}

/// The per-packet cost of one worker, by component (SCC Table 3 in
/// spirit): the CPU components add up to the worker's on-CPU time per
/// packet it received.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CostBar {
    pub worker: String,
    pub packets: u64,
    pub components: Vec<Component>,
    /// Caveats (NF time larger than CPU time, no OS counters, ...).
    pub notes: Vec<String>,
}

/// A whole profile.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    pub chain: String,
    pub mapping: String,
    /// The run, first worker start to last worker end.
    pub elapsed_ns: u64,
    pub input_packets: u64,
    pub output_packets: u64,
    pub nfs: Vec<NfProfile>,
    pub workers: Vec<WorkerProfile>,
    pub hardware: HardwareCounts,
    /// The unit costs behind the modelled components; None: not calibrated
    /// (then nothing is modelled).
    pub unit_costs: Option<UnitCosts>,
    pub breakdown: Vec<CostBar>,
    /// What this machine cannot measure, said once.
    pub not_measured: Vec<String>,
    /// Softirq time and network softirqs per CPU over the run (empty:
    /// not read).
    #[serde(default)]
    pub softirq: Vec<crate::softirq::CpuSoftirq>,
}

/// What the profiler needs of a finished run.
pub struct RunFacts {
    pub chain: String,
    pub mapping: String,
    pub elapsed: Duration,
    pub input_packets: u64,
    pub output_packets: u64,
}

/// What one worker counted over a profiled span: its telemetry over the
/// span, what the OS counted for its thread, and the span's length.
#[derive(Clone, Debug)]
pub struct WorkerSpan {
    /// The worker's counters over the span (see [`WorkerSnapshot::since`]).
    pub counts: WorkerSnapshot,
    /// Kernel thread id (None if its loop never started).
    pub tid: Option<u32>,
    /// What the OS counted for its thread over the span.
    pub os: Option<ThreadOs>,
    /// Why there are no OS counts.
    pub os_error: Option<String>,
    /// The span's length.
    pub wall_ns: u64,
}

/// Build the profile from the telemetry of the run's workers (after they
/// have stopped), the hardware counts and the unit costs.
pub fn build(
    run: RunFacts,
    workers: &[Arc<WorkerTelemetry>],
    hardware: HardwareCounts,
    unit_costs: Option<UnitCosts>,
) -> Profile {
    let spans = workers
        .iter()
        .map(|w| {
            let os = w.os();
            let during = os.during_run();
            WorkerSpan {
                counts: w.snapshot(),
                tid: os.tid(),
                os: during.map(|d| d.0),
                os_error: os.error.clone(),
                wall_ns: during.map_or(0, |d| d.1),
            }
        })
        .collect();
    build_spans(run, spans, hardware, unit_costs)
}

/// Build the profile from what each worker counted over a span (a whole
/// run, or an interval of a live chain), the hardware counts and the unit
/// costs.
pub fn build_spans(
    run: RunFacts,
    spans: Vec<WorkerSpan>,
    hardware: HardwareCounts,
    unit_costs: Option<UnitCosts>,
) -> Profile {
    let mut nfs = Vec::new();
    let mut wps = Vec::new();
    let mut bars = Vec::new();
    let mut not_measured = Vec::new();
    for span in spans {
        let snap = span.counts;
        let packets: u64 = snap.ports.iter().map(|p| p.stats.rx_packets).sum();
        let mut nf_busy = 0u64;
        for s in &snap.stages {
            let c = &s.counters;
            nf_busy += c.busy_ns;
            nfs.push(NfProfile {
                name: s.name.clone(),
                kind: s.kind.to_string(),
                worker: snap.worker.clone(),
                calls: c.batches,
                vectors: c.packets_in,
                vectors_per_call: c.mean_batch(),
                packets_out: c.packets_out,
                dropped: c.dropped_total(),
                busy_ns: c.busy_ns,
                ns_per_packet: c.ns_per_packet(),
                max_batch: c.max_batch,
            });
        }
        let wp = WorkerProfile {
            name: snap.worker.clone(),
            tid: span.tid,
            nfs: snap.stages.iter().map(|s| s.name.clone()).collect(),
            packets,
            port_drops: snap.ports.iter().map(|p| p.stats.rx_dropped + p.stats.tx_dropped).sum(),
            port_syscalls: snap
                .ports
                .iter()
                .filter_map(|p| p.stats.syscalls)
                .fold(None, |acc, n| Some(acc.unwrap_or(0) + n)),
            wall_ns: span.wall_ns,
            os: span.os,
            os_error: span.os_error,
            turns: snap.looped.turns,
            idle_turns: snap.looped.idle_turns,
            sleeps: snap.looped.sleeps,
        };
        if wp.os.is_some_and(|o| o.migrations.is_none())
            && !not_measured.iter().any(|m: &String| m.starts_with("CPU migrations"))
        {
            not_measured.push(
                "CPU migrations: the kernel does not expose se.nr_migrations (no CONFIG_SCHED_DEBUG)"
                    .to_string(),
            );
        }
        bars.push(cost_bar(&wp, &snap.stages, nf_busy, unit_costs.as_ref()));
        wps.push(wp);
    }
    if let HardwareCounts::NotAvailable { event, reason } = &hardware {
        not_measured.push(format!(
            "hardware counters (cycles, instructions, cache misses, dTLB misses): not available on this machine ({event}: {reason})"
        ));
    }
    if !braid_dataplane::TELEMETRY {
        not_measured.push(
            "NF call-edge times (ns/pkt): this braid was built without the `telemetry` feature"
                .to_string(),
        );
    }
    if wps.iter().any(|w| w.port_syscalls.is_none()) {
        not_measured.push(
            "system calls of in-memory and capture-file ports (not counted; AF_PACKET, AF_XDP, shared-memory and channel ports are; `sleeps` counts each worker's idle waits, one poll(2) or nanosleep each)".to_string(),
        );
    }
    Profile {
        chain: run.chain,
        mapping: run.mapping,
        elapsed_ns: run.elapsed.as_nanos() as u64,
        input_packets: run.input_packets,
        output_packets: run.output_packets,
        nfs,
        workers: wps,
        hardware,
        unit_costs,
        breakdown: bars,
        not_measured,
        softirq: Vec::new(),
    }
}

fn cost_bar(
    w: &WorkerProfile,
    stages: &[braid_dataplane::StageSnapshot],
    nf_busy: u64,
    costs: Option<&UnitCosts>,
) -> CostBar {
    let per = |ns: f64| ns / w.packets.max(1) as f64;
    let mut components: Vec<Component> = stages
        .iter()
        .filter(|_| braid_dataplane::TELEMETRY)
        .map(|s| Component {
            name: format!("nf {}", s.name),
            ns_per_packet: per(s.counters.busy_ns as f64),
            source: Source::Measured,
            cpu: true,
        })
        .collect();
    let mut notes = Vec::new();
    match w.os {
        None => notes.push(format!(
            "no OS counters for this worker ({}): only the NF time is shown",
            w.os_error.as_deref().unwrap_or("its loop did not run")
        )),
        Some(os) => {
            let switches = os.voluntary_switches + os.involuntary_switches;
            let modelled = costs.map(|c| switches as f64 * c.context_switch_ns);
            let rest = os.run_ns as f64 - nf_busy as f64 - modelled.unwrap_or(0.0);
            let io_name = if braid_dataplane::TELEMETRY {
                "I/O, loop and idle polling"
            } else {
                "NFs, I/O, loop and idle polling"
            };
            if (nf_busy as f64) > os.run_ns as f64 {
                notes.push(format!(
                    "the NFs' call-edge time ({} ns) exceeds the thread's CPU time ({} ns): it includes time preempted inside calls",
                    nf_busy, os.run_ns
                ));
            }
            let syscalls = match (w.port_syscalls, costs) {
                (Some(n), Some(c)) => {
                    let ns = (n + w.sleeps) as f64 * c.syscall_ns;
                    components.push(Component {
                        name: format!("system call entries ({})", n + w.sleeps),
                        ns_per_packet: per(ns),
                        source: Source::Modelled,
                        cpu: true,
                    });
                    ns
                }
                _ => 0.0,
            };
            let rest = rest - syscalls;
            if let Some(m) = modelled {
                components.push(Component {
                    name: format!("context switches ({switches})"),
                    ns_per_packet: per(m),
                    source: Source::Modelled,
                    cpu: true,
                });
            } else {
                notes.push("not calibrated: context switches are not modelled".to_string());
            }
            components.push(Component {
                name: io_name.to_string(),
                ns_per_packet: per(rest.max(0.0)),
                source: Source::Measured,
                cpu: true,
            });
            components.push(Component {
                name: "run-queue wait".to_string(),
                ns_per_packet: per(os.wait_ns as f64),
                source: Source::Measured,
                cpu: false,
            });
        }
    }
    CostBar { worker: w.name.clone(), packets: w.packets, components, notes }
}
