//! Retrieval over HTTP: vector, keyword and hybrid search of memories, BM25 over entities, graph
//! neighbours, and declaring a namespace's vector space. Reads run on a snapshot (now or
//! `as_of`); `min_lsn` first waits, for a bounded time, until the search index holds that LSN.

use super::check_dimension;
use crate::auth::Caller;
use crate::dto::{GraphBody, MemoryBody, MemoryBodyRef, WriteResult};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::state::{AppState, AsOf, WriteParams};
use axum::extract::State;
use engram_core::{Direction, Lsn, Metric, ReadView, SearchHitRef, SearchMode, SearchReads, SearchRequest, SignalScore};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// The longest a request's `min_lsn` waits for the index; past it the answer is 503
/// `index_timeout` (retry later). Bounded so a lagging index cannot pin request threads.
pub const MIN_LSN_WAIT_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchModeBody {
    Vector,
    Keyword,
    Hybrid,
}

impl From<SearchModeBody> for SearchMode {
    fn from(m: SearchModeBody) -> Self {
        match m {
            SearchModeBody::Vector => SearchMode::Vector,
            SearchModeBody::Keyword => SearchMode::Keyword,
            SearchModeBody::Hybrid => SearchMode::Hybrid,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    /// Query text: BM25 terms, and embedded for the vector signal when the server has an
    /// embedder and no `vector` is given.
    pub query: Option<String>,
    /// Query vector, of the namespace's dimension.
    pub vector: Option<Vec<f32>>,
    /// How many hits (1..=1000).
    pub k: usize,
    /// Every top-level field must equal the memory's metadata field (JSON equality).
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Map<String, serde_json::Value>>,
    /// Absent: hybrid when both signals are available, else the one that is.
    pub mode: Option<SearchModeBody>,
    /// HNSW candidate list size (1..=10000; default 128, raised to `k`).
    pub ef_search: Option<usize>,
    /// Search as of this LSN (digits) or RFC 3339 time.
    pub as_of: Option<String>,
    /// Wait (at most 10 s) until the search index holds this LSN (read-your-writes for the index).
    pub min_lsn: Option<Lsn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignalScoreBody {
    /// 1-based rank in that signal's ranking.
    pub rank: usize,
    pub score: f32,
}

impl From<SignalScore> for SignalScoreBody {
    fn from(s: SignalScore) -> Self {
        SignalScoreBody {
            rank: s.rank,
            score: s.score,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchHitBody {
    pub memory: MemoryBody,
    /// The mode's score: vector similarity (negated distance for l2), BM25, or the fused RRF score.
    pub score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<SignalScoreBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<SignalScoreBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchResult {
    pub hits: Vec<SearchHitBody>,
    /// The snapshot searched.
    pub lsn: Lsn,
    /// The mode that ran.
    pub mode: SearchModeBody,
    /// Whether the query vector came from the server's embedder.
    pub embedder_used: bool,
    /// Why the mode differs from what was possible (e.g. keyword-only without an embedder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchEntitiesBody {
    pub query: String,
    /// How many entities (1..=1000).
    pub k: usize,
    pub as_of: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EntityHitBody {
    pub entity: crate::dto::EntityBody,
    /// BM25 over name, type and observations.
    pub score: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchEntitiesResult {
    pub hits: Vec<EntityHitBody>,
    pub lsn: Lsn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DirectionParam {
    /// Relations from the entity.
    #[serde(alias = "outgoing")]
    Out,
    /// Relations to the entity.
    #[serde(alias = "incoming")]
    In,
    #[default]
    Both,
}

impl From<DirectionParam> for Direction {
    fn from(d: DirectionParam) -> Self {
        match d {
            DirectionParam::Out => Direction::Outgoing,
            DirectionParam::In => Direction::Incoming,
            DirectionParam::Both => Direction::Both,
        }
    }
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NeighboursParams {
    /// The entity to start from.
    pub entity: String,
    /// Hops (0..=16; default 1).
    pub depth: Option<usize>,
    /// Comma-separated relation types to follow; absent or empty: all.
    pub relation_types: Option<String>,
    /// `out`, `in` or `both` (default).
    pub direction: Option<DirectionParam>,
    pub as_of: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NeighboursResult {
    #[serde(flatten)]
    pub graph: GraphBody,
    pub lsn: Lsn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricBody {
    Cosine,
    Dot,
    L2,
}

impl From<MetricBody> for Metric {
    fn from(m: MetricBody) -> Self {
        match m {
            MetricBody::Cosine => Metric::Cosine,
            MetricBody::Dot => Metric::Dot,
            MetricBody::L2 => Metric::L2,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VectorSpaceBody {
    pub dimension: usize,
    pub metric: MetricBody,
}

/// The query vector and mode a search runs with, after the embedder (if any) had its say.
struct Plan {
    vector: Option<Vec<f32>>,
    mode: SearchModeBody,
    embedder_used: bool,
    note: Option<String>,
}

const NO_EMBEDDER_NOTE: &str = "no embedder is configured: the query text was searched by keyword only";

async fn plan(state: &AppState, body: &SearchBody) -> ApiResult<Plan> {
    let has_text = body.query.as_deref().is_some_and(|q| !q.is_empty());
    let wants_vector = body.mode != Some(SearchModeBody::Keyword);
    let (vector, embedder_used) = match (&body.vector, &state.embedder) {
        (Some(v), _) => (Some(v.clone()), false),
        (None, Some(embedder)) if has_text && wants_vector => {
            let query = body.query.clone().unwrap_or_default();
            let mut vectors = embedder.embed(&[query]).await?;
            (vectors.pop(), true)
        }
        _ => (None, false),
    };
    let has_vector = vector.is_some();
    let no_embedder = state.embedder.is_none();
    let (mode, note) = match body.mode {
        Some(SearchModeBody::Vector) if !has_vector => {
            let why = if no_embedder && has_text {
                "mode vector needs `vector`: no embedder is configured to embed `query`"
            } else {
                "mode vector needs `vector` (or `query` with an embedder configured)"
            };
            return Err(ApiError::bad_request("missing_query", why));
        }
        // Hybrid asked for with text only and nothing to embed it: keyword, and say so.
        Some(SearchModeBody::Hybrid) if !has_vector && has_text && no_embedder => {
            (SearchModeBody::Keyword, Some(NO_EMBEDDER_NOTE.to_string()))
        }
        Some(mode) => (mode, None),
        None => match (has_vector, has_text) {
            (true, true) => (SearchModeBody::Hybrid, None),
            (true, false) => (SearchModeBody::Vector, None),
            (false, true) => (SearchModeBody::Keyword, no_embedder.then(|| NO_EMBEDDER_NOTE.to_string())),
            (false, false) => return Err(ApiError::bad_request("missing_query", "give `query` (text), `vector`, or both")),
        },
    };
    Ok(Plan {
        vector,
        mode,
        embedder_used,
        note,
    })
}

/// Waits, off the async runtime, until the search index holds `min_lsn`.
async fn wait_for_index(state: &AppState, min_lsn: Option<Lsn>) -> ApiResult<()> {
    let Some(lsn) = min_lsn else { return Ok(()) };
    state
        .blocking(move |db| {
            let visible = db.visible_lsn();
            if lsn > visible {
                return Err(ApiError::bad_request(
                    "min_lsn_ahead",
                    format!("min_lsn {lsn} is past the newest commit (LSN {visible})"),
                ));
            }
            Ok(db.wait_for_index(lsn, Duration::from_millis(MIN_LSN_WAIT_MS))?)
        })
        .await
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/search", tag = "search",
    params(("ns" = String, Path, description = "Namespace")), request_body = SearchBody,
    responses((status = 200, body = SearchResult), (status = 400, body = ErrorBody),
        (status = 410, body = ErrorBody, description = "as_of below the history horizon"),
        (status = 502, body = ErrorBody, description = "the embedder failed"),
        (status = 503, body = ErrorBody, description = "min_lsn: the index did not catch up in time")))]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiJson(body): ApiJson<SearchBody>,
) -> ApiResult<ApiJson<SharedSearchResult>> {
    caller.read(&ns)?;
    engram_core::validate_namespace(&ns)?;
    let as_of = AsOf::parse_opt(body.as_of.as_deref())?;
    check_dimension(&state.config.limits, body.vector.as_ref())?;
    let plan = plan(&state, &body).await?;
    check_dimension(&state.config.limits, plan.vector.as_ref())?;
    wait_for_index(&state, body.min_lsn).await?;
    let mode = plan.mode;
    let request = SearchRequest {
        namespace: ns,
        // Keyword and hybrid need the text; a vector search ignores it.
        text: body.query,
        vector: plan.vector,
        k: body.k,
        mode: mode.into(),
        filter: body.filter,
        ef_search: body.ef_search,
    };
    // The search itself stays on the blocking pool: it is CPU work whose length grows with k,
    // ef_search, the filter and the unindexed tail, and must not hold an async worker.
    let (hits, lsn) = state.read(as_of, move |s| Ok((s.search_refs(&request)?, s.read_lsn()))).await?;
    Ok(ApiJson(SharedSearchResult {
        hits,
        lsn,
        mode,
        embedder_used: plan.embedder_used,
        note: plan.note,
    }))
}

/// The answer of a search whose hits share the stored memories (`search_refs`): serialised to
/// exactly the JSON of [`SearchResult`] (the OpenAPI schema), without copying each hit's text,
/// embedding and metadata first.
#[derive(Serialize)]
pub struct SharedSearchResult {
    #[serde(serialize_with = "serialize_shared_hits")]
    pub hits: Vec<SearchHitRef>,
    pub lsn: Lsn,
    pub mode: SearchModeBody,
    pub embedder_used: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One hit as [`SearchHitBody`] serialises it, borrowing the memory.
#[derive(Serialize)]
struct SearchHitJson<'a> {
    memory: MemoryBodyRef<'a>,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    vector: Option<SignalScoreBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keyword: Option<SignalScoreBody>,
}

fn serialize_shared_hits<S: serde::Serializer>(hits: &[SearchHitRef], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(hits.iter().map(|h| SearchHitJson {
        memory: MemoryBodyRef::from(&*h.memory),
        score: h.score,
        vector: h.vector.map(Into::into),
        keyword: h.keyword.map(Into::into),
    }))
}

#[utoipa::path(post, path = "/v1/namespaces/{ns}/graph/search_entities", tag = "search",
    params(("ns" = String, Path, description = "Namespace")), request_body = SearchEntitiesBody,
    responses((status = 200, body = SearchEntitiesResult), (status = 400, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub async fn search_entities(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiJson(body): ApiJson<SearchEntitiesBody>,
) -> ApiResult<ApiJson<SearchEntitiesResult>> {
    caller.read(&ns)?;
    let as_of = AsOf::parse_opt(body.as_of.as_deref())?;
    let (query, k) = (body.query, body.k);
    let (hits, lsn) = state
        .read(as_of, move |s| Ok((s.search_entities(&ns, &query, k)?, s.read_lsn())))
        .await?;
    Ok(ApiJson(SearchEntitiesResult {
        hits: hits
            .into_iter()
            .map(|h| EntityHitBody {
                entity: h.entity.into(),
                score: h.score,
            })
            .collect(),
        lsn,
    }))
}

#[utoipa::path(get, path = "/v1/namespaces/{ns}/graph/neighbours", tag = "search",
    params(("ns" = String, Path, description = "Namespace"), NeighboursParams),
    responses((status = 200, body = NeighboursResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody, description = "no such entity")))]
pub async fn neighbours(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(params): ApiQuery<NeighboursParams>,
) -> ApiResult<ApiJson<NeighboursResult>> {
    caller.read(&ns)?;
    let as_of = AsOf::parse_opt(params.as_of.as_deref())?;
    let depth = params.depth.unwrap_or(1);
    let relation_types: Vec<String> = params
        .relation_types
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let direction: Direction = params.direction.unwrap_or_default().into();
    let entity = params.entity;
    let (graph, lsn) = state
        .read(as_of, move |s| {
            Ok((s.neighbours(&ns, &entity, depth, &relation_types, direction)?, s.read_lsn()))
        })
        .await?;
    Ok(ApiJson(NeighboursResult { graph: graph.into(), lsn }))
}

#[utoipa::path(put, path = "/v1/namespaces/{ns}/vector_space", tag = "search",
    params(("ns" = String, Path, description = "Namespace"), WriteParams), request_body = VectorSpaceBody,
    responses((status = 200, body = WriteResult), (status = 400, body = ErrorBody, description = "bad dimension, or the namespace already has another dimension or metric")))]
pub async fn declare_vector_space(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ns): ApiPath<String>,
    ApiQuery(write): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<VectorSpaceBody>,
) -> ApiResult<ApiJson<WriteResult>> {
    caller.write(&ns)?;
    if body.dimension > state.config.limits.max_dimension {
        return Err(ApiError::bad_request(
            "bad_dimension",
            format!(
                "dimension {} is past the limit of {}",
                body.dimension, state.config.limits.max_dimension
            ),
        ));
    }
    let (dimension, metric) = (body.dimension, Metric::from(body.metric));
    let (_, info) = state
        .commit(write.durability, move |txn| Ok(txn.declare_vector_space(&ns, dimension, metric)?))
        .await?;
    Ok(ApiJson(WriteResult { lsn: info.lsn }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::{Database, DatabaseOptions, NewMemory};
    use serde_json::json;

    /// The answer built from shared hits is byte for byte the answer the copying path gave (and
    /// that the OpenAPI schema, `SearchResult`, describes): field order, absent signals, null
    /// embeddings, metadata, the note.
    #[test]
    fn shared_hits_serialise_exactly_as_copied_hits() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), DatabaseOptions::default()).unwrap();
        db.run(1, |t| t.declare_vector_space("agent", 3, Metric::Cosine)).unwrap();
        let memories = [
            ("the cat sat on the mat", Some(vec![1.0, 0.0, 0.5]), json!({"kind": "note", "n": 1})),
            ("a dog chased the cat \"quoted\" é ✓", Some(vec![0.9, 0.1, 0.4]), json!({})),
            ("the cat has no vector", None, json!({"nested": {"list": [1, 2.5, null]}})),
            ("unrelated text", Some(vec![-1.0, 2.0, 0.25]), json!({"kind": "other"})),
        ];
        for (text, embedding, metadata) in memories {
            let memory = NewMemory {
                text: text.to_string(),
                embedding,
                metadata,
            };
            db.run(1, |t| t.insert_memory("agent", memory.clone())).unwrap();
        }
        let snapshot = db.snapshot();
        for (mode, note) in [
            (SearchModeBody::Hybrid, None),
            (SearchModeBody::Vector, None),
            (SearchModeBody::Keyword, Some(NO_EMBEDDER_NOTE.to_string())),
        ] {
            let request = SearchRequest {
                namespace: "agent".to_string(),
                text: Some("cat".to_string()),
                vector: Some(vec![1.0, 0.0, 0.5]),
                k: 10,
                mode: mode.into(),
                filter: None,
                ef_search: None,
            };
            let copied = SearchResult {
                hits: snapshot
                    .search(&request)
                    .unwrap()
                    .into_iter()
                    .map(|h| SearchHitBody {
                        memory: h.memory.into(),
                        score: h.score,
                        vector: h.vector.map(Into::into),
                        keyword: h.keyword.map(Into::into),
                    })
                    .collect(),
                lsn: snapshot.read_lsn(),
                mode,
                embedder_used: false,
                note: note.clone(),
            };
            let shared = SharedSearchResult {
                hits: snapshot.search_refs(&request).unwrap(),
                lsn: snapshot.read_lsn(),
                mode,
                embedder_used: false,
                note,
            };
            assert!(!copied.hits.is_empty(), "{mode:?} found nothing: the comparison would be empty");
            if mode == SearchModeBody::Hybrid {
                // The cases worth comparing are there: a memory without a vector (null), and
                // hits missing one signal (the field left out).
                assert!(copied.hits.iter().any(|h| h.memory.embedding.is_none()));
                assert!(copied.hits.iter().any(|h| h.keyword.is_none()));
                assert!(copied.hits.iter().any(|h| h.vector.is_none()));
            }
            assert_eq!(
                serde_json::to_string(&shared).unwrap(),
                serde_json::to_string(&copied).unwrap(),
                "{mode:?}"
            );
        }
    }
}
