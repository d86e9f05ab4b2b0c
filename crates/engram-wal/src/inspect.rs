//! Read-only inspection of an existing log, shared by the `engram-wal` and `engram` tools:
//! verify every record, dump records, report what recovery finds. The log is opened with
//! `Absolute` recovery, so a damaged record fails instead of being repaired, and nothing is
//! prepared ahead.

use crate::{Lsn, RecoveryMode, Result, Wal, WalOptions};
use std::io::Write;
use std::path::Path;

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub payload_bytes: u64,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub segments: usize,
}

/// What `stat` found.
#[derive(Debug, Clone)]
pub struct StatReport {
    pub segments: usize,
    pub records: u64,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub bytes_scanned: u64,
    pub recovery_time: std::time::Duration,
}

/// Opens the log in `dir` for inspection; a directory without segments is an error rather than
/// a new, empty log.
pub fn open_existing(dir: &Path) -> std::result::Result<Wal, Box<dyn std::error::Error + Send + Sync>> {
    let has_segments = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .any(|e| crate::layout::parse_segment_file_name(&e.file_name().to_string_lossy()).is_some());
    if !has_segments {
        return Err(format!("{}: no log segments here", dir.display()).into());
    }
    let options = WalOptions {
        recovery_mode: RecoveryMode::Absolute,
        background_preallocation: false,
        ..Default::default()
    };
    Ok(Wal::open(dir, options)?)
}

/// Reads every record, checking each checksum and the continuity of LSNs and segments.
pub fn verify(wal: &Wal) -> Result<VerifyReport> {
    let mut records = 0u64;
    let mut payload_bytes = 0u64;
    for record in wal.reader(wal.first_lsn())? {
        let record = record?;
        records += 1;
        payload_bytes += record.payload.len() as u64;
    }
    let r = wal.recovery_report();
    Ok(VerifyReport {
        records,
        payload_bytes,
        first_lsn: r.first_lsn,
        last_lsn: r.last_lsn,
        segments: r.segments,
    })
}

/// Writes one line per record from `from`: LSN, kind, length and a printable preview.
pub fn dump(
    wal: &Wal,
    from: Lsn,
    limit: Option<usize>,
    out: &mut dyn Write,
) -> std::result::Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let mut written = 0;
    for record in wal.reader(from.max(wal.first_lsn()))?.take(limit.unwrap_or(usize::MAX)) {
        let record = record?;
        let preview: String = String::from_utf8_lossy(&record.payload[..record.payload.len().min(60)])
            .chars()
            .map(|c| if c.is_control() { '.' } else { c })
            .collect();
        writeln!(
            out,
            "{:>12}  kind {:>3}  {:>8} bytes  {preview}",
            record.lsn,
            record.kind,
            record.payload.len()
        )?;
        written += 1;
    }
    Ok(written)
}

pub fn stat(wal: &Wal) -> StatReport {
    let r = wal.recovery_report();
    StatReport {
        segments: wal.stats().segments,
        records: r.records,
        first_lsn: r.first_lsn,
        last_lsn: r.last_lsn,
        bytes_scanned: r.bytes_scanned,
        recovery_time: r.elapsed,
    }
}
