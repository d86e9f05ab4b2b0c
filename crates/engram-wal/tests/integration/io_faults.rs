//! I/O errors at every call site, on the fault-injecting file system.
//!
//! The contract:
//! - a failed fdatasync fails the appends waiting on it, and the log then refuses every call
//!   with `Error::Poisoned` naming the cause, until it is reopened (a retried fsync could report
//!   success for data the kernel already dropped);
//! - any failing call, during open or during use, once or persistently, gives a typed error that
//!   names the failed operation, never a panic and never a misleading error (corruption);
//! - once the fault is gone, reopening (after a power loss or not) recovers a log holding every
//!   acknowledged record, in order, byte for byte, and nothing that was never appended;
//! - a full disk while preparing a segment fails only the append that needed the segment:
//!   nothing is poisoned, no LSN is consumed, and appends succeed again once there is space.

use engram_wal::storage::{CrashMode, FaultKind, FaultStorage, OpKind, OpenMode, Storage};
use engram_wal::{Error, Lsn, SyncPolicy, Wal, WalOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DIR: &str = "/db";

fn options(background_preallocation: bool) -> WalOptions {
    WalOptions {
        segment_bytes: 8192,
        max_record_bytes: 2048,
        background_preallocation,
        ..Default::default()
    }
}

fn open(fs: &FaultStorage) -> engram_wal::Result<Wal> {
    Wal::open_with_storage(Arc::new(fs.clone()), DIR, options(false))
}

fn payload(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

/// True if `e` says which operation failed and carries the injected cause.
fn names_the_injected_fault(e: &Error) -> bool {
    match e {
        Error::Io { context, source } => !context.is_empty() && source.to_string().contains("injected fault"),
        Error::Poisoned { cause } => cause.contains("injected fault"),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The expected log, kept up to date by every call whatever it returned
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Expected {
    /// Every record that got an LSN, at index LSN - 1 (cut by suffix truncations that returned).
    attempted: Vec<(u8, Vec<u8>)>,
    /// Records up to this LSN were acknowledged as durable.
    durable: Lsn,
    /// Records below this LSN may have been removed by a prefix truncation.
    may_drop_below: Lsn,
    /// A suffix truncation to this LSN failed: it may or may not have happened.
    unfinished_cut: Option<Lsn>,
}

impl Expected {
    /// After an append of `records` that returned `result`, whose LSNs (if any) the log reports
    /// through `last_lsn()`: a failed append may or may not have been given LSNs, never part.
    fn appended(
        &mut self,
        wal: &Wal,
        records: &[(u8, Vec<u8>)],
        policy: SyncPolicy,
        result: &engram_wal::Result<Lsn>,
    ) -> Result<(), String> {
        let before = self.attempted.len() as Lsn;
        let after = wal.last_lsn();
        if after == before + records.len() as Lsn {
            self.attempted.extend(records.iter().cloned());
        } else if !(result.is_err() && after == before) {
            return Err(format!(
                "after appending {} records at LSN {before} ({result:?}) the log ends at {after}",
                records.len()
            ));
        }
        if let Ok(last) = result {
            if *last != after {
                return Err(format!("the append returned LSN {last}, the log ends at {after}"));
            }
            if policy == SyncPolicy::Always {
                self.durable = *last;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize, SyncPolicy),
    Batch(usize, usize, SyncPolicy),
    Sync,
    /// Keep the last n records (and whatever shares their segments).
    TruncatePrefixKeeping(Lsn),
    /// Drop the last n records.
    TruncateSuffixDropping(Lsn),
    /// Read every retained durable record through a reader, and compare.
    ReadAll,
}

/// Rotates segments several times, and makes every kind of call.
fn workload() -> Vec<Op> {
    use Op::*;
    use SyncPolicy::{Always, Never};
    vec![
        Append(300, Always),
        Append(1500, Never),
        Batch(3, 200, Always),
        Sync,
        Append(2000, Always),
        Append(2000, Never),
        Append(2000, Always),
        Append(2000, Never),
        Append(2000, Always),
        Append(1000, Never),
        ReadAll,
        TruncatePrefixKeeping(2),
        Append(50, Never),
        TruncateSuffixDropping(2),
        Append(1800, Always),
        Append(1800, Never),
        Append(1800, Always),
        Append(1800, Always),
        Append(1800, Never),
        Append(1800, Always),
        Append(0, Never),
        ReadAll,
        Sync,
        ReadAll,
    ]
}

/// Applies `op`, updating `expected` from what it returned. Returns the error, if any.
fn apply(wal: &Wal, op: &Op, seed: u64, expected: &mut Expected) -> Result<Option<Error>, String> {
    let record = |i: usize| (1 + (seed as usize + i) % 255) as u8;
    let result: engram_wal::Result<()> = match *op {
        Op::Append(len, policy) => {
            let records = vec![(record(0), payload(seed, len))];
            let result = wal.append_with(records[0].0, &records[0].1, policy);
            expected.appended(wal, &records, policy, &result)?;
            result.map(drop)
        }
        Op::Batch(n, len, policy) => {
            let records: Vec<(u8, Vec<u8>)> = (0..n).map(|i| (record(i), payload(seed + i as u64, len))).collect();
            let refs: Vec<(u8, &[u8])> = records.iter().map(|(k, p)| (*k, p.as_slice())).collect();
            let result = wal.append_batch(&refs, policy).map(|r| *r.end());
            expected.appended(wal, &records, policy, &result)?;
            result.map(drop)
        }
        Op::Sync => wal.sync().map(|upto| expected.durable = upto),
        Op::TruncatePrefixKeeping(n) => {
            let keep_from = (expected.attempted.len() as Lsn).saturating_sub(n).max(1);
            expected.may_drop_below = expected.may_drop_below.max(keep_from);
            wal.truncate_prefix(keep_from).map(drop)
        }
        Op::TruncateSuffixDropping(n) => {
            let last_kept = (expected.attempted.len() as Lsn).saturating_sub(n).max(wal.first_lsn() - 1);
            let result = wal.truncate_suffix(last_kept);
            if result.is_ok() {
                expected.attempted.truncate(last_kept as usize);
                expected.durable = last_kept;
                expected.unfinished_cut = None;
            } else {
                expected.unfinished_cut = Some(last_kept);
            }
            result
        }
        Op::ReadAll => (|| {
            for record in wal.reader(wal.first_lsn())? {
                let record = record?;
                let (kind, payload) = &expected.attempted[(record.lsn - 1) as usize];
                assert!(
                    record.kind == *kind && record.payload == *payload,
                    "a reader served LSN {} wrong",
                    record.lsn
                );
            }
            Ok(())
        })(),
    };
    Ok(result.err())
}

/// Checks a reopened log against what was promised, then appends to it.
fn check_recovered(wal: &Wal, expected: &Expected) -> Result<(), String> {
    let (first, last) = (wal.first_lsn(), wal.last_lsn());
    if last > expected.attempted.len() as Lsn {
        return Err(format!(
            "the log ends at LSN {last}; only {} records were appended",
            expected.attempted.len()
        ));
    }
    let required = match expected.unfinished_cut {
        Some(cut) if last < expected.durable && last != cut => {
            return Err(format!(
                "records up to {} were durable and a cut to {cut} failed, but the log ends at {last}",
                expected.durable
            ))
        }
        Some(cut) => expected.durable.min(cut),
        None => expected.durable,
    };
    if last < required {
        return Err(format!(
            "acknowledged records are lost: durable up to {required}, the log ends at {last}"
        ));
    }
    if first > expected.may_drop_below.max(1) {
        return Err(format!("the log starts at {first}; no prefix truncation asked for that"));
    }
    let mut next = first;
    for record in wal.reader(first).map_err(|e| format!("reader: {e}"))? {
        let record = record.map_err(|e| format!("reading LSN {next}: {e}"))?;
        let (kind, payload) = &expected.attempted[(next - 1) as usize];
        if record.lsn != next || record.kind != *kind || record.payload != *payload {
            return Err(format!("LSN {next} is not the record appended with it (got LSN {})", record.lsn));
        }
        next += 1;
    }
    if next != last + 1 {
        return Err(format!("the reader stopped at {next}, the log ends at {last}"));
    }
    match wal.append(1, b"after reopen") {
        Ok(lsn) if lsn == last + 1 => Ok(()),
        other => Err(format!(
            "the first append after reopening returned {other:?}, expected LSN {}",
            last + 1
        )),
    }
}

/// Reopens the log on `fs` with faults cleared, after a power loss or not, and checks it.
fn reopen_and_check(fs: &FaultStorage, power_loss: bool, expected: &Expected) -> Result<(), String> {
    fs.clear_faults();
    if power_loss {
        fs.crash(CrashMode::DropUnsynced);
    }
    let wal = open(fs).map_err(|e| format!("reopening failed: {e}"))?;
    check_recovered(&wal, expected)
}

// ---------------------------------------------------------------------------------------------
// A starting log whose recovery has work to do, copied into a fresh file system per trial
// ---------------------------------------------------------------------------------------------

type Image = Vec<(PathBuf, Vec<u8>)>;

/// A log with durable records, a torn unsynced record at its end, and a leftover temporary
/// file: opening it reads, zeroes, syncs, removes and syncs the directory.
fn starting_log() -> (Image, Expected) {
    let fs = FaultStorage::new();
    let wal = open(&fs).unwrap();
    let mut expected = Expected::default();
    for (i, op) in [
        Op::Append(300, SyncPolicy::Always),
        Op::Append(700, SyncPolicy::Always),
        Op::Append(1900, SyncPolicy::Never),
    ]
    .iter()
    .enumerate()
    {
        assert!(apply(&wal, op, 1000 + i as u64, &mut expected).unwrap().is_none());
    }
    let leftover = fs
        .open(&Path::new(DIR).join("wal-00000000000000000007.seg.tmp"), OpenMode::CreateNew)
        .unwrap();
    leftover.sync_data().unwrap();
    fs.sync_dir(Path::new(DIR)).unwrap();
    fs.crash(CrashMode::TearLastWrite { seed: 5 });
    drop(wal);
    let image = fs.image();
    (image, expected)
}

/// Where an injected fault surfaced.
#[derive(Debug, Default)]
struct Surfaced {
    injections: u64,
    at_open: u64,
    in_workload: u64,
    /// The fault hit a call whose failure the log tolerates (cleanup of a temporary file).
    tolerated: u64,
    /// Operations named by the errors (paths and numbers left out).
    contexts: BTreeSet<String>,
}

/// Opens the starting log (with whatever fault the caller armed) and runs the workload, going on
/// after errors; returns the errors (and whether each came from the open), what the log promised,
/// and any broken promise seen on the way.
fn session(fs: &FaultStorage, mut expected: Expected) -> (Vec<(bool, Error)>, Expected, Result<(), String>) {
    let mut errors = Vec::new();
    let wal = match open(fs) {
        Ok(wal) => wal,
        Err(e) => {
            errors.push((true, e));
            return (errors, expected, Ok(()));
        }
    };
    // Recovery drops the unsynced records it cannot use; LSNs continue after what it kept.
    let recovered = wal.last_lsn();
    if recovered < expected.durable || recovered > expected.attempted.len() as Lsn {
        let violation = format!(
            "recovered up to LSN {recovered}, expected {}..={}",
            expected.durable,
            expected.attempted.len()
        );
        return (errors, expected, Err(violation));
    }
    expected.attempted.truncate(recovered as usize);
    for (i, op) in workload().iter().enumerate() {
        match apply(&wal, op, i as u64, &mut expected) {
            Ok(Some(e)) => errors.push((false, e)),
            Ok(None) => {}
            Err(violation) => return (errors, expected, Err(violation)),
        }
    }
    (errors, expected, Ok(()))
}

fn context_shape(e: &Error) -> String {
    let text = match e {
        Error::Io { context, .. } => context.clone(),
        Error::Poisoned { .. } => "(poisoned)".into(),
        other => format!("{other}"),
    };
    text.split_whitespace()
        .map(|w| if w.starts_with('/') { "<path>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One armed fault: `kind` call `nth` (counted from the open) fails with `fault`, once or from
/// then on; the log is opened and used, then reopened with the fault gone, after a power loss or
/// not. Returns what went wrong, if anything.
fn fault_trial(
    image: &Image,
    start: &Expected,
    fault: (OpKind, u64, FaultKind, bool),
    power_loss: bool,
    tally: &mut Surfaced,
) -> Option<String> {
    let (kind, nth, fault_kind, persistent) = fault;
    let place = format!(
        "{kind:?} call {nth} failing ({fault_kind:?}) {}, {}",
        if persistent { "from then on" } else { "once" },
        if power_loss { "then power loss" } else { "then reopen" }
    );
    let fs = FaultStorage::with_files(Path::new(DIR), image);
    fs.fail(Some(kind), nth, persistent, fault_kind);
    let Ok((errors, expected, outcome)) = catch_unwind(AssertUnwindSafe(|| session(&fs, start.clone()))) else {
        return Some(format!("{place}: panicked"));
    };
    tally.injections += 1;
    match errors.first() {
        None => tally.tolerated += 1,
        Some((true, _)) => tally.at_open += 1,
        Some((false, _)) => tally.in_workload += 1,
    }
    for (_, e) in &errors {
        tally.contexts.insert(context_shape(e));
        if !names_the_injected_fault(e) {
            return Some(format!("{place}: unclear error: {e}"));
        }
    }
    outcome
        .and_then(|()| reopen_and_check(&fs, power_loss, &expected))
        .err()
        .map(|v| format!("{place}: {v}"))
}

#[test]
fn every_failing_call_during_open_or_use_gives_a_clear_error_and_a_reopen_recovers_every_acknowledged_record() {
    let started = Instant::now();
    let (image, start) = starting_log();

    // A fault-free run counts the calls of each kind that opening and the workload make.
    let fs = FaultStorage::with_files(Path::new(DIR), &image);
    let before = fs.calls_by_kind();
    let (errors, expected, outcome) = session(&fs, start.clone());
    assert!(
        errors.is_empty() && outcome.is_ok(),
        "the fault-free run succeeds: {errors:?} {outcome:?}"
    );
    let calls: BTreeMap<OpKind, u64> = fs
        .calls_by_kind()
        .into_iter()
        .map(|(k, n)| (k, n - before.get(&k).copied().unwrap_or(0)))
        .collect();
    reopen_and_check(&fs, true, &expected).unwrap();

    let kinds = [
        OpKind::Open,
        OpKind::Create,
        OpKind::Read,
        OpKind::Write,
        OpKind::Sync,
        OpKind::SyncDir,
        OpKind::Rename,
        OpKind::Remove,
        OpKind::List,
        OpKind::Lock,
    ];
    let mut surfaced: BTreeMap<OpKind, Surfaced> = BTreeMap::new();
    let mut violations = Vec::new();
    for kind in kinds {
        let count = calls.get(&kind).copied().unwrap_or(0);
        assert!(count > 0, "opening and the workload make {kind:?} calls");
        // Every call when there are few; a spread including the first and last otherwise.
        let nths: BTreeSet<u64> = (0..12u64).map(|i| 1 + i * (count - 1) / 11).chain(1..=count.min(12)).collect();
        // A full disk is what creating and writing files can also report.
        let fault_kinds: &[FaultKind] = match kind {
            OpKind::Create | OpKind::Write => &[FaultKind::Io, FaultKind::NoSpace],
            _ => &[FaultKind::Io],
        };
        let tally = surfaced.entry(kind).or_default();
        for &nth in &nths {
            for &fault_kind in fault_kinds {
                for persistent in [false, true] {
                    for power_loss in [false, true] {
                        let fault = (kind, nth, fault_kind, persistent);
                        violations.extend(fault_trial(&image, &start, fault, power_loss, tally));
                    }
                }
            }
        }
    }
    eprintln!("calls per kind in one open + workload: {calls:?}");
    let mut trials = 0;
    for (kind, s) in &surfaced {
        trials += s.injections;
        eprintln!(
            "{kind:?}: {} injections: {} failed the open, {} failed the workload, {} tolerated; errors name: {:?}",
            s.injections, s.at_open, s.in_workload, s.tolerated, s.contexts
        );
    }
    eprintln!("{trials} fault trials in {:.1?}", started.elapsed());
    assert!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
    for (kind, s) in &surfaced {
        assert!(s.at_open + s.in_workload > 0, "some {kind:?} fault surfaced as an error");
    }
}

// ---------------------------------------------------------------------------------------------
// fdatasync failures
// ---------------------------------------------------------------------------------------------

/// A log with `durable` acknowledged records and one unsynced one, then a failed fdatasync.
/// Returns the log, the expected contents and the error of the append whose sync failed.
fn log_with_a_failed_fdatasync(fs: &FaultStorage) -> (Wal, Expected, Error) {
    let wal = open(fs).unwrap();
    let mut expected = Expected::default();
    for i in 0..5 {
        assert!(apply(&wal, &Op::Append(100 + i * 300, SyncPolicy::Always), i as u64, &mut expected)
            .unwrap()
            .is_none());
    }
    assert!(apply(&wal, &Op::Append(64, SyncPolicy::Never), 9, &mut expected).unwrap().is_none());
    fs.fail(Some(OpKind::Sync), 1, false, FaultKind::Io);
    let error = apply(&wal, &Op::Append(500, SyncPolicy::Always), 10, &mut expected)
        .unwrap()
        .expect("the append whose fdatasync failed returns an error");
    (wal, expected, error)
}

#[test]
fn a_failed_fdatasync_fails_its_append_and_every_later_call_reports_the_log_poisoned_by_it() {
    let fs = FaultStorage::new();
    let (wal, expected, error) = log_with_a_failed_fdatasync(&fs);
    // The appender whose fdatasync failed gets the poisoned error naming it (not the typed
    // `Error::Io`): either way the error names the failed call.
    assert!(
        names_the_injected_fault(&error) && error.to_string().contains("fdatasync"),
        "the error names the failed fdatasync: {error}"
    );
    assert_eq!(wal.durable_lsn(), 5, "nothing after the failed sync is durable");

    // The fault was a single failure, yet the log does not try to sync again: after a failed
    // fdatasync the kernel may have dropped the dirty pages, and a retry could succeed anyway.
    let later: Vec<(&str, engram_wal::Result<()>)> = vec![
        ("append Always", wal.append_with(1, b"x", SyncPolicy::Always).map(drop)),
        ("append Never", wal.append_with(1, b"x", SyncPolicy::Never).map(drop)),
        (
            "append_batch",
            wal.append_batch(&[(1, b"a"), (2, b"b")], SyncPolicy::Never).map(drop),
        ),
        ("sync", wal.sync().map(drop)),
        ("truncate_prefix", wal.truncate_prefix(3).map(drop)),
        ("truncate_suffix", wal.truncate_suffix(2)),
    ];
    for (call, result) in later {
        match result {
            Err(Error::Poisoned { cause }) => assert!(
                cause.contains("fdatasync") && cause.contains("injected fault"),
                "{call}: the poisoned error names its cause: {cause}"
            ),
            other => panic!("{call} after a failed fdatasync returned {other:?}, expected Error::Poisoned"),
        }
    }
    assert_eq!(wal.last_lsn(), expected.attempted.len() as Lsn, "refused calls take no LSN");
    let served: Vec<Lsn> = wal.reader(1).unwrap().map(|r| r.unwrap().lsn).collect();
    assert_eq!(served, (1..=5).collect::<Vec<_>>(), "readers still serve the durable records");
}

#[test]
fn after_a_failed_fdatasync_reopening_recovers_every_acknowledged_record_with_or_without_power_loss() {
    for power_loss in [false, true] {
        let fs = FaultStorage::new();
        let (wal, expected, _) = log_with_a_failed_fdatasync(&fs);
        drop(wal);
        reopen_and_check(&fs, power_loss, &expected).unwrap_or_else(|v| panic!("power loss {power_loss}: {v}"));
    }
}

#[test]
fn appenders_sharing_a_failed_fdatasync_all_get_errors_and_no_acknowledged_record_is_lost() {
    let fs = FaultStorage::new();
    let wal = open(&fs).unwrap();
    wal.append(1, b"before").unwrap();
    fs.fail(Some(OpKind::Sync), 3, false, FaultKind::Io);
    let acknowledged: Vec<Lsn> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let wal = &wal;
                s.spawn(move || {
                    let mut ok = Vec::new();
                    for i in 0..50u8 {
                        match wal.append_with(t + 1, &[t, i], SyncPolicy::Always) {
                            Ok(lsn) => ok.push(lsn),
                            Err(e) => {
                                assert!(names_the_injected_fault(&e), "{e}");
                                break;
                            }
                        }
                    }
                    ok
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(acknowledged.len() < 200, "the failed fdatasync failed some appends");
    let durable = wal.durable_lsn();
    assert!(acknowledged.iter().all(|&lsn| lsn <= durable), "every acknowledged LSN is durable");
    drop(wal);
    fs.crash(CrashMode::DropUnsynced);
    let wal = open(&fs).unwrap();
    assert!(
        wal.last_lsn() >= durable,
        "acknowledged records survive: durable {durable}, log ends at {}",
        wal.last_lsn()
    );
    let present: BTreeSet<Lsn> = wal.reader(1).unwrap().map(|r| r.unwrap().lsn).collect();
    assert!(acknowledged.iter().all(|lsn| present.contains(lsn)));
}

// ---------------------------------------------------------------------------------------------
// A full disk while preparing segments
// ---------------------------------------------------------------------------------------------

/// The disk fills up: from now on, creating the temporary file of a new segment fails, or
/// zero-filling the temporary file of segment `id` does (the only writes that need new space;
/// records go into space zero-filled ahead).
fn fill_the_disk(fs: &FaultStorage, site: OpKind, id: u64) {
    let path = match site {
        OpKind::Create => ".seg.tmp".to_string(),
        _ => format!("wal-{id:020}.seg.tmp"),
    };
    fs.fail_on_path(site, &path, 1, true, FaultKind::NoSpace);
}

fn is_disk_full(e: &Error) -> bool {
    matches!(e, Error::Io { context, source } if context.contains("preparing segment") && source.kind() == ErrorKind::StorageFull)
}

fn leftover_temporary_files(fs: &FaultStorage) -> Vec<PathBuf> {
    fs.files().into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).collect()
}

/// Appends 2000-byte records until one needs a segment that cannot be prepared; returns its
/// error. Four such records fill an 8 KiB segment but for 32 bytes.
fn append_until_a_segment_is_needed(wal: &Wal) -> Error {
    for _ in 0..10 {
        if let Err(e) = wal.append(1, &[7; 2000]) {
            return e;
        }
    }
    panic!("ten 2000-byte records never needed a new segment");
}

#[test]
fn a_full_disk_fails_only_the_append_that_needs_a_new_segment_and_appends_resume_once_space_is_back() {
    for site in [OpKind::Create, OpKind::Write] {
        let fs = FaultStorage::new();
        let wal = open(&fs).unwrap();
        fill_the_disk(&fs, site, 2);
        let error = append_until_a_segment_is_needed(&wal);
        assert!(
            is_disk_full(&error),
            "{site:?}: the error says the disk is full while preparing a segment: {error}"
        );
        let last = wal.last_lsn();
        assert_eq!(last, 4, "{site:?}: the failed append took no LSN");
        assert!(
            leftover_temporary_files(&fs).is_empty(),
            "{site:?}: the half-prepared file is removed"
        );

        // Not poisoned: what fits in the active segment still goes in, and syncs work.
        assert_eq!(
            wal.append(2, b"").unwrap(),
            last + 1,
            "{site:?}: a record that fits the active segment is appended"
        );
        assert_eq!(wal.sync().unwrap(), last + 1);
        let cut = wal.truncate_suffix(last);
        assert!(
            matches!(&cut, Err(e) if is_disk_full(e)),
            "{site:?}: a cut needs a segment too: {cut:?}"
        );
        assert_eq!(wal.last_lsn(), last + 1, "{site:?}: the failed cut changed nothing");

        fs.clear_faults();
        assert_eq!(
            wal.append(1, &[8; 2000]).unwrap(),
            last + 2,
            "{site:?}: space is back: the next append gets a segment"
        );
        wal.truncate_suffix(last + 1).unwrap();
        assert_eq!(wal.append(3, b"after the cut").unwrap(), last + 2);
        drop(wal);
        fs.crash(CrashMode::DropUnsynced);
        let wal = open(&fs).unwrap();
        let records: Vec<_> = wal.reader(1).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(records.len() as Lsn, last + 2, "{site:?}");
        assert_eq!(records.last().unwrap().payload, b"after the cut", "{site:?}");
    }
}

#[test]
fn a_full_disk_when_creating_a_log_fails_the_open_cleanly_and_a_later_open_succeeds() {
    for site in [OpKind::Create, OpKind::Write] {
        let fs = FaultStorage::new();
        fill_the_disk(&fs, site, 1);
        let error = open(&fs).err().expect("no first segment, no log");
        assert!(is_disk_full(&error), "{site:?}: {error}");
        assert!(leftover_temporary_files(&fs).is_empty(), "{site:?}");
        fs.clear_faults();
        let wal = open(&fs).unwrap();
        assert_eq!(wal.append(1, b"hello").unwrap(), 1, "{site:?}");
    }
}

/// With background preparation the failure happens on another thread, before any append needs
/// the segment; the append that does gets it, and once space is back the next one must succeed
/// (not get the failure of an attempt made while the disk was still full).
#[test]
fn a_full_disk_with_background_preparation_fails_the_append_that_needs_the_segment_and_the_next_one_after_space_is_back_succeeds() {
    let fs = FaultStorage::new();
    drop(open(&fs).unwrap()); // one started segment, none prepared ahead
    fill_the_disk(&fs, OpKind::Write, 2);
    let wal = Wal::open_with_storage(Arc::new(fs.clone()), DIR, options(true)).unwrap();
    // Each failed attempt of the preparer ends by removing its temporary file.
    let failed_attempts = || fs.calls_by_kind().get(&OpKind::Remove).copied().unwrap_or(0);
    let wait_for_failed_attempts = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while failed_attempts() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(failed_attempts(), n, "the preparer failed {n} times");
    };
    wait_for_failed_attempts(1);
    let error = append_until_a_segment_is_needed(&wal);
    assert!(is_disk_full(&error), "{error}");
    let last = wal.last_lsn();

    // Reporting its failure makes the preparer try again at once, and fail again while the disk
    // is still full. Space comes back after that.
    wait_for_failed_attempts(2);
    fs.clear_faults();
    match wal.append(1, &[8; 2000]) {
        Ok(lsn) => assert_eq!(lsn, last + 1),
        Err(e) => panic!("space is back, yet the append failed with an earlier attempt's error: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A call site the sweep above does not reach: a half-written header of an unused segment
// ---------------------------------------------------------------------------------------------

/// Recovery deletes an unused segment whose header is damaged if its first record slot is zero
/// (a header write interrupted by a crash). A failure to read that slot is an I/O error, not
/// evidence that the segment holds data.
#[test]
fn a_read_error_while_checking_a_damaged_unused_segment_is_reported_as_an_io_error_not_corruption() {
    let fs = FaultStorage::new();
    let wal = open(&fs).unwrap();
    wal.append(1, b"record").unwrap();
    drop(wal);
    let unused = Path::new(DIR).join("wal-00000000000000000002.seg");
    let mut bytes = vec![0u8; 8192];
    bytes[..8].copy_from_slice(b"ENGRMWAL");
    bytes[8] = 1; // format version 1, then a header whose checksum does not match
    let f = fs.open(&unused, OpenMode::CreateNew).unwrap();
    f.write_all_at(&bytes, 0).unwrap();
    f.sync_data().unwrap();
    fs.sync_dir(Path::new(DIR)).unwrap();

    // Reads of that file at open: its size, its header, then its first record slot.
    fs.fail_on_path(OpKind::Read, "wal-00000000000000000002.seg", 3, false, FaultKind::Io);
    match open(&fs) {
        Err(e) if names_the_injected_fault(&e) => {}
        Err(e) => panic!("a failed read was reported as: {e}"),
        Ok(_) => panic!("the injected read fault was not noticed"),
    }
    fs.clear_faults();
    let wal = open(&fs).unwrap();
    assert_eq!(wal.last_lsn(), 1);
    assert!(!fs.files().contains(&unused), "the half-written unused segment is deleted");
}
