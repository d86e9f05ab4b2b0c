//! The search indexes of every namespace, and the background applier that keeps them up to date.
//!
//! Each index entry is one *version* of a memory with its validity range
//! `[created_lsn, superseded_lsn)`; a search at snapshot S admits only entries valid at S, so the
//! indexes answer for any snapshot or as-of LSN back to the history horizon. Entries are added
//! after commit by one background thread, fed in LSN order from the commit path (db.rs): commits
//! do not wait for it (unless the queue passes a memory bound normal bursts never reach).
//! Searches never wait either: the queued changes not yet indexed (the tail, LSNs above
//! `indexed_lsn`) are searched exactly and merged with the index's answer (search/tail.rs).

use super::filter;
use super::hnsw::{Hnsw, InsertPlan};
use super::keyword::InvertedIndex;
use super::planning::{plan_insertions, PlannedInsertion, MIN_PLANNED_INSERTIONS, PLANNED_GROUP_CHANGES};
use super::queue::{ChangeQueue, Chunk, QueuedBatch};
use super::tail::{KeywordStatistics, TailCode, TailView};
use super::vector::{prefetch, Metric, Scored, TopK};
use crate::error::{CoreError, Result};
use crate::model::{Key, Memory, Space, Value};
use crate::store::Store;
use engram_wal::Lsn;
use serde_json::Map;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The Meta key holding a namespace's metric (absent: cosine).
pub(crate) const METRIC_KEY: &[u8] = b"metric";

/// Below this many vectors in a namespace (every version counts) the vector search is exact:
/// a scan is as fast as the graph there, and exact.
pub const EXACT_SEARCH_MAX_VECTORS: usize = 2048;

/// Index changes queued and not yet applied beyond which, by default ([`IndexQueueBound`]), a
/// committing transaction that wrote memories waits (after its commit is durable and visible)
/// until the queue is back within it.
/// A memory bound, not a lag target: searches do not wait for the indexer (the queued tail is
/// searched exactly), so this only stops a sustained overload from growing the queue forever.
pub const MAX_QUEUED_INDEX_CHANGES: usize = 1_000_000;

/// Bytes of embeddings in the queued changes beyond which committing writers wait, as for
/// [`MAX_QUEUED_INDEX_CHANGES`] (256 MiB: about 175,000 vectors of 384 dimensions).
pub const MAX_QUEUED_INDEX_VECTOR_BYTES: usize = 256 << 20;

/// How much the search indexer's queue may hold before committing writers of memories wait
/// for it (`DatabaseOptions::index_queue_bound`; see [`MAX_QUEUED_INDEX_CHANGES`]).
///
/// The trade-off: a larger bound lets a burst of memory commits be acknowledged at the commit
/// path's rate while the indexer catches up later; a smaller one keeps searches fast during the
/// burst, since every search scans the queued changes of its namespace exactly (about 0.45 µs
/// per queued change on the 2-core test machine, docs/search.md). Under sustained overload the
/// commit rate is the indexer's whatever the bound. 0 holds each memory commit until the
/// indexer has applied it (after the commit is already durable and visible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexQueueBound {
    /// Queued index changes (memory versions).
    pub changes: usize,
    /// Bytes of embeddings in the queued changes.
    pub vector_bytes: usize,
}

impl Default for IndexQueueBound {
    fn default() -> Self {
        IndexQueueBound {
            changes: MAX_QUEUED_INDEX_CHANGES,
            vector_bytes: MAX_QUEUED_INDEX_VECTOR_BYTES,
        }
    }
}

/// How many of a graph search's candidates (nearest first by code distance, `ef` of them) are
/// re-scored with the exact distance before the best `k` are kept: twice `k`, at least
/// [`RERANK_MIN_CANDIDATES`], at most all of them. Codes misplace only near-ties: on the peer
/// suite's 100k x 384 set, the exact top 10 of every query was among the 20 nearest by code
/// distance (brute force over all rows, 300 queries), and re-scoring 2k instead of all `ef`
/// candidates left recall@10 unchanged at every ef from 32 to 256 while answering 1.2 to 1.5x
/// more queries/s at ef 128 and 256 (each re-scored candidate is a few cache misses away:
/// entry, value, embedding). docs/search.md, *Compact vectors*.
pub(crate) fn rerank_count(k: usize, ef: usize) -> usize {
    (2 * k).max(RERANK_MIN_CANDIDATES).min(ef.max(k))
}

/// The fewest candidates re-scored (for small `k`, where twice `k` leaves little margin).
pub(crate) const RERANK_MIN_CANDIDATES: usize = 32;

/// Changes applied per hold of a namespace's write lock, so that searches in a namespace being
/// written wait at most for this many graph insertions.
const CHANGES_PER_LOCK: usize = 16;

/// One change the indexes follow: a memory version written (or deleted, `value: None`) at `lsn`,
/// or a namespace's metric set.
#[derive(Debug, Clone)]
pub(crate) struct IndexChange {
    pub lsn: Lsn,
    pub key: Key,
    pub value: Option<Arc<Value>>,
    /// Whether the key had no live version just before this change (an insert, not an update
    /// or a deletion): then no version the index holds at or below this change's LSN is valid
    /// there, so a lagging search need not look the memory up to hide the index's version of
    /// it (search/tail.rs). `false` is always correct, only slower.
    pub creates: bool,
    /// The int8 code of the embedding, made by the first search that scans this change while
    /// it is queued (search/tail.rs), then shared by every later one.
    pub tail_code: OnceLock<Box<TailCode>>,
}

impl IndexChange {
    /// A change not known to be an insert ([`IndexChange::creates`] false).
    pub fn new(lsn: Lsn, key: Key, value: Option<Arc<Value>>) -> IndexChange {
        IndexChange {
            lsn,
            key,
            value,
            creates: false,
            tail_code: OnceLock::new(),
        }
    }

    /// Bytes of the embedding this change adds (0 for deletions and metrics).
    fn vector_bytes(&self) -> usize {
        match self.value.as_deref() {
            Some(Value::Memory(m)) => m.embedding.as_ref().map_or(0, |e| e.len() * 4),
            _ => 0,
        }
    }
}

pub(crate) fn is_indexed(key: &Key) -> bool {
    key.space == Space::Memory || (key.space == Space::Meta && key.id == METRIC_KEY)
}

/// The metric stored under [`METRIC_KEY`].
pub(crate) fn metric_of(value: &Value) -> Option<Metric> {
    match value {
        Value::Kv(crate::model::KvValue::Json(serde_json::Value::String(name))) => Metric::from_name(name),
        _ => None,
    }
}

pub(crate) struct VersionEntry {
    pub created_lsn: Lsn,
    /// `Lsn::MAX` while this is the memory's current version.
    pub superseded_lsn: Lsn,
    /// The stored value (shared with the store, not copied). `None` only for a version loaded
    /// from a checkpoint's index file whose value the store no longer retains (pruned by the
    /// retention policy); such an entry is valid at no LSN.
    pub(super) value: Option<Arc<Value>>,
    /// Length of the text in tokens (BM25).
    pub text_tokens: u32,
}

impl VersionEntry {
    #[inline]
    pub fn valid_at(&self, at: Lsn) -> bool {
        self.created_lsn <= at && at < self.superseded_lsn
    }

    pub fn memory(&self) -> Option<&Memory> {
        match self.value.as_deref() {
            Some(Value::Memory(m)) => Some(m),
            _ => None,
        }
    }
}

/// A graph node's validity: its version's `[created_lsn, superseded_lsn)`, copied into a flat
/// array indexed by node so that admitting a candidate during a traversal is one 16-byte load,
/// not two dependent cache misses (node -> entry slot -> entry). A node whose version has no
/// value (pruned, loaded from an index file) is valid at no LSN, as its entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeValidity {
    pub created_lsn: Lsn,
    pub superseded_lsn: Lsn,
}

impl NodeValidity {
    pub(super) fn of(entry: &VersionEntry) -> NodeValidity {
        NodeValidity {
            created_lsn: entry.created_lsn,
            superseded_lsn: entry.superseded_lsn,
        }
    }

    #[inline]
    fn valid_at(self, at: Lsn) -> bool {
        self.created_lsn <= at && at < self.superseded_lsn
    }
}

/// The indexes of one namespace.
pub(crate) struct NamespaceIndex {
    pub metric: Metric,
    pub entries: Vec<VersionEntry>,
    /// Memory id -> slot of its current version.
    pub(super) current: super::FastHashMap<Box<str>, u32>,
    /// Created with the first embedding (its length is the namespace's dimension).
    pub hnsw: Option<Hnsw>,
    /// Graph node -> entry slot (ascending: nodes and entries are both numbered in LSN order).
    pub(super) node_entry: Vec<u32>,
    /// Graph node -> its entry's validity, kept equal to `entries[node_entry[node]]`'s.
    pub(super) node_validity: Vec<NodeValidity>,
    /// Graph nodes valid at no LSN from their creation on (superseded, or without a value):
    /// while there are none, a snapshot at or above the newest node admits every node.
    pub(super) ended_nodes: usize,
    pub keyword: InvertedIndex,
}

impl NamespaceIndex {
    pub(super) fn new() -> NamespaceIndex {
        NamespaceIndex {
            metric: Metric::Cosine,
            entries: Vec::new(),
            current: super::FastHashMap::default(),
            hnsw: None,
            node_entry: Vec::new(),
            node_validity: Vec::new(),
            ended_nodes: 0,
            keyword: InvertedIndex::default(),
        }
    }

    /// Whether the current version of memory `id` is already this change's or a later one (a
    /// replayed change): applying it again must change nothing.
    fn indexed_at_or_after(&self, id: &str, lsn: Lsn) -> bool {
        self.current
            .get(id)
            .is_some_and(|&slot| self.entries[slot as usize].created_lsn >= lsn)
    }

    /// Plans, on the graph as it is, the insertions `group` will make when applied in order
    /// (search/planning.rs): per change, the plan of its vector, if it adds one. Nothing is
    /// planned for fewer than [`MIN_PLANNED_INSERTIONS`] vectors.
    fn plan_vector_insertions(&self, group: &[&IndexChange]) -> Vec<Option<InsertPlan>> {
        let mut plans: Vec<Option<InsertPlan>> = group.iter().map(|_| None).collect();
        let Some(graph) = &self.hnsw else { return plans };
        let mut insertions = Vec::new();
        let mut next_node = graph.len() as u32;
        for (position, change) in group.iter().enumerate() {
            if change.key.space != Space::Memory {
                continue;
            }
            // As `apply` decides: a version already indexed adds nothing. (A wrong guess only
            // wastes the plans from there on: `apply` inserts without a plan for another node.)
            let Ok(id) = std::str::from_utf8(&change.key.id) else { continue };
            if self.indexed_at_or_after(id, change.lsn) {
                continue;
            }
            let Some(Value::Memory(memory)) = change.value.as_deref() else {
                continue;
            };
            let Some(embedding) = &memory.embedding else { continue };
            if embedding.len() != graph.dimension() {
                continue;
            }
            insertions.push(PlannedInsertion {
                position,
                prepared: graph.metric().prepare(embedding),
                node: next_node,
            });
            next_node += 1;
        }
        if insertions.len() >= MIN_PLANNED_INSERTIONS {
            for (position, plan) in plan_insertions(graph, &insertions) {
                plans[position] = Some(plan);
            }
        }
        plans
    }

    /// Applies one change, with the plan of its vector's insertion if one was made. Idempotent
    /// per version: a version already indexed is skipped.
    fn apply(&mut self, change: &IndexChange, plan: Option<InsertPlan>) {
        if change.key.space == Space::Meta {
            if let Some(metric) = change.value.as_deref().and_then(metric_of) {
                if self.hnsw.as_ref().is_some_and(|h| h.metric() != metric) {
                    // The metric is fixed before the first vector (declare_vector_space), so
                    // this cannot happen through the API.
                    tracing::warn!(
                        ?metric,
                        "search index: metric changed after vectors were indexed; keeping the first"
                    );
                }
                self.metric = metric;
            }
            return;
        }
        let Ok(id) = std::str::from_utf8(&change.key.id) else { return };
        if self.indexed_at_or_after(id, change.lsn) {
            return;
        }
        if let Some(&slot) = self.current.get(id) {
            self.entries[slot as usize].superseded_lsn = change.lsn;
            if let Ok(node) = self.node_entry.binary_search(&slot) {
                self.node_validity[node].superseded_lsn = change.lsn;
                self.ended_nodes += 1;
            }
            self.current.remove(id);
        }
        let Some(value) = &change.value else { return };
        let Value::Memory(memory) = &**value else { return };
        let slot = self.entries.len() as u32;
        if let Some(embedding) = &memory.embedding {
            let metric = self.metric;
            let graph = self.hnsw.get_or_insert_with(|| Hnsw::new(metric, embedding.len()));
            if graph.dimension() == embedding.len() {
                match plan {
                    Some(plan) if plan.node() as usize == graph.len() => graph.insert_planned(plan),
                    _ => graph.insert(&graph.metric().prepare(embedding)),
                };
                self.node_entry.push(slot);
                self.node_validity.push(NodeValidity {
                    created_lsn: change.lsn,
                    superseded_lsn: Lsn::MAX,
                });
            } else {
                tracing::warn!(id, "search index: embedding of another dimension than the namespace's; not indexed");
            }
        }
        let text_tokens = self.keyword.add(slot, &memory.text);
        self.entries.push(VersionEntry {
            created_lsn: change.lsn,
            superseded_lsn: Lsn::MAX,
            value: Some(value.clone()),
            text_tokens,
        });
        self.current.insert(id.into(), slot);
    }

    /// Whether graph node `node` is the version valid at `at` of a memory the tail did not
    /// change (the tail's version replaces it) and matches `filter`: the admission check of a
    /// filtered search or one with a tail (the others need only the node's validity).
    fn admits(&self, node: u32, at: Lsn, filter: Option<&Map<String, serde_json::Value>>, tail: &TailView) -> bool {
        let validity = self.node_validity[node as usize];
        validity.valid_at(at)
            && self.entries[self.node_entry[node as usize] as usize]
                .memory()
                .is_some_and(|m| !tail.replaces(validity.created_lsn, &m.id) && filter::matches(filter, &m.metadata))
    }

    /// The `k` nearest versions valid at `at` that match `filter` and whose memory `tail` did
    /// not change: (slot, score), best first, scored exactly. `query` is raw. The graph (on
    /// codes) proposes candidates and the best [`rerank_count`] of them are re-scored with the
    /// exact distance from each memory's own embedding; exact throughout below
    /// [`EXACT_SEARCH_MAX_VECTORS`], or when the graph search finds fewer than `k` admitted
    /// versions (a selective filter), so the answer always has min(k, matching) hits.
    pub fn vector_search(
        &self,
        query: &[f32],
        at: Lsn,
        k: usize,
        ef: usize,
        filter: Option<&Map<String, serde_json::Value>>,
        tail: &TailView,
    ) -> Vec<(u32, f32)> {
        let Some(graph) = &self.hnsw else { return Vec::new() };
        let metric = graph.metric();
        let query = metric.prepare(query);
        let every_node_valid = self.ended_nodes == 0 && self.node_validity.last().is_none_or(|v| v.created_lsn <= at);
        let found = if filter.is_none() && tail.is_empty() && every_node_valid {
            // No node superseded and none newer than the snapshot (a namespace only inserted
            // into, read at or after its last insert): nothing to check per node.
            self.graph_or_exact_search(graph, &query, k, ef, &|_: u32| true)
        } else if filter.is_none() && tail.is_empty() {
            // The common case: validity alone decides (a node without a value is valid nowhere),
            // so the traversal never touches the version table or the memories.
            let validity = &self.node_validity;
            self.graph_or_exact_search(graph, &query, k, ef, &|node: u32| validity[node as usize].valid_at(at))
        } else if filter.is_none() && !tail.replaces_by_id() {
            // A tail of inserts: it replaces only the versions created above the indexed LSN,
            // which validity tells apart as well, without the version table or the memories.
            let (validity, indexed_lsn) = (&self.node_validity, tail.indexed_lsn());
            self.graph_or_exact_search(graph, &query, k, ef, &|node: u32| {
                let node = validity[node as usize];
                node.valid_at(at) && node.created_lsn <= indexed_lsn
            })
        } else {
            self.graph_or_exact_search(graph, &query, k, ef, &|node: u32| self.admits(node, at, filter, tail))
        };
        found
            .into_iter()
            .take(k)
            .map(|s| (self.node_entry[s.node as usize], metric.score(s.distance)))
            .collect()
    }

    /// The graph's answer re-scored exactly, or an exact scan when the namespace is small or the
    /// graph admitted fewer than `k` nodes. Generic over `accept` so each admission check is
    /// inlined into the traversal.
    fn graph_or_exact_search(&self, graph: &Hnsw, query: &[f32], k: usize, ef: usize, accept: &impl Fn(u32) -> bool) -> Vec<Scored> {
        if graph.len() > EXACT_SEARCH_MAX_VECTORS {
            let mut candidates = graph.search(query, ef.max(k), accept);
            if candidates.len() >= k {
                candidates.truncate(rerank_count(k, ef));
                return self.rescore(graph.metric(), query, candidates.iter().map(|c| c.node), k);
            }
        }
        self.rescore(graph.metric(), query, (0..graph.len() as u32).filter(|&n| accept(n)), k)
    }

    /// The embedding graph node `node` was built from: its version's own (shared with the
    /// store). `None` for a version whose value is gone (pruned, loaded from an index file):
    /// such a node is valid at no LSN, so it is never admitted.
    #[inline]
    fn node_embedding(&self, node: u32) -> Option<&[f32]> {
        let slot = *self.node_entry.get(node as usize)?;
        self.entries.get(slot as usize)?.memory()?.embedding.as_deref()
    }

    /// The `k` nearest of `nodes` to the prepared `query` by the exact distance from their
    /// embeddings, nearest first (ties by node). The distances are computed by the function the
    /// tail's scan uses (`Metric::distance_to_unprepared`, search/tail.rs), so a memory scores
    /// the same bits whether a search finds it in the index or in the queued tail: a snapshot's
    /// answer does not depend on how far the indexer got. Each candidate is three dependent
    /// loads away (entry, value, embedding): the candidates go through them in blocks, each
    /// load of a block prefetched for all of them before the next, so the misses overlap.
    fn rescore(&self, metric: Metric, query: &[f32], nodes: impl Iterator<Item = u32>, k: usize) -> Vec<Scored> {
        const BLOCK: usize = 16;
        let mut top = TopK::new(k);
        let mut block: Vec<u32> = Vec::with_capacity(BLOCK);
        let mut nodes = nodes.peekable();
        while nodes.peek().is_some() {
            block.clear();
            block.extend(nodes.by_ref().take(BLOCK));
            let slots = || {
                block
                    .iter()
                    .filter_map(|&n| self.node_entry.get(n as usize))
                    .filter_map(|&s| self.entries.get(s as usize))
            };
            slots().for_each(prefetch);
            slots().filter_map(|e| e.value.as_deref()).for_each(prefetch);
            block
                .iter()
                .filter_map(|&n| self.node_embedding(n))
                .for_each(|e| e.iter().step_by(16).take(4).for_each(prefetch));
            for &node in &block {
                let Some(embedding) = self.node_embedding(node).filter(|e| e.len() == query.len()) else {
                    continue;
                };
                let distance = metric.distance_to_unprepared(query, embedding);
                top.push(Scored { distance, node });
            }
        }
        top.into_sorted()
    }

    /// The documents of the snapshot `at` this index holds: entries valid at `at` whose memory
    /// `tail` did not change.
    fn visible(&self, slot: u32, at: Lsn, tail: &TailView) -> bool {
        let entry = &self.entries[slot as usize];
        entry.valid_at(at) && (tail.is_empty() || entry.memory().is_some_and(|m| !tail.replaces(entry.created_lsn, &m.id)))
    }

    /// BM25 inputs of the snapshot `at` from this index (see [`TailView`] for the rest): the
    /// document count and total length, and per query term its postings among those documents.
    pub fn keyword_statistics(&self, terms: &[String], at: Lsn, tail: &TailView) -> KeywordStatistics {
        let (mut documents, mut total_tokens) = (0u64, 0u64);
        for (slot, e) in self.entries.iter().enumerate() {
            if self.visible(slot as u32, at, tail) {
                documents += 1;
                total_tokens += u64::from(e.text_tokens);
            }
        }
        let postings = terms
            .iter()
            .map(|term| {
                self.keyword
                    .postings(term)
                    .iter()
                    .filter(|(slot, _)| self.visible(*slot, at, tail))
                    .map(|&(slot, tf)| (slot, tf, self.entries[slot as usize].text_tokens))
                    .collect()
            })
            .collect();
        KeywordStatistics {
            documents,
            total_tokens,
            postings,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<VersionEntry>()
            + self.current.len() * 48
            + self.node_entry.capacity() * 4
            + self.node_validity.capacity() * std::mem::size_of::<NodeValidity>()
            + self.hnsw.as_ref().map_or(0, Hnsw::heap_bytes)
            + self.keyword.heap_bytes()
    }
}

struct Queue {
    /// Every batch not yet indexed, in LSN order; a batch leaves only when `indexed_lsn` passes
    /// it (both under this lock), so `indexed_lsn` and these batches always cover every commit:
    /// the tail a search merges (search/tail.rs).
    changes: ChangeQueue,
    /// Test hook: the indexer applies nothing while set (until stopped).
    paused: bool,
    stop: bool,
}

/// Figures about the search indexes (`Database::index_stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexStats {
    /// Every commit at or below this LSN is in the indexes.
    pub indexed_lsn: Lsn,
    /// The database's visible LSN when the figures were taken.
    pub visible_lsn: Lsn,
    /// `visible_lsn - indexed_lsn`: how far (in LSNs) the indexes trail the visible state.
    pub lag_lsns: u64,
    /// Applied batches of commits waiting for the index applier.
    pub queued_batches: usize,
    /// Index changes (memory versions) in those batches: the tail searches scan exactly.
    pub queued_changes: usize,
    /// Bytes of embeddings in those changes.
    pub queued_vector_bytes: usize,
    /// Commits since open that waited for the indexer (see [`MAX_QUEUED_INDEX_CHANGES`] and
    /// [`MAX_QUEUED_INDEX_VECTOR_BYTES`]).
    pub throttled_commits: u64,
    pub namespaces: usize,
    /// Memory versions held (current and past).
    pub versions: usize,
    /// Vectors in the graphs (one per version with an embedding).
    pub vectors: usize,
    /// Approximate heap bytes of all indexes (vector codes, graph links, postings, entries; not
    /// the embeddings, which are shared with the store).
    pub heap_bytes: usize,
    /// Whether open loaded the indexes from a checkpoint or rebuilt them.
    pub origin: IndexOrigin,
}

pub(crate) struct Indexes {
    namespaces: RwLock<HashMap<String, Arc<RwLock<NamespaceIndex>>>>,
    queue: Mutex<Queue>,
    work: Condvar,
    indexed_lsn: AtomicU64,
    progress: Mutex<()>,
    progressed: Condvar,
    /// Tasks held by the queue's memory bound (`throttle_async`), woken with `progressed`.
    progress_wakers: Mutex<Vec<Waker>>,
    origin: IndexOrigin,
    /// Changes queued and not yet applied, and the bytes of their embeddings.
    queued_changes: AtomicUsize,
    queued_vector_bytes: AtomicUsize,
    /// The part of those the open queued ([`Indexes::enqueue_at_open`]).
    open_backlog_changes: AtomicUsize,
    open_backlog_vector_bytes: AtomicUsize,
    throttled_commits: AtomicU64,
    /// The queue's bound ([`IndexQueueBound`]), set at open.
    bound_changes: AtomicUsize,
    bound_vector_bytes: AtomicUsize,
    /// LSN of the checkpoint whose index file this process loaded or wrote (0: none).
    file_lsn: AtomicU64,
}

/// Where the indexes of an open database came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOrigin {
    /// Loaded from the index file of the checkpoint at this LSN, then caught up from the log.
    Checkpoint { lsn: Lsn },
    /// Built from the store: at open every retained memory version is queued for the indexer,
    /// which builds the graph in the background (searches meanwhile scan what it has not
    /// reached). `reason` says why no index file was used (none for a database opened without
    /// a checkpoint).
    Rebuilt { reason: Option<String> },
}

impl Indexes {
    fn with_namespaces(namespaces: HashMap<String, Arc<RwLock<NamespaceIndex>>>, origin: IndexOrigin) -> Indexes {
        Indexes {
            namespaces: RwLock::new(namespaces),
            queue: Mutex::new(Queue {
                changes: ChangeQueue::default(),
                paused: false,
                stop: false,
            }),
            work: Condvar::new(),
            indexed_lsn: AtomicU64::new(0),
            progress: Mutex::new(()),
            progressed: Condvar::new(),
            progress_wakers: Mutex::new(Vec::new()),
            origin,
            queued_changes: AtomicUsize::new(0),
            queued_vector_bytes: AtomicUsize::new(0),
            open_backlog_changes: AtomicUsize::new(0),
            open_backlog_vector_bytes: AtomicUsize::new(0),
            throttled_commits: AtomicU64::new(0),
            bound_changes: AtomicUsize::new(MAX_QUEUED_INDEX_CHANGES),
            bound_vector_bytes: AtomicUsize::new(MAX_QUEUED_INDEX_VECTOR_BYTES),
            file_lsn: AtomicU64::new(0),
        }
    }

    /// Indexes loaded from a checkpoint's index file, complete up to the checkpoint's LSN; the
    /// changes of the log replayed after it are queued ([`Indexes::enqueue_at_open`]) for the indexer
    /// thread, as live commits' are.
    pub fn from_loaded(namespaces: Vec<(String, NamespaceIndex)>, lsn: Lsn) -> Indexes {
        let map = namespaces
            .into_iter()
            .map(|(name, index)| (name, Arc::new(RwLock::new(index))))
            .collect();
        let indexes = Indexes::with_namespaces(map, IndexOrigin::Checkpoint { lsn });
        indexes.indexed_lsn.store(lsn, Ordering::Release);
        indexes.set_file_lsn(lsn);
        indexes
    }

    pub fn file_lsn(&self) -> Option<Lsn> {
        Some(self.file_lsn.load(Ordering::Acquire)).filter(|&l| l > 0)
    }

    pub fn set_file_lsn(&self, lsn: Lsn) {
        self.file_lsn.store(lsn, Ordering::Release);
    }

    /// Every namespace's index, by name (for the checkpoint's index file).
    pub fn all(&self) -> Vec<(String, Arc<RwLock<NamespaceIndex>>)> {
        let map = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map.iter().map(|(n, i)| (n.clone(), i.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Empty indexes with every retained memory version in `store` (and each namespace's
    /// metric) queued for the indexer thread in commit order, one batch per commit, as the
    /// log's commits would have been queued: the open does not wait for the graph to be built
    /// (at 500,000 distinct 384-dim vectors that took 107 s on 2 cores, docs/search.md), and
    /// searches meanwhile scan what the indexer has not reached, exactly (search/tail.rs).
    /// Complete at `at` once the queue is drained.
    pub fn queued_from_store(store: &Store, at: Lsn, origin: IndexOrigin) -> Indexes {
        let indexes = Indexes::with_namespaces(HashMap::new(), origin);
        let mut versions: Vec<(Lsn, u32, IndexChange)> = Vec::new();
        // A metric is set before its namespace's first vector (declare_vector_space), so commit
        // order applies it first, as the live indexer did.
        store.visit_space(Space::Meta, |key, chain| {
            if key.id == METRIC_KEY {
                if let Some(v) = chain.versions.iter().rev().find(|v| v.value.is_some()) {
                    let change = IndexChange::new(v.lsn, key.clone(), v.value.clone());
                    versions.push((v.lsn, v.op_index, change));
                }
            }
        });
        store.visit_space(Space::Memory, |key, chain| {
            // The index starts empty and takes only these versions, so a version whose
            // predecessor in the chain is a deletion, or that has none retained, replaces no
            // version the index can hold: for a lagging search it is an insert.
            let mut live_before = false;
            for v in &chain.versions {
                let change = IndexChange {
                    creates: v.value.is_some() && !live_before,
                    ..IndexChange::new(v.lsn, key.clone(), v.value.clone())
                };
                live_before = v.value.is_some();
                versions.push((v.lsn, v.op_index, change));
            }
        });
        versions.sort_by_key(|(lsn, op_index, _)| (*lsn, *op_index));
        let mut batch: Vec<IndexChange> = Vec::new();
        for (lsn, _, change) in versions {
            if batch.last().is_some_and(|queued| queued.lsn != lsn) {
                let batch_lsn = batch[0].lsn;
                indexes.enqueue_at_open(batch_lsn, std::mem::take(&mut batch));
            }
            batch.push(change);
        }
        if let Some(first) = batch.first() {
            let batch_lsn = first.lsn;
            indexes.enqueue_at_open(batch_lsn, batch);
        }
        // The log may end in commits without index changes, or in records that commit nothing.
        indexes.enqueue_at_open(at, Vec::new());
        indexes
    }

    pub fn indexed_lsn(&self) -> Lsn {
        self.indexed_lsn.load(Ordering::Acquire)
    }

    pub fn namespace(&self, namespace: &str) -> Option<Arc<RwLock<NamespaceIndex>>> {
        self.namespaces.read().unwrap_or_else(|p| p.into_inner()).get(namespace).cloned()
    }

    /// Queues the changes of every commit up to `lsn` (called by the applier of the store, in
    /// LSN order, before the commits become visible).
    pub fn enqueue(&self, lsn: Lsn, changes: Vec<IndexChange>) {
        self.push_batch(lsn, changes, false);
    }

    /// [`Indexes::enqueue`] for the backlog an open leaves the indexer (the log replayed after
    /// the checkpoint, or the whole store when the indexes are rebuilt). It counts in the
    /// queue's statistics, not toward the bound that holds new memory commits: it was owed
    /// before any of them, and holding them would not pay it sooner (after an open that
    /// queued 511,040 vectors, every memory commit would otherwise wait up to
    /// `SEARCH_INDEX_WAIT` for about a minute).
    pub fn enqueue_at_open(&self, lsn: Lsn, changes: Vec<IndexChange>) {
        self.push_batch(lsn, changes, true);
    }

    fn push_batch(&self, lsn: Lsn, changes: Vec<IndexChange>, at_open: bool) {
        let vector_bytes = changes.iter().map(IndexChange::vector_bytes).sum();
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.queued_changes.fetch_add(changes.len(), Ordering::AcqRel);
        self.queued_vector_bytes.fetch_add(vector_bytes, Ordering::AcqRel);
        if at_open {
            self.open_backlog_changes.fetch_add(changes.len(), Ordering::AcqRel);
            self.open_backlog_vector_bytes.fetch_add(vector_bytes, Ordering::AcqRel);
        }
        queue.changes.push(lsn, changes, vector_bytes, at_open);
        self.work.notify_one();
    }

    /// The changes of the commits in `(indexed_lsn, at]` to namespace `namespace`, taken with
    /// `indexed_lsn` under one lock: what a search at `at` merges with the index.
    pub fn tail(&self, namespace: &str, at: Lsn) -> TailView {
        let (indexed_lsn, chunks): (Lsn, Vec<Chunk>) = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let indexed_lsn = self.indexed_lsn();
            if at <= indexed_lsn {
                return TailView::empty();
            }
            // The chunks may also hold changes already applied and changes above `at`: filtered
            // below.
            (indexed_lsn, queue.changes.chunks_through(at))
        };
        TailView::new(chunks, indexed_lsn, |c| {
            c.lsn > indexed_lsn && c.lsn <= at && c.key.namespace == namespace
        })
    }

    /// Test hook: while paused the indexer applies nothing, so the tail grows.
    pub fn set_paused(&self, paused: bool) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).paused = paused;
        self.work.notify_all();
    }

    pub(crate) fn apply_changes<'c>(&self, changes: impl IntoIterator<Item = &'c IndexChange>) {
        let mut by_namespace: Vec<(&str, Vec<&IndexChange>)> = Vec::new();
        for change in changes {
            match by_namespace.iter_mut().find(|(ns, _)| *ns == change.key.namespace) {
                Some((_, list)) => list.push(change),
                None => by_namespace.push((&change.key.namespace, vec![change])),
            }
        }
        for (namespace, list) in by_namespace {
            // The namespace usually exists: found under the read lock, with no name copied.
            let existing = self.namespace(namespace);
            let index = existing.unwrap_or_else(|| {
                let mut map = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
                map.entry(namespace.to_string())
                    .or_insert_with(|| Arc::new(RwLock::new(NamespaceIndex::new())))
                    .clone()
            });
            // Partial progress is safe to expose: entries above a reader's snapshot are
            // invisible to it, and a superseded mark above it leaves the old version valid there.
            for group in list.chunks(PLANNED_GROUP_CHANGES) {
                // Planned under the read lock: searches go on meanwhile. Only this thread
                // changes the namespace's index, so the graph is still the planned one when the
                // plans are applied.
                let mut plans = index.read().unwrap_or_else(|p| p.into_inner()).plan_vector_insertions(group);
                for (chunk, chunk_plans) in group.chunks(CHANGES_PER_LOCK).zip(plans.chunks_mut(CHANGES_PER_LOCK)) {
                    let mut index = index.write().unwrap_or_else(|p| p.into_inner());
                    for (change, plan) in chunk.iter().zip(chunk_plans) {
                        index.apply(change, plan.take());
                    }
                }
            }
        }
    }

    /// Applies the front batches of the queue (consecutive, in LSN order) as one group, then
    /// publishes the last one's LSN and removes them from the queue in one step (under the
    /// queue lock), so a search always sees the index and the tail together covering every
    /// commit. One group rather than one batch at a time, so that the vector insertions of
    /// many small commits are planned together (search/planning.rs). `changes` are the
    /// batches' changes, in order.
    fn apply_batches(&self, batches: &[QueuedBatch], changes: &[&IndexChange]) {
        let Some(last) = batches.last() else { return };
        let indexed = self.indexed_lsn();
        // Applying a change twice is harmless (`NamespaceIndex::apply` skips a known version);
        // the changes at or below the indexed LSN (only in a batch straddling a catch-up) are
        // left out. No key is copied.
        self.apply_changes(changes.iter().copied().filter(|c| c.lsn > indexed));
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.changes.pop_applied(batches);
            self.indexed_lsn.fetch_max(last.lsn, Ordering::AcqRel);
        }
        let vector_bytes: usize = batches.iter().map(|b| b.vector_bytes).sum();
        let opens = batches.iter().filter(|b| b.at_open);
        let (open_changes, open_vector_bytes) = opens.fold((0, 0), |(c, v), b| (c + b.changes, v + b.vector_bytes));
        // The open's share before the totals: `over_bound` reads the totals first, so a check
        // racing with this can only count too many new changes for a moment (a held writer
        // checks again at the next progress), never admit a commit past the bound.
        self.open_backlog_changes.fetch_sub(open_changes, Ordering::AcqRel);
        self.open_backlog_vector_bytes.fetch_sub(open_vector_bytes, Ordering::AcqRel);
        self.queued_changes.fetch_sub(changes.len(), Ordering::AcqRel);
        self.queued_vector_bytes.fetch_sub(vector_bytes, Ordering::AcqRel);
        self.notify_progress();
    }

    fn notify_progress(&self) {
        {
            let _guard = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            self.progressed.notify_all();
        }
        let wakers = std::mem::take(&mut *self.progress_wakers.lock().unwrap_or_else(|p| p.into_inner()));
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Sets the queue's bound (at open, before any commit).
    pub fn set_bound(&self, bound: IndexQueueBound) {
        self.bound_changes.store(bound.changes, Ordering::Release);
        self.bound_vector_bytes.store(bound.vector_bytes, Ordering::Release);
    }

    /// Whether the changes queued since the open exceed the bound (the open's backlog does not
    /// count: [`Indexes::enqueue_at_open`]).
    fn over_bound(&self) -> bool {
        let changes = self.queued_changes.load(Ordering::Acquire);
        let vector_bytes = self.queued_vector_bytes.load(Ordering::Acquire);
        let new_changes = changes.saturating_sub(self.open_backlog_changes.load(Ordering::Acquire));
        let new_vector_bytes = vector_bytes.saturating_sub(self.open_backlog_vector_bytes.load(Ordering::Acquire));
        new_changes > self.bound_changes.load(Ordering::Relaxed) || new_vector_bytes > self.bound_vector_bytes.load(Ordering::Relaxed)
    }

    /// Called by a commit that wrote memories, after it is visible: if the queue holds more
    /// changes or bytes of embeddings than its bound ([`IndexQueueBound`]; by default
    /// [`MAX_QUEUED_INDEX_CHANGES`] and [`MAX_QUEUED_INDEX_VECTOR_BYTES`]), waits until the
    /// indexer has brought it back within them (at most `SEARCH_INDEX_WAIT`; the commit has
    /// succeeded either way). A memory bound for sustained overload; with the default bound,
    /// ordinary bursts never reach it.
    ///
    /// Back within the bound, not down to some lower mark: the indexer wakes the held commits
    /// after every group it applies, so under sustained overload they are let through as fast
    /// as it frees room, each held for about one group's time. Waiting for the queue to drain to
    /// half held every writer at once for as long as that took: at 64 writers with 384-dimension
    /// vectors the longest commit took 20 to 30 s (this wait's cap) against 0.2 s now, for the
    /// same sustained rate, which is the indexer's either way (docs/benchmarks.md, *Index
    /// back-pressure*).
    pub fn throttle(&self) {
        if !self.over_bound() {
            return;
        }
        self.throttled_commits.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut guard = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        while self.over_bound() {
            let waited = started.elapsed();
            if waited >= super::SEARCH_INDEX_WAIT {
                return;
            }
            guard = self
                .progressed
                .wait_timeout(guard, super::SEARCH_INDEX_WAIT - waited)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// [`Indexes::throttle`] for a task: it yields instead of blocking its thread. Woken by the
    /// indexer's progress (there is no timer here, so the `SEARCH_INDEX_WAIT` bound is checked
    /// when the indexer progresses; an indexer paused by the test hook holds the task until it
    /// resumes).
    pub async fn throttle_async(&self) {
        if !self.over_bound() {
            return;
        }
        self.throttled_commits.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        std::future::poll_fn(|cx| {
            if !self.over_bound() || started.elapsed() >= super::SEARCH_INDEX_WAIT {
                return Poll::Ready(());
            }
            self.progress_wakers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(cx.waker().clone());
            // Checked again after registering: progress made in between found no waker to wake.
            if self.over_bound() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Waits until every commit up to `lsn` is indexed; `IndexTimeout` after `timeout`.
    pub fn wait_for(&self, lsn: Lsn, timeout: Duration) -> Result<()> {
        if self.indexed_lsn() >= lsn {
            return Ok(());
        }
        let started = Instant::now();
        let mut guard = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let indexed = self.indexed_lsn();
            if indexed >= lsn {
                return Ok(());
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(CoreError::IndexTimeout {
                    lsn,
                    indexed_lsn: indexed,
                    waited_ms: waited.as_millis() as u64,
                });
            }
            guard = self
                .progressed
                .wait_timeout(guard, timeout - waited)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn stats(&self, visible_lsn: Lsn) -> IndexStats {
        let indexed_lsn = self.indexed_lsn();
        let queued_batches = self.queue.lock().unwrap_or_else(|p| p.into_inner()).changes.len();
        let queued_vector_bytes = self.queued_vector_bytes.load(Ordering::Acquire);
        let map = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        let (mut versions, mut vectors, mut heap_bytes) = (0, 0, 0);
        for index in map.values() {
            let index = index.read().unwrap_or_else(|p| p.into_inner());
            versions += index.entries.len();
            vectors += index.hnsw.as_ref().map_or(0, Hnsw::len);
            heap_bytes += index.heap_bytes();
        }
        IndexStats {
            indexed_lsn,
            visible_lsn,
            lag_lsns: visible_lsn.saturating_sub(indexed_lsn),
            queued_batches,
            queued_changes: self.queued_changes.load(Ordering::Acquire),
            queued_vector_bytes,
            throttled_commits: self.throttled_commits.load(Ordering::Relaxed),
            namespaces: map.len(),
            versions,
            vectors,
            heap_bytes,
            origin: self.origin.clone(),
        }
    }

    fn run(&self) {
        let mut spare_buffers = Vec::new();
        loop {
            // The batches stay queued (they are the searches' tail) until applied.
            let snapshot = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                queue.changes.recycle(std::mem::take(&mut spare_buffers));
                while (queue.changes.is_empty() || queue.paused) && !queue.stop {
                    queue = self.work.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
                if queue.stop {
                    // Closing: what is still queued is in the log, and the next open catches the
                    // index up from it (index file of the last checkpoint + replay), so applying
                    // it now would only delay the close.
                    return;
                }
                queue.changes.snapshot()
            };
            let mut changes = snapshot.changes();
            let mut rest = &snapshot.batches[..];
            let mut group_changes: Vec<&IndexChange> = Vec::with_capacity(PLANNED_GROUP_CHANGES);
            while !rest.is_empty() {
                {
                    let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                    if queue.paused || queue.stop {
                        break;
                    }
                }
                // As many whole batches as fit in one group (at least one, however large).
                let mut group = 1;
                let mut count = rest[0].changes;
                while let Some(next) = rest.get(group) {
                    if count + next.changes > PLANNED_GROUP_CHANGES {
                        break;
                    }
                    count += next.changes;
                    group += 1;
                }
                group_changes.clear();
                group_changes.extend(changes.by_ref().take(count));
                self.apply_batches(&rest[..group], &group_changes);
                rest = &rest[group..];
            }
            drop((changes, group_changes));
            spare_buffers = snapshot.into_spare_buffers();
        }
    }
}

/// The index applier thread; stops when dropped (at close), leaving what is still queued to the
/// next open, which catches the index up from the log.
pub(crate) struct IndexApplier {
    indexes: Arc<Indexes>,
    thread: Option<JoinHandle<()>>,
}

impl IndexApplier {
    pub fn spawn(indexes: Arc<Indexes>, nice: i32) -> Result<IndexApplier> {
        let for_thread = indexes.clone();
        let thread = std::thread::Builder::new()
            .name("engram-indexer".into())
            .spawn(move || {
                crate::threads::lower_current_thread_priority(nice);
                for_thread.run()
            })
            .map_err(|e| CoreError::Io {
                context: "starting the search index thread".into(),
                source: Arc::new(e),
            })?;
        Ok(IndexApplier {
            indexes,
            thread: Some(thread),
        })
    }
}

impl Drop for IndexApplier {
    fn drop(&mut self) {
        self.indexes.queue.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        self.indexes.work.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A queued change writing memory `id` of namespace "ns" at `lsn` (also used by tail.rs's tests).
    pub(crate) fn memory_change(lsn: Lsn, id: &str, embedding: Option<Vec<f32>>) -> IndexChange {
        let memory = Memory {
            id: id.to_string(),
            text: format!("text of {id} at {lsn}"),
            embedding: embedding.map(Into::into),
            metadata: crate::Metadata::new(),
            created_ms: 0,
            updated_ms: 0,
        };
        IndexChange::new(
            lsn,
            Key::new("ns", Space::Memory, id.as_bytes().to_vec()),
            Some(Arc::new(Value::Memory(memory))),
        )
    }

    /// [`memory_change`] as an insert ([`IndexChange::creates`]): the memory's first version.
    pub(crate) fn memory_insert(lsn: Lsn, id: &str, embedding: Option<Vec<f32>>) -> IndexChange {
        IndexChange {
            creates: true,
            ..memory_change(lsn, id, embedding)
        }
    }

    fn deletion(lsn: Lsn, id: &str) -> IndexChange {
        IndexChange::new(lsn, Key::new("ns", Space::Memory, id.as_bytes().to_vec()), None)
    }

    /// A memory scores the same bits whether a search finds it in the queued tail or in the
    /// index: the same snapshot answers the same before and after the indexer catches up.
    #[test]
    fn a_memory_scores_the_same_in_the_tail_and_in_the_index() {
        let mut floats = crate::search::tail::tests::Floats(3);
        for dimension in [3, 17, 384] {
            let changes: Vec<IndexChange> = (1..=200)
                .map(|i| memory_insert(i, &format!("m{i}"), Some(floats.vector(dimension))))
                .collect();
            let query = floats.vector(dimension);
            for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
                let mut index = NamespaceIndex::new();
                index.metric = metric;
                for change in &changes {
                    index.apply(change, None);
                }
                let mut from_index: Vec<(String, u32)> = index
                    .vector_search(&query, 200, 200, 256, None, &TailView::empty())
                    .into_iter()
                    .map(|(slot, score)| (index.entries[slot as usize].memory().unwrap().id.clone(), score.to_bits()))
                    .collect();
                let mut empty = NamespaceIndex::new();
                empty.metric = metric;
                let tail = TailView::new(vec![Arc::new(changes.clone())], 0, |_| true);
                let mut from_tail: Vec<(String, u32)> =
                    crate::search::tail::vector_search(Some(&empty), &tail, &query, 200, 200, 256, None)
                        .into_iter()
                        .map(|(document, score)| {
                            let memory = crate::search::tail::memory_of(Some(&empty), &tail, document).unwrap();
                            (memory.id.clone(), score.to_bits())
                        })
                        .collect();
                from_index.sort();
                from_tail.sort();
                assert_eq!(from_index.len(), 200, "{metric:?} {dimension}");
                assert_eq!(from_index, from_tail, "{metric:?} {dimension}");
            }
        }
    }

    /// A lagging search takes its tail, then reads the index, which the indexer may have
    /// advanced meanwhile. The index's versions created above the tail's indexed LSN are the
    /// tail's own and stay hidden, and so do the older versions of memories the tail updated,
    /// on every path a search takes (a tail of inserts alone: by LSN; with a filter, or an
    /// update in the tail: by id too), for vectors and for keyword statistics alike: no memory
    /// is answered twice.
    #[test]
    fn the_index_hides_the_versions_its_lagging_tail_holds() {
        let vector = |i: Lsn| -> Vec<f32> { (0..8).map(|d| ((i * 7 + d * 3) % 11) as f32 - 5.0).collect() };
        let inserts: Vec<IndexChange> = (1..=300).map(|i| memory_insert(i, &format!("m{i}"), Some(vector(i)))).collect();
        let mut index = NamespaceIndex::new();
        for change in &inserts {
            index.apply(change, None);
        }
        let every_memory = Map::new();
        let terms = ["text".to_string()];
        let check = |tail: &TailView, at: Lsn, expected: usize, hidden_by_id: Option<Lsn>| {
            for filter in [None, Some(&every_memory)] {
                let hits = index.vector_search(&vector(7), at, 400, 400, filter, tail);
                let created: Vec<Lsn> = hits.iter().map(|&(slot, _)| index.entries[slot as usize].created_lsn).collect();
                assert_eq!(hits.len(), expected, "filter {filter:?}: {created:?}");
                assert!(created.iter().all(|&lsn| lsn <= 200 && Some(lsn) != hidden_by_id), "{created:?}");
            }
            assert_eq!(index.keyword_statistics(&terms, at, tail).documents, expected as u64);
        };
        // Taken when the index was complete up to 200; the indexer applied up to 300 since.
        let tail = TailView::new(vec![Arc::new(inserts[200..].to_vec())], 200, |_| true);
        assert!(!tail.replaces_by_id());
        check(&tail, 300, 200, None);
        // The tail also updated m5 at 301, which the index has not applied: its version of m5
        // (created at 5, still valid at 301 as far as the index knows) is hidden by id.
        let mut changes = inserts[200..].to_vec();
        changes.push(memory_change(301, "m5", Some(vector(1_000))));
        let tail = TailView::new(vec![Arc::new(changes)], 200, |_| true);
        assert!(tail.replaces_by_id());
        check(&tail, 301, 199, Some(5));
    }

    /// The backlog an open queues (the replayed log, or the store for a rebuild) is in the
    /// queue's statistics but does not count toward the bound that holds new memory commits;
    /// commits queued after it do, and once the indexer has applied everything, nothing is
    /// counted.
    #[test]
    fn an_opens_backlog_counts_in_the_statistics_but_not_toward_the_bound() {
        let indexes = Arc::new(Indexes::with_namespaces(HashMap::new(), IndexOrigin::Rebuilt { reason: None }));
        indexes.set_bound(IndexQueueBound {
            changes: 2,
            vector_bytes: 5 * 4 * 4,
        });
        let vector = || Some(vec![1.0, 2.0, 3.0, 4.0]);
        let backlog: Vec<IndexChange> = (0..10).map(|i| memory_change(1, &format!("old{i}"), vector())).collect();
        indexes.enqueue_at_open(1, backlog);
        assert!(!indexes.over_bound(), "10 changes and 160 bytes, all owed by the open");
        let stats = indexes.stats(1);
        assert_eq!((stats.queued_changes, stats.queued_vector_bytes), (10, 160));

        indexes.enqueue(2, vec![memory_change(2, "new0", vector()), memory_change(2, "new1", vector())]);
        assert!(!indexes.over_bound(), "2 new changes: at the bound, not over it");
        indexes.enqueue(3, vec![memory_change(3, "new2", None)]);
        assert!(indexes.over_bound(), "3 new changes");
        assert_eq!(indexes.stats(3).queued_changes, 13);

        let applier = IndexApplier::spawn(indexes.clone(), 0).unwrap();
        indexes.wait_for(3, Duration::from_secs(30)).unwrap();
        drop(applier);
        assert!(!indexes.over_bound());
        let stats = indexes.stats(3);
        assert_eq!((stats.queued_changes, stats.queued_vector_bytes, stats.vectors), (0, 0, 12));
        assert_eq!(indexes.open_backlog_changes.load(Ordering::Acquire), 0);
        assert_eq!(indexes.open_backlog_vector_bytes.load(Ordering::Acquire), 0);

        // A vector-bytes bound alone: the new bytes over it hold commits, the open's do not.
        let indexes = Indexes::with_namespaces(HashMap::new(), IndexOrigin::Rebuilt { reason: None });
        indexes.set_bound(IndexQueueBound {
            changes: 1_000,
            vector_bytes: 20,
        });
        indexes.enqueue_at_open(1, vec![memory_change(1, "a", vector()), memory_change(1, "b", vector())]);
        assert!(!indexes.over_bound());
        indexes.enqueue(2, vec![memory_change(2, "c", Some(vec![0.5; 6]))]);
        assert!(indexes.over_bound(), "24 new bytes over a bound of 20");
    }

    /// The plans of a group are made for the node numbers `apply` will give: through a replayed
    /// (already indexed) change, a deletion, an update, a memory without an embedding, one of
    /// another dimension and a metric change in the group, every planned vector finds its plan
    /// for the node it becomes, so every plan is used.
    #[test]
    fn plans_are_made_for_the_node_numbers_apply_gives() {
        let vector = |i: usize| vec![(i % 7) as f32, (i % 11) as f32, (i % 13) as f32, 1.0];
        let mut index = NamespaceIndex::new();
        let mut applied = Vec::new();
        for i in 0..100 {
            let change = memory_change(i as Lsn + 1, &format!("m{i}"), Some(vector(i)));
            index.apply(&change, None);
            applied.push(change);
        }
        let mut group: Vec<IndexChange> = vec![applied[40].clone(), deletion(101, "m3")];
        group.push(memory_change(102, "m5", Some(vector(500))));
        group.push(memory_change(103, "m6", None));
        group.push(memory_change(104, "other", Some(vec![1.0; 5])));
        group.push(IndexChange::new(
            105,
            Key::new("ns", Space::Meta, METRIC_KEY.to_vec()),
            Some(Arc::new(Value::Kv(crate::model::KvValue::Json(serde_json::json!("cosine"))))),
        ));
        for i in 0..20 {
            group.push(memory_change(106 + i as Lsn, &format!("new{i}"), Some(vector(1_000 + i))));
        }
        // A vector added earlier in the same group, updated.
        group.push(memory_change(200, "new3", Some(vector(77))));
        let group: Vec<&IndexChange> = group.iter().collect();
        let plans = index.plan_vector_insertions(&group);
        assert_eq!(plans.iter().filter(|p| p.is_some()).count(), 22, "an update and 21 new vectors");
        for (change, plan) in group.iter().zip(plans) {
            let before = index.hnsw.as_ref().unwrap().len();
            let planned_node = plan.as_ref().map(InsertPlan::node);
            index.apply(change, plan);
            let after = index.hnsw.as_ref().unwrap().len();
            match planned_node {
                Some(node) => assert_eq!((node as usize, after), (before, before + 1), "lsn {}", change.lsn),
                None => assert_eq!(after, before, "lsn {}: a vector added without a plan", change.lsn),
            }
        }
    }

    /// A plan made for another node number than the one a change gets is not used: the vector
    /// is inserted as it would be without one.
    #[test]
    fn a_plan_for_another_node_number_is_ignored() {
        let vector = |i: usize| vec![(i % 7) as f32, (i % 11) as f32, (i % 13) as f32, 1.0];
        let (mut with_wrong_plan, mut without) = (NamespaceIndex::new(), NamespaceIndex::new());
        for i in 0..300 {
            let change = memory_change(i as Lsn + 1, &format!("m{i}"), Some(vector(i)));
            with_wrong_plan.apply(&change, None);
            without.apply(&change, None);
        }
        let change = memory_change(301, "x", Some(vector(1_234)));
        let graph = with_wrong_plan.hnsw.as_ref().unwrap();
        let wrong = graph.plan_insert(&graph.metric().prepare(&vector(1_234)), graph.len() as u32 + 1);
        with_wrong_plan.apply(&change, Some(wrong));
        without.apply(&change, None);
        let shape = |index: &NamespaceIndex| crate::search::hnsw::tests::shape(index.hnsw.as_ref().unwrap());
        assert!(shape(&with_wrong_plan) == shape(&without));
    }

    /// The flat per-node validity the traversal reads must equal the version table's, through
    /// inserts, updates (with and without embeddings), deletions and replayed changes; and an
    /// unfiltered search at every LSN admits exactly the versions valid there.
    #[test]
    fn node_validity_follows_the_version_table_through_updates_deletions_and_replays() {
        let mut index = NamespaceIndex::new();
        let mut seed = 3u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        let mut changes = Vec::new();
        for lsn in 1..=400u64 {
            let id = format!("m{}", next() % 40);
            let change = match next() % 5 {
                0 => deletion(lsn, &id),
                1 => memory_change(lsn, &id, None),
                _ => memory_change(lsn, &id, Some(vec![(next() % 100) as f32, (next() % 100) as f32])),
            };
            index.apply(&change, None);
            changes.push(change);
            // Replaying an already indexed change (as after a reopen) must change nothing.
            let replayed = &changes[(next() as usize) % changes.len()];
            index.apply(replayed, None);
        }
        let graph = index.hnsw.as_ref().expect("vectors were indexed");
        assert_eq!(index.node_validity.len(), graph.len());
        assert_eq!(index.node_entry.len(), graph.len());
        let mut superseded = 0;
        for (node, &slot) in index.node_entry.iter().enumerate() {
            let entry = &index.entries[slot as usize];
            assert_eq!(index.node_validity[node], NodeValidity::of(entry), "node {node}");
            superseded += usize::from(entry.superseded_lsn != Lsn::MAX);
        }
        assert!(superseded > 0, "the history superseded some vectors");
        assert_eq!(index.ended_nodes, superseded);
        for at in [0, 1, 57, 200, 399, 400, Lsn::MAX - 1] {
            let hits = index.vector_search(&[50.0, 50.0], at, 1000, 1000, None, &TailView::empty());
            let expected = index.entries.iter().enumerate().filter(|(slot, e)| {
                e.valid_at(at) && e.memory().is_some_and(|m| m.embedding.is_some()) && index.node_entry.contains(&(*slot as u32))
            });
            assert_eq!(hits.len(), expected.count(), "at {at}");
            assert!(hits.iter().all(|&(slot, _)| index.entries[slot as usize].valid_at(at)), "at {at}");
        }
    }
}
