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

#[allow(unsafe_code)] // fd passing over a Unix socket (SCM_RIGHTS)
pub mod control;
pub mod layout;
pub mod pool;
#[allow(unsafe_code)] // copies into and out of shared-memory slots
pub mod port;
#[allow(unsafe_code)] // memfd_create, mmap of the shared region
pub mod region;
#[allow(unsafe_code)] // Send for a ring over shared memory
pub mod ring;

pub use port::{wait_any, ShmConfig, ShmPort};
