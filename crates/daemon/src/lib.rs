//! braidd, the per-host braid daemon, and its client.
//!
//! - [`daemon`]: the chains braidd runs ([`braid_runtime::live::LiveChain`]
//!   each, [`braid_runtime::live_procs::LiveProcesses`] with `mapping:
//!   processes`) and the operations on them;
//! - [`store`]: the declared chains in an embedded transactional store;
//! - [`api`]: the HTTP/JSON API on a unix socket (peer credentials checked);
//! - [`metrics`]: `/metrics` in OpenMetrics text;
//! - [`audit`]: the audit log of mutating calls;
//! - [`auth`]: the bearer token of the TCP API;
//! - [`ops`]: operations (ids, outcomes) and the event feed;
//! - [`migration`]: the migration agent (`POST
//!   /v1/chains/{name}/nfs/{nf}/migrate`, the `migrate_listen` listener);
//! - [`nf_proc`]: the arguments and the run of one NF process (`braid
//!   nf-proc`, and `braidd nf-proc` for `mapping: processes` chains);
//! - [`capture`]: `POST /v1/chains/{name}/capture`, a pcapng stream of an
//!   NF's packets (`braid capture --chain`), and its client;
//! - [`openapi`]: the served OpenAPI document;
//! - [`config`]: the TOML configuration;
//! - [`server`]: the listeners (unix socket; TCP with TLS 1.3) and the
//!   connection loop (connection limit, header read timeout);
//! - [`client`]: a blocking client for the CLI and the tests.
//!
//! See `docs/daemon.md`.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod capture;
pub mod client;
pub mod config;
pub mod daemon;
pub mod kernel;
pub mod metrics;
pub mod migration;
pub mod nf_proc;
pub mod openapi;
pub mod ops;
pub mod scale;
pub mod server;
pub mod store;
pub mod switch;
