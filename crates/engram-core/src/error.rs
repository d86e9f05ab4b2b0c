//! Typed errors of the database. Bad input never changes anything.

use engram_wal::Lsn;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error, Clone)]
pub enum CoreError {
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("{what} is {size_bytes} bytes; the limit is {max_bytes}")]
    TooLarge {
        what: &'static str,
        size_bytes: usize,
        max_bytes: usize,
    },

    #[error("embedding has {got} dimensions; namespace {namespace:?} uses {expected}")]
    DimensionMismatch { namespace: String, expected: usize, got: usize },

    #[error("embedding value at index {index} is {value} (NaN and infinite values are not allowed)")]
    NonFiniteValue { index: usize, value: f32 },

    #[error("embedding must have between 1 and {max} dimensions (got {got})")]
    BadDimension { got: usize, max: usize },

    #[error("metadata must be a JSON object, got {got}")]
    MetadataNotObject { got: &'static str },

    #[error("{what} {id:?} not found in namespace {namespace:?}")]
    NotFound { what: &'static str, namespace: String, id: String },

    #[error("write-write conflict on {what} {id:?} in namespace {namespace:?}: another transaction committed it first; retry")]
    Conflict { namespace: String, what: &'static str, id: String },

    #[error("LSN {lsn} is not readable: history before LSN {oldest} is no longer retained")]
    HistoryNotRetained { lsn: Lsn, oldest: Lsn },

    #[error("log record at LSN {lsn} cannot be decoded: {reason}")]
    CorruptRecord { lsn: Lsn, reason: String },

    #[error("checkpoint {file} is not usable: {reason}")]
    CorruptCheckpoint { file: PathBuf, reason: String },

    #[error("the log starts at LSN {first_lsn} but no usable checkpoint covers the LSNs before it ({reason})")]
    MissingCheckpoint { first_lsn: Lsn, reason: String },

    #[error("I/O error during {context}: {source}")]
    Io { context: String, source: Arc<std::io::Error> },

    #[error("the database stopped after a failure ({cause}); reopen it to recover")]
    Poisoned { cause: String },

    #[error(transparent)]
    Wal(#[from] engram_wal::Error),

    #[error("{what} is {got}; it must be between {min} and {max}")]
    OutOfRange {
        what: &'static str,
        got: usize,
        min: usize,
        max: usize,
    },

    #[error("a {mode} search needs {needs}")]
    MissingQuery { mode: &'static str, needs: &'static str },

    #[error("namespace {namespace:?} uses the {expected} metric; it cannot change to {got}")]
    MetricMismatch {
        namespace: String,
        expected: &'static str,
        got: &'static str,
    },

    #[error("the search indexes reached LSN {indexed_lsn} but not LSN {lsn} within {waited_ms} ms")]
    IndexTimeout { lsn: Lsn, indexed_lsn: Lsn, waited_ms: u64 },
}

impl CoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, CoreError::Conflict { .. })
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
