//! Sleeping on several ports at once.
//!
//! A worker serving several ports from one thread must not sleep in one
//! port's [`Port::wait`] while another has packets. Each port that can be
//! waited on through a descriptor hands its descriptors over in
//! [`Port::prepare_wait`]; [`wait_any`] polls all of them (plus any extra
//! ones, such as a control mailbox's wake-up socket) and lets every port
//! undo its preparations afterwards.
//!
//! The sleep is `ppoll(2)` with a nanosecond timeout: `poll(2)` takes whole
//! milliseconds, and a wait shorter than one (the last < 1 ms before a
//! worker's tick, every wait of a 100 µs tick) rounded down to a `poll`
//! that returns at once, so a "sleeping" worker spun until its tick.

use std::os::fd::RawFd;
use std::time::Duration;

use crate::{Port, PortError};

/// What a port said when asked to get ready for a sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReadiness {
    /// Packets are already waiting: do not sleep.
    Ready,
    /// The port pushed descriptors that become readable when it has work.
    Descriptors,
    /// The port cannot be waited on by descriptor (memory, generator; a
    /// channel end whose eventfd could not be made): the caller should
    /// sleep only briefly.
    NoDescriptor,
}

/// How [`wait_any`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// Some port had packets before sleeping.
    Ready,
    /// Slept in `poll(2)` until a descriptor was readable or the timeout.
    Polled,
    /// At least one port has no descriptor: looked at the descriptors
    /// without sleeping (see [`wait_any`]).
    Short,
}

/// Sleep until one of `ports` (or one of `extra` descriptors) may have
/// work, or `timeout` passes.
///
/// A port without a descriptor (memory, generator) cannot wake the
/// sleeper (in-process channels can: [`crate::channel`]): then the
/// descriptors are only looked at (`ppoll` with a zero timeout) and the caller comes back at once. That is a spin, as it
/// always was here (the 200 µs cap this had was rounded down to 0 ms by
/// `poll(2)`); sleeping instead would add the sleep to every hop of a
/// chain of threads.
pub fn wait_any(
    ports: &mut [&mut dyn Port],
    extra: &[RawFd],
    timeout: Duration,
) -> Result<Waited, PortError> {
    let mut fds: Vec<RawFd> = extra.to_vec();
    let mut ready = false;
    let mut blind = false;
    for p in ports.iter_mut() {
        match p.prepare_wait(&mut fds) {
            WaitReadiness::Ready => ready = true,
            WaitReadiness::Descriptors => {}
            WaitReadiness::NoDescriptor => blind = true,
        }
    }
    let outcome = if ready {
        Waited::Ready
    } else if blind {
        poll_fds(&fds, Duration::ZERO)?;
        Waited::Short
    } else {
        poll_fds(&fds, timeout)?;
        Waited::Polled
    };
    for p in ports.iter_mut() {
        p.finish_wait();
    }
    Ok(outcome)
}

/// Sleep until one of `fds` is readable or `timeout` (to the nanosecond:
/// [`crate::sleep::ppoll`]) passes. An interrupted sleep (a signal)
/// returns early.
pub fn poll_fds(fds: &[RawFd], timeout: Duration) -> Result<(), PortError> {
    crate::shm::control::poll_readable(fds, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    /// A sub-millisecond timeout sleeps (`poll(2)` would have returned at
    /// once), and a readable descriptor ends the sleep early.
    #[test]
    fn poll_fds_sleeps_below_a_millisecond_and_wakes_on_data() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_millis(20) {
            poll_fds(&[a.as_raw_fd()], Duration::from_micros(500)).unwrap();
            n += 1;
        }
        // 20 ms of 500 µs sleeps: about 40 (fewer on a loaded machine);
        // a spin would make hundreds of thousands.
        assert!((1..=45).contains(&n), "{n} wake-ups in 20 ms of 500 µs sleeps");
        b.send(b"x").unwrap();
        let t = Instant::now();
        poll_fds(&[a.as_raw_fd()], Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(4), "slept {:?} with data waiting", t.elapsed());
    }
}
