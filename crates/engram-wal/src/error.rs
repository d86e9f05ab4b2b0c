//! Typed errors. Every failure names what went wrong and, for on-disk problems, where.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A log sequence number: records are numbered 1, 2, 3, ... with no gaps.
pub type Lsn = u64;

#[derive(Debug, thiserror::Error, Clone)]
pub enum Error {
    #[error("{path}: not a directory")]
    NotADirectory { path: PathBuf },

    #[error("{path}: the log directory is locked by another process or handle")]
    Locked { path: PathBuf },

    #[error("{file}: log format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { file: PathBuf, found: u32, supported: u32 },

    #[error("record of {size_bytes} bytes exceeds the configured maximum of {max_bytes} bytes")]
    RecordTooLarge { size_bytes: usize, max_bytes: usize },

    #[error("record kind 0 is reserved; use kinds 1..=255")]
    ReservedKind,

    #[error("invalid options: {0}")]
    InvalidOptions(String),

    #[error("corrupt log: {file} at offset {offset} (near LSN {lsn}): {reason}")]
    Corruption {
        file: PathBuf,
        offset: u64,
        lsn: Lsn,
        reason: String,
    },

    #[error("torn write at the end of the log: {file} at offset {offset} (LSN {lsn}); recovery mode Absolute refuses to truncate it")]
    TornTail { file: PathBuf, offset: u64, lsn: Lsn },

    #[error("the log is stopped after an I/O failure ({cause}); reopen it to run recovery")]
    Poisoned { cause: String },

    #[error("LSN {lsn} is not retained (the log holds {first}..={last})")]
    LsnOutOfRange { lsn: Lsn, first: Lsn, last: Lsn },

    #[error("the log is closed")]
    Closed,

    #[error("I/O error during {context}: {source}")]
    Io { context: String, source: Arc<io::Error> },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// True for errors that describe damaged log contents (as opposed to usage or I/O problems).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. } | Error::TornTail { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a description of the operation to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
