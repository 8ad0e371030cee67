//! Shared by the braid-nf benchmarks (`mod common;` in each bench).
//!
//! [`ThreadCpuTime`]: a criterion measurement of the benchmark thread's CPU
//! time (`CLOCK_THREAD_CPUTIME_ID`) instead of wall time. This VM's 2 cores
//! are shared with other builds; time spent descheduled is not the NF's
//! cost, CPU time leaves it out (cache pollution by neighbours still
//! shows).

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use std::time::Duration;

/// CPU time consumed by the calling thread, as a criterion measurement.
pub struct ThreadCpuTime;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec behind a valid pointer
    // to a local; CLOCK_THREAD_CPUTIME_ID is supported by every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

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
