//! `Wal::complete_async`: waiting for durability from async tasks.
//!
//! The contract:
//! - a completion is ready only once its record (and every record before it) meets the policy:
//!   durable for `Always`, written for `Never`; tasks never block their executor thread while the
//!   log syncs, and many waiting tasks share one fdatasync (group commit);
//! - tasks and threads can wait at the same time, sharing rounds;
//! - after a power loss, every record whose completion was ready with `Ok` is recovered, in order,
//!   byte for byte; a failed fdatasync makes the waiting completions fail (and every later one,
//!   `Poisoned`), never hang;
//! - dropping a completion withdraws only the wait: the record stays in the log.

use engram_wal::storage::{CrashMode, FaultKind, FaultStorage, OpKind};
use engram_wal::{Error, Lsn, SyncPolicy, Wal, WalOptions};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DIR: &str = "/db";

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 64 * 1024,
        max_record_bytes: 4096,
        background_preallocation: false,
        ..Default::default()
    }
}

fn payload(task: usize, i: usize) -> Vec<u8> {
    format!("task {task} record {i} ").repeat(1 + (task + i) % 7).into_bytes()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn open(fs: &FaultStorage) -> Wal {
    Wal::open_with_storage(Arc::new(fs.clone()), DIR, options()).unwrap()
}

/// Simulates `mode`, reopens the log and reads every record back (the log must be dropped).
fn records_after(fs: &FaultStorage, mode: CrashMode) -> BTreeMap<Lsn, Vec<u8>> {
    fs.crash(mode);
    read_all(&open(fs))
}

/// Records read back from a reopened log.
fn read_all(wal: &Wal) -> BTreeMap<Lsn, Vec<u8>> {
    let mut reader = wal.reader(wal.first_lsn()).unwrap();
    let mut records = BTreeMap::new();
    while let Some(r) = reader.next_record().unwrap() {
        records.insert(r.lsn, r.payload);
    }
    records
}

/// Appends `records_per_task` records from each of `tasks` tasks, each awaiting its own
/// completion; returns what was acknowledged (LSN -> payload) and the errors seen.
async fn append_from_tasks(
    wal: Arc<Wal>,
    tasks: usize,
    records_per_task: usize,
    policy: SyncPolicy,
) -> (BTreeMap<Lsn, Vec<u8>>, Vec<Error>) {
    let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (wal, acknowledged, errors) = (wal.clone(), acknowledged.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..records_per_task {
                let bytes = payload(task, i);
                let outcome = match wal.submit(&[(1, &bytes)]) {
                    Ok(range) => wal.complete_async(*range.end(), policy).await.map(|()| *range.end()),
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(lsn) => {
                        if policy == SyncPolicy::Always {
                            assert!(wal.durable_lsn() >= lsn, "ready before its record was durable");
                        }
                        acknowledged.lock().unwrap().insert(lsn, bytes);
                    }
                    Err(e) => {
                        errors.lock().unwrap().push(e);
                        return;
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    (acknowledged, errors)
}

#[test]
fn tasks_are_acknowledged_only_when_durable_and_share_fdatasyncs() {
    let fs = FaultStorage::new();
    let wal = Arc::new(open(&fs));
    let syncs_before = wal.stats().syncs;
    let (acknowledged, errors) = runtime().block_on(append_from_tasks(wal.clone(), 32, 40, SyncPolicy::Always));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(acknowledged.len(), 32 * 40);
    let syncs = wal.stats().syncs - syncs_before;
    assert!(
        syncs < acknowledged.len() as u64,
        "{syncs} fdatasyncs for {} records: no group commit",
        acknowledged.len()
    );
    drop(Arc::into_inner(wal).expect("the tasks are done"));
    let recovered = records_after(&fs, CrashMode::DropUnsynced);
    for (lsn, bytes) in &acknowledged {
        assert_eq!(
            recovered.get(lsn),
            Some(bytes),
            "acknowledged record {lsn} lost or changed by a power loss"
        );
    }
}

#[test]
fn tasks_and_threads_wait_together() {
    let fs = FaultStorage::new();
    let wal = Arc::new(open(&fs));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let bytes = payload(100 + t, i);
                        (wal.append_with(1, &bytes, SyncPolicy::Always).unwrap(), bytes)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let (mut acknowledged, errors) = runtime().block_on(append_from_tasks(wal.clone(), 16, 25, SyncPolicy::Always));
    assert!(errors.is_empty(), "{errors:?}");
    for t in threads {
        acknowledged.extend(t.join().unwrap());
    }
    assert_eq!(acknowledged.len(), 4 * 50 + 16 * 25);
    drop(Arc::into_inner(wal).expect("everyone is done"));
    assert_eq!(
        records_after(&fs, CrashMode::DropUnsynced),
        acknowledged,
        "every acknowledged record, and nothing else"
    );
}

#[test]
fn a_power_loss_mid_run_keeps_every_acknowledged_record() {
    let mut crashed_runs = 0;
    for crash_after in [3u64, 17, 40, 80] {
        let fs = FaultStorage::new();
        let wal = Arc::new(open(&fs));
        fs.crash_after_mutations(fs.mutation_count() + crash_after);
        let (acknowledged, errors) = runtime().block_on(append_from_tasks(wal.clone(), 16, 30, SyncPolicy::Always));
        if fs.has_crashed() {
            crashed_runs += 1;
            assert!(!errors.is_empty(), "the crash after {crash_after} mutations failed no task");
        }
        drop(Arc::into_inner(wal).expect("the tasks are done"));
        let recovered = records_after(&fs, CrashMode::DropUnsynced);
        for (lsn, bytes) in &acknowledged {
            assert_eq!(
                recovered.get(lsn),
                Some(bytes),
                "crash after {crash_after}: acknowledged record {lsn} lost"
            );
        }
    }
    assert!(crashed_runs > 0, "no run reached its crash point");
}

#[test]
fn a_failed_fdatasync_fails_the_waiting_tasks_instead_of_hanging() {
    let fs = FaultStorage::new();
    let wal = Arc::new(open(&fs));
    fs.fail(Some(OpKind::Sync), 1, true, FaultKind::Io);
    let rt = runtime();
    let (acknowledged, errors) = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), append_from_tasks(wal.clone(), 8, 10, SyncPolicy::Always))
            .await
            .expect("tasks hung after a failed fdatasync")
    });
    assert!(
        acknowledged.is_empty(),
        "{} records acknowledged without a successful fdatasync",
        acknowledged.len()
    );
    assert_eq!(errors.len(), 8, "every task fails");
    for e in &errors {
        assert!(matches!(e, Error::Poisoned { .. } | Error::Io { .. }), "{e:?}");
    }
    // Later waits fail at once: the log stays stopped until reopened.
    let later = rt.block_on(async {
        match wal.submit(&[(1, b"later")]) {
            Ok(range) => wal.complete_async(*range.end(), SyncPolicy::Always).await,
            Err(e) => Err(e),
        }
    });
    assert!(matches!(later, Err(Error::Poisoned { .. })), "{later:?}");
}

#[test]
fn never_policy_is_ready_once_written() {
    let fs = FaultStorage::new();
    let wal = open(&fs);
    let written = *wal.submit(&[(1, b"written")]).unwrap().end();
    runtime().block_on(wal.complete_async(written, SyncPolicy::Never)).unwrap();
    assert!(wal.durable_lsn() < written, "Never does not sync");
    drop(wal);
    // The process dies but the machine does not: what was written (not synced) survives.
    assert_eq!(
        records_after(&fs, CrashMode::ProcessOnly).get(&written).map(Vec::as_slice),
        Some(&b"written"[..])
    );
}

#[test]
fn a_dropped_wait_leaves_the_record_in_the_log() {
    let fs = FaultStorage::new();
    let wal = open(&fs);
    let abandoned = *wal.submit(&[(1, b"abandoned")]).unwrap().end();
    // Dropped unpolled, then dropped after one poll (registered as a waiter, or already ready).
    drop(wal.complete_async(abandoned, SyncPolicy::Always));
    runtime().block_on(async {
        let mut completion = std::pin::pin!(wal.complete_async(abandoned, SyncPolicy::Always));
        let _ = poll_once(completion.as_mut()).await;
    });
    assert!(wal.sync().unwrap() >= abandoned);
    drop(wal);
    assert_eq!(
        records_after(&fs, CrashMode::DropUnsynced).get(&abandoned).map(Vec::as_slice),
        Some(&b"abandoned"[..])
    );
}

/// Polls a future once, returning its output if it was ready.
async fn poll_once<F: std::future::Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut future).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}
