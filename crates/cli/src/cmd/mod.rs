//! Subcommands, one per file.

pub mod bench;
pub mod demo;
pub mod deploy;
pub mod echo;
pub mod nfs;
pub mod plan;
pub mod probe;
pub mod run;
pub mod stats;
pub mod testbed;
pub mod validate;
