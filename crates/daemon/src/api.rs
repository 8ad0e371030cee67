//! The HTTP/JSON API (`/v1/...`), `/metrics` and `/v1/openapi.json`.
//!
//! Every request passes [`guard`]: on the unix socket the peer's
//! credentials (`SO_PEERCRED`) must be root's or the daemon's own uid; on
//! the TCP listener (TLS only, see [`crate::server`]) the request must
//! carry the bearer token (`401` with `WWW-Authenticate` otherwise). Each
//! request is counted in `braid_api_requests`, and a mutating call (POST,
//! PATCH, DELETE) is written to the audit log with who and what.
//!
//! Mutations are operations ([`crate::ops`]): answered when done, or at
//! once with `202 Accepted` and `Location: /v1/operations/{id}` when the
//! client sends `Prefer: respond-async`. `GET /v1/events` streams the
//! daemon's changes as JSON lines. Bodies larger
//! than the configured limit are refused with 413 while being read: the
//! daemon never holds more than the limit of one.
//!
//! Mutations run one at a time on tokio's blocking pool (they open
//! sockets and talk to workers); reads never wait for them.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use serde_json::json;

use crate::audit::Audit;
use crate::auth::Token;
use crate::daemon::{Daemon, OpError};
use crate::metrics::Metrics;
use crate::ops::{Events, Operations};

/// Who is on the other end of a connection: a unix peer's credentials, or
/// a TCP peer's address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    /// Set for TCP peers (authenticated by the bearer token).
    pub addr: Option<std::net::SocketAddr>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub daemon: Arc<Daemon>,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<Audit>,
    /// Mutations one at a time.
    pub ops: Arc<tokio::sync::Mutex<()>>,
    pub started: Instant,
    /// The uid besides root whose peers are served (the daemon's own).
    pub allowed_uid: u32,
    /// Largest request body.
    pub body_limit: usize,
    /// Time a request body may take to arrive whole.
    pub body_timeout: std::time::Duration,
    /// Mutating calls and their outcomes.
    pub operations: Arc<Operations>,
    /// The change feed.
    pub events: Arc<Events>,
    /// The bearer token TCP requests must carry; None: TCP requests are
    /// all refused.
    pub token: Option<Arc<Token>>,
    /// The key migration offers to other braidd are tagged with; None:
    /// outgoing migrations are refused (`no_migrate_key`).
    pub migrate_key: Option<Arc<crate::auth::MigrateKey>>,
    /// Turns true at shutdown: event streams end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    /// The state of a daemon serving `daemon`, with its metrics, no TCP
    /// token, and event streams ending when `stopping` turns true.
    pub fn new(
        daemon: Arc<Daemon>,
        audit: Audit,
        allowed_uid: u32,
        body_limit: usize,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> AppState {
        let operations = Arc::new(Operations::default());
        AppState {
            metrics: Arc::new(Metrics::new(&daemon, operations.clone())),
            daemon,
            audit: Arc::new(audit),
            ops: Arc::default(),
            started: Instant::now(),
            allowed_uid,
            body_limit,
            body_timeout: std::time::Duration::from_secs(30),
            operations,
            events: Arc::default(),
            token: None,
            migrate_key: None,
            stopping,
        }
    }
}

/// What a mutating call did, for the audit log (a response extension).
#[derive(Clone, Debug)]
pub struct AuditNote(pub String);

/// The API. The route lines are checked against the OpenAPI document by
/// a test that reads this file: keep one `.route(` per line.
pub fn router(state: AppState) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/chains", get(list_chains).post(deploy))
        .route("/v1/chains/{name}", get(show_chain).delete(delete_chain))
        .route("/v1/chains/{name}/nfs/{nf}", patch(patch_nf))
        .route("/v1/chains/{name}/profile", get(profile_chain))
        .route("/v1/chains/{name}/nfs/{nf}/migrate", post(crate::migration::migrate))
        .route("/v1/chains/{name}/nfs/{nf}/steer", post(crate::migration::steer))
        .route("/v1/chains/{name}/nfs/{nf}/scale", post(crate::scale::scale))
        .route("/v1/operations", get(list_operations))
        .route("/v1/operations/{id}", get(show_operation))
        .route("/v1/events", get(events))
        .route("/v1/chains/{name}/capture", post(crate::capture::capture))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `/metrics` alone, for a TCP listener (`metrics_listen`) that Prometheus
/// scrapes: read-only, so served without peer credentials (TCP has none).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(state.clone(), count_only))
        .with_state(state)
}

/// Request counting for [`metrics_router`].
async fn count_only(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| format!("tcp:{}", m.as_str()))
        .unwrap_or_else(|| "tcp:unmatched".into());
    let response = next.run(req).await;
    s.metrics.count_request(method.as_str(), &route, response.status().as_u16());
    response
}

/// An error answer: status, a stable `error` kind, the message, and for
/// descriptors every problem.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    problems: Vec<serde_json::Value>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError { status, kind, message: message.into(), problems: Vec::new() }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        let message = e.to_string();
        let (status, kind) = match &e {
            OpError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_descriptor"),
            OpError::Duplicate(_) => (StatusCode::CONFLICT, "duplicate_chain"),
            OpError::UnknownChain(_) => (StatusCode::NOT_FOUND, "unknown_chain"),
            OpError::UnknownNf { .. } => (StatusCode::NOT_FOUND, "unknown_nf"),
            OpError::NotRunning(_) => (StatusCode::CONFLICT, "not_running"),
            OpError::Start(_) => (StatusCode::UNPROCESSABLE_ENTITY, "start_failed"),
            OpError::Control(_) => (StatusCode::UNPROCESSABLE_ENTITY, "refused_by_worker"),
            OpError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
            OpError::Migration(crate::migration::AgentError::Request(_)) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            OpError::Migration(_) => (StatusCode::UNPROCESSABLE_ENTITY, "migration_failed"),
            OpError::Scale(e) => e.status(),
            OpError::Sched(_) => (StatusCode::UNPROCESSABLE_ENTITY, "sched_refused"),
            OpError::Profile { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "profile_failed"),
            OpError::Placement(_) => (StatusCode::UNPROCESSABLE_ENTITY, "placement_refused"),
            OpError::KernelStart(_) => (StatusCode::UNPROCESSABLE_ENTITY, "start_failed"),
            OpError::KernelControl(_) => (StatusCode::UNPROCESSABLE_ENTITY, "refused_by_kernel"),
            OpError::KernelChain { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "kernel_chain"),
            OpError::ProcessesChain { .. } => (StatusCode::CONFLICT, "processes_chain"),
        };
        let problems = match &e {
            OpError::Invalid(ps) => ps
                .iter()
                .map(|p| {
                    json!({
                        "line": p.location.map(|l| l.line),
                        "column": p.location.map(|l| l.column),
                        "path": p.path,
                        "message": p.message,
                        "accepted": p.help,
                        "text": p.to_string(),
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        ApiError { status, kind, message, problems }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ApiError {
    /// The JSON body: `{error, message, problems}`.
    fn body(&self) -> serde_json::Value {
        let mut body = json!({ "error": self.kind, "message": self.message });
        if !self.problems.is_empty() {
            body["problems"] = self.problems.clone().into();
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let note = AuditNote(format!("refused: {}", self.message));
        (self.status, Extension(note), Json(body)).into_response()
    }
}

pub(crate) fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body larger than the limit of {limit} bytes"),
        )
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
    }
}

/// Request body `body` as JSON of a `T`: too large is 413, anything else
/// that is not a `T` a 400 `bad_body` naming the request (`what`) and
/// what it accepts.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    s: &AppState,
    body: Result<Bytes, BytesRejection>,
    what: &str,
    accepted: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| body_error(e, s.body_limit))?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("{what}: {e}; accepted: {accepted}"),
        )
    })
}

fn text(body: &Bytes) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("request body is not UTF-8 text (at byte {})", e.valid_up_to()),
        )
    })
}

/// Run a mutation on the blocking pool, after the previous one.
async fn op<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&Daemon) -> Result<T, OpError> + Send + 'static,
) -> Result<T, ApiError> {
    let _one_at_a_time = s.ops.lock().await;
    let d = s.daemon.clone();
    tokio::task::spawn_blocking(move || f(&d))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("operation failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

/// Who may use the API: on the unix socket, root and the daemon's uid; on
/// TCP, whoever presents the bearer token. The refusal, if any.
fn authorize(s: &AppState, peer: &Peer, headers: &HeaderMap) -> Option<Response> {
    if peer.addr.is_some() {
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let ok = s.token.as_ref().is_some_and(|t| t.authorizes(presented));
        if ok {
            return None;
        }
        // RFC 6750: no credentials get the bare challenge; wrong ones, the
        // error. The token itself is never echoed or logged.
        let (challenge, message) = if presented.is_none() {
            ("Bearer realm=\"braidd\"", "this API needs `Authorization: Bearer TOKEN`")
        } else {
            (
                "Bearer realm=\"braidd\", error=\"invalid_token\"",
                "the bearer token is not braidd's token",
            )
        };
        let mut r =
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static(challenge));
        return Some(r);
    }
    if matches!(peer.uid, Some(u) if u == 0 || u == s.allowed_uid) {
        return None;
    }
    Some(
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "peer uid {} is not allowed: only root and uid {} may use this API",
                peer.uid.map_or("unknown".into(), |u| u.to_string()),
                s.allowed_uid
            ),
        )
        .into_response(),
    )
}

/// Read the body of `req` whole, within the body timeout and up to the
/// body limit, before any handler runs: a body that trickles in is cut off
/// (408) instead of holding its connection, one larger than the limit is
/// refused (413) as soon as it is known to be (its `Content-Length`, or
/// the first byte beyond the limit). Requests without a body pass as they
/// are.
async fn read_body(s: &AppState, req: Request) -> Result<Request, ApiError> {
    use futures_util::StreamExt;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body larger than the limit of {} bytes", s.body_limit),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.body_limit as u64) {
        return Err(too_large());
    }
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if declared.unwrap_or(0) == 0 && !chunked {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(s.body_limit as u64) as usize);
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("request body: {e}"))
            })?;
            if buf.len() + chunk.len() > s.body_limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(s.body_timeout, read).await {
        Ok(Ok(())) => Ok(Request::from_parts(parts, axum::body::Body::from(buf))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "request body not received whole within {} ms ({} bytes came)",
                s.body_timeout.as_millis(),
                buf.len()
            ),
        )),
    }
}

/// Peer check, request counting, audit.
async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0).unwrap_or_default();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let route = if peer.addr.is_some() { format!("tls:{route}") } else { route };
    let refused = authorize(&s, &peer, req.headers());
    let allowed = refused.is_none();
    let response = match refused {
        None => match read_body(&s, req).await {
            Ok(req) => next.run(req).await,
            Err(e) => e.into_response(),
        },
        Some(r) => r,
    };
    let status = response.status();
    s.metrics.count_request(method.as_str(), &route, status.as_u16());
    let mutating = matches!(method, Method::POST | Method::PATCH | Method::DELETE | Method::PUT);
    if mutating || !allowed {
        let what = response.extensions().get::<AuditNote>().map(|n| n.0.as_str()).unwrap_or("");
        s.audit.record(&peer, method.as_str(), &path, status.as_u16(), what);
    }
    response
}

async fn no_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("no route {method} {}; see /v1/openapi.json", uri.path()),
    )
}

async fn status(State(s): State<AppState>) -> Json<serde_json::Value> {
    let chains = s.daemon.list();
    let running = chains.iter().filter(|c| c.state().0 == "running").count();
    Json(json!({
        "daemon": "braidd",
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "chains": chains.len(),
        "running": running,
        "checkpoints": s.daemon.checkpoints(),
        "last_event": s.events.last(),
    }))
}

async fn list_chains(State(s): State<AppState>) -> Json<serde_json::Value> {
    let chains: Vec<_> = s.daemon.list().iter().map(|c| c.to_json()).collect();
    Json(json!({ "chains": chains }))
}

async fn show_chain(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(s.daemon.get(&name)?.to_json()))
}

/// Whether the client asked for an asynchronous answer (RFC 7240
/// `Prefer: respond-async`).
fn wants_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("respond-async")))
}

/// What a finished mutation answers: status, body, audit note, and the
/// event it publishes (type, fields).
pub(crate) struct Done {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub note: String,
    pub event: (&'static str, serde_json::Value),
}

/// Run mutation `f` as operation (`kind`, `chain`, `nf`): answered when
/// done, or at once with 202 and the operation's `Location` when the
/// client prefers it. Either way the operation is recorded with its
/// outcome and an `operation_finished` event follows the change's own.
/// `f` gets the operation's id (for progress).
pub(crate) async fn operation(
    s: AppState,
    headers: &HeaderMap,
    peer: Peer,
    (kind, chain, nf): (&'static str, String, Option<String>),
    f: impl FnOnce(&Daemon, &str) -> Result<Done, OpError> + Send + 'static,
) -> Response {
    let id = s.operations.begin(kind, &chain, nf.as_deref());
    let run = {
        let s = s.clone();
        let id = id.clone();
        async move {
            let op_id = id.clone();
            let result = op(&s, move |d| f(d, &op_id)).await;
            let (status, outcome, response) = match result {
                Ok(done) => {
                    let mut fields = done.event.1;
                    fields["operation"] = id.clone().into();
                    s.events.publish(done.event.0, fields);
                    let r = (done.status, Extension(AuditNote(done.note)), Json(done.body.clone()));
                    (done.status, Ok(done.body), r.into_response())
                }
                Err(e) => {
                    let status = e.status;
                    let body = e.body();
                    (status, Err(body), e.into_response())
                }
            };
            let ok = outcome.is_ok();
            s.operations.finish(&id, status.as_u16(), outcome);
            s.events.publish(
                "operation_finished",
                json!({ "operation": id, "kind": kind, "chain": chain, "nf": nf,
                        "state": if ok { "succeeded" } else { "failed" }, "status": status.as_u16() }),
            );
            response
        }
    };
    if !wants_async(headers) {
        let mut r = run.await;
        if let Ok(v) = header::HeaderValue::from_str(&format!("/v1/operations/{id}")) {
            r.headers_mut().insert("operation-location", v);
        }
        return r;
    }
    let (audit, method) = (s.audit.clone(), kind_method(kind));
    let path = format!("/v1/operations/{id}");
    tokio::spawn(async move {
        // The accepted call was audited (202); its outcome is audited too.
        let r = run.await;
        let what = r.extensions().get::<AuditNote>().map(|n| n.0.clone()).unwrap_or_default();
        audit.record(&peer, method, &path, r.status().as_u16(), &what);
    });
    let body = s.operations.get(&id).map(|o| json!(o)).unwrap_or_default();
    let note = AuditNote(format!("accepted as operation {id}"));
    (
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, format!("/v1/operations/{id}")),
            (header::HeaderName::from_static("preference-applied"), "respond-async".into()),
        ],
        Extension(note),
        Json(body),
    )
        .into_response()
}

fn kind_method(kind: &str) -> &'static str {
    match kind {
        "deploy" | "migrate" | "scale-out" | "scale-in" => "POST",
        "remove" => "DELETE",
        _ => "PATCH",
    }
}

async fn deploy(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| body_error(e, s.body_limit))?;
    let text = text(&body)?.to_string();
    // Refused at once, before any operation exists: a bad descriptor and a
    // taken name (checked again, atomically, when it runs).
    let d = crate::daemon::check_descriptor("request body", &text).map_err(OpError::Invalid)?;
    if s.daemon.get(&d.name).is_ok() {
        return Err(OpError::Duplicate(d.name).into());
    }
    let t = Instant::now();
    let job = ("deploy", d.name.clone(), None);
    Ok(operation(s, &headers, peer, job, move |dm, _| {
        let entry = dm.deploy(&text)?;
        let nfs = entry.descriptor().nfs.len();
        Ok(Done {
            status: StatusCode::CREATED,
            note: format!(
                "deployed chain `{}` ({nfs} NFs) in {:.1} ms",
                entry.name(),
                t.elapsed().as_secs_f64() * 1e3
            ),
            event: (
                "chain_deployed",
                json!({ "chain": entry.name(), "nfs": nfs, "placement": entry.placement() }),
            ),
            body: entry.to_json(),
        })
    })
    .await)
}

async fn delete_chain(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    s.daemon.get(&name)?;
    let n = name.clone();
    Ok(operation(s, &headers, peer, ("remove", name, None), move |d, _| {
        let report = d.remove(&n)?;
        Ok(Done {
            status: StatusCode::OK,
            note: format!("removed chain `{n}`"),
            event: ("chain_removed", json!({ "chain": n })),
            body: report,
        })
    })
    .await)
}

/// `PATCH /v1/chains/{name}/nfs/{nf}` body: new parameters, or a new
/// `sched` block, one at a time.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default)]
    params: Option<braid_nf::Params>,
    #[serde(default)]
    sched: Option<serde_json::Value>,
}

/// What a `sched` object accepts, for error messages.
const SCHED_ACCEPTED: &str = "a JSON object {\"sched\": {policy: other|batch|idle|fifo|rr, priority: 1..=99 (fifo, rr), nice: -20..=19, cpus: [N, ...], batch_size: 1..=1024, idle: busy|poll|sleep, adapt: true|false, slice_us: 100..=100000 (other, batch)}}";

async fn patch_nf(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path((name, nf)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| body_error(e, s.body_limit))?;
    let bad = |what: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", what);
    let parsed: PatchBody = serde_json::from_slice(&body).map_err(|e| {
        bad(format!("request body: {e}; accepted: a JSON object {{\"params\": {{...}}}} with the NF's parameters, or {SCHED_ACCEPTED}"))
    })?;
    let chain = s.daemon.get(&name)?;
    let nfs = chain.descriptor().nfs;
    if !nfs.iter().any(|n| n.name == nf) {
        let known = nfs.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(OpError::UnknownNf { chain: name, nf, known }.into());
    }
    let params = match (parsed.params, parsed.sched) {
        (Some(p), None) => p,
        (None, Some(sched)) => {
            let decl: braid_runtime::SchedDecl = serde_json::from_value(sched)
                .map_err(|e| bad(format!("request body: sched: {e}; accepted: {SCHED_ACCEPTED}")))?;
            return Ok(patch_sched(s, &headers, peer, name, nf, decl).await);
        }
        (None, None) => {
            return Err(bad(format!(
                "request body: neither `params` nor `sched`; accepted: a JSON object {{\"params\": {{...}}}} or {SCHED_ACCEPTED}"
            )))
        }
        (Some(_), Some(_)) => {
            return Err(bad(
                "request body: `params` and `sched` together; change one at a time".to_string(),
            ))
        }
    };
    let (n, f) = (name.clone(), nf.clone());
    let job = ("reconfigure", name, Some(nf));
    Ok(operation(s, &headers, peer, job, move |d, _| {
        let shown = serde_json::to_value(&params).unwrap_or_default();
        let entry = d.reconfigure(&n, &f, params)?;
        Ok(Done {
            status: StatusCode::OK,
            note: format!("changed the parameters of NF `{f}` in chain `{n}`"),
            event: ("chain_reconfigured", json!({ "chain": n, "nf": f, "params": shown })),
            body: entry.to_json(),
        })
    })
    .await)
}

/// `PATCH .../nfs/{nf}` with `{"sched": {...}}`: the operation
/// `reschedule`.
async fn patch_sched(
    s: AppState,
    headers: &HeaderMap,
    peer: Peer,
    name: String,
    nf: String,
    decl: braid_runtime::SchedDecl,
) -> Response {
    let (n, f) = (name.clone(), nf.clone());
    let job = ("reschedule", name, Some(nf));
    operation(s, headers, peer, job, move |d, _| {
        let shown = serde_json::to_value(&decl).unwrap_or_default();
        let (entry, w) = d.set_sched(&n, &f, decl)?;
        let applied = json!({
            "cpus": w.sched.cpus,
            "policy": w.sched.policy.to_string(),
            "nice": w.sched.nice,
            "slice_us": w.sched.slice_us,
            "batch_size": w.batch_size,
            "idle": format!("{:?}", w.idle).to_lowercase(),
            "adapt": w.adapt,
        });
        let mut body = entry.to_json();
        body["worker_sched"] = applied.clone();
        Ok(Done {
            status: StatusCode::OK,
            note: format!("changed the scheduling of NF `{f}`'s worker in chain `{n}`: {applied}"),
            event: (
                "chain_rescheduled",
                json!({ "chain": n, "nf": f, "sched": shown, "worker_sched": applied }),
            ),
            body,
        })
    })
    .await
}

/// `GET /v1/chains/{name}/profile` query: `interval_ms` (10..=60000,
/// default 1000), `calibrate` and `hardware` (true or false).
fn profile_query(query: Option<&str>) -> Result<braid_profile::LiveOptions, ApiError> {
    let mut opts = braid_profile::LiveOptions::default();
    let accepted = "accepted: interval_ms=N (10..=60000, default 1000), calibrate=true|false (default false), hardware=true|false (default true)";
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let bad = |what: String| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("query `{pair}`: {what}; {accepted}"),
            )
        };
        let flag = |v: &str| match v {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(bad(format!("`{v}` is not true or false"))),
        };
        match pair.split_once('=') {
            Some(("interval_ms", v)) => {
                let ms = v.parse::<u64>().map_err(|e| bad(format!("interval_ms `{v}`: {e}")))?;
                if !braid_profile::live::INTERVAL_MS.contains(&ms) {
                    return Err(bad(format!("interval_ms {ms} is out of range 10..=60000")));
                }
                opts.interval = std::time::Duration::from_millis(ms);
            }
            Some(("calibrate", v)) => opts.calibrate = flag(v)?,
            Some(("hardware", v)) => opts.hardware = flag(v)?,
            _ => return Err(bad("unknown parameter".into())),
        }
    }
    Ok(opts)
}

/// A live profile of a running chain over `interval_ms`: per NF at the
/// call edge and per worker thread with its OS counters (the model of
/// `braid profile --json`, mapping `live`). Read-only: the worker's
/// telemetry is copied twice, no control message reaches it.
async fn profile_chain(
    State(s): State<AppState>,
    Path(name): Path<String>,
    uri: axum::http::Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    let opts = profile_query(uri.query())?;
    let chain = s.daemon.get(&name)?;
    if chain.state().0 != "running" {
        return Err(OpError::NotRunning(name).into());
    }
    let d = s.daemon.clone();
    let profile =
        tokio::task::spawn_blocking(move || d.profile(&name, opts)).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("profile: {e}"))
        })??;
    Ok(Json(braid_profile::report::to_json(&profile)))
}

async fn list_operations(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "operations": s.operations.list() }))
}

async fn show_operation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.operations.get(&id).map(|o| Json(json!(o))).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_operation",
            format!("no operation `{id}` (the last {} are kept)", crate::ops::KEEP_OPERATIONS),
        )
    })
}

/// `GET /v1/events` query: `since=N` replays the kept events after
/// sequence number N first.
fn since_of(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut since = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let bad = |what: String| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!(
                    "query `{pair}`: {what}; accepted: since=N (an event's seq, 0 for all kept)"
                ),
            )
        };
        match pair.split_once('=') {
            Some(("since", v)) => {
                since = Some(v.parse::<u64>().map_err(|e| bad(format!("`{v}`: {e}")))?)
            }
            _ => return Err(bad("unknown parameter".into())),
        }
    }
    Ok(since)
}

/// The change feed as JSON lines (`application/jsonl`, chunked): the kept
/// events after `since`, then live ones, until the client goes away or
/// braidd stops. A watcher too slow for the channel gets a `lagged` line
/// with the number it missed.
async fn events(State(s): State<AppState>, uri: axum::http::Uri) -> Result<Response, ApiError> {
    let since = since_of(uri.query())?;
    let w = s.events.watch(since);
    let mut first: Vec<String> = Vec::new();
    if w.missed > 0 {
        first.push(json!({ "type": "lagged", "missed": w.missed }).to_string());
    }
    let last_replayed = w.backlog.last().map(|e| e.seq).unwrap_or(0);
    first.extend(w.backlog.iter().map(|e| e.json.to_string()));
    struct St {
        first: std::vec::IntoIter<String>,
        live: tokio::sync::broadcast::Receiver<crate::ops::Event>,
        last: u64,
        stop: tokio::sync::watch::Receiver<bool>,
    }
    let st = St { first: first.into_iter(), live: w.live, last: last_replayed, stop: s.stopping };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if let Some(line) = st.first.next() {
            return Some((Ok::<_, std::convert::Infallible>(line + "\n"), st));
        }
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if *st.stop.borrow() {
                return None;
            }
            let got = tokio::select! {
                r = st.live.recv() => r,
                _ = st.stop.changed() => return None,
            };
            match got {
                // Already sent from the backlog.
                Ok(e) if e.seq <= st.last => continue,
                Ok(e) => {
                    st.last = e.seq;
                    return Some((Ok(e.json.to_string() + "\n"), st));
                }
                Err(RecvError::Lagged(n)) => {
                    let line = json!({ "type": "lagged", "missed": n }).to_string() + "\n";
                    return Some((Ok(line), st));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/jsonl"), (header::CACHE_CONTROL, "no-cache")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let text = s.metrics.encode().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encoding metrics: {e}"),
        )
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        text,
    )
        .into_response())
}
