//! Operations: health, statistics, metrics, on-demand checkpoints.

use crate::auth::Caller;
use crate::error::{ApiJson, ApiResult, ErrorBody};
use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use engram_core::Lsn;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `stopped` after a storage failure (the database must be reopened).
    pub status: String,
    pub visible_lsn: Lsn,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogStats {
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub durable_lsn: Lsn,
    pub segments: usize,
    pub appends: u64,
    pub appended_bytes: u64,
    pub fsyncs: u64,
    pub records_per_fsync: f64,
    pub fsync_p50_us: f64,
    pub fsync_p99_us: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmbedderInfo {
    pub endpoint: String,
    pub model: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub visible_lsn: Lsn,
    pub last_checkpoint_lsn: Option<Lsn>,
    pub history_horizon_lsn: Lsn,
    pub log: LogStats,
    /// Null when no embedder is configured.
    pub embedder: Option<EmbedderInfo>,
    /// How memories can be found: with no embedder, text-only memories have no vector and
    /// search over them is keyword-only.
    pub search: String,
    pub commits: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckpointResult {
    /// LSN the newest checkpoint covers.
    pub lsn: Lsn,
    /// False when nothing was committed since the previous checkpoint.
    pub written: bool,
    pub file_bytes: u64,
    pub keys: u64,
    pub versions: u64,
    pub log_kept_from: Lsn,
    pub log_segments_removed: usize,
    /// False when the search indexes had not reached the checkpoint within 30 s (a backlog, or
    /// a rebuild after open): its index file is written by a later checkpoint call.
    pub index_file_written: bool,
    pub elapsed_ms: f64,
}

#[utoipa::path(get, path = "/healthz", tag = "admin", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    // A database stopped by a failed fsync refuses writes: a zero-write probe finds out (an
    // empty transaction logs nothing, so its commit returns at once).
    let running = state.db.begin().commit_async().await.is_ok();
    let health = Health {
        status: if running { "ok" } else { "stopped" }.to_string(),
        visible_lsn: state.db.visible_lsn(),
    };
    let status = if running {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, ApiJson(health))
}

#[utoipa::path(get, path = "/v1/stats", tag = "admin", responses((status = 200, body = Stats)))]
pub async fn stats(State(state): State<AppState>, _caller: Caller) -> ApiResult<ApiJson<Stats>> {
    let db = &state.db;
    let w = db.wal_stats();
    Ok(ApiJson(Stats {
        visible_lsn: db.visible_lsn(),
        last_checkpoint_lsn: db.last_checkpoint_lsn(),
        history_horizon_lsn: db.history_horizon_lsn(),
        log: LogStats {
            first_lsn: w.first_lsn,
            last_lsn: w.last_lsn,
            durable_lsn: w.durable_lsn,
            segments: w.segments,
            appends: w.appends,
            appended_bytes: w.appended_bytes,
            fsyncs: w.syncs,
            records_per_fsync: w.records_per_sync,
            fsync_p50_us: w.sync_latency_p50_us,
            fsync_p99_us: w.sync_latency_p99_us,
        },
        embedder: state.embedder.as_ref().map(|e| EmbedderInfo {
            endpoint: e.endpoint().to_string(),
            model: e.model().to_string(),
        }),
        search: match state.embedder {
            Some(_) => "text memories are embedded on write".to_string(),
            None => "keyword-only for text memories: no embedder is configured".to_string(),
        },
        commits: state.metrics.commits.get(),
    }))
}

#[utoipa::path(post, path = "/v1/admin/checkpoint", tag = "admin",
    responses((status = 200, body = CheckpointResult), (status = 403, body = ErrorBody)))]
pub async fn checkpoint(State(state): State<AppState>, caller: Caller) -> ApiResult<ApiJson<CheckpointResult>> {
    caller.admin()?;
    let metrics = state.metrics.clone();
    state
        .blocking(move |db| {
            let report = db.checkpoint()?;
            metrics.checkpoint_duration.observe(report.elapsed.as_secs_f64());
            Ok(ApiJson(CheckpointResult {
                lsn: report.lsn,
                written: report.written,
                file_bytes: report.file_bytes,
                keys: report.keys,
                versions: report.versions,
                log_kept_from: report.log_kept_from,
                log_segments_removed: report.log_segments_removed,
                index_file_written: report.index_file_written,
                elapsed_ms: report.elapsed.as_secs_f64() * 1000.0,
            }))
        })
        .await
}

#[utoipa::path(get, path = "/metrics", tag = "admin",
    responses((status = 200, body = String, content_type = "text/plain; version=0.0.4", description = "Prometheus text exposition")))]
pub async fn metrics(State(state): State<AppState>, _caller: Caller) -> impl IntoResponse {
    let text = state.metrics.render(&state.db);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
