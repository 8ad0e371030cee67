//! Subcommands, one per file.

pub mod bench;
pub mod capture;
pub mod daemon;
pub mod demo;
pub mod deploy;
pub mod echo;
pub mod migrate;
#[allow(unsafe_code)] // fcntl and a File from the inherited heartbeat fd
pub mod nf_proc;
pub mod nfs;
pub mod plan;
pub mod probe;
pub mod profile;
pub mod run;
pub mod run_procs;
pub mod scale;
pub mod shm_bench;
pub mod stats;
pub mod testbed;
pub mod tune;
pub mod validate;
