//! The database options the tests open with. The log is small, so that a few hundred commits
//! cross segment boundaries (and records of a few kilobytes must stream), and it preallocates
//! segments on the committing thread, not in the background, so that the fault storage sees the
//! same I/O in the same order on every run. Each file chooses the sizes its cases need.

use engram_core::{CheckpointOptions, Database, DatabaseOptions, WalOptions};
use engram_wal::storage::FaultStorage;
use std::sync::Arc;

/// Segments of `segment_bytes`, records of at most `max_record_bytes`; background checkpoints
/// as by default.
pub fn small_log(segment_bytes: u64, max_record_bytes: usize) -> DatabaseOptions {
    DatabaseOptions {
        wal: WalOptions {
            segment_bytes,
            max_record_bytes,
            background_preallocation: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// [`small_log`] with checkpoints taken only when a test asks, and no log records kept for the
/// change feed beyond what checkpoints and cursors need (`retain_log_records: 0`), so that a
/// checkpoint's truncation shows at once.
pub fn small_log_checkpoints_on_demand(segment_bytes: u64, max_record_bytes: usize) -> DatabaseOptions {
    DatabaseOptions {
        checkpoint: CheckpointOptions {
            retain_log_records: 0,
            ..CheckpointOptions::on_demand()
        },
        ..small_log(segment_bytes, max_record_bytes)
    }
}

/// The database at `/db` of the fault storage `fs` (a shared handle: its crashes reach it).
pub fn open_on(fs: &FaultStorage, options: DatabaseOptions) -> engram_core::Result<Database> {
    Database::open_with_storage(Arc::new(fs.clone()), "/db", options)
}
