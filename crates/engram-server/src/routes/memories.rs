//! Memories: create, read (now or as of an LSN or time), list, patch, delete, history.

use super::check_dimension;
use crate::auth::Caller;
use crate::dto::{
    CreatedMemory, EmbeddingSource, HistoryBody, MemoryList, MemoryRead, NewMemoryBody, PatchMemoryBody, UpdatedMemory, WriteResult,
};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::state::{AppState, ReadParams, WriteParams};
use axum::extract::State;
use axum::http::StatusCode;
use engram_core::{MemoryPatch, MemoryReads, NewMemory};

/// Embeds `text` when the request gave no embedding and an embedder is configured.
pub(crate) async fn embedding_for(state: &AppState, text: &str, given: Option<Vec<f32>>) -> ApiResult<(Option<Vec<f32>>, EmbeddingSource)> {
    if given.is_some() {
        return Ok((given, EmbeddingSource::Given));
    }
    match &state.embedder {
        Some(embedder) if !text.is_empty() => {
            let mut vectors = embedder.embed(&[text.to_string()]).await?;
            Ok((vectors.pop(), EmbeddingSource::Embedded))
        }
        _ => Ok((None, EmbeddingSource::None)),
    }
}

fn not_found(ns: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("memory {id:?} not found in namespace {ns:?}"),
    )
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/memories", tag = "memories",
    params(("ns" = String, Path, description = "Namespace"), WriteParams),
    request_body = NewMemoryBody,
    responses((status = 201, body = CreatedMemory), (status = 400, body = ErrorBody), (status = 502, body = ErrorBody, description = "the embedder failed")))]
pub async fn create_memory(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(write): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<NewMemoryBody>,
) -> ApiResult<(StatusCode, ApiJson<CreatedMemory>)> {
    caller.write(&ns)?;
    engram_core::validate_namespace(&ns)?;
    check_dimension(&state.config.limits, body.embedding.as_ref())?;
    let (embedding, source) = embedding_for(&state, &body.text, body.embedding).await?;
    check_dimension(&state.config.limits, embedding.as_ref())?;
    let memory = NewMemory {
        text: body.text,
        embedding,
        metadata: body.metadata.unwrap_or(serde_json::Value::Null),
    };
    let (id, info) = state
        .commit(write.durability, move |txn| Ok(txn.insert_memory(&ns, memory.clone())?))
        .await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedMemory {
            id,
            lsn: info.lsn,
            embedding: source,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/memories", tag = "memories",
    params(("ns" = String, Path, description = "Namespace"), ReadParams),
    responses((status = 200, body = MemoryList), (status = 400, body = ErrorBody)))]
pub async fn list_memories(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult<ApiJson<MemoryList>> {
    caller.read(&ns)?;
    let as_of = params.as_of()?;
    let max = state.config.limits.max_scan_items;
    state
        .read(as_of, move |s| {
            let memories = s.list_memories(&ns)?;
            if memories.len() > max {
                return Err(ApiError::bad_request(
                    "too_many_items",
                    format!(
                        "namespace holds {} memories; listing is limited to {max} (limits.max_scan_items)",
                        memories.len()
                    ),
                ));
            }
            Ok(ApiJson(MemoryList {
                memories: memories.into_iter().map(Into::into).collect(),
                read_lsn: engram_core::ReadView::read_lsn(s),
            }))
        })
        .await
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/memories/{id}", tag = "memories",
    params(("ns" = String, Path, description = "Namespace"), ("id" = String, Path, description = "Memory id"), ReadParams),
    responses((status = 200, body = MemoryRead), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody, description = "as_of below the history horizon")))]
pub async fn get_memory(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((ns, id)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult<ApiJson<MemoryRead>> {
    caller.read(&ns)?;
    let as_of = params.as_of()?;
    state
        .read(as_of, move |s| {
            let memory = s.get_memory(&ns, &id)?.ok_or_else(|| not_found(&ns, &id))?;
            let version = s.memory_history(&ns, &id)?.last().map_or(0, |v| v.lsn);
            Ok(ApiJson(MemoryRead {
                memory: memory.into(),
                version,
            }))
        })
        .await
}

#[utoipa::path(patch, path = "/v1/namespaces/{ns}/memories/{id}", tag = "memories",
    params(("ns" = String, Path, description = "Namespace"), ("id" = String, Path, description = "Memory id"), WriteParams),
    request_body = PatchMemoryBody,
    responses((status = 200, body = UpdatedMemory), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_memory(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((ns, id)): ApiPath<(String, String)>,
    ApiQuery(write): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<PatchMemoryBody>,
) -> ApiResult<ApiJson<UpdatedMemory>> {
    caller.write(&ns)?;
    engram_core::validate_namespace(&ns)?;
    check_dimension(&state.config.limits, body.embedding.as_ref())?;
    // New text without a new embedding is re-embedded, so the vector keeps matching the text.
    let embedding = match (&body.text, body.embedding) {
        (Some(text), None) => embedding_for(&state, text, None).await?.0,
        (_, given) => given,
    };
    let patch = MemoryPatch {
        text: body.text,
        embedding,
        metadata: body.metadata,
    };
    let (memory, info) = state
        .commit(write.durability, move |txn| Ok(txn.update_memory(&ns, &id, patch.clone())?))
        .await?;
    Ok(ApiJson(UpdatedMemory {
        memory: memory.into(),
        lsn: info.lsn,
    }))
}

#[utoipa::path(delete, path = "/v1/namespaces/{ns}/memories/{id}", tag = "memories",
    params(("ns" = String, Path, description = "Namespace"), ("id" = String, Path, description = "Memory id"), WriteParams),
    responses((status = 200, body = WriteResult), (status = 404, body = ErrorBody)))]
pub async fn delete_memory(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((ns, id)): ApiPath<(String, String)>,
    ApiQuery(write): ApiQuery<WriteParams>,
) -> ApiResult<ApiJson<WriteResult>> {
    caller.write(&ns)?;
    let (_, info) = state.commit(write.durability, move |txn| Ok(txn.delete_memory(&ns, &id)?)).await?;
    Ok(ApiJson(WriteResult { lsn: info.lsn }))
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/memories/{id}/history", tag = "memories",
    params(("ns" = String, Path, description = "Namespace"), ("id" = String, Path, description = "Memory id"), ReadParams),
    responses((status = 200, body = HistoryBody), (status = 404, body = ErrorBody)))]
pub async fn memory_history(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((ns, id)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> ApiResult<ApiJson<HistoryBody>> {
    caller.read(&ns)?;
    let as_of = params.as_of()?;
    state
        .read(as_of, move |s| {
            let versions = s.memory_history(&ns, &id)?;
            if versions.is_empty() {
                return Err(not_found(&ns, &id));
            }
            Ok(ApiJson(HistoryBody::from_versions(versions)))
        })
        .await
}
