//! The probe's clock: `CLOCK_MONOTONIC` in nanoseconds.
//!
//! Send and receive timestamps are taken by the same process on the same
//! host, so a monotonic clock is all the RTT needs, and it never jumps with
//! NTP. Being the plain kernel clock, its values also line up with other
//! tools' monotonic timestamps (e.g. `bpf_ktime_get_ns`) on this host.

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always
    // supported on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back_and_tracks_sleep() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b >= a + 2_000_000, "{a} -> {b}");
    }
}
