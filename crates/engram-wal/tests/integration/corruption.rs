//! Corruption sweep: every byte of a small multi-segment log is damaged in turn (bit flip, zero,
//! random value), and the log is reopened. The contract:
//! - open never panics;
//! - open either fails with a corruption error that names the damaged file (at or before the
//!   damaged offset), or succeeds;
//! - when it succeeds, the records it serves are a prefix of what was appended, byte for byte;
//!   records are missing only if the damage hit the last record of the last segment (a torn
//!   tail, truncated), and never in `Absolute` mode.

use engram_wal::storage::FaultStorage;
use engram_wal::{Error, Record, RecoveryMode, Wal, WalOptions};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DIR: &str = "/db";

fn options(mode: RecoveryMode) -> WalOptions {
    WalOptions {
        segment_bytes: 8192,
        max_record_bytes: 1024,
        background_preallocation: false,
        recovery_mode: mode,
        ..Default::default()
    }
}

struct Reference {
    files: Vec<(PathBuf, Vec<u8>)>,
    records: Vec<Record>,
    /// Byte range of the last record in the last segment file.
    last_record: (PathBuf, u64, u64),
}

fn build_reference() -> Reference {
    let fs = FaultStorage::new();
    let wal = Wal::open_with_storage(Arc::new(fs.clone()), DIR, options(RecoveryMode::TolerateTornTail)).unwrap();
    let mut records = Vec::new();
    for i in 0..230u64 {
        let payload: Vec<u8> = (0..(i * 13 % 150) as usize).map(|j| (i * 7 + j as u64) as u8).collect();
        let lsn = wal.append((i % 200 + 1) as u8, &payload).unwrap();
        records.push(Record {
            lsn,
            kind: (i % 200 + 1) as u8,
            payload,
        });
    }
    assert!(wal.stats().segments >= 3, "the reference log spans several segments");
    wal.close().unwrap();
    let files: Vec<(PathBuf, Vec<u8>)> = fs
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| (p.clone(), fs.read_file(&p).unwrap()))
        .collect();
    let last = records.last().unwrap();
    let framed = engram_wal::layout::framed_bytes(last.payload.len()) as u64;
    let (last_path, last_bytes) = files.iter().rev().find(|(_, b)| b[..64].iter().any(|&x| x != 0)).unwrap();
    let end = find_record_end(last_bytes, last.lsn);
    Reference {
        last_record: (last_path.clone(), end - framed, end),
        files,
        records,
    }
}

/// Offset just past the record with `lsn` in a segment image (walking the framing).
fn find_record_end(segment: &[u8], lsn: u64) -> u64 {
    let mut at = engram_wal::layout::SEGMENT_HEADER_BYTES;
    loop {
        let h = engram_wal::layout::RecordHeader::parse(&segment[at..]).expect("a record header");
        at += h.framed_bytes();
        if h.lsn == lsn {
            return at as u64;
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    trials: u64,
    unchanged: u64,
    detected: u64,
    torn_tail_truncated: u64,
}

enum Damage {
    FlipBit(u8),
    Zero,
    Value(u8),
}

fn trial(reference: &Reference, file_index: usize, offset: usize, damage: &Damage, mode: RecoveryMode, tally: &mut Tally) {
    let mut files = reference.files.clone();
    let (path, bytes) = &mut files[file_index];
    let original = bytes[offset];
    bytes[offset] = match damage {
        Damage::FlipBit(bit) => original ^ (1 << bit),
        Damage::Zero => 0,
        Damage::Value(v) => *v,
    };
    if bytes[offset] == original {
        return;
    }
    let path = path.clone();
    tally.trials += 1;
    let fs = FaultStorage::with_files(Path::new(DIR), &files);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let wal = Wal::open_with_storage(Arc::new(fs.clone()), DIR, options(mode))?;
        let read: Result<Vec<Record>, Error> = wal.reader(1)?.collect();
        read
    }));
    let place = format!("{} offset {offset} ({:?})", path.display(), mode);
    let outcome = outcome.unwrap_or_else(|_| panic!("open or read panicked after damaging {place}"));
    match outcome {
        Err(Error::Corruption {
            file, offset: reported, ..
        }) => {
            assert_eq!(file, path, "the error names the damaged file ({place})");
            assert!(
                reported <= offset as u64,
                "the error points at or before the damage ({place}): {reported}"
            );
            tally.detected += 1;
        }
        Err(Error::TornTail { file, .. }) => {
            assert_eq!(mode, RecoveryMode::Absolute, "only Absolute refuses a torn tail ({place})");
            assert_eq!(file, path, "{place}");
            tally.detected += 1;
        }
        Err(Error::UnsupportedVersion { file, .. }) => {
            assert_eq!(file, path, "{place}");
            tally.detected += 1;
        }
        Err(other) => panic!("unexpected error after damaging {place}: {other}"),
        Ok(records) => {
            assert!(records.len() <= reference.records.len(), "{place}");
            assert_eq!(
                records[..],
                reference.records[..records.len()],
                "served records differ from what was appended ({place})"
            );
            if records.len() < reference.records.len() {
                let (last_path, start, end) = &reference.last_record;
                assert_eq!(mode, RecoveryMode::TolerateTornTail, "Absolute never drops records ({place})");
                assert_eq!(
                    records.len() + 1,
                    reference.records.len(),
                    "only the last record may be dropped ({place})"
                );
                assert!(
                    &path == last_path && (*start..*end).contains(&(offset as u64)),
                    "records dropped for damage outside the last record ({place})"
                );
                tally.torn_tail_truncated += 1;
            } else {
                tally.unchanged += 1;
            }
        }
    }
}

fn sweep(mode: RecoveryMode) -> Tally {
    let reference = build_reference();
    let mut tally = Tally::default();
    let mut random = 0x2545_f491_4f6c_dd1du64;
    for file_index in 0..reference.files.len() {
        let len = reference.files[file_index].1.len();
        for offset in 0..len {
            trial(
                &reference,
                file_index,
                offset,
                &Damage::FlipBit((offset % 8) as u8),
                mode,
                &mut tally,
            );
            trial(&reference, file_index, offset, &Damage::Zero, mode, &mut tally);
            if offset % 5 == 0 {
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                trial(&reference, file_index, offset, &Damage::Value(random as u8), mode, &mut tally);
            }
        }
    }
    eprintln!("corruption sweep ({mode:?}): {tally:?}");
    tally
}

#[test]
fn every_damaged_byte_is_detected_or_harmless_tolerate_torn_tail() {
    let tally = sweep(RecoveryMode::TolerateTornTail);
    assert!(tally.trials > 20_000 && tally.detected > 5_000, "{tally:?}");
}

#[test]
fn every_damaged_byte_is_detected_or_harmless_absolute() {
    let tally = sweep(RecoveryMode::Absolute);
    assert_eq!(tally.torn_tail_truncated, 0);
}
