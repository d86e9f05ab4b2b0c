//! The checkpoint contract: a checkpoint plus the log after it reopen to exactly the state (and
//! the history) before; the log is truncated after a checkpoint, never past what the fallback
//! checkpoint or a durable cursor needs; a damaged newest checkpoint falls back to the previous
//! one; commits and reads continue while a checkpoint is written; and a crash at any I/O point of
//! a checkpoint loses nothing that was acknowledged.

use crate::options::{open_on, small_log_checkpoints_on_demand};
use crate::rng::Rng;
use engram_core::*;
use engram_wal::storage::{CrashMode, FaultStorage, LockGuard, OpenMode, StdStorage, Storage, StorageFile};
use serde_json::json;
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const NAMESPACES: [&str; 2] = ["agent", "team"];
const NAMES: [&str; 5] = ["Ada", "Bob", "Cy", "Di", "Ed"];

/// Small segments, so that a few dozen commits span several and truncation has whole segments
/// to remove; no background checkpoints unless a test asks, so that I/O is deterministic.
fn options() -> DatabaseOptions {
    small_log_checkpoints_on_demand(16 * 1024, 8 * 1024)
}

fn open(fs: &FaultStorage) -> Database {
    open_on(fs, options()).unwrap()
}

/// Everything the history touched, so that every item's history can be compared.
#[derive(Default)]
struct Touched {
    memories: BTreeSet<(String, String)>,
    kv_keys: BTreeSet<(String, Vec<u8>)>,
    relations: BTreeSet<(String, String, String)>,
}

/// Commits `commits` random transactions (memories, graph, key/value, events; some fail and
/// commit nothing, which is fine).
fn random_history(db: &Database, rng: &mut Rng, touched: &mut Touched, commits: usize) {
    for _ in 0..commits {
        let ops = 1 + rng.below(3);
        let mut plan = Vec::new();
        for _ in 0..ops {
            plan.push((rng.below(9), rng.pick(&NAMESPACES), rng.pick(&NAMES), rng.pick(&NAMES), rng.next()));
        }
        let known: Vec<(String, String)> = touched.memories.iter().cloned().collect();
        let mut created = Vec::new();
        let result = db.run(1, |t| {
            created.clear();
            for &(op, ns, a, b, r) in &plan {
                match op {
                    0 | 1 => {
                        let text = format!("memory {r} {}", "x".repeat((r % 700) as usize));
                        let embedding = (ns == "agent").then(|| vec![(r % 10) as f32, 1.0, 2.0]);
                        let id = t.insert_memory(
                            ns,
                            NewMemory {
                                text,
                                embedding,
                                metadata: json!({ "r": r }),
                            },
                        )?;
                        created.push((ns.to_string(), id));
                    }
                    2 if !known.is_empty() => {
                        let (ns, id) = &known[r as usize % known.len()];
                        let patch = MemoryPatch {
                            text: Some(format!("updated {r}")),
                            ..Default::default()
                        };
                        t.update_memory(ns, id, patch)?;
                    }
                    3 if !known.is_empty() => {
                        let (ns, id) = &known[r as usize % known.len()];
                        t.delete_memory(ns, id)?;
                    }
                    4 => {
                        let entity = Entity {
                            name: a.into(),
                            entity_type: "person".into(),
                            observations: vec![format!("seen {r}")],
                        };
                        t.create_entities(ns, &[entity])?;
                        t.add_observations(ns, &[(a.to_string(), vec![format!("obs {}", r % 4)])])?;
                    }
                    5 => t.delete_entities(ns, &[a.to_string()])?,
                    6 => {
                        let relation = Relation {
                            from: a.into(),
                            to: b.into(),
                            relation_type: "knows".into(),
                        };
                        t.create_relations(ns, &[relation])?;
                    }
                    7 => {
                        let key = format!("state/{}", r % 6);
                        t.kv_put(ns, key.as_bytes(), KvValue::Json(json!({ "r": r })))?;
                        t.emit_event(ns, "state.changed", json!(key))?;
                    }
                    _ => {
                        let key = format!("state/{}", r % 6);
                        t.kv_delete(ns, key.as_bytes())?;
                    }
                }
            }
            Ok(())
        });
        if result.is_ok() {
            touched.memories.extend(created);
        }
        for &(op, ns, a, b, r) in &plan {
            match op {
                6 => {
                    touched.relations.insert((ns.to_string(), a.to_string(), b.to_string()));
                }
                7 | 8 => {
                    touched.kv_keys.insert((ns.to_string(), format!("state/{}", r % 6).into_bytes()));
                }
                _ => {}
            }
        }
    }
}

/// Everything readable at one view, histories included, as text (equal text = equal state).
fn dump(view: &impl RetainedView, touched: &Touched) -> String {
    let mut out = format!("read at {}\n", view.read_lsn());
    for ns in NAMESPACES {
        out += &format!("{ns} dimension {:?}\n", view.dimension(ns));
        out += &format!("{ns} memories {:?}\n", view.list_memories(ns).unwrap());
        out += &format!("{ns} graph {:?}\n", view.read_graph(ns).unwrap());
        out += &format!("{ns} kv {:?}\n", view.kv_scan_prefix(ns, b"").unwrap());
        for name in NAMES {
            out += &format!("{ns} entity {name} {:?}\n", view.entity_history(ns, name).unwrap());
        }
    }
    for (ns, id) in &touched.memories {
        out += &format!("{ns} memory {id} {:?}\n", view.memory_history(ns, id).unwrap());
    }
    for (ns, key) in &touched.kv_keys {
        out += &format!("{ns} key {key:?} {:?}\n", view.kv_history(ns, key).unwrap());
    }
    for (ns, from, to) in &touched.relations {
        let r = Relation {
            from: from.clone(),
            to: to.clone(),
            relation_type: "knows".into(),
        };
        out += &format!("{ns} relation {from}->{to} {:?}\n", view.relation_history(ns, &r).unwrap());
    }
    out
}

/// The state at every LSN from 0 to the visible one, then the LSN that `as_of_time` finds for
/// the commit time of every version in the histories.
fn dump_every_lsn(db: &Database, touched: &Touched) -> Vec<String> {
    let mut states: Vec<String> = (0..=db.visible_lsn()).map(|lsn| dump(&db.as_of(lsn).unwrap(), touched)).collect();
    let snap = db.snapshot();
    let mut times = BTreeSet::new();
    for (ns, key) in &touched.kv_keys {
        times.extend(snap.kv_history(ns, key).unwrap().iter().map(|v| v.commit_ts_ms));
    }
    for (ns, id) in &touched.memories {
        times.extend(snap.memory_history(ns, id).unwrap().iter().map(|v| v.commit_ts_ms));
    }
    let by_time: Vec<(u64, Lsn)> = times.into_iter().map(|ts| (ts, db.as_of_time(ts).unwrap().read_lsn())).collect();
    states.push(format!("by time {by_time:?}"));
    states
}

/// The checkpoint files (`.ckpt`) in the checkpoint directory, oldest first.
fn checkpoint_files(fs: &FaultStorage) -> Vec<PathBuf> {
    fs.files()
        .into_iter()
        .filter(|p| p.starts_with(Path::new("/db").join(CHECKPOINT_DIR)) && p.extension().is_some_and(|e| e == "ckpt"))
        .collect()
}

fn spare_file(fs: &FaultStorage) -> Option<Vec<u8>> {
    fs.read_file(&Path::new("/db").join(CHECKPOINT_DIR).join(CHECKPOINT_SPARE_FILE))
}

#[test]
fn reopening_from_a_checkpoint_and_the_log_after_it_restores_every_past_state() {
    let fs = FaultStorage::new();
    let mut rng = Rng(7);
    let mut touched = Touched::default();
    let (before, checkpoint_lsn) = {
        let db = open(&fs);
        let mut last = None;
        for _ in 0..3 {
            random_history(&db, &mut rng, &mut touched, 40);
            last = Some(db.checkpoint().unwrap());
        }
        random_history(&db, &mut rng, &mut touched, 15);
        let last = last.unwrap();
        assert!(last.written && last.keys > 0 && last.versions >= last.keys);
        assert!(
            db.wal_stats().first_lsn > 1,
            "the log was truncated after the third checkpoint (kept from {})",
            last.log_kept_from
        );
        (dump_every_lsn(&db, &touched), last.lsn)
    };
    let db = open(&fs);
    let report = db.open_report();
    assert_eq!(report.checkpoint_lsn, Some(checkpoint_lsn));
    assert!(report.rejected_checkpoints.is_empty());
    assert_eq!(
        report.replayed_records,
        db.visible_lsn() - checkpoint_lsn,
        "only the log after the checkpoint is replayed"
    );
    let after = dump_every_lsn(&db, &touched);
    assert_eq!(before.len(), after.len());
    for (lsn, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(b, a, "state at LSN {lsn} differs after reopen");
    }
}

#[test]
fn transaction_ids_and_commit_times_continue_after_a_reopen_from_a_checkpoint() {
    let fs = FaultStorage::new();
    let last = {
        let db = open(&fs);
        let mut last = None;
        for i in 0..5 {
            last = Some(db.run(1, |t| t.kv_put("ns", b"k", KvValue::Json(json!(i)))).unwrap().1);
        }
        db.checkpoint().unwrap();
        last.unwrap()
    };
    let db = open(&fs);
    assert_eq!(db.open_report().replayed_records, 0);
    let next = db.run(1, |t| t.kv_put("ns", b"k", KvValue::Json(json!("next")))).unwrap().1;
    assert!(next.txn_id > last.txn_id, "{next:?} after {last:?}");
    assert!(next.commit_ts_ms >= last.commit_ts_ms);
    assert_eq!(next.lsn, last.lsn + 1);
}

#[test]
fn a_checkpoint_with_nothing_new_writes_nothing() {
    let fs = FaultStorage::new();
    let db = open(&fs);
    let empty = db.checkpoint().unwrap();
    assert_eq!((empty.lsn, empty.written, empty.path.clone()), (0, false, None));
    assert!(checkpoint_files(&fs).is_empty());
    db.run(1, |t| t.kv_put("ns", b"k", KvValue::Json(json!(1)))).unwrap();
    let first = db.checkpoint().unwrap();
    assert!(first.written);
    let again = db.checkpoint().unwrap();
    assert_eq!((again.lsn, again.written, again.path), (first.lsn, false, first.path));
    assert_eq!(db.last_checkpoint_lsn(), Some(first.lsn));
}

/// Commits of about 3 KiB each: five fill a 16 KiB segment.
fn big_commits(db: &Database, n: usize) -> Lsn {
    let mut last = 0;
    for i in 0..n {
        let value = KvValue::Bytes(vec![(i % 251) as u8; 3000]);
        last = db
            .run(1, |t| t.kv_put("ns", format!("k{}", i % 7).as_bytes(), value.clone()))
            .unwrap()
            .1
            .lsn;
    }
    last
}

/// The checkpoint retired by a run is kept as the spare, and the next run writes over it (its
/// pages are likely still cached) instead of creating a file: whatever the spare held, the new
/// checkpoint reads back exactly, is cut to its own length, and reopens to the same state. With
/// reuse off, retired files are deleted and a spare left from before goes too.
#[test]
fn the_next_checkpoint_is_written_over_the_file_retired_last() {
    let fs = FaultStorage::new();
    let db = open(&fs);
    let mut runs = Vec::new();
    for round in 0..4 {
        // Shrinking rounds: a later checkpoint is shorter than the spare it overwrites.
        big_commits(&db, 20 - 4 * round);
        runs.push(db.checkpoint().unwrap());
    }
    assert_eq!(
        checkpoint_files(&fs),
        vec![runs[2].path.clone().unwrap(), runs[3].path.clone().unwrap()]
    );
    let spare = spare_file(&fs).expect("the checkpoint retired last is kept as the spare");
    assert_eq!(
        spare.len() as u64,
        runs[1].file_bytes,
        "the spare is the second checkpoint's file, retired by the fourth"
    );
    let newest = fs.read_file(runs[3].path.as_ref().unwrap()).unwrap();
    assert_eq!(
        newest.len() as u64,
        runs[3].file_bytes,
        "written over the first checkpoint's file and cut to its length"
    );
    let before = db.snapshot().kv_scan_prefix("ns", b"").unwrap();
    drop(db);
    let db = open(&fs);
    assert_eq!(db.open_report().checkpoint_lsn, Some(runs[3].lsn));
    assert!(db.open_report().rejected_checkpoints.is_empty());
    assert_eq!(db.snapshot().kv_scan_prefix("ns", b"").unwrap(), before);
    drop(db);

    let no_reuse = DatabaseOptions {
        checkpoint: CheckpointOptions {
            reuse_retired_file: false,
            ..options().checkpoint
        },
        ..options()
    };
    let db = Database::open_with_storage(Arc::new(fs.clone()), "/db", no_reuse).unwrap();
    big_commits(&db, 3);
    let last = db.checkpoint().unwrap();
    assert_eq!(
        checkpoint_files(&fs),
        vec![runs[3].path.clone().unwrap(), last.path.clone().unwrap()]
    );
    assert_eq!(spare_file(&fs), None, "with reuse off, the spare is deleted");
}

#[test]
fn the_log_is_truncated_below_the_older_retained_checkpoint_and_never_past_a_cursor() {
    let fs = FaultStorage::new();
    let db = open(&fs);
    big_commits(&db, 20);
    let first = db.checkpoint().unwrap();
    assert_eq!(first.log_kept_from, 1, "with one checkpoint, its fallback is the whole log");
    assert_eq!(db.wal_stats().first_lsn, 1);

    db.advance_cursor("slow-consumer", 3).unwrap();
    big_commits(&db, 20);
    let second = db.checkpoint().unwrap();
    assert_eq!(second.log_kept_from, 4, "the cursor needs LSN 4 onwards");
    assert!(db.wal_stats().first_lsn <= 4);

    db.advance_cursor("slow-consumer", second.lsn).unwrap();
    big_commits(&db, 20);
    let third = db.checkpoint().unwrap();
    assert_eq!(
        third.log_kept_from,
        second.lsn + 1,
        "truncation stops below the older retained checkpoint"
    );
    let first_lsn = db.wal_stats().first_lsn;
    assert!(first_lsn > first.lsn + 1 && first_lsn <= second.lsn + 1, "first LSN {first_lsn}");
    assert!(third.log_segments_removed > 0);
    assert_eq!(
        checkpoint_files(&fs),
        vec![second.path.clone().unwrap(), third.path.clone().unwrap()],
        "the two newest checkpoints are kept"
    );

    assert!(db.delete_cursor("slow-consumer").unwrap());
    big_commits(&db, 20);
    let fourth = db.checkpoint().unwrap();
    assert_eq!(fourth.log_kept_from, third.lsn + 1);
    assert!(db.wal_stats().first_lsn > second.lsn + 1);
    // History below the truncated log is still readable, from the checkpoint.
    let history = db.snapshot().kv_history("ns", b"k0").unwrap();
    assert_eq!(history.first().map(|v| v.lsn), Some(1));
    assert_eq!(
        db.as_of(1).unwrap().kv_get("ns", b"k0").unwrap(),
        Some(KvValue::Bytes(vec![0; 3000]))
    );
}

#[test]
fn log_retention_keeps_the_newest_records() {
    let fs = FaultStorage::new();
    let mut opts = options();
    opts.checkpoint.retain_log_records = 25;
    let db = Database::open_with_storage(Arc::new(fs.clone()), "/db", opts).unwrap();
    for _ in 0..3 {
        big_commits(&db, 20);
        db.checkpoint().unwrap();
    }
    let report = db.checkpoint().unwrap();
    assert_eq!(report.log_kept_from, db.visible_lsn() + 1 - 25);
    assert!(db.wal_stats().first_lsn <= report.log_kept_from);
}

fn corrupt_byte(fs: &FaultStorage, path: &Path, offset: usize) {
    let mut bytes = fs.read_file(path).unwrap();
    bytes[offset] ^= 0x40;
    fs.overwrite_file(path, bytes);
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
    let fs = FaultStorage::new();
    let mut rng = Rng(11);
    let mut touched = Touched::default();
    let (before, older, newest) = {
        let db = open(&fs);
        random_history(&db, &mut rng, &mut touched, 40);
        let older = db.checkpoint().unwrap();
        random_history(&db, &mut rng, &mut touched, 40);
        let newest = db.checkpoint().unwrap();
        random_history(&db, &mut rng, &mut touched, 10);
        (dump_every_lsn(&db, &touched), older, newest)
    };
    let newest_path = newest.path.clone().unwrap();
    // A flipped bit in the middle of the body fails the checksum.
    corrupt_byte(&fs, &newest_path, newest.file_bytes as usize / 2);
    {
        let db = open(&fs);
        let report = db.open_report().clone();
        assert_eq!(report.checkpoint_lsn, Some(older.lsn));
        assert_eq!(report.rejected_checkpoints.len(), 1);
        assert_eq!(report.rejected_checkpoints[0].path, newest_path);
        assert!(report.rejected_checkpoints[0].reason.contains("checksum"), "{report:?}");
        assert_eq!(report.replayed_records, db.visible_lsn() - older.lsn);
        assert_eq!(dump_every_lsn(&db, &touched), before);

        // The next checkpoint replaces the damaged one; the verified older one is the fallback.
        let next = db.checkpoint().unwrap();
        assert_eq!(next.lsn, db.visible_lsn());
        assert_eq!(checkpoint_files(&fs), vec![older.path.clone().unwrap(), next.path.clone().unwrap()]);
        assert_eq!(next.log_kept_from, older.lsn + 1);
    }
    let db = open(&fs);
    assert_eq!(dump_every_lsn(&db, &touched), before);
}

/// A checkpoint body from 16 MiB on is decoded on helper threads at open (checkpoint/decode.rs),
/// in runs of about 1 MiB handed back in file order: the store it loads is the one a sequential
/// read gives, every version and key in its place (keys spanning runs and entries included),
/// and a damaged one still falls back to the previous checkpoint.
#[test]
fn a_checkpoint_decoded_on_helper_threads_loads_every_version_in_order() {
    let fs = FaultStorage::new();
    let options = || DatabaseOptions {
        checkpoint: CheckpointOptions::on_demand(),
        ..Default::default()
    };
    let open = || Database::open_with_storage(Arc::new(fs.clone()), "/db", options()).unwrap();
    // 2,400 keys of 3 to 9 KiB, each written three times: about 43 MB of versions.
    let value = |key: usize, round: usize| KvValue::Bytes(vec![(key * 3 + round) as u8; 3_000 + (key % 7) * 1_000]);
    let write_round = |db: &Database, round: usize| {
        for first in (0..2_400).step_by(200) {
            db.run(1, |t| {
                for key in first..first + 200 {
                    t.kv_put("ns", format!("key{key:05}").as_bytes(), value(key, round))?;
                }
                Ok(())
            })
            .unwrap();
        }
    };
    let everything = |db: &Database| {
        let snap = db.snapshot();
        let rows = snap.kv_scan_prefix("ns", b"").unwrap();
        let histories: Vec<Vec<VersionInfo>> = (0..2_400)
            .map(|key| snap.kv_history("ns", format!("key{key:05}").as_bytes()).unwrap())
            .collect();
        (rows, histories)
    };
    let (before, older, newest) = {
        let db = open();
        write_round(&db, 0);
        let older = db.checkpoint().unwrap();
        write_round(&db, 1);
        write_round(&db, 2);
        let newest = db.checkpoint().unwrap();
        assert!(
            newest.file_bytes > 40 << 20,
            "{} bytes: too small for helper threads",
            newest.file_bytes
        );
        (everything(&db), older, newest)
    };
    assert_eq!(before.1.iter().map(Vec::len).sum::<usize>(), 3 * 2_400);
    {
        let db = open();
        assert_eq!(db.open_report().checkpoint_lsn, Some(newest.lsn));
        assert_eq!(db.open_report().replayed_records, 0);
        assert_eq!(everything(&db), before);
    }
    corrupt_byte(&fs, newest.path.as_ref().unwrap(), newest.file_bytes as usize * 2 / 3);
    let db = open();
    let report = db.open_report().clone();
    assert_eq!(report.checkpoint_lsn, Some(older.lsn));
    assert!(report.rejected_checkpoints[0].reason.contains("checksum"), "{report:?}");
    assert_eq!(everything(&db), before);
}

#[test]
fn without_a_usable_checkpoint_a_truncated_log_refuses_to_open() {
    let fs = FaultStorage::new();
    let paths = {
        let db = open(&fs);
        let mut paths = Vec::new();
        for _ in 0..3 {
            big_commits(&db, 20);
            paths.push(db.checkpoint().unwrap().path.unwrap());
        }
        assert!(db.wal_stats().first_lsn > 1);
        paths
    };
    // Both retained checkpoints damaged: the log alone no longer holds the whole state, and
    // opening with part of it would silently lose data.
    for path in &paths[1..] {
        corrupt_byte(&fs, path, 0);
    }
    match Database::open_with_storage(Arc::new(fs.clone()), "/db", options()) {
        Err(CoreError::MissingCheckpoint { first_lsn, reason }) => {
            assert!(first_lsn > 1);
            assert!(reason.contains("bad magic"), "{reason}");
        }
        other => panic!("expected MissingCheckpoint, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_relaxed_commit_is_made_durable_before_a_checkpoint_includes_it() {
    let fs = FaultStorage::new();
    let lsn = {
        let db = open(&fs);
        db.run(1, |t| t.kv_put("ns", b"a", KvValue::Json(json!(1)))).unwrap();
        let mut relaxed = db.begin();
        relaxed.set_durability(SyncPolicy::Never);
        relaxed.kv_put("ns", b"b", KvValue::Json(json!(2))).unwrap();
        let info = relaxed.commit().unwrap();
        let report = db.checkpoint().unwrap();
        assert_eq!(report.lsn, info.lsn);
        fs.crash(CrashMode::DropUnsynced);
        info.lsn
    };
    // The checkpoint never runs ahead of the log: otherwise the log, having lost the relaxed
    // commit, would hand its LSN to another commit.
    let db = open(&fs);
    assert_eq!(db.visible_lsn(), lsn);
    assert_eq!(db.snapshot().kv_get("ns", b"b").unwrap(), Some(KvValue::Json(json!(2))));
    let next = db.run(1, |t| t.kv_put("ns", b"c", KvValue::Json(json!(3)))).unwrap().1;
    assert_eq!(next.lsn, lsn + 1);
}

/// A storage that hands every write to a checkpoint's `.tmp` file to a hook first, so that a
/// test can stall a checkpoint in the middle of its I/O or damage what it writes.
type WriteHook = Arc<dyn Fn(&mut Vec<u8>) + Send + Sync>;

struct HookedStorage {
    inner: Arc<dyn Storage>,
    on_checkpoint_write: WriteHook,
}

impl std::fmt::Debug for HookedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedStorage").field("inner", &self.inner).finish_non_exhaustive()
    }
}

struct HookedFile {
    inner: Arc<dyn StorageFile>,
    hook: WriteHook,
}

impl std::fmt::Debug for HookedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedFile").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl Storage for HookedStorage {
    fn kind_of(&self, path: &Path) -> io::Result<Option<bool>> {
        self.inner.kind_of(path)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let file = self.inner.open(path, mode)?;
        let name = path.to_string_lossy();
        if mode == OpenMode::CreateNew && name.contains(CHECKPOINT_DIR) && name.ends_with(".tmp") {
            return Ok(Arc::new(HookedFile {
                inner: file,
                hook: self.on_checkpoint_write.clone(),
            }));
        }
        Ok(file)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        self.inner.try_lock(path)
    }
}

impl StorageFile for HookedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = buf.to_vec();
        (self.hook)(&mut bytes);
        self.inner.write_all_at(&bytes, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn size_bytes(&self) -> io::Result<u64> {
        self.inner.size_bytes()
    }
    fn set_len(&self, bytes: u64) -> io::Result<()> {
        self.inner.set_len(bytes)
    }
}

/// Holds writers until opened.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, bool)>, // (a writer is waiting, the gate is open)
    changed: Condvar,
}

impl Gate {
    fn wait_for_writer(&self) {
        let mut s = self.state.lock().unwrap();
        while !s.0 {
            s = self.changed.wait(s).unwrap();
        }
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }

    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        self.changed.notify_all();
        while !s.1 {
            s = self.changed.wait(s).unwrap();
        }
    }
}

#[test]
fn commits_and_reads_keep_going_while_a_checkpoint_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let storage = {
        let gate = gate.clone();
        Arc::new(HookedStorage {
            inner: Arc::new(StdStorage),
            on_checkpoint_write: Arc::new(move |_| gate.pass()),
        })
    };
    let db = Database::open_with_storage(storage.clone(), dir.path(), options()).unwrap();
    big_commits(&db, 10);
    let snapshot_lsn = db.visible_lsn();
    let checkpointer = {
        let db = db.clone();
        std::thread::spawn(move || db.checkpoint())
    };
    gate.wait_for_writer();
    // The checkpoint is stuck in its first write. Commits and reads must not wait for it: run
    // them on another thread and give up (instead of hanging) if they block.
    let (done, finished) = mpsc::channel();
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            for i in 0..20 {
                db.run(1, |t| t.kv_put("ns", format!("during/{i}").as_bytes(), KvValue::Json(json!(i))))
                    .unwrap();
                assert_eq!(db.snapshot().kv_get("ns", b"during/0").unwrap(), Some(KvValue::Json(json!(0))));
            }
            done.send(db.visible_lsn()).unwrap();
        })
    };
    let after_commits = finished
        .recv_timeout(Duration::from_secs(20))
        .expect("commits were blocked by a running checkpoint");
    writer.join().unwrap();
    assert_eq!(after_commits, snapshot_lsn + 20);
    gate.open();
    let report = checkpointer.join().unwrap().unwrap();
    assert_eq!(report.lsn, snapshot_lsn, "the checkpoint holds its snapshot, not later commits");
    drop(db);
    let db = Database::open_with_storage(storage, dir.path(), options()).unwrap();
    assert_eq!(db.open_report().checkpoint_lsn, Some(snapshot_lsn));
    assert_eq!(db.open_report().replayed_records, 20);
    assert_eq!(db.snapshot().kv_scan_prefix("ns", b"during/").unwrap().len(), 20);
}

#[test]
fn a_checkpoint_that_fails_its_read_back_keeps_the_previous_ones_and_the_log() {
    let fs = FaultStorage::new();
    let damage = Arc::new(AtomicBool::new(false));
    let storage = {
        let damage = damage.clone();
        Arc::new(HookedStorage {
            inner: Arc::new(fs.clone()),
            on_checkpoint_write: Arc::new(move |bytes: &mut Vec<u8>| {
                // A silent fault of the device: the write "succeeds" with a flipped bit.
                if damage.load(Ordering::SeqCst) && bytes.len() > 100 {
                    bytes[100] ^= 1;
                }
            }),
        })
    };
    let mut touched = Touched::default();
    let mut rng = Rng(5);
    let before = {
        let db = Database::open_with_storage(storage.clone(), "/db", options()).unwrap();
        for _ in 0..2 {
            random_history(&db, &mut rng, &mut touched, 30);
            big_commits(&db, 10);
            db.checkpoint().unwrap();
        }
        random_history(&db, &mut rng, &mut touched, 30);
        big_commits(&db, 10);
        let files = checkpoint_files(&fs);
        let first_lsn = db.wal_stats().first_lsn;
        damage.store(true, Ordering::SeqCst);
        match db.checkpoint() {
            Err(CoreError::CorruptCheckpoint { reason, .. }) => assert!(reason.contains("checksum"), "{reason}"),
            other => panic!("expected the read-back to fail, got {other:?}"),
        }
        assert_eq!(checkpoint_files(&fs), files, "older checkpoints kept, the bad one removed");
        assert_eq!(db.wal_stats().first_lsn, first_lsn, "no truncation after a failed checkpoint");
        damage.store(false, Ordering::SeqCst);
        dump_every_lsn(&db, &touched)
    };
    let db = Database::open_with_storage(storage, "/db", options()).unwrap();
    assert_eq!(dump_every_lsn(&db, &touched), before);
    assert!(db.checkpoint().unwrap().written);
}

/// Builds a database with two checkpoints and more commits after them, ready for a third
/// checkpoint that deletes the oldest file and truncates the log.
fn crash_setup(fs: &FaultStorage, touched: &mut Touched) -> Database {
    let db = open(fs);
    let mut rng = Rng(3);
    // Three runs: two checkpoints retained and a spare, so that the crashed run writes over it.
    for _ in 0..3 {
        random_history(&db, &mut rng, touched, 25);
        big_commits(&db, 8);
        db.checkpoint().unwrap();
    }
    random_history(&db, &mut rng, touched, 25);
    big_commits(&db, 8);
    db
}

#[test]
fn a_crash_at_any_io_point_of_a_checkpoint_loses_nothing_acknowledged() {
    // How many mutating calls one checkpoint run makes.
    let total = {
        let fs = FaultStorage::new();
        let db = crash_setup(&fs, &mut Touched::default());
        let before = fs.mutation_count();
        assert!(spare_file(&fs).is_some(), "the crashed run starts with a spare to write over");
        let report = db.checkpoint().unwrap();
        assert!(report.removed_files > 0 && report.log_segments_removed > 0, "{report:?}");
        fs.mutation_count() - before
    };
    assert!(total >= 8, "a checkpoint run makes at least 8 mutating calls, got {total}");
    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::ProcessOnly,
        CrashMode::TearLastWrite { seed: 5 },
    ];
    for k in 0..total {
        for mode in modes {
            let fs = FaultStorage::new();
            let mut touched = Touched::default();
            let db = crash_setup(&fs, &mut touched);
            let acknowledged = dump_every_lsn(&db, &touched);
            fs.crash_after_mutations(fs.mutation_count() + k);
            assert!(db.checkpoint().is_err(), "the crash after {k} mutations interrupts the checkpoint");
            drop(db);
            fs.crash(mode);
            let db = open(&fs);
            assert_eq!(
                dump_every_lsn(&db, &touched),
                acknowledged,
                "state after a crash at mutation {k} of {total} ({mode:?})"
            );
            // The next checkpoint cleans up after the interrupted one (a leftover `.tmp` may
            // carry the same name) and the database reopens from it.
            let report = db.checkpoint().unwrap();
            assert_eq!(report.lsn, db.visible_lsn());
            drop(db);
            let db = open(&fs);
            assert_eq!(db.open_report().checkpoint_lsn, Some(report.lsn));
            assert_eq!(
                dump_every_lsn(&db, &touched),
                acknowledged,
                "after the next checkpoint ({k}, {mode:?})"
            );
            let in_checkpoint_dir = |p: &PathBuf| p.starts_with(Path::new("/db").join(CHECKPOINT_DIR));
            assert!(!fs
                .files()
                .iter()
                .filter(|p| in_checkpoint_dir(p))
                .any(|p| p.extension().is_some_and(|e| e == "tmp")));
        }
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn background_checkpoints_follow_log_bytes_and_time_and_stop_with_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut by_bytes = options();
    by_bytes.checkpoint.every_log_bytes = Some(20_000);
    let taken = {
        let db = Database::open(dir.path(), by_bytes).unwrap();
        big_commits(&db, 3);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(db.last_checkpoint_lsn(), None, "9 KB is below the threshold");
        big_commits(&db, 5);
        wait_until("a checkpoint triggered by log bytes", || db.last_checkpoint_lsn().is_some());
        db.last_checkpoint_lsn().unwrap()
    };
    assert!(taken > 3);
    // Dropping the database stopped its checkpointer and closed the log: it reopens at once.
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.open_report().checkpoint_lsn, Some(taken));
    drop(db);

    let dir = tempfile::tempdir().unwrap();
    let mut by_time = options();
    by_time.checkpoint.every = Some(Duration::from_millis(30));
    let db = Database::open(dir.path(), by_time).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(db.last_checkpoint_lsn(), None, "nothing committed, nothing to checkpoint");
    let lsn = db.run(1, |t| t.kv_put("ns", b"tick", KvValue::Json(json!(1)))).unwrap().1.lsn;
    wait_until("a checkpoint triggered by time", || db.last_checkpoint_lsn() == Some(lsn));
}

/// Commits `n` kv values of 3,000 bytes under fresh keys (`prefix` + i): the store, and so the
/// next checkpoint, grows by about as much as the log.
fn fresh_big_commits(db: &Database, prefix: &str, n: usize) {
    for i in 0..n {
        let value = KvValue::Bytes(vec![(i % 251) as u8; 3000]);
        db.run(1, |t| t.kv_put("ns", format!("{prefix}{i}").as_bytes(), value.clone()))
            .unwrap();
    }
}

#[test]
fn the_byte_trigger_grows_with_the_newest_checkpoint_so_a_large_database_is_not_rewritten_for_a_little_log() {
    for grow_with_database in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        // A database whose checkpoint file holds about 120 KB.
        let checkpoint_bytes = {
            let db = Database::open(dir.path(), options()).unwrap();
            fresh_big_commits(&db, "base", 40);
            db.checkpoint().unwrap().file_bytes
        };
        assert!(checkpoint_bytes > 100_000, "{checkpoint_bytes}");
        let mut triggered = options();
        triggered.checkpoint.every_log_bytes = Some(10_000);
        triggered.checkpoint.grow_with_database = grow_with_database;
        let db = Database::open(dir.path(), triggered).unwrap();
        let loaded = db.last_checkpoint_lsn();
        // About 30 KB of log: past `every_log_bytes`, well short of the checkpoint's size.
        fresh_big_commits(&db, "more", 10);
        if grow_with_database {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(
                db.last_checkpoint_lsn(),
                loaded,
                "30 KB of log does not rewrite a {checkpoint_bytes} B checkpoint"
            );
            // As much log as the checkpoint holds: now one is due.
            fresh_big_commits(&db, "most", (checkpoint_bytes as usize).div_ceil(3000));
        }
        wait_until("a checkpoint triggered by log bytes", || db.last_checkpoint_lsn() != loaded);
    }
}
