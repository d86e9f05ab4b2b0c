//! Durable single-memory inserts from 64 concurrent keep-alive HTTP clients on loopback, against
//! the embedded engine's rate for the same inserts in the same run (target: HTTP >= 50 %).
//!
//! `cargo bench -p engram-server --bench http_insert`; ENGRAM_BENCH_SECS=N sets each phase's
//! duration (default 5 s), ENGRAM_BENCH_QUICK=1 a short run, ENGRAM_BENCH_JSON=path also writes
//! the figures as JSON (bench/run.sh does, for bench/report.py's "Server (HTTP)" row),
//! ENGRAM_BENCH_DIR=dir puts the scratch databases there, ENGRAM_BENCH_ONLY=http or embedded runs one phase alone (for profiling; no ratio then).
//! ENGRAM_BENCH_BULK=1 adds, to the HTTP phase, one more client sending bulk transactions back to
//! back (1,000 of the same memories each, 7.8 MB of JSON): the server parses and commits
//! them on its async workers, and the small inserts' figures show what that costs them.
//!
//! Both phases commit the same memories (300 B text, 384-dim embedding, small metadata) with the
//! same durability (fdatasync before the acknowledgement) from 64 concurrent writers. The HTTP
//! phase runs the server as `engram serve` does (a multi-thread tokio runtime) and the load
//! generator on one thread of its own: a current-thread runtime driving 64 hyper HTTP/1.1
//! connections with request bodies serialised before the clock starts. The generator shares the
//! machine's cores with the server, so its CPU time is measured and reported.

/// The `engram` binary's allocator (docs/architecture.md, *Allocator*): the server is measured as
/// `engram serve` runs it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use engram_core::{Database, DatabaseOptions, NewMemory};
use engram_server::{router, serve, AppState, Config};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 64;
const DIMENSION: usize = 384;
const TEXT_BYTES: usize = 300;
/// Distinct embeddings cycled through (as the embedded phase does with `i % 97`).
const VARIANTS: u64 = 97;

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
    (0..DIMENSION)
        .map(|d| ((d as u64 * 31 + i) % VARIANTS) as f32 / VARIANTS as f32)
        .collect()
}

/// CPU time (user + system) of the calling thread, or of the whole process.
fn cpu_time(who: libc::c_int) -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own; RUSAGE_SELF and RUSAGE_THREAD are valid.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

struct Figures {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    fsyncs: u64,
    records_per_fsync: f64,
    /// CPU time of the whole process during the phase, in cores (CPU seconds per second).
    process_cores: f64,
    /// CPU time of the load generator, in cores (HTTP phase only).
    client_cores: Option<f64>,
}

impl Figures {
    fn json(&self) -> serde_json::Value {
        json!({
            "inserts_per_second": self.per_second,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "fsyncs": self.fsyncs,
            "records_per_fsync": self.records_per_fsync,
            "process_cpu_cores": self.process_cores,
            "client_cpu_cores": self.client_cores,
        })
    }
}

fn summarize(
    mut latencies: Vec<Duration>,
    elapsed: Duration,
    db: &Database,
    process_cpu: Duration,
    client_cpu: Option<Duration>,
) -> Figures {
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    let w = db.wal_stats();
    let seconds = elapsed.as_secs_f64();
    Figures {
        per_second: latencies.len() as f64 / seconds,
        p50_us: at(0.5),
        p99_us: at(0.99),
        fsyncs: w.syncs,
        records_per_fsync: w.records_per_sync,
        process_cores: process_cpu.as_secs_f64() / seconds,
        client_cores: client_cpu.map(|c| c.as_secs_f64() / seconds),
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
    let cpu_before = cpu_time(libc::RUSAGE_SELF);
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
                            metadata: json!({"writer": w, "kind": "note"}),
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
    let elapsed = started.elapsed();
    summarize(latencies, elapsed, &db, cpu_time(libc::RUSAGE_SELF) - cpu_before, None)
}

/// Each writer's request bodies, serialised once: the same memories as the embedded phase
/// (text `i` of the writer, embedding `i % 97`), cycling over `VARIANTS` of them.
fn request_bodies(writer: usize) -> Vec<Bytes> {
    (0..VARIANTS)
        .map(|i| {
            let body = json!({"text": text(writer, i), "embedding": embedding(i), "metadata": {"writer": writer, "kind": "note"}});
            Bytes::from(serde_json::to_vec(&body).unwrap())
        })
        .collect()
}

/// Memories in one bulk transaction (`ENGRAM_BENCH_BULK`): the server's default
/// `limits.max_batch_items`.
const BULK_MEMORIES: u64 = 1000;

/// One `POST /v1/transactions` inserting `BULK_MEMORIES` memories like the small inserts'.
fn bulk_body() -> Bytes {
    let operations: Vec<_> = (0..BULK_MEMORIES)
        .map(|i| json!({"op": "insert_memory", "namespace": "bench", "text": text(CLIENTS, i), "embedding": embedding(i), "metadata": {"writer": CLIENTS, "kind": "bulk"}}))
        .collect();
    Bytes::from(serde_json::to_vec(&json!({ "operations": operations })).unwrap())
}

/// One keep-alive connection sending `bodies` to `path` back to back until `stop`, each
/// answered with `expected`.
async fn http_writer(
    addr: std::net::SocketAddr,
    path: &'static str,
    expected: hyper::StatusCode,
    bodies: Vec<Bytes>,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let host = addr.to_string();
    let mut latencies = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, &host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bodies[i % bodies.len()].clone()))
            .unwrap();
        let t = Instant::now();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, expected, "{}", String::from_utf8_lossy(&body));
        latencies.push(t.elapsed());
        i += 1;
    }
    latencies
}

fn http(dir: &std::path::Path) -> Figures {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = std::env::var("ENGRAM_BENCH_SERVER_WORKERS").ok().and_then(|w| w.parse().ok()) {
        runtime.worker_threads(workers);
    }
    let runtime = runtime.enable_all().build().unwrap();
    let state = AppState::new(open(dir), Config::default(), None);
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(serve(listener, state.clone(), router(state.clone()), async move {
        let _ = stopped.await;
    }));
    let bodies: Vec<Vec<Bytes>> = (0..CLIENTS).map(request_bodies).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let client_stop = stop.clone();
    let (ready, connected) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let client_runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        client_runtime.block_on(async move {
            ready.send(()).unwrap();
            let cpu_before = cpu_time(libc::RUSAGE_THREAD);
            let bulk = std::env::var_os("ENGRAM_BENCH_BULK").map(|_| {
                tokio::spawn(http_writer(
                    addr,
                    "/v1/transactions",
                    hyper::StatusCode::OK,
                    vec![bulk_body()],
                    client_stop.clone(),
                ))
            });
            let writers: Vec<_> = bodies
                .into_iter()
                .map(|mine| {
                    tokio::spawn(http_writer(
                        addr,
                        "/v1/namespaces/bench/memories",
                        hyper::StatusCode::CREATED,
                        mine,
                        client_stop.clone(),
                    ))
                })
                .collect();
            let mut latencies = Vec::new();
            for w in writers {
                latencies.extend(w.await.unwrap());
            }
            if let Some(bulk) = bulk {
                print_bulk(bulk.await.unwrap());
            }
            (latencies, cpu_time(libc::RUSAGE_THREAD) - cpu_before)
        })
    });
    connected.recv().unwrap();
    let cpu_before = cpu_time(libc::RUSAGE_SELF);
    let started = Instant::now();
    std::thread::sleep(run_duration());
    stop.store(true, Ordering::Relaxed);
    let (latencies, client_cpu) = client.join().unwrap();
    let elapsed = started.elapsed();
    let figures = summarize(
        latencies,
        elapsed,
        &state.db,
        cpu_time(libc::RUSAGE_SELF) - cpu_before,
        Some(client_cpu),
    );
    let _ = stop_server.send(());
    runtime.block_on(server).unwrap().unwrap();
    figures
}

fn print_bulk(mut latencies: Vec<Duration>) {
    latencies.sort_unstable();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    println!(
        "bulk transactions ({BULK_MEMORIES} memories, {:.1} MB of JSON each): {} committed, p50 {:.0} ms, max {:.0} ms",
        bulk_body().len() as f64 / 1e6,
        latencies.len(),
        ms(latencies.get(latencies.len() / 2)),
        ms(latencies.last()),
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    // Scratch databases go to ENGRAM_BENCH_DIR (bench/run.sh's scratch directory, on the disk being
    // measured) or the working directory.
    let base = std::env::var_os("ENGRAM_BENCH_DIR").map_or_else(|| std::env::current_dir().unwrap(), std::path::PathBuf::from);
    let load_before = load_average();
    println!(
        "durable one-memory inserts ({TEXT_BYTES} B text, {DIMENSION}-dim embedding, small metadata), {CLIENTS} concurrent writers, {:?} per phase; load average {load_before}",
        run_duration()
    );
    let http_phase = || {
        let http_dir = tempfile::tempdir_in(&base).unwrap();
        http(http_dir.path())
    };
    let embedded_phase = || {
        let embedded_dir = tempfile::tempdir_in(&base).unwrap();
        embedded(embedded_dir.path())
    };
    let only = std::env::var("ENGRAM_BENCH_ONLY").unwrap_or_default();
    if only == "http" || only == "embedded" {
        let f = if only == "http" { http_phase() } else { embedded_phase() };
        println!("{only} only: {:.0} inserts/s, CPU {:.2} cores", f.per_second, f.process_cores);
        return;
    }
    let e = embedded_phase();
    let h = http_phase();
    for (name, f) in [("embedded engine (64 threads)", &e), ("HTTP, 64 keep-alive clients", &h)] {
        println!(
            "{name:<30} {:>8.0} inserts/s  p50 {:>7.0} us  p99 {:>7.0} us  {:>6} fsyncs  {:>5.1} records/fsync  CPU {:.2} cores",
            f.per_second, f.p50_us, f.p99_us, f.fsyncs, f.records_per_fsync, f.process_cores
        );
    }
    let client_cores = h.client_cores.unwrap_or(0.0);
    println!(
        "load generator: {client_cores:.2} cores = {:.0} % of the process's CPU in the HTTP phase",
        100.0 * client_cores / h.process_cores.max(f64::MIN_POSITIVE)
    );
    let ratio = h.per_second / e.per_second;
    println!("HTTP / embedded: {:.0} %", 100.0 * ratio);
    if let Some(path) = std::env::var_os("ENGRAM_BENCH_JSON") {
        let report = json!({
            "bench": "http_insert",
            "workload": format!("durable one-memory inserts ({TEXT_BYTES} B text, {DIMENSION}-dim embedding), {CLIENTS} keep-alive HTTP/1.1 clients on loopback vs {CLIENTS} embedded threads"),
            "clients": CLIENTS,
            "seconds_per_phase": run_duration().as_secs_f64(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "embedded": e.json(),
            "http": h.json(),
            "http_over_embedded": ratio,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap() + "\n").unwrap();
        println!("figures written to {}", std::path::Path::new(&path).display());
    }
}
