//! The audit log: one JSON line per mutating call (and per refused peer),
//! with who (peer uid, gid, pid from `SO_PEERCRED`; a TCP peer's address) and what (method, path,
//! status, what was done or why it was refused). Request bodies are not
//! written (they may hold keys).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::api::Peer;

/// An append-only audit file.
#[derive(Debug)]
pub struct Audit {
    file: Mutex<std::fs::File>,
    path: PathBuf,
}

impl Audit {
    /// Open (or create, mode 0600) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(Audit { file: Mutex::new(file), path: path.to_path_buf() })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write one record. A failed write is logged, not fatal: the call it
    /// describes has already happened.
    pub fn record(&self, peer: &Peer, method: &str, path: &str, status: u16, what: &str) {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let line = serde_json::json!({
            "time": time,
            "uid": peer.uid,
            "gid": peer.gid,
            "pid": peer.pid,
            "addr": peer.addr.map(|a| a.to_string()),
            "method": method,
            "path": path,
            "status": status,
            "what": what,
        });
        tracing::info!(target: "braidd::audit", uid = ?peer.uid, pid = ?peer.pid, addr = ?peer.addr, method, path, status, what);
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(f, "{line}").and_then(|()| f.flush()) {
            tracing::error!(file = %self.path.display(), error = %e, "audit log write failed");
        }
    }
}
