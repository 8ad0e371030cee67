//! `poll(2)` with a timeout that is not rounded down to milliseconds.
//!
//! `poll` takes its timeout in whole milliseconds, so a worker that sleeps
//! until its next tick (say 0.4 ms away) and converts with `as_millis`
//! asks for 0 ms: the call returns at once and the worker spins, calling
//! `poll` over and over until the tick. Measured on braid's AF_XDP `fwd`
//! with 200 probe requests/s (`crates/testbed/scripts/afxdp-live-profile.sh`,
//! docs/profiling.md): 120–200 `poll` calls per forwarded frame and about
//! 10 % of a CPU while idle. `ppoll` takes a `timespec`, so the sleep is
//! what was asked for, to the nanosecond.

use std::time::Duration;

/// Wait until one of `pfds` is ready or `timeout` passes (`ppoll(2)`,
/// nanosecond timeout, no signal mask change). Returns what `ppoll`
/// returns: the number of ready descriptors, 0 on timeout, or -1 with
/// `errno` set.
pub fn ppoll(pfds: &mut [libc::pollfd], timeout: Duration) -> libc::c_int {
    let secs = timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t;
    let ts = libc::timespec { tv_sec: secs, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs, `ts`
    // a valid timespec; a null sigmask leaves the signal mask alone.
    unsafe { libc::ppoll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, &ts, std::ptr::null()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sub-millisecond timeout sleeps (a `poll` with the timeout in
    /// milliseconds would return at once).
    #[test]
    fn a_sub_millisecond_timeout_sleeps_instead_of_returning_at_once() {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut pfd = [libc::pollfd { fd: fds[0], events: libc::POLLIN, revents: 0 }];
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(ppoll(&mut pfd, Duration::from_micros(400)), 0);
        }
        let took = t0.elapsed();
        // Five 400 µs sleeps: at least 2 ms (a rounded-down timeout of 0
        // would take microseconds).
        assert!(took >= Duration::from_micros(2000), "{took:?}");
        // SAFETY: both descriptors are ours, closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn a_ready_descriptor_returns_before_the_timeout() {
        let mut fds = [0i32; 2];
        // SAFETY: as above.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: one byte from a live buffer into our pipe.
        assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
        let mut pfd = [libc::pollfd { fd: fds[0], events: libc::POLLIN, revents: 0 }];
        let t0 = Instant::now();
        assert_eq!(ppoll(&mut pfd, Duration::from_secs(5)), 1);
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_ne!(pfd[0].revents & libc::POLLIN, 0);
        // SAFETY: both descriptors are ours, closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
