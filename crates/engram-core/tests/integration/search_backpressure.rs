//! The search indexer's queue bound (`DatabaseOptions::index_queue_bound`): how far the indexes
//! may trail the commits before a committing writer of memories waits for them.
//!
//! The contract: a commit is durable and visible before it can wait (the wait only paces the
//! writer, it never delays or undoes the commit); only commits that wrote memories wait, only
//! while the queue is over its bound, by changes or by bytes of embeddings; they return as soon
//! as the indexer has brought the queue back within the bound; `index_stats().throttled_commits`
//! counts them. A bound of 0 makes every memory commit return indexed.
//!
//! The indexer is paused with the test hook to hold the queue over its bound; "still waiting"
//! is observed as "has not returned after a while", which a waiting writer cannot falsify.
//! These tests check that a held commit is visible; that it is durable first follows from
//! `Transaction::commit` finishing the commit (the log's fdatasync) before it can be held.

use crate::search_support;

use engram_core::*;
use search_support::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DIMENSION: usize = 4;
/// How long a writer that should be held is watched before it counts as held.
const STILL_HELD_AFTER: Duration = Duration::from_millis(300);

/// Opens with `bound`, the namespace's dimension declared (so concurrent first inserts do not
/// conflict on fixing it).
fn open_bounded(dir: &std::path::Path, bound: IndexQueueBound) -> Database {
    let db = Database::open(
        dir,
        DatabaseOptions {
            index_queue_bound: bound,
            ..options()
        },
    )
    .unwrap();
    db.run(1, |t| t.declare_dimension("ns", DIMENSION)).unwrap();
    db
}

fn memory(i: usize) -> NewMemory {
    NewMemory {
        text: format!("memory number {i}"),
        embedding: Some((0..DIMENSION).map(|d| (i * DIMENSION + d) as f32 + 1.0).collect()),
        metadata: serde_json::Value::Null,
    }
}

fn insert(db: &Database, i: usize) -> (String, CommitInfo) {
    db.run(1, |t| t.insert_memory("ns", memory(i))).unwrap()
}

/// Commits memory `i` on another thread; returns (the thread, a flag set when the commit call
/// returned).
fn insert_in_background(db: &Arc<Database>, i: usize) -> (std::thread::JoinHandle<(String, CommitInfo)>, Arc<AtomicBool>) {
    let returned = Arc::new(AtomicBool::new(false));
    let (db, flag) = (db.clone(), returned.clone());
    let thread = std::thread::spawn(move || {
        let outcome = insert(&db, i);
        flag.store(true, Ordering::Release);
        outcome
    });
    (thread, returned)
}

/// Memory `i` is found by a vector search (exactly, from the queued tail while the indexer is
/// paused) and read by id, by a snapshot taken now; returns its id.
fn assert_visible(db: &Database, i: usize) -> String {
    let snapshot = db.snapshot();
    let query = memory(i).embedding.unwrap();
    let hits = snapshot.search(&vector_request("ns", query, 1)).unwrap();
    assert_eq!(hits[0].memory.text, memory(i).text, "memory {i} is not found by search");
    let id = hits[0].memory.id.clone();
    assert!(snapshot.get_memory("ns", &id).unwrap().is_some(), "memory {i} is not readable");
    id
}

#[test]
fn a_memory_commit_over_the_bound_is_visible_at_once_and_returns_when_the_indexer_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let bound = IndexQueueBound {
        changes: 3,
        vector_bytes: usize::MAX,
    };
    let db = Arc::new(open_bounded(dir.path(), bound));
    db.pause_indexer(true);
    // Up to the bound, nobody waits.
    for i in 0..3 {
        insert(&db, i);
    }
    assert_eq!(db.index_stats().queued_changes, 3);
    assert_eq!(db.index_stats().throttled_commits, 0);
    // The fourth commit puts the queue over its bound: it commits, then waits.
    let (writer, returned) = insert_in_background(&db, 3);
    std::thread::sleep(STILL_HELD_AFTER);
    assert!(
        !returned.load(Ordering::Acquire),
        "a commit over the bound returned while the indexer was paused"
    );
    assert_eq!(db.index_stats().throttled_commits, 1);
    assert_eq!(db.index_stats().queued_changes, 4);
    // Already committed: readable and searchable by everyone else while its writer waits.
    let seen_while_held = assert_visible(&db, 3);
    db.pause_indexer(false);
    let (id, info) = writer.join().unwrap();
    assert!(returned.load(Ordering::Acquire));
    assert_eq!(id, seen_while_held);
    assert_eq!(assert_visible(&db, 3), id);
    db.wait_for_index(info.lsn, Duration::from_secs(60)).unwrap();
    assert_eq!(db.index_stats().queued_changes, 0);
    assert_eq!(db.index_stats().throttled_commits, 1);
}

#[test]
fn bytes_of_queued_embeddings_bound_the_queue_as_changes_do() {
    let dir = tempfile::tempdir().unwrap();
    let vector_bytes = DIMENSION * std::mem::size_of::<f32>();
    let bound = IndexQueueBound {
        changes: usize::MAX,
        vector_bytes: 2 * vector_bytes,
    };
    let db = Arc::new(open_bounded(dir.path(), bound));
    db.pause_indexer(true);
    insert(&db, 0);
    insert(&db, 1);
    assert_eq!(db.index_stats().queued_vector_bytes, 2 * vector_bytes);
    let (writer, returned) = insert_in_background(&db, 2);
    std::thread::sleep(STILL_HELD_AFTER);
    assert!(
        !returned.load(Ordering::Acquire),
        "a commit over the byte bound returned while the indexer was paused"
    );
    assert_eq!(db.index_stats().throttled_commits, 1);
    db.pause_indexer(false);
    writer.join().unwrap();
    assert_eq!(db.index_stats().throttled_commits, 1);
}

#[test]
fn commits_that_write_no_memories_never_wait_for_the_indexer() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_bounded(
        dir.path(),
        IndexQueueBound {
            changes: 0,
            vector_bytes: 0,
        },
    );
    db.pause_indexer(true);
    // Over the bound from the first memory on; this one is let through by the resume below.
    let db = Arc::new(db);
    let (writer, _) = insert_in_background(&db, 0);
    std::thread::sleep(STILL_HELD_AFTER);
    assert_eq!(db.index_stats().throttled_commits, 1);
    // Key/value and graph commits do not feed the search indexes: they go through.
    db.run(1, |t| t.kv_put("ns", b"state", KvValue::Json(serde_json::json!({"step": 1}))))
        .unwrap();
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
    assert_eq!(db.index_stats().throttled_commits, 1);
    db.pause_indexer(false);
    writer.join().unwrap();
}

#[test]
fn with_a_bound_of_zero_every_memory_commit_returns_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(open_bounded(
        dir.path(),
        IndexQueueBound {
            changes: 0,
            vector_bytes: 0,
        },
    ));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let (_, info) = insert(&db, w * 100 + i);
                    let indexed = db.index_stats().indexed_lsn;
                    assert!(
                        indexed >= info.lsn,
                        "commit at LSN {} returned with the index at {indexed}",
                        info.lsn
                    );
                }
            })
        })
        .collect();
    writers.into_iter().for_each(|w| w.join().unwrap());
    assert_eq!(db.index_stats().queued_changes, 0);
}

#[test]
fn async_commits_over_the_bound_yield_until_the_indexer_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(open_bounded(
        dir.path(),
        IndexQueueBound {
            changes: 1,
            vector_bytes: usize::MAX,
        },
    ));
    db.pause_indexer(true);
    insert(&db, 0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let returned = Arc::new(AtomicBool::new(false));
    let task = {
        let (db, returned) = (db.clone(), returned.clone());
        runtime.spawn(async move {
            let mut txn = db.begin();
            txn.insert_memory("ns", memory(1)).unwrap();
            let info = txn.commit_async().await.unwrap();
            returned.store(true, Ordering::Release);
            info
        })
    };
    std::thread::sleep(STILL_HELD_AFTER);
    assert!(
        !returned.load(Ordering::Acquire),
        "an async commit over the bound returned while the indexer was paused"
    );
    assert_eq!(db.index_stats().throttled_commits, 1);
    // The held task yields its worker: another task on the one worker thread still runs.
    let other = runtime.spawn(async { 42 });
    assert_eq!(runtime.block_on(other).unwrap(), 42);
    db.pause_indexer(false);
    let info = runtime.block_on(task).unwrap();
    assert!(returned.load(Ordering::Acquire));
    db.wait_for_index(info.lsn, Duration::from_secs(60)).unwrap();
}
