//! Key/value: get, put, delete, prefix and range scans, history. Keys are UTF-8 text in the
//! path (percent-encoded as needed); values are `{"json": ...}` or `{"hex": "..."}`.

use crate::auth::Caller;
use crate::dto::{key_text, HistoryBody, KvValueBody};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::state::{AppState, AsOf, ReadParams, WriteParams};
use axum::extract::State;
use axum::http::StatusCode;
use engram_core::{KvReads, Lsn, ReadView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KvItem {
    pub key: String,
    /// `utf8`, or `hex` for a key that is not UTF-8 (written through the Rust API).
    pub key_encoding: String,
    pub value: KvValueBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KvRead {
    pub key: String,
    pub value: KvValueBody,
    /// LSN of the current version: what a precondition names.
    pub version: Lsn,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KvDeleted {
    pub lsn: Lsn,
    pub existed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KvScan {
    pub items: Vec<KvItem>,
    pub read_lsn: Lsn,
    /// Set when `limit` cut the scan short: pass it as `from` (with the same `to` and `as_of`
    /// = `read_lsn`) to continue.
    pub next_from: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScanParams {
    /// Keys starting with this (not with `from`/`to`).
    pub prefix: Option<String>,
    /// Keys at or after this.
    pub from: Option<String>,
    /// Keys before this.
    pub to: Option<String>,
    /// At most this many items (default and maximum: `limits.max_scan_items`).
    pub limit: Option<usize>,
    pub as_of: Option<String>,
}

fn check_key(key: &str) -> ApiResult<()> {
    if key.is_empty() {
        return Err(ApiError::bad_request("invalid_name", "the key is empty"));
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/kv/{key}", tag = "kv",
    params(("ns" = String, Path, description = "Namespace"), ("key" = String, Path, description = "Key (may contain '/')"), ReadParams),
    responses((status = 200, body = KvRead), (status = 404, body = ErrorBody)))]
pub async fn kv_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((ns, key)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult<ApiJson<KvRead>> {
    caller.read(&ns)?;
    check_key(&key)?;
    let as_of = params.as_of()?;
    state
        .read(as_of, move |s| {
            let value = s.kv_get(&ns, key.as_bytes())?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("key {key:?} not found in namespace {ns:?}"),
                )
            })?;
            let version = s.kv_history(&ns, key.as_bytes())?.last().map_or(0, |v| v.lsn);
            Ok(ApiJson(KvRead {
                key,
                value: value.into(),
                version,
            }))
        })
        .await
}

#[utoipa::path(put, path = "/v1/namespaces/{ns}/kv/{key}", tag = "kv",
    params(("ns" = String, Path, description = "Namespace"), ("key" = String, Path, description = "Key"), WriteParams),
    request_body = KvValueBody,
    responses((status = 200, body = crate::dto::WriteResult), (status = 400, body = ErrorBody)))]
pub async fn kv_put(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((ns, key)): ApiPath<(String, String)>,
    ApiQuery(write): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<KvValueBody>,
) -> ApiResult<ApiJson<crate::dto::WriteResult>> {
    caller.write(&ns)?;
    check_key(&key)?;
    let value = body.into_value()?;
    let (_, info) = state
        .commit(write.durability, move |txn| Ok(txn.kv_put(&ns, key.as_bytes(), value.clone())?))
        .await?;
    Ok(ApiJson(crate::dto::WriteResult { lsn: info.lsn }))
}

#[utoipa::path(delete, path = "/v1/namespaces/{ns}/kv/{key}", tag = "kv",
    params(("ns" = String, Path, description = "Namespace"), ("key" = String, Path, description = "Key"), WriteParams),
    responses((status = 200, body = KvDeleted), (status = 400, body = ErrorBody)))]
pub async fn kv_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((ns, key)): ApiPath<(String, String)>,
    ApiQuery(write): ApiQuery<WriteParams>,
) -> ApiResult<ApiJson<KvDeleted>> {
    caller.write(&ns)?;
    check_key(&key)?;
    let (existed, info) = state
        .commit(write.durability, move |txn| Ok(txn.kv_delete(&ns, key.as_bytes())?))
        .await?;
    Ok(ApiJson(KvDeleted { lsn: info.lsn, existed }))
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/kv", tag = "kv",
    params(("ns" = String, Path, description = "Namespace"), ScanParams),
    responses((status = 200, body = KvScan), (status = 400, body = ErrorBody)))]
pub async fn kv_scan(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(params): ApiQuery<ScanParams>,
) -> ApiResult<ApiJson<KvScan>> {
    caller.read(&ns)?;
    let max = state.config.limits.max_scan_items;
    let limit = params.limit.unwrap_or(max);
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request("bad_limit", format!("limit must be between 1 and {max}")));
    }
    if params.prefix.is_some() && (params.from.is_some() || params.to.is_some()) {
        return Err(ApiError::bad_request("bad_query", "give either prefix, or from/to, not both"));
    }
    let as_of = AsOf::parse_opt(params.as_of.as_deref())?;
    state
        .read(as_of, move |s| {
            let items = match &params.prefix {
                Some(prefix) => s.kv_scan_prefix(&ns, prefix.as_bytes())?,
                None => s.kv_scan_range(
                    &ns,
                    params.from.as_deref().unwrap_or("").as_bytes(),
                    params.to.as_deref().map(str::as_bytes),
                )?,
            };
            let next_from = items.get(limit).map(|(k, _)| key_text(k).0);
            let items = items
                .into_iter()
                .take(limit)
                .map(|(k, v)| {
                    let (key, encoding) = key_text(&k);
                    KvItem {
                        key,
                        key_encoding: encoding.to_string(),
                        value: v.into(),
                    }
                })
                .collect();
            Ok(ApiJson(KvScan {
                items,
                read_lsn: s.read_lsn(),
                next_from,
            }))
        })
        .await
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/kv_history/{key}", tag = "kv",
    params(("ns" = String, Path, description = "Namespace"), ("key" = String, Path, description = "Key"), ReadParams),
    responses((status = 200, body = HistoryBody), (status = 404, body = ErrorBody)))]
pub async fn kv_history(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((ns, key)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult<ApiJson<HistoryBody>> {
    caller.read(&ns)?;
    check_key(&key)?;
    let as_of = params.as_of()?;
    state
        .read(as_of, move |s| {
            let versions = s.kv_history(&ns, key.as_bytes())?;
            if versions.is_empty() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("key {key:?} has no history in {ns:?}"),
                ));
            }
            Ok(ApiJson(HistoryBody::from_versions(versions)))
        })
        .await
}
