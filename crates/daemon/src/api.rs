//! The HTTP/JSON API (`/v1/...`), `/metrics` and `/v1/openapi.json`.
//!
//! Every request passes [`guard`]: the peer's credentials (`SO_PEERCRED`
//! on the unix socket) must be root's or the daemon's own uid, it is
//! counted in `braid_api_requests`, and a mutating call (POST, PATCH,
//! DELETE) is written to the audit log with who and what. Bodies larger
//! than the configured limit are refused with 413 while being read: the
//! daemon never holds more than the limit of one.
//!
//! Mutations run one at a time on tokio's blocking pool (they open
//! sockets and talk to workers); reads never wait for them.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use serde_json::json;

use crate::audit::Audit;
use crate::daemon::{Daemon, OpError};
use crate::metrics::Metrics;

/// Who is on the other end of a unix-socket connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
}

impl Connected<axum::serve::IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Peer {
        match s.io().peer_cred() {
            Ok(c) => Peer { uid: Some(c.uid()), gid: Some(c.gid()), pid: c.pid() },
            // Unknown peers are refused by `guard`.
            Err(_) => Peer::default(),
        }
    }
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.kind, "message": self.message });
        if !self.problems.is_empty() {
            body["problems"] = self.problems.into();
        }
        let note = AuditNote(format!("refused: {}", self.message));
        (self.status, Extension(note), Json(body)).into_response()
    }
}

fn body_error(e: BytesRejection, limit: usize) -> ApiError {
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
    let allowed = matches!(peer.uid, Some(u) if u == 0 || u == s.allowed_uid);
    let response = if allowed {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "peer uid {} is not allowed: only root and uid {} may use this API",
                peer.uid.map_or("unknown".into(), |u| u.to_string()),
                s.allowed_uid
            ),
        )
        .into_response()
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

async fn deploy(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| body_error(e, s.body_limit))?;
    let text = text(&body)?.to_string();
    let t = Instant::now();
    let entry = op(&s, move |d| d.deploy(&text)).await?;
    let nfs = entry.descriptor().nfs.len();
    let note = AuditNote(format!(
        "deployed chain `{}` ({nfs} NFs) in {:.1} ms",
        entry.name(),
        t.elapsed().as_secs_f64() * 1e3
    ));
    Ok((StatusCode::CREATED, Extension(note), Json(entry.to_json())).into_response())
}

async fn delete_chain(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let n = name.clone();
    let report = op(&s, move |d| d.remove(&n)).await?;
    let note = AuditNote(format!("removed chain `{name}`"));
    Ok((Extension(note), Json(report)).into_response())
}

/// `PATCH /v1/chains/{name}/nfs/{nf}` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    params: braid_nf::Params,
}

async fn patch_nf(
    State(s): State<AppState>,
    Path((name, nf)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| body_error(e, s.body_limit))?;
    let parsed: PatchBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("request body: {e}; accepted: a JSON object {{\"params\": {{...}}}} with the NF's parameters"),
        )
    })?;
    let (n, f) = (name.clone(), nf.clone());
    let entry = op(&s, move |d| d.reconfigure(&n, &f, parsed.params)).await?;
    let note = AuditNote(format!("changed the parameters of NF `{nf}` in chain `{name}`"));
    Ok((Extension(note), Json(entry.to_json())).into_response())
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
