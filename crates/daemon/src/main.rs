//! `braidd`: the per-host braid daemon. See `docs/daemon.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use braid_daemon::api::{router, AppState};
use braid_daemon::audit::Audit;
use braid_daemon::auth::{MigrateKey, Token};
use braid_daemon::config::{Config, LogFormat};
use braid_daemon::daemon::Daemon;
use braid_daemon::server::{Limits, Server};
use braid_daemon::store::Store;
use braid_dataplane::Idle;
use braid_runtime::live::StartOptions;
use clap::Parser;

/// braidd: deploys, runs and reports braid chains on this host, driven
/// through an HTTP/JSON API on a unix socket (`braid daemon ...` is its
/// client). Declared chains are kept in STATE_DIR/state.redb and started
/// again when braidd starts; SIGTERM or SIGINT stops every chain and
/// removes the socket. Options given here override the configuration file.
#[derive(Parser, Debug)]
#[command(name = "braidd", version)]
struct Args {
    /// TOML configuration file; its keys are the long option names with `_`
    /// (socket, socket_mode, state_dir, audit_log, log_format, log_level,
    /// max_body_bytes, body_timeout_ms, control_timeout_ms, idle, metrics_listen, migrate_listen, migrate_key_file, checkpoint_interval_ms,
    /// listen, tls_cert, tls_key, token_file, max_connections, header_timeout_ms).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unix socket of the API [default: /run/braid/braidd.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Permission bits of the socket, octal (600: this user only; 660: its
    /// group may connect, but peers must still be root or this uid)
    /// [default: 600].
    #[arg(long, value_parser = parse_mode)]
    socket_mode: Option<u32>,
    /// Where the store and the audit log live [default: /var/lib/braid].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Audit log (JSON lines) [default: STATE_DIR/audit.log].
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Log line format on standard error [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter (`warn`, `info`, `debug`, `braidd::audit=info`)
    /// [default: warn].
    #[arg(long)]
    log_level: Option<String>,
    /// Largest request body, bytes [default: 1048576].
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Time a request body may take to arrive whole, ms (408 after it)
    /// [default: 30000].
    #[arg(long)]
    body_timeout_ms: Option<u64>,
    /// How long a chain's worker may take to answer a control command, ms
    /// [default: 5000].
    #[arg(long)]
    control_timeout_ms: Option<u64>,
    /// What chain workers do when no packet came: poll, busy or sleep
    /// [default: poll].
    #[arg(long)]
    idle: Option<Idle>,
    /// Also serve /metrics (only it, read-only, no credentials) on this TCP
    /// address for Prometheus, e.g. 127.0.0.1:9478 [default: off].
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Accept live migrations of NFs from other braidd on this TCP address,
    /// e.g. 10.0.9.2:9480; needs --migrate-key-file. The offer is
    /// authenticated and the state stream sealed (AES-256-GCM) [default:
    /// off].
    #[arg(long)]
    migrate_listen: Option<std::net::SocketAddr>,
    /// Key shared by the braidd that migrate NFs to or from each other
    /// (mode 0600, owned by braidd's user, at least 32 bytes, e.g.
    /// `openssl rand -hex 32 > FILE`); required by --migrate-listen and by
    /// outgoing migrations. Never logged.
    #[arg(long)]
    migrate_key_file: Option<PathBuf>,
    /// Checkpoint the state of stateful NFs (NAT, firewall connections, ...)
    /// this often, ms; 0: only at shutdown. Restored when a chain starts
    /// again [default: 10000].
    #[arg(long)]
    checkpoint_interval_ms: Option<u64>,
    /// Also serve the whole API on this TCP address, e.g. 192.0.2.10:9479;
    /// only with TLS 1.3 (--tls-cert, --tls-key) and a bearer token
    /// (--token-file) [default: off].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain of the TCP API.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the TCP API.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// File holding the TCP API's bearer token (mode 0600, owned by
    /// braidd's user; at least 16 printable characters). Never logged.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Connections served at once over all listeners; more wait in the
    /// kernel's accept queue [default: 256].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Time a connection has to send a complete request head (on TCP also
    /// to finish the TLS handshake), ms [default: 10000].
    #[arg(long)]
    header_timeout_ms: Option<u64>,
}

/// `braidd nf-proc ...`: not for operators (braidd starts it for the NFs
/// of a `mapping: processes` chain); the arguments of `braid nf-proc`.
#[derive(Parser, Debug)]
#[command(name = "nf-proc", hide = true)]
struct NfProcCommand {
    #[command(flatten)]
    args: braid_daemon::nf_proc::Args,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("`{s}`: octal permission bits such as 600 or 660"))
}

fn config(a: Args) -> anyhow::Result<Config> {
    let mut c = match &a.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f { c.$f = v; } )* };
    }
    set!(
        socket,
        socket_mode,
        state_dir,
        log_format,
        log_level,
        max_body_bytes,
        body_timeout_ms,
        control_timeout_ms,
        idle,
        checkpoint_interval_ms,
        max_connections,
        header_timeout_ms
    );
    macro_rules! set_some {
        ($($f:ident),*) => { $( if a.$f.is_some() { c.$f = a.$f; } )* };
    }
    set_some!(
        audit_log,
        metrics_listen,
        migrate_listen,
        migrate_key_file,
        listen,
        tls_cert,
        tls_key,
        token_file
    );
    c.check()?;
    Ok(c)
}

fn init_logs(c: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&c.log_level)
        .with_context(|| format!("log level `{}`", c.log_level))?;
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match c.log_format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
    Ok(())
}

/// The uid this process runs as (the owner of `/proc/self`).
fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

/// SIGTERM and SIGINT, caught from the moment braidd starts: a signal that
/// arrives while it is still starting (or right after its first answer)
/// is kept until the main loop waits for it, instead of killing braidd
/// with the default action before it can clean up.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())
                .map_err(|e| anyhow::anyhow!("cannot catch SIGTERM: {e}"))?,
            int: signal(SignalKind::interrupt())
                .map_err(|e| anyhow::anyhow!("cannot catch SIGINT: {e}"))?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM"),
            _ = self.int.recv() => tracing::info!("SIGINT"),
        }
    }
}

/// Open the store and the audit log, and start every declared chain.
async fn prepare(c: &Config) -> anyhow::Result<(Arc<Daemon>, Audit)> {
    let store = Store::open(&c.store_path())?;
    let audit = Audit::open(&c.audit_path())
        .with_context(|| format!("opening audit log {}", c.audit_path().display()))?;
    let start = StartOptions {
        idle: c.idle,
        control_timeout: Duration::from_millis(c.control_timeout_ms),
        ..StartOptions::default()
    };
    // The NF processes' sockets of `mapping: processes` chains live beside
    // the API socket (braidd's runtime directory, /run/braid by default).
    let procs_dir = c.socket.parent().unwrap_or(std::path::Path::new("/")).join("braidd-procs");
    let daemon = Arc::new(Daemon::new(store, start).with_procs_dir(procs_dir));
    let d = daemon.clone();
    let (ok, failed) = tokio::task::spawn_blocking(move || d.restore()).await??;
    tracing::info!(restored = ok, failed, "declared chains started");
    Ok((daemon, audit))
}

/// Publish a `chain_state` event whenever a chain's state changes
/// (and `worker_stopped` when a running chain's worker stopped by itself),
/// looking every 200 ms.
async fn watch_chains(daemon: Arc<Daemon>, events: Arc<braid_daemon::ops::Events>) {
    let mut seen: std::collections::BTreeMap<String, &'static str> =
        daemon.list().iter().map(|c| (c.name().to_string(), c.state().0)).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now: Vec<_> = daemon.list();
        for c in &now {
            let (state, error) = c.state();
            // A chain enters the map running (deployed, or restored with a
            // worker); one restored without a worker enters `failed`. So
            // a chain first seen here already exited still gets its event.
            let entered = if c.started() { "running" } else { "failed" };
            let before = seen.insert(c.name().to_string(), state).unwrap_or(entered);
            if before != state {
                events.publish(
                    "chain_state",
                    serde_json::json!({ "chain": c.name(), "from": before, "to": state, "error": error }),
                );
                if before == "running" && state == "exited" {
                    events.publish(
                        "worker_stopped",
                        serde_json::json!({ "chain": c.name(), "error": error }),
                    );
                }
            }
        }
        seen.retain(|name, _| now.iter().any(|c| c.name() == name));
    }
}

async fn run(c: Config) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let started = Instant::now();
    if !c.state_dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&c.state_dir)
            .with_context(|| format!("creating state directory {}", c.state_dir.display()))?;
    }
    // Everything that can be refused before the socket is bound: a second
    // braidd must not take over, and a bad token or certificate must not
    // leave a socket behind.
    let uid = own_uid();
    let tls = match (&c.listen, &c.tls_cert, &c.tls_key, &c.token_file) {
        (Some(addr), Some(cert), Some(key), Some(token)) => {
            let config = braid_daemon::server::tls_config(cert, key)?;
            let token = Arc::new(Token::from_file(token, uid)?);
            Some((*addr, config, token))
        }
        _ => None,
    };
    let migrate_key = match &c.migrate_key_file {
        Some(p) => Some(Arc::new(MigrateKey::from_file(p, uid)?)),
        None => None,
    };
    // The socket first: a second braidd is refused before it touches the
    // store or any interface.
    let listener = braid_daemon::server::bind(&c.socket, c.socket_mode)?;
    let cleanup = |e: anyhow::Error| {
        let _ = std::fs::remove_file(&c.socket);
        e
    };
    let metrics_listener = match c.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics_listen {addr}: binding"))
                .map_err(cleanup)?,
        ),
        None => None,
    };
    let tls_listener = match &tls {
        Some((addr, _, _)) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen {addr}: binding"))
                .map_err(cleanup)?,
        ),
        None => None,
    };
    let migrate_listener = match c.migrate_listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("migrate_listen {addr}: binding"))
                .map_err(cleanup)?,
        ),
        None => None,
    };
    let (daemon, audit) = prepare(&c).await.map_err(cleanup)?;
    tracing::info!(
        socket = %c.socket.display(),
        listen = ?c.listen,
        "braidd ready in {:.1} ms", started.elapsed().as_secs_f64() * 1e3
    );
    let limits = Limits {
        max_connections: c.max_connections,
        header_timeout: Duration::from_millis(c.header_timeout_ms),
    };
    let (server, shutdown) = Server::new(limits);
    let mut state =
        AppState::new(daemon.clone(), audit, uid, c.max_body_bytes, shutdown.subscribe());
    state.started = started;
    state.body_timeout = Duration::from_millis(c.body_timeout_ms);
    state.token = tls.as_ref().map(|(_, _, t)| t.clone());
    state.migrate_key = migrate_key.clone();
    state.events.publish(
        "daemon_started",
        serde_json::json!({ "pid": std::process::id(), "chains": daemon.list().len() }),
    );
    let mut serving = Vec::new();
    serving.push(tokio::spawn(server.clone().serve_unix(listener, router(state.clone()))));
    if let Some(l) = metrics_listener {
        let app = braid_daemon::api::metrics_router(state.clone());
        serving.push(tokio::spawn(server.clone().serve_tcp(l, app)));
    }
    if let (Some(l), Some((_, config, _))) = (tls_listener, tls) {
        serving.push(tokio::spawn(server.clone().serve_tls(l, config, router(state.clone()))));
    }
    if let (Some(l), Some(key)) = (migrate_listener, migrate_key) {
        braid_daemon::migration::serve(
            l,
            key,
            daemon.clone(),
            state.operations.clone(),
            state.events.clone(),
        );
    }
    let watcher = tokio::spawn(watch_chains(daemon.clone(), state.events.clone()));
    let checkpointer = (c.checkpoint_interval_ms > 0).then(|| {
        let every = Duration::from_millis(c.checkpoint_interval_ms);
        let (daemon, ops) = (state.daemon.clone(), state.ops.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Between mutations, never during one.
                let _one_at_a_time = ops.lock().await;
                let d = daemon.clone();
                match tokio::task::spawn_blocking(move || d.checkpoint_all()).await {
                    Ok(Ok((chains, nfs))) => tracing::debug!(chains, nfs, "checkpoint"),
                    Ok(Err(e)) => tracing::error!(error = %e, "checkpoint failed"),
                    Err(e) => tracing::error!(error = %e, "checkpoint failed"),
                }
            }
        })
    });
    signals.wait().await;
    // Stop accepting; requests in flight are answered, event streams end.
    shutdown.trigger();
    for s in serving {
        let _ = s.await;
    }
    let open = server.drained(Duration::from_secs(10)).await;
    if open > 0 {
        tracing::warn!(open, "connections still open after 10 s; stopping anyway");
    }
    watcher.abort();
    if let Some(t) = checkpointer {
        t.abort();
    }
    // The last mutation has finished (its connection is answered, or it
    // runs detached: wait for it).
    let _last = state.ops.lock().await;
    let d = daemon.clone();
    let (stopped, drained) = tokio::task::spawn_blocking(move || d.shutdown()).await?;
    let _ = std::fs::remove_file(&c.socket);
    tracing::info!(stopped, drained, "braidd stopped");
    Ok(())
}

fn main() {
    // braidd re-executed by itself as an NF process of a `mapping:
    // processes` chain (`braid_runtime::live_procs`).
    if std::env::args_os().nth(1).is_some_and(|a| a == "nf-proc") {
        let args = NfProcCommand::parse_from(std::env::args_os().skip(1));
        if let Err(e) = braid_daemon::nf_proc::run(args.args) {
            eprintln!("braidd nf-proc: error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let result = config(Args::parse()).and_then(|c| {
        init_logs(&c)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("braidd-api")
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        rt.block_on(run(c))
    });
    if let Err(e) = result {
        eprintln!("braidd: error: {e:#}");
        std::process::exit(1);
    }
}
