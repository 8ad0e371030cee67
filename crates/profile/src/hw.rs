//! Hardware performance counters (cycles, instructions, cache misses,
//! data-TLB misses) through `perf_event_open` (`perf-event2`), counted for
//! the calling thread and every thread it starts afterwards (`inherit`):
//! the totals of a run. Many virtual machines expose none; then the
//! profile says so with the kernel's answer, and never shows zeros.

use perf_event::events::{Cache, CacheId, CacheOp, CacheResult, Hardware};
use perf_event::{Builder, Counter};

/// The counters a profile asks for, in order.
pub const EVENTS: &[&str] = &["cycles", "instructions", "cache_misses", "dtlb_read_misses"];

/// What the hardware counted, or why it could not.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HardwareCounts {
    /// Totals over the profiled run (every thread it started).
    Measured { cycles: u64, instructions: u64, cache_misses: u64, dtlb_read_misses: u64 },
    /// Not available on this machine: the first event the kernel refused
    /// and its answer.
    NotAvailable { event: String, reason: String },
}

impl HardwareCounts {
    /// One line for people.
    pub fn describe(&self, packets: u64) -> String {
        match self {
            HardwareCounts::Measured { cycles, instructions, cache_misses, dtlb_read_misses } => {
                let per = |v: u64| v as f64 / packets.max(1) as f64;
                format!(
                    "hardware (all threads of the run): {:.1} cycles/pkt, {:.1} instructions/pkt, IPC {:.2}, {:.3} cache misses/pkt, {:.3} dTLB read misses/pkt",
                    per(*cycles),
                    per(*instructions),
                    *instructions as f64 / (*cycles).max(1) as f64,
                    per(*cache_misses),
                    per(*dtlb_read_misses)
                )
            }
            HardwareCounts::NotAvailable { event, reason } => format!(
                "hardware counters (cycles, instructions, cache and TLB misses): not available on this machine ({event}: {reason})"
            ),
        }
    }
}

/// Running hardware counters.
pub struct HardwareCounters {
    state: Result<Vec<Counter>, (String, String)>,
}

impl HardwareCounters {
    /// Open and start the counters on the calling thread, inherited by the
    /// threads it starts from now on.
    pub fn start() -> HardwareCounters {
        let dtlb =
            Cache { which: CacheId::DTLB, operation: CacheOp::READ, result: CacheResult::MISS };
        let mut counters = Vec::new();
        let builders = [
            Builder::new(Hardware::CPU_CYCLES),
            Builder::new(Hardware::INSTRUCTIONS),
            Builder::new(Hardware::CACHE_MISSES),
            Builder::new(dtlb),
        ];
        for (name, mut b) in EVENTS.iter().zip(builders) {
            match b.inherit(true).enabled(true).build() {
                Ok(c) => counters.push(c),
                Err(e) => {
                    return HardwareCounters { state: Err((name.to_string(), e.to_string())) }
                }
            }
        }
        HardwareCounters { state: Ok(counters) }
    }

    /// Open and start the counters on the running threads `tids` of this
    /// process (a live chain's workers), for as long as they run until
    /// [`HardwareCounters::finish`]: the totals over those threads.
    pub fn start_on(tids: &[u32]) -> HardwareCounters {
        let mut counters = Vec::new();
        for &tid in tids {
            let dtlb =
                Cache { which: CacheId::DTLB, operation: CacheOp::READ, result: CacheResult::MISS };
            let builders = [
                Builder::new(Hardware::CPU_CYCLES),
                Builder::new(Hardware::INSTRUCTIONS),
                Builder::new(Hardware::CACHE_MISSES),
                Builder::new(dtlb),
            ];
            for (name, mut b) in EVENTS.iter().zip(builders) {
                let pid = libc_pid(tid);
                match b.observe_pid(pid).any_cpu().enabled(true).build() {
                    Ok(c) => counters.push(c),
                    Err(e) => {
                        return HardwareCounters { state: Err((name.to_string(), e.to_string())) }
                    }
                }
            }
        }
        HardwareCounters { state: Ok(counters) }
    }

    /// Stop and read the totals (inherited threads' counts arrive when
    /// those threads have ended).
    pub fn finish(self) -> HardwareCounts {
        match self.state {
            Err((event, reason)) => HardwareCounts::NotAvailable { event, reason },
            Ok(mut counters) => {
                // Four per thread, in EVENTS order.
                let mut v = [0u64; 4];
                for (i, c) in counters.iter_mut().enumerate() {
                    let _ = c.disable();
                    match c.read() {
                        Ok(n) => v[i % 4] += n,
                        Err(e) => {
                            return HardwareCounts::NotAvailable {
                                event: EVENTS[i % 4].to_string(),
                                reason: format!("reading the counter: {e}"),
                            }
                        }
                    }
                }
                HardwareCounts::Measured {
                    cycles: v[0],
                    instructions: v[1],
                    cache_misses: v[2],
                    dtlb_read_misses: v[3],
                }
            }
        }
    }
}

/// A thread id as `perf_event_open` takes it.
fn libc_pid(tid: u32) -> i32 {
    i32::try_from(tid).unwrap_or(i32::MAX)
}
