//! Open-time recovery: find the segments, check their headers and their chain, walk every
//! record, and decide whether a damaged end is a torn write (repairable) or corruption.
//! Nothing on disk is changed until every check has passed.

use crate::error::{Error, IoContext, Lsn, Result};
use crate::format::{is_zero, parse_segment_file_name, HeaderState, SegmentHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::options::{RecoveryMode, WalOptions};
use crate::prealloc::Prepared;
use crate::segment::{scan_remainder, End, Segment, SegmentCursor, Step, OPEN_ENDED};
use crate::storage::{read_exact_at, OpenMode, Storage, StorageFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What recovery found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub bytes_scanned: u64,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    /// Where a torn write was zeroed, if one was.
    pub torn_tail_repaired: Option<(PathBuf, u64)>,
    pub elapsed: Duration,
}

pub(crate) struct Recovered {
    /// Started segments, oldest first; the last is the active one.
    pub segments: Vec<Arc<Segment>>,
    pub active_end_offset: u64,
    pub last_lsn: Lsn,
    pub last_crc: u32,
    /// Zero-filled segments found ready for use.
    pub prepared: Vec<Prepared>,
    pub next_segment_id: u64,
    pub report: RecoveryReport,
}

struct Candidate {
    id: u64,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    file_bytes: u64,
    header: HeaderState,
}

struct Scanned {
    segment: Candidate,
    header: SegmentHeader,
    last_lsn: Lsn,
    last_crc: u32,
    end: End,
    records: u64,
}

fn corruption(path: &Path, offset: u64, lsn: Lsn, reason: impl Into<String>) -> Error {
    Error::Corruption {
        file: path.to_path_buf(),
        offset,
        lsn,
        reason: reason.into(),
    }
}

pub(crate) fn recover(storage: &dyn Storage, dir: &Path, options: &WalOptions) -> Result<Recovered> {
    let started_at = Instant::now();
    let names = storage.list(dir).context(|| format!("listing {}", dir.display()))?;
    let mut ids: Vec<u64> = names.iter().filter_map(|n| parse_segment_file_name(n)).collect();
    ids.sort_unstable();
    let leftovers: Vec<PathBuf> = names.iter().filter(|n| n.ends_with(".seg.tmp")).map(|n| dir.join(n)).collect();

    let mut candidates = Vec::with_capacity(ids.len());
    for &id in &ids {
        let path = dir.join(crate::format::segment_file_name(id));
        let file = storage
            .open(&path, OpenMode::ReadWrite)
            .context(|| format!("opening {}", path.display()))?;
        let file_bytes = file.size_bytes().context(|| format!("reading the size of {}", path.display()))?;
        let header = if file_bytes < SEGMENT_HEADER_BYTES as u64 {
            HeaderState::Invalid("file shorter than a segment header")
        } else {
            let mut b = [0u8; SEGMENT_HEADER_BYTES];
            read_exact_at(&*file, &mut b, 0).context(|| format!("reading the header of {}", path.display()))?;
            match SegmentHeader::decode(&b) {
                HeaderState::Valid(h) if h.segment_id != id => HeaderState::Invalid("segment id does not match the file name"),
                other => other,
            }
        };
        if let HeaderState::OtherVersion(found) = header {
            return Err(Error::UnsupportedVersion {
                file: path,
                found,
                supported: crate::format::FORMAT_VERSION,
            });
        }
        candidates.push(Candidate {
            id,
            path,
            file,
            file_bytes,
            header,
        });
    }

    let started_count = candidates
        .iter()
        .rposition(|c| matches!(c.header, HeaderState::Valid(_)))
        .map_or(0, |i| i + 1);
    let unstarted = candidates.split_off(started_count);
    let mut to_delete: Vec<PathBuf> = leftovers;
    let mut prepared = Vec::new();
    for c in unstarted {
        match c.header {
            HeaderState::Zero if c.file_bytes == options.segment_bytes => {
                prepared.push(Prepared {
                    id: c.id,
                    path: c.path,
                    file: c.file,
                });
            }
            HeaderState::Zero => to_delete.push(c.path),
            _ => {
                // A header that was being written when the machine stopped: records are written
                // only after the header is durable, so the first record slot must still be zero.
                let mut slot = [0u8; RECORD_HEADER_BYTES];
                let slot_zero = c.file_bytes < (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES) as u64 || {
                    read_exact_at(&*c.file, &mut slot, SEGMENT_HEADER_BYTES as u64)
                        .context(|| format!("reading the first record slot of {}", c.path.display()))?;
                    is_zero(&slot)
                };
                let HeaderState::Invalid(why) = c.header else {
                    unreachable!("only invalid headers remain")
                };
                if !slot_zero {
                    return Err(corruption(&c.path, 0, 0, format!("{why}, and the segment holds data")));
                }
                if options.recovery_mode == RecoveryMode::Absolute {
                    return Err(Error::TornTail {
                        file: c.path,
                        offset: 0,
                        lsn: 0,
                    });
                }
                to_delete.push(c.path);
            }
        }
    }

    let mut scanned: Vec<Scanned> = Vec::with_capacity(candidates.len());
    let mut bytes_scanned = 0u64;
    for c in candidates {
        let HeaderState::Valid(header) = c.header else {
            let why = match c.header {
                HeaderState::Zero => "segment header is missing (zero) but later segments hold data",
                HeaderState::Invalid(why) => why,
                _ => "unreadable header",
            };
            return Err(corruption(&c.path, 0, 0, why));
        };
        while let Some(prev) = scanned.last_mut() {
            if header.prev_last_lsn + 1 < prev.header.first_lsn() {
                // Superseded by a suffix truncation whose header this is and which stopped
                // before removing it.
                let dead = scanned.pop().expect("checked above");
                to_delete.push(dead.segment.path);
                continue;
            }
            link(prev, &header, &c.path, options)?;
            if prev.last_lsn >= prev.header.first_lsn() {
                break;
            }
            // Cut to nothing by a suffix truncation that stopped before removing it; the new
            // segment must then continue the one before.
            let dead = scanned.pop().expect("checked above");
            to_delete.push(dead.segment.path);
        }
        let s = scan_segment(c, header, options.max_record_bytes)?;
        bytes_scanned += s.end.offset();
        scanned.push(s);
    }

    let next_segment_id = ids.last().map_or(1, |id| id + 1);
    let mut report = RecoveryReport {
        bytes_scanned,
        ..Default::default()
    };
    let (active_end_offset, last_lsn, last_crc) = match scanned.last() {
        None => (SEGMENT_HEADER_BYTES as u64, 0, 0),
        Some(last) => {
            let repair = check_tail(last, options)?;
            if let Some((from, to)) = repair {
                zero_range(&*last.segment.file, from, to)
                    .context(|| format!("zeroing the torn tail of {}", last.segment.path.display()))?;
                tracing::warn!(file = %last.segment.path.display(), offset = from, "zeroed a torn write at the end of the log");
                report.torn_tail_repaired = Some((last.segment.path.clone(), from));
            }
            // A process that stopped without syncing may have left records in the page cache
            // only; they are reported durable from now on, so make them so.
            last.segment
                .file
                .sync_data()
                .context(|| format!("syncing {}", last.segment.path.display()))?;
            (last.end.offset(), last.last_lsn, last.last_crc)
        }
    };

    for path in &to_delete {
        storage.remove(path).context(|| format!("removing {}", path.display()))?;
    }
    // Always, not only after removals: a process that died between renaming a prepared segment
    // and syncing the directory left a name that is visible but not durable. Recovery adopts
    // that segment, so its name must be durable before records acknowledged in it are.
    storage.sync_dir(dir).context(|| format!("syncing directory {}", dir.display()))?;

    report.segments = scanned.len();
    report.records = scanned.iter().map(|s| s.records).sum();
    report.first_lsn = scanned.first().map_or(1, |s| s.header.first_lsn());
    report.last_lsn = last_lsn;
    report.elapsed = started_at.elapsed();
    let count = scanned.len();
    let segments = scanned
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let last = if i + 1 == count { OPEN_ENDED } else { s.last_lsn };
            Arc::new(Segment::new(s.segment.path, s.segment.file, s.header, last))
        })
        .collect();
    Ok(Recovered {
        segments,
        active_end_offset,
        last_lsn,
        last_crc,
        prepared,
        next_segment_id,
        report,
    })
}

fn scan_segment(c: Candidate, header: SegmentHeader, max_record_bytes: usize) -> Result<Scanned> {
    let mut cursor = SegmentCursor::new(c.file.clone(), header.salt, c.file_bytes, max_record_bytes);
    let mut last_lsn = header.prev_last_lsn;
    let mut last_crc = header.prev_last_crc;
    let mut records = 0;
    let end = loop {
        let step = cursor
            .step(last_lsn + 1, Lsn::MAX)
            .context(|| format!("reading {}", c.path.display()))?;
        match step {
            Step::Record(h) => {
                last_lsn = h.lsn;
                last_crc = h.crc;
                records += 1;
            }
            Step::End(end) => break end,
        }
    };
    Ok(Scanned {
        segment: c,
        header,
        last_lsn,
        last_crc,
        end,
        records,
    })
}

/// Checks that `next` continues `prev`. A next segment that starts inside `prev` marks a suffix
/// truncation: `prev` is cut back to the record the next header names.
fn link(prev: &mut Scanned, next: &SegmentHeader, next_path: &Path, options: &WalOptions) -> Result<()> {
    let p = next.prev_last_lsn;
    if p > prev.last_lsn {
        return Err(match &prev.end {
            End::Bad { offset, reason } => corruption(&prev.segment.path, *offset, prev.last_lsn + 1, reason.clone()),
            End::Clean { offset } => corruption(
                &prev.segment.path,
                *offset,
                prev.last_lsn + 1,
                format!(
                    "records {}..={p} are missing: {} continues from LSN {p}",
                    prev.last_lsn + 1,
                    next_path.display()
                ),
            ),
        });
    }
    if p + 1 < prev.header.first_lsn() {
        return Err(corruption(
            next_path,
            0,
            p,
            format!("header continues from LSN {p}, before the previous segment starts"),
        ));
    }
    if p < prev.last_lsn {
        let (crc, end_offset) = locate_cut(prev, p, options)?;
        prev.last_lsn = p;
        prev.last_crc = crc;
        prev.end = End::Clean { offset: end_offset };
    } else if let End::Bad { offset, reason } = &prev.end {
        tracing::warn!(file = %prev.segment.path.display(), offset, reason, "ignoring damaged bytes after the last record of a sealed segment");
    }
    if next.prev_last_crc != prev.last_crc {
        return Err(corruption(
            next_path,
            0,
            p,
            format!(
                "header names checksum {:#010x} for LSN {p}, the log has {:#010x}",
                next.prev_last_crc, prev.last_crc
            ),
        ));
    }
    Ok(())
}

/// Finds the checksum of record `lsn` in `s` and the offset after it.
fn locate_cut(s: &Scanned, lsn: Lsn, options: &WalOptions) -> Result<(u32, u64)> {
    let mut cursor = SegmentCursor::new(
        s.segment.file.clone(),
        s.header.salt,
        s.segment.file_bytes,
        options.max_record_bytes,
    );
    let mut crc = s.header.prev_last_crc;
    for expected in s.header.first_lsn()..=lsn {
        match cursor
            .step(expected, Lsn::MAX)
            .context(|| format!("reading {}", s.segment.path.display()))?
        {
            Step::Record(h) => crc = h.crc,
            Step::End(end) => {
                return Err(corruption(
                    &s.segment.path,
                    end.offset(),
                    expected,
                    "record vanished during recovery",
                ))
            }
        }
    }
    Ok((crc, cursor.offset))
}

/// Decides what the end of the last segment is. Returns the byte range to zero for a torn write.
fn check_tail(last: &Scanned, options: &WalOptions) -> Result<Option<(u64, u64)>> {
    let seg = &last.segment;
    let end_offset = last.end.offset();
    let rest = scan_remainder(&*seg.file, last.header.salt, end_offset, seg.file_bytes, options.max_record_bytes)
        .context(|| format!("reading {}", seg.path.display()))?;
    let next_lsn = last.last_lsn + 1;
    if let Some(at) = rest
        .valid_record_at
        .filter(|&at| !lost_unsynced_writes_before(last, at).unwrap_or(false))
    {
        let reason = match &last.end {
            End::Bad { reason, .. } => format!("{reason}, yet a valid record follows at offset {at}"),
            End::Clean { .. } => format!("a valid record at offset {at} lies beyond the end of the written log"),
        };
        return Err(corruption(&seg.path, end_offset, next_lsn, reason));
    }
    if rest.nonzero_end <= end_offset {
        return Ok(None);
    }
    if options.recovery_mode == RecoveryMode::Absolute {
        return Err(Error::TornTail {
            file: seg.path.clone(),
            offset: end_offset,
            lsn: next_lsn,
        });
    }
    Ok(Some((end_offset, rest.nonzero_end)))
}

pub(crate) fn zero_range(file: &dyn StorageFile, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 256 * 1024];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.len());
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// True when the log ends at a zero record header and the valid record at `at` beyond it
/// carries a later LSN than the next expected one: earlier unsynced writes were lost while a
/// later one (never acknowledged: a sync would have covered the lost ones) reached the disk.
fn lost_unsynced_writes_before(last: &Scanned, at: u64) -> std::io::Result<bool> {
    if !matches!(last.end, End::Clean { .. }) {
        return Ok(false);
    }
    let mut head = [0u8; RECORD_HEADER_BYTES];
    read_exact_at(&*last.segment.file, &mut head, at)?;
    Ok(crate::format::RecordHeader::parse(&head).is_some_and(|h| h.lsn > last.last_lsn + 1))
}
