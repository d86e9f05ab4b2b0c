//! Retrieval: vector k-NN (exact or HNSW), BM25 keyword search, hybrid (reciprocal rank fusion)
//! and graph neighbours, all at the reader's snapshot (docs/search.md).
//!
//! - `vector.rs`: metrics and distances; `codes.rs`: the graph's int8 vector codes;
//!   `hnsw.rs`: the approximate graph;
//! - `keyword.rs`: tokenizer, BM25, the inverted index; `hybrid.rs`: rank fusion;
//! - `filter.rs`: metadata filters; `index.rs`: versioned per-namespace indexes and their
//!   background applier; `neighbours.rs`: graph traversal.

pub(crate) mod code_arena;
pub(crate) mod codes;
pub(crate) mod filter;
pub(crate) mod flat_graph;
pub(crate) mod hnsw;
pub(crate) mod hybrid;
pub(crate) mod index;
pub(crate) mod keyword;
pub(crate) mod neighbours;
pub(crate) mod persist;
pub(crate) mod planning;
pub(crate) mod queue;
pub(crate) mod tail;
pub(crate) mod vector;

/// A hash map with foldhash's per-process seeded hasher: the indexes hash every term of every
/// text and every memory id, where std's SipHash cost a sixth of the keyword index's build
/// (open at 1M memories, docs/benchmarks.md); the random seed keeps term flooding from a
/// chosen-collision text as hard as std's map makes it.
pub(crate) type FastHashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use hybrid::RRF_K;
pub use index::{
    IndexOrigin, IndexQueueBound, IndexStats, EXACT_SEARCH_MAX_VECTORS, MAX_QUEUED_INDEX_CHANGES, MAX_QUEUED_INDEX_VECTOR_BYTES,
};
pub use keyword::{bm25_idf, bm25_term, tokenize, BM25_B, BM25_K1};
pub use vector::Metric;

use crate::db::{Database, Shared};
use crate::error::{CoreError, Result};
use crate::graph::{GraphReads, KnowledgeGraph};
use crate::memory::{MemoryReads, MemoryRef};
use crate::model::{Entity, Key, KvValue, Memory, Space, Value};
use crate::names::{validate_embedding, validate_namespace, validate_size};
use crate::retention::RetainedView;
use crate::txn::{ReadView, Snapshot, Transaction};
use engram_wal::Lsn;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Largest `k` a search accepts.
pub const MAX_K: usize = 1000;
/// Largest `ef_search` (graph candidate list) a search accepts.
pub const MAX_EF_SEARCH: usize = 10_000;
/// `ef_search` when the request gives none (raised to `k` when smaller).
pub const DEFAULT_EF_SEARCH: usize = 128;
/// Longest query text, in bytes.
pub const MAX_QUERY_TEXT_BYTES: usize = 4096;
/// Deepest neighbourhood `neighbours` walks.
pub const MAX_NEIGHBOUR_DEPTH: usize = 16;
/// How many of each ranking a hybrid search fuses (at least `k`).
pub const HYBRID_CANDIDATES: usize = 100;
/// How long a checkpoint waits for the indexes to reach its LSN (to save them), and the longest
/// a committing writer is held by the queue's memory bound. Searches never wait for the indexes.
pub const SEARCH_INDEX_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    Vector,
    Keyword,
    Hybrid,
}

/// A search in one namespace. `Vector` needs `vector`, `Keyword` needs `text`, `Hybrid` needs
/// both. `filter`: every top-level field must equal the memory's metadata field (filter.rs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchRequest {
    pub namespace: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    pub k: usize,
    pub mode: SearchMode,
    #[serde(default)]
    pub filter: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub ef_search: Option<usize>,
}

/// A hit's place in one ranking: 1-based rank and that signal's score (vector: cosine
/// similarity, inner product, or negated Euclidean distance; keyword: BM25).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SignalScore {
    pub rank: usize,
    pub score: f32,
}

/// One result. `score` is the vector score, the BM25 score, or the fused RRF score, by mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub memory: Memory,
    pub score: f32,
    pub vector: Option<SignalScore>,
    pub keyword: Option<SignalScore>,
}

/// A search hit whose memory is shared with the database rather than copied (see
/// [`MemoryRef`]): what [`SearchReads::search_refs`] returns. Building one costs a reference
/// count; a [`SearchHit`] copies the memory, embedding included (1.5 KB at 384 dimensions).
#[derive(Debug, Clone)]
pub struct SearchHitRef {
    pub memory: MemoryRef,
    pub score: f32,
    pub vector: Option<SignalScore>,
    pub keyword: Option<SignalScore>,
}

impl SearchHitRef {
    /// The hit with its memory copied out.
    pub fn to_hit(&self) -> SearchHit {
        SearchHit {
            memory: self.memory.to_memory(),
            score: self.score,
            vector: self.vector,
            keyword: self.keyword,
        }
    }
}

/// An entity matched by keyword (BM25 over its name, type and observations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityHit {
    pub entity: Entity,
    pub score: f32,
}

/// Which relations `neighbours` follows from an entity: those going out of it (`from` it),
/// those coming in, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outgoing,
    Incoming,
    Both,
}

/// Retrieval at a view's snapshot: implemented for [`Snapshot`] (including `as_of` ones) and
/// [`Transaction`]. A transaction searches its snapshot: its own uncommitted writes are not seen
/// by `search` and `search_entities` (they are by `neighbours`, which reads the graph).
pub trait SearchReads: RetainedView {
    /// Vector, keyword or hybrid search over the memories of a namespace (module docs). An
    /// unknown namespace, or one without vectors for a vector search, has no hits.
    fn search(&self, request: &SearchRequest) -> Result<Vec<SearchHit>> {
        Ok(self.search_refs(request)?.iter().map(SearchHitRef::to_hit).collect())
    }

    /// [`SearchReads::search`] with each hit's memory shared with the database instead of
    /// copied: the same hits, in the same order, for callers that only read the memories
    /// (return their text, look at a metadata field, serialise them).
    fn search_refs(&self, request: &SearchRequest) -> Result<Vec<SearchHitRef>>;

    /// The neighbourhood of `entity` up to `depth` hops (0: the entity alone) over relations of
    /// `relation_types` (empty: all), in `direction`. `NotFound` if the entity does not exist.
    fn neighbours(
        &self,
        namespace: &str,
        entity: &str,
        depth: usize,
        relation_types: &[String],
        direction: Direction,
    ) -> Result<KnowledgeGraph> {
        neighbours::neighbours(self, namespace, entity, depth, relation_types, direction)
    }

    /// The `k` entities best matching `text` by BM25 over name, type and observations (computed
    /// over the entities of the snapshot; ties by name).
    fn search_entities(&self, namespace: &str, text: &str, k: usize) -> Result<Vec<EntityHit>> {
        search_entities_at(self, namespace, text, k)
    }
}

fn check_k(k: usize) -> Result<()> {
    if !(1..=MAX_K).contains(&k) {
        return Err(CoreError::OutOfRange {
            what: "k",
            got: k,
            min: 1,
            max: MAX_K,
        });
    }
    Ok(())
}

/// Checks everything about a request that does not need the data; nothing is read before.
fn validate(request: &SearchRequest) -> Result<()> {
    validate_namespace(&request.namespace)?;
    check_k(request.k)?;
    if let Some(ef) = request.ef_search {
        if !(1..=MAX_EF_SEARCH).contains(&ef) {
            return Err(CoreError::OutOfRange {
                what: "ef_search",
                got: ef,
                min: 1,
                max: MAX_EF_SEARCH,
            });
        }
    }
    if let Some(text) = &request.text {
        validate_size("query text", text.len(), MAX_QUERY_TEXT_BYTES)?;
    }
    if let Some(vector) = &request.vector {
        validate_embedding(vector)?;
    }
    let (mode, needs_vector, needs_text) = match request.mode {
        SearchMode::Vector => ("vector", true, false),
        SearchMode::Keyword => ("keyword", false, true),
        SearchMode::Hybrid => ("hybrid", true, true),
    };
    if needs_vector && request.vector.is_none() {
        return Err(CoreError::MissingQuery {
            mode,
            needs: "a query vector",
        });
    }
    if needs_text && request.text.is_none() {
        return Err(CoreError::MissingQuery {
            mode,
            needs: "a query text",
        });
    }
    Ok(())
}

/// The search behind both views: `view` reads at `lsn`.
fn search_at<V: RetainedView + ?Sized>(db: &Shared, view: &V, lsn: Lsn, request: &SearchRequest) -> Result<Vec<SearchHitRef>> {
    validate(request)?;
    if let (Some(vector), Some(expected)) = (&request.vector, view.dimension(&request.namespace)) {
        if vector.len() != expected {
            return Err(CoreError::DimensionMismatch {
                namespace: request.namespace.clone(),
                expected,
                got: vector.len(),
            });
        }
    }
    // No wait for the indexer: what it has not applied yet is searched exactly (tail.rs).
    let tail = db.indexes.tail(&request.namespace, lsn);
    let index = db.indexes.namespace(&request.namespace);
    let guard = index.as_ref().map(|i| i.read().unwrap_or_else(|p| p.into_inner()));
    let index = guard.as_deref();
    let k = request.k;
    let ef = request.ef_search.unwrap_or(DEFAULT_EF_SEARCH).max(k);
    let filter = request.filter.as_ref();
    let depth = match request.mode {
        SearchMode::Hybrid => k.max(HYBRID_CANDIDATES),
        _ => k,
    };
    let vector_hits = match (&request.vector, request.mode) {
        (Some(query), SearchMode::Vector | SearchMode::Hybrid) => {
            tail::vector_search(index, &tail, query, lsn, depth, ef.max(depth), filter)
        }
        _ => Vec::new(),
    };
    let keyword_hits = match (&request.text, request.mode) {
        (Some(text), SearchMode::Keyword | SearchMode::Hybrid) => {
            let mut hits = tail::keyword_search(index, &tail, &keyword::query_terms(text), lsn, filter);
            hits.truncate(depth);
            hits
        }
        _ => Vec::new(),
    };
    // Every ranked document was admitted, so it holds a memory.
    let memory = |document| tail::shared_value_of(index, &tail, document).cloned().and_then(MemoryRef::new);
    let ranked = |hits: &[(tail::Document, f32)], vector: bool| -> Vec<SearchHitRef> {
        hits.iter()
            .enumerate()
            .filter_map(|(i, &(document, score))| {
                let place = Some(SignalScore { rank: i + 1, score });
                Some(SearchHitRef {
                    memory: memory(document)?,
                    score,
                    vector: if vector { place } else { None },
                    keyword: if vector { None } else { place },
                })
            })
            .collect()
    };
    let hits = match request.mode {
        SearchMode::Vector => ranked(&vector_hits, true),
        SearchMode::Keyword => ranked(&keyword_hits, false),
        SearchMode::Hybrid => hybrid::fuse(&vector_hits, &keyword_hits)
            .into_iter()
            .take(k)
            .filter_map(|f| {
                Some(SearchHitRef {
                    memory: memory(f.item)?,
                    score: f.score,
                    vector: f.vector,
                    keyword: f.keyword,
                })
            })
            .collect(),
    };
    drop(guard);
    // Versions below the history horizon may be gone from the store: refuse rather than answer
    // from a snapshot that can no longer be read consistently.
    view.check_retained()?;
    Ok(hits)
}

fn search_entities_at<V: GraphReads + ?Sized>(view: &V, namespace: &str, text: &str, k: usize) -> Result<Vec<EntityHit>> {
    validate_namespace(namespace)?;
    check_k(k)?;
    validate_size("query text", text.len(), MAX_QUERY_TEXT_BYTES)?;
    let graph = view.read_graph(namespace)?;
    let documents: Vec<Vec<String>> = graph
        .entities
        .iter()
        .map(|e| {
            let mut tokens = keyword::tokenize(&e.name);
            tokens.extend(keyword::tokenize(&e.entity_type));
            e.observations.iter().for_each(|o| tokens.extend(keyword::tokenize(o)));
            tokens
        })
        .collect();
    let mut scored = keyword::bm25_over(&documents, &keyword::query_terms(text));
    scored.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| graph.entities[a.0].name.cmp(&graph.entities[b.0].name))
    });
    Ok(scored
        .into_iter()
        .take(k)
        .map(|(i, score)| EntityHit {
            entity: graph.entities[i].clone(),
            score,
        })
        .collect())
}

impl SearchReads for Snapshot {
    fn search_refs(&self, request: &SearchRequest) -> Result<Vec<SearchHitRef>> {
        search_at(&self.db, self, self.lsn, request)
    }
}

impl SearchReads for Transaction {
    fn search_refs(&self, request: &SearchRequest) -> Result<Vec<SearchHitRef>> {
        search_at(&self.db, self, self.read_lsn(), request)
    }
}

impl Transaction {
    /// Fixes a namespace's embedding dimension and metric. The metric is chosen with the
    /// dimension: on a namespace without a dimension both are set; on one that has a dimension
    /// (declared, or set by a first insert, with the cosine metric unless declared otherwise)
    /// only the same dimension and metric are accepted (`DimensionMismatch`, `MetricMismatch`).
    /// Two transactions declaring a new namespace concurrently conflict on its dimension.
    pub fn declare_vector_space(&mut self, namespace: &str, dimension: usize, metric: Metric) -> Result<()> {
        validate_namespace(namespace)?;
        let metric_key = Key::new(namespace, Space::Meta, index::METRIC_KEY.to_vec());
        let existing_dimension = self.dimension(namespace);
        let existing_metric = self.get_value(&metric_key).as_ref().and_then(index::metric_of);
        self.check_retained()?;
        if existing_dimension.is_some() {
            let current = existing_metric.unwrap_or_default();
            self.declare_dimension(namespace, dimension)?;
            if current != metric {
                return Err(CoreError::MetricMismatch {
                    namespace: namespace.to_string(),
                    expected: current.name(),
                    got: metric.name(),
                });
            }
            return Ok(());
        }
        self.declare_dimension(namespace, dimension)?;
        if existing_metric != Some(metric) {
            self.put(
                metric_key,
                Value::Kv(KvValue::Json(serde_json::Value::String(metric.name().to_string()))),
            );
        }
        Ok(())
    }
}

impl Database {
    /// Waits until the search indexes contain every commit up to `lsn`. Searches do not need it
    /// (they search what the indexer has not applied yet exactly); it is for callers who want
    /// the approximate index to hold their writes (benchmarks, timing). `IndexTimeout` after
    /// `timeout`.
    pub fn wait_for_index(&self, lsn: Lsn, timeout: Duration) -> Result<()> {
        self.shared.indexes.wait_for(lsn, timeout)
    }

    /// How far the search indexes trail the visible state, and their size.
    pub fn index_stats(&self) -> IndexStats {
        self.shared.indexes.stats(self.visible_lsn())
    }

    /// Test hook: pauses (or resumes) the search indexer, so tests can search while the index
    /// lags by as much as they like. Searches stay exact; `wait_for_index` waits until resumed.
    #[doc(hidden)]
    pub fn pause_indexer(&self, paused: bool) {
        self.shared.indexes.set_paused(paused);
    }

    /// The metric of a namespace's vectors at the current snapshot (cosine unless declared).
    pub fn metric(&self, namespace: &str) -> Metric {
        let key = Key::new(namespace, Space::Meta, index::METRIC_KEY.to_vec());
        self.snapshot()
            .get_value(&key)
            .as_ref()
            .and_then(index::metric_of)
            .unwrap_or_default()
    }
}
