//! Subcommands, one per file.

pub mod bench;
pub mod demo;
pub mod deploy;
pub mod echo;
pub mod nf_proc;
pub mod nfs;
pub mod plan;
pub mod probe;
pub mod run;
pub mod run_procs;
pub mod shm_bench;
pub mod stats;
pub mod testbed;
pub mod validate;
