//! braid packet core.
//!
//! * [`Packet`]: one frame in a pooled, fixed-size buffer with head- and
//!   tailroom, so NFs can push and pull headers without copying the payload.
//!   Buffers come either from the heap (recycled through a per-thread pool)
//!   or from an external region (shared memory, AF_XDP UMEM) owned by an I/O
//!   backend.
//! * [`Batch`]: an ordered vector of packets; the unit that moves between NFs,
//!   threads and processes.
//! * [`wire`]: zero-copy typed views over header bytes, checksums.
//! * [`envelope`]: one parse of a frame's headers (offsets, fields) and
//!   its policy class (ok, truncated, malformed, fragment, unsupported).
//! * [`flow`]: the IPv4 5-tuple and a fast flow hash.

pub mod batch;
#[allow(unsafe_code)] // external (shared-memory, UMEM) buffers
pub mod buffer;
#[allow(unsafe_code)] // clock_gettime
pub mod clock;
pub mod envelope;
pub mod filter;
pub mod flow;
#[cfg(feature = "proptest")]
pub mod strategy;
pub mod wire;

pub use batch::{Batch, DEFAULT_BATCH_SIZE};
pub use buffer::{
    frame_len_for_mtu, BufferOwner, ExternalBuf, Meta, Packet, BUF_SIZE, DEFAULT_MTU, HEADROOM,
    JUMBO_BUF_SIZE, MAX_FRAME, MAX_MTU,
};
