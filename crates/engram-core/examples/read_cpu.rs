//! Get-by-id throughput (`get_memory_ref`, the read the commit bench measures for issue 3's 1M
//! reads/s target), alone and while writers commit, on a database of `memories` one-memory
//! records. A quicker loop than the commit bench for deciding whether a change to the read path
//! helps: it builds its database once, then alternates the two measurements `rounds` times.
//!
//! ```text
//! cargo run --release -p engram-core --example read_cpu -- [memories=200000] [seconds=3] [rounds=2] [readers=2] [writers=64] [read_ids=all]
//! ```
//!
//! Each round measures three spans: readers alone, while the writers commit, and while the
//! writers commit and one more thread runs checkpoints back to back (as the peer suite's reads
//! workload does). Each span also prints the commits/s, the log's syncs, and the search
//! indexer's queue at its end. The spans share one database, so the third starts with the
//! indexing the second left owed: when that queue reaches its bound, the third span's commits
//! wait for the indexer, whatever the checkpoints do (read the queue and the waited commits
//! before blaming a checkpoint).
//!
//! `read_ids` limits the reads to the first so many ids (the commit bench reads its first
//! 10,000), whose B-tree paths then mostly stay in the CPU's caches.
//!
//! The loaded memories have no embedding (loading stays quick, and a get-by-id does not look at
//! the value); the writers' memories have one, as in the commit bench, so the search indexer runs
//! while they commit. Runs in a temporary directory under the current one.

/// The `engram` binary's allocator (docs/architecture.md, *Allocator*).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use engram_core::{CheckpointOptions, Database, DatabaseOptions, MemoryReads, SyncPolicy};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "../benches/common/one_memory.rs"]
mod one_memory;

/// One span of `seconds`: `readers` threads each read 100 ids per snapshot (as the commit bench
/// does) while `writers` threads commit one-memory transactions and, with `checkpoints`, one
/// more thread runs checkpoints back to back.
fn measure_span(db: &Database, ids: &[String], (readers, writers): (usize, usize), checkpoints: bool, seconds: u64, round: u64) -> Span {
    let reads = AtomicU64::new(0);
    let commits = AtomicU64::new(0);
    let checkpoints_done = AtomicU64::new(0);
    let wal_before = db.wal_stats();
    let stop = AtomicBool::new(false);
    let elapsed = std::thread::scope(|s| {
        if checkpoints {
            let (stop, checkpoints_done) = (&stop, &checkpoints_done);
            std::thread::Builder::new()
                .name("checkpoint-loop".into())
                .spawn_scoped(s, move || {
                    while !stop.load(Ordering::Relaxed) {
                        db.checkpoint().expect("checkpoint");
                        checkpoints_done.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .expect("spawn the checkpoint loop");
        }
        for w in 0..writers {
            let (stop, commits) = (&stop, &commits);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    db.run(10, |t| {
                        t.insert_memory("bench", one_memory::memory(1000 + w, round << 32 | i, true))
                    })
                    .expect("commit");
                    i += 1;
                }
                commits.fetch_add(i, Ordering::Relaxed);
            });
        }
        let started = Instant::now();
        for r in 0..readers {
            let (reads, stop) = (&reads, &stop);
            let reader = std::thread::Builder::new().name("reader".into());
            reader
                .spawn_scoped(s, move || {
                    let mut i = r * 7919;
                    let mut local = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let snap = db.snapshot();
                        for _ in 0..100 {
                            i = (i + 104_729) % ids.len();
                            assert!(snap.get_memory_ref("bench", &ids[i]).expect("read").is_some());
                            local += 1;
                        }
                    }
                    reads.fetch_add(local, Ordering::Relaxed);
                })
                .expect("spawn a reader");
        }
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
        // The readers add their counts as they stop; the scope waits for them, and for the
        // checkpoint under way, which may wait up to SEARCH_INDEX_WAIT for the indexer with no
        // reader running: the span ends here.
        started.elapsed()
    });
    let index = db.index_stats();
    let wal = db.wal_stats();
    let syncs = wal.syncs - wal_before.syncs;
    let sync_us_total = wal.sync_latency_avg_us * wal.syncs as f64 - wal_before.sync_latency_avg_us * wal_before.syncs as f64;
    Span {
        syncs,
        sync_mean_us: if syncs > 0 { sync_us_total / syncs as f64 } else { 0.0 },
        reads_per_second: reads.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        commits_per_second: commits.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        checkpoints: checkpoints_done.load(Ordering::Relaxed),
        index_queued_changes: index.queued_changes,
        index_throttled_commits: index.throttled_commits,
    }
}

/// What one measured span saw. The index figures are read at its end: the queue still owed to
/// the search indexer, and the commits that have waited for it since the open (a commit waits
/// once the queue holds `DatabaseOptions::index_queue_bound` of embeddings).
struct Span {
    /// The log's fdatasync calls during the span, and their mean latency.
    syncs: u64,
    sync_mean_us: f64,
    reads_per_second: f64,
    commits_per_second: f64,
    checkpoints: u64,
    index_queued_changes: usize,
    index_throttled_commits: u64,
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} reads/s ({:.0} commits/s, {} log syncs of {:.0} µs on average, {} checkpoints; index queue {} changes, {} commits waited so far)",
            self.reads_per_second,
            self.commits_per_second,
            self.syncs,
            self.sync_mean_us,
            self.checkpoints,
            self.index_queued_changes,
            self.index_throttled_commits
        )
    }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("numeric arguments"));
    let memories = args.next().unwrap_or(200_000);
    let seconds = args.next().unwrap_or(3);
    let rounds = args.next().unwrap_or(2);
    let readers = args.next().unwrap_or(2) as usize;
    let writers = args.next().unwrap_or(64) as usize;
    let read_ids = args.next().unwrap_or(u64::MAX) as usize;

    let dir = tempfile::tempdir_in(".").expect("a temporary directory here");
    let options = DatabaseOptions {
        checkpoint: CheckpointOptions::on_demand(),
        ..DatabaseOptions::default()
    };
    let db = Database::open(dir.path(), options).expect("open the database");
    db.run(1, |t| t.declare_dimension("bench", one_memory::DIMENSION))
        .expect("declare the dimension");
    let built = Instant::now();
    for batch in 0..memories.div_ceil(1000) {
        db.run(1, |t| {
            t.set_durability(SyncPolicy::Never);
            for i in batch * 1000..((batch + 1) * 1000).min(memories) {
                t.insert_memory("bench", one_memory::memory((i % 64) as usize, i, false))?;
            }
            Ok(())
        })
        .expect("load");
    }
    let ids: Vec<String> = db
        .snapshot()
        .list_memories("bench")
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    println!("{} memories loaded in {:.1} s", ids.len(), built.elapsed().as_secs_f64());
    let ids = &ids[..read_ids.min(ids.len())];
    for round in 0..rounds {
        let alone = measure_span(&db, ids, (readers, 0), false, seconds, round);
        let writing = measure_span(&db, ids, (readers, writers), false, seconds, round);
        let checkpointing = measure_span(&db, ids, (readers, writers), true, seconds, round);
        println!("round {round}: {readers} readers alone: {alone}");
        println!("round {round}: while {writers} writers commit: {writing}");
        println!("round {round}: and checkpoints run back to back: {checkpointing}");
    }
    // Dropping would wait for the indexer to catch up: skip it.
    let path = dir.keep();
    let _ = std::fs::remove_dir_all(&path);
    std::process::exit(0);
}
