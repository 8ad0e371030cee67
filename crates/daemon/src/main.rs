//! `braidd`: the per-host braid daemon. See `docs/daemon.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use braid_daemon::api::{router, AppState};
use braid_daemon::audit::Audit;
use braid_daemon::config::{Config, LogFormat};
use braid_daemon::daemon::Daemon;
use braid_daemon::metrics::Metrics;
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
    /// max_body_bytes, control_timeout_ms, idle, metrics_listen, checkpoint_interval_ms).
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
    /// Checkpoint the state of stateful NFs (NAT, firewall connections, ...)
    /// this often, ms; 0: only at shutdown. Restored when a chain starts
    /// again [default: 10000].
    #[arg(long)]
    checkpoint_interval_ms: Option<u64>,
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
        control_timeout_ms,
        idle,
        checkpoint_interval_ms
    );
    if a.audit_log.is_some() {
        c.audit_log = a.audit_log;
    }
    if a.metrics_listen.is_some() {
        c.metrics_listen = a.metrics_listen;
    }
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

async fn signalled() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop braidd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
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
    let daemon = Arc::new(Daemon::new(store, start));
    let d = daemon.clone();
    let (ok, failed) = tokio::task::spawn_blocking(move || d.restore()).await??;
    tracing::info!(restored = ok, failed, "declared chains started");
    Ok((daemon, audit))
}

async fn run(c: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    if !c.state_dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&c.state_dir)
            .with_context(|| format!("creating state directory {}", c.state_dir.display()))?;
    }
    // The socket first: a second braidd is refused before it touches the
    // store or any interface.
    let listener = braid_daemon::server::bind(&c.socket, c.socket_mode)?;
    let metrics_listener = match c.metrics_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = std::fs::remove_file(&c.socket);
                return Err(e).with_context(|| format!("metrics_listen {addr}: binding"));
            }
        },
        None => None,
    };
    let prepared = prepare(&c).await;
    let (daemon, audit) = match prepared {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&c.socket);
            return Err(e);
        }
    };
    tracing::info!(
        socket = %c.socket.display(),
        "braidd ready in {:.1} ms", started.elapsed().as_secs_f64() * 1e3
    );
    let state = AppState {
        metrics: Arc::new(Metrics::new(daemon.chains())),
        daemon: daemon.clone(),
        audit: Arc::new(audit),
        ops: Arc::default(),
        started,
        allowed_uid: own_uid(),
        body_limit: c.max_body_bytes,
    };
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = match metrics_listener {
        Some(l) => {
            let app = braid_daemon::api::metrics_router(state.clone());
            Some(tokio::spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(async {
                        let _ = metrics_stopped.await;
                    })
                    .await
            }))
        }
        None => None,
    };
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
    let served = braid_daemon::server::serve(listener, router(state), signalled()).await;
    if let Some(t) = checkpointer {
        t.abort();
    }
    let _ = stop_metrics.send(());
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    let d = daemon.clone();
    let stopped = tokio::task::spawn_blocking(move || d.shutdown()).await?;
    let _ = std::fs::remove_file(&c.socket);
    tracing::info!(stopped, "braidd stopped");
    served.context("serving the API")
}

fn main() {
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
