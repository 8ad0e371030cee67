//! Checks shared by the `restore` functions of the encoders, decoders and
//! recoder.
//!
//! Every coder can take a snapshot of its state (serde types next to each
//! coder: [`crate::block::BlockEncoderSnapshot`], ...) and build a coder of
//! the same configuration from one. A snapshot carries the configuration it
//! was taken under; restoring it into a coder of another configuration is
//! refused with a message naming the field that differs, and so is a
//! snapshot whose contents could not have come from a coder of that
//! configuration (sizes, lengths, an echelon form that does not hold).
//! Derived things (SIMD kernel, scratch buffers) are never part of one.

use crate::block::EncodeError;
use crate::header::{read_symbol, MAX_PAYLOAD};
use thiserror::Error;

/// Why a snapshot was refused (the coder it was restored into is unchanged).
#[derive(Clone, Debug, PartialEq, Error)]
pub enum SnapshotError {
    /// Taken under another configuration: `field` differs.
    #[error("snapshot has {field} {snapshot}, this instance {ours}")]
    Mismatch { field: &'static str, snapshot: String, ours: String },
    /// Contents no coder of this configuration could have produced; the
    /// message names the field (`generations[3].rows[2] ...`).
    #[error("{0}")]
    Invalid(String),
    /// The coder's own configuration was refused when rebuilding it.
    #[error("configuration: {0}")]
    Config(#[from] EncodeError),
}

impl SnapshotError {
    /// The same error, located inside `what` (`generations[3]: ...`).
    pub fn within(self, what: &str) -> SnapshotError {
        match self {
            SnapshotError::Invalid(m) => SnapshotError::Invalid(format!("{what}: {m}")),
            other => other,
        }
    }
}

/// Longest symbol: a length prefix and the largest payload.
pub const MAX_SYMBOL: usize = MAX_PAYLOAD + 2;

/// Refuse a snapshot taken under another value of configuration `field`.
pub(crate) fn same<T: PartialEq + std::fmt::Display>(
    field: &'static str,
    snapshot: T,
    ours: T,
) -> Result<(), SnapshotError> {
    if snapshot == ours {
        Ok(())
    } else {
        Err(SnapshotError::Mismatch {
            field,
            snapshot: snapshot.to_string(),
            ours: ours.to_string(),
        })
    }
}

/// A source symbol (length prefix + payload, maybe zero-padded).
pub(crate) fn source_symbol(what: &str, sym: &[u8]) -> Result<(), SnapshotError> {
    if sym.len() > MAX_SYMBOL || read_symbol(sym).is_none() {
        return Err(SnapshotError::Invalid(format!(
            "{what}: {} bytes is not a source symbol (length prefix, payload up to {MAX_PAYLOAD})",
            sym.len()
        )));
    }
    Ok(())
}

/// Any symbol, coded or not: at most [`MAX_SYMBOL`] bytes.
pub(crate) fn symbol_len(what: &str, sym: &[u8]) -> Result<(), SnapshotError> {
    if sym.len() > MAX_SYMBOL {
        return Err(SnapshotError::Invalid(format!(
            "{what}: {} bytes, longer than a symbol ({MAX_SYMBOL})",
            sym.len()
        )));
    }
    Ok(())
}

/// An `f64` carried as its bits (`f64::to_bits`), so it survives any
/// encoding exactly: coded packet rates depend on every bit of a credit.
pub(crate) fn credit(what: &str, bits: u64) -> Result<f64, SnapshotError> {
    let v = f64::from_bits(bits);
    // Credits are below 1 after each packet (they are spent down to that),
    // and never meaningfully below 0.
    if !v.is_finite() || !(-1.0..1.0).contains(&v) {
        return Err(SnapshotError::Invalid(format!("{what} {v} is outside -1..1")));
    }
    Ok(v)
}
