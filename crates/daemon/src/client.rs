//! A blocking client of braidd's API, shared by the `braid` command and
//! the tests: over its unix socket ([`Client::new`]), or over TCP with TLS
//! 1.3 and the bearer token ([`Client::tls`]). One HTTP/1.1 request per
//! connection (`Connection: close`); answers are read whole, up to
//! [`MAX_RESPONSE_BYTES`].

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// Largest answer read (a `/metrics` of thousands of NFs fits).
pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// What went wrong talking to braidd. `at` is the socket or the URL.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A `--url`, `--ca` or `--token-file` that cannot be used.
    #[error("{0}")]
    Setup(String),
    #[error("cannot connect to braidd at {at}: {source}")]
    Connect {
        at: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to braidd at {at}: {source}")]
    Io {
        at: String,
        #[source]
        source: std::io::Error,
    },
    #[error("braidd at {at} answered something that is not HTTP: {what}")]
    Protocol { at: String, what: String },
    /// The daemon refused: its status, error kind and message (with every
    /// problem of a descriptor).
    #[error("{message}")]
    Api { status: u16, kind: String, message: String, body: Value },
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A connection to braidd: a unix socket or a TLS stream.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// Where braidd listens.
#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tls(Arc<TlsTarget>),
}

/// braidd's TCP API: where, whom to trust, and the token.
struct TlsTarget {
    /// The URL as given (`https://host:port`), for messages.
    url: String,
    /// `host:port`, to connect to and for the `Host` header.
    authority: String,
    /// The name the certificate must carry (a DNS name or an IP address).
    server_name: rustls::pki_types::ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
    /// Never printed (see the `Debug` of [`Client`]).
    token: String,
}

/// A client of one braidd.
#[derive(Clone)]
pub struct Client {
    target: Target,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs and panics.
        f.debug_struct("Client")
            .field("at", &self.at())
            .field("token", &matches!(self.target, Target::Tls(_)).then_some("<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// A client of the braidd listening on `socket`; requests time out
    /// after 30 s.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client { target: Target::Unix(socket.into()), timeout: Duration::from_secs(30) }
    }

    /// A client of braidd's TCP API at `url` (`https://HOST[:PORT]`, port
    /// 443 if not given), trusting the PEM certificates in `ca` (the
    /// server's own self-signed certificate, or the CA that signed it),
    /// sending the bearer token in `token_file` (its first line; the same
    /// file braidd reads). TLS 1.3 only, as braidd.
    pub fn tls(url: &str, ca: &Path, token_file: &Path) -> Result<Client, ClientError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let setup = |what: String| ClientError::Setup(what);
        let rest = url.strip_prefix("https://").ok_or_else(|| {
            setup(format!("--url {url}: must start with https:// (braidd's TCP API is TLS only)"))
        })?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(setup(format!(
                "--url {url}: expected https://HOST[:PORT] with no path, query or user"
            )));
        }
        // HOST, [IPv6] or either with :PORT.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(|| {
                    setup(format!("--url {url}: `[` without `]` around an IPv6 address"))
                })?;
                (h, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port: u16 = match port {
            None => 443,
            Some(p) => p.parse().map_err(|_| {
                setup(format!("--url {url}: port `{p}` is not a number from 0 to 65535"))
            })?,
        };
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| setup(format!("--url {url}: `{host}` is not a host name or address")))?;
        let authority =
            if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };

        let pem = std::fs::read(ca).map_err(|e| setup(format!("--ca {}: {e}", ca.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert
                .map_err(|e| setup(format!("--ca {}: not PEM certificates: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| setup(format!("--ca {}: unusable certificate: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(setup(format!("--ca {}: no `BEGIN CERTIFICATE` block", ca.display())));
        }
        let text = std::fs::read_to_string(token_file)
            .map_err(|e| setup(format!("--token-file {}: {e}", token_file.display())))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(setup(format!(
                "--token-file {}: the first line must be the token (printable characters, no spaces)",
                token_file.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup(format!("TLS 1.3: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let target = TlsTarget {
            url: url.to_string(),
            authority,
            server_name,
            config: Arc::new(config),
            token,
        };
        Ok(Client { target: Target::Tls(Arc::new(target)), timeout: Duration::from_secs(30) })
    }

    /// Change the time a request may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Where braidd is: its socket's path or its URL.
    pub fn at(&self) -> String {
        match &self.target {
            Target::Unix(p) => p.display().to_string(),
            Target::Tls(t) => t.url.clone(),
        }
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io { at: self.at(), source }
    }

    fn protocol(&self, what: impl Into<String>) -> ClientError {
        ClientError::Protocol { at: self.at(), what: what.into() }
    }

    /// Send one request; any status is returned as it is.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, ClientError> {
        self.request_with(method, path, &[], body)
    }

    fn head(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> String {
        let host = match &self.target {
            Target::Unix(_) => "braidd",
            Target::Tls(t) => &t.authority,
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        if let Target::Tls(t) = &self.target {
            head.push_str(&format!("Authorization: Bearer {}\r\n", t.token));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some((ctype, b)) = body {
            head.push_str(&format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n", b.len()));
        }
        head.push_str("\r\n");
        head
    }

    fn connect(&self) -> Result<Box<dyn Conn>, ClientError> {
        let connect = |source| ClientError::Connect { at: self.at(), source };
        match &self.target {
            Target::Unix(path) => {
                let s = UnixStream::connect(path).map_err(connect)?;
                s.set_read_timeout(Some(self.timeout)).map_err(|e| self.io(e))?;
                s.set_write_timeout(Some(self.timeout)).map_err(|e| self.io(e))?;
                Ok(Box::new(s))
            }
            Target::Tls(t) => {
                let mut last = std::io::Error::other("the host name has no address");
                let mut tcp = None;
                for addr in t.authority.to_socket_addrs().map_err(connect)? {
                    match TcpStream::connect_timeout(&addr, self.timeout) {
                        Ok(s) => {
                            tcp = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let tcp = tcp.ok_or_else(|| connect(last))?;
                tcp.set_read_timeout(Some(self.timeout)).map_err(|e| self.io(e))?;
                tcp.set_write_timeout(Some(self.timeout)).map_err(|e| self.io(e))?;
                let _ = tcp.set_nodelay(true);
                let conn = rustls::ClientConnection::new(t.config.clone(), t.server_name.clone())
                    .map_err(|e| connect(std::io::Error::other(e)))?;
                // The handshake runs with the first write (and fails it
                // when the certificate is not trusted).
                Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        }
    }

    fn send(&self, head: &str) -> Result<Box<dyn Conn>, ClientError> {
        let mut s = self.connect()?;
        s.write_all(head.as_bytes()).map_err(|e| self.io(e))?;
        Ok(s)
    }

    /// Send one request with extra headers; any status is returned as it is.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, ClientError> {
        let mut s = self.send(&self.head(method, path, headers, body))?;
        if let Some((_, b)) = body {
            // The daemon may answer (413) and close before taking it all:
            // its answer is still to be read.
            if let Err(e) = s.write_all(b) {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) {
                    return Err(self.io(e));
                }
            }
        }
        let mut raw = Vec::new();
        match (&mut s).take(MAX_RESPONSE_BYTES).read_to_end(&mut raw) {
            Ok(_) => {}
            // A reset after a complete answer (body refused) is fine, and
            // so is a TLS peer closing without close_notify: the answer's
            // length or last chunk says whether it is whole.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                ) && !raw.is_empty() => {}
            Err(e) => return Err(self.io(e)),
        }
        self.parse(&raw)
    }

    /// Status and headers of an answer's head (without its blank line).
    fn parse_head(&self, head: &[u8]) -> Result<Response, ClientError> {
        let head = std::str::from_utf8(head).map_err(|_| self.protocol("headers not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|_| status_line.starts_with("HTTP/1."))
            .ok_or_else(|| self.protocol(format!("status line `{status_line}`")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Response { status, headers, body: Vec::new() })
    }

    fn parse(&self, raw: &[u8]) -> Result<Response, ClientError> {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| self.protocol("no end of headers"))?;
        let mut r = self.parse_head(&raw[..end])?;
        let rest = &raw[end + 4..];
        r.body = if r.header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            self.dechunk(rest)?
        } else if let Some(n) = r.header("content-length") {
            let n: usize = n.parse().map_err(|_| self.protocol(format!("content-length `{n}`")))?;
            if rest.len() < n {
                return Err(self.protocol(format!("body of {} bytes, {n} announced", rest.len())));
            }
            rest[..n].to_vec()
        } else {
            rest.to_vec()
        };
        Ok(r)
    }

    fn dechunk(&self, mut rest: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| self.protocol("chunk size line"))?;
            let line =
                std::str::from_utf8(&rest[..eol]).map_err(|_| self.protocol("chunk size"))?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| self.protocol(format!("chunk size `{line}`")))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                return Ok(out);
            }
            if rest.len() < size + 2 {
                return Err(self.protocol("truncated chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }

    /// A request whose 2xx answer is JSON; other statuses become
    /// [`ClientError::Api`].
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Value, ClientError> {
        let r = self.request(method, path, body)?;
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into_owned()));
        if (200..300).contains(&r.status) {
            return Ok(v);
        }
        let kind = v["error"].as_str().unwrap_or("http").to_string();
        let mut message = v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body)));
        if let Some(ps) = v["problems"].as_array() {
            // The message already lists them for descriptors; keep it.
            if !message.contains('\n') {
                for p in ps {
                    message.push('\n');
                    message.push_str(p["text"].as_str().unwrap_or_default());
                }
            }
        }
        Err(ClientError::Api { status: r.status, kind, message, body: v })
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Value, ClientError> {
        self.json("GET", "/v1/status", None)
    }

    /// `GET /v1/chains`: every chain.
    pub fn chains(&self) -> Result<Vec<Value>, ClientError> {
        let v = self.json("GET", "/v1/chains", None)?;
        Ok(v["chains"].as_array().cloned().unwrap_or_default())
    }

    /// `GET /v1/chains/{name}`.
    pub fn chain(&self, name: &str) -> Result<Value, ClientError> {
        self.json("GET", &format!("/v1/chains/{}", encode(name)), None)
    }

    /// `POST /v1/chains`: deploy a descriptor (YAML or JSON text).
    pub fn deploy(&self, descriptor: &str) -> Result<Value, ClientError> {
        self.json("POST", "/v1/chains", Some(("application/yaml", descriptor.as_bytes())))
    }

    /// `PATCH /v1/chains/{name}/nfs/{nf}`: new parameters for an NF.
    pub fn reconfigure(&self, name: &str, nf: &str, params: &Value) -> Result<Value, ClientError> {
        self.patch_nf(name, nf, &serde_json::json!({ "params": params }))
    }

    /// `PATCH /v1/chains/{name}/nfs/{nf}` with `body` (`params` or `sched`).
    fn patch_nf(&self, name: &str, nf: &str, body: &Value) -> Result<Value, ClientError> {
        let body = body.to_string();
        self.json(
            "PATCH",
            &format!("/v1/chains/{}/nfs/{}", encode(name), encode(nf)),
            Some(("application/json", body.as_bytes())),
        )
    }

    /// `POST /v1/chains/{name}/nfs/{nf}/steer`: move hash buckets on a
    /// `steer` NF (and inject a drain marker); what moved.
    pub fn steer(
        &self,
        name: &str,
        nf: &str,
        req: &crate::migration::SteerRequest,
    ) -> Result<Value, ClientError> {
        let body = serde_json::to_string(req).unwrap_or_default();
        self.json(
            "POST",
            &format!("/v1/chains/{}/nfs/{}/steer", encode(name), encode(nf)),
            Some(("application/json", body.as_bytes())),
        )
    }

    /// `PATCH /v1/chains/{name}/nfs/{nf}` with `{"sched": ...}`: a new
    /// `sched` block for the NF (its worker's scheduling, batch size, idle
    /// policy, EEVDF slice), applied live. The chain, with `worker_sched`.
    pub fn set_sched(&self, name: &str, nf: &str, sched: &Value) -> Result<Value, ClientError> {
        self.patch_nf(name, nf, &serde_json::json!({ "sched": sched }))
    }

    /// `GET /v1/chains/{name}/profile?interval_ms=N&calibrate=B`: a live
    /// profile over `interval_ms` (the answer waits that long; the
    /// client's timeout is stretched to cover it). The JSON of
    /// `braid_profile::Profile`.
    pub fn profile(
        &self,
        name: &str,
        interval_ms: u64,
        calibrate: bool,
    ) -> Result<Value, ClientError> {
        let c = Client {
            target: self.target.clone(),
            timeout: self.timeout + Duration::from_millis(interval_ms),
        };
        c.json(
            "GET",
            &format!(
                "/v1/chains/{}/profile?interval_ms={interval_ms}&calibrate={calibrate}",
                encode(name)
            ),
            None,
        )
    }

    /// `DELETE /v1/chains/{name}`: its final counters.
    pub fn remove(&self, name: &str) -> Result<Value, ClientError> {
        self.json("DELETE", &format!("/v1/chains/{}", encode(name)), None)
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let r = self.request("GET", "/metrics", None)?;
        if r.status != 200 {
            return Err(ClientError::Api {
                status: r.status,
                kind: "http".into(),
                message: String::from_utf8_lossy(&r.body).into_owned(),
                body: Value::Null,
            });
        }
        String::from_utf8(r.body).map_err(|_| self.protocol("metrics not UTF-8"))
    }

    /// `GET /v1/operations/{id}`.
    pub fn operation(&self, id: &str) -> Result<Value, ClientError> {
        self.json("GET", &format!("/v1/operations/{}", encode(id)), None)
    }

    /// `POST path` with `body` (of `content_type`) and `Prefer:
    /// respond-async`: the id of the operation braidd accepted (202).
    fn post_async(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<String, ClientError> {
        let r = self.request_with(
            "POST",
            path,
            &[("Prefer", "respond-async")],
            Some((content_type, body)),
        )?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status != 202 {
            return Err(ClientError::Api {
                status: r.status,
                kind: v["error"].as_str().unwrap_or("http").to_string(),
                message: v["message"].as_str().unwrap_or_default().to_string(),
                body: v,
            });
        }
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.protocol("202 without an operation id"))
    }

    /// `POST /v1/chains` with `Prefer: respond-async`: the operation's id
    /// (follow it with [`Client::operation`] or [`Client::wait`]).
    pub fn deploy_async(&self, descriptor: &str) -> Result<String, ClientError> {
        self.post_async("/v1/chains", "application/yaml", descriptor.as_bytes())
    }

    /// `POST /v1/chains/{name}/nfs/{nf}/migrate` with `Prefer:
    /// respond-async`: the operation's id (its `progress` shows the
    /// migration's phase while it runs; its `result` is the summary).
    pub fn migrate_async(&self, name: &str, nf: &str, req: &Value) -> Result<String, ClientError> {
        let path = format!("/v1/chains/{}/nfs/{}/migrate", encode(name), encode(nf));
        self.post_async(&path, "application/json", req.to_string().as_bytes())
    }

    /// `POST /v1/chains/{name}/nfs/{nf}/scale` with `Prefer:
    /// respond-async`: the operation's id (its `progress` shows the
    /// migration's phase and the steps done; its `result` is the summary;
    /// follow it with [`crate::scale::follow`]).
    pub fn scale_async(
        &self,
        name: &str,
        nf: &str,
        req: &crate::scale::ScaleRequest,
    ) -> Result<String, ClientError> {
        let path = format!("/v1/chains/{}/nfs/{}/scale", encode(name), encode(nf));
        let body = serde_json::to_vec(req).map_err(|e| {
            ClientError::Setup(format!("the scale request does not encode as JSON: {e}"))
        })?;
        self.post_async(&path, "application/json", &body)
    }

    /// Follow operation `id` until it is no longer running (polling every
    /// 20 ms, at most `timeout`); the operation.
    pub fn wait(&self, id: &str, timeout: Duration) -> Result<Value, ClientError> {
        let t = std::time::Instant::now();
        loop {
            let op = self.operation(id)?;
            if op["state"] != "running" || t.elapsed() > timeout {
                return Ok(op);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /v1/events`: the change feed, event by event (after sequence
    /// number `since` when given, else only new ones). The iterator blocks
    /// for the next event up to the client's timeout.
    pub fn events(&self, since: Option<u64>) -> Result<EventStream, ClientError> {
        let path = match since {
            Some(n) => format!("/v1/events?since={n}"),
            None => "/v1/events".to_string(),
        };
        let s = self.send(&self.head("GET", &path, &[], None))?;
        let mut r = std::io::BufReader::new(s);
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut line = Vec::new();
            let n =
                std::io::BufRead::read_until(&mut r, b'\n', &mut line).map_err(|e| self.io(e))?;
            if n == 0 || head.len() > 64 * 1024 {
                return Err(self.protocol("no end of headers"));
            }
            head.extend_from_slice(&line);
        }
        let resp = self.parse_head(&head[..head.len() - 4])?;
        if resp.status != 200 {
            let mut rest = Vec::new();
            let _ = (&mut r).take(MAX_RESPONSE_BYTES).read_to_end(&mut rest);
            let mut all = head;
            all.extend_from_slice(&rest);
            let full = self.parse(&all)?;
            let v: Value = serde_json::from_slice(&full.body).unwrap_or(Value::Null);
            return Err(ClientError::Api {
                status: full.status,
                kind: v["error"].as_str().unwrap_or("http").to_string(),
                message: v["message"].as_str().unwrap_or_default().to_string(),
                body: v,
            });
        }
        if !resp.header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            return Err(self.protocol("the event stream is not chunked"));
        }
        Ok(EventStream { reader: r, pending: Vec::new(), at: self.at(), done: false })
    }

    /// `GET /v1/openapi.json`.
    pub fn openapi(&self) -> Result<Value, ClientError> {
        self.json("GET", "/v1/openapi.json", None)
    }
}

/// The event stream of [`Client::events`]: one JSON value per event.
pub struct EventStream {
    reader: std::io::BufReader<Box<dyn Conn>>,
    /// Bytes of an event line not complete yet.
    pending: Vec<u8>,
    at: String,
    done: bool,
}

impl EventStream {
    fn fail(&mut self, what: String) -> Option<Result<Value, ClientError>> {
        self.done = true;
        Some(Err(ClientError::Protocol { at: self.at.clone(), what }))
    }
}

impl Iterator for EventStream {
    type Item = Result<Value, ClientError>;

    /// The next event; None when braidd ended the stream.
    fn next(&mut self) -> Option<Self::Item> {
        use std::io::BufRead;
        while !self.done {
            if let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=nl).collect();
                return Some(serde_json::from_slice(&line).map_err(|e| ClientError::Protocol {
                    at: self.at.clone(),
                    what: format!("event line: {e}"),
                }));
            }
            let mut size_line = String::new();
            match self.reader.read_line(&mut size_line) {
                Ok(0) => return self.fail("the stream ended inside a chunk".into()),
                Ok(_) => {}
                Err(source) => {
                    self.done = true;
                    return Some(Err(ClientError::Io { at: self.at.clone(), source }));
                }
            }
            let size =
                match usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16) {
                    Ok(n) => n,
                    Err(_) => return self.fail(format!("chunk size `{}`", size_line.trim())),
                };
            if size == 0 {
                self.done = true;
                return None;
            }
            if size > MAX_RESPONSE_BYTES as usize {
                return self.fail(format!("chunk of {size} bytes"));
            }
            let mut chunk = vec![0u8; size + 2];
            if let Err(source) = self.reader.read_exact(&mut chunk) {
                self.done = true;
                return Some(Err(ClientError::Io { at: self.at.clone(), source }));
            }
            self.pending.extend_from_slice(&chunk[..size]);
        }
        None
    }
}

/// Percent-encode a path segment (names may hold anything).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value of sample `name{labels}` in OpenMetrics `text`, where every
/// `key="value"` of `labels` must appear among the sample's labels.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (labelset, value) = if let Some(r) = rest.strip_prefix('{') {
            let close = r.find('}')?;
            (&r[..close], r[close + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            return None;
        };
        let all = labels.iter().all(|(k, v)| labelset.contains(&format!("{k}=\"{v}\"")));
        if all {
            value.split(' ').next()?.parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_with_length_or_chunks() {
        let c = Client::new("/nonexistent");
        let r = c.parse(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice(), r.header("x-a")), (201, &b"{}"[..], Some("b")));
        let r = c
            .parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(c.parse(b"SSH-2.0\r\n\r\n").unwrap_err().to_string().contains("status line"));
        assert!(c.parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
    }

    #[test]
    fn metric_values_are_found_by_name_and_labels() {
        let t = "# TYPE x counter\nx_total{chain=\"a\",nf=\"f\"} 7\nx_total{chain=\"b\",nf=\"f\"} 9\ny 3\n";
        assert_eq!(metric_value(t, "x_total", &[("chain", "b")]), Some(9.0));
        assert_eq!(metric_value(t, "x_total", &[("nf", "f")]), Some(7.0));
        assert_eq!(metric_value(t, "y", &[]), Some(3.0));
        assert_eq!(metric_value(t, "x_total", &[("chain", "c")]), None);
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn no_daemon_is_a_connect_error_naming_the_socket() {
        let e = Client::new("/nonexistent/braidd.sock").status().unwrap_err().to_string();
        assert!(e.starts_with("cannot connect to braidd at /nonexistent/braidd.sock"), "{e}");
    }
}
