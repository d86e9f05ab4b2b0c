//! Durable single-memory inserts from 64 concurrent keep-alive HTTP clients on loopback, against
//! the embedded engine's rate for the same inserts in the same run (target: HTTP >= 50 %).
//!
//! `cargo bench -p engram-server --bench http_insert` (ENGRAM_BENCH_QUICK=1 for a short run,
//! ENGRAM_BENCH_SECS=N to choose the duration of each phase). Figures go to docs/benchmarks.md.

use engram_core::{Database, DatabaseOptions, NewMemory};
use engram_server::{router, serve, AppState, Config};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 64;
const DIMENSION: usize = 384;
const TEXT_BYTES: usize = 300;

fn run_duration() -> Duration {
    if let Some(secs) = std::env::var("ENGRAM_BENCH_SECS").ok().and_then(|s| s.parse().ok()) {
        return Duration::from_secs(secs);
    }
    if std::env::var_os("ENGRAM_BENCH_QUICK").is_some() {
        Duration::from_millis(1500)
    } else {
        Duration::from_secs(5)
    }
}

fn text(writer: usize, i: u64) -> String {
    let mut text = format!("writer {writer} memory {i}: ");
    while text.len() < TEXT_BYTES {
        text.push_str("the agent noted something worth remembering. ");
    }
    text.truncate(TEXT_BYTES);
    text
}

fn embedding(i: u64) -> Vec<f32> {
    (0..DIMENSION).map(|d| ((d as u64 * 31 + i) % 97) as f32 / 97.0).collect()
}

struct Figures {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    fsyncs: u64,
    records_per_fsync: f64,
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration, db: &Database) -> Figures {
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    let w = db.wal_stats();
    Figures {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        fsyncs: w.syncs,
        records_per_fsync: w.records_per_sync,
    }
}

fn open(dir: &std::path::Path) -> Database {
    let db = Database::open(dir, DatabaseOptions::default()).unwrap();
    // Declared up front, as in engram-core's bench: 64 racing first inserts would conflict.
    db.run(1, |t| t.declare_dimension("bench", DIMENSION)).unwrap();
    db
}

fn embedded(dir: &std::path::Path) -> Figures {
    let db = open(dir);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|w| {
                let (db, stop) = (&db, &stop);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let memory = NewMemory {
                            text: text(w, i),
                            embedding: Some(embedding(i)),
                            metadata: serde_json::json!({"writer": w, "kind": "note"}),
                        };
                        db.run(10, |txn| txn.insert_memory("bench", memory.clone())).unwrap();
                        mine.push(t.elapsed());
                        i += 1;
                    }
                    mine
                })
            })
            .collect();
        std::thread::sleep(run_duration());
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    summarize(latencies, started.elapsed(), &db)
}

fn http(dir: &std::path::Path) -> Figures {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let state = AppState::new(open(dir), Config::default(), None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(state.clone());
        let server = tokio::spawn(serve(listener, state.clone(), app, async move {
            let _ = stopped.await;
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("http://{addr}/v1/namespaces/bench/memories");
        let started = Instant::now();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|w| {
                let (stop, url) = (stop.clone(), url.clone());
                tokio::spawn(async move {
                    // One client per writer, one kept-alive connection each.
                    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
                    // The embeddings are serialized once: the client's JSON work shares the
                    // two cores with the server, and what is measured is the server.
                    let vectors: Vec<String> = (0..97).map(|i| serde_json::to_string(&embedding(i)).unwrap()).collect();
                    let mut mine = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let text = serde_json::to_string(&text(w, i)).unwrap();
                        let body = format!(
                            r#"{{"text":{text},"embedding":{},"metadata":{{"writer":{w},"kind":"note"}}}}"#,
                            vectors[(i % 97) as usize]
                        );
                        let t = Instant::now();
                        let response = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
                        response.bytes().await.unwrap();
                        mine.push(t.elapsed());
                        i += 1;
                    }
                    mine
                })
            })
            .collect();
        tokio::time::sleep(run_duration()).await;
        stop.store(true, Ordering::Relaxed);
        let mut latencies = Vec::new();
        for c in clients {
            latencies.extend(c.await.unwrap());
        }
        let elapsed = started.elapsed();
        let figures = summarize(latencies, elapsed, &state.db);
        let _ = stop_server.send(());
        server.await.unwrap().unwrap();
        figures
    })
}

fn main() {
    let base = std::env::current_dir().unwrap();
    println!(
        "durable one-memory inserts ({TEXT_BYTES} B text, {DIMENSION}-dim embedding, small metadata), {CLIENTS} concurrent writers, {:?} per phase",
        run_duration()
    );
    let embedded_dir = tempfile::tempdir_in(&base).unwrap();
    let e = embedded(embedded_dir.path());
    drop(embedded_dir);
    let http_dir = tempfile::tempdir_in(&base).unwrap();
    let h = http(http_dir.path());
    for (name, f) in [("embedded engine (64 threads)", &e), ("HTTP, 64 keep-alive clients", &h)] {
        println!(
            "{name:<32} {:>9.0} inserts/s   p50 {:>8.0} us   p99 {:>8.0} us   {:>7} fsyncs   {:>5.1} records/fsync",
            f.per_second, f.p50_us, f.p99_us, f.fsyncs, f.records_per_fsync
        );
    }
    println!("HTTP / embedded: {:.0} %", 100.0 * h.per_second / e.per_second);
}
