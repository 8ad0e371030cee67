//! Subcommands, one per file.

pub mod bench;
pub mod demo;
pub mod nfs;
pub mod plan;
pub mod run;
pub mod validate;
