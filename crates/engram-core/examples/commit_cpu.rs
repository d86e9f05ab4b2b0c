//! Where the CPU of durable one-memory commits goes, thread by thread: the committing threads,
//! the search indexer, the checkpointer, the log's segment preparer. Throughput on a shared
//! 2-core machine moves with its load; CPU time per commit, split by thread, moves much less,
//! so this is the tool for deciding whether a change makes commits cheaper.
//!
//! ```text
//! cargo run --release -p engram-core --example commit_cpu -- <wal|engine|paused> [seconds=10] [writers=64]
//! ```
//!
//! `wal`: engram-wal appends of a commit record's size; `engine`: one-memory transactions
//! (300 B text, 384-dim embedding, small metadata) with default options; `paused`: the same
//! with the search indexer paused. Environment: `ENGRAM_TEXT_ONLY=1` (no embedding),
//! `ENGRAM_NO_CHECKPOINTS=1`, `ENGRAM_NO_FILE_REUSE=1` (checkpoints write new files),
//! `ENGRAM_NEVER_SYNC=1` (`SyncPolicy::Never`), `ENGRAM_DISTINCT_EMBEDDINGS=1` (every memory
//! its own embedding, not one of 97 repeated: benches/common/one_memory.rs),
//! `ENGRAM_EMBEDDINGS_FVECS=path` (embeddings taken in turn from an `.fvecs` file, e.g. the peer
//! suite's clustered bench/data/base-100000x384.fvecs),
//! `ENGRAM_BACKGROUND_NICE=n` (the indexer's and checkpointer's nice value; default 10),
//! `ENGRAM_INDEX_QUEUE_BYTES=n` (the index queue's bound in bytes of embeddings,
//! `DatabaseOptions::index_queue_bound`; a small one makes a short run measure the sustained
//! rate, with no backlog left owed at its end). Prints commits/s, CPU per commit by thread and
//! for the process, and commit latency percentiles. Runs in a
//! temporary directory under the current one (put it on the disk to measure). Linux only (reads
//! /proc/self/task). The allocator is the `engram` binary's (mimalloc); to measure another,
//! change the `#[global_allocator]` below and run the two builds side by side.

/// The `engram` binary's allocator (docs/architecture.md, *Allocator*).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use engram_core::{CheckpointOptions, Database, DatabaseOptions, SyncPolicy};
use engram_wal::{Wal, WalOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "../benches/common/one_memory.rs"]
mod one_memory;

fn flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v != "0")
}

/// CPU seconds (user + system) of each live thread of this process, summed by thread name.
fn cpu_by_thread_name() -> BTreeMap<String, f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut by_name = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").expect("Linux /proc").flatten() {
        let name = std::fs::read_to_string(task.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(") ").map_or("", |(_, rest)| rest).split(' ').collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        *by_name.entry(name).or_insert(0.0) += (ticks(11) + ticks(12)) / ticks_per_second;
    }
    by_name
}

/// Runs `commit` from `writers` threads named "writer" for `seconds` and prints commits/s and
/// the CPU per commit of every thread name (sampled while all threads are alive) and of the
/// process (which also counts threads that exited meanwhile, such as the indexer's planning
/// helpers), and the latency of the commits that started inside the measured span.
fn measure(label: &str, writers: usize, seconds: u64, commit: impl Fn(usize, u64) + Sync) {
    let count = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let measuring = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (count, stop, measuring, commit) = (&count, &stop, &measuring, &commit);
                std::thread::Builder::new()
                    .name("writer".into())
                    .spawn_scoped(s, move || {
                        let mut latencies_us: Vec<u32> = Vec::new();
                        let mut i = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let measured = measuring.load(Ordering::Relaxed);
                            let started = Instant::now();
                            commit(w, i);
                            if measured {
                                latencies_us.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                            }
                            i += 1;
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        latencies_us
                    })
                    .expect("spawn a writer")
            })
            .collect();
        // Warm-up, so that the measured span starts with every writer committing.
        std::thread::sleep(Duration::from_millis(500));
        measuring.store(true, Ordering::Relaxed);
        let (cpu_before, process_before, count_before, started) = (
            cpu_by_thread_name(),
            process_cpu_seconds(),
            count.load(Ordering::Relaxed),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs(seconds));
        let (cpu_after, process_after, commits, elapsed) = (
            cpu_by_thread_name(),
            process_cpu_seconds(),
            count.load(Ordering::Relaxed) - count_before,
            started.elapsed(),
        );
        measuring.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        let per_commit_us = |cpu: f64| cpu * 1e6 / commits.max(1) as f64;
        let total: f64 = cpu_after
            .iter()
            .map(|(name, after)| after - cpu_before.get(name).unwrap_or(&0.0))
            .sum();
        println!(
            "{label}: {:.0} commits/s, {:.1} µs of CPU per commit in live threads, {:.1} in the process",
            commits as f64 / elapsed.as_secs_f64(),
            per_commit_us(total),
            per_commit_us(process_after - process_before)
        );
        for (name, after) in &cpu_after {
            println!(
                "  {name:<16} {:>6.1} µs/commit",
                per_commit_us(after - cpu_before.get(name).unwrap_or(&0.0))
            );
        }
        let mut latencies_us: Vec<u32> = handles.into_iter().flat_map(|h| h.join().expect("a writer panicked")).collect();
        latencies_us.sort_unstable();
        let at = |q: f64| latencies_us.get(((latencies_us.len() as f64 * q) as usize).min(latencies_us.len().saturating_sub(1)));
        println!(
            "  commit latency: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs ({} commits)",
            at(0.5).unwrap_or(&0),
            at(0.99).unwrap_or(&0),
            at(0.999).unwrap_or(&0),
            latencies_us.last().unwrap_or(&0),
            latencies_us.len()
        );
    });
}

/// CPU seconds (user + system) of the whole process so far, exited threads included.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given; a zeroed rusage is a valid value.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// How the log's group commits went over the whole run (warm-up included): the records one
/// fdatasync made durable, and how long it took.
fn print_rounds(stats: &engram_wal::WalStats) {
    println!(
        "  log: {:.1} records per fdatasync, fdatasync {:.0} µs on average (p99 {:.0} µs); {} waits woken by a round that did not reach them",
        stats.records_per_sync, stats.sync_latency_avg_us, stats.sync_latency_p99_us, stats.gate_rewaits
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "engine".into());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let writers: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let policy = if flag("ENGRAM_NEVER_SYNC") {
        SyncPolicy::Never
    } else {
        SyncPolicy::Always
    };
    let dir = tempfile::tempdir_in(".").expect("a temporary directory here");
    match mode.as_str() {
        "wal" => {
            let wal = Wal::open(dir.path(), WalOptions::default()).expect("open the log");
            // The size of one-memory commit records (the commit bench prints it).
            let payload = vec![7u8; 1977];
            measure("wal", writers, seconds, |_, _| {
                wal.append_with(1, &payload, policy).expect("append");
            });
            print_rounds(&wal.stats());
        }
        "engine" | "paused" => {
            let mut options = DatabaseOptions::default();
            if let Some(nice) = std::env::var("ENGRAM_BACKGROUND_NICE").ok().and_then(|v| v.parse().ok()) {
                options.background_thread_nice = nice;
            }
            if let Some(bytes) = std::env::var("ENGRAM_INDEX_QUEUE_BYTES").ok().and_then(|v| v.parse().ok()) {
                options.index_queue_bound.vector_bytes = bytes;
            }
            options.checkpoint.reuse_retired_file = !flag("ENGRAM_NO_FILE_REUSE");
            if flag("ENGRAM_NO_CHECKPOINTS") {
                options.checkpoint = CheckpointOptions {
                    reuse_retired_file: options.checkpoint.reuse_retired_file,
                    ..CheckpointOptions::on_demand()
                };
            }
            let db = Database::open(dir.path(), options).expect("open the database");
            db.run(1, |t| t.declare_dimension("bench", one_memory::DIMENSION))
                .expect("declare the dimension");
            db.pause_indexer(mode == "paused");
            let with_embedding = !flag("ENGRAM_TEXT_ONLY");
            measure(&mode, writers, seconds, |w, i| {
                db.run(10, |t| {
                    t.set_durability(policy);
                    t.insert_memory("bench", one_memory::memory(w, i, with_embedding))
                })
                .expect("commit");
            });
            let wal = db.wal_stats();
            print_rounds(&wal);
            // Commits do not wait for the search indexer until its queue reaches its bound
            // (`MAX_QUEUED_INDEX_VECTOR_BYTES`): a run shorter than the time that takes measures
            // commits whose indexing is still owed. Printed so that a reader sees which one ran.
            let index = db.index_stats();
            println!(
                "  index at the end: {} changes queued ({} MB of embeddings), {} vectors in the graph; {} commits waited for the indexer",
                index.queued_changes,
                index.queued_vector_bytes >> 20,
                index.vectors,
                index.throttled_commits
            );
            println!(
                "  log: {} segments started, {} of them reused; checkpoint at LSN {}",
                wal.rotations,
                wal.segments_recycled,
                db.last_checkpoint_lsn().unwrap_or(0)
            );
            // Dropping waits for the indexer to catch up (long when it was paused): skip it. The
            // background threads may still create files while the directory is removed.
            let path = dir.keep();
            for _ in 0..10 {
                if std::fs::remove_dir_all(&path).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            std::process::exit(0);
        }
        other => {
            eprintln!("unknown mode {other:?}: wal, engine or paused");
            std::process::exit(2);
        }
    }
}
