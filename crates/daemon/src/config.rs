//! braidd's configuration: a TOML file (`--config`), every key also a
//! command-line option (the option wins). Unknown keys are errors.

use std::path::{Path, PathBuf};

use braid_dataplane::Idle;

/// Default unix socket.
pub const DEFAULT_SOCKET: &str = "/run/braid/braidd.sock";
/// Default state directory (the store, the audit log).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/braid";
/// Default largest request body: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything braidd can be told.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Unix socket the API listens on.
    pub socket: PathBuf,
    /// Its permission bits (0o600: the daemon's user only; 0o660: its group too).
    pub socket_mode: u32,
    /// Where the store (`state.redb`) and the audit log live.
    pub state_dir: PathBuf,
    /// Audit log file; default `STATE_DIR/audit.log`.
    pub audit_log: Option<PathBuf>,
    pub log_format: LogFormat,
    /// `tracing` filter (`warn`, `info`, `braidd=debug`); default `warn`.
    pub log_level: String,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Time a request body may take to arrive whole (ms).
    pub body_timeout_ms: u64,
    /// How long a worker may take to answer a control command (ms).
    pub control_timeout_ms: u64,
    /// What chain workers do when idle: poll, busy or sleep.
    pub idle: Idle,
    /// Also serve `/metrics` (only it, read-only) on this TCP address, for
    /// Prometheus; default: not at all.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Accept live migrations from other braidd on this TCP address
    /// (docs/migration.md); default: not at all.
    pub migrate_listen: Option<std::net::SocketAddr>,
    /// The key this braidd shares with the braidd it migrates to or from
    /// (mode 0600, at least 32 bytes): required by `migrate_listen` and by
    /// an outgoing migration (docs/migration.md, "Authentication").
    pub migrate_key_file: Option<PathBuf>,
    /// Checkpoint every stateful NF's state this often (ms; 0: only at
    /// shutdown); restored when braidd starts the chain again.
    pub checkpoint_interval_ms: u64,
    /// Also serve the whole API on this TCP address, with TLS 1.3 and the
    /// bearer token (both required); default: not at all.
    pub listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain for `listen`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `listen`.
    pub tls_key: Option<PathBuf>,
    /// File holding the bearer token for `listen` (mode 0600, braidd's user).
    pub token_file: Option<PathBuf>,
    /// Connections served at once, over all listeners; more wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
    /// Time a connection has to send a complete request head (and on TCP to
    /// finish the TLS handshake), ms.
    pub header_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            socket: DEFAULT_SOCKET.into(),
            socket_mode: 0o600,
            state_dir: DEFAULT_STATE_DIR.into(),
            audit_log: None,
            log_format: LogFormat::Text,
            log_level: "warn".into(),
            max_body_bytes: DEFAULT_MAX_BODY,
            body_timeout_ms: 30_000,
            control_timeout_ms: 5000,
            idle: Idle::Poll,
            metrics_listen: None,
            migrate_listen: None,
            migrate_key_file: None,
            checkpoint_interval_ms: 10_000,
            listen: None,
            tls_cert: None,
            tls_key: None,
            token_file: None,
            max_connections: 256,
            header_timeout_ms: 10_000,
        }
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{what}: {message}")]
    Value { what: &'static str, message: String },
}

impl Config {
    /// Read a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_toml(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Parse TOML text; the error names the line and the key.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Refuse values that cannot work.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.socket_mode & !0o777 != 0 || self.socket_mode & 0o600 != 0o600 {
            return Err(ConfigError::Value {
                what: "socket_mode",
                message: format!(
                    "{:#o}: must be permission bits including 0o600 (owner read/write)",
                    self.socket_mode
                ),
            });
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Value {
                what: "max_body_bytes",
                message: format!("{}: at least 1024", self.max_body_bytes),
            });
        }
        if self.migrate_listen.is_some() && self.migrate_key_file.is_none() {
            return Err(ConfigError::Value {
                what: "migrate_listen",
                message: "migration offers are accepted only from braidd that share a key: set \
                          migrate_key_file (the same file on every host, mode 0600, e.g. \
                          `openssl rand -hex 32`)"
                    .into(),
            });
        }
        if self.listen.is_some() {
            let missing: Vec<&str> = [
                ("tls_cert", self.tls_cert.is_none()),
                ("tls_key", self.tls_key.is_none()),
                ("token_file", self.token_file.is_none()),
            ]
            .iter()
            .filter(|(_, m)| *m)
            .map(|(k, _)| *k)
            .collect();
            if !missing.is_empty() {
                return Err(ConfigError::Value {
                    what: "listen",
                    message: format!(
                        "the TCP API is served only with TLS and a bearer token: set {}",
                        missing.join(", ")
                    ),
                });
            }
        } else if self.tls_cert.is_some() || self.tls_key.is_some() || self.token_file.is_some() {
            return Err(ConfigError::Value {
                what: "tls_cert, tls_key, token_file",
                message: "only used with `listen`, which is not set".into(),
            });
        }
        if self.max_connections == 0 || self.max_connections > 65_536 {
            return Err(ConfigError::Value {
                what: "max_connections",
                message: format!("{}: between 1 and 65536", self.max_connections),
            });
        }
        if self.body_timeout_ms == 0 {
            return Err(ConfigError::Value {
                what: "body_timeout_ms",
                message: "must be positive".into(),
            });
        }
        if self.header_timeout_ms == 0 {
            return Err(ConfigError::Value {
                what: "header_timeout_ms",
                message: "must be positive".into(),
            });
        }
        if self.control_timeout_ms == 0 {
            return Err(ConfigError::Value {
                what: "control_timeout_ms",
                message: "must be positive".into(),
            });
        }
        Ok(())
    }

    /// The audit log's path.
    pub fn audit_path(&self) -> PathBuf {
        self.audit_log.clone().unwrap_or_else(|| self.state_dir.join("audit.log"))
    }

    /// The store's path.
    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("state.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_unknown_keys_are_named() {
        let c = Config::from_toml(
            "socket = \"/tmp/x.sock\"\nsocket_mode = 0o660\nlog_format = \"json\"\nidle = \"busy\"\n",
        )
        .unwrap();
        assert_eq!(c.socket, Path::new("/tmp/x.sock"));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.idle, Idle::Busy);
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY);
        c.check().unwrap();
        let e = Config::from_toml("sockett = \"/x\"\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `sockett`"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        // The shipped example is a valid configuration.
        let shipped = Config::from_toml(include_str!("../../../deploy/braidd.toml")).unwrap();
        shipped.check().unwrap();
        assert_eq!(shipped.socket, Path::new(DEFAULT_SOCKET));
        let bad = Config { socket_mode: 0o400, ..Config::default() };
        assert!(bad.check().unwrap_err().to_string().starts_with("socket_mode: 0o400"));
    }

    #[test]
    fn the_tcp_api_needs_tls_and_a_token() {
        let c = Config::from_toml("listen = \"127.0.0.1:9479\"\ntls_cert = \"/c.pem\"\n").unwrap();
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("only with TLS and a bearer token: set tls_key, token_file"), "{e}");
        let c = Config::from_toml(
            "listen = \"127.0.0.1:9479\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\ntoken_file = \"/t\"\n",
        )
        .unwrap();
        c.check().unwrap();
        let stray = Config { token_file: Some("/t".into()), ..Config::default() };
        assert!(stray.check().unwrap_err().to_string().contains("only used with `listen`"));
        let none = Config { max_connections: 0, ..Config::default() };
        assert!(none.check().unwrap_err().to_string().starts_with("max_connections: 0"));
    }

    #[test]
    fn the_migration_listener_needs_a_key() {
        let c = Config::from_toml("migrate_listen = \"10.0.9.2:9480\"\n").unwrap();
        let e = c.check().unwrap_err().to_string();
        assert!(e.starts_with("migrate_listen:") && e.contains("set migrate_key_file"), "{e}");
        let c = Config::from_toml(
            "migrate_listen = \"10.0.9.2:9480\"\nmigrate_key_file = \"/etc/braid/migrate.key\"\n",
        )
        .unwrap();
        c.check().unwrap();
        // A source that only migrates out needs the key, not the listener.
        let source = Config { migrate_key_file: Some("/k".into()), ..Config::default() };
        source.check().unwrap();
    }
}
