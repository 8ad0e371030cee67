//! `braid nf-proc`: run one NF as its own process between shared-memory
//! ports. The arguments and the run are `braid_daemon::nf_proc`'s, shared
//! with braidd, which starts itself as `braidd nf-proc` for the NFs of a
//! `mapping: processes` chain.

pub use braid_daemon::nf_proc::{run, Args, Policy};
