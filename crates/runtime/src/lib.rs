//! braid-runtime: chains of NFs.
//!
//! - [`descriptor`]: the YAML chain descriptor ([`ChainDescriptor`]).
//! - [`chain`]: the running [`Chain`] (stages, counters, monitors).
//! - [`coordinator`]: per-worker scheduling from the descriptor's `sched`,
//!   the starvation refusal and the privilege check before a run.
//! - [`validate`]: every problem of a descriptor file, with line and column.
//! - [`bench`]: in-memory throughput of a chain beside a refill baseline.
//! - [`plan`]: where each NF runs (kernel or user space) and why.
//! - [`runner`]: run a chain between two ports until the input ends.
//! - [`live`]: a live chain on its own worker thread, kept with its handle ([`live::LiveChain`]).
//! - [`proc_chain`]: a chain with one supervised process per NF; [`proc_chain::run_processes`].
//! - [`procs`]: one NF as its own process between shared-memory ports.
//! - [`nf_control`]: the control channel into an NF process, and what a restarted one starts from.
//! - [`shm_bench`]: packet rate and latency over each virtual-port backend.
//! - [`spans`]: where each field of a YAML document is written.
//!
//! A typical use:
//!
//! ```
//! use braid_runtime::{Chain, ChainDescriptor};
//! let d = ChainDescriptor::from_yaml("name: demo\nnfs:\n  - { name: f, type: fwd }\n").unwrap();
//! let mut chain = Chain::from_descriptor(&d).unwrap();
//! let mut batch: braid_packet::Batch =
//!     std::iter::once(braid_packet::Packet::from_bytes(&[0u8; 60])).collect();
//! chain.process(&mut batch);
//! assert_eq!(batch.len(), 1);
//! assert_eq!(chain.snapshot().stages[0].counters.packets_in, 1);
//! ```

pub mod batch_sweep;
pub mod bench;
pub mod chain;
pub mod coordinator;
pub mod descriptor;
pub mod live;
pub mod live_procs;
pub mod nf_control;
pub mod plan;
pub mod proc_chain;
pub mod procs;
pub mod runner;
pub mod shm_bench;
pub mod spans;
#[allow(unsafe_code)] // kill, fcntl on child pipes
pub mod supervisor;
pub mod tune;
pub mod validate;
pub mod xdp_nf;

pub use chain::{Chain, ChainBuildError, ChainMonitor, ChainSnapshot, Stage, StageSnapshot};
pub use descriptor::{
    CaptureFileFormat, ChainDescriptor, MemoryPortDecl, NfDecl, PcapPortDecl, PlacementChoice,
    PolicyDecl, PortDecl, SchedDecl, WorkerMapping,
};
