//! Counters kept by the log, and the snapshot `Wal::stats()` returns.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const BUCKETS: usize = 48;

/// Latencies in power-of-two nanosecond buckets: bucket i holds [2^(i-1), 2^i) ns.
#[derive(Debug)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    total_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            total_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let bucket = (64 - ns.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.total_ns.fetch_add(ns, Relaxed);
        self.max_ns.fetch_max(ns, Relaxed);
    }

    /// Upper bound of the bucket holding the q-quantile, in microseconds.
    fn quantile_us(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return (1u64 << i) as f64 / 1000.0;
            }
        }
        self.max_ns.load(Relaxed) as f64 / 1000.0
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub appends: AtomicU64,
    pub appended_bytes: AtomicU64,
    pub groups: AtomicU64,
    pub syncs: AtomicU64,
    pub records_synced: AtomicU64,
    pub rotations: AtomicU64,
    pub rotation_waits: AtomicU64,
    pub segments_recycled: AtomicU64,
    pub gate_rewaits: AtomicU64,
    pub sync_latency: Histogram,
}

/// A snapshot of the log's counters since it was opened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WalStats {
    pub appends: u64,
    /// Payload bytes appended (framing excluded).
    pub appended_bytes: u64,
    /// Write batches issued by group-commit leaders.
    pub groups: u64,
    /// fdatasync calls on segment files (segment rotation and preparation included).
    pub syncs: u64,
    /// Records made durable per fdatasync, on average.
    pub records_per_sync: f64,
    pub sync_latency_avg_us: f64,
    /// Approximate (power-of-two bucket upper bounds).
    pub sync_latency_p50_us: f64,
    pub sync_latency_p99_us: f64,
    pub sync_latency_max_us: f64,
    pub rotations: u64,
    /// Rotations that had to wait for a segment to be prepared.
    pub rotation_waits: u64,
    /// Segments retired by prefix truncation and kept to be prepared again (the rest are deleted).
    pub segments_recycled: u64,
    /// Waits by appender threads that a round woke without reaching their records (its group
    /// was cut short by `max_group_bytes`, or it wrote without syncing), after which they waited
    /// for a later round. Near zero when every round takes everything queued.
    pub gate_rewaits: u64,
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub durable_lsn: u64,
    pub segments: usize,
}

impl Counters {
    pub fn snapshot(&self) -> WalStats {
        let syncs = self.syncs.load(Relaxed);
        let h = &self.sync_latency;
        WalStats {
            appends: self.appends.load(Relaxed),
            appended_bytes: self.appended_bytes.load(Relaxed),
            groups: self.groups.load(Relaxed),
            syncs,
            records_per_sync: if syncs == 0 {
                0.0
            } else {
                self.records_synced.load(Relaxed) as f64 / syncs as f64
            },
            sync_latency_avg_us: if syncs == 0 {
                0.0
            } else {
                h.total_ns.load(Relaxed) as f64 / syncs as f64 / 1000.0
            },
            sync_latency_p50_us: h.quantile_us(0.5),
            sync_latency_p99_us: h.quantile_us(0.99),
            sync_latency_max_us: h.max_ns.load(Relaxed) as f64 / 1000.0,
            rotations: self.rotations.load(Relaxed),
            rotation_waits: self.rotation_waits.load(Relaxed),
            segments_recycled: self.segments_recycled.load(Relaxed),
            gate_rewaits: self.gate_rewaits.load(Relaxed),
            ..Default::default()
        }
    }
}
