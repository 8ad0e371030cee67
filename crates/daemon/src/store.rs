//! The declared chains, kept in an embedded transactional store (`redb`,
//! pure Rust) so a restarted `braidd` (also after SIGKILL) deploys them
//! again.
//!
//! One table maps a chain's name to its descriptor as YAML (as it runs:
//! live parameter changes are written back). Every write is one
//! transaction; redb checksums its pages and repairs an interrupted
//! write on open. Loading is all or nothing: a store that cannot be read
//! or holds a record that no longer validates is reported and nothing is
//! deployed from it.

use std::path::{Path, PathBuf};

use braid_runtime::validate::validate_str;
use braid_runtime::ChainDescriptor;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const CHAINS: TableDefinition<&str, &str> = TableDefinition::new("chains");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Bumped when the record format changes.
const FORMAT: u64 = 1;

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: cannot open: {source} (if it is corrupt, move it away: braidd then starts empty and forgets every declared chain)")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("state store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("state store {path}: record format {found}, this braidd reads format {FORMAT}")]
    Format { path: PathBuf, found: u64 },
    #[error("state store {path}: chain record `{name}` is not a valid descriptor (nothing was deployed):\n{problems}")]
    Record { path: PathBuf, name: String, problems: String },
}

/// The open store.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open (or create) the store at `path`. Another process holding it
    /// open is an error.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)
            .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        let store = Store { db, path: path.to_path_buf() };
        store.check_format()?;
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Io { path: self.path.clone(), source: e.into() }
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            let found = meta.get("format").map_err(|e| self.io(e))?.map(|v| v.value());
            match found {
                Some(FORMAT) => {}
                Some(found) => {
                    return Err(StoreError::Format { path: self.path.clone(), found });
                }
                None => {
                    meta.insert("format", FORMAT).map_err(|e| self.io(e))?;
                }
            }
            txn.open_table(CHAINS).map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// Every declared chain, checked as `braid validate` checks a file; the
    /// first bad record fails the whole load.
    pub fn load(&self) -> Result<Vec<ChainDescriptor>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(CHAINS).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let name = k.value().to_string();
            let report = validate_str(&format!("record `{name}`"), v.value());
            match report.descriptor {
                Some(d) if report.problems.is_empty() && d.name == name => out.push(d),
                Some(d) if report.problems.is_empty() => {
                    return Err(StoreError::Record {
                        path: self.path.clone(),
                        name: name.clone(),
                        problems: format!("it declares chain `{}`", d.name),
                    })
                }
                _ => {
                    return Err(StoreError::Record {
                        path: self.path.clone(),
                        name,
                        problems: report
                            .problems
                            .iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Declare (or replace) chain `d`.
    pub fn put(&self, d: &ChainDescriptor) -> Result<(), StoreError> {
        let yaml = d.to_yaml();
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut t = txn.open_table(CHAINS).map_err(|e| self.io(e))?;
            t.insert(d.name.as_str(), yaml.as_str()).map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// Forget chain `name`; whether it was declared.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        let was = {
            let mut t = txn.open_table(CHAINS).map_err(|e| self.io(e))?;
            let was = t.remove(name).map_err(|e| self.io(e))?.is_some();
            was
        };
        txn.commit().map_err(|e| self.io(e))?;
        Ok(was)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("braidd-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn chain(name: &str) -> ChainDescriptor {
        ChainDescriptor::from_yaml(&format!(
            "name: {name}\nports:\n  in: {{ kind: af_packet, iface: a }}\n  out: {{ kind: af_packet, iface: b }}\nnfs:\n  - {{ name: f, type: fwd }}\n"
        ))
        .unwrap()
    }

    #[test]
    fn chains_survive_reopening_and_removal_is_kept() {
        let d = dir("reopen");
        let path = d.join("state.redb");
        {
            let s = Store::open(&path).unwrap();
            s.put(&chain("a")).unwrap();
            s.put(&chain("b")).unwrap();
            assert!(s.remove("a").unwrap());
            assert!(!s.remove("zz").unwrap());
        }
        let s = Store::open(&path).unwrap();
        let names: Vec<_> = s.load().unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["b"]);
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_store() {
        let d = dir("corrupt");
        let path = d.join("state.redb");
        {
            let s = Store::open(&path).unwrap();
            s.put(&chain("a")).unwrap();
        }
        // Overwrite the header and the first pages with garbage.
        let mut bytes = std::fs::read(&path).unwrap();
        for (i, b) in bytes.iter_mut().enumerate().take(8192) {
            *b = (i as u8).wrapping_mul(31) ^ 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        let e = Store::open(&path).and_then(|s| s.load()).unwrap_err().to_string();
        assert!(e.starts_with(&format!("state store {}", path.display())), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_record_that_no_longer_validates_fails_the_whole_load() {
        let d = dir("record");
        let path = d.join("state.redb");
        let s = Store::open(&path).unwrap();
        s.put(&chain("a")).unwrap();
        let mut bad = chain("b");
        bad.nfs[0].kind = "no-such-nf".into();
        s.put(&bad).unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("chain record `b` is not a valid descriptor"), "{e}");
        assert!(e.contains("no-such-nf"), "{e}");
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
