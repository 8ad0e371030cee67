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
/// Chain name -> its NFs' last checkpointed state ([`encode_checkpoint`]).
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");

/// A chain's checkpoint: (NF name, its exported state).
pub type Checkpoint = Vec<(String, braid_nf::NfState)>;

/// Encode a checkpoint: `u32` count, then per NF a `u16` name length, the
/// name, a `u32` state length and the state (`NfState::to_bytes`); then a
/// CRC-32 of everything before it.
pub fn encode_checkpoint(states: &Checkpoint) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(states.len() as u32).to_le_bytes());
    for (name, state) in states {
        let bytes = state.to_bytes();
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// What is wrong with a checkpoint's bytes.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{0} bytes is too short for a checkpoint")]
    TooShort(usize),
    #[error("checksum mismatch: the checkpoint is damaged")]
    Checksum,
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("NF name is not UTF-8")]
    NameNotUtf8,
    #[error("NF `{nf}`: {source}")]
    State {
        nf: String,
        #[source]
        source: braid_nf::StateError,
    },
    #[error("{0} bytes after the last NF")]
    Trailing(usize),
}

/// Decode [`encode_checkpoint`]'s form; any damage is an error naming it.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    if bytes.len() < 8 {
        return Err(CheckpointError::TooShort(bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != want {
        return Err(CheckpointError::Checksum);
    }
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], CheckpointError> {
        let s = body.get(at..at + n).ok_or(CheckpointError::Truncated(at))?;
        at += n;
        Ok(s)
    };
    // `take` returns exactly `n` bytes, so the fixed-size reads cannot fail.
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let count = u32_at(take(4)?);
    let mut out = Vec::new();
    for _ in 0..count {
        let b = take(2)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        let name = std::str::from_utf8(take(n)?).map_err(|_| CheckpointError::NameNotUtf8)?;
        let len = u32_at(take(4)?) as usize;
        let state = braid_nf::NfState::from_bytes(take(len)?)
            .map_err(|source| CheckpointError::State { nf: name.to_string(), source })?;
        out.push((name.to_string(), state));
    }
    if at != body.len() {
        return Err(CheckpointError::Trailing(body.len() - at));
    }
    Ok(out)
}
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
    #[error("state store {path}: checkpoint of chain `{name}`: {source}")]
    Checkpoint {
        path: PathBuf,
        name: String,
        #[source]
        source: CheckpointError,
    },
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
            txn.open_table(CHECKPOINTS).map_err(|e| self.io(e))?;
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

    /// Write the checkpoints of several chains in one transaction.
    pub fn put_checkpoints(&self, all: &[(String, Checkpoint)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut t = txn.open_table(CHECKPOINTS).map_err(|e| self.io(e))?;
            for (name, states) in all {
                let bytes = encode_checkpoint(states);
                t.insert(name.as_str(), bytes.as_slice()).map_err(|e| self.io(e))?;
            }
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// Chain `name`'s last checkpoint, if one was taken; damage is an error.
    pub fn checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let t = txn.open_table(CHECKPOINTS).map_err(|e| self.io(e))?;
        let Some(v) = t.get(name).map_err(|e| self.io(e))? else { return Ok(None) };
        decode_checkpoint(v.value()).map(Some).map_err(|source| StoreError::Checkpoint {
            path: self.path.clone(),
            name: name.to_string(),
            source,
        })
    }

    /// Forget chain `name` and its checkpoint; whether it was declared.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        let was = {
            let mut t = txn.open_table(CHAINS).map_err(|e| self.io(e))?;
            let was = t.remove(name).map_err(|e| self.io(e))?.is_some();
            let mut c = txn.open_table(CHECKPOINTS).map_err(|e| self.io(e))?;
            c.remove(name).map_err(|e| self.io(e))?;
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
    fn checkpoints_round_trip_and_damage_is_detected() {
        let d = dir("checkpoint");
        let path = d.join("state.redb");
        let s = Store::open(&path).unwrap();
        s.put(&chain("a")).unwrap();
        let states: Checkpoint = vec![
            ("fw".into(), braid_nf::NfState::encode("firewall", 1, &vec![1u32, 2, 3])),
            ("nat".into(), braid_nf::NfState::encode("nat", 2, &"x".to_string())),
        ];
        assert_eq!(s.checkpoint("a").unwrap(), None);
        s.put_checkpoints(&[("a".into(), states.clone())]).unwrap();
        assert_eq!(s.checkpoint("a").unwrap(), Some(states.clone()));
        // Every single flipped byte is detected.
        let bytes = encode_checkpoint(&states);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode_checkpoint(&b).is_err(), "flip at {i} went unnoticed");
        }
        assert!(decode_checkpoint(&bytes[..bytes.len() - 1]).is_err());
        // Removing the chain removes its checkpoint.
        s.remove("a").unwrap();
        assert_eq!(s.checkpoint("a").unwrap(), None);
        drop(s);
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
