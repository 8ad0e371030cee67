//! Scale out and in: add or remove an instance of a per-flow NF behind
//! `steer` NFs, moving only the flows of some hash buckets, with their
//! state (docs/migration.md, "Scale out and in"). One braidd operation.
//!
//! - **out**: the braidd running the instance migrates share `k` of `n`
//!   of the hash space (`share:k/n`, whole buckets of the steering
//!   tables) to the braidd at `to`, which deploys the chain empty if it
//!   does not run it; at the switch each steering NF moves those buckets
//!   from this instance to the new one and closes the old path with a
//!   drain marker. This instance keeps the other flows and drops the moved
//!   ones after the destination's Done.
//! - **in**: this instance gives every bucket it owns (read from the
//!   steering tables; one contiguous range) to the instance at `to`, which
//!   merges them with its own flows; then its chain is removed.
//!
//! `POST /v1/chains/{name}/nfs/{nf}/scale` ([`ScaleRequest`], handler
//! [`scale`]) is checked whole before anything changes: the request, the
//! chain and NF here, and every steering point's table (the buckets must
//! be this instance's). Then it runs as operation `scale-out` or
//! `scale-in`; each step (the migration, each steering call and its
//! undoing, the removal) is recorded in the operation's `progress.steps`.
//! The migration and the removal run in-process: the operation holds
//! braidd's one-at-a-time lock, which a call through braidd's own API
//! would wait for. Steering NFs on other braidd are reached with
//! [`Client`], this braidd's own in-process.
//!
//! The client side ([`follow`], `Client::scale_async`) is what
//! `braid scale` is made of.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::api::{ApiError, AppState, Done, Peer};
use crate::auth::MigrateKey;
use crate::client::{Client, ClientError};
use crate::daemon::{Daemon, OpError};
use crate::migration::{
    good_ifname, good_socket_path, migrate_chain_nf, steer_buckets, DeployPorts, Invalid,
    MigrateRequest, SteerSpec, SwitchSpec, Watch,
};

/// How long any answer of the other side may take when the request does
/// not say (ms).
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// Which way the instance count goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Move a share of the flows to a new instance.
    Out,
    /// Merge every flow of this instance into another, then remove it.
    In,
}

impl Direction {
    /// The operation's kind.
    pub fn kind(self) -> &'static str {
        match self {
            Direction::Out => "scale-out",
            Direction::In => "scale-in",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// Share `k` of `n` equal hash ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    pub k: u64,
    pub n: u64,
}

/// The share a scale-out moves when the request names none: half.
pub const DEFAULT_SHARE: Share = Share { k: 1, n: 2 };

/// One `steer` NF in front of the instances.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SteerPoint {
    /// The API socket of the braidd running it (None: the braidd that
    /// runs the scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    pub chain: String,
    pub nf: String,
    /// The instance chain's port its traffic (and drain marker) enters:
    /// `in` or `out`.
    pub port: String,
}

impl std::str::FromStr for SteerPoint {
    type Err = Invalid;

    /// `CHAIN/NF:PORT[@SOCKET]`, e.g. `su/st:in@/run/braid/steer.sock`.
    fn from_str(s: &str) -> Result<SteerPoint, Invalid> {
        let bad = |why: &str| {
            Invalid::new(
                format!("steering point `{}`", s.escape_debug()),
                format!("{why}; expected CHAIN/NF:PORT[@SOCKET], PORT in or out (e.g. su/st:in@/run/braid/steer.sock)"),
            )
        };
        let (rest, socket) = match s.split_once('@') {
            Some((r, sock)) if !sock.is_empty() => (r, Some(PathBuf::from(sock))),
            Some(_) => return Err(bad("empty socket after `@`")),
            None => (s, None),
        };
        let (cn, port) = rest.rsplit_once(':').ok_or_else(|| bad("no `:PORT`"))?;
        if port != "in" && port != "out" {
            return Err(bad("PORT is not `in` or `out`"));
        }
        let (chain, nf) = cn.split_once('/').ok_or_else(|| bad("no `/` between CHAIN and NF"))?;
        if chain.is_empty() || nf.is_empty() {
            return Err(bad("empty CHAIN or NF"));
        }
        Ok(SteerPoint { socket, chain: chain.into(), nf: nf.into(), port: port.into() })
    }
}

impl SteerPoint {
    /// Check every field; the error names the first bad one.
    fn check(&self) -> Result<(), Invalid> {
        if self.socket.as_deref().is_some_and(|p| !good_socket_path(p)) {
            return Err(Invalid::new(
                "socket",
                "not a unix socket path (1 to 107 bytes, no NUL); leave it out for a steering NF of this braidd",
            ));
        }
        for (field, v) in [("chain", &self.chain), ("nf", &self.nf)] {
            if v.is_empty() || v.len() > 128 {
                return Err(Invalid::new(field, format!("`{}` is not a name", v.escape_debug())));
            }
        }
        if self.port != "in" && self.port != "out" {
            return Err(Invalid::new(
                "port",
                format!("`{}`: expected `in` or `out`", self.port.escape_debug()),
            ));
        }
        Ok(())
    }

    /// `CHAIN/NF`, for messages.
    fn name(&self) -> String {
        format!("{}/{}", self.chain, self.nf)
    }
}

fn default_there() -> u16 {
    1
}

/// `POST /v1/chains/{name}/nfs/{nf}/scale` body (the chain and NF of the
/// instance are the path's).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub direction: Direction,
    /// The other instance's braidd migration listener, HOST[:PORT].
    pub to: String,
    /// Scale out: which share of the hash space moves (default 1/2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<Share>,
    /// The steering NFs (usually two: client side `in`, server side `out`).
    pub steer: Vec<SteerPoint>,
    /// The steering tables' instance index of this instance (default 0)
    /// and of the other one (default 1).
    #[serde(default)]
    pub here: u16,
    #[serde(default = "default_there")]
    pub there: u16,
    /// Scale out: deploy the chain at `to` (empty) on these interfaces if
    /// it does not run there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployPorts>,
    /// How long any answer of the other side may take, ms (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// What a scale request accepts, for error messages.
const ACCEPTED: &str = "a JSON object {\"direction\": \"out\"|\"in\", \"to\": \"HOST[:PORT]\", \"share\": {\"k\": K, \"n\": N} (out; default 1/2), \"steer\": [{\"socket\": PATH (optional), \"chain\": C, \"nf\": N, \"port\": \"in\"|\"out\"}, ...], \"here\": I (default 0), \"there\": J (default 1), \"deploy\": {\"in\": IFACE, \"out\": IFACE} (out, optional), \"timeout_ms\": MS}";

impl ScaleRequest {
    /// Check every field; the error names the first bad one.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.to.trim().is_empty() {
            return Err(Invalid::new(
                "to",
                "empty; expected HOST[:PORT] of the other instance's braidd migration listener",
            ));
        }
        if self.steer.is_empty() {
            return Err(Invalid::new(
                "steer",
                "no steering point: scaling moves hash buckets on `steer` NFs; name each as {\"socket\"?, \"chain\", \"nf\", \"port\"} (braid scale --steer CHAIN/NF:PORT[@SOCKET])",
            ));
        }
        for (i, p) in self.steer.iter().enumerate() {
            p.check().map_err(|e| e.under(&format!("steer[{i}]")))?;
        }
        if self.here == self.there {
            return Err(Invalid::new(
                "there",
                format!(
                    "both instances are {} in the steering tables: name two different ones (`here`, `there`)",
                    self.here
                ),
            ));
        }
        match self.direction {
            Direction::Out => {
                let Share { k, n } = self.share();
                if n < 2 || k >= n {
                    return Err(Invalid::new(
                        format!("share {k}/{n}"),
                        "need N >= 2 and 0 <= K < N (share K of N equal hash ranges moves)",
                    ));
                }
                if let Some(d) = &self.deploy {
                    for (field, v) in [("deploy.in", &d.in_iface), ("deploy.out", &d.out_iface)] {
                        if !good_ifname(v) {
                            return Err(Invalid::new(
                                field,
                                format!("`{}` is not an interface name", v.escape_debug()),
                            ));
                        }
                    }
                }
            }
            Direction::In => {
                if self.share.is_some() {
                    return Err(Invalid::new("share", "only for direction `out`: a scale-in moves every bucket instance `here` owns"));
                }
                if self.deploy.is_some() {
                    return Err(Invalid::new("deploy", "only for direction `out`: a scale-in merges into an instance that runs already"));
                }
            }
        }
        match self.timeout_ms {
            Some(0) => Err(Invalid::new("timeout_ms", "must be above 0")),
            Some(ms) if ms > 600_000 => {
                Err(Invalid::new("timeout_ms", format!("{ms} ms is above 10 minutes")))
            }
            _ => Ok(()),
        }
    }

    /// The share a scale-out moves.
    pub fn share(&self) -> Share {
        self.share.unwrap_or(DEFAULT_SHARE)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
    }

    /// The migration's switch: every steering point moves the buckets from
    /// `here` to `there`.
    fn switch(&self) -> SwitchSpec {
        let steer = self
            .steer
            .iter()
            .map(|p| SteerSpec {
                socket: p.socket.clone(),
                chain: p.chain.clone(),
                nf: p.nf.clone(),
                from: self.here,
                to: self.there,
                port: p.port.clone(),
            })
            .collect();
        SwitchSpec { steer, ..SwitchSpec::default() }
    }
}

/// Why a scale was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// A field of the request is wrong; nothing was done.
    #[error(transparent)]
    Request(#[from] Invalid),
    /// A steering point names a chain or NF its braidd does not run;
    /// nothing was done.
    #[error("{0}")]
    UnknownSteering(String),
    /// A steering point's braidd did not answer; nothing was done.
    #[error("steering point `{point}`: {source}")]
    SteeringUnreachable {
        point: String,
        #[source]
        source: ClientError,
    },
    /// The steering tables do not allow the request (the buckets are not
    /// this instance's, the tables disagree); nothing was done.
    #[error("{0}; nothing changed")]
    Conflict(String),
    /// The migration failed and was rolled back: this instance keeps
    /// serving every flow it had.
    #[error("scale {direction} of NF `{nf}` of chain `{chain}`: the migration of flows {flows} to {to} failed and was rolled back (this instance keeps every flow it had; each steering call and its undoing are in the operation's steps): {source}")]
    Migration {
        direction: &'static str,
        chain: String,
        nf: String,
        flows: String,
        to: String,
        #[source]
        source: Box<OpError>,
    },
    /// The flows moved, the instance could not be removed.
    #[error("scale in of NF `{nf}` of chain `{chain}`: every flow moved to instance {there} at {to} and the steering tables send them there, but removing chain `{chain}` here failed: {source}; remove it with DELETE /v1/chains/{chain}")]
    Remove {
        chain: String,
        nf: String,
        there: u16,
        to: String,
        #[source]
        source: Box<OpError>,
    },
}

impl ScaleError {
    /// The API's status and error kind for it.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ScaleError::Request(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ScaleError::UnknownSteering(_) => (StatusCode::NOT_FOUND, "unknown_steering_point"),
            ScaleError::SteeringUnreachable { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "steering_unreachable")
            }
            ScaleError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ScaleError::Migration { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "migration_failed"),
            ScaleError::Remove { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "remove_failed"),
        }
    }
}

/// The flows a scale moves, as the steering tables give them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buckets {
    /// `share:K/N` (out) or `hash:FIRST-LAST` (in): whole buckets.
    pub flows: String,
    /// Buckets `first..=last` of `of` (on the first steering point).
    pub first: usize,
    pub last: usize,
    pub of: u32,
}

/// Steering point `p`'s `steer` configuration (`at`: its field in the
/// request), read from its braidd: this one in-process when it names no
/// socket.
fn steer_config(
    daemon: &Daemon,
    p: &SteerPoint,
    at: &str,
    timeout: Duration,
) -> Result<braid_nf::steer::Config, ScaleError> {
    let unknown = |what: String| {
        ScaleError::UnknownSteering(format!("steering point `{}` ({at}): {what}", p.name()))
    };
    let no_nf = || unknown(format!("chain `{}` has no NF `{}`", p.chain, p.nf));
    let (kind, params): (String, braid_nf::Params) = match &p.socket {
        None => {
            let entry = daemon.get(&p.chain).map_err(|e| unknown(e.to_string()))?;
            let decl =
                entry.descriptor().nfs.into_iter().find(|n| n.name == p.nf).ok_or_else(no_nf)?;
            (decl.kind, decl.params)
        }
        Some(socket) => {
            let chain =
                Client::new(socket).with_timeout(timeout).chain(&p.chain).map_err(|e| match e {
                    ClientError::Api { status: 404, message, .. } => unknown(message),
                    source => ScaleError::SteeringUnreachable { point: p.name(), source },
                })?;
            let nfs = chain["descriptor"]["nfs"].as_array().cloned().unwrap_or_default();
            let decl = nfs.into_iter().find(|d| d["name"] == p.nf.as_str()).ok_or_else(no_nf)?;
            let params = serde_json::from_value(decl["params"].clone()).map_err(|e| {
                Invalid::new(at, format!("`{}`'s parameters do not read: {e}", p.name()))
            })?;
            (decl["type"].as_str().unwrap_or_default().to_string(), params)
        }
    };
    if kind != "steer" {
        return Err(
            Invalid::new(at, format!("`{}` is a `{kind}`, not a `steer` NF", p.name())).into()
        );
    }
    braid_nf::params::parse(&params)
        .map_err(|e| Invalid::new(at, format!("`{}`'s parameters: {e}", p.name())).into())
}

/// What the scale moves, read from every steering point's table: out,
/// share K/N, all of whose buckets must be on `here`; in, every bucket on
/// `here` (one contiguous range). Every table must agree. Reads only.
pub fn steering_buckets(daemon: &Daemon, req: &ScaleRequest) -> Result<Buckets, ScaleError> {
    let mut agreed: Option<(Buckets, String)> = None;
    for (i, p) in req.steer.iter().enumerate() {
        let at = format!("steer[{i}]");
        let cfg = steer_config(daemon, p, &at, req.timeout())?;
        for (field, instance) in [("here", req.here), ("there", req.there)] {
            if instance >= cfg.instances {
                return Err(Invalid::new(
                    field,
                    format!(
                        "instance {instance} does not exist at `{}` ({} instances)",
                        p.name(),
                        cfg.instances
                    ),
                )
                .into());
            }
        }
        let table = cfg.table.unwrap_or_else(|| vec![0; cfg.buckets as usize]);
        if cfg.buckets == 0 || table.len() != cfg.buckets as usize {
            // A running steer NF never has this (it is checked when it
            // starts); another braidd's answer is not trusted to be one.
            return Err(Invalid::new(
                at,
                format!(
                    "`{}` has a table of {} entries for {} buckets",
                    p.name(),
                    table.len(),
                    cfg.buckets
                ),
            )
            .into());
        }
        let buckets = match req.direction {
            Direction::Out => share_buckets(req, p, &table, cfg.buckets)?,
            Direction::In => owned_buckets(req, p, &table, cfg.buckets)?,
        };
        match &agreed {
            Some((first, name)) if first.flows != buckets.flows => {
                return Err(ScaleError::Conflict(format!(
                    "the steering tables disagree: instance {} has flows {} at `{}`, {} at `{name}`",
                    req.here,
                    buckets.flows,
                    p.name(),
                    first.flows
                )))
            }
            Some(_) => {}
            None => agreed = Some((buckets, p.name())),
        }
    }
    agreed.map(|(b, _)| b).ok_or_else(|| Invalid::new("steer", "no steering point").into())
}

/// Scale out: the buckets of share K/N on steering point `p`, which must
/// all be on `here`.
fn share_buckets(
    req: &ScaleRequest,
    p: &SteerPoint,
    table: &[u16],
    buckets: u32,
) -> Result<Buckets, ScaleError> {
    let Share { k, n } = req.share();
    let flows = format!("share:{k}/{n}");
    let (first, last) = steer_buckets(&flows, buckets).map_err(|e| {
        Invalid::new(format!("share {k}/{n}"), format!("at `{}`: {}", p.name(), e.problem))
    })?;
    if let Some(b) = (first..=last).find(|b| table[*b] != req.here) {
        return Err(ScaleError::Conflict(format!(
            "bucket {b} of share {k}/{n} at `{}` is on instance {}, not {} (`here`): that share is not all this instance's",
            p.name(),
            table[b],
            req.here
        )));
    }
    Ok(Buckets { flows, first, last, of: buckets })
}

/// Scale in: the buckets `here` owns on steering point `p`, one
/// contiguous range.
fn owned_buckets(
    req: &ScaleRequest,
    p: &SteerPoint,
    table: &[u16],
    buckets: u32,
) -> Result<Buckets, ScaleError> {
    let here = req.here;
    let mine: Vec<usize> = (0..table.len()).filter(|b| table[*b] == here).collect();
    let (Some(&first), Some(&last)) = (mine.first(), mine.last()) else {
        return Err(ScaleError::Conflict(format!(
            "instance {here} owns no bucket at `{}`: nothing to merge",
            p.name()
        )));
    };
    if last - first + 1 != mine.len() {
        return Err(ScaleError::Conflict(format!(
            "instance {here}'s buckets at `{}` are not one contiguous range ({} buckets between {first} and {last})",
            p.name(),
            mine.len()
        )));
    }
    let lo = braid_nf::HashRange::share(first as u64, u64::from(buckets)).first;
    let hi = braid_nf::HashRange::share(last as u64, u64::from(buckets)).last;
    Ok(Buckets { flows: format!("hash:{lo:x}-{hi:x}"), first, last, of: buckets })
}

/// Run the checked scale of NF `nf` of chain `chain`: the migration of
/// `buckets` (its steering calls are steps too), then for `in` the
/// removal of the chain. The summary: the migration's, with `direction`,
/// `buckets`, `removed` (in) and `steps`.
fn run(
    daemon: &Daemon,
    key: &MigrateKey,
    (chain, nf): (&str, &str),
    req: &ScaleRequest,
    buckets: &Buckets,
    watch: &Watch,
) -> Result<Value, ScaleError> {
    watch.step(json!({ "step": "check_steering", "outcome": "done", "flows": buckets.flows,
                       "buckets": [buckets.first, buckets.last], "of": buckets.of,
                       "points": req.steer.len() }));
    let migration = MigrateRequest {
        to: req.to.clone(),
        mode: Some("statelet".into()),
        flows: Some(buckets.flows.clone()),
        switch: req.switch(),
        deploy: req.deploy.clone(),
        timeout_ms: Some(req.timeout().as_millis() as u64),
        marker_timeout_ms: None,
        backpressure: None,
    };
    let mut summary = match migrate_chain_nf(daemon, key, chain, nf, &migration, watch) {
        Ok(s) => s,
        Err(e) => {
            watch.step(json!({ "step": "migrate", "outcome": "failed", "to": req.to,
                               "flows": buckets.flows, "error": e.to_string() }));
            return Err(ScaleError::Migration {
                direction: req.direction.name(),
                chain: chain.into(),
                nf: nf.into(),
                flows: buckets.flows.clone(),
                to: req.to.clone(),
                source: Box::new(e),
            });
        }
    };
    watch.step(json!({ "step": "migrate", "outcome": "done", "to": req.to, "flows": buckets.flows,
                       "state_bytes": summary["state_bytes"], "total_ms": summary["total_ms"] }));
    summary["direction"] = req.direction.name().into();
    summary["buckets"] = json!([buckets.first, buckets.last]);
    summary["here"] = req.here.into();
    summary["there"] = req.there.into();
    if req.direction == Direction::In {
        match daemon.remove(chain) {
            Ok(_) => {
                watch.step(json!({ "step": "remove", "outcome": "done", "chain": chain }));
                watch
                    .events
                    .publish("chain_removed", json!({ "chain": chain, "operation": watch.id }));
                summary["removed"] = chain.into();
            }
            Err(e) => {
                watch.step(json!({ "step": "remove", "outcome": "failed", "chain": chain,
                                   "error": e.to_string() }));
                return Err(ScaleError::Remove {
                    chain: chain.into(),
                    nf: nf.into(),
                    there: req.there,
                    to: req.to.clone(),
                    source: Box::new(e),
                });
            }
        }
    }
    let progress = watch.operations.get(&watch.id).and_then(|o| o.progress);
    summary["steps"] = progress.map(|p| p["steps"].clone()).unwrap_or_default();
    Ok(summary)
}

/// The API handler of `POST /v1/chains/{name}/nfs/{nf}/scale`.
pub async fn scale(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path((name, nf)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ScaleRequest = crate::api::json_body(&s, body, "scale request", ACCEPTED)?;
    // Refused at once, before an operation exists: a bad request, an
    // unknown chain or NF, a chain that is not a running user-space one,
    // no migrate key, another migration or scale of the NF, steering
    // tables that do not allow it.
    req.check().map_err(|e| OpError::Scale(e.into()))?;
    let (key, claim) = crate::migration::source_checks(&s, &name, &nf, req.direction.kind())?;
    s.daemon.get(&name)?.user_space("scaling")?;
    let (d, r) = (s.daemon.clone(), req.clone());
    let buckets = tokio::task::spawn_blocking(move || steering_buckets(&d, &r))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("reading the steering tables: {e}"),
            )
        })?
        .map_err(OpError::Scale)?;
    let (operations, events) = (s.operations.clone(), s.events.clone());
    let job = (req.direction.kind(), name.clone(), Some(nf.clone()));
    Ok(crate::api::operation(s, &headers, peer, job, move |d, id| {
        let _claimed_until_done = claim;
        let watch = Watch { operations, events, id: id.to_string(), started: Instant::now() };
        let summary = run(d, &key, (&name, &nf), &req, &buckets, &watch).map_err(OpError::Scale)?;
        Ok(Done {
            status: StatusCode::OK,
            note: format!(
                "scaled {} NF `{nf}` of chain `{name}`: flows {} from instance {} to {} at {}",
                req.direction.name(),
                buckets.flows,
                req.here,
                req.there,
                req.to
            ),
            event: ("chain_scaled", summary.clone()),
            body: summary,
        })
    })
    .await)
}

/// Why following a scale operation ended without its result.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The operation failed: the status a synchronous call would have
    /// had, the error kind and message.
    #[error("operation {operation} failed ({status} {kind}): {message}")]
    Failed { operation: String, status: u64, kind: String, message: String },
    #[error("operation {operation} is still running after {seconds} s")]
    TooLong { operation: String, seconds: u64 },
}

/// Follow operation `id` of the braidd behind `client` until it ends
/// (polling every 20 ms, at most `limit`), calling `progress` with the
/// operation at each poll; its result.
pub fn follow(
    client: &Client,
    id: &str,
    limit: Duration,
    mut progress: impl FnMut(&Value),
) -> Result<Value, FollowError> {
    let t = Instant::now();
    loop {
        let op = client.operation(id)?;
        progress(&op);
        match op["state"].as_str() {
            Some("running") if t.elapsed() > limit => {
                return Err(FollowError::TooLong { operation: id.into(), seconds: limit.as_secs() })
            }
            Some("running") => std::thread::sleep(Duration::from_millis(20)),
            Some("succeeded") => return Ok(op["result"].clone()),
            _ => {
                return Err(FollowError::Failed {
                    operation: id.into(),
                    status: op["status"].as_u64().unwrap_or(0),
                    kind: op["error"]["error"].as_str().unwrap_or("unknown").into(),
                    message: op["error"]["message"].as_str().unwrap_or("no reason given").into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: Value) -> ScaleRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn steering_points_parse_or_say_what_is_expected() {
        let p: SteerPoint = "su/st:in@/run/s.sock".parse().unwrap();
        assert_eq!(
            p,
            SteerPoint {
                socket: Some("/run/s.sock".into()),
                chain: "su".into(),
                nf: "st".into(),
                port: "in".into()
            }
        );
        let p: SteerPoint = "sd/st:out".parse().unwrap();
        assert_eq!((p.socket, p.port.as_str()), (None, "out"));
        for bad in ["su/st", "su/st:up", "sust:in", "/st:in", "su/st:in@"] {
            let e = bad.parse::<SteerPoint>().unwrap_err();
            assert_eq!(e.field, format!("steering point `{bad}`"), "{e}");
            assert!(e.problem.contains("CHAIN/NF:PORT"), "{e}");
        }
    }

    #[test]
    fn a_request_reads_with_its_defaults_and_names_the_first_bad_field() {
        let ok = json!({ "direction": "out", "to": "10.0.0.2",
                         "steer": [{ "chain": "su", "nf": "st", "port": "in" }] });
        let r = request(ok.clone());
        r.check().unwrap();
        assert_eq!((r.share(), r.here, r.there), (DEFAULT_SHARE, 0, 1));
        assert_eq!(r.switch().steer[0].socket, None);
        assert_eq!((r.switch().steer[0].from, r.switch().steer[0].to), (0, 1));
        let with = |k: &str, v: Value| {
            let mut j = ok.clone();
            j[k] = v;
            request(j).check().unwrap_err()
        };
        for (field, value, want_field, want) in [
            ("to", json!(" "), "to", "empty"),
            ("steer", json!([]), "steer", "no steering point"),
            (
                "steer",
                json!([{ "chain": "su", "nf": "st", "port": "up" }]),
                "steer[0].port",
                "expected `in` or `out`",
            ),
            (
                "steer",
                json!([{ "chain": "", "nf": "st", "port": "in" }]),
                "steer[0].chain",
                "not a name",
            ),
            (
                "steer",
                json!([{ "socket": "", "chain": "su", "nf": "st", "port": "in" }]),
                "steer[0].socket",
                "not a unix socket path",
            ),
            ("there", json!(0), "there", "both instances are 0"),
            ("share", json!({ "k": 2, "n": 2 }), "share 2/2", "need N >= 2"),
            ("share", json!({ "k": 0, "n": 1 }), "share 0/1", "need N >= 2"),
            ("deploy", json!({ "in": "a/b", "out": "x" }), "deploy.in", "not an interface name"),
            ("timeout_ms", json!(0), "timeout_ms", "above 0"),
            ("timeout_ms", json!(600_001), "timeout_ms", "10 minutes"),
        ] {
            let e = with(field, value);
            assert_eq!(e.field, want_field, "{e}");
            assert!(e.problem.contains(want), "{e}");
        }
        let mut scale_in = ok.clone();
        scale_in["direction"] = "in".into();
        request(scale_in.clone()).check().unwrap();
        for (field, value) in
            [("share", json!({ "k": 1, "n": 2 })), ("deploy", json!({ "in": "a", "out": "b" }))]
        {
            let mut j = scale_in.clone();
            j[field] = value;
            let e = request(j).check().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.problem.contains("only for direction `out`"), "{e}");
        }
        // Unknown fields and directions are refused by the reader.
        let mut j = ok.clone();
        j["shares"] = json!(1);
        assert!(serde_json::from_value::<ScaleRequest>(j)
            .unwrap_err()
            .to_string()
            .contains("unknown field `shares`"));
        let mut j = ok;
        j["direction"] = "sideways".into();
        assert!(serde_json::from_value::<ScaleRequest>(j)
            .unwrap_err()
            .to_string()
            .contains("unknown variant `sideways`"));
    }

    fn point() -> SteerPoint {
        SteerPoint { socket: None, chain: "su".into(), nf: "st".into(), port: "in".into() }
    }

    #[test]
    fn the_tables_decide_which_buckets_move_or_why_not() {
        let out = request(json!({ "direction": "out", "to": "b", "share": { "k": 1, "n": 4 },
                                  "steer": [{ "chain": "su", "nf": "st", "port": "in" }] }));
        let all_a = vec![0u16; 16];
        let b = share_buckets(&out, &point(), &all_a, 16).unwrap();
        assert_eq!((b.flows.as_str(), b.first, b.last, b.of), ("share:1/4", 4, 7, 16));
        let mut moved = all_a.clone();
        moved[6] = 1;
        let e = share_buckets(&out, &point(), &moved, 16).unwrap_err().to_string();
        assert!(e.contains("bucket 6 of share 1/4 at `su/st` is on instance 1, not 0"), "{e}");
        let e = share_buckets(&out, &point(), &[0; 2], 2).unwrap_err().to_string();
        assert!(e.starts_with("share 1/4: at `su/st`: not whole buckets of 2"), "{e}");

        let back = request(json!({ "direction": "in", "to": "a", "here": 1, "there": 0,
                                   "steer": [{ "chain": "su", "nf": "st", "port": "in" }] }));
        let b = owned_buckets(&back, &point(), &moved, 16).unwrap();
        assert_eq!((b.first, b.last), (6, 6));
        assert_eq!(b.flows, format!("hash:{:x}-{:x}", 6u64 << 60, (7u64 << 60) - 1));
        let e = owned_buckets(&back, &point(), &all_a, 16).unwrap_err().to_string();
        assert!(e.contains("instance 1 owns no bucket at `su/st`"), "{e}");
        let mut split = moved.clone();
        split[9] = 1;
        let e = owned_buckets(&back, &point(), &split, 16).unwrap_err().to_string();
        assert!(e.contains("not one contiguous range (2 buckets between 6 and 9)"), "{e}");
    }
}
