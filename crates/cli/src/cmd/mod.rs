//! Subcommands, one per file.

pub mod nfs;
