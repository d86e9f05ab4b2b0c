//! engram-wal: the write-ahead log under Engram.
//!
//! Records are appended to segment files with a salted CRC-32C each; concurrent appenders share
//! fdatasyncs (group commit); recovery on open tells a torn final write (repaired) from
//! corruption (reported with file, offset and LSN); readers see durable records only. The log
//! knows nothing of what the records mean. See docs/wal-format.md for every byte on disk.

mod error;
mod format;
pub mod inspect;
mod options;
mod prealloc;
mod reader;
mod recovery;
mod segment;
mod stats;
pub mod storage;
mod waiters;
mod wal;

pub use error::{Error, Lsn, Result};
pub use options::{RecoveryMode, SyncPolicy, WalOptions};
pub use reader::{Record, WalReader};
pub use recovery::RecoveryReport;
pub use stats::WalStats;
pub use wal::{Completion, DurableHook, Wal, LOCK_FILE_NAME};

/// The on-disk format, exposed for inspection tools and tests.
pub mod layout {
    pub use crate::format::{
        encode_record, framed_bytes, parse_segment_file_name, record_is_valid, segment_file_name, HeaderState, RecordHeader, SegmentHeader,
        FORMAT_VERSION, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC,
    };
}
