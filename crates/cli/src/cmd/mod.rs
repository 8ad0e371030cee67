//! Subcommands, one per file.

pub mod bench;
pub mod demo;
pub mod echo;
pub mod nfs;
pub mod probe;
pub mod testbed;
pub mod plan;
pub mod run;
pub mod validate;
