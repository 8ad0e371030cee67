//! The state file: what `up` created, so `down` removes exactly that.
//!
//! It is rewritten after every object `up` creates, so even an `up` that
//! was killed half-way leaves a file that `down` can clean up from.

use crate::topology::Topology;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Reading or writing the state file failed; names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("state file {} is corrupt ({source}); remove it after checking `ip netns list`", .path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read state file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Default location of the state file.
pub const DEFAULT_STATE_PATH: &str = "/run/braid/testbed.json";

/// One interface inside one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevRef {
    pub netns: String,
    pub dev: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub topology: Topology,
    /// Prefix of every namespace name (`braid-` by default).
    pub prefix: String,
    /// Namespaces created, in creation order.
    pub namespaces: Vec<String>,
    /// veth pairs created, by their `a` end.
    pub links: Vec<DevRef>,
    /// Interfaces an XDP program was attached to (by `deploy`).
    #[serde(default)]
    pub xdp: Vec<DevRef>,
    /// Hosts whose Linux forwarding a deployment switched off (recorded
    /// before the switch; cleared once the topology's value is back), so a
    /// deployment killed with SIGKILL is repaired by the next `deploy`.
    #[serde(default)]
    pub forwarding_off: Vec<String>,
    /// The braidd processes `up` started, each recorded right after it
    /// was spawned (`crate::daemons`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub daemons: Vec<crate::daemons::DaemonRecord>,
    /// The testbed's run directory (daemon sockets, state, logs, the
    /// migration key), once `up` created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
    /// The migration key file the daemons share, once `up` wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_key: Option<PathBuf>,
    /// True once `up` finished.
    pub complete: bool,
}

impl State {
    /// The state in `path`, or `None` when there is no such file.
    pub fn load(path: &Path) -> Result<Option<State>, StateFileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|source| StateFileError::Corrupt { path: path.into(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateFileError::Read { path: path.into(), source }),
        }
    }

    /// Write atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<(), StateFileError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|source| StateFileError::CreateDir { path: dir.into(), source })?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        std::fs::write(&tmp, text)
            .map_err(|source| StateFileError::Write { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, path)
            .map_err(|source| StateFileError::Write { path: path.into(), source })
    }
}
