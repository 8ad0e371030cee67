//! braid-coding: GF(2^8) arithmetic with run-time dispatched SIMD kernels,
//! and random linear network coding (RLNC) on top of it.
//!
//! * [`gf256`]: the field and the bulk `dst ^= c * src` kernels.
//! * [`header`]: the coding header carried in front of every symbol.
//! * [`block`]: the systematic block encoder (generations of `k` symbols).
//! * [`sliding`]: the sliding-window encoder.
//! * [`decoder`]: progressive Gaussian elimination for both codes.
//! * [`recoder`]: recombines coded packets without decoding.
//! * [`snapshot`]: the checks behind every coder's `snapshot` / `restore`
//!   (state export for migration; snapshot types live next to each coder).
//!
//! The wire format is documented in `docs/network-coding.md`.

pub mod block;
pub mod decoder;
pub mod gf256;
pub mod header;
pub mod recoder;
pub mod sliding;
pub mod snapshot;
