//! How a log is opened and how appends are made durable.

use crate::error::{Error, Result};
use crate::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// When an append is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// The append returns after an fdatasync covering its record (group commit shares it).
    Always,
    /// The append returns once its record is written to the OS; a background thread syncs every
    /// `ms` milliseconds, so a power loss may lose at most about that window.
    Interval { ms: u64 },
    /// The append returns once written to the OS; only an explicit `sync()` or a segment rotation
    /// syncs. For tests and bulk loads.
    Never,
}

/// What recovery does with a damaged record at the very end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// A bad record at the very end of the last segment, with nothing valid after it, is a write
    /// torn by a crash: it was never acknowledged, so it is zeroed and synced.
    TolerateTornTail,
    /// Any bad record fails open.
    Absolute,
}

#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size of each segment file; segments are zero-filled to this size ahead of use.
    pub segment_bytes: u64,
    /// Largest payload accepted by `append`.
    pub max_record_bytes: usize,
    /// Default durability of appends (each append may override it).
    pub sync_policy: SyncPolicy,
    pub recovery_mode: RecoveryMode,
    /// Prepare segments on a background thread (the default). When false, a segment is prepared
    /// by the appender that needs it: slower rotations, but a deterministic I/O sequence, which
    /// the crash-point tests rely on.
    pub background_preallocation: bool,
    /// Upper bound on the bytes one group-commit leader writes before it syncs, so that one huge
    /// group cannot delay the acknowledgement of its first record indefinitely.
    pub max_group_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 16 * 1024 * 1024,
            sync_policy: SyncPolicy::Always,
            recovery_mode: RecoveryMode::TolerateTornTail,
            background_preallocation: true,
            max_group_bytes: 4 * 1024 * 1024,
        }
    }
}

impl WalOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if !self.segment_bytes.is_multiple_of(4096) || self.segment_bytes < 8192 {
            return Err(Error::InvalidOptions(format!(
                "segment_bytes must be a multiple of 4096 and at least 8192 (got {})",
                self.segment_bytes
            )));
        }
        if self.segment_bytes > u32::MAX as u64 * 4 {
            return Err(Error::InvalidOptions("segment_bytes must be at most 16 GiB".into()));
        }
        let room = self.segment_bytes - (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES) as u64;
        if self.max_record_bytes == 0 || self.max_record_bytes as u64 > room {
            return Err(Error::InvalidOptions(format!(
                "max_record_bytes must be between 1 and {room} for {}-byte segments (got {})",
                self.segment_bytes, self.max_record_bytes
            )));
        }
        if self.max_record_bytes > u32::MAX as usize {
            return Err(Error::InvalidOptions("max_record_bytes must fit in 32 bits".into()));
        }
        if let SyncPolicy::Interval { ms: 0 } = self.sync_policy {
            return Err(Error::InvalidOptions("SyncPolicy::Interval needs ms > 0".into()));
        }
        if self.max_group_bytes == 0 {
            return Err(Error::InvalidOptions("max_group_bytes must be > 0".into()));
        }
        Ok(())
    }
}
