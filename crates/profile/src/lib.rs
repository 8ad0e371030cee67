//! braid's profiler (the measuring half of SCC, seed 002 §3–§4): for a run
//! of a chain, per NF at the call edge (calls, vectors, vectors per call,
//! ns per packet, largest batch: VPP `show runtime`), per worker thread
//! what the OS counted (CPU time user/system/on-CPU, run-queue wait,
//! voluntary and involuntary context switches, migrations, page faults),
//! hardware counters where the machine has them (otherwise the profile
//! says "not available on this machine", never zeros), and a per-packet
//! cost breakdown per worker whose every component says whether it was
//! measured or modelled (a measured count times a unit cost calibrated on
//! this machine).
//!
//! - [`run`]: [`profile_offline`], a `braid run` (capture or generated
//!   input, `thread` or `threads` mapping) with the profiler around it;
//! - [`profile`]: the [`Profile`] model and how it is built from the
//!   workers' telemetry ([`braid_dataplane::WorkerWatch`],
//!   [`braid_dataplane::WorkerOs`]);
//! - [`calibrate`]: context-switch and system-call costs per scheduling
//!   policy (SCC Table 2);
//! - [`live`]: [`profile_live`], the workers of a running chain over an
//!   interval (braidd's `GET /v1/chains/{name}/profile`);
//! - [`hw`]: hardware counters through `perf-event2`;
//! - [`bpf`]: runs and ns per run of the loaded XDP programs (kernel NFs);
//! - [`softirq`]: softirq time and network softirqs per CPU over the run;
//! - [`report`]: table, JSON and SVG.
//!
//! `docs/profiling.md` shows the output and what each number means.

pub mod bpf;
pub mod calibrate;
pub mod hw;
pub mod live;
pub mod profile;
pub mod report;
pub mod run;
pub mod softirq;

pub use calibrate::{calibrate, cost_table, UnitCosts};
pub use hw::HardwareCounts;
pub use live::{profile_live, LiveOptions, LiveWorker, RemoteSample};
pub use profile::{Profile, Source};
pub use run::{profile_offline, ProfileError, ProfileOptions};
