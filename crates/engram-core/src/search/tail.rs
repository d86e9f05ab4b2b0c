//! Searching a snapshot the index has not reached yet, without waiting for the indexer.
//!
//! The indexes are complete up to `indexed_lsn` = I; the commits in (I, S] of a search at
//! snapshot S are still queued for the indexer (the *tail*, kept in LSN order by the commit
//! path, search/index.rs). A search takes I and the tail together (one lock), keeps the last
//! change of each memory in the tail (the version valid at S, or its deletion), searches those
//! exactly, and merges them with the index's answer, from which every memory the tail changed is
//! excluded inside the traversal (the index may already hold some of the tail, or still hold
//! the version the tail replaced). BM25 statistics are those of the union, so keyword scores
//! are exactly those of the snapshot.
//!
//! The vector scan reads int8 codes of the tail's embeddings first (a quarter of their bytes,
//! made once per queued change by the first search that scans it: [`TailCode`]), with a bound on
//! how far each code's distance can be from the exact one; only the memories whose bound could
//! reach the best `k` are re-scored from their f32 embeddings. The answer is that of the exact
//! scan, bit for bit (docs/search.md, *Searching the tail*).

use super::index::{IndexChange, NamespaceIndex, METRIC_KEY};
use super::keyword::{bm25_idf, bm25_term, term_counts, tokenize};
use super::queue::Chunk;
use super::vector::Metric;
use crate::model::{Memory, Space, Value};
use engram_wal::Lsn;
use hashbrown::HashTable;
use serde_json::Map;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

/// A document of a search: an index entry (its slot) or a tail memory (its place in the tail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Document {
    Indexed(u32),
    Tail(u32),
}

/// The tail of one namespace as of a snapshot.
///
/// It holds the chunks of queued changes it was built from (shared with the queue,
/// search/queue.rs) and refers to their changes by place, so building it copies no id and takes
/// no reference on any value: a search of a lagging namespace builds one over the whole tail,
/// up to the queue's bound of some 175,000 one-memory commits (docs/search.md, *Back-pressure*).
///
/// The index may hold versions the tail replaces, which a search must hide: those the tail
/// wrote itself (created above `indexed_lsn`: hidden by their LSN, the index having applied part
/// of the tail meanwhile), and the earlier versions of memories the tail updated or deleted
/// (hidden by id). An insert ([`IndexChange::creates`]) replaces no version the index holds at
/// or below `indexed_lsn` (none is valid just before it), so only the other changes go into the
/// id table: a tail of inserts, what agents mostly write, is taken without hashing an id, and a
/// search admits the index's nodes by their LSNs alone.
pub(crate) struct TailView {
    chunks: Vec<Chunk>,
    /// Per memory the tail changed: its last change up to the snapshot (whose value is `None`
    /// if that change deleted it), as (chunk, change). The memories the tail updated or deleted
    /// first, in order of their first such change, then those it inserted, in LSN order: a
    /// fixed order, so ties break the same way every time.
    versions: Vec<ChangePlace>,
    /// The places in `versions` of the memories the tail updated or deleted, hashed by memory id
    /// (foldhash, seeded per process).
    changed: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// The index was complete up to this LSN when the tail was taken: the tail holds every
    /// change above it.
    indexed_lsn: Lsn,
    /// The namespace's metric if the tail sets it.
    pub metric: Option<Metric>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ChangePlace {
    chunk: u32,
    change: u32,
}

/// BM25 inputs from the index for the documents it contributes (see
/// `NamespaceIndex::keyword_statistics`): per query term, (slot, term count, document length).
pub(crate) struct KeywordStatistics {
    pub documents: u64,
    pub total_tokens: u64,
    pub postings: Vec<Vec<(u32, u32, u32)>>,
}

impl TailView {
    pub fn empty() -> TailView {
        TailView {
            chunks: Vec::new(),
            versions: Vec::new(),
            changed: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            indexed_lsn: Lsn::MAX,
            metric: None,
        }
    }

    /// From chunks of queued changes in LSN order, holding every change above `indexed_lsn`,
    /// keeping the changes `wanted` accepts (the last change of a memory wins). An update or
    /// deletion whose id is not UTF-8 names no memory and is skipped; an insert's id is not read
    /// here (its value is the memory, and no lookup by id can match it).
    pub fn new(chunks: Vec<Chunk>, indexed_lsn: Lsn, wanted: impl Fn(&IndexChange) -> bool) -> TailView {
        let changes: usize = chunks.iter().map(|c| c.len()).sum();
        let mut tail = TailView {
            chunks,
            indexed_lsn,
            ..TailView::empty()
        };
        let mut inserts: Vec<ChangePlace> = Vec::with_capacity(changes);
        let TailView {
            chunks,
            versions,
            changed,
            hasher,
            metric,
            ..
        } = &mut tail;
        for (b, chunk) in chunks.iter().enumerate() {
            for (c, change) in chunk.iter().enumerate() {
                // The changes lie in order in memory, but each names its namespace in an
                // allocation of its own: requested a few changes ahead, so that the misses of
                // successive changes overlap instead of queueing.
                if let Some(ahead) = chunk.get(c + PREFETCH_CHANGES_AHEAD) {
                    super::vector::prefetch(ahead.key.namespace.as_str());
                }
                if !wanted(change) {
                    continue;
                }
                let place = ChangePlace {
                    chunk: b as u32,
                    change: c as u32,
                };
                match change.key.space {
                    Space::Meta if change.key.id == METRIC_KEY => {
                        if let Some(found) = change.value.as_deref().and_then(super::index::metric_of) {
                            *metric = Some(found);
                        }
                    }
                    Space::Memory if change.creates => inserts.push(place),
                    Space::Memory if std::str::from_utf8(&change.key.id).is_ok() => {
                        let id = change.key.id.as_slice();
                        let hash = hasher.hash_one(id);
                        match changed.find(hash, |&v| id_at(chunks, versions, v) == id) {
                            Some(&v) => versions[v as usize] = place,
                            None => {
                                changed.insert_unique(hash, versions.len() as u32, |&v| hasher.hash_one(id_at(chunks, versions, v)));
                                versions.push(place);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if changed.is_empty() {
            *versions = inserts;
            return tail;
        }
        // An insert is its memory's first change in the tail unless the tail deleted the memory
        // before (and then re-created it): the later of the two is the memory's version.
        versions.reserve(inserts.len());
        for place in inserts {
            let id = change_at(chunks, place).key.id.as_slice();
            match changed.find(hasher.hash_one(id), |&v| id_at(chunks, versions, v) == id) {
                Some(&v) if versions[v as usize] < place => versions[v as usize] = place,
                Some(_) => {}
                None => versions.push(place),
            }
        }
        tail
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Whether the tail replaces the index's version of memory `id` created at `created_lsn`
    /// (so that version is not the answer): a version created above the indexed LSN is the
    /// tail's own, and an older one is replaced if the tail updated or deleted its memory.
    #[inline]
    pub fn replaces(&self, created_lsn: Lsn, id: &str) -> bool {
        if self.versions.is_empty() {
            return false;
        }
        if created_lsn > self.indexed_lsn {
            return true;
        }
        if self.changed.is_empty() {
            return false;
        }
        let id = id.as_bytes();
        self.changed
            .find(self.hasher.hash_one(id), |&v| id_at(&self.chunks, &self.versions, v) == id)
            .is_some()
    }

    /// Whether the tail updated or deleted a memory (so the index's versions must be looked up
    /// by id, not only by LSN, to hide the ones it replaced).
    pub fn replaces_by_id(&self) -> bool {
        !self.changed.is_empty()
    }

    /// The LSN up to which the index was complete when the tail was taken.
    pub fn indexed_lsn(&self) -> Lsn {
        self.indexed_lsn
    }

    /// The value of the memory at `place` at the snapshot (`None`: the tail deleted it).
    fn value(&self, place: u32) -> Option<&Arc<Value>> {
        let at = *self.versions.get(place as usize)?;
        change_at(&self.chunks, at).value.as_ref()
    }

    pub fn memory(&self, place: u32) -> Option<&Memory> {
        match self.value(place).map(Arc::as_ref) {
            Some(Value::Memory(m)) => Some(m),
            _ => None,
        }
    }

    /// The memories the tail holds at the snapshot (not the ones it deleted), with their places.
    fn memories(&self) -> impl Iterator<Item = (u32, &Memory)> {
        self.memory_changes().map(|(place, _, memory)| (place, memory))
    }

    /// [`TailView::memories`] with the queued change each comes from.
    fn memory_changes(&self) -> impl Iterator<Item = (u32, &IndexChange, &Memory)> {
        (0..self.versions.len() as u32).filter_map(|place| {
            // The change a few places ahead, and the value of the one half as far, requested
            // early so that the misses of successive memories overlap.
            let ahead = |distance: usize| {
                let at = *self.versions.get(place as usize + distance)?;
                Some(change_at(&self.chunks, at))
            };
            if let Some(change) = ahead(PREFETCH_CHANGES_AHEAD) {
                super::vector::prefetch(change);
            }
            if let Some(value) = ahead(PREFETCH_CHANGES_AHEAD / 2).and_then(|c| c.value.as_deref()) {
                super::vector::prefetch(value);
            }
            let change = change_at(&self.chunks, self.versions[place as usize]);
            match change.value.as_deref() {
                Some(Value::Memory(m)) => Some((place, change, m)),
                _ => None,
            }
        })
    }
}

/// An embedding's int8 code for the tail scan, with what bounds the scan's error.
///
/// The codes `c` and scale `s` are those of the graph ([`super::codes::encode_to`]) for the
/// embedding `x` as stored (not prepared: the metric may be set later in the same tail). The
/// query `q` is encoded the same way once per search (`q = t d + f`). Then
/// `q·x = t s (d·c) + q·r + s (f·c)` with the residual `r = x - s c`, and by Cauchy-Schwarz
/// `|q·r| <= |q| |r|` and `|f·c| <= |f| |c|`: the exact integer product `d·c` bounds the inner
/// product every metric's distance is a monotone function of, within `|q| |r| + s |f| |c|`.
/// `|r|`, `|x|` and `|c|` are computed in f64 and rounded up.
#[derive(Debug, Clone)]
pub(crate) struct TailCode {
    codes: Box<[i8]>,
    scale: f32,
    residual_norm: f32,
    norm: f32,
    /// `|c|`, the codes' own norm.
    code_norm: f32,
}

impl TailCode {
    fn of(embedding: &[f32]) -> TailCode {
        let mut codes = vec![0i8; embedding.len()].into_boxed_slice();
        let scale = super::codes::encode_to(embedding, &mut codes).scale;
        let (mut residual, mut norm) = (0f64, 0f64);
        for (&x, &c) in embedding.iter().zip(codes.iter()) {
            let r = f64::from(x) - f64::from(scale) * f64::from(c);
            residual += r * r;
            norm += f64::from(x) * f64::from(x);
        }
        let code_norm = round_up(f64::from(super::codes::dot(&codes, &codes)).sqrt());
        TailCode {
            codes,
            scale,
            residual_norm: round_up(residual.sqrt()),
            norm: round_up(norm.sqrt()),
            code_norm,
        }
    }
}

/// The smallest f32 at or above `x` (x finite, non-negative).
fn round_up(x: f64) -> f32 {
    let rounded = x as f32;
    if f64::from(rounded) < x {
        rounded.next_up()
    } else {
        rounded
    }
}

/// Beyond this, `(|q| + |x|)²` (the largest intermediate of any metric's f32 distance) comes
/// near f32's range (3.4e38), and the bounds leave the memory to the exact pass.
const OVERFLOW_GUARD: f64 = 1e36;

/// Below this squared norm (about 2^-100), the squares of an embedding's coordinates may
/// underflow by more than rounding's share of the sum; such an embedding is scored exactly.
const UNDERFLOW_GUARD: f64 = 1e-30;

/// Bounds on the f32 distances the exact scan computes, from a tail code.
struct DistanceBounds {
    metric: Metric,
    /// The prepared query's norm.
    query_norm: f64,
    /// The prepared query's codes `d` and scale `t`, and the norm of its residual `|q - t d|`.
    query_codes: Vec<i8>,
    query_scale: f64,
    query_residual_norm: f64,
    /// Relative error allowed for the f32 rounding of the exact distance (its kernel's sums and
    /// its own arithmetic; the codes' product is an exact integer). Recursive summation of n
    /// terms errs by at most about n·2^-24 of the sum of magnitudes; 8·n·2^-24 covers it with
    /// room, and only widens the bounds (more memories re-scored), never the answer.
    rounding: f64,
}

impl DistanceBounds {
    fn new(metric: Metric, prepared_query: &[f32]) -> DistanceBounds {
        let query_norm = prepared_query.iter().map(|&q| f64::from(q) * f64::from(q)).sum::<f64>().sqrt();
        let encoded = super::codes::EncodedQuery::new(prepared_query);
        let query_scale = f64::from(encoded.params.scale);
        let query_residual_norm = prepared_query
            .iter()
            .zip(&encoded.codes)
            .map(|(&q, &d)| (f64::from(q) - query_scale * f64::from(d)).powi(2))
            .sum::<f64>()
            .sqrt();
        DistanceBounds {
            metric,
            query_norm,
            query_codes: encoded.codes,
            query_scale,
            query_residual_norm,
            rounding: 8.0 * prepared_query.len().max(1) as f64 * f64::from(f32::EPSILON / 2.0),
        }
    }

    /// (lower, upper) bounds on the distance the exact scan computes for the embedding behind
    /// `code`. `None` (no bound: always re-scored) where relative rounding does not bound the
    /// f32 arithmetic's error: where it could overflow, and for embeddings so short that their
    /// squares underflow (cosine divides by the norm computed from them; zero is one).
    /// Elsewhere underflow errs by at most a few 2^-149 per term, far inside the threshold's
    /// widening. (The integer product cannot overflow: `MAX_DIMENSION` x 127² < 2^31.)
    fn of(&self, code: &TailCode) -> Option<(f64, f64)> {
        let norm = f64::from(code.norm);
        let (q, e) = (self.query_norm, self.rounding);
        if norm * norm < UNDERFLOW_GUARD || (q + norm) * (q + norm) > OVERFLOW_GUARD {
            return None;
        }
        let scale = f64::from(code.scale);
        let code_dot = f64::from(super::codes::dot(&self.query_codes, &code.codes));
        let inner = self.query_scale * scale * code_dot;
        let spread = q * f64::from(code.residual_norm) + scale * self.query_residual_norm * f64::from(code.code_norm);
        let (low_inner, high_inner) = (inner - spread, inner + spread);
        Some(match self.metric {
            Metric::Dot => {
                let slack = e * q * norm;
                (-high_inner - slack, -low_inner + slack)
            }
            Metric::Cosine => {
                let slack = 2.0 * e * (q + 1.0);
                (1.0 - high_inner / norm - slack, 1.0 - low_inner / norm + slack)
            }
            Metric::L2 => {
                let base = q * q + norm * norm;
                let slack = 2.0 * e * (q + norm) * (q + norm);
                (base - 2.0 * high_inner - slack, base - 2.0 * low_inner + slack)
            }
        })
    }
}

/// The `k`-th smallest upper bound, widened so that no memory whose exact distance is above it
/// can tie in score with one at or below it (scores round distances, and L2's clamps at 0).
fn rescore_threshold(upper_bounds: &mut [f64], k: usize, metric: Metric) -> f64 {
    let (_, &mut kth, _) = upper_bounds.select_nth_unstable_by(k - 1, f64::total_cmp);
    let kth = if metric == Metric::L2 { kth.max(0.0) } else { kth };
    kth + (kth.abs() + 1.0) * 1e-6
}

/// Places only ever point at changes of the view's own chunks.
#[inline]
fn change_at(chunks: &[Chunk], place: ChangePlace) -> &IndexChange {
    &chunks[place.chunk as usize][place.change as usize]
}

/// The memory id of entry `v` of `versions` (what the id table hashes and compares).
#[inline]
fn id_at<'a>(chunks: &'a [Chunk], versions: &[ChangePlace], v: u32) -> &'a [u8] {
    &change_at(chunks, versions[v as usize]).key.id
}

/// The stored value (a memory) behind a document, shared with the store.
pub(crate) fn shared_value_of<'a>(index: Option<&'a NamespaceIndex>, tail: &'a TailView, document: Document) -> Option<&'a Arc<Value>> {
    match document {
        Document::Indexed(slot) => index?.entries.get(slot as usize)?.value.as_ref(),
        Document::Tail(place) => tail.value(place),
    }
}

/// The memory behind a document.
pub(crate) fn memory_of<'a>(index: Option<&'a NamespaceIndex>, tail: &'a TailView, document: Document) -> Option<&'a Memory> {
    match document {
        Document::Indexed(slot) => index?.entries.get(slot as usize)?.memory(),
        Document::Tail(place) => tail.memory(place),
    }
}

/// How many queued changes (or tail memories) ahead a walk over them requests the next one's
/// first load (its namespace, or its change); the loads that depend on it are requested half
/// as far ahead.
const PREFETCH_CHANGES_AHEAD: usize = 16;

/// How many embeddings ahead the tail scan requests the next one's first lines.
const SCAN_PREFETCH_DISTANCE: usize = 4;
/// The first cache lines of an embedding the scan requests; the CPU's own prefetcher follows a
/// sequential read from there.
const SCAN_PREFETCH_LINES: usize = 4;

/// Requests the first `lines` cache lines of `floats`.
#[inline]
fn prefetch_lines(floats: &[f32], lines: usize) {
    const FLOATS_PER_LINE: usize = 16;
    for line in floats.chunks(FLOATS_PER_LINE).take(lines) {
        super::vector::prefetch(line);
    }
}

/// Requests the first cache lines of a code (up to eight: 384 dimensions take six).
#[inline]
fn prefetch_code_lines(codes: &[i8]) {
    const CODES_PER_LINE: usize = 64;
    for line in codes.chunks(CODES_PER_LINE).take(SCAN_PREFETCH_LINES * 2) {
        super::vector::prefetch(line);
    }
}

/// The `k` nearest memories at snapshot `at` matching `filter`: the index's answer (tail
/// memories excluded) merged with an exact scan of the tail. (document, score), best first.
pub(crate) fn vector_search(
    index: Option<&NamespaceIndex>,
    tail: &TailView,
    query: &[f32],
    at: Lsn,
    k: usize,
    ef: usize,
    filter: Option<&Map<String, serde_json::Value>>,
) -> Vec<(Document, f32)> {
    let mut hits: Vec<(Document, f32)> = index
        .map(|index| index.vector_search(query, at, k, ef, filter, tail))
        .unwrap_or_default()
        .into_iter()
        .map(|(slot, score)| (Document::Indexed(slot), score))
        .collect();
    if tail.is_empty() {
        return hits;
    }
    // The metric is fixed before the first vector, so the graph's (when there is one) is the
    // namespace's; otherwise the tail may be the one declaring it.
    let metric = index
        .and_then(|i| i.hnsw.as_ref().map(|g| g.metric()))
        .or(tail.metric)
        .or(index.map(|i| i.metric))
        .unwrap_or_default();
    let prepared_query = metric.prepare(query);
    hits.extend(scan(tail, metric, &prepared_query, k, filter));
    // Best first, ties by document: a total order, so selecting the best `k` and sorting only
    // those gives what sorting the whole tail would, without sorting it (a small share of a
    // search's cost at 50,000 queued changes, docs/search.md, *Figures*).
    let order = |a: &(Document, f32), b: &(Document, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k > 0 && hits.len() > k {
        hits.select_nth_unstable_by(k - 1, order);
        hits.truncate(k);
    }
    hits.sort_by(order);
    hits.truncate(k);
    hits
}

/// The tail's memories matching `filter` whose embeddings have the query's dimension, with
/// their scores: every one that can be among the best `k` (the others are left out), each
/// scored with the exact f32 distance. Passes over the tail:
/// 1. find the embeddings (a chain of loads per memory, through its batch and value, which the
///    CPU overlaps across memories in a short loop);
/// 2. bound each one's distance from its int8 code (made now if no search made it before);
/// 3. re-score exactly the memories whose lower bound is within the `k`-th best upper bound,
///    each embedding's first lines requested a few memories ahead.
fn scan(
    tail: &TailView,
    metric: Metric,
    prepared_query: &[f32],
    k: usize,
    filter: Option<&Map<String, serde_json::Value>>,
) -> Vec<(Document, f32)> {
    let dimension = prepared_query.len();
    let candidates: Vec<(u32, &IndexChange, &[f32])> = tail
        .memory_changes()
        .filter_map(|(place, change, memory)| {
            let embedding = memory.embedding.as_deref().filter(|e| e.len() == dimension)?;
            super::filter::matches(filter, &memory.metadata).then_some((place, change, embedding))
        })
        .collect();
    let bounds = DistanceBounds::new(metric, prepared_query);
    // (candidate, lower bound); a zero embedding has none and is always re-scored.
    let mut lower_bounds: Vec<(u32, f64)> = Vec::with_capacity(candidates.len());
    let mut upper_bounds: Vec<f64> = Vec::with_capacity(candidates.len());
    // The codes found (or made) first, then read with each one's lines requested a few ahead,
    // as the exact pass does for the embeddings.
    let codes: Vec<&TailCode> = candidates
        .iter()
        .map(|&(_, change, embedding)| &**change.tail_code.get_or_init(|| Box::new(TailCode::of(embedding))))
        .collect();
    for (i, code) in codes.iter().enumerate() {
        if let Some(&ahead) = codes.get(i + 2 * SCAN_PREFETCH_DISTANCE) {
            super::vector::prefetch(ahead);
        }
        if let Some(ahead) = codes.get(i + SCAN_PREFETCH_DISTANCE) {
            prefetch_code_lines(&ahead.codes);
        }
        match bounds.of(code) {
            Some((low, high)) => {
                lower_bounds.push((i as u32, low));
                upper_bounds.push(high);
            }
            None => lower_bounds.push((i as u32, f64::NEG_INFINITY)),
        }
    }
    let to_rescore: Vec<u32> = if k == 0 || upper_bounds.len() <= k {
        lower_bounds.iter().map(|&(i, _)| i).collect()
    } else {
        let threshold = rescore_threshold(&mut upper_bounds, k, metric);
        lower_bounds.iter().filter(|&&(_, low)| low <= threshold).map(|&(i, _)| i).collect()
    };
    let mut hits = Vec::with_capacity(to_rescore.len());
    for (n, &i) in to_rescore.iter().enumerate() {
        if let Some(&ahead) = to_rescore.get(n + SCAN_PREFETCH_DISTANCE) {
            prefetch_lines(candidates[ahead as usize].2, SCAN_PREFETCH_LINES);
        }
        let (place, _, embedding) = candidates[i as usize];
        let distance = metric.distance_to_unprepared(prepared_query, embedding);
        hits.push((Document::Tail(place), metric.score(distance)));
    }
    hits
}

/// Every memory at snapshot `at` matching `filter` that contains a query term, with its BM25
/// score over the documents of that snapshot (index and tail together, filtered or not), best
/// first, ties by memory id.
pub(crate) fn keyword_search(
    index: Option<&NamespaceIndex>,
    tail: &TailView,
    terms: &[String],
    at: Lsn,
    filter: Option<&Map<String, serde_json::Value>>,
) -> Vec<(Document, f32)> {
    let indexed = index.map(|i| i.keyword_statistics(terms, at, tail));
    let (mut documents, mut total_tokens) = indexed.as_ref().map_or((0, 0), |s| (s.documents, s.total_tokens));
    // The tail's documents, tokenised now: (place, length, term counts).
    let tail_documents: Vec<(u32, u32, HashMap<String, u32>)> = tail
        .memories()
        .map(|(place, memory)| {
            let tokens = tokenize(&memory.text);
            let counts = term_counts(&tokens).into_iter().map(|(t, c)| (t.to_string(), c)).collect();
            (place, u32::try_from(tokens.len()).unwrap_or(u32::MAX), counts)
        })
        .collect();
    for (_, length, _) in &tail_documents {
        documents += 1;
        total_tokens += u64::from(*length);
    }
    if documents == 0 {
        return Vec::new();
    }
    let n = documents as f32;
    let avg_len = total_tokens as f32 / n;
    let mut scores: HashMap<Document, f32> = HashMap::new();
    for (t, term) in terms.iter().enumerate() {
        let indexed_postings: &[(u32, u32, u32)] = indexed.as_ref().map_or(&[], |s| &s.postings[t]);
        let tail_postings: Vec<(u32, u32, u32)> = tail_documents
            .iter()
            .filter_map(|(place, length, counts)| counts.get(term.as_str()).map(|&tf| (*place, tf, *length)))
            .collect();
        let df = indexed_postings.len() + tail_postings.len();
        if df == 0 {
            continue;
        }
        let idf = bm25_idf(n, df as f32);
        for &(slot, tf, length) in indexed_postings {
            *scores.entry(Document::Indexed(slot)).or_default() += bm25_term(idf, tf as f32, length as f32, avg_len);
        }
        for &(place, tf, length) in &tail_postings {
            *scores.entry(Document::Tail(place)).or_default() += bm25_term(idf, tf as f32, length as f32, avg_len);
        }
    }
    let mut hits: Vec<(Document, f32)> = scores
        .into_iter()
        .filter(|(document, _)| memory_of(index, tail, *document).is_some_and(|m| super::filter::matches(filter, &m.metadata)))
        .collect();
    hits.sort_by(|a, b| {
        b.1.total_cmp(&a.1).then_with(|| {
            let id = |d: Document| memory_of(index, tail, d).map(|m| m.id.as_str());
            id(a.0).cmp(&id(b.0))
        })
    });
    hits
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Key, KvValue};
    use crate::search::index::tests::{memory_change, memory_insert};

    /// Reproducible floats in [-0.5, 0.5) from a seed (also used by index.rs's tests).
    pub(crate) struct Floats(pub u64);

    impl Floats {
        pub(crate) fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }

        pub(crate) fn vector(&mut self, dimension: usize) -> Vec<f32> {
            (0..dimension).map(|_| self.next()).collect()
        }
    }

    fn metric_change(lsn: Lsn, metric: Metric) -> IndexChange {
        let name = serde_json::Value::String(metric.name().to_string());
        IndexChange::new(
            lsn,
            Key::new("ns", Space::Meta, METRIC_KEY.to_vec()),
            Some(Arc::new(Value::Kv(KvValue::Json(name)))),
        )
    }

    /// What the tail scan answered before codes: every memory scored exactly, best first, ties
    /// by document, the best `k` kept.
    fn exact_answer(tail: &TailView, metric: Metric, query: &[f32], k: usize) -> Vec<(Document, f32)> {
        let prepared = metric.prepare(query);
        let mut hits: Vec<(Document, f32)> = tail
            .memories()
            .filter_map(|(place, memory)| {
                let embedding = memory.embedding.as_deref().filter(|e| e.len() == query.len())?;
                Some((
                    Document::Tail(place),
                    metric.score(metric.distance_to_unprepared(&prepared, embedding)),
                ))
            })
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        hits
    }

    /// The embeddings of one data set: `count` vectors of `dimension` around a few centres
    /// (spread `noise`), scaled by `magnitude`, with exact duplicates (of each other and of the
    /// query), zero vectors and a memory updated in a later batch.
    fn tail_of(metric: Metric, dimension: usize, count: usize, noise: f32, magnitude: f32, seed: u64) -> (TailView, Vec<f32>) {
        let mut floats = Floats(seed);
        let centres: Vec<Vec<f32>> = (0..4).map(|_| floats.vector(dimension)).collect();
        let near = |c: usize, floats: &mut Floats| -> Vec<f32> {
            centres[c % centres.len()]
                .iter()
                .map(|x| (x + noise * floats.next()) * magnitude)
                .collect()
        };
        let query = near(1, &mut floats);
        let mut batches: Vec<Chunk> = vec![Arc::new(vec![metric_change(1, metric)])];
        for i in 0..count {
            let lsn = 2 + i as Lsn;
            let embedding = match i % 11 {
                0 => query.clone(),
                1 => vec![0.0; dimension],
                2 if i > 2 => {
                    // A duplicate of an earlier memory's embedding.
                    match batches.last().and_then(|b| b[0].value.as_deref()) {
                        Some(Value::Memory(m)) => m.embedding.as_deref().map(<[f32]>::to_vec).unwrap_or_default(),
                        _ => near(i, &mut floats),
                    }
                }
                _ => near(i, &mut floats),
            };
            // Every seventh batch holds two commits' worth: the memory and an update of an
            // earlier one.
            let mut batch = vec![memory_insert(lsn, &format!("m{i}"), Some(embedding))];
            if i % 7 == 6 {
                batch.push(memory_change(lsn, &format!("m{}", i / 2), Some(near(i + 1, &mut floats))));
            }
            batches.push(Arc::new(batch));
        }
        (TailView::new(batches, 0, |_| true), query)
    }

    fn ids_and_lsns(tail: &TailView) -> Vec<(String, Lsn)> {
        (0..tail.versions.len() as u32)
            .map(|place| {
                let change = change_at(&tail.chunks, tail.versions[place as usize]);
                (String::from_utf8(change.key.id.clone()).unwrap(), change.lsn)
            })
            .collect()
    }

    /// Each memory the tail changed appears once, as its last change up to the snapshot,
    /// whichever mix of inserts, updates, deletions and re-inserts (after a deletion, in a later
    /// commit or the same one) made it; and the tail replaces exactly the index's versions it
    /// must: those created above the indexed LSN, and older ones of the memories it updated or
    /// deleted, but not those of memories it only inserted.
    #[test]
    fn a_tail_keeps_each_memory_last_change_and_replaces_only_what_it_changed() {
        let batch = |changes: Vec<IndexChange>| -> Chunk { Arc::new(changes) };
        let insert = |lsn: Lsn, id: &str| memory_insert(lsn, id, Some(vec![1.0, lsn as f32]));
        let update = |lsn: Lsn, id: &str| memory_change(lsn, id, Some(vec![2.0, lsn as f32]));
        let delete = |lsn: Lsn, id: &str| IndexChange::new(lsn, crate::model::Key::new("ns", Space::Memory, id.as_bytes().to_vec()), None);
        // Only inserts: no id table, versions in LSN order.
        let inserts = TailView::new(vec![batch(vec![insert(11, "a")]), batch(vec![insert(12, "b")])], 10, |_| true);
        assert!(!inserts.replaces_by_id());
        assert_eq!(ids_and_lsns(&inserts), [("a".to_string(), 11), ("b".to_string(), 12)]);
        assert!(inserts.replaces(11, "a") && inserts.replaces(12, "zzz"), "the tail's own versions");
        assert!(
            !inserts.replaces(10, "a"),
            "an insert replaces no version at or below the indexed LSN"
        );
        let batches = vec![
            batch(vec![insert(11, "new"), update(11, "old")]),
            batch(vec![insert(12, "gone"), delete(12, "deleted")]),
            batch(vec![delete(13, "gone"), insert(14, "again")]),
            batch(vec![delete(15, "again"), insert(15, "again")]),
            batch(vec![delete(16, "twice")]),
            batch(vec![insert(17, "twice")]),
            batch(vec![update(18, "new")]),
            batch(vec![insert(19, "late")]),
        ];
        let tail = TailView::new(batches.clone(), 10, |c| c.lsn <= 18);
        assert!(tail.replaces_by_id());
        let mut versions = ids_and_lsns(&tail);
        versions.sort();
        let expected: Vec<(String, Lsn)> = [
            ("again", 15),
            ("deleted", 12),
            ("gone", 13),
            ("new", 18),
            ("old", 11),
            ("twice", 17),
        ]
        .iter()
        .map(|(id, lsn)| (id.to_string(), *lsn))
        .collect();
        assert_eq!(versions, expected);
        assert_eq!(
            tail.memory(tail.versions.iter().position(|&p| change_at(&tail.chunks, p).lsn == 13).unwrap() as u32),
            None,
            "deleted"
        );
        for id in ["old", "deleted", "gone", "again", "twice", "new"] {
            assert!(tail.replaces(5, id), "{id}: an index version from before the tail");
        }
        assert!(
            !tail.replaces(5, "other") && !tail.replaces(5, "late"),
            "not changed up to the snapshot"
        );
        assert!(tail.replaces(19, "late"), "above the indexed LSN");
        // The same changes, an older snapshot: the last change up to it.
        let older = TailView::new(batches, 10, |c| c.lsn <= 14);
        let mut versions = ids_and_lsns(&older);
        versions.sort();
        let expected: Vec<(String, Lsn)> = [("again", 14), ("deleted", 12), ("gone", 13), ("new", 11), ("old", 11)]
            .iter()
            .map(|(id, lsn)| (id.to_string(), *lsn))
            .collect();
        assert_eq!(versions, expected);
    }

    /// The coded scan keeps exactly the exact scan's answer (documents and scores, bit for bit)
    /// for every metric, dimension, magnitude (including distances that underflow or overflow
    /// f32) and `k`, with duplicates, zero vectors and ties;
    /// and a second search, which finds the codes made, answers the same.
    #[test]
    fn the_coded_tail_scan_answers_exactly_as_the_exact_scan() {
        let mut seed = 1;
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            for dimension in [1, 3, 16, 17, 384] {
                // Magnitudes from where f32 products underflow to where squares overflow.
                for (noise, magnitude) in [(0.05, 1.0), (1.0, 1.0), (0.01, 1e3), (0.3, 1e-3), (0.05, 1e-22), (0.05, 1e19)] {
                    for _ in 0..3 {
                        seed += 1;
                        let (tail, query) = tail_of(metric, dimension, 300, noise, magnitude, seed);
                        assert_eq!(tail.metric, Some(metric));
                        for k in [0, 1, 2, 10, 64, 400] {
                            let expected = exact_answer(&tail, metric, &query, k);
                            for pass in ["codes made", "codes found"] {
                                let answer = vector_search(None, &tail, &query, 1_000, k, 0, None);
                                assert_eq!(
                                    answer, expected,
                                    "{metric:?}, dimension {dimension}, noise {noise}, magnitude {magnitude}, k {k}, seed {seed}, {pass}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// On clustered 384-dimension embeddings, the codes' bounds leave most of the tail without
    /// an exact distance: that is the scan's saving (it reads the f32 vectors of the rest only).
    #[test]
    fn on_clustered_embeddings_most_of_the_tail_is_not_rescored() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let (tail, query) = tail_of(metric, 384, 2_000, 0.3, 1.0, 99);
            let candidates = tail.memories().count();
            let rescored = scan(&tail, metric, &metric.prepare(&query), 10, None).len();
            assert!(rescored >= 10, "{metric:?}: at least k are scored");
            assert!(rescored * 4 < candidates, "{metric:?}: {rescored} of {candidates} re-scored");
        }
    }
}
