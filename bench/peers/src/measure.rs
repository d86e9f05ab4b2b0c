//! Closed-loop load from N threads with a warm-up, and the figures every workload reports.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warm_up: Duration,
    pub window: Duration,
}

impl Timing {
    /// ENGRAM_BENCH_QUICK=1: short points for a smoke run (about 2 minutes in all).
    pub fn from_env() -> Timing {
        if quick() {
            Timing {
                warm_up: Duration::from_millis(100),
                window: Duration::from_millis(300),
            }
        } else {
            Timing {
                warm_up: Duration::from_millis(300),
                window: Duration::from_secs(2),
            }
        }
    }
}

pub fn quick() -> bool {
    std::env::var_os("ENGRAM_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    /// Operations that finished inside the measured window.
    pub ops: u64,
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Operations that returned an error (not counted in `ops`).
    pub errors: u64,
    pub first_error: Option<String>,
}

fn percentile_us(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6
}

/// Runs `op(writer, seq)` from `threads` threads in a closed loop: a warm-up, then the window.
/// Only operations that start and finish inside the window count.
pub fn drive(threads: usize, timing: Timing, op: impl Fn(usize, u64) -> Result<(), String> + Sync) -> Figures {
    let measuring = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let errors = AtomicU64::new(0);
    let first_error = std::sync::Mutex::new(None);
    let mut window = Duration::ZERO;
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let (measuring, stop, op, errors, first_error) = (&measuring, &stop, &op, &errors, &first_error);
                s.spawn(move || {
                    let mut mine = Vec::with_capacity(4096);
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let counted = measuring.load(Ordering::Relaxed);
                        let started = Instant::now();
                        let result = op(w, seq);
                        let took = started.elapsed();
                        seq += 1;
                        match result {
                            Ok(()) if counted && !stop.load(Ordering::Relaxed) => mine.push(took),
                            Ok(()) => {}
                            Err(e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                first_error.lock().unwrap().get_or_insert(e);
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        std::thread::sleep(timing.warm_up);
        measuring.store(true, Ordering::Relaxed);
        let window_started = Instant::now();
        std::thread::sleep(timing.window);
        stop.store(true, Ordering::Relaxed);
        window = window_started.elapsed();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a load thread panicked"))
            .collect()
    });
    latencies.sort_unstable();
    Figures {
        ops: latencies.len() as u64,
        per_second: latencies.len() as f64 / window.as_secs_f64(),
        p50_us: percentile_us(&latencies, 0.5),
        p99_us: percentile_us(&latencies, 0.99),
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.into_inner().unwrap(),
    }
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
