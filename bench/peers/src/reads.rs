//! Workload 4 (Engram only; no peer runs it): get-by-id throughput from 2 reader threads while
//! 64 writers commit durable one-memory transactions, without and with checkpoints running.

use crate::measure::{drive, load_average, quick, Timing};
use crate::peers::{Engram, Peer, ENGRAM_NAMESPACE};
use crate::workload::{memory, Variant};
use engram_core::{CheckpointOptions, Database, DatabaseOptions, MemoryReads, SyncPolicy};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WRITERS: usize = 64;
const READERS: usize = 2;
const PRELOADED: u64 = 10_000;

fn text_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn case(scratch: &Path, with_checkpoints: bool, timing: Timing) -> Result<serde_json::Value, String> {
    let dir = scratch.join(format!("reads-{with_checkpoints}"));
    let _ = std::fs::remove_dir_all(&dir);
    let options = DatabaseOptions {
        // Checkpoints are driven explicitly below (back to back) in the "with" case; never
        // by the background triggers, so the "without" case really has none.
        checkpoint: CheckpointOptions::on_demand(),
        ..Default::default()
    };
    let db = Database::open(&dir, options).map_err(text_err)?;
    db.run(1, |t| t.declare_dimension(ENGRAM_NAMESPACE, crate::workload::DIMENSION))
        .map_err(text_err)?;
    let mut ids = Vec::with_capacity(PRELOADED as usize);
    for chunk in 0..PRELOADED / 500 {
        let mut txn = db.begin();
        txn.set_durability(SyncPolicy::Always);
        for i in 0..500 {
            ids.push(
                txn.insert_memory(ENGRAM_NAMESPACE, memory(Variant::Vector, 999, chunk * 500 + i).into_engram())
                    .map_err(text_err)?,
            );
        }
        txn.commit().map_err(text_err)?;
    }
    let engram = Engram { db };
    engram.settle();
    let reads = AtomicU64::new(0);
    let misses = AtomicU64::new(0);
    let checkpoints = AtomicU64::new(0);
    let checkpoint_time_us = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (writes, read_span) = std::thread::scope(|s| {
        for r in 0..READERS {
            let (db, ids, reads, misses, stop) = (&engram.db, &ids, &reads, &misses, &stop);
            // Named, so that a profile can tell the readers' CPU from the writers'.
            let reader = std::thread::Builder::new().name("reader".into());
            reader
                .spawn_scoped(s, move || {
                    let mut i = r * 7919;
                    let (mut local, mut missed) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let snapshot = db.snapshot();
                        for _ in 0..100 {
                            i = (i + 104_729) % ids.len();
                            match snapshot.get_memory(ENGRAM_NAMESPACE, &ids[i]) {
                                Ok(Some(_)) => local += 1,
                                _ => missed += 1,
                            }
                        }
                    }
                    reads.fetch_add(local, Ordering::Relaxed);
                    misses.fetch_add(missed, Ordering::Relaxed);
                })
                .expect("spawn a reader thread");
        }
        if with_checkpoints {
            let (db, stop, checkpoints, checkpoint_time_us) = (&engram.db, &stop, &checkpoints, &checkpoint_time_us);
            let checkpointer = std::thread::Builder::new().name("checkpoint-loop".into());
            checkpointer
                .spawn_scoped(s, move || {
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        if db.checkpoint().is_ok() {
                            checkpoints.fetch_add(1, Ordering::Relaxed);
                            checkpoint_time_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                        }
                    }
                })
                .expect("spawn the checkpoint thread");
        }
        let figures = drive(WRITERS, timing, |w, seq| engram.commit(w, memory(Variant::Vector, w, seq)));
        stop.store(true, Ordering::Relaxed);
        // Timed here, not after the scope: the scope then waits for the checkpoint under way,
        // which may wait up to SEARCH_INDEX_WAIT for the indexer, with no reader running.
        (figures, started.elapsed())
    });
    // Readers run through the writers' warm-up as well; their rate is over that whole span.
    let reads_per_second = reads.load(Ordering::Relaxed) as f64 / read_span.as_secs_f64();
    let done = checkpoints.load(Ordering::Relaxed);
    drop(engram);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "reads while writing (checkpoints {}): {:.0} reads/s, {:.0} commits/s, {} checkpoints",
        if with_checkpoints { "running" } else { "off" },
        reads_per_second,
        writes.per_second,
        done
    );
    Ok(serde_json::json!({
        "checkpoints_running": with_checkpoints,
        "reads_per_second": reads_per_second,
        "read_misses": misses.load(Ordering::Relaxed),
        "writes": writes,
        "checkpoints_completed": done,
        "checkpoint_mean_ms": if done > 0 { checkpoint_time_us.load(Ordering::Relaxed) as f64 / done as f64 / 1000.0 } else { f64::NAN },
    }))
}

pub fn run(scratch: &Path) -> Result<serde_json::Value, String> {
    let timing = if quick() {
        Timing {
            warm_up: Duration::from_millis(200),
            window: Duration::from_secs(1),
        }
    } else {
        Timing {
            warm_up: Duration::from_millis(500),
            window: Duration::from_secs(4),
        }
    };
    let rounds = if quick() { 1 } else { 2 };
    let load_before = load_average();
    let mut cases = Vec::new();
    for _ in 0..rounds {
        for with_checkpoints in [false, true] {
            cases.push(case(scratch, with_checkpoints, timing)?);
        }
    }
    Ok(serde_json::json!({
        "workload": "reads",
        "settings": format!("engram-core only (no peer runs this workload): DatabaseOptions::default() with background checkpoints off; {PRELOADED} vector memories preloaded; {READERS} reader threads each take a snapshot and get_memory 100 known ids per snapshot; {WRITERS} writers commit one vector memory per durable transaction; 'with checkpoints': one more thread calls Database::checkpoint() back to back for the whole span"),
        "window_ms": timing.window.as_millis() as u64,
        "cases": cases,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }))
}
