//! braid-probe: the UDP echo server and the round-trip probe.
//!
//! The methodology is CALVIN's (seed `000`): a UDP client sends one packet
//! every inter-packet delay (5 ms by default) through the chain to an echo
//! server and back, and the round-trip time of every packet is measured at
//! the client. Each packet carries a [`payload::ProbeHeader`] (run id,
//! sequence number, send timestamp on `CLOCK_MONOTONIC`) padded to the
//! payload size, so the client needs no per-packet state to time it and
//! can tell loss, reordering and duplicates apart.
//!
//! - [`config`]: why a setting was refused ([`config::ConfigError`]).
//! - [`echo`]: the echo server (`recvmmsg`/`sendmmsg` batches, batch 1 for
//!   lowest latency).
//! - [`rtt`]: the paced latency probe, one run of `count` packets.
//! - [`throughput`]: the search for the highest offered rate with no loss
//!   and no reordering (CALVIN's bandwidth metric), plus the peak received
//!   rate.
//! - [`stats`]: sequence tracking, percentiles, mean and confidence interval.
//! - [`report`]: the aggregated report (table and JSON) and [`svg`] the
//!   latency CDF plot.

pub mod config;
pub mod echo;
#[allow(unsafe_code)] // sendmmsg/recvmmsg
pub mod mmsg;
pub mod pacer;
pub mod payload;
pub mod report;
pub mod rtt;
pub mod session;
#[allow(unsafe_code)] // sigaction
pub mod signal;
#[allow(unsafe_code)] // setsockopt
pub mod sockopt;
pub mod stats;
pub mod svg;
pub mod throughput;
