//! Precise waiting for the next send time.
//!
//! `thread::sleep` overshoots by tens of microseconds (timer slack and
//! wake-up latency), which would make the inter-packet delay jitter. The
//! pacer sleeps until a margin before the deadline and spins the rest, so
//! packets leave within about a microsecond of their schedule while the CPU
//! stays idle for most of a 5 ms gap.

use braid_packet::clock::monotonic_ns;
use std::time::Duration;

/// Default margin before a deadline at which sleeping stops and spinning
/// starts. Large enough to absorb the usual sleep overshoot on a loaded
/// 2-core VM.
pub const DEFAULT_SPIN_NS: u64 = 200_000;

/// Wait until `CLOCK_MONOTONIC` reaches `deadline_ns`: sleep while more than
/// `spin_ns` remain, then spin. Returns the time at which it returned.
pub fn wait_until(deadline_ns: u64, spin_ns: u64) -> u64 {
    loop {
        let now = monotonic_ns();
        if now >= deadline_ns {
            return now;
        }
        let left = deadline_ns - now;
        if left > spin_ns {
            std::thread::sleep(Duration::from_nanos(left - spin_ns));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// A fixed-interval schedule: packet `i` is due at `start + i * interval`.
/// Late packets do not shift the schedule (no drift); a packet due in the
/// past is sent at once.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub start_ns: u64,
    pub interval_ns: u64,
}

impl Schedule {
    pub fn due(&self, i: u64) -> u64 {
        self.start_ns + i * self.interval_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_returns_early() {
        for gap in [0u64, 50_000, 300_000, 1_000_000] {
            let deadline = monotonic_ns() + gap;
            let t = wait_until(deadline, DEFAULT_SPIN_NS);
            assert!(t >= deadline);
        }
    }

    #[test]
    fn schedule_does_not_drift() {
        let s = Schedule { start_ns: 1000, interval_ns: 5_000_000 };
        assert_eq!(s.due(0), 1000);
        assert_eq!(s.due(200), 1000 + 200 * 5_000_000);
    }
}
