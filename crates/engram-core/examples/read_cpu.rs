//! Get-by-id throughput (`get_memory_ref`, the read the commit bench measures for issue 3's 1M
//! reads/s target), alone and while writers commit, on a database of `memories` one-memory
//! records. A quicker loop than the commit bench for deciding whether a change to the read path
//! helps: it builds its database once, then alternates the two measurements `rounds` times.
//!
//! ```text
//! cargo run --release -p engram-core --example read_cpu -- [memories=200000] [seconds=3] [rounds=2] [readers=2] [writers=64] [read_ids=all]
//! ```
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

/// Reads/s of `readers` threads each reading 100 ids per snapshot (as the commit bench does),
/// for `seconds`, while `writers` threads commit one-memory transactions.
fn reads_per_second(db: &Database, ids: &[String], readers: usize, writers: usize, seconds: u64, round: u64) -> f64 {
    let reads = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let elapsed = std::thread::scope(|s| {
        for w in 0..writers {
            let stop = &stop;
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    db.run(10, |t| {
                        t.insert_memory("bench", one_memory::memory(1000 + w, round << 32 | i, true))
                    })
                    .expect("commit");
                    i += 1;
                }
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
        // The readers add their counts as they stop; the scope waits for them.
        started
    })
    .elapsed();
    reads.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
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
        let alone = reads_per_second(&db, ids, readers, 0, seconds, round);
        let writing = reads_per_second(&db, ids, readers, writers, seconds, round);
        println!("round {round}: {readers} readers alone {alone:.0} reads/s; while {writers} writers commit {writing:.0} reads/s");
    }
    // Dropping would wait for the indexer to catch up: skip it.
    let path = dir.keep();
    let _ = std::fs::remove_dir_all(&path);
    std::process::exit(0);
}
