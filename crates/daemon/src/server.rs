//! Binding the listeners and serving the API until shutdown.
//!
//! braidd runs its own connection loop (hyper's HTTP/1.1 server under the
//! axum router) rather than `axum::serve`, for two limits a daemon needs:
//!
//! - a **connection limit**: at most `max_connections` connections are
//!   open at once (across the unix socket and TCP). When a new one comes
//!   and every slot is taken, the oldest connection that is not in the
//!   middle of a request (idle, trickling its request head, or in its TLS
//!   handshake) is closed to make room; if every connection is serving a
//!   request, the new one waits in the kernel's accept queue. Idle
//!   connections therefore never lock a real client out, and the daemon's
//!   memory for connections is bounded;
//! - a **header read timeout**: a connection must deliver a complete
//!   request head within `header_timeout` of connecting (or of its previous
//!   answer, when kept alive), or it is closed. On TCP the TLS handshake
//!   must also complete within it. Idle or trickling connections
//!   (slowloris) therefore hold a slot for a bounded time.
//!
//! Each connection's request carries a [`ConnectInfo<Peer>`]: the unix
//! peer's credentials (`SO_PEERCRED`), or the TCP peer's address.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};

use crate::api::Peer;

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{path}: another braidd answers on this socket; stop it first")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotSocket { path: PathBuf },
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Tls { path: PathBuf, what: String },
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> BindError {
    let path = path.to_path_buf();
    move |source| BindError::Io { path, what, source }
}

/// Bind `path` with permission bits `mode`. A stale socket file (nobody
/// answers on it: braidd was killed) is replaced; a live one is an error.
/// The parent directory is created (0755) if missing. Must be called
/// inside a tokio runtime.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotSocket { path: path.to_path_buf() });
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse { path: path.to_path_buf() });
        }
        std::fs::remove_file(path).map_err(io(path, "removing the stale socket"))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir, "creating the socket's directory"))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io(dir, "setting the directory's mode"))?;
        }
    }
    let listener = UnixListener::bind(path).map_err(io(path, "binding"))?;
    // Until this chmod the socket has the umask's bits; peers are also
    // checked by their credentials, so that window admits no one else.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(path, "setting the socket's mode"))?;
    Ok(listener)
}

/// A TLS 1.3 server configuration from a PEM certificate chain and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, BindError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |path: &Path, what: String| BindError::Tls { path: path.to_path_buf(), what };
    let cert_pem = std::fs::read(cert).map_err(io(cert, "reading the TLS certificate"))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(tls(cert, "no `BEGIN CERTIFICATE` block".into()));
    }
    let key_pem = std::fs::read(key).map_err(io(key, "reading the TLS private key"))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| tls(key, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(cert, format!("TLS 1.3: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| tls(key, format!("does not fit the certificate: {e}")))?;
    Ok(Arc::new(config))
}

/// Connection limits, shared by every listener of one daemon.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Time to deliver a complete request head (and, on TCP, to finish the
    /// TLS handshake).
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_connections: 256, header_timeout: Duration::from_secs(10) }
    }
}

/// What the server knows of one open connection.
#[derive(Default)]
struct Conn {
    /// A request is being answered (its head arrived, its answer is not
    /// finished).
    busy: std::sync::atomic::AtomicUsize,
    /// Asked to close to make room.
    evicted: std::sync::atomic::AtomicBool,
    kill: tokio::sync::Notify,
}

/// A slot: the permit and the connection's entry, removed on drop.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    id: u64,
    conn: Arc<Conn>,
    open: Arc<std::sync::Mutex<Open>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.open).conns.remove(&self.id);
    }
}

#[derive(Default)]
struct Open {
    next: u64,
    conns: std::collections::BTreeMap<u64, Arc<Conn>>,
    evictions: u64,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Map inserts and removes only: consistent after a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves connections under [`Limits`] until shut down; one per daemon,
/// shared (cloned) by its listeners.
#[derive(Clone)]
pub struct Server {
    limits: Limits,
    slots: Arc<Semaphore>,
    open: Arc<std::sync::Mutex<Open>>,
    /// Becomes true at shutdown: listeners stop accepting, connections
    /// finish what they serve and close.
    stop: watch::Receiver<bool>,
}

/// Tells a [`Server`] to shut down.
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    /// Stop accepting; connections answer what they are serving and close.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// A receiver that turns true at shutdown (for long answers such as
    /// the event stream, which must end for connections to close).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

impl Server {
    /// A server with `limits`, and the handle that stops it.
    pub fn new(limits: Limits) -> (Server, Shutdown) {
        let (tx, stop) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        (Server { limits, slots, stop, open: Arc::default() }, Shutdown { tx })
    }

    /// Connections closed so far to make room for new ones.
    pub fn evictions(&self) -> u64 {
        lock(&self.open).evictions
    }

    /// Connections being served now.
    pub fn connections(&self) -> usize {
        self.limits.max_connections - self.slots.available_permits()
    }

    async fn stopped(mut stop: watch::Receiver<bool>) {
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Ask the oldest connection that is not serving a request to close.
    fn evict_one(&self) {
        use std::sync::atomic::Ordering;
        let mut open = lock(&self.open);
        let victim = open
            .conns
            .values()
            .find(|c| c.busy.load(Ordering::Acquire) == 0 && !c.evicted.load(Ordering::Acquire));
        if let Some(c) = victim.cloned() {
            c.evicted.store(true, Ordering::Release);
            c.kill.notify_one();
            open.evictions += 1;
        }
    }

    /// A slot for a connection just accepted: a free one, or one freed by
    /// closing the oldest connection not serving a request (again every
    /// 100 ms while none is free); None at shutdown.
    async fn admit(&self) -> Option<Slot> {
        let permit = loop {
            if let Ok(p) = self.slots.clone().try_acquire_owned() {
                break p;
            }
            self.evict_one();
            tokio::select! {
                p = self.slots.clone().acquire_owned() => break p.ok()?,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = Server::stopped(self.stop.clone()) => return None,
            }
        };
        let conn = Arc::new(Conn::default());
        let mut open = lock(&self.open);
        let id = open.next;
        open.next += 1;
        open.conns.insert(id, conn.clone());
        Some(Slot { _permit: permit, id, conn, open: self.open.clone() })
    }

    /// Accept connections from `accept` until shutdown, serving each (after
    /// `setup`, the TLS handshake) on its own task.
    async fn accept_loop<S, A, F, IO>(&self, mut accept: A, app: axum::Router, setup: S)
    where
        A: FnMut() -> F,
        F: Future<Output = std::io::Result<(S::Raw, Peer)>>,
        S: Setup<Io = IO>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        loop {
            let accepted = tokio::select! {
                a = accept() => a,
                _ = Server::stopped(self.stop.clone()) => return,
            };
            let (raw, peer) = match accepted {
                Ok(v) => v,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            };
            let Some(slot) = self.admit().await else { return };
            let this = self.clone();
            let app = app.clone();
            let setup = setup.clone();
            tokio::spawn(async move {
                let conn = slot.conn.clone();
                let timeout = this.limits.header_timeout;
                let ready = tokio::select! {
                    r = tokio::time::timeout(timeout, setup.setup(raw)) => r,
                    _ = conn.kill.notified() => return,
                };
                match ready {
                    Ok(Ok(io)) => this.connection(io, peer, app, &conn).await,
                    Ok(Err(e)) => tracing::debug!(?peer, error = %e, "connection set-up failed"),
                    Err(_) => tracing::debug!(?peer, "connection set-up timed out"),
                }
                drop(slot);
            });
        }
    }

    /// Serve the unix socket until shutdown.
    pub async fn serve_unix(self, listener: UnixListener, app: axum::Router) {
        let accept = || async {
            let (stream, _) = listener.accept().await?;
            let peer = match stream.peer_cred() {
                Ok(c) => Peer { uid: Some(c.uid()), gid: Some(c.gid()), pid: c.pid(), addr: None },
                // Unknown peers are refused by the API's guard.
                Err(_) => Peer::default(),
            };
            Ok((stream, peer))
        };
        self.accept_loop(accept, app, Plain::<tokio::net::UnixStream>::default()).await
    }

    /// Serve TLS on `listener` until shutdown.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        app: axum::Router,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        self.accept_loop(|| tcp_accept(&listener), app, Tls(acceptor)).await
    }

    /// Serve plain HTTP on `listener` (the read-only metrics listener).
    pub async fn serve_tcp(self, listener: TcpListener, app: axum::Router) {
        self.accept_loop(|| tcp_accept(&listener), app, Plain::<tokio::net::TcpStream>::default())
            .await
    }

    /// Wait until every connection has closed (after [`Shutdown::trigger`]),
    /// at most `grace`; how many were still open then.
    pub async fn drained(&self, grace: Duration) -> usize {
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        match tokio::time::timeout(grace, self.slots.acquire_many(all)).await {
            Ok(_) => 0,
            Err(_) => self.connections(),
        }
    }

    /// One HTTP/1.1 connection: requests answered by `app` until the peer
    /// closes, the header timeout expires, or shutdown.
    async fn connection<IO>(&self, io: IO, peer: Peer, app: axum::Router, conn: &Arc<Conn>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        use hyper_util::rt::{TokioIo, TokioTimer};
        let flags = conn.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            // Busy from the complete request head until the answer's head
            // is ready (a streamed body, such as the event stream, then
            // counts as idle: it is closed first when room is needed).
            let busy = Busy::new(flags.clone());
            async move {
                let r = tower::Service::call(&mut app, req.map(axum::body::Body::new)).await;
                drop(busy);
                r
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(self.limits.header_timeout);
        let conn_flags = conn;
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut stop = self.stop.clone();
        let mut stopping = *stop.borrow();
        if stopping {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended");
                    }
                    return;
                }
                changed = stop.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                    if changed.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
                _ = conn_flags.kill.notified() => {
                    use std::sync::atomic::Ordering;
                    if conn_flags.busy.load(Ordering::Acquire) > 0 {
                        // A request began meanwhile: it is answered; the
                        // new connection waits for another slot.
                        conn_flags.evicted.store(false, Ordering::Release);
                        continue;
                    }
                    tracing::debug!(?peer, "closed to make room for a new connection");
                    return;
                }
            }
        }
    }
}

fn tcp_peer(addr: SocketAddr) -> Peer {
    Peer { uid: None, gid: None, pid: None, addr: Some(addr) }
}

async fn tcp_accept(l: &TcpListener) -> std::io::Result<(tokio::net::TcpStream, Peer)> {
    let (stream, addr) = l.accept().await?;
    let _ = stream.set_nodelay(true);
    Ok((stream, tcp_peer(addr)))
}

/// Marks a connection busy while it lives.
struct Busy(Arc<Conn>);

impl Busy {
    fn new(c: Arc<Conn>) -> Busy {
        c.busy.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Busy(c)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What turns an accepted stream into the stream HTTP is served on.
trait Setup: Clone + Send + Sync + 'static {
    type Raw: Send + 'static;
    type Io;
    fn setup(&self, raw: Self::Raw) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

/// Nothing to set up: HTTP directly on the stream.
struct Plain<T>(std::marker::PhantomData<fn() -> T>);

impl<T> Default for Plain<T> {
    fn default() -> Self {
        Plain(std::marker::PhantomData)
    }
}

impl<T> Clone for Plain<T> {
    fn clone(&self) -> Self {
        Plain::default()
    }
}

impl<T: Send + 'static> Setup for Plain<T> {
    type Raw = T;
    type Io = T;
    async fn setup(&self, raw: T) -> std::io::Result<T> {
        Ok(raw)
    }
}

/// A TLS handshake (bounded by the header timeout).
#[derive(Clone)]
struct Tls(tokio_rustls::TlsAcceptor);

impl Setup for Tls {
    type Raw = tokio::net::TcpStream;
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    async fn setup(&self, raw: Self::Raw) -> std::io::Result<Self::Io> {
        self.0.accept(raw).await
    }
}

/// Accept failed: out of descriptors or memory, or an aborted connection.
/// Pause briefly so that a persistent condition does not spin.
async fn accept_error(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Serve `app` on `listener` with default limits until `shutdown`
/// completes; requests in flight are answered first (for tests and
/// embedders that need no more control).
pub async fn serve(
    listener: UnixListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (server, stop) = Server::new(Limits::default());
    let serving = tokio::spawn(server.clone().serve_unix(listener, app));
    shutdown.await;
    stop.trigger();
    let _ = serving.await;
    server.drained(Duration::from_secs(30)).await;
    Ok(())
}
