//! Shared-memory virtual ports between NF processes.
//!
//! Two processes map one memfd region holding a pool of packet slots and
//! four single-producer single-consumer descriptor rings (data each way, and
//! a return ring each way for slots going back to their home side). Batches
//! cross as 16-byte descriptors; packet bytes are never copied on the way.
//! A Unix socket sets the channel up and passes the descriptors
//! (`SCM_RIGHTS`), then stays open to detect a peer that dies; eventfds wake
//! a consumer that sleeps instead of polling.
//!
//! * [`region`]: memfd + mmap (optionally huge pages).
//! * [`layout`]: where the header, rings and slots live.
//! * [`ring`]: the SPSC rings, with checked peer indices.
//! * [`pool`]: which side owns which slot; every claim of the peer checked.
//! * [`control`]: the handshake, fd passing, eventfds, peer liveness.
//! * [`port`]: [`ShmPort`], the [`crate::Port`] over all of this.
//!
//! See `docs/shared-memory.md` for the design and the measurements.

pub mod control;
pub mod layout;
pub mod pool;
pub mod port;
pub mod region;
pub mod ring;

pub use port::{wait_any, ShmConfig, ShmPort};

/// `CLOCK_MONOTONIC` in nanoseconds: one time base for every process on the
/// host, so a timestamp written by one process can be compared by another
/// (one-way latency across a shared-memory port).
pub fn clock_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the valid timespec; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
