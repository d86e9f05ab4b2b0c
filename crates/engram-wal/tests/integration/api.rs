//! The public contract of the log, one property per test.

use engram_wal::storage::{CrashMode, FaultStorage};
use engram_wal::{Error, Record, SyncPolicy, Wal, WalOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Segments large enough that concurrent appenders rarely wait for a rotation.
fn many_appenders() -> WalOptions {
    WalOptions {
        segment_bytes: 1 << 20,
        max_record_bytes: 4096,
        ..Default::default()
    }
}

fn small() -> WalOptions {
    WalOptions {
        segment_bytes: 16 * 1024,
        max_record_bytes: 4 * 1024,
        background_preallocation: false,
        ..Default::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 700) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// Appends `payload` waiting only for the write (`never_sync`) or for durability, and checks what
/// a returning append owes: an `Always` append's record is durable the moment it returns.
fn append_checked(wal: &Wal, payload: &str, never_sync: bool) -> u64 {
    let policy = if never_sync { SyncPolicy::Never } else { SyncPolicy::Always };
    let lsn = wal.append_with(1, payload.as_bytes(), policy).unwrap();
    if policy == SyncPolicy::Always {
        assert!(wal.durable_lsn() >= lsn, "append {lsn} returned before it was durable");
    }
    lsn
}

fn read_all(wal: &Wal, from: u64) -> Vec<Record> {
    wal.reader(from).unwrap().map(|r| r.unwrap()).collect()
}

#[test]
fn appended_records_read_back_in_order_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), small()).unwrap();
        for i in 1..=200u64 {
            assert_eq!(wal.append((i % 255 + 1) as u8, &payload(i)).unwrap(), i);
        }
        assert!(wal.stats().segments > 3, "the workload must span several segments");
        assert_eq!(wal.durable_lsn(), 200);
    }
    let wal = Wal::open(dir.path(), small()).unwrap();
    let records = read_all(&wal, 1);
    assert_eq!(records.len(), 200);
    for (i, r) in records.iter().enumerate() {
        let lsn = i as u64 + 1;
        assert_eq!((r.lsn, r.kind, &r.payload), (lsn, (lsn % 255 + 1) as u8, &payload(lsn)));
    }
    assert_eq!(read_all(&wal, 150).first().map(|r| r.lsn), Some(150));
    assert_eq!(wal.append(1, b"after reopen").unwrap(), 201);
}

#[test]
fn concurrent_appenders_share_fsyncs_and_get_unique_dense_lsns() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), many_appenders()).unwrap();
    let mut lsns: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let wal = &wal;
                s.spawn(move || {
                    (0..50)
                        .map(|i| wal.append(1, format!("t{t} i{i}").as_bytes()).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    lsns.sort_unstable();
    assert_eq!(lsns, (1..=800).collect::<Vec<_>>());
    let stats = wal.stats();
    assert_eq!(stats.appends, 800);
    assert!(stats.syncs < 800, "group commit must share fsyncs: {stats:?}");
}

/// A thread blocked in an append is woken by whichever thread led the round that covered its
/// record, and leaves without looking at the log's state again: what it was told must already
/// hold. With appends that wait for durability mixed with appends that only wait to be written,
/// every `Always` append must find its record durable, and every append its record readable
/// once synced, the moment it returns.
/// Waiting threads sleep on the gate of the round expected to cover their records, and a round
/// wakes its gate's sleepers all at once (waiters.rs). A round cut short by `max_group_bytes`
/// (here: one small chunk per round) opens a gate whose sleepers it did not all reach: they must
/// wait again, never return early, and never sleep through the round that does reach them. With
/// appends that wait for durability or only for the write, and `sync` calls, from many threads:
/// every call returns, each only once what it asked for holds.
#[test]
fn appenders_woken_by_a_round_that_did_not_reach_them_wait_again_and_none_is_forgotten() {
    let options = WalOptions {
        max_group_bytes: 256,
        ..many_appenders()
    };
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), options).unwrap());
    let (threads, appends_per_thread) = (24u64, 150u64);
    let mut total = 0;
    // The rounds' timing decides whether a prediction misses; a few passes make one near certain.
    for pass in 0..5 {
        let (done, finished) = std::sync::mpsc::channel();
        let worker = {
            let wal = wal.clone();
            std::thread::spawn(move || {
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let wal = &wal;
                        s.spawn(move || {
                            for i in 0..appends_per_thread {
                                let lsn = append_checked(wal, &format!("p{pass} t{t} i{i}"), (t + i) % 4 == 0);
                                if i % 50 == 0 {
                                    let synced = wal.sync().unwrap();
                                    assert!(wal.durable_lsn() >= synced.max(lsn));
                                }
                            }
                        });
                    }
                });
                done.send(()).unwrap();
            })
        };
        finished
            .recv_timeout(Duration::from_secs(120))
            .expect("every appender returns: a sleeper on a round gate was never woken");
        worker.join().unwrap();
        total += threads * appends_per_thread;
        if wal.stats().gate_rewaits > 0 {
            break;
        }
    }
    wal.sync().unwrap();
    assert_eq!(read_all(&wal, 1).len() as u64, total);
    assert!(
        wal.stats().gate_rewaits > 0,
        "rounds of one small chunk each must wake some sleepers they did not reach: {:?}",
        wal.stats()
    );
}

#[test]
fn an_append_woken_by_another_threads_round_returns_only_once_its_policy_is_met() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), many_appenders()).unwrap();
    let (threads, appends_per_thread) = (32u64, 200u64);
    std::thread::scope(|s| {
        for t in 0..threads {
            let wal = &wal;
            s.spawn(move || {
                for i in 0..appends_per_thread {
                    let lsn = append_checked(wal, &format!("t{t} i{i}"), (t + i) % 3 == 0);
                    assert!(wal.last_lsn() >= lsn);
                }
            });
        }
    });
    wal.sync().unwrap();
    assert_eq!(read_all(&wal, 1).len() as u64, threads * appends_per_thread);
    assert!(wal.stats().syncs < threads * appends_per_thread, "group commit must share fsyncs");
}

#[test]
fn readers_see_only_durable_records() {
    let fs = FaultStorage::new();
    let wal = Wal::open_with_storage(Arc::new(fs), "/db", small()).unwrap();
    wal.append_with(1, b"durable", SyncPolicy::Always).unwrap();
    wal.append_with(1, b"written only", SyncPolicy::Never).unwrap();
    assert_eq!(wal.last_lsn(), 2);
    assert_eq!(wal.durable_lsn(), 1);
    assert_eq!(read_all(&wal, 1).len(), 1);
    wal.sync().unwrap();
    assert_eq!(read_all(&wal, 1).len(), 2);
}

#[test]
fn a_follower_wakes_for_new_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small()).unwrap();
    let mut follower = wal.reader(1).unwrap();
    assert_eq!(follower.next_blocking(Duration::from_millis(10)).unwrap(), None);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(30));
            wal.append(9, b"news").unwrap();
        });
        let r = follower
            .next_blocking(Duration::from_secs(10))
            .unwrap()
            .expect("woken by the append");
        assert_eq!((r.lsn, r.kind, r.payload.as_slice()), (1, 9, &b"news"[..]));
    });
}

#[test]
fn interval_policy_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(
        dir.path(),
        WalOptions {
            sync_policy: SyncPolicy::Interval { ms: 5 },
            ..small()
        },
    )
    .unwrap();
    let lsn = wal.append(1, b"soon durable").unwrap();
    let mut reader = wal.reader(1).unwrap();
    assert_eq!(reader.next_blocking(Duration::from_secs(10)).unwrap().map(|r| r.lsn), Some(lsn));
    assert_eq!(wal.durable_lsn(), lsn);
}

#[test]
fn unsynced_appends_may_be_lost_on_power_loss_but_synced_ones_survive() {
    let fs = FaultStorage::new();
    {
        let wal = Wal::open_with_storage(Arc::new(fs.clone()), "/db", small()).unwrap();
        for i in 1..=20 {
            wal.append(1, &payload(i)).unwrap();
        }
        for i in 21..=30 {
            wal.append_with(1, &payload(i), SyncPolicy::Never).unwrap();
        }
        fs.crash(CrashMode::DropUnsynced);
    }
    let wal = Wal::open_with_storage(Arc::new(fs), "/db", small()).unwrap();
    let records = read_all(&wal, 1);
    assert_eq!(records.len(), 20);
    assert_eq!(wal.append(1, b"next").unwrap(), 21);
}

#[test]
fn prefix_truncation_removes_whole_old_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small()).unwrap();
    for i in 1..=300 {
        wal.append(1, &payload(i)).unwrap();
    }
    let before = wal.stats().segments;
    let removed = wal.truncate_prefix(150).unwrap();
    assert!(removed > 0 && removed < before);
    let first = wal.first_lsn();
    assert!(first > 1 && first <= 150, "records from 150 on are kept (first = {first})");
    assert!(matches!(wal.reader(1), Err(Error::LsnOutOfRange { .. })));
    assert_eq!(read_all(&wal, 150).len(), 151);
    drop(wal);
    let wal = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(wal.first_lsn(), first);
    assert_eq!(read_all(&wal, first).last().map(|r| r.lsn), Some(300));
}

/// Segments retired by prefix truncation are prepared again (renamed, zero-filled, synced) for
/// later records instead of being deleted; a reader that still holds one keeps reading it. The
/// log reads back the same across reopen, which removes the retired files left unused.
#[test]
fn retired_segments_are_reused_for_new_records_and_never_pulled_from_under_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small()).unwrap();
    for i in 1..=300 {
        wal.append(1, &payload(i)).unwrap();
    }
    // A reader positioned in the first segment holds it across the truncation.
    let mut early_reader = wal.reader(1).unwrap();
    assert_eq!(early_reader.next().unwrap().unwrap().lsn, 1);
    let removed = wal.truncate_prefix(150).unwrap();
    assert!(removed >= 2, "the test needs several retired segments (got {removed})");
    let recycled = wal.stats().segments_recycled;
    assert!(
        recycled >= 1 && recycled < removed as u64,
        "the held segment is deleted, not reused ({recycled} of {removed})"
    );
    let rest: Vec<Record> = early_reader
        .take_while(|r| r.as_ref().is_ok_and(|r| r.lsn < 10))
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        rest.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        (2..10).map(payload).collect::<Vec<_>>()
    );
    for i in 301..=600 {
        wal.append(1, &payload(i)).unwrap();
    }
    let first = wal.first_lsn();
    let expect: Vec<Vec<u8>> = (first..=600).map(payload).collect();
    assert_eq!(read_all(&wal, first).into_iter().map(|r| r.payload).collect::<Vec<_>>(), expect);
    drop(wal);
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    };
    let wal = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(read_all(&wal, first).into_iter().map(|r| r.payload).collect::<Vec<_>>(), expect);
    assert!(leftovers().is_empty(), "retired files left after reopening: {:?}", leftovers());
}

#[test]
fn suffix_truncation_drops_later_records_durably() {
    for cut in [0u64, 1, 37, 120, 199, 200] {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path(), small()).unwrap();
            for i in 1..=200 {
                wal.append(1, &payload(i)).unwrap();
            }
            wal.truncate_suffix(cut).unwrap();
            assert_eq!(wal.last_lsn(), cut);
            assert_eq!(wal.append(2, b"replacement").unwrap(), cut + 1);
        }
        let wal = Wal::open(dir.path(), small()).unwrap();
        let records = read_all(&wal, 1);
        assert_eq!(records.len() as u64, cut + 1, "cut at {cut}");
        for r in &records[..cut as usize] {
            assert_eq!(r.payload, payload(r.lsn));
        }
        assert_eq!(records.last().unwrap().payload, b"replacement");
    }
}

#[test]
fn bad_input_gets_a_typed_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(Wal::open(&file, small()), Err(Error::NotADirectory { .. })));

    let wal = Wal::open(dir.path().join("log"), small()).unwrap();
    assert!(matches!(Wal::open(dir.path().join("log"), small()), Err(Error::Locked { .. })));
    assert!(matches!(wal.append(1, &vec![0; 4097]), Err(Error::RecordTooLarge { .. })));
    assert!(matches!(wal.append(0, b"x"), Err(Error::ReservedKind)));
    assert_eq!(wal.last_lsn(), 0, "rejected appends consume no LSN");
    assert!(matches!(
        Wal::open(
            dir.path().join("other"),
            WalOptions {
                segment_bytes: 1000,
                ..small()
            }
        ),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn another_format_version_is_refused_without_modification() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), small()).unwrap();
        wal.append(1, b"v1").unwrap();
    }
    let seg = first_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8] = 9;
    std::fs::write(&seg, &bytes).unwrap();
    let listing = |p: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let before = listing(dir.path());
    assert!(matches!(
        Wal::open(dir.path(), small()),
        Err(Error::UnsupportedVersion { found: 9, .. })
    ));
    assert_eq!(listing(dir.path()), before);
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

fn first_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.remove(0)
}

#[test]
fn a_reader_outliving_its_log_does_not_hold_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small()).unwrap();
    wal.append(1, b"kept").unwrap();
    let mut reader = wal.reader(1).unwrap();
    drop(wal);
    let reopened = Wal::open(dir.path(), small()).expect("the lock goes with the Wal, not its readers");
    assert_eq!(reader.next_record().unwrap().unwrap().payload, b"kept");
    assert_eq!(reopened.last_lsn(), 1);
}

#[test]
fn submit_assigns_lsns_in_call_order_and_complete_waits_for_durability() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small()).unwrap();
    let first = wal.submit(&[(1, b"a"), (1, b"b")]).unwrap();
    let second = wal.submit(&[(2, b"c")]).unwrap();
    assert_eq!((first, second), (1..=2, 3..=3));
    assert_eq!(wal.durable_lsn(), 0, "submitted is not yet durable");
    wal.complete(3, SyncPolicy::Always).unwrap();
    assert_eq!(wal.durable_lsn(), 3);
    let payloads: Vec<Vec<u8>> = read_all(&wal, 1).into_iter().map(|r| r.payload).collect();
    assert_eq!(payloads, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

#[test]
fn a_follower_may_wait_without_a_deadline_and_iteration_ends_after_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small()).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            wal.append(1, b"x").unwrap();
        });
        let mut follower = wal.reader(1).unwrap();
        assert_eq!(follower.next_blocking(Duration::MAX).unwrap().map(|r| r.lsn), Some(1));
    });
}

#[test]
fn regression_a_prepared_segment_whose_name_was_never_synced_is_made_durable_before_use() {
    // A process died between renaming a prepared segment and syncing the directory: the name is
    // visible but not durable. Recovery adopts the segment; records acknowledged in it must
    // survive a later power loss.
    use engram_wal::storage::{OpenMode, Storage};
    let fs = FaultStorage::new();
    let opts = small();
    {
        let wal = Wal::open_with_storage(Arc::new(fs.clone()), "/db", opts.clone()).unwrap();
        wal.append(1, b"first").unwrap();
    }
    let name = std::path::Path::new("/db").join(engram_wal::layout::segment_file_name(2));
    let f = fs.open(&name, OpenMode::CreateNew).unwrap();
    f.write_all_at(&vec![0u8; opts.segment_bytes as usize], 0).unwrap();
    f.sync_data().unwrap();
    fs.crash(CrashMode::ProcessOnly);
    let expected: Vec<Vec<u8>> = {
        let wal = Wal::open_with_storage(Arc::new(fs.clone()), "/db", opts.clone()).unwrap();
        let mut expected = vec![b"first".to_vec()];
        while wal.stats().rotations == 0 {
            let p = payload(expected.len() as u64 + 100);
            wal.append(1, &p).unwrap();
            expected.push(p);
        }
        expected
    };
    fs.crash(CrashMode::DropUnsynced);
    let wal = Wal::open_with_storage(Arc::new(fs), "/db", opts).unwrap();
    let got: Vec<Vec<u8>> = read_all(&wal, 1).into_iter().map(|r| r.payload).collect();
    assert_eq!(got, expected, "every acknowledged record, including those in the adopted segment");
}

/// The durable hook lets the layer above act on a group before its appenders wake (a database
/// applies the group there). It is called by whichever thread made records durable, with an
/// LSN that is durable by then, and it reaches the last durable LSN; it is set only once.
#[test]
fn the_durable_hook_sees_only_durable_lsns_and_reaches_the_last_one() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), small()).unwrap());
    let highest_seen = Arc::new(AtomicU64::new(0));
    let saw_non_durable = Arc::new(AtomicBool::new(false));
    let hook: engram_wal::DurableHook = {
        let (weak_wal, highest_seen, saw_non_durable) = (Arc::downgrade(&wal), highest_seen.clone(), saw_non_durable.clone());
        Box::new(move |lsn| {
            if let Some(wal) = weak_wal.upgrade() {
                if wal.durable_lsn() < lsn {
                    saw_non_durable.store(true, Ordering::SeqCst);
                }
            }
            highest_seen.fetch_max(lsn, Ordering::SeqCst);
        })
    };
    assert!(wal.set_durable_hook(hook).is_ok());
    assert!(wal.set_durable_hook(Box::new(|_| {})).is_err(), "a second hook is refused");
    std::thread::scope(|s| {
        for t in 0..8 {
            let wal = &wal;
            s.spawn(move || {
                for i in 0..50 {
                    wal.append(1, format!("t{t} i{i}").as_bytes()).unwrap();
                }
            });
        }
    });
    assert_eq!(highest_seen.load(Ordering::SeqCst), wal.durable_lsn());
    assert_eq!(wal.durable_lsn(), 400);
    assert!(!saw_non_durable.load(Ordering::SeqCst));
}

/// The hook is an optimisation for the layer above: if it panics, the round still wakes its
/// appenders and the log goes on.
#[test]
fn a_panicking_durable_hook_does_not_stop_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small()).unwrap();
    assert!(wal.set_durable_hook(Box::new(|_| panic!("a hook that fails"))).is_ok());
    std::thread::scope(|s| {
        for t in 0..4 {
            let wal = &wal;
            s.spawn(move || {
                for i in 0..25 {
                    wal.append(1, format!("t{t} i{i}").as_bytes()).unwrap();
                }
            });
        }
    });
    assert_eq!(wal.durable_lsn(), 100);
    assert_eq!(read_all(&wal, 1).len(), 100);
}

/// A caller that stops waiting for its record (a dropped `Completion`) can still ask for it to
/// become durable: with no appender leading a round, the syncer leads one.
#[test]
fn a_requested_sync_happens_without_anyone_waiting_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small()).unwrap();
    let lsn = wal.append_with(1, b"written, not synced", SyncPolicy::Never).unwrap();
    assert!(wal.durable_lsn() < lsn);
    wal.request_durable(lsn);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while wal.durable_lsn() < lsn {
        assert!(std::time::Instant::now() < deadline, "the requested sync never happened");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(read_all(&wal, 1).len(), 1);
    // Asking again, or for an LSN past the end, changes nothing.
    wal.request_durable(lsn);
    wal.request_durable(lsn + 100);
    assert_eq!(wal.durable_lsn(), lsn);
    assert_eq!(wal.append(1, b"next").unwrap(), lsn + 1);
}
