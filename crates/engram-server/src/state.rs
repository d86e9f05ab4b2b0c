//! What every handler shares, and the two ways handlers reach the engine: reads on a snapshot, on
//! the blocking thread pool (a scan or a search is CPU work of unbounded length, which must not
//! hold an async worker), and commits, awaited on the request's task (`commit_async`: the task
//! yields while the log syncs, and concurrent commits share group commits).

use crate::config::Config;
use crate::embedder::Embedder;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use engram_core::{CommitInfo, Database, Lsn, Snapshot, SyncPolicy, Transaction};
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::{IntoParams, ToSchema};

/// Conflicts on single-purpose endpoints (two writers fixing a namespace's dimension at once)
/// are retried this many times before a 409.
const COMMIT_ATTEMPTS: u32 = 10;

#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Database>,
    pub config: Arc<Config>,
    /// `None`: memories are stored without embeddings unless given one; search is keyword-only.
    pub embedder: Option<Arc<Embedder>>,
    pub metrics: Arc<Metrics>,
    /// Set when the server shuts down: change-feed streams end so connections can close.
    pub shutting_down: Arc<AtomicBool>,
    /// One permit per open change-feed stream (`limits.max_feed_streams`).
    pub feed_streams: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the server shuts down: open MCP sessions and streams end. Behind an `Arc`
    /// because the state is cloned several times per request, and cloning or dropping a
    /// `CancellationToken` takes a lock shared by every clone.
    pub mcp_shutdown: Arc<tokio_util::sync::CancellationToken>,
}

impl AppState {
    pub fn new(db: Database, config: Config, embedder: Option<Embedder>) -> AppState {
        let feed_streams = Arc::new(tokio::sync::Semaphore::new(config.limits.max_feed_streams));
        AppState {
            feed_streams,
            db: Arc::new(db),
            config: Arc::new(config),
            embedder: embedder.map(Arc::new),
            metrics: Arc::new(Metrics::new()),
            shutting_down: Arc::new(AtomicBool::new(false)),
            mcp_shutdown: Arc::new(tokio_util::sync::CancellationToken::new()),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Runs `work` on the blocking pool.
    pub async fn blocking<T: Send + 'static>(&self, work: impl FnOnce(&Database) -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| ApiError::internal(format!("request worker failed: {e}")))?
    }

    /// Runs `read` on a snapshot: the current one, or the one `as_of` names.
    pub async fn read<T: Send + 'static>(
        &self,
        as_of: Option<AsOf>,
        read: impl FnOnce(&Snapshot) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        self.blocking(move |db| {
            let snapshot = match as_of {
                None => db.snapshot(),
                Some(AsOf::Lsn(lsn)) => db.as_of(lsn)?,
                Some(AsOf::TimeMs(ms)) => db.as_of_time(ms)?,
            };
            read(&snapshot)
        })
        .await
    }

    /// Runs `work` in a transaction and commits it with `durability`, retrying write-write
    /// conflicts; `work` runs again on each attempt, so it must only read and write through the
    /// transaction. An error from `work` aborts: nothing is written. Returns once the commit is
    /// durable (as `durability` asks) and visible.
    ///
    /// Runs on the request's task, not the blocking pool: `work` only buffers changes, and
    /// `commit_async` queues the commit in the log and awaits its group commit without holding a
    /// thread (docs/architecture.md, "Async commits"), so a request costs no hand-off to a pool
    /// thread and back. A commit whose request is dropped after it was logged still becomes
    /// durable and visible: engram-core finishes it (`Transaction::commit_async`).
    pub async fn commit<T>(
        &self,
        durability: Durability,
        mut work: impl FnMut(&mut Transaction) -> ApiResult<T>,
    ) -> ApiResult<(T, CommitInfo)> {
        let started = Instant::now();
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let mut txn = self.db.begin();
            txn.set_durability(durability.policy());
            let value = match work(&mut txn) {
                Ok(value) => value,
                Err(e) => break Err(e),
            };
            match txn.commit_async().await {
                Ok(info) => break Ok((value, info)),
                Err(e) if e.is_conflict() && attempt < COMMIT_ATTEMPTS => {
                    // The bounded, growing pause of `Database::run`. (tokio's timer rounds it up
                    // to its 1 ms resolution: a conflict here is rare, e.g. racing first inserts
                    // fixing a namespace's dimension.)
                    tokio::time::sleep(Duration::from_micros(50 * u64::from(attempt.min(20)))).await;
                }
                Err(e) => break Err(ApiError::from(e)),
            }
        };
        match &result {
            Ok(_) => {
                self.metrics.commits.inc();
                self.metrics.commit_latency.observe(started.elapsed().as_secs_f64());
            }
            Err(_) => self.metrics.commit_failures.inc(),
        }
        result
    }
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// After fdatasync: the write survives a crash or power loss (the default).
    #[default]
    Always,
    /// After the write reached the operating system: it survives a crash of the server but a
    /// power loss may lose it. A clean shutdown syncs it. Not in the change feed until synced.
    Buffered,
}

impl Durability {
    pub fn policy(self) -> SyncPolicy {
        match self {
            Durability::Always => SyncPolicy::Always,
            Durability::Buffered => SyncPolicy::Never,
        }
    }
}

/// `?durability=` on every write endpoint.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    /// `always` (default): acknowledged once durable; `buffered`: once written to the OS.
    #[serde(default)]
    pub durability: Durability,
}

/// A point in the past to read at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Lsn(Lsn),
    TimeMs(u64),
}

impl AsOf {
    /// An LSN (digits) or an RFC 3339 time (`2026-11-25T14:00:00Z`).
    pub fn parse(text: &str) -> ApiResult<AsOf> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(AsOf::Lsn)
                .map_err(|_| ApiError::bad_request("bad_as_of", format!("as_of {text:?} is not a valid LSN")));
        }
        let time = chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| ApiError::bad_request("bad_as_of", format!("as_of {text:?} is neither an LSN nor an RFC 3339 time: {e}")))?;
        let ms = u64::try_from(time.timestamp_millis())
            .map_err(|_| ApiError::bad_request("bad_as_of", format!("as_of {text:?} is before 1970")))?;
        Ok(AsOf::TimeMs(ms))
    }

    pub fn parse_opt(text: Option<&str>) -> ApiResult<Option<AsOf>> {
        text.map(AsOf::parse).transpose()
    }
}

/// `?as_of=` on reads.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// Read as of this LSN (digits) or RFC 3339 time; absent: the current state.
    pub as_of: Option<String>,
}

impl ReadParams {
    pub fn as_of(&self) -> ApiResult<Option<AsOf>> {
        AsOf::parse_opt(self.as_of.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::{DatabaseOptions, KvReads, KvValue};
    use std::future::Future;
    use std::task::Poll;

    /// hyper drops a handler when its client disconnects. A commit dropped after it was logged
    /// must still become visible (it is durable, and the change feed will show it), even when no
    /// later commit comes to apply it.
    #[test]
    fn a_commit_dropped_after_it_was_logged_still_becomes_visible() {
        let dir = tempfile::tempdir().unwrap();
        let db = engram_core::Database::open(dir.path(), DatabaseOptions::default()).unwrap();
        let state = AppState::new(db, Config::default(), None);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // The first poll logs the commit and nearly always finds it waiting for its
            // fdatasync; a commit already done by then is not the case under test.
            for attempt in 0..100u64 {
                let key = format!("k{attempt}");
                let value = KvValue::Json(serde_json::json!(attempt));
                let mut commit = Box::pin(state.commit(Durability::Always, |txn| Ok(txn.kv_put("agent", key.as_bytes(), value.clone())?)));
                let first_poll = std::future::poll_fn(|cx| Poll::Ready(commit.as_mut().poll(cx))).await;
                if first_poll.is_ready() {
                    continue;
                }
                drop(commit);
                let deadline = Instant::now() + Duration::from_secs(10);
                while state.db.snapshot().kv_get("agent", key.as_bytes()).unwrap().is_none() {
                    assert!(Instant::now() < deadline, "the abandoned commit never became visible");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                return;
            }
            panic!("every commit was done at its first poll: the abandoned case was never reached");
        });
    }

    #[test]
    fn as_of_takes_lsns_and_rfc3339_times() {
        assert_eq!(AsOf::parse("42").unwrap(), AsOf::Lsn(42));
        assert_eq!(AsOf::parse("1970-01-01T00:00:01Z").unwrap(), AsOf::TimeMs(1000));
        assert_eq!(AsOf::parse("1970-01-01T01:00:01+01:00").unwrap(), AsOf::TimeMs(1000));
        for bad in ["", "-1", "99999999999999999999999", "yesterday", "1969-12-31T23:59:59Z"] {
            assert_eq!(AsOf::parse(bad).unwrap_err().code, "bad_as_of", "{bad:?}");
        }
    }
}
