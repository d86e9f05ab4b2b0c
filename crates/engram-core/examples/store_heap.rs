//! Where the heap of a database of memories goes, counted by a global allocator that adds up the
//! usable size of every live allocation (glibc's `malloc_usable_size`) plus the 8-byte chunk
//! header. Unlike RSS, this counts exactly the bytes the data holds, allocator rounding included.
//!
//! ```text
//! cargo run --release -p engram-core --example store_heap -- [memories=20000]
//! ```
//!
//! Prints (1) the heap of each part of one memory as the store holds it (its value, its key) and
//! (2) the heap per memory of a whole database after inserting N memories shaped like the open
//! bench's (300 B text, 384-dim embedding, `{"i": n}`), once with that metadata and once with
//! `{}`, minus the search index's own `heap_bytes`; (3) the time of get-by-id on that database,
//! one thread (`get_memory_ref` shares the stored version, `get_memory` copies it out), the
//! store's lookup path. Linux with glibc only.

use engram_core::{Database, DatabaseOptions, Key, Memory, MemoryReads, NewMemory, Space, SyncPolicy, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DIMENSION: usize = 384;
const TEXT_BYTES: usize = 300;
const MEMORIES_PER_TRANSACTION: usize = 500;
/// glibc's chunk header, not included in `malloc_usable_size`.
const CHUNK_HEADER_BYTES: i64 = 8;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_ALLOCATIONS: AtomicI64 = AtomicI64::new(0);

fn chunk_bytes(ptr: *mut u8) -> i64 {
    // SAFETY: `ptr` was returned by the system malloc and is not yet freed.
    (unsafe { libc::malloc_usable_size(ptr.cast()) }) as i64 + CHUNK_HEADER_BYTES
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(chunk_bytes(ptr), Ordering::Relaxed);
            LIVE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(chunk_bytes(ptr), Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let before = chunk_bytes(ptr);
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            LIVE_BYTES.fetch_add(chunk_bytes(moved) - before, Ordering::Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> (i64, i64) {
    (LIVE_BYTES.load(Ordering::Relaxed), LIVE_ALLOCATIONS.load(Ordering::Relaxed))
}

/// Heap bytes and allocations held by what `make` returns.
fn heap_of<T>(make: impl FnOnce() -> T) -> (i64, i64, T) {
    let (bytes, allocations) = live();
    let made = make();
    let (bytes_after, allocations_after) = live();
    (bytes_after - bytes, allocations_after - allocations, made)
}

fn text(i: usize) -> String {
    let mut text = format!("memory {i}: ");
    while text.len() < TEXT_BYTES {
        text.push_str("an observation the agent made about the world. ");
    }
    text.truncate(TEXT_BYTES);
    text
}

fn embedding(i: usize) -> Vec<f32> {
    (0..DIMENSION).map(|d| ((d * 31 + i) % 97) as f32 / 97.0).collect()
}

fn parts_of_one_memory() {
    let id = ulid::Ulid::new().to_string();
    println!("one memory's parts as the store holds them (heap bytes incl. the 8-byte chunk header; allocations):");
    let row = |what: &str, (bytes, allocations): (i64, i64)| println!("  {what:<58} {bytes:>5} B  {allocations} alloc");
    let (b, a, _text) = heap_of(|| text(1).into_bytes().into_boxed_slice());
    row("text (300 B)", (b, a));
    let (b, a, _embedding) = heap_of(|| embedding(1));
    row("embedding (384 x f32 = 1,536 B)", (b, a));
    // Decoded from JSON text, as the store gets it from a log record or a checkpoint.
    let (b, a, _metadata) = heap_of(|| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(r#"{"i":12345}"#).unwrap());
    row("metadata {\"i\": 12345} (serde_json::Map = BTreeMap)", (b, a));
    let (b, a, _metadata) = heap_of(|| serde_json::from_str::<engram_core::Metadata>(r#"{"i":12345}"#).unwrap());
    row("metadata {\"i\": 12345} (engram_core::Metadata, as stored)", (b, a));
    let (b, a, _id) = heap_of(|| id.clone());
    row("Memory.id (26-char ULID)", (b, a));
    let (b, a, _value) = heap_of(|| {
        Arc::new(Value::Memory(Memory {
            id: String::new(),
            text: String::new(),
            embedding: None,
            metadata: engram_core::Metadata::new(),
            created_ms: 0,
            updated_ms: 0,
        }))
    });
    row("Arc<Value> header + the Value::Memory itself", (b, a));
    let (b, a, _key) = heap_of(|| Key::new("bench", Space::Memory, id.clone().into_bytes()));
    row("Key's heap (namespace \"bench\" + id), before 2026-11-26", (b, a));
    println!(
        "  {:<58} {:>5} B inline in the B-tree node (Key), 48 B (encoded key, inline up to 46 bytes: store/compact_key.rs asserts the size), Value: {} B",
        "sizes",
        std::mem::size_of::<Key>(),
        std::mem::size_of::<Value>()
    );
}

fn memory(i: usize, with_metadata: bool) -> NewMemory {
    NewMemory {
        text: text(i),
        embedding: Some(embedding(i)),
        metadata: if with_metadata {
            serde_json::json!({"i": i})
        } else {
            serde_json::json!({})
        },
    }
}

/// Reads of every id, in a scattered order, this many rounds.
const READ_ROUNDS: usize = 5;

/// Nanoseconds per get-by-id of each of `ids`, shared (`get_memory_ref`) and copied (`get_memory`).
fn get_by_id_ns(db: &Database, ids: &[String]) -> (f64, f64) {
    let snapshot = db.snapshot();
    // A stride coprime with the count visits every id once per round, far from the previous one.
    let stride = (1..).map(|k| ids.len() / 2 + k).find(|s| gcd(*s, ids.len()) == 1).unwrap_or(1);
    let order: Vec<&str> = (0..ids.len()).map(|n| ids[n * stride % ids.len()].as_str()).collect();
    let reads = (ids.len() * READ_ROUNDS) as f64;
    let started = Instant::now();
    for _ in 0..READ_ROUNDS {
        for id in &order {
            assert!(snapshot.get_memory_ref("bench", id).unwrap().is_some());
        }
    }
    let shared_ns = started.elapsed().as_nanos() as f64 / reads;
    let started = Instant::now();
    for _ in 0..READ_ROUNDS {
        for id in &order {
            assert!(snapshot.get_memory("bench", id).unwrap().is_some());
        }
    }
    (shared_ns, started.elapsed().as_nanos() as f64 / reads)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Heap per memory of a database holding `memories`, beyond what it held empty, minus the
/// search index's heap; and its get-by-id times when `time_reads`.
fn database_heap_per_memory(memories: usize, with_metadata: bool, time_reads: bool) -> (f64, f64, Option<(f64, f64)>) {
    let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
    let options = DatabaseOptions {
        durability: SyncPolicy::Never,
        checkpoint: engram_core::CheckpointOptions::on_demand(),
        ..Default::default()
    };
    let db = Database::open(dir.path(), options).unwrap();
    db.run(1, |t| t.declare_dimension("bench", DIMENSION)).unwrap();
    let (empty_bytes, _) = live();
    let mut last_lsn = 0;
    let mut ids = Vec::with_capacity(memories);
    for start in (0..memories).step_by(MEMORIES_PER_TRANSACTION) {
        let mut txn = db.begin();
        for i in start..(start + MEMORIES_PER_TRANSACTION).min(memories) {
            ids.push(txn.insert_memory("bench", memory(i, with_metadata)).unwrap());
        }
        last_lsn = txn.commit().unwrap().lsn;
    }
    db.wait_for_index(last_lsn, Duration::from_secs(600)).unwrap();
    let (full_bytes, _) = live();
    let index_bytes = db.index_stats().heap_bytes as f64;
    // The ids this function keeps for the reads are not the database's.
    let ids_bytes =
        (ids.iter().map(|id| chunk_bytes(id.as_ptr().cast_mut())).sum::<i64>() + chunk_bytes(ids.as_ptr().cast::<u8>().cast_mut())) as f64;
    let per_memory = (full_bytes - empty_bytes) as f64 / memories as f64 - ids_bytes / memories as f64;
    let reads = time_reads.then(|| get_by_id_ns(&db, &ids));
    (per_memory, per_memory - index_bytes / memories as f64, reads)
}

fn main() {
    let memories: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(20_000);
    parts_of_one_memory();
    let raw_bytes = (TEXT_BYTES + DIMENSION * 4) as f64;
    println!("\ndatabase of {memories} memories, heap per memory (raw text + vector: {raw_bytes:.0} B):");
    let mut reads = None;
    for with_metadata in [true, false] {
        let (all, without_index, timed) = database_heap_per_memory(memories, with_metadata, with_metadata);
        reads = reads.or(timed);
        println!(
            "  metadata {:<13} all {all:>6.0} B = {:.2}x raw; without the search index {without_index:>6.0} B = {:.2}x raw",
            if with_metadata { "{\"i\": n}:" } else { "{}:" },
            all / raw_bytes,
            without_index / raw_bytes
        );
    }
    if let Some((shared_ns, copied_ns)) = reads {
        println!(
            "\nget-by-id, 1 thread, {READ_ROUNDS} rounds over every id: get_memory_ref {shared_ns:.0} ns, get_memory {copied_ns:.0} ns"
        );
    }
}
