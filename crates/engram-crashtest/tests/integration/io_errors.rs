//! I/O errors injected through the whole database at every kind of call site: each kind of call
//! (open, create, read, write, fdatasync, directory sync, rename, remove, list, lock) fails with
//! EIO — and writes and creates also with ENOSPC — at its 1st, 2nd, ... call, once or for good,
//! during a workload that first reopens an existing database (recovery reads), then commits and
//! checkpoints. Every trial must give a typed error and no panic; an I/O error is never reported
//! as corruption; a commit whose write or fdatasync failed stops the database (every later
//! commit is `Poisoned`, even when the fault was transient: an fsync is never retried); and after
//! the fault clears, a reopen — with the page cache intact, and after a power loss — recovers a
//! state holding every acknowledged commit and the failed one whole or not at all.
//!
//! `ENGRAM_IO_MAX_NTH` (default 4) bounds how many call positions per kind are tried (positions
//! are spread over all the calls of that kind a run makes).

use engram_core::CoreError;
use engram_crashtest::kill::Report;
use engram_crashtest::simulated::{continue_workload, verify};
use engram_crashtest::workload::Mix;
use engram_wal::storage::{CrashMode, FaultKind, FaultStorage, OpKind};
use std::collections::BTreeMap;

const SEED: u64 = 0x10e5;
const PREFIX_TRANSACTIONS: u64 = 10;
const TRANSACTIONS: u64 = 10;

fn mix() -> Mix {
    "memory=3,graph=3,kv=3,event=1,checkpoint=3,big=2".parse().unwrap()
}

/// The prefix every trial starts from: a database built without faults and closed (so the
/// trial's open recovers it, reading the log and the checkpoint).
fn prefix() -> (FaultStorage, Report) {
    let fs = FaultStorage::new();
    let mut run = continue_workload(&fs, SEED, &mix(), Report::default(), PREFIX_TRANSACTIONS);
    drop(run.db.take());
    assert!(run.error.is_none(), "the prefix failed without faults: {:?}", run.error);
    (fs, run.report)
}

fn variant(e: &CoreError) -> &'static str {
    match e {
        CoreError::Io { .. } => "Io",
        CoreError::Wal(_) => "Wal",
        CoreError::Poisoned { .. } => "Poisoned",
        CoreError::CorruptRecord { .. } => "CorruptRecord",
        CoreError::CorruptCheckpoint { .. } => "CorruptCheckpoint",
        CoreError::MissingCheckpoint { .. } => "MissingCheckpoint",
        _ => "other",
    }
}

#[derive(Debug, Default)]
struct Site {
    trials: u64,
    /// Trials in which the fault surfaced as an error.
    errors: u64,
    /// Which operation reported it, and as which error.
    seen: BTreeMap<String, u64>,
    poisoned_checked: u64,
    segment_preparation_failures: u64,
}

#[test]
fn every_io_call_site_failing_once_or_for_good_gives_a_typed_error_and_a_correct_reopen() {
    let max_nth: u64 = std::env::var("ENGRAM_IO_MAX_NTH").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    // How many calls of each kind a faultless trial makes, to spread the positions over them.
    let (fs, report) = prefix();
    let before = fs.calls_by_kind();
    let mut run = continue_workload(&fs, SEED ^ 1, &mix(), report, TRANSACTIONS);
    drop(run.db.take());
    assert!(run.error.is_none());
    let calls: BTreeMap<OpKind, u64> = fs
        .calls_by_kind()
        .into_iter()
        .map(|(k, n)| (k, n - before.get(&k).copied().unwrap_or(0)))
        .collect();

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
    let mut sites: BTreeMap<String, Site> = BTreeMap::new();
    for kind in kinds {
        let total = calls.get(&kind).copied().unwrap_or(0);
        assert!(
            total > 0,
            "a trial never calls {kind:?}: the campaign would not reach that call site"
        );
        let mut positions: Vec<u64> = (1..=max_nth.min(total)).collect();
        positions.extend((1..max_nth).map(|i| 1 + i * total / max_nth));
        positions.sort();
        positions.dedup();
        let faults: &[FaultKind] = if matches!(kind, OpKind::Write | OpKind::Create) {
            &[FaultKind::Io, FaultKind::NoSpace]
        } else {
            &[FaultKind::Io]
        };
        for &fault in faults {
            for persistent in [false, true] {
                let site = sites
                    .entry(format!("{kind:?} {fault:?} {}", if persistent { "persistent" } else { "once" }))
                    .or_default();
                for &nth in &positions {
                    let what = format!("{kind:?} call {nth} of {total} fails ({fault:?}, persistent: {persistent})");
                    let (fs, report) = prefix();
                    fs.fail(Some(kind), nth, persistent, fault);
                    let mut run = continue_workload(&fs, SEED ^ 1, &mix(), report, TRANSACTIONS);
                    site.trials += 1;
                    if let Some(error) = &run.error {
                        site.errors += 1;
                        *site.seen.entry(format!("{} -> {}", run.failed_in, variant(error))).or_default() += 1;
                        assert!(
                            !matches!(
                                error,
                                CoreError::CorruptRecord { .. } | CoreError::CorruptCheckpoint { .. } | CoreError::MissingCheckpoint { .. }
                            ),
                            "{what}: an I/O error reported as corruption: {error}"
                        );
                        // Fail-stop: after a commit's write or fdatasync failed, nothing more commits.
                        // (A failure while preparing the next segment, a temporary file holding no
                        // record yet, refuses the commit without touching the log: no need to stop.)
                        let preparing_segment = error.to_string().contains("preparing segment");
                        if preparing_segment {
                            site.segment_preparation_failures += 1;
                        }
                        if run.failed_in == "commit" && matches!(kind, OpKind::Write | OpKind::Sync) && !preparing_segment {
                            let db = run.db.as_ref().expect("the run opened the database");
                            let mut txn = db.begin();
                            txn.kv_put("agent", b"after-failure", engram_core::KvValue::Json(serde_json::json!(1)))
                                .unwrap();
                            match txn.commit() {
                                Err(CoreError::Poisoned { .. }) => site.poisoned_checked += 1,
                                other => {
                                    panic!("{what}: after the commit failed with {error}, the next commit returned {other:?}, not Poisoned")
                                }
                            }
                        }
                    }
                    drop(run.db.take());
                    fs.clear_faults();
                    // The process lives on (page cache intact), then the power fails.
                    fs.crash(CrashMode::ProcessOnly);
                    verify(&fs, &run.report).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
                    fs.crash(CrashMode::DropUnsynced);
                    verify(&fs, &run.report).unwrap_or_else(|e| panic!("{what}: reopen after power loss: {e}"));
                }
            }
        }
    }
    println!("calls of each kind in a faultless trial: {calls:?}");
    let mut trials = 0;
    for (name, site) in &sites {
        trials += site.trials;
        println!(
            "{name:28} trials {:3}  errors {:3}  poisoned checked {:2}  segment preparation {:2}  {:?}",
            site.trials, site.errors, site.poisoned_checked, site.segment_preparation_failures, site.seen
        );
        assert!(site.errors > 0, "{name}: no trial surfaced the fault");
    }
    println!("{trials} trials, no panic, every reopen correct");
}
