//! The one clock of braid: `CLOCK_MONOTONIC` in nanoseconds.
//!
//! [`crate::Meta::rx_ns`], NF contexts, probe timestamps and shared-memory
//! latency stamps all use it. It is the kernel's monotonic clock itself (not
//! an offset from some first use), so a timestamp taken by one process can
//! be compared by another process on the same host, and with the kernel's
//! own (`bpf_ktime_get_ns`); it never jumps with NTP.

/// Nanoseconds on `CLOCK_MONOTONIC`.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail (vDSO, no system call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back_and_tracks_sleep() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b >= a + 2_000_000, "{a} -> {b}");
    }

    #[test]
    fn is_the_kernel_clock_shared_by_processes() {
        // /proc/uptime is CLOCK_BOOTTIME, which is >= CLOCK_MONOTONIC; an
        // offset-from-first-use clock would be near zero instead.
        let up: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mono_s = monotonic_ns() as f64 / 1e9;
        assert!(mono_s > 1.0 && mono_s <= up + 1.0, "monotonic {mono_s} s, uptime {up} s");
    }
}
