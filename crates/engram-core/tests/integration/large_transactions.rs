//! Large transactions: a transaction larger than one log record streams its operations in OPS
//! records before its COMMIT record, and is still atomic (all of it or none, also across crashes
//! at every I/O point), survives reopen and checkpoints, is invisible at every LSN before its
//! COMMIT, and appears whole in the change feed at its COMMIT's LSN, also for a feed that starts
//! inside its records. A single operation too large for one record is refused and changes
//! nothing.

use crate::options::{open_on, small_log_checkpoints_on_demand};
use engram_core::*;
use engram_wal::storage::{CrashMode, FaultKind, FaultStorage, OpKind};
use engram_wal::Wal;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

const MAX_RECORD: usize = 32 * 1024;
const NS: &str = "agent";

/// Small records and segments, so that a transaction of ~100 KiB takes several records; no
/// background threads, so that the I/O sequence is deterministic for the crash tests.
fn options() -> DatabaseOptions {
    small_log_checkpoints_on_demand(256 * 1024, MAX_RECORD)
}

fn open_fs(fs: &FaultStorage) -> Database {
    open_on(fs, options()).unwrap()
}

fn value(tag: &str, i: usize, bytes: usize) -> KvValue {
    let mut v = format!("{tag}/{i}/").into_bytes();
    v.resize(bytes, (i % 251) as u8);
    KvValue::Bytes(v)
}

fn big_key(tag: &str, i: usize) -> Vec<u8> {
    format!("big/{tag}/{i:04}").into_bytes()
}

/// Writes a large transaction's changes: an event first, `n` puts of 2000 bytes (about
/// `n * 2 KB` of log), an overwrite of `existing` and a deletion of `doomed` if they exist, and
/// an event last.
fn write_big(txn: &mut Transaction, tag: &str, n: usize) -> Result<()> {
    txn.emit_event(NS, "start", json!({ "tag": tag }))?;
    for i in 0..n {
        txn.kv_put(NS, &big_key(tag, i), value(tag, i, 2000))?;
    }
    txn.kv_put(NS, b"existing", KvValue::Json(json!({ "by": tag })))?;
    txn.kv_delete(NS, b"doomed")?;
    txn.emit_event(NS, "end", json!({ "tag": tag }))?;
    Ok(())
}

/// A transaction of about 3.7 times the record limit.
const BIG_N: usize = 60;

fn commit_big(db: &Database, tag: &str, n: usize) -> CommitInfo {
    db.run(100, |t| write_big(t, tag, n)).unwrap().1
}

fn put_json(db: &Database, key: &[u8], v: serde_json::Value) -> CommitInfo {
    db.run(100, |t| t.kv_put(NS, key, KvValue::Json(v.clone()))).unwrap().1
}

/// How much of the large transaction `tag` a view sees: the number of its keys present. It must
/// be 0 or all of them, with `existing` and `doomed` to match.
fn big_keys_seen(view: &Snapshot, tag: &str) -> usize {
    let seen = view.kv_scan_prefix(NS, format!("big/{tag}/").as_bytes()).unwrap();
    for (key, v) in &seen {
        let i: usize = std::str::from_utf8(&key[key.len() - 4..]).unwrap().parse().unwrap();
        assert_eq!(*v, value(tag, i, 2000), "the value of {}", String::from_utf8_lossy(key));
    }
    seen.len()
}

fn assert_all_or_nothing(view: &Snapshot, tag: &str, n: usize) -> bool {
    let seen = big_keys_seen(view, tag);
    let existing = view.kv_get(NS, b"existing").unwrap();
    let doomed = view.kv_get(NS, b"doomed").unwrap();
    if seen == n {
        assert_eq!(existing, Some(KvValue::Json(json!({ "by": tag }))));
        assert_eq!(doomed, None);
        true
    } else {
        assert_eq!(seen, 0, "a part of the transaction ({seen} of {n} keys) is visible");
        assert_ne!(existing, Some(KvValue::Json(json!({ "by": tag }))));
        assert!(doomed.is_some());
        false
    }
}

/// The decoded records of a closed database's log, in LSN order.
fn log_records(wal: Wal) -> Vec<(Lsn, LogRecord, usize)> {
    let mut out = Vec::new();
    for record in wal.reader(wal.first_lsn()).unwrap() {
        let record = record.unwrap();
        let decoded = LogRecord::decode(record.lsn, record.kind, &record.payload).unwrap();
        out.push((record.lsn, decoded, record.payload.len()));
    }
    out
}

fn log_records_at(dir: &Path) -> Vec<(Lsn, LogRecord, usize)> {
    log_records(Wal::open(dir.join(WAL_DIR), options().wal).unwrap())
}

fn log_records_fs(fs: &FaultStorage) -> Vec<(Lsn, LogRecord, usize)> {
    log_records(Wal::open_with_storage(Arc::new(fs.clone()), "/db/wal", options().wal).unwrap())
}

/// Checks the layout of the log: every record within the limit; the OPS records of a
/// transaction are contiguous and each names the first of them; a COMMIT that streamed names it
/// too and directly follows them. Returns (first LSN, commit LSN, records) of every streamed
/// transaction and the number of OPS records that no COMMIT completed.
fn check_layout(records: &[(Lsn, LogRecord, usize)]) -> (Vec<(Lsn, Lsn, usize)>, usize) {
    let mut streamed = Vec::new();
    let mut run: Vec<(Lsn, u64)> = Vec::new();
    let mut orphans = 0;
    for (lsn, record, bytes) in records {
        assert!(*bytes <= MAX_RECORD, "record {lsn} has {bytes} bytes");
        let start = record.transaction_start(*lsn);
        match record {
            LogRecord::Ops { txn_id, .. } => {
                if run.first().is_some_and(|(first, t)| (*first, *t) != (start, *txn_id)) {
                    orphans += run.len();
                    run.clear();
                }
                if run.is_empty() {
                    assert_eq!(start, *lsn, "the OPS record at {lsn} names a start that is not the run's");
                }
                run.push((*lsn, *txn_id));
            }
            LogRecord::Commit { txn_id, first_lsn, .. } => {
                if *first_lsn == 0 {
                    orphans += run.len();
                } else {
                    assert_eq!(
                        run.first().map(|r| r.0),
                        Some(*first_lsn),
                        "the commit at {lsn} follows its OPS records"
                    );
                    assert!(run.iter().all(|(_, t)| t == txn_id), "a foreign record inside transaction {txn_id}");
                    assert_eq!(run.last().unwrap().0 + 1, *lsn, "the OPS records are contiguous with their commit");
                    streamed.push((*first_lsn, *lsn, run.len() + 1));
                }
                run.clear();
            }
        }
    }
    (streamed, orphans + run.len())
}

#[test]
fn a_transaction_three_times_the_record_limit_commits_atomically_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    put_json(&db, b"existing", json!("old"));
    put_json(&db, b"doomed", json!("here"));
    let before = db.visible_lsn();
    let info = commit_big(&db, "one", BIG_N);
    let records = info.lsn - before;
    assert!(records >= 4, "about 120 KB in records of at most 32 KiB: {records} records");
    assert!(db.wal_stats().appended_bytes > 3 * MAX_RECORD as u64);

    // Invisible at every LSN of its streamed records, whole at its commit.
    for lsn in before..info.lsn {
        let view = db.as_of(lsn).unwrap();
        assert!(!assert_all_or_nothing(&view, "one", BIG_N), "visible at LSN {lsn}");
        assert_eq!(view.kv_get(NS, b"existing").unwrap(), Some(KvValue::Json(json!("old"))));
    }
    assert!(assert_all_or_nothing(&db.as_of(info.lsn).unwrap(), "one", BIG_N));
    assert!(assert_all_or_nothing(&db.snapshot(), "one", BIG_N));
    let history = db.snapshot().kv_history(NS, &big_key("one", 7)).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].lsn, history[0].commit_ts_ms), (info.lsn, info.commit_ts_ms));
    // The commit time of every LSN before the commit is that of the earlier commits.
    assert!(db.as_of_time(info.commit_ts_ms - 1).unwrap().read_lsn() <= before);

    // Where a reader must start to get a transaction whole.
    for lsn in before + 1..=info.lsn {
        assert_eq!(db.transaction_start(lsn).unwrap(), before + 1, "at {lsn}");
    }
    assert_eq!(db.transaction_start(before).unwrap(), before);
    assert_eq!(db.transaction_start(info.lsn + 1).unwrap(), info.lsn + 1, "past the end");

    // The transaction after it continues normally.
    let after = put_json(&db, b"after", json!(1));
    assert_eq!(after.lsn, info.lsn + 1);
    assert_eq!(after.txn_id, info.txn_id + 1);
    drop(db);

    // On disk: OPS records of the transaction, then its COMMIT naming the first of them.
    let log = log_records_at(dir.path());
    let (streamed, orphans) = check_layout(&log);
    assert_eq!(streamed, vec![(before + 1, info.lsn, records as usize)]);
    assert_eq!(orphans, 0);

    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.visible_lsn(), after.lsn);
    assert_eq!(db.open_report().replayed_records, after.lsn);
    assert!(assert_all_or_nothing(&db.snapshot(), "one", BIG_N));
    for lsn in before..info.lsn {
        assert!(!assert_all_or_nothing(&db.as_of(lsn).unwrap(), "one", BIG_N));
    }
    assert_eq!(db.snapshot().kv_history(NS, &big_key("one", 7)).unwrap(), history);
    // Transaction ids and commit times continue after the streamed transaction.
    let next = put_json(&db, b"next", json!(2));
    assert_eq!(next.txn_id, after.txn_id + 1);
    assert!(next.commit_ts_ms >= info.commit_ts_ms);
}

/// The events a large transaction `tag` of `n` puts should produce, in order.
fn expected_big_events(
    tag: &str,
    n: usize,
    lsn: Lsn,
    existing_before: serde_json::Value,
) -> Vec<(Lsn, ChangeOp, Option<String>, Option<serde_json::Value>)> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push((lsn, ChangeOp::Put, Some(String::from_utf8(big_key(tag, i)).unwrap()), None));
    }
    out.push((
        lsn,
        ChangeOp::Put,
        Some("existing".into()),
        Some(json!({ "json": existing_before })),
    ));
    out.push((lsn, ChangeOp::Delete, Some("doomed".into()), Some(json!({ "json": "here" }))));
    // Writes come first (in the order they were first made), then the events.
    out.push((lsn, ChangeOp::Event, None, None));
    out.push((lsn, ChangeOp::Event, None, None));
    out
}

fn summary(events: &[ChangeEvent]) -> Vec<(Lsn, ChangeOp, Option<String>, Option<serde_json::Value>)> {
    events.iter().map(|e| (e.lsn, e.op, e.key.clone(), e.before.clone())).collect()
}

#[test]
fn the_feed_returns_a_streamed_transaction_whole_at_its_commit_even_from_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    put_json(&db, b"existing", json!("old"));
    let doomed = put_json(&db, b"doomed", json!("here"));
    let mut follower = db.changes(db.visible_lsn() + 1).unwrap();
    let big = commit_big(&db, "feed", BIG_N);
    // The transaction's first record follows the previous commit.
    let first = doomed.lsn + 1;
    let d = put_json(&db, b"later", json!("d"));
    let big_events = expected_big_events("feed", BIG_N, big.lsn, json!("old"));

    let check = |db: &Database| {
        let all: Vec<ChangeEvent> = db.changes(0).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(all.len(), 2 + big_events.len() + 1);
        assert_eq!(summary(&all[2..2 + big_events.len()]), big_events);
        assert!(all[2..2 + big_events.len()]
            .iter()
            .all(|e| e.txn_id == big.txn_id && e.commit_ts_ms == big.commit_ts_ms));
        assert_eq!(all.last().unwrap().lsn, d.lsn);
        // From every LSN inside the transaction's records, and at its commit: the whole
        // transaction first, then what follows.
        for from in first..=big.lsn {
            let mut feed = db.changes(from).unwrap();
            assert_eq!(feed.position(), from - 1);
            let mut events = Vec::new();
            for _ in 0..big_events.len() {
                events.push(feed.next_event().unwrap().unwrap());
                if events.len() < big_events.len() {
                    assert_eq!(feed.position(), from - 1, "the position moves only once all of it was returned");
                }
            }
            assert_eq!(summary(&events), big_events, "feed from LSN {from}");
            assert_eq!(feed.position(), big.lsn);
            let rest: Vec<ChangeEvent> = feed.collect::<Result<_>>().unwrap();
            assert_eq!(rest.iter().map(|e| e.lsn).collect::<Vec<_>>(), vec![d.lsn]);
        }
        let rest: Vec<ChangeEvent> = db.changes(big.lsn + 1).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(rest.iter().map(|e| e.lsn).collect::<Vec<_>>(), vec![d.lsn]);
        // A filter that leaves nothing of it still moves the position past it.
        let mut other = db.changes(first + 1).unwrap().only_namespace("other");
        assert!(other.next_event().unwrap().is_none());
        assert_eq!(other.position(), d.lsn);
    };
    check(&db);

    // The follower that was waiting at the end of the log gets it whole, in order.
    let mut got = Vec::new();
    while let Some(e) = follower.next_event().unwrap() {
        got.push(e);
    }
    assert_eq!(summary(&got[..big_events.len()]), big_events);
    let hex: String = match value("feed", 3, 2000) {
        KvValue::Bytes(b) => b.iter().map(|b| format!("{b:02x}")).collect(),
        KvValue::Json(_) => unreachable!(),
    };
    assert_eq!(got[3].after, Some(json!({ "hex": hex })), "after images come from the log");
    let start = &got[big_events.len() - 2];
    assert_eq!(start.after, Some(json!({ "topic": "start", "payload": { "tag": "feed" } })));

    drop(db);
    let log = log_records_at(dir.path());
    let (streamed, _) = check_layout(&log);
    assert_eq!(streamed.len(), 1);
    assert_eq!((streamed[0].0, streamed[0].1), (first, big.lsn));
    let db = Database::open(dir.path(), options()).unwrap();
    check(&db);
}

#[test]
fn one_operation_larger_than_a_log_record_is_too_large_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let base = put_json(&db, b"k", json!(0));
    let records = db.wal_stats().last_lsn;

    // Alone, and among many small writes that would otherwise be streamed.
    for others in [0, 100] {
        let mut txn = db.begin();
        for i in 0..others {
            txn.kv_put(NS, format!("small/{i}").as_bytes(), KvValue::Json(json!(i))).unwrap();
        }
        txn.kv_put(NS, b"huge", KvValue::Bytes(vec![1; MAX_RECORD + 1])).unwrap();
        match txn.commit() {
            Err(e @ CoreError::TooLarge { size_bytes, max_bytes, .. }) => {
                assert!(size_bytes > MAX_RECORD && max_bytes < MAX_RECORD && max_bytes > MAX_RECORD - 64);
                assert_eq!(
                    e.to_string(),
                    format!("one operation, encoded for the log with its before and after images, is {size_bytes} bytes; the limit is {max_bytes}")
                );
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(db.wal_stats().last_lsn, records, "nothing was logged");
        assert_eq!(db.snapshot().kv_get(NS, b"huge").unwrap(), None);
        assert!(db.snapshot().kv_scan_prefix(NS, b"small/").unwrap().is_empty());
    }

    // The before image counts: two values that fit one record each do not fit together.
    let half = KvValue::Bytes(vec![2; MAX_RECORD / 2 + 100]);
    let put = db.run(1, |t| t.kv_put(NS, b"half", half.clone())).unwrap().1;
    let records = db.wal_stats().last_lsn;
    let err = db
        .run(1, |t| t.kv_put(NS, b"half", KvValue::Bytes(vec![3; MAX_RECORD / 2 + 100])))
        .unwrap_err();
    assert!(matches!(err, CoreError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("before and after"), "{err}");
    assert_eq!(db.wal_stats().last_lsn, records);
    assert_eq!(db.snapshot().kv_get(NS, b"half").unwrap(), Some(half));

    // Nothing was consumed: the next commit takes the next transaction id.
    let next = put_json(&db, b"k", json!(1));
    assert_eq!(next.txn_id, put.txn_id + 1);
    assert_eq!(next.txn_id, base.txn_id + 2);
}

#[test]
fn a_crash_at_any_point_of_a_streamed_commit_leaves_all_of_it_or_none() {
    let setup = |fs: &FaultStorage| {
        let db = open_fs(fs);
        put_json(&db, b"existing", json!("old"));
        put_json(&db, b"doomed", json!("here"));
        // Fill part of the first segment so that the transaction crosses into the next one.
        for i in 0..8 {
            db.run(1, |t| t.kv_put(NS, format!("fill/{i}").as_bytes(), KvValue::Bytes(vec![9; 20_000])))
                .unwrap();
        }
        db
    };
    let total = {
        let fs = FaultStorage::new();
        let db = setup(&fs);
        let start = fs.mutation_count();
        let before = db.wal_stats().segments;
        commit_big(&db, "crash", BIG_N);
        assert!(db.wal_stats().segments > before, "the transaction spans a segment rotation");
        fs.mutation_count() - start
    };
    assert!(total >= 6, "a streamed commit makes several mutating calls, got {total}");
    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::TearLastWrite { seed: 11 },
        CrashMode::ProcessOnly,
    ];
    let mut outcomes = BTreeMap::new();
    for k in 0..=total {
        for mode in modes {
            let fs = FaultStorage::new();
            let db = setup(&fs);
            let acknowledged = db.visible_lsn();
            fs.crash_after_mutations(fs.mutation_count() + k);
            let result = db.run(1, |t| write_big(t, "crash", BIG_N));
            drop(db);
            fs.crash(mode);
            let db = open_fs(&fs);
            let all = assert_all_or_nothing(&db.snapshot(), "crash", BIG_N);
            if result.is_ok() {
                assert!(all, "an acknowledged commit survives (crash after {k} of {total}, {mode:?})");
            }
            *outcomes.entry((all, result.is_ok())).or_insert(0) += 1;
            // The feed agrees: the whole transaction or nothing of it, at one LSN.
            let events: Vec<ChangeEvent> = db.changes(0).unwrap().collect::<Result<_>>().unwrap();
            let big_events: Vec<&ChangeEvent> = events.iter().filter(|e| e.lsn > acknowledged).collect();
            assert_eq!(big_events.len(), if all { BIG_N + 4 } else { 0 }, "({k}, {mode:?})");
            let commit_lsn = big_events.first().map_or(Lsn::MAX, |e| e.lsn);
            assert!(big_events.iter().all(|e| e.lsn == commit_lsn));
            for lsn in acknowledged..=db.visible_lsn() {
                let visible = assert_all_or_nothing(&db.as_of(lsn).unwrap(), "crash", BIG_N);
                assert_eq!(visible, lsn >= commit_lsn, "as of {lsn} ({k}, {mode:?})");
            }
            // A checkpoint now is at the end of the log, which may be such a record; the log
            // goes on after records of a transaction that never committed, and reopens.
            if k.is_multiple_of(2) {
                assert_eq!(db.checkpoint().unwrap().lsn, db.visible_lsn());
            }
            let next = put_json(&db, b"after-crash", json!(k));
            assert!(next.lsn > acknowledged);
            drop(db);
            let (streamed, orphans) = check_layout(&log_records_fs(&fs));
            if all {
                assert_eq!((streamed.len(), orphans), (1, 0));
            } else {
                assert!(streamed.is_empty());
                assert_eq!(
                    next.lsn,
                    acknowledged + orphans as u64 + 1,
                    "the log goes on after what survived of it"
                );
            }
            let db = open_fs(&fs);
            assert_eq!(assert_all_or_nothing(&db.snapshot(), "crash", BIG_N), all);
            assert_eq!(db.snapshot().kv_get(NS, b"after-crash").unwrap(), Some(KvValue::Json(json!(k))));
            let events: Vec<ChangeEvent> = db.changes(0).unwrap().collect::<Result<_>>().unwrap();
            assert_eq!(events.last().unwrap().lsn, next.lsn);
        }
    }
    // Both outcomes were reached: crashes before the commit record was durable lose it all,
    // crashes after keep it all.
    assert!(
        outcomes.keys().any(|(all, _)| *all) && outcomes.keys().any(|(all, _)| !*all),
        "{outcomes:?}"
    );
}

#[test]
fn records_streamed_before_a_failed_submit_are_dropped_and_the_log_goes_on() {
    let fs = FaultStorage::new();
    let db = open_fs(&fs);
    put_json(&db, b"existing", json!("old"));
    put_json(&db, b"doomed", json!("here"));
    // A transaction larger than two segments needs a new segment file in the middle; creating
    // it fails once (the disk is full), after some of its records were queued.
    fs.fail(Some(OpKind::Create), 1, false, FaultKind::NoSpace);
    let n = 300;
    let err = db.run(1, |t| write_big(t, "failed", n)).unwrap_err();
    assert!(matches!(err, CoreError::Wal(_)), "{err}");
    fs.clear_faults();
    assert_eq!(big_keys_seen(&db.snapshot(), "failed"), 0);
    assert!(!assert_all_or_nothing(&db.snapshot(), "failed", n));
    // The database keeps working; the queued records reach the log ahead of the next commit.
    let next = put_json(&db, b"next", json!(1));
    let big = commit_big(&db, "ok", BIG_N);
    assert!(assert_all_or_nothing(&db.snapshot(), "ok", BIG_N));
    let events: Vec<ChangeEvent> = db.changes(0).unwrap().collect::<Result<_>>().unwrap();
    assert!(events
        .iter()
        .all(|e| e.key.as_deref().is_none_or(|k| !k.starts_with("big/failed/"))));
    assert_eq!(events.iter().filter(|e| e.lsn == big.lsn).count(), BIG_N + 4);
    drop(db);

    let (streamed, orphans) = check_layout(&log_records_fs(&fs));
    assert!(orphans > 0, "records of the failed transaction are in the log");
    assert_eq!(streamed.last().unwrap().1, big.lsn);
    let db = open_fs(&fs);
    assert_eq!(big_keys_seen(&db.snapshot(), "failed"), 0);
    assert!(assert_all_or_nothing(&db.snapshot(), "ok", BIG_N));
    assert_eq!(db.snapshot().kv_get(NS, b"next").unwrap(), Some(KvValue::Json(json!(1))));
    let again: Vec<ChangeEvent> = db.changes(0).unwrap().collect::<Result<_>>().unwrap();
    assert_eq!(again, events);
    // Feeds that start among the orphaned records skip them.
    for from in next.lsn - orphans as u64..=next.lsn {
        let first = db.changes(from).unwrap().next_event().unwrap().unwrap();
        assert_eq!(first.lsn, next.lsn);
    }
    // Transaction ids are not reused after the records of the failed one.
    let later = put_json(&db, b"later", json!(2));
    assert!(later.txn_id > big.txn_id);
}

#[test]
fn small_commits_interleave_correctly_with_large_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    put_json(&db, b"existing", json!("old"));
    let stop = Arc::new(AtomicBool::new(false));
    // Attempts of the current large transaction. Under first-committer-wins a long transaction
    // loses to every short one that commits a key it wrote while it ran, so the small writers
    // contend on `existing` only during a round's first attempts (exercising the conflict and
    // the retry) and then let the large one through: without that it can lose every retry.
    let big_attempts = Arc::new(AtomicU32::new(0));
    const CONTENDED_ATTEMPTS: u32 = 3;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let db = db.clone();
            let stop = stop.clone();
            let big_attempts = big_attempts.clone();
            std::thread::spawn(move || {
                let mut commits = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) || i < 20 {
                    let key = format!("small/{w}");
                    // Every fourth write also touches a key the large transactions write.
                    let contend = i.is_multiple_of(4) && big_attempts.load(Ordering::Relaxed) <= CONTENDED_ATTEMPTS;
                    let info = db
                        .run(1000, |t| {
                            t.kv_put(NS, key.as_bytes(), KvValue::Json(json!(i)))?;
                            if contend {
                                t.kv_put(NS, b"existing", KvValue::Json(json!({ "by": key })))?;
                            }
                            Ok(())
                        })
                        .unwrap()
                        .1;
                    commits.push(info);
                    i += 1;
                }
                commits
            })
        })
        .collect();
    let mut bigs = Vec::new();
    let mut total_big_attempts = 0;
    for round in 0..6 {
        let tag = format!("r{round}");
        big_attempts.store(0, Ordering::Relaxed);
        let info = db
            .run(100, |t| {
                big_attempts.fetch_add(1, Ordering::Relaxed);
                write_big(t, &tag, BIG_N)
            })
            .unwrap()
            .1;
        assert!(assert_all_or_nothing(&db.as_of(info.lsn).unwrap(), &tag, BIG_N));
        assert_eq!(big_keys_seen(&db.as_of(info.lsn - 1).unwrap(), &tag), 0);
        total_big_attempts += big_attempts.load(Ordering::Relaxed);
        bigs.push((tag, info));
    }
    stop.store(true, Ordering::Relaxed);
    // The contention did its work: some large transaction lost to a small one and retried (5 of
    // 6 rounds do, typically).
    assert!(total_big_attempts > 6, "no large transaction ever conflicted");
    let smalls: Vec<CommitInfo> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();

    // Every commit has its own LSN; the feed returns each transaction whole at it, in order.
    let events: Vec<ChangeEvent> = db.changes(0).unwrap().collect::<Result<_>>().unwrap();
    let mut by_lsn: BTreeMap<Lsn, Vec<&ChangeEvent>> = BTreeMap::new();
    for e in &events {
        by_lsn.entry(e.lsn).or_default().push(e);
    }
    assert!(events.windows(2).all(|w| w[0].lsn <= w[1].lsn));
    for info in &smalls {
        let mine = &by_lsn[&info.lsn];
        assert!(mine.iter().all(|e| e.txn_id == info.txn_id) && (1..=2).contains(&mine.len()));
    }
    for (tag, info) in &bigs {
        let mine = &by_lsn[&info.lsn];
        assert_eq!(mine.len(), BIG_N + 3, "{tag}: nothing to delete");
        assert!(mine.iter().all(|e| e.txn_id == info.txn_id));
    }
    assert_eq!(by_lsn.len(), 1 + smalls.len() + bigs.len());
    let state = |db: &Database| {
        let s = db.snapshot();
        (s.kv_scan_prefix(NS, b"").unwrap(), s.read_lsn())
    };
    let before_close = state(&db);
    drop(db);

    // On disk, no small commit fell between a large transaction's records.
    let (streamed, orphans) = check_layout(&log_records_at(dir.path()));
    assert_eq!(orphans, 0);
    assert_eq!(
        streamed.iter().map(|s| s.1).collect::<Vec<_>>(),
        bigs.iter().map(|b| b.1.lsn).collect::<Vec<_>>()
    );
    for (first, commit, _) in &streamed {
        assert!(!smalls.iter().any(|s| (*first..*commit).contains(&s.lsn)));
    }
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(state(&db), before_close);
    for (tag, info) in &bigs {
        assert!(assert_all_or_nothing(&db.as_of(info.lsn).unwrap(), tag, BIG_N));
        assert_eq!(big_keys_seen(&db.as_of(info.lsn - 1).unwrap(), tag), 0);
    }
}

#[test]
fn checkpoints_and_log_truncation_keep_streamed_transactions_whole() {
    // Padding moves the segment boundaries relative to the transactions, so that truncation
    // sometimes keeps only the end of a transaction's records.
    let mut cut_inside = 0;
    for pad in 0..4 {
        cut_inside += checkpoint_and_truncate(pad);
    }
    assert!(cut_inside > 0, "some truncation kept only part of a transaction's records");
}

/// Returns how many start LSNs found the log cut inside a transaction.
fn checkpoint_and_truncate(pad: usize) -> usize {
    let fs = FaultStorage::new();
    let db = open_fs(&fs);
    put_json(&db, b"existing", json!("old"));
    let mut bigs = Vec::new();
    for round in 0..8 {
        let tag = format!("c{round}");
        bigs.push((tag.clone(), commit_big(&db, &tag, BIG_N)));
        put_json(&db, format!("between/{round}").as_bytes(), json!(round));
        for p in 0..pad {
            db.run(1, |t| {
                t.kv_put(NS, format!("pad/{round}/{p}").as_bytes(), KvValue::Bytes(vec![0; 9000]))
            })
            .unwrap();
        }
        if round % 3 == 2 {
            db.checkpoint().unwrap();
        }
    }
    let report = db.checkpoint().unwrap();
    assert!(report.log_segments_removed > 0, "{report:?}");
    let kept_from = report.log_kept_from;
    let first = db.wal_stats().first_lsn;
    let end = db.visible_lsn();
    assert!(first > 1);
    // The truncation bound is the LSN after a checkpoint, which is a transaction boundary: a
    // feed from there on gets whole transactions. Before it, where truncation kept part of a
    // transaction's records (whole segments go), the feed is refused, naming the oldest LSN a
    // feed can start at, rather than returning part of a transaction.
    let mut cut_inside = 0;
    for from in first..=end {
        match db.changes(from).and_then(|feed| feed.collect::<Result<Vec<_>>>()) {
            Ok(events) => {
                for (tag, info) in &bigs {
                    let n = events.iter().filter(|e| e.lsn == info.lsn).count();
                    // Nothing to delete: the puts, the overwrite and two events.
                    assert!(n == 0 || n == BIG_N + 3, "{tag}: {n} events from {from}");
                    if info.lsn >= from {
                        assert_eq!(n, BIG_N + 3, "{tag} from {from}");
                    }
                }
            }
            Err(CoreError::HistoryNotRetained { lsn, oldest }) => {
                // Refused when the feed is created, naming where a feed can start instead.
                assert!(from < kept_from, "from {from}, kept from {kept_from}");
                assert_eq!(lsn, from);
                assert_eq!(oldest, db.oldest_feed_lsn().unwrap());
                assert!(from < oldest && oldest >= first);
                cut_inside += 1;
            }
            Err(e) => panic!("feed from {from}: {e}"),
        }
    }
    let before = db.snapshot().kv_scan_prefix(NS, b"").unwrap();
    drop(db);
    let db = open_fs(&fs);
    assert_eq!(db.open_report().checkpoint_lsn, Some(report.lsn));
    assert_eq!(db.snapshot().kv_scan_prefix(NS, b"").unwrap(), before);
    for (tag, info) in &bigs {
        assert!(assert_all_or_nothing(&db.as_of(info.lsn).unwrap(), tag, BIG_N));
        assert_eq!(big_keys_seen(&db.as_of(info.lsn - 1).unwrap(), tag), 0);
    }
    cut_inside
}
