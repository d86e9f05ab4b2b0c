//! The transaction contract: atomic, isolated (snapshot isolation), durable, and readable as of
//! any past LSN.

use crate::options::small_log;
use engram_core::*;
use engram_wal::storage::{CrashMode, FaultStorage};
use serde_json::json;
use std::sync::Arc;

fn options() -> DatabaseOptions {
    small_log(64 * 1024, 32 * 1024)
}

fn note(text: &str) -> NewMemory {
    NewMemory {
        text: text.into(),
        embedding: None,
        metadata: json!({"source": "test"}),
    }
}

#[test]
fn a_commit_is_atomic_across_memories_graph_kv_and_events_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (id, info) = {
        let db = Database::open(dir.path(), options()).unwrap();
        let mut txn = db.begin();
        let id = txn
            .insert_memory(
                "agent",
                NewMemory {
                    embedding: Some(vec![0.1, 0.2, 0.3]),
                    ..note("likes tea")
                },
            )
            .unwrap();
        txn.create_entities(
            "agent",
            &[Entity {
                name: "Ada".into(),
                entity_type: "person".into(),
                observations: vec!["likes tea".into()],
            }],
        )
        .unwrap();
        txn.kv_put("agent", b"state/step", KvValue::Json(json!(3))).unwrap();
        txn.emit_event("agent", "memory.added", json!({"id": id})).unwrap();
        let info = txn.commit().unwrap();
        assert!(info.lsn > 0 && info.txn_id > 0);
        (id, info)
    };
    let db = Database::open(dir.path(), options()).unwrap();
    let snap = db.snapshot();
    assert_eq!(snap.read_lsn(), info.lsn);
    assert_eq!(snap.get_memory("agent", &id).unwrap().unwrap().text, "likes tea");
    assert_eq!(snap.dimension("agent"), Some(3));
    assert_eq!(snap.read_graph("agent").unwrap().entities.len(), 1);
    assert_eq!(snap.kv_get("agent", b"state/step").unwrap(), Some(KvValue::Json(json!(3))));
}

#[test]
fn a_dropped_transaction_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let mut txn = db.begin();
    txn.kv_put("ns", b"k", KvValue::Bytes(b"v".to_vec())).unwrap();
    drop(txn);
    assert_eq!(db.snapshot().kv_get("ns", b"k").unwrap(), None);
    assert_eq!(db.visible_lsn(), 0, "nothing was logged");
}

#[test]
fn first_committer_wins_and_the_loser_gets_a_typed_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let mut a = db.begin();
    let mut b = db.begin();
    a.kv_put("ns", b"counter", KvValue::Json(json!(1))).unwrap();
    b.kv_put("ns", b"counter", KvValue::Json(json!(2))).unwrap();
    a.commit().unwrap();
    let err = b.commit().unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(db.snapshot().kv_get("ns", b"counter").unwrap(), Some(KvValue::Json(json!(1))));
}

#[test]
fn deleting_a_key_absent_from_the_snapshot_conflicts_with_a_commit_that_created_it_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let mut deleter = db.begin();
    assert!(!deleter.kv_delete("ns", b"lock").unwrap(), "absent from its snapshot");
    db.run(1, |t| t.kv_put("ns", b"lock", KvValue::Json(json!("held")))).unwrap();
    // The deletion logs nothing (its snapshot had nothing to delete), but it is still a write
    // of the key, and a later commit wrote the key first.
    let err = deleter.commit().unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(db.snapshot().kv_get("ns", b"lock").unwrap(), Some(KvValue::Json(json!("held"))));

    // Without a concurrent write it is a no-op commit that logs nothing.
    let lsn = db.visible_lsn();
    let mut t = db.begin();
    t.kv_delete("ns", b"never-written").unwrap();
    assert_eq!(t.commit().unwrap().lsn, lsn);
    assert_eq!(db.visible_lsn(), lsn);
}

#[test]
fn the_retry_helper_makes_concurrent_increments_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let db = db.clone();
            s.spawn(move || {
                for _ in 0..25 {
                    db.run(1000, |txn| {
                        let n = match txn.kv_get("ns", b"counter")? {
                            Some(KvValue::Json(v)) => v.as_i64().unwrap(),
                            _ => 0,
                        };
                        txn.kv_put("ns", b"counter", KvValue::Json(json!(n + 1)))
                    })
                    .unwrap();
                }
            });
        }
    });
    assert_eq!(db.snapshot().kv_get("ns", b"counter").unwrap(), Some(KvValue::Json(json!(200))));
}

#[test]
fn snapshots_are_repeatable_and_never_see_later_or_uncommitted_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    db.run(1, |t| t.kv_put("ns", b"k", KvValue::Json(json!("v1")))).unwrap();
    let snap = db.snapshot();
    let mut writer = db.begin();
    writer.kv_put("ns", b"k", KvValue::Json(json!("uncommitted"))).unwrap();
    assert_eq!(snap.kv_get("ns", b"k").unwrap(), Some(KvValue::Json(json!("v1"))), "no dirty read");
    writer.commit().unwrap();
    assert_eq!(
        snap.kv_get("ns", b"k").unwrap(),
        Some(KvValue::Json(json!("v1"))),
        "repeatable read"
    );
    assert_eq!(db.snapshot().kv_get("ns", b"k").unwrap(), Some(KvValue::Json(json!("uncommitted"))));
}

#[test]
fn write_skew_is_allowed_under_snapshot_isolation() {
    // Two transactions read both keys and each writes a different one: no write-write conflict,
    // so both commit. This is the documented anomaly of snapshot isolation.
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let mut a = db.begin();
    let mut b = db.begin();
    assert_eq!(a.kv_get("ns", b"x").unwrap(), None);
    assert_eq!(b.kv_get("ns", b"y").unwrap(), None);
    a.kv_put("ns", b"y", KvValue::Json(json!(1))).unwrap();
    b.kv_put("ns", b"x", KvValue::Json(json!(1))).unwrap();
    a.commit().unwrap();
    b.commit().unwrap();
}

#[test]
fn every_read_can_be_as_of_a_past_lsn_or_time_and_history_lists_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let (id, created) = db.run(1, |t| t.insert_memory("ns", note("first"))).unwrap();
    let (_, updated) = db
        .run(1, |t| {
            t.update_memory(
                "ns",
                &id,
                MemoryPatch {
                    text: Some("second".into()),
                    ..Default::default()
                },
            )
        })
        .unwrap();
    let (_, deleted) = db.run(1, |t| t.delete_memory("ns", &id)).unwrap();
    let text_at = |lsn| db.as_of(lsn).unwrap().get_memory("ns", &id).unwrap().map(|m| m.text);
    assert_eq!(text_at(created.lsn - 1), None);
    assert_eq!(text_at(created.lsn).as_deref(), Some("first"));
    assert_eq!(text_at(updated.lsn).as_deref(), Some("second"));
    assert_eq!(text_at(deleted.lsn), None);
    assert_eq!(
        db.as_of_time(created.commit_ts_ms - 1).unwrap().read_lsn(),
        0,
        "before the first commit time nothing is visible"
    );
    let at_update_time = db.as_of_time(updated.commit_ts_ms).unwrap().read_lsn();
    assert!(at_update_time >= updated.lsn, "a time covers every commit made at or before it");
    assert_eq!(db.as_of_time(u64::MAX).unwrap().read_lsn(), deleted.lsn);
    let history = db.snapshot().memory_history("ns", &id).unwrap();
    assert_eq!(
        history.iter().map(|v| v.lsn).collect::<Vec<_>>(),
        [created.lsn, updated.lsn, deleted.lsn]
    );
    assert!(history[2].value.is_none(), "the last version is the deletion");
}

#[test]
fn acknowledged_commits_survive_power_loss_and_unacknowledged_ones_vanish_whole() {
    let fs = FaultStorage::new();
    let acked = {
        let db = Database::open_with_storage(Arc::new(fs.clone()), "/db", options()).unwrap();
        let acked = db.run(1, |t| t.kv_put("ns", b"a", KvValue::Json(json!(1)))).unwrap().1;
        let mut relaxed = db.begin();
        relaxed.set_durability(SyncPolicy::Never);
        relaxed.kv_put("ns", b"b", KvValue::Json(json!(2))).unwrap();
        relaxed.kv_put("ns", b"c", KvValue::Json(json!(3))).unwrap();
        relaxed.commit().unwrap();
        fs.crash(CrashMode::DropUnsynced);
        acked
    };
    let db = Database::open_with_storage(Arc::new(fs), "/db", options()).unwrap();
    let snap = db.snapshot();
    assert_eq!(snap.read_lsn(), acked.lsn);
    assert_eq!(snap.kv_get("ns", b"a").unwrap(), Some(KvValue::Json(json!(1))));
    assert_eq!((snap.kv_get("ns", b"b").unwrap(), snap.kv_get("ns", b"c").unwrap()), (None, None));
}

/// With the default durability a commit is durable before anyone can see it: a snapshot never
/// holds a commit that a power loss could take back. (A `Never` commit is visible before it is
/// durable, and, visibility following LSN order, so is every commit logged before it:
/// docs/architecture.md, step 6.)
#[test]
fn with_always_durability_no_commit_is_visible_before_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let writers_done = std::sync::atomic::AtomicUsize::new(0);
    const WRITERS: usize = 8;
    let observations = std::thread::scope(|s| {
        for writer in 0..WRITERS {
            let (db, writers_done) = (&db, &writers_done);
            s.spawn(move || {
                for i in 0..200 {
                    db.run(10, |t| t.kv_put("ns", format!("{writer}/{i}").as_bytes(), KvValue::Json(json!(i))))
                        .unwrap();
                }
                writers_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let mut observations = 0u64;
        while writers_done.load(std::sync::atomic::Ordering::SeqCst) < WRITERS {
            // Visible first: the durable LSN read after it can only be larger.
            let visible = db.visible_lsn();
            let durable = db.wal_stats().durable_lsn;
            assert!(visible <= durable, "LSN {visible} is visible but only {durable} is durable");
            observations += 1;
        }
        observations
    });
    assert!(observations > 0);
    assert_eq!(db.visible_lsn(), db.wal_stats().durable_lsn);
}

#[test]
fn bad_input_gets_typed_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let mut t = db.begin();
    assert!(matches!(t.insert_memory("bad/ns", note("x")), Err(CoreError::InvalidName { .. })));
    assert!(matches!(
        t.insert_memory(
            "ns",
            NewMemory {
                metadata: json!([1]),
                ..note("x")
            }
        ),
        Err(CoreError::MetadataNotObject { got: "an array" })
    ));
    assert!(matches!(
        t.insert_memory(
            "ns",
            NewMemory {
                embedding: Some(vec![f32::NAN]),
                ..note("x")
            }
        ),
        Err(CoreError::NonFiniteValue { .. })
    ));
    t.insert_memory(
        "ns",
        NewMemory {
            embedding: Some(vec![1.0, 2.0]),
            ..note("x")
        },
    )
    .unwrap();
    assert!(matches!(
        t.insert_memory(
            "ns",
            NewMemory {
                embedding: Some(vec![1.0]),
                ..note("x")
            }
        ),
        Err(CoreError::DimensionMismatch { expected: 2, got: 1, .. })
    ));
    assert!(matches!(
        t.update_memory("ns", "01NOSUCHID", MemoryPatch::default()),
        Err(CoreError::NotFound { .. })
    ));
    assert!(matches!(
        t.kv_put("ns", b"", KvValue::Bytes(vec![])),
        Err(CoreError::InvalidName { .. })
    ));
    assert!(matches!(t.emit_event("ns", "", json!(null)), Err(CoreError::InvalidName { .. })));
}

#[test]
fn durable_cursors_survive_reopen_and_report_the_truncation_floor() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::open(dir.path(), options()).unwrap();
        assert_eq!(db.cursor_floor(), None);
        db.advance_cursor("indexer", 5).unwrap();
        db.advance_cursor("replica-1", 2).unwrap();
        db.advance_cursor("indexer", 7).unwrap();
        assert!(matches!(db.advance_cursor("", 1), Err(CoreError::InvalidName { .. })));
    }
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.cursors(), vec![("indexer".to_string(), 7), ("replica-1".to_string(), 2)]);
    assert_eq!(db.cursor_floor(), Some(3), "records after LSN 2 are still needed by replica-1");
    assert!(db.delete_cursor("replica-1").unwrap());
    assert_eq!(db.cursor_floor(), Some(8));
    assert_eq!(db.cursor("replica-1").unwrap(), None);
}

#[test]
fn a_transaction_that_changes_nothing_logs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let (existed, info) = db.run(1, |t| t.kv_delete("ns", b"absent")).unwrap();
    assert!(!existed);
    assert_eq!((info.lsn, info.txn_id), (0, 0));
    assert_eq!(db.wal_stats().appends, 0);
}

#[test]
fn a_shared_memory_read_sees_what_a_copying_read_sees_and_keeps_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let new = |text: &str| NewMemory {
        text: text.into(),
        embedding: Some(vec![1.0, 0.5]),
        metadata: json!({"k": 1}),
    };
    let (id, first) = db.run(1, |t| t.insert_memory("ns", new("first"))).unwrap();
    let held = db.snapshot().get_memory_ref("ns", &id).unwrap().expect("committed");
    assert_eq!(held.to_memory(), db.snapshot().get_memory("ns", &id).unwrap().unwrap());
    let patch = MemoryPatch {
        text: Some("second".into()),
        ..Default::default()
    };
    db.run(1, |t| t.update_memory("ns", &id, patch.clone())).unwrap();
    // A version never changes once committed: the reference still reads the first one.
    assert_eq!(held.text, "first");
    assert_eq!(db.snapshot().get_memory_ref("ns", &id).unwrap().unwrap().text, "second");
    assert_eq!(
        db.as_of(first.lsn).unwrap().get_memory_ref("ns", &id).unwrap().unwrap().text,
        "first"
    );
    // Inside a transaction: its own writes, and nothing for a deleted or unknown id.
    let mut t = db.begin();
    t.update_memory(
        "ns",
        &id,
        MemoryPatch {
            text: Some("third".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(t.get_memory_ref("ns", &id).unwrap().unwrap().text, "third");
    t.delete_memory("ns", &id).unwrap();
    assert!(t.get_memory_ref("ns", &id).unwrap().is_none());
    assert!(db.snapshot().get_memory_ref("ns", "no-such-id").unwrap().is_none());
    assert!(db.snapshot().get_memory_ref("bad namespace!", &id).is_err());
}
