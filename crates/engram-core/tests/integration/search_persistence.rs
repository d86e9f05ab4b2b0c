//! The search indexes survive checkpoints: open loads them from the checkpoint's index file
//! (no rebuild) and catches them up from the log; a damaged, truncated or missing index file is
//! never used (the indexes are rebuilt from the store, with the reason reported), and search
//! answers stay the same either way (a rebuilt graph's up to its approximation).

use crate::search_support;

use engram_core::*;
use search_support::*;
use serde_json::json;
use std::path::{Path, PathBuf};

fn index_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(SEARCH_INDEX_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect();
    files.sort();
    files.pop().expect("an index file")
}

/// Every answer the tests compare: vector (graph path), keyword and filtered searches at the
/// current snapshot and as of `old`.
fn answers(db: &Database, old: Lsn, queries: &[Vec<f32>]) -> Vec<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for view in [db.snapshot(), db.as_of(old).unwrap()] {
        for q in queries {
            let mut request = vector_request("ns", q.clone(), 10);
            request.ef_search = Some(64);
            out.push(
                view.search(&request)
                    .unwrap()
                    .into_iter()
                    .map(|h| (h.memory.id, h.score.to_bits()))
                    .collect(),
            );
            request.filter = Some(json!({"parity": 1}).as_object().cloned().unwrap());
            out.push(
                view.search(&request)
                    .unwrap()
                    .into_iter()
                    .map(|h| (h.memory.id, h.score.to_bits()))
                    .collect(),
            );
        }
        let hits = view.search(&keyword_request("ns", "seven", 50)).unwrap();
        out.push(hits.into_iter().map(|h| (h.memory.id, h.score.to_bits())).collect());
    }
    out
}

/// A rebuilt index holds a graph of its own: the background indexer plans the insertions of
/// the commits queued together as one group, so the live graph's links depend on how commits
/// were queued, and the rebuild's on its own grouping (search/planning.rs). Its keyword answers
/// are the same as the live index's; its vector answers the same hits, scores included, up to
/// the graph's approximation: at most 1 hit in 100 differs.
fn assert_same_answers_up_to_the_graph(got: &[Vec<(String, u32)>], expected: &[Vec<(String, u32)>], queries: usize, context: &str) {
    assert_eq!(got.len(), expected.len(), "{context}");
    // Per view, `answers` gives two vector answers per query, then one keyword answer.
    let per_view = 2 * queries + 1;
    let (mut differing, mut total) = (0, 0);
    for (i, (got, expected)) in got.iter().zip(expected).enumerate() {
        if i % per_view == per_view - 1 {
            assert_eq!(got, expected, "{context}: keyword answer {i}");
            continue;
        }
        assert_eq!(got.len(), expected.len(), "{context}: vector answer {i}");
        total += expected.len();
        differing += expected.iter().filter(|hit| !got.contains(hit)).count();
    }
    assert!(differing * 100 <= total, "{context}: {differing} of {total} vector hits differ");
}

#[test]
fn open_loads_the_indexes_from_the_checkpoint_and_a_damaged_index_file_is_rebuilt_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(9);
    let data = clustered(&mut rng, EXACT_SEARCH_MAX_VECTORS + 500, 8, 8, 0.3);
    let queries: Vec<Vec<f32>> = (0..10).map(|_| rng.vector(8)).collect();
    let (old, expected) = {
        let db = open(dir.path());
        let ids = load(
            &db,
            "ns",
            &data,
            |i| format!("note {}", ["seven", "three"][i % 2]),
            |i| json!({"parity": i % 2}),
        );
        let old = db.visible_lsn();
        // Updates and deletions, some before and some after the checkpoint.
        let mut txn = db.begin();
        for id in ids.iter().step_by(7) {
            let patch = MemoryPatch {
                embedding: Some(rng.vector(8)),
                ..Default::default()
            };
            txn.update_memory("ns", id, patch).unwrap();
        }
        txn.commit().unwrap();
        db.checkpoint().unwrap();
        let mut txn = db.begin();
        for id in ids.iter().step_by(11) {
            txn.delete_memory("ns", id).unwrap();
        }
        txn.insert_memory(
            "ns",
            NewMemory {
                text: "seven seven".into(),
                embedding: Some(rng.vector(8)),
                metadata: json!({"parity": 1}),
            },
        )
        .unwrap();
        txn.commit().unwrap();
        // The log ends in a commit that changes no index.
        let lsn = db.run(1, |t| t.kv_put("ns", b"last", KvValue::Json(json!(true)))).unwrap().1.lsn;
        db.wait_for_index(lsn, std::time::Duration::from_secs(30)).unwrap();
        (old, answers(&db, old, &queries))
    };

    // Loaded from the checkpoint, the replayed log's changes queued for the indexer: the same
    // answers at once (the queued tail is searched exactly), and once the index caught up with
    // the end of the log.
    let db = open(dir.path());
    let stats = db.index_stats();
    assert!(matches!(stats.origin, IndexOrigin::Checkpoint { .. }), "{:?}", stats.origin);
    assert_eq!(answers(&db, old, &queries), expected);
    db.wait_for_index(db.visible_lsn(), std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(answers(&db, old, &queries), expected);
    drop(db);

    // Damage the index file at sampled offsets (every byte of the header and trailer, and
    // spread through the body); each time, open rebuilds and answers the same.
    let path = index_file(dir.path());
    let good = std::fs::read(&path).unwrap();
    let len = good.len();
    let mut offsets: Vec<usize> = (0..40).chain(len - 4..len).collect();
    offsets.extend((0..12).map(|i| 40 + i * (len - 44) / 12));
    offsets.push(len / 2);
    for (n, offset) in offsets.into_iter().enumerate() {
        let mut bad = good.clone();
        bad[offset] ^= 0x5a;
        std::fs::write(&path, &bad).unwrap();
        let db = open(dir.path());
        match db.index_stats().origin {
            IndexOrigin::Rebuilt { reason: Some(reason) } => assert!(reason.contains("not usable"), "{reason}"),
            other => panic!("byte {offset} flipped: {other:?}"),
        }
        // Comparing every answer is slow in the test profile; a few suffice. The rebuild runs
        // on the indexer thread (searches meanwhile scan what it has not reached, exactly, so
        // they may be better than the graph's): its graph is compared once it is done.
        if n % 8 == 0 {
            let context = format!("byte {offset} flipped");
            db.wait_for_index(db.visible_lsn(), std::time::Duration::from_secs(30)).unwrap();
            assert_same_answers_up_to_the_graph(&answers(&db, old, &queries), &expected, queries.len(), &context);
        }
    }
    // Truncated, then missing.
    std::fs::write(&path, &good[..len / 3]).unwrap();
    assert!(matches!(
        open(dir.path()).index_stats().origin,
        IndexOrigin::Rebuilt { reason: Some(_) }
    ));
    std::fs::remove_file(&path).unwrap();
    let db = open(dir.path());
    match db.index_stats().origin {
        IndexOrigin::Rebuilt { reason: Some(reason) } => assert!(reason.contains("has no index file"), "{reason}"),
        other => panic!("{other:?}"),
    }
    db.wait_for_index(db.visible_lsn(), std::time::Duration::from_secs(30)).unwrap();
    assert_same_answers_up_to_the_graph(&answers(&db, old, &queries), &expected, queries.len(), "no index file");
    // The next checkpoint writes a new index file, and the old one's removal follows the
    // checkpoint's own retention.
    let mut txn = db.begin();
    txn.insert_memory(
        "ns",
        NewMemory {
            text: "more".into(),
            ..Default::default()
        },
    )
    .unwrap();
    txn.commit().unwrap();
    db.checkpoint().unwrap();
    drop(db);
    let db = open(dir.path());
    assert!(matches!(db.index_stats().origin, IndexOrigin::Checkpoint { .. }));
}

#[test]
fn a_database_without_checkpoints_builds_its_indexes_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path());
        let mut txn = db.begin();
        txn.insert_memory(
            "ns",
            NewMemory {
                text: "hello".into(),
                ..Default::default()
            },
        )
        .unwrap();
        txn.commit().unwrap();
    }
    let db = open(dir.path());
    assert_eq!(db.index_stats().origin, IndexOrigin::Rebuilt { reason: None });
    assert_eq!(db.snapshot().search(&keyword_request("ns", "hello", 5)).unwrap().len(), 1);
}

#[test]
fn index_files_stay_usable_when_the_retention_policy_prunes_versions() {
    let dir = tempfile::tempdir().unwrap();
    let options = || DatabaseOptions {
        retention: RetentionPolicy::KeepVersions { per_key: 1 },
        ..options()
    };
    let mut rng = Rng(5);
    let vectors: Vec<Vec<f32>> = (0..50).map(|_| rng.vector(4)).collect();
    let expected = {
        let db = Database::open(dir.path(), options()).unwrap();
        let ids = load(&db, "ns", &vectors, |i| format!("first {i}"), |_| serde_json::Value::Null);
        let mut txn = db.begin();
        for id in &ids {
            let patch = MemoryPatch {
                text: Some("second".into()),
                embedding: Some(rng.vector(4)),
                ..Default::default()
            };
            txn.update_memory("ns", id, patch).unwrap();
        }
        txn.commit().unwrap();
        // Prunes the first versions, which the index still holds.
        db.checkpoint().unwrap();
        db.snapshot().search(&vector_request("ns", vec![1.0, 0.0, 0.0, 0.0], 50)).unwrap()
    };
    for round in 0..2 {
        let db = Database::open(dir.path(), options()).unwrap();
        assert!(
            matches!(db.index_stats().origin, IndexOrigin::Checkpoint { .. }),
            "round {round}: {:?}",
            db.index_stats().origin
        );
        let hits = db.snapshot().search(&vector_request("ns", vec![1.0, 0.0, 0.0, 0.0], 50)).unwrap();
        assert_eq!(hits, expected);
        assert!(hits.iter().all(|h| h.memory.text == "second"));
        // A new checkpoint re-saves the pruned versions as valid nowhere; the next open loads it.
        let mut txn = db.begin();
        txn.insert_memory(
            "other",
            NewMemory {
                text: format!("round {round}"),
                ..Default::default()
            },
        )
        .unwrap();
        txn.commit().unwrap();
        db.checkpoint().unwrap();
    }
}

/// A checkpoint taken while the indexes trail it (a backlog, or a rebuild still running after
/// an open) stands without its index file instead of failing: the report says the file was
/// deferred, and the next checkpoint call, once the indexes have reached it, writes it, so the
/// open after that loads the indexes instead of rebuilding them. (The checkpoint waits
/// `SEARCH_INDEX_WAIT`, 30 s, for the paused indexer first.)
#[test]
fn a_checkpoint_ahead_of_the_indexes_defers_its_index_file_and_a_later_call_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(12);
    let vectors: Vec<Vec<f32>> = (0..40).map(|_| rng.vector(4)).collect();
    {
        let db = open(dir.path());
        load(&db, "ns", &vectors[..20], |i| format!("early {i}"), |_| serde_json::Value::Null);
        db.pause_indexer(true);
        load_unindexed(&db, &vectors[20..]);
        let deferred = db.checkpoint().unwrap();
        assert!(deferred.written, "the checkpoint itself is written");
        assert!(!deferred.index_file_written, "{deferred:?}");
        let index_files = std::fs::read_dir(dir.path().join(SEARCH_INDEX_DIR)).map_or(0, |d| {
            d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "index"))
                .count()
        });
        assert_eq!(index_files, 0, "no index file for a checkpoint the indexes have not reached");

        db.pause_indexer(false);
        let later = db.checkpoint().unwrap();
        assert!(!later.written, "nothing new to checkpoint");
        assert!(later.index_file_written, "{later:?}");
        assert!(index_file(dir.path()).to_string_lossy().contains(&format!("{:020}", deferred.lsn)));
    }
    let db = open(dir.path());
    assert!(
        matches!(db.index_stats().origin, IndexOrigin::Checkpoint { .. }),
        "{:?}",
        db.index_stats().origin
    );
    for v in &vectors {
        assert_eq!(db.snapshot().search(&vector_request("ns", v.clone(), 1)).unwrap().len(), 1);
    }
}

/// Inserts `vectors` in one transaction without waiting for the indexes.
fn load_unindexed(db: &Database, vectors: &[Vec<f32>]) {
    let mut txn = db.begin();
    for (i, v) in vectors.iter().enumerate() {
        let memory = NewMemory {
            text: format!("late {i}"),
            embedding: Some(v.clone()),
            metadata: serde_json::Value::Null,
        };
        txn.insert_memory("ns", memory).unwrap();
    }
    txn.commit().unwrap();
}
