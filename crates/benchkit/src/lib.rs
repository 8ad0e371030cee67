//! Benchmark helpers shared by braid's benches (a dev-dependency only).
//!
//! This VM's two cores are shared with other work, so wall time mostly
//! measures time spent descheduled. Both helpers here measure the bench
//! thread's **CPU time** (`CLOCK_THREAD_CPUTIME_ID`) instead; cache
//! pollution by neighbours still shows, preemption does not.
//!
//! * [`ThreadCpuTime`]: a criterion measurement, for criterion benches
//!   (`Criterion::default().with_measurement(ThreadCpuTime)`).
//! * [`cpu_ns_per_call`]: a plain harness for benches that print their own
//!   tables beside an external peer (`openssl speed`, the `rlnc` crate).

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use std::time::Duration;

/// CPU time consumed by the calling thread.
#[allow(unsafe_code)] // clock_gettime, a kernel boundary
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec behind a valid pointer
    // to a local; CLOCK_THREAD_CPUTIME_ID is supported by every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the bench thread, as a criterion measurement.
pub struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, d: &Duration) -> f64 {
        d.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds like wall time, so wall time's formatting fits.
        WallTime.formatter()
    }
}

/// CPU nanoseconds per call of `op`: after `warmup` calls, the call count
/// doubles until one round takes over 30 ms of CPU time, then the median of
/// 7 such rounds is returned.
pub fn cpu_ns_per_call(warmup: usize, mut op: impl FnMut()) -> f64 {
    const ROUND: Duration = Duration::from_millis(30);
    for _ in 0..warmup {
        op();
    }
    let mut round = |n: u64| {
        let t = thread_cpu();
        for _ in 0..n {
            op();
        }
        thread_cpu().saturating_sub(t)
    };
    let mut n = 1u64;
    while round(n) <= ROUND {
        n *= 2;
    }
    let mut rounds: Vec<f64> = (0..7).map(|_| round(n).as_nanos() as f64 / n as f64).collect();
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_counts_work_not_sleep() {
        let t = thread_cpu();
        std::thread::sleep(Duration::from_millis(50));
        assert!(thread_cpu() - t < Duration::from_millis(20), "sleep is not CPU time");
        let ns = cpu_ns_per_call(1, || {
            std::hint::black_box((0..1000u64).sum::<u64>());
        });
        assert!(ns > 0.0 && ns < 1e6, "{ns} ns for a 1000-element sum");
    }
}
