//! Retrieval figures: recall@10 and queries/s of the HNSW path at several ef values on one core,
//! build time (loading through commits with the background indexer, and rebuilding from the
//! store at open), memory per vector, the same figures for an exact scan; then index lag while
//! 64 writers each commit one memory at a time (durable) as fast as they can.
//!
//! `cargo bench -p engram-core --bench search` (100,000 x 384 cosine). A quick run:
//! `ENGRAM_BENCH_QUICK=1` (10,000 x 384). `ENGRAM_BENCH_SEARCH_VECTORS` sets the count.

/// The `engram` binary's allocator (docs/architecture.md, *Allocator*).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use engram_core::{
    CheckpointOptions, Database, DatabaseOptions, MemoryReads, Metric, NewMemory, SearchMode, SearchReads, SearchRequest, SyncPolicy,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const DIMENSION: usize = 384;
const QUERIES: usize = 500;
const LAG_WRITERS: usize = 64;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

/// Clustered data, as embeddings of related texts are: 256 centres, each point a centre plus
/// noise as large as the spread of the centres.
fn dataset(count: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..256).map(|_| (0..DIMENSION).map(|_| rng.unit()).collect()).collect();
    (0..count)
        .map(|_| {
            let c = &centres[(rng.next() % 256) as usize];
            c.iter().map(|x| x + rng.unit()).collect()
        })
        .collect()
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// The same kernel shape as the engine's (eight accumulators).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum()
}

/// Exact top 10 by a scan over normalised vectors: what the engine's exact path does.
fn exact_top10(data: &[Vec<f32>], query: &[f32]) -> Vec<usize> {
    let q = normalised(query);
    let mut scored: Vec<(f32, usize)> = data.iter().enumerate().map(|(i, v)| (dot(&q, v), i)).collect();
    scored.select_nth_unstable_by(9, |a, b| b.0.total_cmp(&a.0));
    scored.truncate(10);
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, i)| i).collect()
}

fn options() -> DatabaseOptions {
    DatabaseOptions {
        checkpoint: CheckpointOptions::on_demand(),
        ..DatabaseOptions::default()
    }
}

fn main() {
    let quick = std::env::var_os("ENGRAM_BENCH_QUICK").is_some();
    let count: usize = std::env::var("ENGRAM_BENCH_SEARCH_VECTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 10_000 } else { 100_000 });
    let dir = tempfile::tempdir().unwrap();
    let all = dataset(count + QUERIES, 7);
    let (data, queries) = all.split_at(count);
    println!("search benchmark: {count} x {DIMENSION} cosine, {QUERIES} queries, k = 10, one query thread");

    // Build through commits: 1,000 memories per unsynced transaction, indexed in the background.
    let db = Database::open(dir.path(), options()).unwrap();
    let mut txn = db.begin();
    txn.declare_vector_space("bench", DIMENSION, Metric::Cosine).unwrap();
    txn.commit().unwrap();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(count);
    let mut last = 0;
    for chunk in data.chunks(1000) {
        let mut txn = db.begin();
        txn.set_durability(SyncPolicy::Never);
        for v in chunk {
            let memory = NewMemory {
                text: String::new(),
                embedding: Some(v.clone()),
                metadata: serde_json::Value::Null,
            };
            ids.push(txn.insert_memory("bench", memory).unwrap());
        }
        last = txn.commit().unwrap().lsn;
    }
    let committed = started.elapsed();
    db.wait_for_index(last, Duration::from_secs(3600)).unwrap();
    let indexed = started.elapsed();
    let stats = db.index_stats();
    println!(
        "build: commits {:.1} s, indexed {:.1} s after the first commit ({:.0} vectors/s)",
        committed.as_secs_f64(),
        indexed.as_secs_f64(),
        count as f64 / indexed.as_secs_f64()
    );
    println!(
        "index memory: {:.0} bytes per vector ({} vectors, {:.1} MiB; raw f32 vector is {} bytes)",
        stats.heap_bytes as f64 / stats.vectors as f64,
        stats.vectors,
        stats.heap_bytes as f64 / (1 << 20) as f64,
        DIMENSION * 4
    );

    // Exact scan: ground truth and its speed.
    let prepared: Vec<Vec<f32>> = data.iter().map(|v| normalised(v)).collect();
    let started = Instant::now();
    let truth: Vec<Vec<usize>> = queries.iter().map(|q| exact_top10(&prepared, q)).collect();
    println!(
        "exact scan: recall@10 1.000, {:.1} queries/s, build 0 s, {} bytes per vector",
        QUERIES as f64 / started.elapsed().as_secs_f64(),
        DIMENSION * 4
    );

    search_rows(&db, queries, &truth, &ids, "");

    // A checkpoint writes the index file; open loads it. Without it, open rebuilds.
    let started = Instant::now();
    let report = db.checkpoint().unwrap();
    let index_dir = dir.path().join(engram_core::SEARCH_INDEX_DIR);
    let index_bytes: u64 = std::fs::read_dir(&index_dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "checkpoint: {:.1} s; checkpoint file {:.1} MiB, index file {:.1} MiB",
        started.elapsed().as_secs_f64(),
        report.file_bytes as f64 / (1 << 20) as f64,
        index_bytes as f64 / (1 << 20) as f64
    );
    drop(db);
    let started = Instant::now();
    let db = Database::open(dir.path(), options()).unwrap();
    println!(
        "reopen from the checkpoint, index loaded ({:?}): {:.1} s",
        db.index_stats().origin,
        started.elapsed().as_secs_f64()
    );
    // The same searches once the embeddings are read in place from the mapped checkpoint file
    // rather than from the heap.
    let mapped = db
        .snapshot()
        .list_memories("bench")
        .unwrap()
        .iter()
        .filter(|m| m.embedding.as_ref().is_some_and(|e| e.is_mapped()))
        .count();
    println!("after the reopen, {mapped} of {count} embeddings are read in place from the checkpoint file:");
    search_rows(&db, queries, &truth, &ids, " (reopened)");
    drop(db);
    std::fs::remove_dir_all(&index_dir).unwrap();
    let started = Instant::now();
    let db = Database::open(dir.path(), options()).unwrap();
    println!(
        "reopen from the checkpoint without the index file (rebuild from the store): {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Index lag under 64 durable writers, one memory per commit.
    let per_writer: u64 = if quick { 20 } else { 100 };
    let stop = AtomicBool::new(false);
    let max_lag = AtomicU64::new(0);
    let max_queued = AtomicU64::new(0);
    let mut lag_samples: Vec<u64> = Vec::new();
    let mut visible_delays: Vec<(Duration, Duration, bool)> = Vec::new();
    let started = Instant::now();
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let stats = db.index_stats();
                samples.push(stats.lag_lsns);
                max_lag.fetch_max(stats.lag_lsns, Ordering::Relaxed);
                max_queued.fetch_max(stats.queued_batches as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
            samples
        });
        let writers: Vec<_> = (0..LAG_WRITERS)
            .map(|w| {
                let db = &db;
                let queries = &queries;
                s.spawn(move || {
                    let mut delays = Vec::new();
                    for i in 0..per_writer {
                        let mut v = queries[(w * 7 + i as usize) % queries.len()].clone();
                        if w == 0 {
                            // Writer 0's vectors are its own (the others reuse query vectors),
                            // so its memory must be the top hit of a search for that vector.
                            v[0] += 0.5;
                        }
                        let (id, info) = db
                            .run(100, |txn| {
                                let memory = NewMemory {
                                    text: format!("writer {w} note {i}"),
                                    embedding: Some(v.clone()),
                                    metadata: serde_json::json!({"writer": w}),
                                };
                                txn.insert_memory("bench", memory)
                            })
                            .unwrap();
                        // Writer 0 searches for its memory right after the acknowledgement
                        // (no wait: found in the index or its queued tail), then measures how
                        // long the indexer takes to hold it.
                        if w == 0 {
                            let acked = Instant::now();
                            let hits = db.snapshot().search(&vector_request(&v, 1, None)).unwrap();
                            let searched = acked.elapsed();
                            // Exact while in the tail; once indexed the graph is approximate
                            // (recall below 1), so this is counted, not asserted.
                            let found = hits.first().is_some_and(|h| h.memory.id == id);
                            db.wait_for_index(info.lsn, Duration::from_secs(60)).unwrap();
                            delays.push((searched, acked.elapsed(), found));
                        }
                    }
                    delays
                })
            })
            .collect();
        for w in writers {
            visible_delays.extend(w.join().unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        lag_samples = sampler.join().unwrap();
    });
    let elapsed = started.elapsed();
    lag_samples.sort_unstable();
    let found_own = visible_delays.iter().filter(|d| d.2).count();
    let mut search_after_ack: Vec<Duration> = visible_delays.iter().map(|d| d.0).collect();
    let mut indexed_after_ack: Vec<Duration> = visible_delays.iter().map(|d| d.1).collect();
    search_after_ack.sort_unstable();
    indexed_after_ack.sort_unstable();
    let pct = |v: &[u64], q: f64| v.get(((v.len().max(1) - 1) as f64 * q) as usize).copied().unwrap_or(0);
    let pct_us = |v: &[Duration], q: f64| {
        v.get(((v.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    let commits = LAG_WRITERS as u64 * per_writer;
    println!(
        "lag: {LAG_WRITERS} writers x {per_writer} durable commits: {:.0} commits/s; index lag (LSNs, sampled every ms) p50 {} p99 {} max {}; queued batches max {}",
        commits as f64 / elapsed.as_secs_f64(),
        pct(&lag_samples, 0.5),
        pct(&lag_samples, 0.99),
        max_lag.load(Ordering::Relaxed),
        max_queued.load(Ordering::Relaxed),
    );
    println!(
        "writer 0: search (k 1) for its own memory right after the ack, no wait: top hit {} of {} times, p50 {:.0} us p99 {:.0} us; ack -> in the index itself p50 {:.0} us p99 {:.0} us",
        found_own,
        visible_delays.len(),
        pct_us(&search_after_ack, 0.5),
        pct_us(&search_after_ack, 0.99),
        pct_us(&indexed_after_ack, 0.5),
        pct_us(&indexed_after_ack, 0.99)
    );
    let stats = db.index_stats();
    println!(
        "after the writers: indexed LSN {} of visible {}; commits that waited for the indexer (more than {} changes queued): {}",
        stats.indexed_lsn,
        stats.visible_lsn,
        engram_core::MAX_QUEUED_INDEX_CHANGES,
        stats.throttled_commits
    );

    // Searches while the indexer trails by a given tail (paused with the test hook): the tail is
    // scanned exactly and merged, so the cost of a search grows with it.
    let tails = if quick {
        vec![1_000usize, 10_000]
    } else {
        vec![1_000usize, 10_000, 50_000]
    };
    let extra = dataset(tails.iter().sum(), 99);
    let mut offset = 0;
    for tail in tails {
        db.pause_indexer(true);
        // One memory per commit, as agents write them: the tail is then one queued batch per
        // memory, and a search pays for walking the batches as well as for the vectors.
        for v in &extra[offset..offset + tail] {
            let mut txn = db.begin();
            txn.set_durability(SyncPolicy::Never);
            let memory = NewMemory {
                text: String::new(),
                embedding: Some(v.clone()),
                metadata: serde_json::Value::Null,
            };
            txn.insert_memory("bench", memory).unwrap();
            txn.commit().unwrap();
        }
        offset += tail;
        let snapshot = db.snapshot();
        let queued = db.index_stats().queued_changes;
        let started = Instant::now();
        for q in queries.iter().take(200) {
            assert_eq!(snapshot.search(&vector_request(q, 10, Some(128))).unwrap().len(), 10);
        }
        let elapsed = started.elapsed();
        println!(
            "search with {queued} changes not yet indexed (indexer paused), ef 128: {:.0} queries/s, mean {:.0} us",
            200.0 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / 200.0
        );
        drop(snapshot);
        db.pause_indexer(false);
        db.wait_for_index(db.visible_lsn(), Duration::from_secs(3600)).unwrap();
    }
}

/// One row per search width: recall@10 against `truth` and queries/s, on one thread.
fn search_rows(db: &Database, queries: &[Vec<f32>], truth: &[Vec<usize>], ids: &[String], label: &str) {
    let snapshot = db.snapshot();
    for ef in [16, 32, 64, 128, 256] {
        let started = Instant::now();
        let mut found = 0;
        for (q, expected) in queries.iter().zip(truth) {
            let hits = snapshot.search(&vector_request(q, 10, Some(ef))).unwrap();
            found += hits.iter().filter(|h| expected.iter().any(|&i| ids[i] == h.memory.id)).count();
        }
        let elapsed = started.elapsed();
        println!(
            "hnsw ef {ef:>3}{label}: recall@10 {:.4}, {:.0} queries/s, mean {:.0} us",
            found as f64 / (10 * QUERIES) as f64,
            QUERIES as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / QUERIES as f64
        );
    }
    drop(snapshot);
}

/// A vector search of the bench's namespace for `vector`: `k` hits at search width `ef`.
fn vector_request(vector: &[f32], k: usize, ef: Option<usize>) -> SearchRequest {
    SearchRequest {
        namespace: "bench".into(),
        text: None,
        vector: Some(vector.to_vec()),
        k,
        mode: SearchMode::Vector,
        filter: None,
        ef_search: ef,
    }
}
