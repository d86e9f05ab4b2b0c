//! Workload 1: durable one-memory transactions from 1, 4, 16 and 64 writers, every peer back to
//! back inside one round so that ratios computed within a round compare the same moment's disk.

use crate::measure::{drive, load_average, Timing};
use crate::peers::{self, OpenArgs};
use crate::workload::{memory, Variant, DIMENSION, TEXT_BYTES};
use std::path::Path;

pub const WRITERS: [usize; 4] = [1, 4, 16, 64];

/// Size of Engram's commit record for one memory of `variant`, read from the log's counter.
fn engram_record_bytes(dir: &Path, variant: Variant) -> Result<usize, String> {
    let args = OpenArgs {
        dir,
        variant,
        writers: 1,
        record_bytes: 0,
        postgres: None,
    };
    let engram = peers::Engram::open(&args)?;
    let before = engram.db.wal_stats().appended_bytes;
    engram
        .db
        .run(1, |t| t.insert_memory(peers::ENGRAM_NAMESPACE, memory(variant, 0, 0).into_engram()))
        .map_err(|e| e.to_string())?;
    Ok((engram.db.wal_stats().appended_bytes - before) as usize)
}

/// ENGRAM_BENCH_WRITERS=1,64 runs only those writer counts (for profiling).
fn writer_counts() -> Vec<usize> {
    match std::env::var("ENGRAM_BENCH_WRITERS") {
        Ok(list) => list.split(',').filter_map(|w| w.trim().parse().ok()).collect(),
        Err(_) => WRITERS.to_vec(),
    }
}

/// ENGRAM_BENCH_PEERS=engram,rocksdb runs only those peers (for profiling one of them).
fn selected(name: &str) -> bool {
    std::env::var("ENGRAM_BENCH_PEERS").map_or(true, |list| list.split(',').any(|p| p.trim() == name))
}

pub fn run(scratch: &Path, round: u32) -> Result<serde_json::Value, String> {
    let timing = Timing::from_env();
    let postgres = std::env::var("ENGRAM_BENCH_PG").ok();
    let round_dir = scratch.join(format!("commit-round-{round}"));
    let _ = std::fs::remove_dir_all(&round_dir);
    std::fs::create_dir_all(&round_dir).map_err(|e| format!("{}: {e}", round_dir.display()))?;
    let load_before = load_average();
    let mut record_bytes = serde_json::Map::new();
    let mut points = Vec::new();
    for variant in [Variant::Text, Variant::Vector] {
        let bytes = engram_record_bytes(&round_dir.join(format!("record-size-{}", variant.name())), variant)?;
        record_bytes.insert(variant.name().into(), bytes.into());
        for writers in writer_counts() {
            for kind in peers::ALL.into_iter().filter(|k| selected(k.name())) {
                let dir = round_dir.join(format!("{}-{}-{writers}", kind.name(), variant.name()));
                let args = OpenArgs {
                    dir: &dir,
                    variant,
                    writers,
                    record_bytes: bytes,
                    postgres: postgres.as_deref(),
                };
                let Some(peer) = peers::open(kind, &args).map_err(|e| format!("opening {}: {e}", kind.name()))? else {
                    continue;
                };
                peer.settle();
                let figures = drive(writers, timing, |w, seq| peer.commit(w, memory(variant, w, seq)));
                let owed = peer.owed_after_point();
                eprintln!(
                    "round {round} {:<6} {:>2} writers {:<15} {:>9.0} commits/s  p50 {:>8.1} us  p99 {:>9.1} us{}{}",
                    variant.name(),
                    writers,
                    kind.name(),
                    figures.per_second,
                    figures.p50_us,
                    figures.p99_us,
                    if figures.errors > 0 {
                        format!("  {} errors", figures.errors)
                    } else {
                        String::new()
                    },
                    owed.as_ref().map_or(String::new(), |o| format!("  owed: {o}"))
                );
                points.push(serde_json::json!({
                    "peer": kind.name(),
                    "variant": variant.name(),
                    "writers": writers,
                    "figures": figures,
                    "owed": owed,
                }));
                drop(peer);
            }
        }
    }
    let load_after = load_average();
    // Scratch files are removed only now: deleting them between points would issue discards
    // (the disk is mounted with `discard`) in the middle of the next peer's measurement.
    let _ = std::fs::remove_dir_all(&round_dir);
    let settings: serde_json::Map<String, serde_json::Value> =
        peers::ALL.iter().map(|k| (k.name().to_string(), k.settings().into())).collect();
    Ok(serde_json::json!({
        "workload": "commit",
        "round": round,
        "text_bytes": TEXT_BYTES,
        "dimension": DIMENSION,
        "record_bytes": record_bytes,
        "warm_up_ms": timing.warm_up.as_millis() as u64,
        "window_ms": timing.window.as_millis() as u64,
        "postgres": postgres.is_some(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "settings": settings,
        "points": points,
    }))
}
