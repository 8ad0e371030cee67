//! The state file: what `up` created, so `down` removes exactly that.
//!
//! It is rewritten after every object `up` creates, so even an `up` that
//! was killed half-way leaves a file that `down` can clean up from.

use crate::topology::Topology;
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    /// True once `up` finished.
    pub complete: bool,
}

impl State {
    pub fn load(path: &Path) -> Result<Option<State>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                format!(
                    "state file {} is corrupt ({e}); remove it after checking `ip netns list`",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read state file {}: {e}", path.display())),
        }
    }

    /// Write atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}
