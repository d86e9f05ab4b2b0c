//! Workload 2: how long Engram takes to open (1) after ~1 GB of log and no checkpoint, and (2)
//! after a checkpoint of that data plus ~100 MB of log. Each open runs in a fresh process (the
//! allocator of the building process would otherwise hand the reopened database warm pages),
//! first with the page cache as the build left it (after `sync`), then after dropping it.
//!
//! The database opens before its search index has taken in the replayed memories (searches scan
//! what the index has not reached, docs/search.md), so each open also reports how many index
//! changes it left queued and when the index had caught up with them, searches at full speed
//! again. The embeddings are the commit workload's clustered ones, each memory its own: 97
//! repeated vectors would make that catch-up look far cheaper than it is.
//!
//! ENGRAM_BENCH_RECOVERY_MB sets the log size (default 1000, quick 100); the tail after the
//! checkpoint is a tenth of it.

use crate::measure::{load_average, quick};
use crate::peers::ENGRAM_NAMESPACE;
use crate::workload::{memory, Variant, DIMENSION};
use engram_core::{CheckpointOptions, Database, DatabaseOptions, SyncPolicy};
use std::path::Path;
use std::time::{Duration, Instant};

const MEMORIES_PER_TRANSACTION: u64 = 64;

fn options() -> DatabaseOptions {
    DatabaseOptions {
        checkpoint: CheckpointOptions::on_demand(),
        ..Default::default()
    }
}

fn text_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Appends vector memories in `MEMORIES_PER_TRANSACTION`-memory transactions without syncing
/// until `log_bytes` more log bytes exist, then one durable commit makes all of it durable.
fn fill(db: &Database, first_seq: u64, log_bytes: u64) -> Result<u64, String> {
    let start = db.wal_stats().appended_bytes;
    let mut seq = first_seq;
    while db.wal_stats().appended_bytes - start < log_bytes {
        let mut txn = db.begin();
        txn.set_durability(SyncPolicy::Never);
        for _ in 0..MEMORIES_PER_TRANSACTION {
            txn.insert_memory(ENGRAM_NAMESPACE, memory(Variant::Vector, 0, seq).into_engram())
                .map_err(text_err)?;
            seq += 1;
        }
        txn.commit().map_err(text_err)?;
    }
    db.run(1, |t| {
        t.kv_put(ENGRAM_NAMESPACE, b"filled", engram_core::KvValue::Json(serde_json::json!(seq)))
    })
    .map_err(text_err)?;
    Ok(seq)
}

/// Size of the newest checkpoint file (names sort by LSN); the older one is kept as a fallback
/// and is not read at open.
fn newest_checkpoint_bytes(dir: &Path) -> u64 {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?.len())))
                .filter(|(name, _)| name.ends_with(".ckpt"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.last().map_or(0, |(_, bytes)| *bytes)
}

/// Opens `dir` in a fresh process and returns what it printed (one JSON object).
fn open_in_child(dir: &Path) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(text_err)?;
    let output = std::process::Command::new(exe)
        .arg("recovery-open")
        .arg(dir)
        .output()
        .map_err(text_err)?;
    if !output.status.success() {
        return Err(format!("the opening process failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("the opening process printed no JSON: {e}"))
}

/// The child side: open, report, exit.
pub fn open_child(args: &[String]) -> Result<(), String> {
    let dir = args.get(2).ok_or("recovery-open needs a directory")?;
    let started = Instant::now();
    let db = Database::open(dir, options()).map_err(text_err)?;
    let open_s = started.elapsed().as_secs_f64();
    let wal = db.recovery_report();
    let report = db.open_report();
    let index_queued_at_open = db.index_stats().queued_changes;
    db.wait_for_index(db.visible_lsn(), Duration::from_secs(3600)).map_err(text_err)?;
    let index_caught_up_s = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "open_s": open_s,
            "log_bytes_scanned": wal.bytes_scanned,
            "log_records": wal.records,
            "log_scan_s": wal.elapsed.as_secs_f64(),
            "replayed_records": report.replayed_records,
            "checkpoint_lsn": report.checkpoint_lsn,
            "index_queued_at_open": index_queued_at_open,
            "index_caught_up_s": index_caught_up_s,
        })
    );
    Ok(())
}

fn measure_opens(dir: &Path, case: &str) -> Result<Vec<serde_json::Value>, String> {
    let flushed = std::process::Command::new("sync").status().is_ok_and(|s| s.success());
    if !flushed {
        return Err("`sync` failed".into());
    }
    let mut opens = Vec::new();
    for cache in ["warm", "cold"] {
        if cache == "cold" && std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_err() {
            eprintln!("recovery {case}: cannot drop the page cache (needs root); cold open skipped");
            continue;
        }
        let mut open = open_in_child(dir)?;
        eprintln!("recovery {case} {cache}: {open}");
        open["cache"] = cache.into();
        opens.push(open);
    }
    Ok(opens)
}

pub fn run(scratch: &Path) -> Result<serde_json::Value, String> {
    let default_mb = if quick() { 100 } else { 1000 };
    let log_mb: u64 = std::env::var("ENGRAM_BENCH_RECOVERY_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_mb);
    let log_bytes = log_mb * 1_000_000;
    let dir = scratch.join("recovery");
    let _ = std::fs::remove_dir_all(&dir);
    let load_before = load_average();

    let built = Instant::now();
    let memories = {
        let db = Database::open(&dir, options()).map_err(text_err)?;
        db.run(1, |t| t.declare_dimension(ENGRAM_NAMESPACE, DIMENSION)).map_err(text_err)?;
        fill(&db, 0, log_bytes)?
    };
    let build_s = built.elapsed().as_secs_f64();
    let log_only = measure_opens(&dir, "log only")?;

    let (checkpoint_bytes, tail_bytes) = {
        let db = Database::open(&dir, options()).map_err(text_err)?;
        // Without a checkpoint the open queued the whole store for the indexer; the checkpoint
        // writes its index file only once the indexes have reached it (otherwise a later one
        // does), and the case measures an open that finds one, as a server checkpointing
        // in the background would leave.
        db.wait_for_index(db.visible_lsn(), Duration::from_secs(3600)).map_err(text_err)?;
        // The log is truncated only below the older of the two retained checkpoints (the
        // fallback if the newer fails its checksum), so the steady state a restarted server
        // finds comes after two checkpoints: the first one's log prefix is gone.
        db.checkpoint().map_err(text_err)?;
        db.run(1, |t| {
            t.kv_put(ENGRAM_NAMESPACE, b"between", engram_core::KvValue::Json(serde_json::json!(true)))
        })
        .map_err(text_err)?;
        let second = db.checkpoint().map_err(text_err)?;
        eprintln!("recovery: second checkpoint removed {} log segments", second.log_segments_removed);
        if !second.index_file_written {
            return Err("the checkpoint's search index file was deferred".into());
        }
        let checkpoint_bytes = newest_checkpoint_bytes(&dir.join(engram_core::CHECKPOINT_DIR));
        let before = db.wal_stats().appended_bytes;
        fill(&db, memories, log_bytes / 10)?;
        (checkpoint_bytes, db.wal_stats().appended_bytes - before)
    };
    let with_checkpoint = measure_opens(&dir, "checkpoint + log")?;
    let load_after = load_average();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(serde_json::json!({
        "workload": "recovery",
        "settings": "engram-core, DatabaseOptions::default() with background checkpoints off; case 2 waits for the search index to take in the whole store (the log-only open queued it), takes two checkpoints (the log is truncated below the older of the two retained; the second writes its index file), then appends the tail; vector memories (300 B text, 384-dim f32 clustered embeddings, each memory its own, small metadata) in 64-memory transactions appended with SyncPolicy::Never (held to the indexer's pace by the default index queue bound), then one durable commit; `sync`; each open timed in a fresh process, warm (page cache as the build left it) then cold (echo 3 > /proc/sys/vm/drop_caches); after the open, the same process waits until the search index has taken in every replayed change (index caught up: the time from the start of the open)",
        "log_bytes_target": log_bytes,
        "memories": memories,
        "build_s": build_s,
        "log_only": log_only,
        "checkpoint_bytes": checkpoint_bytes,
        "tail_log_bytes": tail_bytes,
        "checkpoint_plus_log": with_checkpoint,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }))
}
