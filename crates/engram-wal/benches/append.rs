//! Append and recovery benchmark for engram-wal, on the real disk.
//!
//! One run measures:
//! 1. the disk's floor: a single thread doing pwrite + fdatasync of one record's bytes per op,
//!    into a zero-filled, synced file (the WAL's own I/O pattern) and into a growing file;
//! 2. durable appends (`SyncPolicy::Always`, default options) with 1, 4, 16 and 64 threads at
//!    128 B and 4 KiB payloads: appends/s, per-append p50/p99 latency, records per fdatasync;
//! 3. recovery: the time `Wal::open` takes to scan a ~1 GiB log, with a warm and (if the page
//!    cache can be dropped) a cold cache;
//!
//! then prints markdown tables and the three target ratios. Points 1 and 2 are repeated in
//! rounds (3 by default, `ENGRAM_BENCH_ROUNDS` to change), interleaved, because the machine is
//! shared: a ratio is computed within a round and the median round is reported.
//!
//! Full run:  `cargo bench -p engram-wal --bench append`
//! Smoke run: `cargo bench -p engram-wal --bench append -- --quick` (or `ENGRAM_BENCH_QUICK=1`)
//! Scratch files go under `ENGRAM_BENCH_DIR` if set, else the system temp dir; they must be on
//! the disk being measured (not tmpfs).

use engram_wal::{layout, RecoveryReport, SyncPolicy, Wal, WalOptions, WalStats};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const THREAD_COUNTS: [usize; 4] = [1, 4, 16, 64];
const PAYLOAD_SIZES_BYTES: [usize; 2] = [128, 4096];
const RECORD_KIND: u8 = 1;

/// Size of the pre-zeroed file of the floor measurement: the WAL's default segment size.
const FLOOR_FILE_BYTES: u64 = 64 * 1024 * 1024;

const RECOVERY_PAYLOAD_BYTES: usize = 4096;
/// Records per `append_batch` while building the recovery log: amortizes the per-call
/// overhead so building 1 GiB takes seconds, without changing what ends up on disk.
const RECOVERY_BATCH_RECORDS: usize = 64;
/// Each recovery figure is the median of this many opens.
const RECOVERY_REPEATS: usize = 3;

/// Below this, a single-thread point is taken as disturbed (see `single_thread_steadiness`).
const MIN_STEADINESS: f64 = 0.8;

/// Phases of a timed run, shared between the coordinating thread and the workers.
const PHASE_WARMUP: u8 = 0;
const PHASE_MEASURE: u8 = 1;
const PHASE_STOP: u8 = 2;

struct BenchConfig {
    quick: bool,
    /// Every point is measured once per round; tables show the median round.
    rounds: usize,
    warmup: Duration,
    measure: Duration,
    recovery_log_bytes: u64,
    scratch_root: PathBuf,
}

impl BenchConfig {
    fn from_env() -> BenchConfig {
        // `cargo bench` passes `--bench` (and any filter) to harness-less benches: ignore them.
        let quick_arg = std::env::args().skip(1).any(|a| a == "--quick");
        let quick_env = std::env::var("ENGRAM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let quick = quick_arg || quick_env;
        let scratch_root = std::env::var_os("ENGRAM_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let rounds = std::env::var("ENGRAM_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(if quick { 1 } else { 3 });
        BenchConfig {
            quick,
            rounds,
            warmup: Duration::from_millis(if quick { 200 } else { 500 }),
            measure: Duration::from_millis(if quick { 500 } else { 3000 }),
            recovery_log_bytes: if quick { 64 << 20 } else { 1 << 30 },
            scratch_root,
        }
    }

    /// A fresh scratch directory. The caller keeps it until the end of the run: deleting
    /// hundreds of MiB mid-run would make the file system issue discards (this ext4 is mounted
    /// with `discard`) that slow down the fdatasyncs of whatever is measured next.
    fn scratch_dir(&self) -> TempDir {
        tempfile::Builder::new()
            .prefix("engram-wal-bench-")
            .tempdir_in(&self.scratch_root)
            .expect("creating a scratch directory")
    }
}

/// Latency percentiles and throughput of one timed run.
#[derive(Debug, Clone, Copy)]
struct LatencySummary {
    ops: u64,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

impl LatencySummary {
    fn from_samples(mut latencies_ns: Vec<u64>, elapsed: Duration) -> LatencySummary {
        latencies_ns.sort_unstable();
        LatencySummary {
            ops: latencies_ns.len() as u64,
            ops_per_s: latencies_ns.len() as f64 / elapsed.as_secs_f64(),
            p50_us: percentile_ns(&latencies_ns, 0.50) as f64 / 1000.0,
            p99_us: percentile_ns(&latencies_ns, 0.99) as f64 / 1000.0,
        }
    }

    /// For one thread in a closed loop, ops/s × p50 is close to 1 when latencies are steady
    /// (about 0.85 to 1.03 in quiet runs here). Well below 1, a few very slow ops took much of
    /// the window: on a shared machine, other processes' load. Here that was mostly CPU: with
    /// both cores busy elsewhere, a thread woken by its finished fdatasync can wait for a
    /// scheduler tick (4 ms at HZ=250) before it runs, so single-thread figures collapse
    /// (p50 ≈ 4 ms) while multi-thread ones, with many runnable threads, barely move.
    fn single_thread_steadiness(&self) -> f64 {
        self.ops_per_s * self.p50_us / 1e6
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile_ns(sorted_ns: &[u64], q: f64) -> u64 {
    if sorted_ns.is_empty() {
        return 0;
    }
    let rank = (q * sorted_ns.len() as f64).ceil().max(1.0) as usize;
    sorted_ns[rank.min(sorted_ns.len()) - 1]
}

fn elapsed_ns(since: Instant) -> u64 {
    since.elapsed().as_nanos().try_into().unwrap_or(u64::MAX)
}

fn format_bytes(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

// ---------------------------------------------------------------------------------------------
// The disk's floor
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloorFile {
    /// Overwrite a file that was zero-filled and synced first, as the WAL does with its
    /// preallocated segments: fdatasync then has no size or extent change to journal.
    Preallocated,
    /// Write past the end of the file: every fdatasync also commits the new size.
    Growing,
}

impl FloorFile {
    fn label(self) -> &'static str {
        match self {
            FloorFile::Preallocated => "zero-filled, overwrite",
            FloorFile::Growing => "growing (append)",
        }
    }
}

struct FloorResult {
    file: FloorFile,
    payload_bytes: usize,
    write_bytes: usize,
    latency: LatencySummary,
}

/// A single-thread loop of pwrite + fdatasync at sequential offsets. Each op writes exactly the
/// bytes one WAL append of `payload_bytes` writes (its framed record), so the comparison with
/// a single-thread append is like for like.
fn run_floor(cfg: &BenchConfig, dir: &Path, payload_bytes: usize, file_kind: FloorFile) -> FloorResult {
    let write_bytes = layout::framed_bytes(payload_bytes);
    let path = dir.join(format!("floor-{payload_bytes}-{file_kind:?}.dat"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("creating the floor file");
    let wrap_at_bytes = match file_kind {
        FloorFile::Preallocated => {
            let zeros = vec![0u8; 1024 * 1024];
            let mut at = 0;
            while at < FLOOR_FILE_BYTES {
                file.write_all_at(&zeros, at).expect("zero-filling the floor file");
                at += zeros.len() as u64;
            }
            // fsync (not fdatasync) so the size and extents are durable before measuring.
            file.sync_all().expect("syncing the floor file");
            FLOOR_FILE_BYTES
        }
        FloorFile::Growing => u64::MAX,
    };
    let buf = vec![0xA5u8; write_bytes];
    let mut offset = 0u64;
    let mut latencies_ns = Vec::new();
    let started = Instant::now();
    let measure_from = started + cfg.warmup;
    let measure_until = measure_from + cfg.measure;
    loop {
        let t = Instant::now();
        if t >= measure_until {
            break;
        }
        if offset + write_bytes as u64 > wrap_at_bytes {
            offset = 0;
        }
        file.write_all_at(&buf, offset).expect("floor pwrite");
        file.sync_data().expect("floor fdatasync");
        offset += write_bytes as u64;
        if t >= measure_from {
            latencies_ns.push(elapsed_ns(t));
        }
    }
    FloorResult {
        file: file_kind,
        payload_bytes,
        write_bytes,
        latency: LatencySummary::from_samples(latencies_ns, cfg.measure),
    }
}

// ---------------------------------------------------------------------------------------------
// Process CPU time: whether many appenders on few cores are bound by the CPU or the disk
// ---------------------------------------------------------------------------------------------

/// Linux reports process CPU times in `USER_HZ` ticks, which is 100 on every architecture
/// `/proc/<pid>/stat` is read on.
const USER_HZ: f64 = 100.0;

/// User + system CPU time of this process (all threads, live and exited), from /proc.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; the fields after it are space-separated.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_name.split(' ').skip(11); // field 14 (utime) is the 12th after the name
    let user_ticks: u64 = fields.next()?.parse().ok()?;
    let system_ticks: u64 = fields.next()?.parse().ok()?;
    Some((user_ticks + system_ticks) as f64 / USER_HZ)
}

// ---------------------------------------------------------------------------------------------
// Durable appends
// ---------------------------------------------------------------------------------------------

struct AppendResult {
    threads: usize,
    payload_bytes: usize,
    latency: LatencySummary,
    /// Over the measured window only.
    syncs: u64,
    records_per_sync: f64,
    syncs_per_s: f64,
    rotations: u64,
    rotation_waits: u64,
    /// From the log's histogram: cumulative since open, power-of-two bucket upper bound.
    wal_sync_p50_us: f64,
    /// CPU time of the process per second of the window: 2.0 means two cores were busy.
    cpu_cores_busy: Option<f64>,
}

/// Records made durable by the fdatasyncs counted in `s` (the snapshot only keeps the mean).
fn records_synced(s: &WalStats) -> f64 {
    s.records_per_sync * s.syncs as f64
}

/// Waits until the background thread has prepared the spare segment it starts on right after
/// `Wal::open`: zero-filling 64 MiB would otherwise compete with the measured fdatasyncs.
/// Steady-state rotations (and the preparation they trigger) stay inside the measurement.
fn wait_for_spare_segment(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let names: Vec<String> = std::fs::read_dir(dir)
            .expect("listing the log directory")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let segments = names.iter().filter(|n| layout::parse_segment_file_name(n).is_some()).count();
        let preparing = names.iter().any(|n| n.ends_with(".tmp"));
        if segments >= 2 && !preparing {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("warning: no spare segment after 120 s; measuring anyway");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_durable_appends(cfg: &BenchConfig, dir: &Path, threads: usize, payload_bytes: usize) -> AppendResult {
    let wal = Wal::open(dir, WalOptions::default()).expect("opening the log");
    assert_eq!(wal.options().sync_policy, SyncPolicy::Always);
    wait_for_spare_segment(dir);
    let payload = vec![0x5Au8; payload_bytes];
    let phase = AtomicU8::new(PHASE_WARMUP);

    let (latencies_ns, elapsed, (before, cpu_before_s), (after, cpu_after_s)) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut latencies_ns = Vec::new();
                    loop {
                        let current = phase.load(Ordering::Acquire);
                        if current == PHASE_STOP {
                            return latencies_ns;
                        }
                        let t = Instant::now();
                        wal.append(RECORD_KIND, &payload).expect("durable append");
                        if current == PHASE_MEASURE {
                            latencies_ns.push(elapsed_ns(t));
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(cfg.warmup);
        let before = (wal.stats(), process_cpu_s());
        let started = Instant::now();
        phase.store(PHASE_MEASURE, Ordering::Release);
        std::thread::sleep(cfg.measure);
        phase.store(PHASE_STOP, Ordering::Release);
        let elapsed = started.elapsed();
        let after = (wal.stats(), process_cpu_s());
        let latencies_ns: Vec<u64> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("append worker panicked"))
            .collect();
        (latencies_ns, elapsed, before, after)
    });

    let syncs = after.syncs - before.syncs;
    let records = records_synced(&after) - records_synced(&before);
    let latency = LatencySummary::from_samples(latencies_ns, elapsed);
    let result = AppendResult {
        threads,
        payload_bytes,
        latency,
        syncs,
        records_per_sync: if syncs == 0 { 0.0 } else { records / syncs as f64 },
        syncs_per_s: syncs as f64 / elapsed.as_secs_f64(),
        rotations: after.rotations - before.rotations,
        rotation_waits: after.rotation_waits - before.rotation_waits,
        wal_sync_p50_us: after.sync_latency_p50_us,
        cpu_cores_busy: cpu_after_s
            .zip(cpu_before_s)
            .map(|(after_s, before_s)| (after_s - before_s) / elapsed.as_secs_f64()),
    };
    wal.close().expect("closing the log");
    result
}

// ---------------------------------------------------------------------------------------------
// Recovery
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cache {
    Warm,
    Cold,
}

struct RecoveryRun {
    report: RecoveryReport,
    /// Wall time of `Wal::open`: recovery plus starting the background threads.
    open_elapsed: Duration,
}

impl RecoveryRun {
    fn mb_per_s(&self) -> f64 {
        self.report.bytes_scanned as f64 / 1e6 / self.report.elapsed.as_secs_f64()
    }
}

struct RecoveryResult {
    build_elapsed: Duration,
    warm: Vec<RecoveryRun>,
    /// Empty when the page cache could not be dropped; the error says why.
    cold: Vec<RecoveryRun>,
    cold_unavailable: Option<String>,
}

/// Writes framed records until the log holds `log_bytes`, then syncs once.
fn build_recovery_log(dir: &Path, log_bytes: u64) {
    let options = WalOptions {
        sync_policy: SyncPolicy::Never,
        ..Default::default()
    };
    let wal = Wal::open(dir, options).expect("opening the log to fill");
    let payload = vec![0x3Cu8; RECOVERY_PAYLOAD_BYTES];
    let batch: Vec<(u8, &[u8])> = vec![(RECORD_KIND, &payload[..]); RECOVERY_BATCH_RECORDS];
    let batch_bytes = (layout::framed_bytes(RECOVERY_PAYLOAD_BYTES) * RECOVERY_BATCH_RECORDS) as u64;
    let mut written_bytes = 0;
    while written_bytes < log_bytes {
        wal.append_batch(&batch, SyncPolicy::Never).expect("filling the log");
        written_bytes += batch_bytes;
    }
    wal.close().expect("closing the filled log");
}

/// Evicts clean pages from the page cache (needs root). The log was synced on close, so
/// nothing of it is dirty and all of it is evicted.
fn drop_page_cache() -> Result<(), String> {
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n").map_err(|e| format!("writing /proc/sys/vm/drop_caches: {e}"))
}

fn time_open(dir: &Path) -> RecoveryRun {
    let started = Instant::now();
    let wal = Wal::open(dir, WalOptions::default()).expect("reopening the log");
    let open_elapsed = started.elapsed();
    RecoveryRun {
        report: wal.recovery_report().clone(),
        open_elapsed,
    }
}

fn run_recovery(cfg: &BenchConfig, dir: &Path) -> RecoveryResult {
    let started = Instant::now();
    build_recovery_log(dir, cfg.recovery_log_bytes);
    let build_elapsed = started.elapsed();
    // The log was just written, so it is in the page cache.
    let warm = (0..RECOVERY_REPEATS).map(|_| time_open(dir)).collect();
    let mut cold = Vec::new();
    let mut cold_unavailable = None;
    for _ in 0..RECOVERY_REPEATS {
        match drop_page_cache() {
            Ok(()) => cold.push(time_open(dir)),
            Err(e) => {
                cold_unavailable = Some(e);
                break;
            }
        }
    }
    RecoveryResult {
        build_elapsed,
        warm,
        cold,
        cold_unavailable,
    }
}

// ---------------------------------------------------------------------------------------------
// Rounds: the machine is shared, so each point is measured several times, interleaved
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    Floor { file: FloorFile, payload_bytes: usize },
    Appends { threads: usize, payload_bytes: usize },
}

/// The points of one round, in order. The points each target compares come first and back to
/// back, so that a noisy neighbour is less likely to hit only one side of a ratio.
fn round_plan() -> Vec<Point> {
    let mut plan = vec![
        Point::Floor {
            file: FloorFile::Preallocated,
            payload_bytes: 128,
        },
        Point::Appends {
            threads: 1,
            payload_bytes: 128,
        },
        Point::Appends {
            threads: 64,
            payload_bytes: 128,
        },
    ];
    let mut add = |point| {
        if !plan.contains(&point) {
            plan.push(point);
        }
    };
    for payload_bytes in PAYLOAD_SIZES_BYTES {
        add(Point::Floor {
            file: FloorFile::Preallocated,
            payload_bytes,
        });
        for threads in THREAD_COUNTS {
            add(Point::Appends { threads, payload_bytes });
        }
    }
    for payload_bytes in PAYLOAD_SIZES_BYTES {
        add(Point::Floor {
            file: FloorFile::Growing,
            payload_bytes,
        });
    }
    plan
}

struct Round {
    /// /proc/loadavg when the round started: how busy the shared machine was.
    load_avg: String,
    floor: Vec<FloorResult>,
    appends: Vec<AppendResult>,
}

impl Round {
    fn floor(&self, file: FloorFile, payload_bytes: usize) -> &FloorResult {
        self.floor
            .iter()
            .find(|r| r.file == file && r.payload_bytes == payload_bytes)
            .expect("every round runs every point")
    }

    fn appends(&self, threads: usize, payload_bytes: usize) -> &AppendResult {
        self.appends
            .iter()
            .find(|r| r.threads == threads && r.payload_bytes == payload_bytes)
            .expect("every round runs every point")
    }

    /// Why the single-thread figures of this round look disturbed by other load on the machine,
    /// if they do. Such a round says nothing about the log: it is left out of the targets.
    fn disturbance(&self, best_floor_p50_us: f64) -> Option<String> {
        let floor = &self.floor(FloorFile::Preallocated, 128).latency;
        if floor.p50_us > 2.0 * best_floor_p50_us {
            return Some(format!(
                "floor p50 {:.0} µs is over twice the run's best, {best_floor_p50_us:.0} µs",
                floor.p50_us
            ));
        }
        for (name, latency) in [("floor", floor), ("1-thread append", &self.appends(1, 128).latency)] {
            let steadiness = latency.single_thread_steadiness();
            if steadiness < MIN_STEADINESS {
                return Some(format!(
                    "{name}: ops/s × p50 = {steadiness:.2} (< {MIN_STEADINESS}), a few very slow ops took much of the window"
                ));
            }
        }
        None
    }

    /// Target (a): single-thread durable append p50 over the disk's floor p50.
    fn latency_ratio(&self) -> f64 {
        self.appends(1, 128).latency.p50_us / self.floor(FloorFile::Preallocated, 128).latency.p50_us
    }

    /// Target (b): 64-thread over 1-thread durable appends/s.
    fn scaling_ratio(&self) -> f64 {
        self.appends(64, 128).latency.ops_per_s / self.appends(1, 128).latency.ops_per_s
    }
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

fn run_round(cfg: &BenchConfig, round: usize, scratch: &mut Vec<TempDir>) -> Round {
    let mut result = Round {
        load_avg: load_avg(),
        floor: Vec::new(),
        appends: Vec::new(),
    };
    let floor_dir = cfg.scratch_dir();
    for point in round_plan() {
        match point {
            Point::Floor { file, payload_bytes } => {
                eprintln!("round {round}: floor, {}, {}", file.label(), format_bytes(payload_bytes));
                result.floor.push(run_floor(cfg, floor_dir.path(), payload_bytes, file));
            }
            Point::Appends { threads, payload_bytes } => {
                eprintln!("round {round}: durable appends, {threads} threads, {}", format_bytes(payload_bytes));
                let dir = cfg.scratch_dir();
                result.appends.push(run_durable_appends(cfg, dir.path(), threads, payload_bytes));
                scratch.push(dir);
            }
        }
    }
    scratch.push(floor_dir);
    result
}

/// The item with the median key (the upper one of an even count).
fn median_by<T>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> f64) -> Option<T> {
    let mut items: Vec<T> = items.into_iter().collect();
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = items.len() / 2;
    items.into_iter().nth(middle)
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn print_floor(rounds: &[&Round]) {
    println!("## Disk floor: single thread, pwrite + fdatasync, sequential offsets\n");
    println!("Each op writes the bytes of one framed WAL record. Row = the judged round with the median ops/s.\n");
    println!("| file | payload | bytes per write | ops | ops/s | p50 µs | p99 µs |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for point in &rounds[0].floor {
        let r = median_by(rounds.iter().map(|round| round.floor(point.file, point.payload_bytes)), |r| {
            r.latency.ops_per_s
        })
        .expect("at least one round");
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} |",
            r.file.label(),
            format_bytes(r.payload_bytes),
            r.write_bytes,
            r.latency.ops,
            r.latency.ops_per_s,
            r.latency.p50_us,
            r.latency.p99_us
        );
    }
    println!();
}

fn print_appends(rounds: &[&Round]) {
    println!("## Durable appends: SyncPolicy::Always, 64 MiB segments, background preallocation\n");
    println!("Row = the judged round with the median appends/s.\n");
    println!(
        "| threads | payload | appends | appends/s | p50 µs | p99 µs | fdatasyncs | records/fdatasync | fdatasyncs/s | \
         rotations (waits) | WAL fdatasync p50 µs* | CPU cores busy |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for payload_bytes in PAYLOAD_SIZES_BYTES {
        for threads in THREAD_COUNTS {
            let r = median_by(rounds.iter().map(|round| round.appends(threads, payload_bytes)), |r| {
                r.latency.ops_per_s
            })
            .expect("at least one round");
            println!(
                "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {} | {:.1} | {:.0} | {} ({}) | {:.0} | {} |",
                r.threads,
                format_bytes(r.payload_bytes),
                r.latency.ops,
                r.latency.ops_per_s,
                r.latency.p50_us,
                r.latency.p99_us,
                r.syncs,
                r.records_per_sync,
                r.syncs_per_s,
                r.rotations,
                r.rotation_waits,
                r.wal_sync_p50_us,
                r.cpu_cores_busy.map_or_else(|| "n/a".to_string(), |c| format!("{c:.2}"))
            );
        }
    }
    println!("\n*from `WalStats`: since open (warm-up included), upper bound of a power-of-two bucket.\n");
}

/// The rounds not disturbed by other load on the machine.
fn undisturbed_rounds(rounds: &[Round]) -> Vec<&Round> {
    let best_floor_p50_us = best_floor_p50_us(rounds);
    rounds.iter().filter(|r| r.disturbance(best_floor_p50_us).is_none()).collect()
}

/// The rounds the tables and targets are based on: the undisturbed ones, or all if every one
/// was disturbed (the report then says the figures are unreliable).
fn rounds_for_targets(rounds: &[Round]) -> Vec<&Round> {
    let clean = undisturbed_rounds(rounds);
    if clean.is_empty() {
        rounds.iter().collect()
    } else {
        clean
    }
}

fn best_floor_p50_us(rounds: &[Round]) -> f64 {
    rounds
        .iter()
        .map(|r| r.floor(FloorFile::Preallocated, 128).latency.p50_us)
        .fold(f64::INFINITY, f64::min)
}

fn print_rounds(rounds: &[Round]) {
    let best_floor_p50_us = best_floor_p50_us(rounds);
    println!("## Per round: the figures behind targets (a) and (b)\n");
    println!(
        "| round | load avg at start | floor 128 B p50 µs | 1-thread 128 B p50 µs | (a) | 1-thread appends/s | 64-thread appends/s | (b) | \
         disturbed by other load |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for (i, round) in rounds.iter().enumerate() {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2}x | {:.0} | {:.0} | {:.1}x | {} |",
            i + 1,
            round.load_avg,
            round.floor(FloorFile::Preallocated, 128).latency.p50_us,
            round.appends(1, 128).latency.p50_us,
            round.latency_ratio(),
            round.appends(1, 128).latency.ops_per_s,
            round.appends(64, 128).latency.ops_per_s,
            round.scaling_ratio(),
            round.disturbance(best_floor_p50_us).unwrap_or_else(|| "no".into())
        );
    }
    println!();
}

fn print_recovery(cfg: &BenchConfig, r: &RecoveryResult) {
    println!(
        "## Recovery: Wal::open of a {} MiB log ({} B payloads, SyncPolicy::Never, one final sync)\n",
        cfg.recovery_log_bytes >> 20,
        RECOVERY_PAYLOAD_BYTES
    );
    println!("Building the log took {:.1} s.\n", r.build_elapsed.as_secs_f64());
    println!("| cache | run | bytes scanned | records | segments | recovery ms | Wal::open ms | MB/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (cache, runs) in [(Cache::Warm, &r.warm), (Cache::Cold, &r.cold)] {
        for (i, run) in runs.iter().enumerate() {
            println!(
                "| {:?} | {} | {} | {} | {} | {:.1} | {:.1} | {:.0} |",
                cache,
                i + 1,
                run.report.bytes_scanned,
                run.report.records,
                run.report.segments,
                run.report.elapsed.as_secs_f64() * 1e3,
                run.open_elapsed.as_secs_f64() * 1e3,
                run.mb_per_s()
            );
        }
    }
    if let Some(why) = &r.cold_unavailable {
        println!("\nCold-cache figures unavailable: {why}");
    }
    println!("\nMB/s = bytes_scanned / recovery_report().elapsed, 1 MB = 10^6 bytes.\n");
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

fn print_targets(rounds: &[Round], recovery: &RecoveryResult) {
    let judged = rounds_for_targets(rounds);
    let latency_ratio = median_by(judged.iter().map(|r| r.latency_ratio()), |r| *r).expect("at least one round");
    let scaling_ratio = median_by(judged.iter().map(|r| r.scaling_ratio()), |r| *r).expect("at least one round");
    let which = if undisturbed_rounds(rounds).is_empty() {
        "every round was disturbed, so all are used: treat (a) and (b) as unreliable"
    } else {
        "undisturbed rounds only"
    };
    println!(
        "## Targets (ratios: median over {} of {} round(s), {which})\n",
        judged.len(),
        rounds.len()
    );
    println!("| target | measured | goal | verdict |");
    println!("|---|---:|---:|---|");
    println!(
        "| (a) 1-thread 128 B append p50 / floor p50 | {latency_ratio:.2}x | <= 1.3x | {} |",
        verdict(latency_ratio <= 1.3)
    );
    println!(
        "| (b) 64-thread / 1-thread 128 B appends/s | {scaling_ratio:.1}x | >= 30x | {} |",
        verdict(scaling_ratio >= 30.0)
    );
    for (cache, runs) in [(Cache::Warm, &recovery.warm), (Cache::Cold, &recovery.cold)] {
        if let Some(mb_per_s) = median_by(runs.iter().map(RecoveryRun::mb_per_s), |r| *r) {
            println!(
                "| (c) recovery, {:?} cache (median of {}) | {mb_per_s:.0} MB/s | >= 500 MB/s | {} |",
                cache,
                runs.len(),
                verdict(mb_per_s >= 500.0)
            );
        }
    }
    println!();
}

fn main() {
    let cfg = BenchConfig::from_env();
    // Every scratch directory lives until the end of the run (see `scratch_dir`).
    let mut scratch = Vec::new();
    println!(
        "# engram-wal append benchmark ({} mode: {} round(s), {:.1} s warm-up + {:.1} s per point)\n",
        if cfg.quick { "quick" } else { "full" },
        cfg.rounds,
        cfg.warmup.as_secs_f64(),
        cfg.measure.as_secs_f64()
    );
    println!("Scratch directory: {}\n", cfg.scratch_root.display());

    let rounds: Vec<Round> = (1..=cfg.rounds).map(|round| run_round(&cfg, round, &mut scratch)).collect();

    eprintln!("recovery: building a {} MiB log", cfg.recovery_log_bytes >> 20);
    let recovery_dir = cfg.scratch_dir();
    let recovery = run_recovery(&cfg, recovery_dir.path());
    scratch.push(recovery_dir);
    let load_avg_at_end = load_avg();

    // Tables and targets use the same rounds: those not disturbed by other load (see `Round::disturbance`).
    let judged = rounds_for_targets(&rounds);
    match undisturbed_rounds(&rounds).len() {
        0 => println!("Every round was disturbed by other load: the tables use them all and are unreliable.\n"),
        n => println!("Tables use the {n} of {} round(s) not disturbed by other load.\n", rounds.len()),
    }
    print_floor(&judged);
    print_appends(&judged);
    print_rounds(&rounds);
    print_recovery(&cfg, &recovery);
    print_targets(&rounds, &recovery);
    println!("Load average at the end: {load_avg_at_end}");
}
