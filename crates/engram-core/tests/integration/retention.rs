//! History retention, as a specification: by default every version is kept; `KeepVersions`
//! keeps the newest N versions of each key and `history()` returns exactly those; `KeepFor`
//! drops the versions that stopped being current before the window; pruning happens when a
//! checkpoint is written, never changes the current state, and moves the history horizon: `as_of`
//! (and any read of an older snapshot or transaction) below it fails with `HistoryNotRetained`,
//! at or above it answers exactly as before pruning; the pruned history and the horizon survive
//! checkpoint and reopen; the change feed and log truncation do not depend on it.

use crate::options::{open_on, small_log_checkpoints_on_demand};
use crate::rng::Rng;
use engram_core::*;
use engram_wal::storage::FaultStorage;
use serde_json::json;
use std::time::Duration;

/// No background checkpoints: pruning happens exactly when a test calls `checkpoint`. Small
/// segments, so that the in-memory storage stays small and truncation has segments to remove.
fn options(retention: RetentionPolicy) -> DatabaseOptions {
    DatabaseOptions {
        retention,
        ..small_log_checkpoints_on_demand(64 * 1024, 16 * 1024)
    }
}

fn open(fs: &FaultStorage, retention: RetentionPolicy) -> Database {
    open_on(fs, options(retention)).unwrap()
}

fn put(db: &Database, key: &str, value: i64) -> CommitInfo {
    db.run(1, |t| t.kv_put("ns", key.as_bytes(), KvValue::Json(json!(value))))
        .unwrap()
        .1
}

fn delete(db: &Database, key: &str) -> CommitInfo {
    let (existed, info) = db.run(1, |t| t.kv_delete("ns", key.as_bytes())).unwrap();
    assert!(existed);
    info
}

/// (LSN, value) of every version `kv_history` lists (`None`: a deletion).
fn kv_versions(view: &impl KvReads, key: &str) -> Vec<(Lsn, Option<i64>)> {
    view.kv_history("ns", key.as_bytes())
        .unwrap()
        .into_iter()
        .map(|v| {
            let value = v.value.map(|value| match value {
                Value::Kv(KvValue::Json(j)) => j.as_i64().unwrap(),
                other => panic!("unexpected {other:?}"),
            });
            (v.lsn, value)
        })
        .collect()
}

fn version(info: &CommitInfo, value: Option<i64>) -> (Lsn, Option<i64>) {
    (info.lsn, value)
}

fn not_retained(result: Result<impl std::fmt::Debug>, lsn: Lsn, oldest: Lsn) {
    match result {
        Err(CoreError::HistoryNotRetained { lsn: l, oldest: o }) if (l, o) == (lsn, oldest) => {}
        other => panic!("expected HistoryNotRetained {{ lsn: {lsn}, oldest: {oldest} }}, got {other:?}"),
    }
}

const NAMES: [&str; 4] = ["Ada", "Bob", "Cy", "Di"];

/// `commits` random transactions over key/value pairs, memories and the graph (each commits
/// something); adds the ids of the memories created to `memories`, returns the commits.
fn random_workload(db: &Database, rng: &mut Rng, commits: usize, memories: &mut Vec<String>) -> Vec<CommitInfo> {
    let mut done = Vec::new();
    while done.len() < commits {
        let name = NAMES[rng.below(4)];
        let other = NAMES[rng.below(4)];
        let n = rng.next() % 1000;
        let result = db.run(1, |t| {
            match n % 10 {
                0..=2 => t.kv_put("ns", format!("k{}", n % 5).as_bytes(), KvValue::Json(json!(n)))?,
                3 => {
                    t.kv_delete("ns", format!("k{}", n % 5).as_bytes())?;
                }
                4 => {
                    t.create_entities(
                        "ns",
                        &[Entity {
                            name: name.into(),
                            entity_type: "person".into(),
                            observations: vec![format!("obs {n}")],
                        }],
                    )?;
                }
                5 => {
                    t.add_observations("ns", &[(name.to_string(), vec![format!("obs {n}")])])?;
                }
                6 => t.delete_entities("ns", &[name.to_string()])?,
                7 => {
                    t.create_relations(
                        "ns",
                        &[Relation {
                            from: name.into(),
                            to: other.into(),
                            relation_type: "knows".into(),
                        }],
                    )?;
                }
                8 => {
                    let id = t.insert_memory(
                        "ns",
                        NewMemory {
                            text: format!("memory {n}"),
                            ..Default::default()
                        },
                    )?;
                    return Ok(Some(id));
                }
                _ => {
                    if let Some(id) = memories.get(n as usize % memories.len().max(1)) {
                        if n.is_multiple_of(3) {
                            t.delete_memory("ns", id)?;
                        } else {
                            t.update_memory(
                                "ns",
                                id,
                                MemoryPatch {
                                    text: Some(format!("memory {n}")),
                                    ..Default::default()
                                },
                            )?;
                        }
                    }
                }
            }
            Ok(None)
        });
        if let Ok((id, info)) = result {
            if info.txn_id != 0 {
                done.push(info);
            }
            memories.extend(id);
        }
    }
    done
}

/// The current state a view shows, without histories (equal text = equal state, insertion order
/// of the graph included).
fn state(view: &impl RetainedView) -> Result<String> {
    Ok(format!(
        "kv {:?}\ngraph {:?}\nmemories {:?}\n",
        view.kv_scan_prefix("ns", b"")?,
        view.read_graph("ns")?,
        view.list_memories("ns")?
    ))
}

/// The state and the history of every item a view shows.
fn state_and_histories(view: &impl RetainedView, memories: &[String]) -> String {
    let mut out = state(view).unwrap();
    for k in 0..5 {
        out += &format!("k{k} {:?}\n", view.kv_history("ns", format!("k{k}").as_bytes()).unwrap());
    }
    for name in NAMES {
        out += &format!("{name} {:?}\n", view.entity_history("ns", name).unwrap());
    }
    for id in memories {
        out += &format!("{id} {:?}\n", view.memory_history("ns", id).unwrap());
    }
    out
}

#[test]
fn by_default_every_version_is_kept() {
    assert_eq!(DatabaseOptions::default().retention, RetentionPolicy::KeepAll);
    let fs = FaultStorage::new();
    let db = open(&fs, RetentionPolicy::default());
    let infos: Vec<CommitInfo> = (0..20).map(|i| put(&db, "k", i)).collect();
    let gone = put(&db, "gone", 1);
    let deleted = delete(&db, "gone");
    let report = db.checkpoint().unwrap();
    assert!(report.written);
    assert_eq!((report.pruned_versions, report.pruned_keys, report.history_horizon_lsn), (0, 0, 0));
    assert_eq!(report.versions, 22, "every version is in the checkpoint");
    drop(db);
    let db = open(&fs, RetentionPolicy::default());
    assert_eq!(db.history_horizon_lsn(), 0);
    let expected: Vec<_> = infos.iter().enumerate().map(|(i, c)| version(c, Some(i as i64))).collect();
    assert_eq!(kv_versions(&db.snapshot(), "k"), expected);
    assert_eq!(
        kv_versions(&db.snapshot(), "gone"),
        [version(&gone, Some(1)), version(&deleted, None)]
    );
    assert_eq!(db.as_of(0).unwrap().kv_get("ns", b"k").unwrap(), None);
    for (i, c) in infos.iter().enumerate() {
        assert_eq!(db.as_of(c.lsn).unwrap().kv_get("ns", b"k").unwrap(), Some(KvValue::Json(json!(i))));
    }
}

#[test]
fn keep_versions_keeps_the_newest_n_per_key_and_history_returns_exactly_those() {
    let fs = FaultStorage::new();
    let db = open(&fs, RetentionPolicy::KeepVersions { per_key: 3 });
    let many: Vec<CommitInfo> = (0..10).map(|i| put(&db, "many", i)).collect();
    let few: Vec<CommitInfo> = (0..2).map(|i| put(&db, "few", i)).collect();
    // put, put, put, delete: the three newest are put 1, put 2 and the deletion.
    let mut deleted_late: Vec<CommitInfo> = (0..3).map(|i| put(&db, "deleted-late", i)).collect();
    deleted_late.push(delete(&db, "deleted-late"));
    let entity = db
        .run(1, |t| {
            t.create_entities(
                "ns",
                &[Entity {
                    name: "Ada".into(),
                    entity_type: "person".into(),
                    observations: vec![],
                }],
            )
        })
        .unwrap()
        .1;
    let observations: Vec<CommitInfo> = (0..5)
        .map(|i| {
            db.run(1, |t| t.add_observations("ns", &[("Ada".into(), vec![format!("o{i}")])]))
                .unwrap()
                .1
        })
        .collect();
    let (id, created) = db
        .run(1, |t| {
            t.insert_memory(
                "ns",
                NewMemory {
                    text: "v0".into(),
                    ..Default::default()
                },
            )
        })
        .unwrap();
    let updates: Vec<CommitInfo> = (1..=4)
        .map(|i| {
            db.run(1, |t| {
                t.update_memory(
                    "ns",
                    &id,
                    MemoryPatch {
                        text: Some(format!("v{i}")),
                        ..Default::default()
                    },
                )
            })
            .unwrap()
            .1
        })
        .collect();
    let current = state(&db.snapshot()).unwrap();

    let report = db.checkpoint().unwrap();
    // many: 7 of 10; few: none; deleted-late: 1 of 4; Ada: 3 of 6; the memory: 2 of 5.
    assert_eq!((report.pruned_versions, report.pruned_keys), (7 + 1 + 3 + 2, 0));
    assert_eq!(report.versions, 3 + 2 + 3 + 3 + 3, "the checkpoint omits the pruned versions");
    let snap = db.snapshot();
    let expected_many: Vec<_> = (7..10).map(|i| version(&many[i], Some(i as i64))).collect();
    assert_eq!(kv_versions(&snap, "many"), expected_many);
    assert_eq!(kv_versions(&snap, "few"), [version(&few[0], Some(0)), version(&few[1], Some(1))]);
    assert_eq!(
        kv_versions(&snap, "deleted-late"),
        [
            version(&deleted_late[1], Some(1)),
            version(&deleted_late[2], Some(2)),
            version(&deleted_late[3], None)
        ]
    );
    let entity_lsns: Vec<Lsn> = snap.entity_history("ns", "Ada").unwrap().iter().map(|v| v.lsn).collect();
    assert_eq!(entity_lsns, observations[2..].iter().map(|c| c.lsn).collect::<Vec<_>>());
    let memory_history = snap.memory_history("ns", &id).unwrap();
    assert_eq!(
        memory_history.iter().map(|v| v.lsn).collect::<Vec<_>>(),
        updates[1..].iter().map(|c| c.lsn).collect::<Vec<_>>()
    );
    // Commit times of retained versions are still known.
    assert_eq!(memory_history[0].commit_ts_ms, updates[1].commit_ts_ms);
    assert_eq!(state(&snap).unwrap(), current, "the current state is unchanged");
    assert!(entity.lsn < created.lsn);

    // The horizon is the newest LSN at which some key lost a version that was still current: the
    // memory's oldest kept version (the last of the keys pruned).
    assert_eq!(report.history_horizon_lsn, updates[1].lsn);
    assert_eq!(db.history_horizon_lsn(), updates[1].lsn);

    // Newer versions add to the kept ones until the next checkpoint prunes again.
    let newer = put(&db, "many", 10);
    assert_eq!(kv_versions(&db.snapshot(), "many").len(), 4);
    db.checkpoint().unwrap();
    assert_eq!(
        kv_versions(&db.snapshot(), "many"),
        [version(&many[8], Some(8)), version(&many[9], Some(9)), version(&newer, Some(10))]
    );
}

#[test]
fn a_deletion_whose_older_versions_all_go_takes_the_whole_key_with_it() {
    let fs = FaultStorage::new();
    let db = open(&fs, RetentionPolicy::KeepVersions { per_key: 1 });
    put(&db, "k", 1);
    put(&db, "k", 2);
    let deleted = delete(&db, "k");
    let kept = put(&db, "other", 1);
    let report = db.checkpoint().unwrap();
    assert_eq!((report.pruned_versions, report.pruned_keys), (3, 1));
    assert_eq!(
        report.history_horizon_lsn, deleted.lsn,
        "reads from the deletion on still find nothing"
    );
    assert!(kv_versions(&db.snapshot(), "k").is_empty());
    assert_eq!(db.snapshot().kv_get("ns", b"k").unwrap(), None);
    assert_eq!(db.as_of(deleted.lsn).unwrap().kv_get("ns", b"k").unwrap(), None);
    not_retained(db.as_of(deleted.lsn - 1).map(|s| s.read_lsn()), deleted.lsn - 1, deleted.lsn);
    assert_eq!(kv_versions(&db.snapshot(), "other"), [version(&kept, Some(1))]);
    // The key can be written again and starts a new history.
    let again = put(&db, "k", 3);
    assert_eq!(kv_versions(&db.snapshot(), "k"), [version(&again, Some(3))]);
}

#[test]
fn keep_for_drops_the_versions_that_stopped_being_current_before_the_window() {
    let fs = FaultStorage::new();
    let max_age = Duration::from_secs(3600);
    let db = open(&fs, RetentionPolicy::KeepFor { max_age });
    // Three phases a few milliseconds apart, so that their commit times differ.
    let old: Vec<CommitInfo> = (0..3).map(|i| put(&db, "k", i)).collect();
    let old_only = put(&db, "old-only", 0);
    let old_deleted = [put(&db, "old-deleted", 0), delete(&db, "old-deleted")];
    std::thread::sleep(Duration::from_millis(5));
    let middle: Vec<CommitInfo> = (3..5).map(|i| put(&db, "k", i)).collect();
    std::thread::sleep(Duration::from_millis(5));
    let recent: Vec<CommitInfo> = (5..7).map(|i| put(&db, "k", i)).collect();
    assert!(old[2].commit_ts_ms < middle[0].commit_ts_ms && middle[1].commit_ts_ms < recent[0].commit_ts_ms);
    let current = state(&db.snapshot()).unwrap();

    // "Now" is one window after the last middle commit: the window starts there. Every version
    // current at some moment since then stays: the middle one current at the cutoff and the
    // recent ones; the old versions of `k` and the first middle one go, as does the deleted key.
    let now = middle[1].commit_ts_ms + max_age.as_millis() as u64;
    let report = db.checkpoint_at_time(now).unwrap();
    assert_eq!((report.pruned_versions, report.pruned_keys), (3 + 1 + 2, 1));
    let expected: Vec<_> = [(&middle[1], 4), (&recent[0], 5), (&recent[1], 6)]
        .into_iter()
        .map(|(c, v)| version(c, Some(v)))
        .collect();
    assert_eq!(kv_versions(&db.snapshot(), "k"), expected);
    assert_eq!(
        kv_versions(&db.snapshot(), "old-only"),
        [version(&old_only, Some(0))],
        "still current"
    );
    assert!(kv_versions(&db.snapshot(), "old-deleted").is_empty());
    assert_eq!(state(&db.snapshot()).unwrap(), current);
    assert_eq!(report.history_horizon_lsn, middle[1].lsn);

    // As of any time in the window: the answer from before (the value of the last commit at or
    // before that time; commits may share a millisecond); before the window: refused.
    let at = |ts| db.as_of_time(ts).and_then(|s| s.kv_get("ns", b"k"));
    let puts: Vec<&CommitInfo> = old.iter().chain(&middle).chain(&recent).collect();
    for (i, c) in puts.iter().enumerate() {
        let last_by_then = puts.iter().rposition(|p| p.commit_ts_ms <= c.commit_ts_ms).unwrap();
        if c.commit_ts_ms >= middle[1].commit_ts_ms {
            assert_eq!(at(c.commit_ts_ms).unwrap(), Some(KvValue::Json(json!(last_by_then))), "put {i}");
        } else {
            assert!(matches!(at(c.commit_ts_ms), Err(CoreError::HistoryNotRetained { .. })), "put {i}");
        }
    }
    assert_eq!(at(now).unwrap(), Some(KvValue::Json(json!(6))));
    assert!(old_deleted[1].lsn < report.history_horizon_lsn);

    // A window that covers everything prunes nothing more.
    put(&db, "k", 7);
    let report = db.checkpoint_at_time(old[0].commit_ts_ms).unwrap();
    assert_eq!((report.pruned_versions, report.history_horizon_lsn), (0, middle[1].lsn));
}

#[test]
fn as_of_below_the_horizon_is_refused_and_at_or_above_it_answers_as_before() {
    for policy in [
        RetentionPolicy::KeepVersions { per_key: 1 },
        RetentionPolicy::KeepVersions { per_key: 2 },
        RetentionPolicy::KeepFor { max_age: Duration::ZERO },
    ] {
        let fs = FaultStorage::new();
        let db = open(&fs, policy);
        let mut rng = Rng(11);
        let mut memories = Vec::new();
        let commits = random_workload(&db, &mut rng, 60, &mut memories);
        // The model: every state, read before anything was pruned.
        let model: Vec<String> = (0..=db.visible_lsn()).map(|lsn| state(&db.as_of(lsn).unwrap()).unwrap()).collect();
        let times: Vec<(u64, String)> = commits
            .iter()
            .map(|c| (c.commit_ts_ms, state(&db.as_of_time(c.commit_ts_ms).unwrap()).unwrap()))
            .collect();
        let report = db.checkpoint_at_time(u64::MAX).unwrap();
        let horizon = report.history_horizon_lsn;
        assert!(report.pruned_versions > 0 && horizon > 0, "{policy:?}: {report:?}");
        assert_eq!(db.history_horizon_lsn(), horizon);
        for (lsn, expected) in model.iter().enumerate() {
            let lsn = lsn as Lsn;
            if lsn < horizon {
                not_retained(db.as_of(lsn).map(|s| s.read_lsn()), lsn, horizon);
            } else {
                assert_eq!(&state(&db.as_of(lsn).unwrap()).unwrap(), expected, "{policy:?} at {lsn}");
            }
        }
        for (ts, expected) in &times {
            match db.as_of_time(*ts) {
                Ok(snap) => {
                    assert!(snap.read_lsn() >= horizon);
                    assert_eq!(&state(&snap).unwrap(), expected, "{policy:?} at time {ts}");
                }
                Err(CoreError::HistoryNotRetained { lsn, oldest }) => assert!(lsn < oldest && oldest == horizon),
                Err(e) => panic!("{e}"),
            }
        }
        // KeepFor with no window keeps only what is current: at the horizon the history of
        // every key is its current version alone.
        if policy == (RetentionPolicy::KeepFor { max_age: Duration::ZERO }) {
            for k in 0..5 {
                assert!(db.snapshot().kv_history("ns", format!("k{k}").as_bytes()).unwrap().len() <= 1);
            }
        }
    }
}

#[test]
fn a_snapshot_or_transaction_that_pruning_overtook_gets_the_error_not_wrong_data() {
    let fs = FaultStorage::new();
    let db = open(&fs, RetentionPolicy::KeepVersions { per_key: 1 });
    put(&db, "k", 1);
    put(&db, "gone", 1);
    db.run(1, |t| {
        t.create_entities(
            "ns",
            &[Entity {
                name: "Ada".into(),
                entity_type: "person".into(),
                observations: vec![],
            }],
        )
    })
    .unwrap();
    let old = db.snapshot();
    let before = state(&old).unwrap();
    let mut txn = db.begin();
    assert_eq!(txn.kv_get("ns", b"gone").unwrap(), Some(KvValue::Json(json!(1))));
    put(&db, "k", 2);
    delete(&db, "gone");
    db.run(1, |t| t.add_observations("ns", &[("Ada".into(), vec!["new".into()])]))
        .unwrap();
    // Nothing pruned yet: the old snapshot still reads its state.
    assert_eq!(state(&old).unwrap(), before);
    let report = db.checkpoint().unwrap();
    let horizon = report.history_horizon_lsn;
    assert!(old.read_lsn() < horizon);
    // Every read of the old snapshot is refused now, whatever it reads.
    not_retained(old.kv_get("ns", b"k"), old.read_lsn(), horizon);
    not_retained(old.kv_scan_prefix("ns", b""), old.read_lsn(), horizon);
    not_retained(old.read_graph("ns"), old.read_lsn(), horizon);
    not_retained(old.search_nodes("ns", "Ada"), old.read_lsn(), horizon);
    not_retained(old.list_memories("ns"), old.read_lsn(), horizon);
    not_retained(old.kv_history("ns", b"k"), old.read_lsn(), horizon);
    not_retained(old.entity_history("ns", "Ada"), old.read_lsn(), horizon);
    // So is the transaction that began before: its reads, and its writes that read.
    not_retained(txn.kv_get("ns", b"k"), old.read_lsn(), horizon);
    not_retained(txn.kv_delete("ns", b"k"), old.read_lsn(), horizon);
    not_retained(
        txn.add_observations("ns", &[("Ada".into(), vec!["x".into()])]),
        old.read_lsn(),
        horizon,
    );
    // A blind write of the key whose every version was pruned conflicts: the transaction read it
    // before it was deleted, and must not silently overwrite that deletion.
    txn.kv_put("ns", b"gone", KvValue::Json(json!("stale"))).unwrap();
    assert!(txn.commit().unwrap_err().is_conflict());
    assert_eq!(db.snapshot().kv_get("ns", b"gone").unwrap(), None);
    // Retried on a new snapshot, the same write succeeds.
    db.run(2, |t| t.kv_put("ns", b"gone", KvValue::Json(json!("fresh")))).unwrap();
    assert_eq!(db.snapshot().kv_get("ns", b"gone").unwrap(), Some(KvValue::Json(json!("fresh"))));
}

#[test]
fn the_current_state_is_never_affected() {
    for policy in [
        RetentionPolicy::KeepVersions { per_key: 1 },
        RetentionPolicy::KeepVersions { per_key: 4 },
        RetentionPolicy::KeepFor { max_age: Duration::ZERO },
    ] {
        let fs = FaultStorage::new();
        let mut memories = Vec::new();
        let mut rng = Rng(3);
        let current = {
            let db = open(&fs, policy);
            for _ in 0..4 {
                random_workload(&db, &mut rng, 40, &mut memories);
                let current = state(&db.snapshot()).unwrap();
                db.checkpoint_at_time(u64::MAX).unwrap();
                assert_eq!(state(&db.snapshot()).unwrap(), current, "{policy:?}");
            }
            random_workload(&db, &mut rng, 10, &mut memories);
            state(&db.snapshot()).unwrap()
        };
        let db = open(&fs, policy);
        assert_eq!(state(&db.snapshot()).unwrap(), current, "{policy:?}: after reopen");
    }
}

#[test]
fn pruned_history_and_the_horizon_survive_checkpoint_and_reopen() {
    let fs = FaultStorage::new();
    let policy = RetentionPolicy::KeepVersions { per_key: 2 };
    let mut memories = Vec::new();
    let mut rng = Rng(5);
    let (before, horizon, checkpoint_lsn) = {
        let db = open(&fs, policy);
        random_workload(&db, &mut rng, 80, &mut memories);
        let report = db.checkpoint().unwrap();
        assert!(report.history_horizon_lsn > 0);
        random_workload(&db, &mut rng, 10, &mut memories);
        let every: Vec<Option<String>> = (0..=db.visible_lsn())
            .map(|lsn| db.as_of(lsn).ok().map(|s| state_and_histories(&s, &memories)))
            .collect();
        (every, report.history_horizon_lsn, report.lsn)
    };
    let same = |db: &Database, what: &str| {
        assert_eq!(db.history_horizon_lsn(), horizon, "{what}");
        for (lsn, expected) in before.iter().enumerate() {
            let now = db.as_of(lsn as Lsn).ok().map(|s| state_and_histories(&s, &memories));
            assert_eq!(&now, expected, "{what}: at {lsn}");
        }
    };
    // The same policy: the checkpoint plus the log after it is exactly the state before.
    let db = open(&fs, policy);
    assert_eq!(db.open_report().checkpoint_lsn, Some(checkpoint_lsn));
    same(&db, "reopened");
    drop(db);
    // Another policy does not bring pruned history back, and KeepAll prunes nothing more.
    let db = open(&fs, RetentionPolicy::KeepAll);
    same(&db, "reopened with KeepAll");
    let report = db.checkpoint().unwrap();
    assert_eq!((report.pruned_versions, report.history_horizon_lsn), (0, horizon));
    drop(db);
    let db = open(&fs, RetentionPolicy::KeepAll);
    same(&db, "after a KeepAll checkpoint and a reopen");
    assert_eq!(CHECKPOINT_FORMAT_VERSION, 4);
}

#[test]
fn the_change_feed_and_log_truncation_do_not_depend_on_history_retention() {
    let fs = FaultStorage::new();
    let db = open(&fs, RetentionPolicy::KeepVersions { per_key: 1 });
    db.advance_cursor("consumer", 0).unwrap();
    let first = put(&db, "k", 1);
    for i in 2..=20 {
        put(&db, "k", i);
    }
    let report = db.checkpoint().unwrap();
    assert!(report.history_horizon_lsn > first.lsn);
    assert_eq!(report.log_kept_from, 1, "the cursor holds the log, pruned history or not");
    not_retained(db.as_of(first.lsn).map(|s| s.read_lsn()), first.lsn, report.history_horizon_lsn);
    // The feed reads the log, which still has every change the store no longer keeps.
    let events: Vec<ChangeEvent> = db.changes(first.lsn).unwrap().collect::<Result<_>>().unwrap();
    assert_eq!(events.len(), 20);
    assert_eq!(events[0].after, Some(json!({ "json": 1 })));
    // Once the cursor moves on, truncation follows the checkpoints as usual.
    let position = db.visible_lsn();
    db.advance_cursor("consumer", position).unwrap();
    put(&db, "k", 21);
    let report = db.checkpoint().unwrap();
    assert!(report.log_kept_from > first.lsn);
    assert_eq!(
        db.cursor("consumer").unwrap(),
        Some(position),
        "cursors are read at the current state"
    );
}

#[test]
fn graph_insertion_order_survives_pruning_of_the_creating_versions() {
    let fs = FaultStorage::new();
    let policy = RetentionPolicy::KeepVersions { per_key: 1 };
    let entity = |name: &str| Entity {
        name: name.into(),
        entity_type: "person".into(),
        observations: vec![],
    };
    let names = |db: &Database| -> Vec<String> {
        db.snapshot()
            .read_graph("ns")
            .unwrap()
            .entities
            .into_iter()
            .map(|e| e.name)
            .collect()
    };
    {
        let db = open(&fs, policy);
        db.run(1, |t| t.create_entities("ns", &[entity("A"), entity("B")])).unwrap();
        db.run(1, |t| t.create_entities("ns", &[entity("C")])).unwrap();
        // A and B change after C was created; their creating versions are pruned.
        for i in 0..3 {
            db.run(1, |t| {
                t.add_observations("ns", &[("B".into(), vec![format!("b{i}")]), ("A".into(), vec![format!("a{i}")])])
            })
            .unwrap();
        }
        let report = db.checkpoint().unwrap();
        assert_eq!(report.pruned_versions, 6);
        assert_eq!(db.snapshot().entity_history("ns", "A").unwrap().len(), 1);
        assert_eq!(names(&db), ["A", "B", "C"]);
    }
    let db = open(&fs, policy);
    assert_eq!(names(&db), ["A", "B", "C"], "after reopen from the pruned checkpoint");
    // Deleted and created again, an item moves to the end, as without pruning.
    db.run(1, |t| t.delete_entities("ns", &["A".to_string()])).unwrap();
    db.run(1, |t| t.create_entities("ns", &[entity("A")])).unwrap();
    db.checkpoint().unwrap();
    assert_eq!(names(&db), ["B", "C", "A"]);
}
