//! Open time and memory use of a large database: N memories (300 B text, 384-dim embedding)
//! in a checkpoint, plus about 100 MB of log after it.
//!
//! `cargo bench -p engram-core --bench open` (ENGRAM_BENCH_MEMORIES=N, default 1,000,000).

/// The `engram` binary's allocator (docs/architecture.md, *Allocator*).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use engram_core::{CheckpointOptions, Database, DatabaseOptions, NewMemory, SyncPolicy};
use std::time::Instant;

const DIMENSION: usize = 384;
const TEXT_BYTES: usize = 300;
const MEMORIES_PER_TRANSACTION: usize = 500;
const LOG_TAIL_BYTES: u64 = 100 * 1000 * 1000;

fn memory(i: usize) -> NewMemory {
    let mut text = format!("memory {i}: ");
    while text.len() < TEXT_BYTES {
        text.push_str("an observation the agent made about the world. ");
    }
    text.truncate(TEXT_BYTES);
    let embedding = (0..DIMENSION).map(|d| ((d * 31 + i) % 97) as f32 / 97.0).collect();
    NewMemory {
        text,
        embedding: Some(embedding),
        metadata: serde_json::json!({"i": i}),
    }
}

/// A field of this process's /proc/self/status in bytes (Linux): `VmRSS` (resident set),
/// `RssAnon` (heap and other anonymous memory), `RssFile` (mapped file pages resident), `VmHWM`
/// (the resident set's peak).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Returns the allocators' free memory to the system: mimalloc's (this process's Rust heap) and
/// glibc's (what C code allocated).
fn release_free_memory() {
    // SAFETY: mi_collect only frees what mimalloc holds unused; malloc_trim only releases free
    // heap memory.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        libc::malloc_trim(0);
    }
}

/// User + system CPU time of this process so far, every thread (a steadier measure of the
/// open's work than its wall time on a shared machine).
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn rss_bytes() -> u64 {
    status_bytes("VmRSS")
}

fn insert(db: &Database, from: usize, count: usize) {
    for chunk_start in (from..from + count).step_by(MEMORIES_PER_TRANSACTION) {
        let end = (chunk_start + MEMORIES_PER_TRANSACTION).min(from + count);
        let mut txn = db.begin();
        txn.set_durability(SyncPolicy::Never);
        for i in chunk_start..end {
            txn.insert_memory("bench", memory(i)).unwrap();
        }
        txn.commit().unwrap();
    }
}

fn main() {
    let memories: usize = std::env::var("ENGRAM_BENCH_MEMORIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let options = || DatabaseOptions {
        checkpoint: CheckpointOptions::on_demand(),
        ..Default::default()
    };
    if let Some(dir) = std::env::var_os(OPEN_DIR_VAR) {
        return measure_open(std::path::Path::new(&dir), memories, options());
    }
    // ENGRAM_BENCH_KEEP_DIR=path builds there and keeps it (to profile the open on its own).
    let kept = std::env::var_os("ENGRAM_BENCH_KEEP_DIR").map(std::path::PathBuf::from);
    let scratch = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
    let dir = kept.as_deref().unwrap_or(scratch.path());
    let tail_memories = (LOG_TAIL_BYTES / 2_000) as usize;
    let build = Instant::now();
    {
        let db = Database::open(dir, options()).unwrap();
        db.run(1, |t| t.declare_dimension("bench", DIMENSION)).unwrap();
        insert(&db, 0, memories - tail_memories.min(memories));
        db.checkpoint().unwrap();
        let before_tail = db.wal_stats().appended_bytes;
        insert(&db, memories - tail_memories.min(memories), tail_memories.min(memories));
        db.run(1, |t| {
            t.kv_put("bench", b"sync", engram_core::KvValue::Json(serde_json::json!(true)))
        })
        .unwrap();
        println!(
            "built {memories} memories in {:.1} s; log after the checkpoint: {:.0} MB",
            build.elapsed().as_secs_f64(),
            (db.wal_stats().appended_bytes - before_tail) as f64 / 1e6
        );
    }
    // The dropped database's heap, kept by the allocator, is returned to the system first: the
    // measuring process should not share the machine with gigabytes of this one's free lists
    // (and the open must not reuse pages already resident, which RSS growth would not count).
    release_free_memory();
    println!("builder's RSS before measuring: {:.0} MB", rss_bytes() as f64 / 1e6);
    // The build leaves gigabytes of dirty pages; an open racing their writeback measured 3x
    // slower. Flush first, as a restarted process would find the disk.
    let flushed = std::process::Command::new("sync").status().is_ok_and(|s| s.success());
    println!("flushed the build to disk first: {flushed}");
    for cache in ["warm", "cold"] {
        if cache == "cold" && std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_err() {
            println!("cold: cannot drop the page cache (needs root); skipped");
            continue;
        }
        print!("{cache} page cache: ");
        std::io::Write::flush(&mut std::io::stdout()).unwrap();
        // Measured in a fresh process: in this one, the allocator keeps the pages of the
        // database just dropped, and the reopened one would reuse them unseen.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .env(OPEN_DIR_VAR, dir)
            .env("ENGRAM_BENCH_MEMORIES", memories.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "the measuring process failed");
    }
}

const OPEN_DIR_VAR: &str = "ENGRAM_BENCH_OPEN_DIR";

fn measure_open(dir: &std::path::Path, memories: usize, options: DatabaseOptions) {
    let raw_bytes = memories as u64 * (TEXT_BYTES + DIMENSION * 4) as u64;
    let rss_before = rss_bytes();
    let (anon_before, file_before) = (status_bytes("RssAnon"), status_bytes("RssFile"));
    let started = Instant::now();
    let db = Database::open(dir, options).unwrap();
    let open_s = started.elapsed().as_secs_f64();
    let open_cpu_s = process_cpu_seconds();
    // The replayed log's index changes are queued for the indexer thread: memory is measured
    // once it has caught up, so that the index's share is all there.
    db.wait_for_index(db.visible_lsn(), std::time::Duration::from_secs(600)).unwrap();
    let indexed_s = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let report = db.open_report();
    let grown = rss_after.saturating_sub(rss_before);
    println!(
        "open: {open_s:.2} s (checkpoint at LSN {:?}, {} log records replayed); search index caught up with the replayed log at {indexed_s:.2} s",
        report.checkpoint_lsn, report.replayed_records
    );
    println!(
        "open phases: log recovery {:.2} s, checkpoint {:.2} s, search index {:.2} s, log replay {:.2} s; CPU {open_cpu_s:.2} s (all threads)",
        report.log_recovery_us as f64 / 1e6,
        report.checkpoint_load_us as f64 / 1e6,
        report.index_load_us as f64 / 1e6,
        report.replay_us as f64 / 1e6
    );
    println!(
        "memory: RSS grew by {:.0} MB for {:.0} MB of raw text + vectors = {:.2}x (target <= 1.5x: {}); open target < 10 s: {}",
        grown as f64 / 1e6,
        raw_bytes as f64 / 1e6,
        grown as f64 / raw_bytes as f64,
        if (grown as f64) <= 1.5 * raw_bytes as f64 {
            "met"
        } else {
            "NOT met"
        },
        if open_s < 10.0 { "met" } else { "NOT met" }
    );
    // Embeddings read in place from the mapped checkpoint count as file pages once touched;
    // the kernel can drop those under memory pressure, unlike the heap.
    let mb = |bytes: u64| bytes as f64 / 1e6;
    println!(
        "of the growth: anonymous (heap) {:.0} MB = {:.2}x raw; mapped file pages resident {:.0} MB",
        mb(status_bytes("RssAnon").saturating_sub(anon_before)),
        status_bytes("RssAnon").saturating_sub(anon_before) as f64 / raw_bytes as f64,
        mb(status_bytes("RssFile").saturating_sub(file_before))
    );
    // The peak: heap the open frees before it returns, and the mapped embeddings the index
    // load reads (released as it goes); a fresh process, so its high-water mark is this open's.
    println!(
        "peak RSS of the process during the open: {:.0} MB above the baseline = {:.2}x raw",
        mb(status_bytes("VmHWM").saturating_sub(rss_before)),
        status_bytes("VmHWM").saturating_sub(rss_before) as f64 / raw_bytes as f64
    );
    // Heap freed during open (the checkpoint's buffers, decoded log records) that the
    // allocator kept rather than returning to the system counts in RSS too: shown separately.
    {
        release_free_memory();
        let trimmed = rss_bytes().saturating_sub(rss_before);
        println!(
            "after returning free memory to the system: RSS grown by {:.0} MB = {:.2}x the raw size",
            trimmed as f64 / 1e6,
            trimmed as f64 / raw_bytes as f64
        );
    }
    // The search index holds every vector's int8 codes, the graph links and the keyword postings.
    let index = db.index_stats();
    println!(
        "of which the search index: {:.0} MB ({} vectors, {:.0} B each; origin {:?}); the rest (store, allocator): {:.0} MB = {:.2}x the raw size",
        index.heap_bytes as f64 / 1e6,
        index.vectors,
        index.heap_bytes as f64 / index.vectors.max(1) as f64,
        index.origin,
        grown.saturating_sub(index.heap_bytes as u64) as f64 / 1e6,
        grown.saturating_sub(index.heap_bytes as u64) as f64 / raw_bytes as f64
    );
}
