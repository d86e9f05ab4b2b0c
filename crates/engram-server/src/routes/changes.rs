//! The change feed (`GET /v1/changes`): committed changes in LSN order, streamed as NDJSON (one
//! JSON event per line) or, with `Accept: text/event-stream`, as server-sent events (`id` is the
//! LSN). By default the stream follows the log and waits for new commits; `follow=false` ends it
//! once caught up. Events of one transaction share its LSN and are sent together, and a stream
//! that ends by itself ends at a transaction boundary.
//!
//! Durable cursors (`/v1/cursors`) record how far a consumer got, in the database itself, and
//! hold log truncation like a replication slot. A consumer reads from its cursor, processes
//! events, and advances the cursor to an LSN once it processed every event with that LSN.

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use engram_core::{ChangeEvent, ChangeFeed, Lsn};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};

/// How long a feed thread waits for a commit before it checks whether its client left or the
/// server is stopping.
const FEED_POLL: Duration = Duration::from_millis(200);
/// Events buffered between the feed thread and the connection.
const FEED_BUFFER: usize = 256;

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesParams {
    /// First LSN to return (0 or 1: from the oldest the log holds).
    #[serde(default)]
    pub from_lsn: Lsn,
    /// Only this namespace's changes.
    pub namespace: Option<String>,
    /// Wait for new commits (default true); false ends the stream once caught up.
    pub follow: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CursorChangesParams {
    pub namespace: Option<String>,
    pub follow: Option<bool>,
}

/// One change event (the lines of the NDJSON stream).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangeEventBody {
    pub lsn: Lsn,
    pub txn_id: u64,
    pub commit_ts_ms: u64,
    pub namespace: String,
    /// `put`, `delete` or `event`.
    pub op: String,
    /// `memory`, `entity`, `relation`, `kv`, `meta` or `event`.
    pub kind: String,
    pub key: Option<String>,
    /// `utf8` or `hex`.
    pub key_encoding: String,
    #[schema(value_type = Object)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Object)]
    pub after: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CursorBody {
    pub name: String,
    /// Every change at or below this LSN has been processed by the consumer.
    pub lsn: Lsn,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCursorBody {
    pub name: String,
    /// Starting position (default 0: the consumer has processed nothing yet).
    #[serde(default)]
    pub lsn: Lsn,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvanceCursorBody {
    pub lsn: Lsn,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CursorWritten {
    pub name: String,
    pub lsn: Lsn,
    /// LSN of the commit that recorded the position.
    pub commit_lsn: Lsn,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CursorList {
    pub cursors: Vec<CursorBody>,
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// Moves the blocking feed onto its own thread, which sends events until the client leaves, the
/// server stops, or (without `follow`) the feed catches up.
fn stream_feed(state: &AppState, mut feed: ChangeFeed, follow: bool, sse: bool) -> Response {
    let Ok(permit) = state.feed_streams.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!(
                "{} change-feed streams are open (limits.max_feed_streams); retry later",
                state.config.limits.max_feed_streams
            ),
        )
        .into_response();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<ChangeEvent, String>>(FEED_BUFFER);
    let shutting_down = state.shutting_down.clone();
    let spawned = std::thread::Builder::new().name("engram-feed".into()).spawn(move || loop {
        // Held until the thread ends.
        let _permit = &permit;
        if tx.is_closed() || shutting_down.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let next = if follow { feed.next_blocking(FEED_POLL) } else { feed.next_event() };
        match next {
            Ok(Some(event)) => {
                if tx.blocking_send(Ok(event)).is_err() {
                    return;
                }
            }
            Ok(None) if follow => {}
            Ok(None) => return,
            Err(e) => {
                let _ = tx.blocking_send(Err(e.to_string()));
                return;
            }
        }
    });
    if let Err(e) = spawned {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("cannot start a feed thread: {e}"),
        )
        .into_response();
    }
    let events = ReceiverStream::new(rx);
    if sse {
        let stream = events.map(|item| {
            Ok::<_, Infallible>(match item {
                Ok(event) => Event::default()
                    .id(event.lsn.to_string())
                    .event("change")
                    .data(serde_json::to_string(&event).unwrap_or_default()),
                Err(message) => Event::default()
                    .event("error")
                    .data(serde_json::json!({"code": "feed_failed", "message": message}).to_string()),
            })
        });
        Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
    } else {
        let stream = events.map(|item| {
            let line = match item {
                Ok(event) => serde_json::to_string(&event).unwrap_or_default(),
                // An error ends the stream with one last line in the error shape.
                Err(message) => serde_json::json!({"code": "feed_failed", "message": message}).to_string(),
            };
            Ok::<_, Infallible>(format!("{line}\n"))
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
    }
}

fn feed_access(caller: &Caller, namespace: Option<&str>) -> ApiResult<()> {
    match namespace {
        Some(ns) => {
            engram_core::validate_namespace(ns)?;
            caller.read(ns)
        }
        None => caller.read_all(),
    }
}

#[utoipa::path(get, path = "/v1/changes", tag = "changes",
    params(ChangesParams),
    responses(
        (status = 200, body = ChangeEventBody, content_type = "application/x-ndjson", description = "one event per line; SSE with Accept: text/event-stream"),
        (status = 410, body = ErrorBody, description = "the log no longer holds from_lsn")))]
pub async fn changes(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ChangesParams>,
) -> ApiResult<Response> {
    feed_access(&caller, params.namespace.as_deref())?;
    let namespace = params.namespace.clone();
    let feed = state
        .blocking(move |db| {
            let feed = db.changes(params.from_lsn)?;
            Ok(match &namespace {
                Some(ns) => feed.only_namespace(ns),
                None => feed,
            })
        })
        .await?;
    Ok(stream_feed(&state, feed, params.follow.unwrap_or(true), wants_sse(&headers)))
}

#[utoipa::path(get, path = "/v1/cursors/{name}/changes", tag = "changes",
    params(("name" = String, Path, description = "Cursor name"), CursorChangesParams),
    responses(
        (status = 200, body = ChangeEventBody, content_type = "application/x-ndjson", description = "the changes after the cursor's position"),
        (status = 404, body = ErrorBody)))]
pub async fn cursor_changes(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<CursorChangesParams>,
) -> ApiResult<Response> {
    feed_access(&caller, params.namespace.as_deref())?;
    let namespace = params.namespace.clone();
    let feed = state
        .blocking(move |db| {
            let feed = db.changes_for_cursor(&name)?;
            Ok(match &namespace {
                Some(ns) => feed.only_namespace(ns),
                None => feed,
            })
        })
        .await?;
    Ok(stream_feed(&state, feed, params.follow.unwrap_or(true), wants_sse(&headers)))
}

#[utoipa::path(post, path = "/v1/cursors", tag = "changes", request_body = CreateCursorBody,
    responses((status = 201, body = CursorWritten), (status = 409, body = ErrorBody, description = "the cursor exists")))]
pub async fn create_cursor(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateCursorBody>,
) -> ApiResult<(StatusCode, ApiJson<CursorWritten>)> {
    caller.write_all()?;
    let written = state
        .blocking(move |db| {
            if db.cursor(&body.name)?.is_some() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "exists",
                    format!("cursor {:?} exists", body.name),
                ));
            }
            let info = db.advance_cursor(&body.name, body.lsn)?;
            Ok(CursorWritten {
                name: body.name,
                lsn: body.lsn,
                commit_lsn: info.lsn,
            })
        })
        .await?;
    Ok((StatusCode::CREATED, ApiJson(written)))
}

#[utoipa::path(get, path = "/v1/cursors", tag = "changes", responses((status = 200, body = CursorList)))]
pub async fn list_cursors(State(state): State<AppState>, caller: Caller) -> ApiResult<ApiJson<CursorList>> {
    caller.read_all()?;
    state
        .blocking(|db| {
            Ok(ApiJson(CursorList {
                cursors: db.cursors().into_iter().map(|(name, lsn)| CursorBody { name, lsn }).collect(),
            }))
        })
        .await
}

#[utoipa::path(get, path = "/v1/cursors/{name}", tag = "changes",
    params(("name" = String, Path, description = "Cursor name")),
    responses((status = 200, body = CursorBody), (status = 404, body = ErrorBody)))]
pub async fn get_cursor(State(state): State<AppState>, caller: Caller, ApiPath(name): ApiPath<String>) -> ApiResult<ApiJson<CursorBody>> {
    caller.read_all()?;
    state
        .blocking(move |db| match db.cursor(&name)? {
            Some(lsn) => Ok(ApiJson(CursorBody { name, lsn })),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("cursor {name:?} not found"),
            )),
        })
        .await
}

#[utoipa::path(post, path = "/v1/cursors/{name}/advance", tag = "changes",
    params(("name" = String, Path, description = "Cursor name")), request_body = AdvanceCursorBody,
    responses((status = 200, body = CursorWritten), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody)))]
pub async fn advance_cursor(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<AdvanceCursorBody>,
) -> ApiResult<ApiJson<CursorWritten>> {
    caller.write_all()?;
    state
        .blocking(move |db| {
            if db.cursor(&name)?.is_none() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("cursor {name:?} not found"),
                ));
            }
            let durable = db.wal_stats().durable_lsn;
            if body.lsn > durable {
                return Err(ApiError::bad_request(
                    "bad_lsn",
                    format!("LSN {} is beyond the durable end of the log ({durable})", body.lsn),
                ));
            }
            let info = db.advance_cursor(&name, body.lsn)?;
            Ok(ApiJson(CursorWritten {
                name,
                lsn: body.lsn,
                commit_lsn: info.lsn,
            }))
        })
        .await
}

#[utoipa::path(delete, path = "/v1/cursors/{name}", tag = "changes",
    params(("name" = String, Path, description = "Cursor name")),
    responses((status = 200, body = CursorBody, description = "the cursor's last position"), (status = 404, body = ErrorBody)))]
pub async fn delete_cursor(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<ApiJson<CursorBody>> {
    caller.write_all()?;
    state
        .blocking(move |db| {
            let Some(lsn) = db.cursor(&name)? else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("cursor {name:?} not found"),
                ));
            };
            db.delete_cursor(&name)?;
            Ok(ApiJson(CursorBody { name, lsn }))
        })
        .await
}
