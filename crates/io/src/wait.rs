//! Sleeping on several ports at once.
//!
//! A worker serving several ports from one thread must not sleep in one
//! port's [`Port::wait`] while another has packets. Each port that can be
//! waited on through a descriptor hands its descriptors over in
//! [`Port::prepare_wait`]; [`wait_any`] polls all of them (plus any extra
//! ones, such as a control mailbox's wake-up socket) and lets every port
//! undo its preparations afterwards.

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
    /// The port cannot be waited on by descriptor (in-process channel,
    /// memory): the caller should sleep only briefly.
    NoDescriptor,
}

/// How [`wait_any`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// Some port had packets before sleeping.
    Ready,
    /// Slept in `poll(2)` until a descriptor was readable or the timeout.
    Polled,
    /// At least one port has no descriptor: slept at most `short`.
    Short,
}

/// Sleep until one of `ports` (or one of `extra` descriptors) may have
/// work, or `timeout` passes. Ports without a descriptor cap the sleep at
/// `short` (they are checked again after it).
pub fn wait_any(
    ports: &mut [&mut dyn Port],
    extra: &[RawFd],
    timeout: Duration,
    short: Duration,
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
        crate::shm::control::poll_readable(&fds, timeout.min(short))?;
        Waited::Short
    } else {
        crate::shm::control::poll_readable(&fds, timeout)?;
        Waited::Polled
    };
    for p in ports.iter_mut() {
        p.finish_wait();
    }
    Ok(outcome)
}
