//! Prometheus metrics. The `prometheus` crate is used rather than `metrics` + an exporter because
//! it keeps figures in a registry owned by each server instead of a process-wide recorder: tests
//! run several servers in one process, and each must report only its own figures.
//!
//! Commits, their latency and checkpoint durations are measured here, around the calls the server
//! makes; fsyncs, group-commit size and log bytes come from the log's own counters, and the search
//! indexer's lag, queue and held commits from `Database::index_stats`, read at scrape time.

use engram_core::Database;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};
use std::sync::Mutex;
use std::time::Duration;

pub struct Metrics {
    registry: Registry,
    pub commits: IntCounter,
    pub commit_failures: IntCounter,
    pub commit_latency: Histogram,
    pub checkpoint_duration: Histogram,
    replay_duration_seconds: prometheus::Gauge,
    wal_syncs: IntCounter,
    wal_groups: IntCounter,
    wal_appends: IntCounter,
    wal_appended_bytes: IntCounter,
    wal_records_per_sync: prometheus::Gauge,
    wal_durable_lsn: IntGauge,
    wal_segments: IntGauge,
    visible_lsn: IntGauge,
    index_lag_lsns: IntGauge,
    index_queued_changes: IntGauge,
    index_queued_vector_bytes: IntGauge,
    index_vectors: IntGauge,
    index_throttled_commits: IntCounter,
    /// The log's counters at the previous scrape (they are totals; counters take increments).
    last_wal: Mutex<engram_wal::WalStats>,
    /// The indexer's throttled-commit total at the previous scrape.
    last_throttled_commits: Mutex<u64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let commit_buckets = prometheus::exponential_buckets(0.000_05, 2.0, 16).expect("valid buckets");
        let checkpoint_buckets = prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets");
        let m = Metrics {
            commits: IntCounter::new("engram_commits_total", "Transactions committed through the API").expect("metric"),
            commit_failures: IntCounter::new(
                "engram_commit_failures_total",
                "Transactions that did not commit (refused input, conflicts, storage errors)",
            )
            .expect("metric"),
            commit_latency: Histogram::with_opts(
                HistogramOpts::new("engram_commit_latency_seconds", "Time from begin to acknowledged commit").buckets(commit_buckets),
            )
            .expect("metric"),
            checkpoint_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "engram_checkpoint_duration_seconds",
                    "Duration of checkpoints requested through the API",
                )
                .buckets(checkpoint_buckets),
            )
            .expect("metric"),
            replay_duration_seconds: prometheus::Gauge::new(
                "engram_replay_duration_seconds",
                "Time the database took to open (checkpoint load and log replay)",
            )
            .expect("metric"),
            wal_syncs: IntCounter::new("engram_wal_fsyncs_total", "fdatasync calls on log segments").expect("metric"),
            wal_groups: IntCounter::new("engram_wal_groups_total", "Group-commit write batches").expect("metric"),
            wal_appends: IntCounter::new("engram_wal_records_total", "Log records appended").expect("metric"),
            wal_appended_bytes: IntCounter::new("engram_wal_bytes_total", "Log payload bytes appended").expect("metric"),
            wal_records_per_sync: prometheus::Gauge::new(
                "engram_wal_group_size_records",
                "Records made durable per fdatasync, averaged since open (group-commit size)",
            )
            .expect("metric"),
            wal_durable_lsn: IntGauge::new("engram_wal_durable_lsn", "Highest durable LSN").expect("metric"),
            wal_segments: IntGauge::new("engram_wal_segments", "Log segment files").expect("metric"),
            visible_lsn: IntGauge::new("engram_visible_lsn", "Highest LSN visible to reads").expect("metric"),
            index_lag_lsns: IntGauge::new(
                "engram_index_lag_lsns",
                "How far the search indexes trail the visible state, in LSNs (searches scan the queued rest exactly)",
            )
            .expect("metric"),
            index_queued_changes: IntGauge::new(
                "engram_index_queued_changes",
                "Memory versions committed and queued for the search indexer",
            )
            .expect("metric"),
            index_queued_vector_bytes: IntGauge::new(
                "engram_index_queued_vector_bytes",
                "Bytes of embeddings in the changes queued for the search indexer",
            )
            .expect("metric"),
            index_vectors: IntGauge::new(
                "engram_index_vectors",
                "Vectors in the search graphs (one per memory version with an embedding)",
            )
            .expect("metric"),
            index_throttled_commits: IntCounter::new(
                "engram_index_throttled_commits_total",
                "Commits held after they were durable because the search indexer's queue was over its bound",
            )
            .expect("metric"),
            last_wal: Mutex::new(engram_wal::WalStats::default()),
            last_throttled_commits: Mutex::new(0),
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.commits.clone()),
            Box::new(m.commit_failures.clone()),
            Box::new(m.commit_latency.clone()),
            Box::new(m.checkpoint_duration.clone()),
            Box::new(m.replay_duration_seconds.clone()),
            Box::new(m.wal_syncs.clone()),
            Box::new(m.wal_groups.clone()),
            Box::new(m.wal_appends.clone()),
            Box::new(m.wal_appended_bytes.clone()),
            Box::new(m.wal_records_per_sync.clone()),
            Box::new(m.wal_durable_lsn.clone()),
            Box::new(m.wal_segments.clone()),
            Box::new(m.visible_lsn.clone()),
            Box::new(m.index_lag_lsns.clone()),
            Box::new(m.index_queued_changes.clone()),
            Box::new(m.index_queued_vector_bytes.clone()),
            Box::new(m.index_vectors.clone()),
            Box::new(m.index_throttled_commits.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    pub fn set_replay_duration(&self, open: Duration) {
        self.replay_duration_seconds.set(open.as_secs_f64());
    }

    /// The text exposition, after bringing the log's figures up to date.
    pub fn render(&self, db: &Database) -> String {
        let now = db.wal_stats();
        {
            let mut last = self.last_wal.lock().unwrap_or_else(|p| p.into_inner());
            self.wal_syncs.inc_by(now.syncs.saturating_sub(last.syncs));
            self.wal_groups.inc_by(now.groups.saturating_sub(last.groups));
            self.wal_appends.inc_by(now.appends.saturating_sub(last.appends));
            self.wal_appended_bytes
                .inc_by(now.appended_bytes.saturating_sub(last.appended_bytes));
            *last = now.clone();
        }
        self.wal_records_per_sync.set(now.records_per_sync);
        self.wal_durable_lsn.set(i64::try_from(now.durable_lsn).unwrap_or(i64::MAX));
        self.wal_segments.set(i64::try_from(now.segments).unwrap_or(i64::MAX));
        self.visible_lsn.set(i64::try_from(db.visible_lsn()).unwrap_or(i64::MAX));
        let index = db.index_stats();
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.index_lag_lsns.set(gauge(index.lag_lsns));
        self.index_queued_changes.set(gauge(index.queued_changes as u64));
        self.index_queued_vector_bytes.set(gauge(index.queued_vector_bytes as u64));
        self.index_vectors.set(gauge(index.vectors as u64));
        {
            let mut last = self.last_throttled_commits.lock().unwrap_or_else(|p| p.into_inner());
            self.index_throttled_commits.inc_by(index.throttled_commits.saturating_sub(*last));
            *last = index.throttled_commits;
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
