//! braidd's migration agent: live migration of an NF of a running chain
//! to the braidd of another host (`braid migrate`, docs/migration.md).
//!
//! - **Source**: `POST /v1/chains/{name}/nfs/{nf}/migrate` (a
//!   [`MigrateRequest`]) is an operation (`migrate`) that connects to the
//!   destination braidd's migration listener, offers the NF ([`Offer`]),
//!   then runs [`braid_migrate::migrate_out`] on the NF's worker. The
//!   traffic is moved by a [`RouteSwitch`]: `ip route replace` in the
//!   namespaces (hosts) upstream and downstream of the chain, then a drain
//!   marker sent with AF_PACKET on each old path, into the source's `in`
//!   and `out` ports. While it runs the operation shows its `progress`
//!   (phase, bytes sent, backlog) and `migration_progress` events follow
//!   each phase; its result is the summary.
//! - **Destination**: with `migrate_listen` set, braidd accepts offers on
//!   that TCP address: the chain must run here, or the offer carries its
//!   descriptor (with this host's interfaces) and braidd deploys it empty
//!   first; then [`braid_migrate::migrate_in`] takes the state into the
//!   NF. Each accepted offer is a `migrate-in` operation here, with
//!   `migration_in` events.
//!
//! Offers are authenticated both ways with the key the braidd share
//! (`migrate_key_file`, [`MigrateKey`]): the destination sends a random
//! challenge, the offer carries an HMAC-SHA256 tag over it and the
//! source's own challenge, the answer a tag over that. An offer that does
//! not authenticate changes nothing here. The state stream that follows
//! on the same connection is sealed (AES-256-GCM per frame) with a key
//! both sides derive from the two challenges: new per migration, never
//! sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use braid_dataplane::migration::marker_frame;
use braid_migrate::wire::StreamKey;
use braid_migrate::{
    migrate_in, migrate_out, DestinationOptions, MigrateError, Mode, Progress, SourceOptions,
    Switch, SwitchError,
};
use braid_nf::state::{FlowScope, HashRange};
use braid_runtime::descriptor::PortDecl;
use serde_json::{json, Value};

use crate::api::{ApiError, AppState, Done, Peer};
use crate::auth::{MigrateKey, MIGRATE_TAG_LEN};
use crate::daemon::{Daemon, OpError};
use crate::ops::{Events, Operations};
use crate::switch::PreparedSwitch;

/// The migration listener's port when `--to` names none.
pub const DEFAULT_MIGRATE_PORT: u16 = 9480;

/// First bytes of an offer and of its answer, before the migration
/// protocol's own preamble.
const OFFER_MAGIC: &[u8; 4] = b"BRMA";
/// First bytes of the destination's challenge, the first thing sent.
const CHALLENGE_MAGIC: &[u8; 4] = b"BRMC";
/// First bytes of a refusal sent before the offer authenticated (it
/// cannot carry a tag the source would trust).
const UNAUTHENTICATED_MAGIC: &[u8; 4] = b"BRMX";
/// What an offer's and an answer's tag cover besides the body, so that
/// one cannot pass for the other.
const OFFER_LABEL: &[u8] = b"braid migrate offer 1";
const ANSWER_LABEL: &[u8] = b"braid migrate answer 1";
/// What the state stream's key is derived under (with both challenges).
const STREAM_LABEL: &[u8] = b"braid migrate stream 1";
/// A random challenge: an offer or answer tagged over it cannot be
/// replayed on another connection.
pub type Challenge = [u8; 32];
/// How much longer than its timeout the source waits for the answer to
/// an offer that asks the destination to deploy the chain first.
const DEPLOY_ALLOWANCE: Duration = Duration::from_secs(30);
/// Largest offer or answer (a descriptor).
const MAX_OFFER: usize = 1 << 20;

/// A request field or a command-line spec that is wrong: which one, and
/// why (what the API answers 400 with, and the CLI prints).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    /// The field's path (`switch.markers[0].dev`) or the spec as given
    /// (``flows `share:4/4` ``).
    pub field: String,
    pub problem: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
        Invalid { field: field.into(), problem: problem.into() }
    }

    /// The same problem one level deeper (`port` inside `switch.steer[0]`).
    pub(crate) fn under(self, parent: &str) -> Invalid {
        Invalid { field: format!("{parent}.{}", self.field), problem: self.problem }
    }
}

/// Why a migration could not be run. Whatever the cause, the source chain
/// keeps serving with its state.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("migration request: {0}")]
    Request(String),
    #[error("destination `{to}`: {source}")]
    Connect {
        to: String,
        #[source]
        source: std::io::Error,
    },
    #[error("destination `{to}` refused the offer: {reason}")]
    Refused { to: String, reason: String },
    #[error("offer exchange with `{to}`: {what}")]
    Offer { to: String, what: String },
    /// The switch file names a namespace, interface or route that is not
    /// there (found before anything moved).
    #[error("the traffic switch: {0} (nothing moved: the source keeps the NF and its traffic)")]
    Switch(SwitchError),
    /// The migration failed and was rolled back.
    #[error("{0}{note}", note = before_switch_note(.0))]
    Migrate(#[from] MigrateError),
}

/// What a failure that did not say it rolled back means for the traffic.
fn before_switch_note(e: &MigrateError) -> &'static str {
    match e {
        MigrateError::RolledBack { .. } => "",
        _ => " (rolled back before the switch: the source keeps the NF, its state and its traffic)",
    }
}

/// `POST /v1/chains/{name}/nfs/{nf}/migrate` body.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The destination braidd's migration listener: `HOST:PORT`, or
    /// `HOST` (port [`DEFAULT_MIGRATE_PORT`]).
    pub to: String,
    /// `statelet` (default), `duplicate` or `stop-copy`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Which flows move: `all` (default), `share:I/N` (share I of N equal
    /// hash ranges) or `hash:FIRST-LAST` (hexadecimal hash bounds).
    #[serde(default)]
    pub flows: Option<String>,
    /// How the traffic moves at switchover.
    pub switch: SwitchSpec,
    /// Deploy the chain on the destination (empty) if it does not run it
    /// there, with these interfaces for its `in` and `out` ports.
    #[serde(default)]
    pub deploy: Option<DeployPorts>,
    /// How long any answer of the other side may take, ms (default 5000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// How long after the switch every drain marker must have come, ms
    /// (default 2000).
    #[serde(default)]
    pub marker_timeout_ms: Option<u64>,
    /// Back-pressure on the state stream (default true): state is queued
    /// only while few bytes are in flight on the state link, and the
    /// switch waits for them (docs/migration.md, "Back-pressure"). false:
    /// every worker turn sends and the kernel sizes the send buffer, as
    /// before (for comparisons).
    #[serde(default)]
    pub backpressure: Option<bool>,
}

/// The destination's interfaces for a chain it deploys for a migration.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeployPorts {
    #[serde(rename = "in")]
    pub in_iface: String,
    #[serde(rename = "out")]
    pub out_iface: String,
}

/// The traffic switch on the testbed: routes changed in the hosts
/// around the chain, and where the drain markers enter the old path.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSpec {
    /// Routes that send the traffic to the destination (what `ip route
    /// replace` does), applied in order at the switch.
    pub redirect: Vec<RouteSpec>,
    /// Routes that send it back to the source (rollback after a switch).
    pub restore: Vec<RouteSpec>,
    /// After `redirect`: one drain marker sent on each of these
    /// interfaces, each the old path into one port of the source chain.
    pub markers: Vec<MarkerSpec>,
    /// Steering NFs (`steer`) in front of the instances: at the switch
    /// each moves the migrated flows' buckets from the source's instance
    /// to the destination's and injects the drain marker out of the
    /// source's gate; `restore` moves them back. What a partial
    /// migration (split, merge, `braid scale`) needs.
    #[serde(default)]
    pub steer: Vec<SteerSpec>,
}

/// One steering NF the switch drives, through the API of the braidd that
/// runs it (`POST /v1/chains/{chain}/nfs/{nf}/steer`), or in-process when
/// it runs on this braidd.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SteerSpec {
    /// That braidd's API socket; None: this braidd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<std::path::PathBuf>,
    pub chain: String,
    pub nf: String,
    /// The source's instance (gate `1 + from`) and the destination's.
    pub from: u16,
    pub to: u16,
    /// The source chain's port its drain marker reaches: `in` or `out`.
    pub port: String,
}

/// One route, as `ip [-n NETNS] route replace TO [via VIA] [dev DEV]`
/// makes it (braidd sends the netlink message itself: `crate::switch`).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(default)]
    pub netns: Option<String>,
    pub to: String,
    #[serde(default)]
    pub via: Option<String>,
    #[serde(default)]
    pub dev: Option<String>,
}

/// Where a drain marker is sent: interface `dev` (in namespace `netns`),
/// whose frames reach the source chain's `port` (`in` or `out`).
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MarkerSpec {
    #[serde(default)]
    pub netns: Option<String>,
    pub dev: String,
    pub port: String,
}

fn good_netns(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A unix socket path a client can connect to: not empty, no NUL, within
/// `sun_path`'s 107 bytes.
pub(crate) fn good_socket_path(p: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let b = p.as_os_str().as_bytes();
    (1..=107).contains(&b.len()) && !b.contains(&0)
}

pub(crate) fn good_ifname(n: &str) -> bool {
    (1..=15).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

fn good_prefix(to: &str) -> bool {
    to == "default" || braid_io::route::parse_prefix(to).is_some()
}

impl SwitchSpec {
    /// Check every field; the error names the first bad one.
    pub fn check(&self) -> Result<(), Invalid> {
        for (i, st) in self.steer.iter().enumerate() {
            let at = format!("switch.steer[{i}]");
            if st.socket.as_ref().is_some_and(|p| !good_socket_path(p)) {
                return Err(Invalid::new(
                    format!("{at}.socket"),
                    "not a socket path (leave it out for a steering NF of this braidd)",
                ));
            }
            for (k, v) in [("chain", &st.chain), ("nf", &st.nf)] {
                if v.is_empty() || v.len() > 128 {
                    return Err(Invalid::new(
                        format!("{at}.{k}"),
                        format!("`{}` is not a name", v.escape_debug()),
                    ));
                }
            }
            if st.from == st.to {
                return Err(Invalid::new(at, format!("from and to are both instance {}", st.from)));
            }
            port_index(&st.port).map_err(|e| e.under(&at))?;
        }
        if !self.steer.is_empty() && self.redirect.is_empty() && self.markers.is_empty() {
            // The steering moves the traffic and sends the markers.
            return self.check_routes();
        }
        if self.redirect.is_empty() {
            return Err(Invalid::new(
                "switch.redirect",
                "empty; at least one route must move the traffic",
            ));
        }
        if self.markers.is_empty() {
            return Err(Invalid::new("switch.markers", "empty; every old path into the source needs a drain marker (port `in`, and `out` when replies cross the chain)"));
        }
        self.check_routes()?;
        for (i, m) in self.markers.iter().enumerate() {
            let at = format!("switch.markers[{i}]");
            if let Some(n) = m.netns.as_deref().filter(|n| !good_netns(n)) {
                return Err(Invalid::new(
                    format!("{at}.netns"),
                    format!("`{}` is not a namespace name", n.escape_debug()),
                ));
            }
            if !good_ifname(&m.dev) {
                return Err(Invalid::new(
                    format!("{at}.dev"),
                    format!("`{}` is not an interface name", m.dev.escape_debug()),
                ));
            }
            port_index(&m.port).map_err(|e| e.under(&at))?;
        }
        Ok(())
    }

    fn check_routes(&self) -> Result<(), Invalid> {
        for (list, routes) in [("redirect", &self.redirect), ("restore", &self.restore)] {
            for (i, r) in routes.iter().enumerate() {
                let at = format!("switch.{list}[{i}]");
                if let Some(n) = r.netns.as_deref().filter(|n| !good_netns(n)) {
                    return Err(Invalid::new(
                        format!("{at}.netns"),
                        format!("`{}` is not a namespace name", n.escape_debug()),
                    ));
                }
                if !good_prefix(&r.to) {
                    return Err(Invalid::new(
                        format!("{at}.to"),
                        format!(
                            "`{}` is not `default`, an address or a prefix (10.0.2.0/24)",
                            r.to.escape_debug()
                        ),
                    ));
                }
                if let Some(v) = r.via.as_deref().filter(|v| v.parse::<std::net::IpAddr>().is_err())
                {
                    return Err(Invalid::new(
                        format!("{at}.via"),
                        format!("`{}` is not an IP address", v.escape_debug()),
                    ));
                }
                if let Some(d) = r.dev.as_deref().filter(|d| !good_ifname(d)) {
                    return Err(Invalid::new(
                        format!("{at}.dev"),
                        format!("`{}` is not an interface name", d.escape_debug()),
                    ));
                }
                if r.via.is_none() && r.dev.is_none() {
                    return Err(Invalid::new(at, "needs `via`, `dev` or both"));
                }
            }
        }
        Ok(())
    }

    /// The source chain's worker ports that bring a drain marker.
    fn marker_ports(&self) -> Vec<usize> {
        let mut ports: Vec<usize> = self
            .markers
            .iter()
            .map(|m| &m.port)
            .chain(self.steer.iter().map(|s| &s.port))
            .filter_map(|p| port_index(p).ok())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// A live chain's worker port for a port name (`in` is added first).
fn port_index(name: &str) -> Result<usize, Invalid> {
    match name {
        "in" => Ok(0),
        "out" => Ok(1),
        other => {
            Err(Invalid::new("port", format!("`{}`: expected `in` or `out`", other.escape_debug())))
        }
    }
}

/// A `--flows` spec: `all`, `share:I/N`, `hash:FIRST-LAST` (hex).
pub fn parse_flows(spec: &str) -> Result<FlowScope, Invalid> {
    let bad = |why: &str| {
        Invalid::new(format!("flows `{}`", spec.escape_debug()), format!("{why}; accepted: all, share:I/N (e.g. share:0/2), hash:FIRST-LAST (hexadecimal, e.g. hash:0-7fffffffffffffff)"))
    };
    if spec == "all" {
        return Ok(FlowScope::All);
    }
    if let Some(s) = spec.strip_prefix("share:") {
        let (i, n) = s.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let i: u64 = i.parse().map_err(|_| bad("I is not a number"))?;
        let n: u64 = n.parse().map_err(|_| bad("N is not a number"))?;
        if n == 0 || i >= n {
            return Err(bad("needs 0 <= I < N"));
        }
        return Ok(FlowScope::HashRange(HashRange::share(i, n)));
    }
    if let Some(s) = spec.strip_prefix("hash:") {
        let (a, b) = s.split_once('-').ok_or_else(|| bad("no `-`"))?;
        let hex = |x: &str| u64::from_str_radix(x.trim_start_matches("0x"), 16);
        let first = hex(a).map_err(|_| bad("FIRST is not hexadecimal"))?;
        let last = hex(b).map_err(|_| bad("LAST is not hexadecimal"))?;
        if first > last {
            return Err(bad("FIRST is above LAST"));
        }
        return Ok(FlowScope::HashRange(HashRange { first, last }));
    }
    Err(bad("unknown form"))
}

/// The testbed's switch: routes in the namespaces around the chain, drain
/// markers on the old paths, and steering NFs that move hash buckets.
pub struct RouteSwitch<'a> {
    spec: &'a SwitchSpec,
    /// The routes' and markers' kernel handles, opened before the
    /// migration started.
    handles: PreparedSwitch,
    /// This braidd, for its own steering NFs.
    daemon: &'a Daemon,
    /// The operation: each steering call is one of its steps.
    watch: &'a Watch,
    /// The migrated flows (`all`, `share:I/N`, `hash:A-B`), for the
    /// steering NFs.
    flows: String,
    /// How many steering NFs moved their buckets (restore moves them back).
    steered: usize,
}

impl RouteSwitch<'_> {
    /// Move the buckets of `self.flows` on steering NF `st` from instance
    /// `from` to `to`, with a drain marker for migration `marker` out of
    /// `from`'s gate; recorded as step `step` of the operation.
    fn steer(
        &self,
        step: &str,
        st: &SteerSpec,
        (from, to): (u16, u16),
        marker: Option<u64>,
    ) -> Result<(), SwitchError> {
        let req = SteerRequest { flows: self.flows.clone(), from, to, marker };
        let at = st.socket.as_ref().map_or("this braidd".into(), |p| p.display().to_string());
        let moved = match &st.socket {
            Some(socket) => crate::client::Client::new(socket)
                .steer(&st.chain, &st.nf, &req)
                .map_err(|e| e.to_string()),
            // In-process: the operation holds braidd's one-at-a-time lock,
            // which the steer handler does not take, so its own socket
            // would do too; but braidd's state does not carry that path.
            None => steer_chain_nf(self.daemon, &st.chain, &st.nf, &req)
                .inspect(|v| {
                    self.watch.events.publish("chain_steered", v.clone());
                })
                .map_err(|e| e.to_string()),
        };
        let mut record = json!({ "step": step, "chain": st.chain, "nf": st.nf, "at": at,
                                 "from": from, "to": to });
        match &moved {
            Ok(v) => {
                record["outcome"] = "done".into();
                record["buckets"] = v["buckets"].clone();
            }
            Err(e) => {
                record["outcome"] = "failed".into();
                record["error"] = e.as_str().into();
            }
        }
        self.watch.step(record);
        moved.map(|_| ()).map_err(|e| {
            SwitchError::failed(
                format!("steering NF `{}` of chain `{}` at {at}", st.nf, st.chain),
                e,
            )
        })
    }

    fn unsteer(&mut self) -> Result<(), SwitchError> {
        let mut first = Ok(());
        while self.steered > 0 {
            self.steered -= 1;
            let st = &self.spec.steer[self.steered];
            let r = self.steer("steer_back", st, (st.to, st.from), None);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Switch for RouteSwitch<'_> {
    fn redirect(&mut self, id: u64) -> Result<(), SwitchError> {
        let mut moved = self.handles.redirect(id);
        if moved.is_ok() {
            for st in &self.spec.steer {
                moved = self.steer("steer", st, (st.from, st.to), Some(id));
                if moved.is_err() {
                    break;
                }
                self.steered += 1;
            }
        }
        if moved.is_err() {
            // Not switched as far as the protocol knows: put back what
            // may have moved.
            let _ = self.handles.restore();
            let _ = self.unsteer();
        }
        moved
    }

    fn restore(&mut self) -> Result<(), SwitchError> {
        let routes = self.handles.restore();
        let steer = self.unsteer();
        routes.and(steer)
    }
}

/// `POST /v1/chains/{name}/nfs/{nf}/steer` body: move the buckets of
/// `flows` on a `steer` NF from instance `from` to `to`, then (with
/// `marker`) inject a drain marker for that migration id out of `from`'s
/// gate, behind everything the old table sent there.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SteerRequest {
    /// `all`, `share:I/N` or `hash:FIRST-LAST`: whole buckets.
    pub flows: String,
    pub from: u16,
    pub to: u16,
    #[serde(default)]
    pub marker: Option<u64>,
}

/// The buckets `first..=last` of a `steer` NF with `buckets` buckets that
/// hold exactly the flows of `flows`; an error unless they are whole
/// buckets.
pub fn steer_buckets(flows: &str, buckets: u32) -> Result<(usize, usize), Invalid> {
    use braid_nf::steer::bucket_of;
    let range = match parse_flows(flows)? {
        FlowScope::HashRange(r) => r,
        _ => HashRange::ALL,
    };
    let (lo, hi) = (bucket_of(range.first, buckets), bucket_of(range.last, buckets));
    let whole = HashRange::share(lo as u64, u64::from(buckets)).first == range.first
        && HashRange::share(hi as u64, u64::from(buckets)).last == range.last;
    if !whole {
        return Err(Invalid::new(
            format!("flows `{}`", flows.escape_debug()),
            format!("not whole buckets of {buckets} (use share:I/N with N dividing {buckets})"),
        ));
    }
    Ok((lo, hi))
}

/// Steering calls one at a time (each reads, changes and writes a table).
static STEERING: Mutex<()> = Mutex::new(());

/// Move buckets on steering NF `nf` of chain `chain` as `req` says; what
/// moved.
pub fn steer_chain_nf(
    daemon: &Daemon,
    chain: &str,
    nf: &str,
    req: &SteerRequest,
) -> Result<Value, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let _one = STEERING.lock().unwrap_or_else(|e| e.into_inner());
    let entry = daemon.get(chain)?;
    let d = entry.descriptor();
    let Some(decl) = d.nfs.iter().find(|n| n.name == nf) else {
        let known = d.nfs.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(OpError::UnknownNf { chain: chain.into(), nf: nf.into(), known }.into());
    };
    if decl.kind != "steer" {
        return Err(bad(format!(
            "NF `{nf}` of chain `{chain}` is a `{}`, not a `steer`",
            decl.kind
        )));
    }
    let mut cfg: braid_nf::steer::Config = braid_nf::params::parse(&decl.params)
        .map_err(|e| bad(format!("NF `{nf}`'s parameters: {e}")))?;
    for (k, i) in [("from", req.from), ("to", req.to)] {
        if i >= cfg.instances {
            return Err(bad(format!(
                "{k}: instance {i} does not exist (`{nf}` has {})",
                cfg.instances
            )));
        }
    }
    let (lo, hi) = steer_buckets(&req.flows, cfg.buckets).map_err(|e| bad(e.to_string()))?;
    let mut table = cfg.table.take().unwrap_or_else(|| vec![0; cfg.buckets as usize]);
    if let Some(b) = (lo..=hi).find(|b| table[*b] != req.from) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "bucket {b} of `{nf}` is on instance {}, not {}: nothing moved",
                table[b], req.from
            ),
        ));
    }
    table[lo..=hi].iter_mut().for_each(|t| *t = req.to);
    cfg.table = Some(table);
    let params: braid_nf::Params = serde_yaml_ng::to_value(&cfg).map_err(|e| bad(e.to_string()))?;
    daemon.reconfigure(chain, nf, params)?;
    if let Some(id) = req.marker {
        let live = entry.live().ok_or_else(|| OpError::NotRunning(chain.into()))?;
        let mut frame = marker_frame(id);
        let at = braid_nf::steer::MARKER_INSTANCE_AT;
        frame[at..at + 2].copy_from_slice(&req.from.to_be_bytes());
        // Port 0 of the steering NF's worker brings the trunk (`in`, or
        // with `mapping: threads` the channel from the NF before it): the
        // marker leaves by `from`'s gate, after every frame the old table
        // sent there.
        let worker = live.worker_of(nf).ok_or_else(|| OpError::NotRunning(chain.into()))?;
        worker.inject(vec![(0, frame)]).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "steer_failed",
                format!("injecting the drain marker: {e} (the buckets moved)"),
            )
        })?;
    }
    Ok(json!({ "chain": chain, "nf": nf, "buckets": [lo, hi], "from": req.from, "to": req.to,
               "moved": hi - lo + 1, "marker": req.marker.is_some() }))
}

/// The API handler of `POST /v1/chains/{name}/nfs/{nf}/steer`. Not an
/// operation and outside the one-at-a-time lock: a migration on this same
/// braidd (which holds that lock) calls it at its switch.
pub async fn steer(
    State(s): State<AppState>,
    Path((name, nf)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let body = body.map_err(|e| crate::api::body_error(e, s.body_limit))?;
    let req: SteerRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("steering request: {e}; accepted: {{\"flows\": \"share:I/N\", \"from\": I, \"to\": J, \"marker\": ID}}"),
        )
    })?;
    let d = s.daemon.clone();
    let v =
        tokio::task::spawn_blocking(move || steer_chain_nf(&d, &name, &nf, &req)).await.map_err(
            |e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        )??;
    s.events.publish("chain_steered", v.clone());
    Ok(axum::Json(v))
}

/// What the source offers before the migration protocol starts.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Offer {
    pub chain: String,
    pub nf: String,
    pub kind: String,
    /// The descriptor to deploy (empty) if the destination does not run
    /// the chain, its ports on the destination's interfaces.
    pub descriptor: Option<String>,
    pub timeout_ms: u64,
    /// The source braidd's instance id ([`instance_id`]): a braidd refuses
    /// an offer from itself (its chain would stream into itself).
    pub source: u64,
    /// The source's challenge, which the answer's tag covers.
    pub challenge: Challenge,
}

/// This braidd process's random instance id.
pub fn instance_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // Only told apart from other braidd (an offer to itself): the time
    // and the pid do if the random source fails.
    *ID.get_or_init(|| {
        new_id().unwrap_or_else(|_| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (u64::from(std::process::id()) << 40)
        })
    })
}

/// The destination's answer to an offer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct OfferAnswer {
    pub accept: bool,
    pub reason: Option<String>,
    /// The destination deployed the chain for this migration.
    pub deployed: bool,
}

/// A fresh random challenge.
fn new_challenge() -> std::io::Result<Challenge> {
    use aws_lc_rs::rand::SecureRandom;
    let mut c = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut c)
        .map_err(|_| std::io::Error::other("the system's random source failed"))?;
    Ok(c)
}

/// Write `parts` after `magic` in one write (one segment on the wire for
/// a small message), then flush.
fn write_message(w: &mut impl Write, magic: &[u8; 4], parts: &[&[u8]]) -> std::io::Result<()> {
    let mut m = magic.to_vec();
    for p in parts {
        m.extend_from_slice(p);
    }
    w.write_all(&m)?;
    w.flush()
}

fn write_challenge(w: &mut impl Write, c: &Challenge) -> std::io::Result<()> {
    write_message(w, CHALLENGE_MAGIC, &[c])
}

fn read_challenge(r: &mut impl Read) -> Result<Challenge, String> {
    let mut b = [0u8; 36];
    r.read_exact(&mut b).map_err(|e| {
        format!("waiting for the destination's challenge: {e} (is it a braidd of this version with migrate_listen?)")
    })?;
    if &b[..4] != CHALLENGE_MAGIC {
        return Err(format!("not a braid migration agent (magic {:02x?})", &b[..4]));
    }
    let mut c = [0u8; 32];
    c.copy_from_slice(&b[4..]);
    Ok(c)
}

/// Send `v` as JSON with its tag under `key` over `label` and the peer's
/// `challenge`.
fn write_signed(
    w: &mut impl Write,
    key: &MigrateKey,
    label: &[u8],
    challenge: &Challenge,
    v: &impl serde::Serialize,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    let len = (body.len() as u32).to_be_bytes();
    write_message(w, OFFER_MAGIC, &[&len, &body, &key.tag(label, challenge, &body)])
}

/// Refuse an offer that did not authenticate (or could not be read).
fn write_unauthenticated_refusal(w: &mut impl Write, reason: &str) -> std::io::Result<()> {
    let len = (reason.len() as u32).to_be_bytes();
    write_message(w, UNAUTHENTICATED_MAGIC, &[&len, reason.as_bytes()])
}

/// Read what [`write_signed`] sent with our `challenge`; its tag is
/// checked before its body is decoded.
fn read_signed<T: serde::de::DeserializeOwned>(
    r: &mut impl Read,
    key: &MigrateKey,
    label: &[u8],
    challenge: &Challenge,
) -> Result<T, String> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).map_err(|e| format!("reading the header: {e}"))?;
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let unauthenticated = &head[..4] == UNAUTHENTICATED_MAGIC;
    if !unauthenticated && &head[..4] != OFFER_MAGIC {
        return Err(format!("not a braid migration agent (magic {:02x?})", &head[..4]));
    }
    if len > MAX_OFFER {
        return Err(format!("a message of {len} bytes exceeds {MAX_OFFER}"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| format!("reading the body: {e}"))?;
    if unauthenticated {
        // Not authenticated: shown, escaped, as the peer's words only.
        let reason: String = String::from_utf8_lossy(&body).chars().take(512).collect();
        return Err(format!("refused before authentication: {reason:?}"));
    }
    let mut tag = [0u8; MIGRATE_TAG_LEN];
    r.read_exact(&mut tag).map_err(|e| format!("reading the tag: {e}"))?;
    if !key.verifies(label, challenge, &body, &tag) {
        return Err("the message does not authenticate with this braidd's migrate key (the two \
                    braidd have different migrate_key_file contents, or something else answered)"
            .into());
    }
    serde_json::from_slice(&body).map_err(|e| format!("the body does not decode: {e}"))
}

/// The key that seals the state stream of the migration whose offer
/// answered `destination`'s challenge and carried `source`'s: both sides
/// derive it, nothing of it crosses the link, and it is new per
/// connection.
fn stream_key(key: &MigrateKey, destination: &Challenge, source: &Challenge) -> Arc<StreamKey> {
    Arc::new(StreamKey::new(&key.tag(STREAM_LABEL, destination, source)))
}

/// A migration id for the drain markers: random, so that a frame sent
/// into the chain's ports from outside cannot pass for this migration's
/// marker (a forged marker would end the old path's drain early). It
/// was the time in nanoseconds, which one who knows roughly when a
/// migration runs can guess.
fn new_id() -> std::io::Result<u64> {
    let c = new_challenge()?;
    Ok(u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
}

fn resolve(to: &str) -> Result<SocketAddr, AgentError> {
    let with_port = if to.parse::<SocketAddr>().is_ok()
        || to.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        to.to_string()
    } else {
        format!("{to}:{DEFAULT_MIGRATE_PORT}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|source| AgentError::Connect { to: to.into(), source })?
        .next()
        .ok_or_else(|| AgentError::Request(format!("to: `{to}` resolves to no address")))
}

/// The checked parts of a request.
struct Plan {
    mode: Mode,
    scope: FlowScope,
    timeout: Duration,
    marker_timeout: Duration,
    backpressure: bool,
}

fn plan(req: &MigrateRequest) -> Result<Plan, String> {
    let mode = match &req.mode {
        Some(m) => m.parse::<Mode>()?,
        None => Mode::Statelet,
    };
    let scope = match &req.flows {
        Some(f) => parse_flows(f).map_err(|e| e.to_string())?,
        None => FlowScope::All,
    };
    if scope != FlowScope::All && req.switch.steer.is_empty() {
        // The route switch moves every flow of the path: moving only the
        // state of some would leave the others without theirs.
        return Err(format!(
            "flows `{}`: a partial migration (split) needs a switch that steers flows by hash bucket (`switch.steer`); the route switch moves every flow, so only `all` is accepted without one (docs/migration.md)",
            req.flows.as_deref().unwrap_or_default()
        ));
    }
    req.switch.check().map_err(|e| e.to_string())?;
    if let Some(d) = &req.deploy {
        for (k, v) in [("deploy.in", &d.in_iface), ("deploy.out", &d.out_iface)] {
            if !good_ifname(v) {
                return Err(format!("{k}: `{}` is not an interface name", v.escape_debug()));
            }
        }
    }
    let ms = |v: Option<u64>, d: u64, what: &str| match v.unwrap_or(d) {
        0 => Err(format!("{what}: must be above 0")),
        v if v > 600_000 => Err(format!("{what}: {v} ms is above 10 minutes")),
        v => Ok(Duration::from_millis(v)),
    };
    Ok(Plan {
        mode,
        scope,
        timeout: ms(req.timeout_ms, 5000, "timeout_ms")?,
        marker_timeout: ms(req.marker_timeout_ms, 2000, "marker_timeout_ms")?,
        backpressure: req.backpressure.unwrap_or(true),
    })
}

/// Where a source migration reports while it runs.
pub struct Watch {
    pub operations: Arc<Operations>,
    pub events: Arc<Events>,
    pub id: String,
    /// When the operation started running (its steps' `at_ms`).
    pub started: Instant,
}

impl Watch {
    /// Record a step of the operation (an object with `step` and
    /// `outcome`), stamped with `at_ms`.
    pub fn step(&self, mut step: Value) {
        step["at_ms"] = json!((self.started.elapsed().as_secs_f64() * 1e4).round() / 10.0);
        self.operations.add_step(&self.id, step);
    }
}

/// Migrate NF `nf` of running chain `chain` as `req` says; the summary.
pub fn migrate_chain_nf(
    daemon: &Daemon,
    key: &MigrateKey,
    chain: &str,
    nf: &str,
    req: &MigrateRequest,
    watch: &Watch,
) -> Result<Value, OpError> {
    let p = plan(req).map_err(|e| OpError::Migration(AgentError::Request(e)))?;
    let entry = daemon.get(chain)?;
    let d = entry.descriptor();
    let unknown_nf = || OpError::UnknownNf {
        chain: chain.into(),
        nf: nf.into(),
        known: d.nfs.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
    };
    let decl = d.nfs.iter().find(|n| n.name == nf).ok_or_else(unknown_nf)?;
    let live = entry.user_space("a live migration")?;
    // The NF's own worker: with `mapping: threads` not the chain's first.
    let worker = live.worker_of(nf).ok_or_else(unknown_nf)?;
    let descriptor = req.deploy.as_ref().map(|ports| {
        let mut d = d.clone();
        for (name, iface) in [("in", &ports.in_iface), ("out", &ports.out_iface)] {
            match d.ports.get_mut(name) {
                Some(PortDecl::AfPacket(p)) => p.iface = iface.clone(),
                Some(PortDecl::AfXdp(p)) => p.iface = iface.clone(),
                _ => {}
            }
        }
        d.to_yaml()
    });
    // The switch's routes and markers, resolved in their namespaces now:
    // a bad switch file fails here, before the destination hears of it.
    let handles =
        PreparedSwitch::open(&req.switch).map_err(|e| OpError::Migration(AgentError::Switch(e)))?;
    let to = req.to.clone();
    let addr = resolve(&to)?;
    let mut conn = TcpStream::connect_timeout(&addr, p.timeout)
        .map_err(|source| AgentError::Connect { to: to.clone(), source })?;
    let offer_err = |what: String| AgentError::Offer { to: to.clone(), what };
    conn.set_read_timeout(Some(p.timeout)).map_err(|e| offer_err(e.to_string()))?;
    conn.set_write_timeout(Some(p.timeout)).map_err(|e| offer_err(e.to_string()))?;
    let theirs = read_challenge(&mut conn).map_err(offer_err)?;
    let offer = Offer {
        chain: chain.into(),
        nf: nf.into(),
        kind: decl.kind.clone(),
        descriptor,
        timeout_ms: p.timeout.as_millis() as u64,
        source: instance_id(),
        challenge: new_challenge().map_err(|e| offer_err(e.to_string()))?,
    };
    write_signed(&mut conn, key, OFFER_LABEL, &theirs, &offer)
        .map_err(|e| offer_err(format!("sending the offer: {e}")))?;
    // A destination asked to deploy the chain answers after the deploy,
    // which may take seconds on a busy host (XDP programs, AF_XDP UMEM, the
    // store's commit): it gets that much longer.
    let answer_within =
        if offer.descriptor.is_some() { p.timeout + DEPLOY_ALLOWANCE } else { p.timeout };
    conn.set_read_timeout(Some(answer_within)).map_err(|e| offer_err(e.to_string()))?;
    let answer: OfferAnswer =
        read_signed(&mut conn, key, ANSWER_LABEL, &offer.challenge).map_err(|e| {
            offer_err(format!("{e} (no answer within {:.1} s)", answer_within.as_secs_f64()))
        })?;
    conn.set_read_timeout(Some(p.timeout)).map_err(|e| offer_err(e.to_string()))?;
    if !answer.accept {
        return Err(AgentError::Refused { to, reason: answer.reason.unwrap_or_default() }.into());
    }
    let progress = Arc::new(Progress::default());
    let id = new_id().map_err(|e| offer_err(e.to_string()))?;
    let opts = SourceOptions {
        id,
        mode: p.mode,
        markers: req.switch.marker_ports(),
        io_timeout: p.timeout,
        marker_timeout: p.marker_timeout,
        scope: p.scope,
        progress: Some(progress.clone()),
        stream_key: Some(stream_key(key, &theirs, &offer.challenge)),
        ..SourceOptions::default()
    };
    let opts = if p.backpressure {
        opts
    } else {
        SourceOptions { in_flight_bdps: 0.0, send_buffer: 0, ..opts }
    };
    let mut switch = RouteSwitch {
        spec: &req.switch,
        handles,
        daemon,
        watch,
        flows: req.flows.clone().unwrap_or_else(|| "all".into()),
        steered: 0,
    };
    // The markers enter at the chain's `in` and `out`; on a chain of
    // several workers, those between them and the NF's pass them on.
    live.relay_markers(nf, opts.id, &opts.markers).map_err(OpError::Control)?;
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let result = std::thread::scope(|s| {
        s.spawn(|| report_progress(&progress, &stop, watch, chain, nf));
        let r = migrate_out(worker, nf, &decl.kind, conn, &opts, &mut switch);
        stop.store(true, Ordering::Relaxed);
        r
    });
    live.end_relay(opts.id);
    let r = result.map_err(AgentError::Migrate)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(json!({
        "chain": chain,
        "nf": nf,
        "to": req.to,
        "mode": r.mode,
        "flows": req.flows.as_deref().unwrap_or("all"),
        "outcome": "migrated",
        "deployed_at_destination": answer.deployed,
        "seconds": start.elapsed().as_secs_f64(),
        "until_switch_ms": ms(r.until_switch),
        "redirect_ms": ms(r.redirect),
        "drain_ms": ms(r.drain),
        "total_ms": ms(r.total),
        "state_bytes": r.bytes,
        "frames": r.frames,
        "chunks": r.chunks,
        "statelets": r.statelets,
        "duplicated_packets": r.duplicated,
        "backlog_at_switch": r.backlog_at_switch,
        "in_flight_at_switch": r.in_flight_at_switch,
        "in_flight_bound": r.in_flight_bound,
        "peak_in_flight": r.peak_in_flight,
        "bytes_at_switch": r.bytes_at_switch,
        "changed_flows_sent": r.changed_flows_sent,
        "installed": r.installed,
        "packets_buffered": r.peak_held,
        "packets_dropped_at_destination": r.dropped_held,
        "flows_dropped_at_source": r.forgotten,
        "source_kept_state": r.forget_error,
    }))
}

/// Copy the migration's progress into its operation every 50 ms, and an
/// event at each phase change, until `stop`.
fn report_progress(progress: &Progress, stop: &AtomicBool, watch: &Watch, chain: &str, nf: &str) {
    let mut last = None;
    loop {
        let phase = progress.phase();
        let (bytes, frames) = progress.bytes();
        let v = json!({ "phase": phase, "state_bytes": bytes, "frames": frames,
                        "backlog": progress.backlog() });
        watch.operations.merge_progress(&watch.id, v.clone());
        if last != Some(phase) {
            last = Some(phase);
            let mut e = v;
            e["operation"] = watch.id.clone().into();
            e["chain"] = chain.into();
            e["nf"] = nf.into();
            watch.events.publish("migration_progress", e);
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The API handler of `POST /v1/chains/{name}/nfs/{nf}/migrate`.
pub async fn migrate(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path((name, nf)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: MigrateRequest = crate::api::json_body(
        &s,
        body,
        "migration request",
        "{\"to\": \"HOST[:PORT]\", \"mode\": ..., \"flows\": ..., \"switch\": {\"redirect\": [...], \"restore\": [...], \"markers\": [...]}, \"deploy\": {\"in\": IFACE, \"out\": IFACE}}",
    )?;
    // Refused at once, before an operation exists: a bad request, an
    // unknown chain or NF, no key to authenticate the offer with, another
    // migration or scale of the NF.
    plan(&req).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e))?;
    let (key, claim) = source_checks(&s, &name, &nf, "migrate")?;
    let (operations, events) = (s.operations.clone(), s.events.clone());
    let (n, f) = (name.clone(), nf.clone());
    let job = ("migrate", name, Some(nf));
    Ok(crate::api::operation(s, &headers, peer, job, move |d, id| {
        let _claimed_until_done = claim;
        let watch = Watch { operations, events, id: id.to_string(), started: Instant::now() };
        let summary = migrate_chain_nf(d, &key, &n, &f, &req, &watch)?;
        Ok(Done {
            status: StatusCode::OK,
            note: format!("migrated NF `{f}` of chain `{n}` to {}", req.to),
            event: ("chain_migrated", summary.clone()),
            body: summary,
        })
    })
    .await)
}

/// What a migration or a scale (`kind`) of NF `nf` of chain `name` needs
/// before its operation starts: the chain and the NF here (404), a key to
/// authenticate the offer with (409 `no_migrate_key`), and no other
/// migration or scale of that NF running or waiting (409 `busy`). The
/// key, and the NF's claim (held until the operation ends).
pub(crate) fn source_checks(
    s: &AppState,
    name: &str,
    nf: &str,
    kind: &'static str,
) -> Result<(Arc<MigrateKey>, crate::ops::Claim), ApiError> {
    let chain = s.daemon.get(name)?;
    let nfs = chain.descriptor().nfs;
    if !nfs.iter().any(|n| n.name == nf) {
        let known = nfs.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(OpError::UnknownNf { chain: name.into(), nf: nf.into(), known }.into());
    }
    let key = s.migrate_key.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_migrate_key",
            "this braidd has no migrate_key_file: a migration offer must be authenticated with \
             the key the destination braidd has (docs/migration.md, \"Authentication\")",
        )
    })?;
    let claim = s.operations.claim(kind, name, nf).map_err(|holder| busy(name, nf, holder))?;
    Ok((key, claim))
}

/// The refusal of a migration or scale of an NF another one is moving
/// (`holder`: its kind).
pub(crate) fn busy(chain: &str, nf: &str, holder: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "busy",
        format!(
            "NF `{nf}` of chain `{chain}` is being moved by a `{holder}` operation (see /v1/operations): one migration or scale of an NF at a time; try again when it has finished"
        ),
    )
}

/// The destination: accept offers on `listener` until the process ends,
/// each on its own thread.
pub fn serve(
    listener: TcpListener,
    key: Arc<MigrateKey>,
    daemon: Arc<Daemon>,
    operations: Arc<Operations>,
    events: Arc<Events>,
) {
    let busy: Arc<Mutex<std::collections::BTreeSet<(String, String)>>> = Arc::default();
    std::thread::Builder::new()
        .name("braidd-migrate".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (k, d, o, e, b) =
                    (key.clone(), daemon.clone(), operations.clone(), events.clone(), busy.clone());
                let _ = std::thread::Builder::new()
                    .name("braidd-migrate-in".into())
                    .spawn(move || accept_one(conn, &k, &d, &o, &e, &b));
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::error!(error = %e, "migration listener thread"));
}

type Busy = Mutex<std::collections::BTreeSet<(String, String)>>;

/// How the destination answers an authenticated offer: tagged over the
/// source's challenge.
struct Answerer<'a> {
    key: &'a MigrateKey,
    /// The source's challenge, which the answers' tags cover.
    theirs: Challenge,
    /// This side's, which the offer's tag covered.
    ours: Challenge,
}

impl Answerer<'_> {
    fn send(&self, conn: &mut TcpStream, answer: &OfferAnswer) -> std::io::Result<()> {
        write_signed(conn, self.key, ANSWER_LABEL, &self.theirs, answer)
    }

    fn stream_key(&self) -> Arc<StreamKey> {
        stream_key(self.key, &self.ours, &self.theirs)
    }

    fn refuse(&self, conn: &mut TcpStream, reason: String) {
        let _ =
            self.send(conn, &OfferAnswer { accept: false, reason: Some(reason), deployed: false });
    }
}

/// One offer: authenticate it, check it (deploy the chain if asked),
/// answer, run the destination's side.
fn accept_one(
    mut conn: TcpStream,
    key: &MigrateKey,
    daemon: &Daemon,
    ops: &Operations,
    events: &Events,
    busy: &Busy,
) {
    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let challenge = match new_challenge().and_then(|c| write_challenge(&mut conn, &c).map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(peer, error = %e, "sending the migration challenge");
            return;
        }
    };
    // Nothing of an offer is looked at before its tag checks out.
    let offer: Offer = match read_signed(&mut conn, key, OFFER_LABEL, &challenge) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(peer, error = %e, "migration offer refused");
            let _ = write_unauthenticated_refusal(
                &mut conn,
                &format!("the offer was not accepted: {e}"),
            );
            return;
        }
    };
    let answerer = Answerer { key, theirs: offer.challenge, ours: challenge };
    if offer.source == instance_id() {
        let reason = "the offer comes from this braidd itself: migrate to another host".to_string();
        tracing::warn!(peer, reason, "migration refused");
        return answerer.refuse(&mut conn, reason);
    }
    let busy_key = (offer.chain.clone(), offer.nf.clone());
    let refuse = |conn: &mut TcpStream, reason: String| {
        tracing::warn!(peer, chain = %offer.chain, nf = %offer.nf, reason, "migration refused");
        answerer.refuse(conn, reason);
    };
    if !busy.lock().unwrap_or_else(|e| e.into_inner()).insert(busy_key.clone()) {
        return refuse(
            &mut conn,
            format!(
                "a migration into NF `{}` of chain `{}` is already running here",
                offer.nf, offer.chain
            ),
        );
    }
    let id = ops.begin("migrate-in", &offer.chain, Some(&offer.nf));
    let mut deployed = false;
    let outcome = take(&mut conn, &answerer, daemon, &offer, &peer, events, &id, &mut deployed);
    if outcome.is_err() && deployed {
        // Nothing stays behind: the chain deployed for this migration goes.
        match daemon.remove(&offer.chain) {
            Ok(_) => {
                events.publish("chain_removed", json!({ "chain": offer.chain, "operation": id }));
            }
            Err(e) => {
                tracing::warn!(chain = %offer.chain, error = %e, "removing the chain deployed for a failed migration")
            }
        }
    }
    let ok = outcome.is_ok();
    let (status, result) = match outcome {
        Ok(v) => (200, Ok(v)),
        Err(Refusal::Before(reason)) => {
            refuse(&mut conn, reason.clone());
            (409, Err(json!({ "error": "refused", "message": reason })))
        }
        Err(Refusal::During(e)) => {
            (422, Err(json!({ "error": "migration_failed", "message": e.to_string() })))
        }
    };
    // Free for the next offer before the operation shows as finished.
    busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&busy_key);
    events.publish(
        "migration_in",
        json!({ "operation": id, "chain": offer.chain, "nf": offer.nf, "from": peer,
                "state": if ok { "succeeded" } else { "failed" },
                "result": result.as_ref().ok(), "error": result.as_ref().err() }),
    );
    ops.finish(&id, status, result);
}

enum Refusal {
    /// Refused before accepting (nothing changed here).
    Before(String),
    /// Failed after accepting (rolled back by `migrate_in`).
    During(MigrateError),
}

#[allow(clippy::too_many_arguments)]
fn take(
    conn: &mut TcpStream,
    answerer: &Answerer<'_>,
    daemon: &Daemon,
    offer: &Offer,
    peer: &str,
    events: &Events,
    op: &str,
    deployed: &mut bool,
) -> Result<Value, Refusal> {
    let entry = match (daemon.get(&offer.chain), &offer.descriptor) {
        (Ok(e), _) => e,
        (Err(_), Some(text)) => {
            let e = daemon.deploy(text).map_err(|e| {
                Refusal::Before(format!("deploying chain `{}` for the migration: {e}", offer.chain))
            })?;
            *deployed = true;
            events.publish(
                "chain_deployed",
                json!({ "chain": offer.chain, "nfs": e.descriptor().nfs.len(), "operation": op }),
            );
            e
        }
        (Err(e), None) => return Err(Refusal::Before(e.to_string())),
    };
    let d = entry.descriptor();
    let Some(decl) = d.nfs.iter().find(|n| n.name == offer.nf) else {
        return Err(Refusal::Before(format!(
            "chain `{}` here has no NF `{}`",
            offer.chain, offer.nf
        )));
    };
    if decl.kind != offer.kind {
        return Err(Refusal::Before(format!(
            "NF `{}` of chain `{}` here is a `{}`, the source's is a `{}`",
            offer.nf, offer.chain, decl.kind, offer.kind
        )));
    }
    // A kernel or processes chain here says so, as the source's API would.
    let live = entry
        .user_space("a live migration into it")
        .map_err(|e| Refusal::Before(format!("on this braidd: {e}")))?;
    // The NF's own worker holds what reaches the NF (with `mapping:
    // threads`, after the NFs before it on this chain).
    let worker = live.worker_of(&offer.nf).ok_or_else(|| {
        Refusal::Before(format!("chain `{}` here has no NF `{}`", offer.chain, offer.nf))
    })?;
    let answer = OfferAnswer { accept: true, reason: None, deployed: *deployed };
    answerer.send(conn, &answer).map_err(|e| Refusal::Before(format!("answering: {e}")))?;
    let stream =
        conn.try_clone().map_err(|e| Refusal::During(braid_migrate::WireError::Io(e).into()))?;
    let timeout = Duration::from_millis(offer.timeout_ms.clamp(1, 600_000));
    let opts = DestinationOptions {
        io_timeout: timeout,
        stream_key: Some(answerer.stream_key()),
        ..DestinationOptions::default()
    };
    tracing::info!(peer, chain = %offer.chain, nf = %offer.nf, "migration in");
    let r = migrate_in(worker, &offer.nf, &decl.kind, stream, &opts).map_err(Refusal::During)?;
    Ok(json!({
        "chain": offer.chain, "nf": offer.nf, "from": peer, "mode": r.mode,
        "deployed": *deployed, "installed": r.installed, "replayed": r.replayed,
        "state_bytes": r.bytes, "packets_buffered": r.peak_held,
        "packets_dropped": r.dropped_held,
        "snapshot_in_ms": r.snapshot_in.as_secs_f64() * 1e3,
        "total_ms": r.total.as_secs_f64() * 1e3,
    }))
}

#[cfg(test)]
mod tests {

    #[test]
    fn migration_ids_are_random_not_the_time() {
        let ids: Vec<u64> = (0..64).map(|_| new_id().unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Ids taken one after the other from a clock would only grow.
        assert!(ids.windows(2).any(|w| w[1] < w[0]), "{ids:?}");
        // And they use the high bits too (the clock's change in the low ones).
        assert!(ids.iter().any(|i| i >> 63 == 1) && ids.iter().any(|i| i >> 63 == 0));
    }

    use super::*;

    fn spec(yaml: &str) -> SwitchSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn flow_specs_parse_or_say_what_is_accepted() {
        assert_eq!(parse_flows("all").unwrap(), FlowScope::All);
        assert_eq!(parse_flows("share:1/4").unwrap(), FlowScope::HashRange(HashRange::share(1, 4)));
        assert_eq!(
            parse_flows("hash:0-ff").unwrap(),
            FlowScope::HashRange(HashRange { first: 0, last: 255 })
        );
        for bad in ["share:4/4", "share:1", "hash:ff-0", "hash:x-1", "some"] {
            let e = parse_flows(bad).unwrap_err();
            assert_eq!(e.field, format!("flows `{bad}`"), "{e}");
            assert!(e.problem.contains("accepted"), "{e}");
        }
    }

    #[test]
    fn a_switch_spec_is_checked_field_by_field() {
        let ok = spec("redirect: [{netns: up, to: 10.0.2.0/24, via: 10.0.9.2, dev: ub}]\nrestore: []\nmarkers: [{netns: up, dev: ua, port: in}, {dev: da, port: out}]\n");
        ok.check().unwrap();
        assert_eq!(ok.marker_ports(), [0, 1]);
        for (yaml, field) in [
            ("redirect: []\nrestore: []\nmarkers: [{dev: a, port: in}]", "switch.redirect"),
            ("redirect: [{to: 10.0.2.0/33, dev: a}]\nrestore: []\nmarkers: [{dev: a, port: in}]", "switch.redirect[0].to"),
            ("redirect: [{to: default, via: nope}]\nrestore: []\nmarkers: [{dev: a, port: in}]", "switch.redirect[0].via"),
            ("redirect: [{to: default, dev: a}]\nrestore: [{to: default}]\nmarkers: [{dev: a, port: in}]", "switch.restore[0]"),
            ("redirect: [{netns: 'a b', to: default, dev: a}]\nrestore: []\nmarkers: [{dev: a, port: in}]", "switch.redirect[0].netns"),
            ("redirect: [{to: default, dev: a}]\nrestore: []\nmarkers: [{dev: a, port: up}]", "switch.markers[0].port"),
            ("redirect: [{to: default, dev: a}]\nrestore: []\nmarkers: [{dev: waytoolonginterfacename, port: in}]", "switch.markers[0].dev"),
            ("redirect: [{to: default, dev: a}]\nrestore: []\nmarkers: []", "switch.markers"),
        ] {
            let e = spec(yaml).check().unwrap_err();
            assert_eq!(e.field, field, "{yaml}: {e}");
        }
    }

    #[test]
    fn steering_moves_whole_buckets_only() {
        assert_eq!(steer_buckets("all", 256).unwrap(), (0, 255));
        assert_eq!(steer_buckets("share:1/2", 256).unwrap(), (128, 255));
        assert_eq!(steer_buckets("share:3/4", 1024).unwrap(), (768, 1023));
        assert_eq!(steer_buckets("hash:0-ffffffffffffff", 256).unwrap(), (0, 0));
        for (flows, buckets) in [("share:1/3", 256), ("share:0/512", 256), ("hash:0-ff", 256)] {
            let e = steer_buckets(flows, buckets).unwrap_err();
            assert!(e.problem.starts_with("not whole buckets"), "{flows}: {e}");
        }
        assert_eq!(steer_buckets("share:2/2", 256).unwrap_err().field, "flows `share:2/2`");
    }

    #[test]
    fn a_steering_switch_is_checked_and_needs_no_routes() {
        let st = "steer: [{socket: /run/s.sock, chain: su, nf: st, from: 0, to: 1, port: in}, {socket: /run/s.sock, chain: sd, nf: st, from: 0, to: 1, port: out}]";
        let ok = spec(&format!("redirect: []\nrestore: []\nmarkers: []\n{st}\n"));
        ok.check().unwrap();
        assert_eq!(ok.marker_ports(), [0, 1]);
        for (yaml, field) in [
            (
                "steer: [{socket: '', chain: su, nf: st, from: 0, to: 1, port: in}]",
                "switch.steer[0].socket",
            ),
            (
                "steer: [{socket: /s, chain: su, nf: st, from: 1, to: 1, port: in}]",
                "switch.steer[0]",
            ),
            (
                "steer: [{socket: /s, chain: su, nf: st, from: 0, to: 1, port: up}]",
                "switch.steer[0].port",
            ),
            (
                "steer: [{socket: /s, chain: '', nf: st, from: 0, to: 1, port: in}]",
                "switch.steer[0].chain",
            ),
        ] {
            let e = spec(&format!("redirect: []\nrestore: []\nmarkers: []\n{yaml}"))
                .check()
                .unwrap_err();
            assert_eq!(e.field, field, "{yaml}: {e}");
        }
        // A split needs the steering; with it, it is accepted.
        let req = |steer: &str| {
            MigrateRequest {
            to: "10.0.0.2".into(),
            mode: None,
            flows: Some("share:1/2".into()),
            switch: spec(&format!("redirect: [{{to: default, dev: a}}]\nrestore: []\nmarkers: [{{dev: a, port: in}}]\n{steer}")),
            deploy: None,
            timeout_ms: None,
            marker_timeout_ms: None,
            backpressure: None,
        }
        };
        let e = plan(&req("")).err().unwrap();
        assert!(e.contains("switch.steer"), "{e}");
        assert!(plan(&req(st)).is_ok());
    }

    #[test]
    fn an_offer_authenticates_only_under_the_shared_key_and_its_own_challenge() {
        let key = MigrateKey::new(&[7; 32]).unwrap();
        let other = MigrateKey::new(&[8; 32]).unwrap();
        let ch: Challenge = [1; 32];
        let o = Offer {
            chain: "c".into(),
            nf: "fw".into(),
            kind: "firewall".into(),
            descriptor: Some("name: c".into()),
            timeout_ms: 5,
            source: instance_id(),
            challenge: [2; 32],
        };
        let mut buf = Vec::new();
        write_signed(&mut buf, &key, OFFER_LABEL, &ch, &o).unwrap();
        let back: Offer = read_signed(&mut buf.as_slice(), &key, OFFER_LABEL, &ch).unwrap();
        assert_eq!((back.chain.as_str(), back.kind.as_str()), ("c", "firewall"));
        assert_eq!(back.challenge, [2; 32]);
        let refused = |r: Result<Offer, String>| {
            let e = r.unwrap_err();
            assert!(e.contains("does not authenticate"), "{e}");
        };
        // Another key, another connection's challenge, an answer's label.
        refused(read_signed(&mut buf.as_slice(), &other, OFFER_LABEL, &ch));
        refused(read_signed(&mut buf.as_slice(), &key, OFFER_LABEL, &[3; 32]));
        refused(read_signed(&mut buf.as_slice(), &key, ANSWER_LABEL, &ch));
        // Every flipped bit of the body or the tag.
        for i in 8..buf.len() {
            for bit in 0..8 {
                let mut m = buf.clone();
                m[i] ^= 1 << bit;
                refused(read_signed(&mut m.as_slice(), &key, OFFER_LABEL, &ch));
            }
        }
        // The old, untagged offer (a braidd before authentication): no tag.
        let body = serde_json::to_vec(&o).unwrap();
        let mut old = b"BRMA".to_vec();
        old.extend((body.len() as u32).to_be_bytes());
        old.extend(&body);
        let e = read_signed::<Offer>(&mut old.as_slice(), &key, OFFER_LABEL, &ch).unwrap_err();
        assert!(e.contains("reading the tag"), "{e}");
        let e =
            read_signed::<Offer>(&mut &b"HTTP/1.1 200"[..], &key, OFFER_LABEL, &ch).unwrap_err();
        assert!(e.contains("not a braid migration agent"), "{e}");
        let e = read_signed::<Offer>(&mut &b"BRMA\xff\xff\xff\xff"[..], &key, OFFER_LABEL, &ch)
            .unwrap_err();
        assert!(e.contains("exceeds"), "{e}");
        // A refusal before authentication is shown escaped, as the peer's words.
        let mut r = Vec::new();
        write_unauthenticated_refusal(&mut r, "no\n\u{1b}[31m").unwrap();
        let e = read_signed::<Offer>(&mut r.as_slice(), &key, ANSWER_LABEL, &ch).unwrap_err();
        assert_eq!(e, r#"refused before authentication: "no\n\u{1b}[31m""#);
        // The challenge.
        let mut c = Vec::new();
        write_challenge(&mut c, &ch).unwrap();
        assert_eq!(read_challenge(&mut c.as_slice()).unwrap(), ch);
        assert!(read_challenge(&mut &b"BRMA\0\0\0\0"[..]).unwrap_err().contains("challenge"));
        assert_ne!(new_challenge().unwrap(), new_challenge().unwrap());
        // Both sides derive one stream key; another connection's
        // challenges or another key give another.
        let answerer = Answerer { key: &key, theirs: [2; 32], ours: ch };
        let mut w = braid_migrate::wire::FrameWriter::new(
            Vec::new(),
            Some(braid_migrate::wire::Seal {
                key: stream_key(&key, &ch, &[2; 32]),
                direction: braid_migrate::wire::Direction::ToDestination,
            }),
        );
        w.write_preamble().unwrap();
        w.write_message(&braid_migrate::Message::Accept).unwrap();
        let bytes = w.get_ref().clone();
        let read = |k: Arc<StreamKey>| {
            let mut r = braid_migrate::FrameReader::sealed(
                bytes.as_slice(),
                Some(braid_migrate::wire::Seal {
                    key: k,
                    direction: braid_migrate::wire::Direction::ToDestination,
                }),
            );
            r.read_preamble().and_then(|()| r.read_message())
        };
        assert_eq!(read(answerer.stream_key()).unwrap(), braid_migrate::Message::Accept);
        assert!(read(stream_key(&key, &[3; 32], &[2; 32])).is_err());
        assert!(read(stream_key(&key, &ch, &[3; 32])).is_err());
        assert!(read(stream_key(&other, &ch, &[2; 32])).is_err());
    }
}
