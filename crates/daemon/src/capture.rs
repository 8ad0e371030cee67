//! `POST /v1/chains/{name}/capture`: mirror the packets entering, leaving
//! or dropped by one NF of a running chain, streamed as pcapng
//! (`braid capture --chain NAME`, docs/capture.md).
//!
//! The request body is a JSON [`CaptureRequest`] (`nf`, `points`,
//! `filter`, `count`, `seconds`). The tap is installed before the answer
//! starts, so a bad filter, an unknown NF or a chain that is not running is
//! an ordinary JSON error (400, 404, 409); then the answer is `200` with
//! `Content-Type: application/x-pcapng` and a body that streams until the
//! packet count or the time limit is reached, the chain stops, or the
//! client closes the connection (the tap is removed in every case). The
//! capture runs on tokio's blocking pool; the worker never waits for it
//! (see [`braid_dataplane::tap`]).
//!
//! On a kernel chain (`crate::kernel`) the NF's stage of the XDP program
//! mirrors the frames into its tap ring ([`braid_io::xdp_tap`], as
//! `braid capture` against `braid deploy`); the filter is applied here.
//! One capture at a time per kernel chain; the stream also ends when the
//! chain is removed or braidd stops.
//!
//! On a `mapping: processes` chain the NF's process taps its own worker
//! and streams the pcapng over its control socket
//! (`braid_runtime::nf_control`); braidd relays it.

use std::io::{Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use braid_dataplane::tap::{CaptureError, CaptureRequest, CaptureSession, CaptureTarget};
use braid_dataplane::{ControlError, GraphError};

use crate::api::{ApiError, AppState, AuditNote};
use crate::daemon::OpError;

/// The media type of the streamed capture.
pub const PCAPNG_MEDIA_TYPE: &str = "application/x-pcapng";

/// The handler (see the module documentation).
pub async fn capture(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let body = body.map_err(|e| bad(format!("capture request body: {e}")))?;
    let req: CaptureRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(format!("capture request (JSON: nf, points, filter, count, seconds): {e}"))
    })?;
    let entry = s.daemon.get(&name)?;
    let target = match (entry.live(), entry.kernel(), entry.state().0) {
        // The worker that runs the NF (a threads chain has one per NF);
        // an unknown NF goes to the first, which refuses it by name.
        (Some(l), _, "running") => {
            CaptureTarget::Worker(l.worker_of(&req.nf).unwrap_or(l.worker()).clone())
        }
        (None, Some(k), "running") => {
            let nfs = k.descriptor().nfs;
            let Some(nf_index) = nfs.iter().position(|n| n.name == req.nf) else {
                let known = nfs.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ");
                return Err(OpError::UnknownNf { chain: name, nf: req.nf, known }.into());
            };
            CaptureTarget::Xdp(k.tap_target(nf_index).map_err(OpError::KernelControl)?)
        }
        (None, None, "running") if entry.procs().is_some() => {
            return capture_in_process(entry.clone(), name, req).await;
        }
        _ => return Err(OpError::NotRunning(name).into()),
    };
    let kernel_chain = entry.kernel().is_some().then(|| entry.clone());
    let nf = req.nf.clone();
    let started = tokio::task::spawn_blocking(move || CaptureSession::start_on(target, req))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("capture: {e}"))
        })?;
    let session = started.map_err(|e| {
        let (status, kind) = match &e {
            CaptureError::Filter(_) => (StatusCode::BAD_REQUEST, "bad_filter"),
            CaptureError::Seconds(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            CaptureError::Control {
                source: ControlError::Graph(GraphError::NoStageNamed(_)),
                ..
            } => (StatusCode::NOT_FOUND, "unknown_nf"),
            // Another capture holds the program's tap, or the kernel said no.
            CaptureError::Xdp { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "refused_by_kernel"),
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "refused_by_worker"),
        };
        ApiError::new(status, kind, e.to_string())
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    // The client leaving drops the body's receiver: the session then ends
    // even while no packet comes to write (checked every 200 ms, without
    // holding a sender that would keep the body open). A kernel chain has
    // no worker to say it ended: its removal ends the session here.
    let ended = Arc::new(AtomicBool::new(false));
    let (weak, flag) = (tx.downgrade(), ended.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if kernel_chain.as_ref().is_some_and(|c| c.state().0 != "running") {
                break;
            }
            match weak.upgrade() {
                Some(s) if !s.is_closed() => {}
                _ => break,
            }
        }
        flag.store(true, Ordering::Relaxed);
    });
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(16 << 10, ChannelWriter(tx));
        // Ends by count, time, the chain stopping, or the client leaving:
        // the session removes its tap.
        let _ = session.run(out, &ended);
    });
    Ok(pcapng_answer(format!("capture of NF `{nf}` in chain `{name}`"), rx))
}

/// The `200` whose body streams the pcapng chunks `rx` brings, with the
/// audit log's note.
fn pcapng_answer(note: String, rx: tokio::sync::mpsc::Receiver<Chunk>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, PCAPNG_MEDIA_TYPE)],
        Extension(AuditNote(note)),
        Body::from_stream(ChunkStream(rx)),
    )
        .into_response()
}

/// A capture of an NF of a `mapping: processes` chain: the NF's process
/// taps its worker and streams pcapng over its control socket
/// (`braid_runtime::nf_control`); braidd relays the bytes. The client
/// leaving closes that connection, which ends the capture in the process.
async fn capture_in_process(
    entry: Arc<crate::daemon::Deployed>,
    name: String,
    req: CaptureRequest,
) -> Result<Response, ApiError> {
    let (nf, chain) = (req.nf.clone(), name.clone());
    let started = tokio::task::spawn_blocking(move || {
        entry.procs().map(|p| p.start_capture(&req)).ok_or(OpError::NotRunning(name.clone()))
    })
    .await
    .map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("capture: {e}"))
    })??;
    let mut stream = match started {
        Err(braid_runtime::live::LiveError::UnknownNf { chain, nf, known }) => {
            return Err(OpError::UnknownNf { chain, nf, known }.into())
        }
        Err(e) => return Err(OpError::Control(e).into()),
        Ok(Err((kind, message))) => {
            use braid_runtime::nf_control::CaptureRefusal;
            let (status, kind) = match kind {
                CaptureRefusal::Filter => (StatusCode::BAD_REQUEST, "bad_filter"),
                CaptureRefusal::Request => (StatusCode::BAD_REQUEST, "bad_request"),
                CaptureRefusal::Worker => (StatusCode::UNPROCESSABLE_ENTITY, "refused_by_worker"),
            };
            return Err(ApiError::new(status, kind, message));
        }
        Ok(Ok(stream)) => stream,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::task::spawn_blocking(move || {
        // Wakes every 200 ms to see whether the client left (its receiver
        // closed) while no packet comes; dropping the stream then ends the
        // capture in the NF process.
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(200)));
        let mut out = ChannelWriter(tx);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if out.0.is_closed() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    Ok(pcapng_answer(format!("capture of NF `{nf}` (its process) in chain `{chain}`"), rx))
}

type Chunk = Result<Bytes, std::io::Error>;

/// The blocking capture's writes, as chunks for the response body.
struct ChannelWriter(tokio::sync::mpsc::Sender<Chunk>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.blocking_send(Ok(Bytes::copy_from_slice(buf))).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the capture's client went away")
        })?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct ChunkStream(tokio::sync::mpsc::Receiver<Chunk>);

impl futures_core::Stream for ChunkStream {
    type Item = Chunk;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        self.0.poll_recv(cx)
    }
}

/// Why a capture through braidd did not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureClientError {
    #[error("{socket}: {what}: {source}")]
    Io {
        socket: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("braidd refused the capture ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("braidd's answer is not HTTP: {0}")]
    Protocol(String),
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Ask braidd on `socket` to capture `req` in chain `chain`; on success,
/// the stream the pcapng bytes arrive on (until it closes).
pub fn request(
    socket: &Path,
    chain: &str,
    req: &CaptureRequest,
) -> Result<std::os::unix::net::UnixStream, CaptureClientError> {
    let io = |what| {
        let socket = socket.display().to_string();
        move |source| CaptureClientError::Io { socket, what, source }
    };
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(io("connecting"))?;
    let body = serde_json::to_vec(req).expect("a capture request serializes");
    // HTTP/1.0: the body is delimited by the end of the connection, which
    // is how a stream of unknown length ends.
    write!(
        s,
        "POST /v1/chains/{}/capture HTTP/1.0\r\nHost: braidd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        encode(chain),
        body.len()
    )
    .and_then(|_| s.write_all(&body))
    .map_err(io("sending the request"))?;
    // The head, byte by byte: the body must stay in the socket.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).map_err(io("reading the answer"))? == 0 {
            return Err(CaptureClientError::Protocol("the connection closed in the head".into()));
        }
        head.push(byte[0]);
        if head.len() > 64 << 10 {
            return Err(CaptureClientError::Protocol("head longer than 64 KiB".into()));
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status: u16 =
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| {
            CaptureClientError::Protocol(head.lines().next().unwrap_or("").into())
        })?;
    if status != 200 {
        let mut rest = Vec::new();
        let _ = s.take(1 << 20).read_to_end(&mut rest);
        let v: Option<serde_json::Value> = serde_json::from_slice(&rest).ok();
        let message = v
            .as_ref()
            .and_then(|v| v["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&rest).into_owned());
        return Err(CaptureClientError::Refused { status, message });
    }
    Ok(s)
}
