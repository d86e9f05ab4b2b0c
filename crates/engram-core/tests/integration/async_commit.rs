//! `Transaction::commit_async`: the same commit as `commit`, awaited instead of blocking.
//!
//! The contract: when the future is ready with `Ok`, the transaction is durable (it survives a
//! power loss) and visible to every later snapshot; conflicts are decided exactly as for
//! `commit` (first committer wins, the loser gets `Conflict` and changes nothing), so no update
//! is lost however tasks and threads interleave.

use crate::options::{open_on, small_log};
use engram_core::*;
use engram_wal::storage::{CrashMode, FaultStorage};
use serde_json::json;
use std::sync::{Arc, Mutex};

fn options() -> DatabaseOptions {
    small_log(256 * 1024, 32 * 1024)
}

fn open(fs: &FaultStorage) -> Database {
    open_on(fs, options()).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_awaited_commit_is_visible_at_once_and_survives_a_power_loss() {
    let fs = FaultStorage::new();
    let db = Arc::new(open(&fs));
    // Declared first: concurrent first inserts would otherwise race to fix the dimension.
    let mut declare = db.begin();
    declare.declare_vector_space("agent", 3, Metric::Cosine).unwrap();
    declare.commit().unwrap();
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    runtime().block_on(async {
        let mut tasks = Vec::new();
        for task in 0..16 {
            let (db, acknowledged) = (db.clone(), acknowledged.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    let text = format!("task {task} note {i}");
                    let mut txn = db.begin();
                    let id = txn
                        .insert_memory(
                            "agent",
                            NewMemory {
                                text: text.clone(),
                                embedding: Some(vec![task as f32, i as f32, 1.0]),
                                metadata: json!({"task": task}),
                            },
                        )
                        .unwrap();
                    txn.kv_put("agent", format!("last/{task}").as_bytes(), KvValue::Json(json!(i)))
                        .unwrap();
                    let info = txn.commit_async().await.unwrap();
                    assert!(db.visible_lsn() >= info.lsn, "ready before it was visible");
                    let read = db
                        .snapshot()
                        .get_memory("agent", &id)
                        .unwrap()
                        .expect("a later snapshot sees the commit");
                    assert_eq!(read.text, text);
                    acknowledged.lock().unwrap().push((id, text, task, i));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    drop(Arc::into_inner(db).expect("the tasks are done"));
    fs.crash(CrashMode::DropUnsynced);
    let db = open(&fs);
    let snapshot = db.snapshot();
    let acknowledged = acknowledged.lock().unwrap();
    assert_eq!(acknowledged.len(), 16 * 20);
    for (id, text, _, _) in acknowledged.iter() {
        let memory = snapshot.get_memory("agent", id).unwrap().expect("an acknowledged memory was lost");
        assert_eq!(&memory.text, text);
    }
    for task in 0..16 {
        assert_eq!(
            snapshot.kv_get("agent", format!("last/{task}").as_bytes()).unwrap(),
            Some(KvValue::Json(json!(19))),
            "the same transactions' key/value writes survive with them"
        );
    }
}

#[test]
fn tasks_and_threads_racing_on_one_counter_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), options()).unwrap());
    let conflicts = Arc::new(Mutex::new(0u64));
    let increment = |db: &Database| -> Result<Transaction> {
        let mut txn = db.begin();
        let current = match txn.kv_get("agent", b"counter")? {
            Some(KvValue::Json(v)) => v.as_u64().unwrap(),
            _ => 0,
        };
        txn.kv_put("agent", b"counter", KvValue::Json(json!(current + 1)))?;
        Ok(txn)
    };
    const TASKS: u64 = 8;
    const THREADS: u64 = 2;
    const EACH: u64 = 25;
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (db, conflicts) = (db.clone(), conflicts.clone());
            std::thread::spawn(move || {
                let mut done = 0;
                while done < EACH {
                    match increment(&db).unwrap().commit() {
                        Ok(_) => done += 1,
                        Err(CoreError::Conflict { .. }) => *conflicts.lock().unwrap() += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    runtime().block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (db, conflicts) = (db.clone(), conflicts.clone());
                tokio::spawn(async move {
                    let mut done = 0;
                    while done < EACH {
                        match increment(&db).unwrap().commit_async().await {
                            Ok(_) => done += 1,
                            Err(CoreError::Conflict { .. }) => *conflicts.lock().unwrap() += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    for t in threads {
        t.join().unwrap();
    }
    let counter = db.snapshot().kv_get("agent", b"counter").unwrap();
    assert_eq!(counter, Some(KvValue::Json(json!((TASKS + THREADS) * EACH))), "an update was lost");
    // Every conflict was a refused commit that changed nothing: the counter's history has one
    // version per successful increment.
    let history = db.snapshot().kv_history("agent", b"counter").unwrap();
    assert_eq!(history.len() as u64, (TASKS + THREADS) * EACH);
    eprintln!("conflicts refused: {}", conflicts.lock().unwrap());
}

#[test]
fn an_empty_or_conflicting_async_commit_logs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let rt = runtime();
    let before = db.wal_stats().last_lsn;
    let info = rt.block_on(db.begin().commit_async()).unwrap();
    assert_eq!(info.txn_id, 0, "an empty transaction is not logged");
    assert_eq!(db.wal_stats().last_lsn, before);

    let mut loser = db.begin();
    let mut winner = db.begin();
    winner.kv_put("agent", b"k", KvValue::Json(json!("winner"))).unwrap();
    loser.kv_put("agent", b"k", KvValue::Json(json!("loser"))).unwrap();
    rt.block_on(winner.commit_async()).unwrap();
    let logged = db.wal_stats().last_lsn;
    let refused = rt.block_on(loser.commit_async());
    assert!(matches!(refused, Err(CoreError::Conflict { .. })), "{refused:?}");
    assert_eq!(db.wal_stats().last_lsn, logged, "the loser logged nothing");
    assert_eq!(db.snapshot().kv_get("agent", b"k").unwrap(), Some(KvValue::Json(json!("winner"))));
}

/// A server drops a request's future when its client disconnects. A commit dropped after its
/// first poll is in the log: it must not then sit invisible (or, with a relaxed policy,
/// unsynced) until some later commit happens to carry it. With no other writer, it becomes
/// durable and visible on its own, whatever its durability, and survives a power loss.
#[test]
fn a_commit_dropped_after_it_was_logged_becomes_durable_and_visible_without_later_commits() {
    use std::future::Future;
    use std::task::{Context, Waker};
    for durability in [SyncPolicy::Always, SyncPolicy::Never] {
        let fs = FaultStorage::new();
        let db = open(&fs);
        let mut txn = db.begin();
        txn.set_durability(durability);
        let id = txn
            .insert_memory(
                "agent",
                NewMemory {
                    text: format!("abandoned with {durability:?}"),
                    embedding: None,
                    metadata: json!({}),
                },
            )
            .unwrap();
        let mut commit = Box::pin(txn.commit_async());
        let first_poll = commit.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        drop(commit);
        if first_poll.is_pending() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while db.snapshot().get_memory("agent", &id).unwrap().is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the abandoned commit never became visible ({durability:?})"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let visible_lsn = db.visible_lsn();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while db.wal_stats().durable_lsn < visible_lsn {
            assert!(
                std::time::Instant::now() < deadline,
                "the abandoned commit never became durable ({durability:?})"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(db);
        fs.crash(CrashMode::DropUnsynced);
        let db = open(&fs);
        assert!(
            db.snapshot().get_memory("agent", &id).unwrap().is_some(),
            "the abandoned commit was lost in a power loss ({durability:?})"
        );
    }
}
