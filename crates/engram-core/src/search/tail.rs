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

use super::index::{IndexChange, NamespaceIndex, METRIC_KEY};
use super::keyword::{bm25_idf, bm25_term, term_counts, tokenize};
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
/// It holds the queued batches it was built from (shared with the queue) and refers to their
/// changes by place, so building it copies no id and takes no reference on any value: a search
/// of a lagging namespace builds one over the whole tail, up to the queue's bound of some
/// 175,000 one-memory commits (docs/search.md, *Back-pressure*).
pub(crate) struct TailView {
    batches: Vec<Arc<[IndexChange]>>,
    /// Per memory the tail changed, in order of its first change there: its last change up to
    /// the snapshot (whose value is `None` if that change deleted it), as (batch, change). A
    /// fixed order, so ties break the same way every time.
    versions: Vec<ChangePlace>,
    /// The places in `versions`, hashed by memory id (foldhash, seeded per process).
    changed: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// The namespace's metric if the tail sets it.
    pub metric: Option<Metric>,
}

#[derive(Clone, Copy)]
struct ChangePlace {
    batch: u32,
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
            batches: Vec::new(),
            versions: Vec::new(),
            changed: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            metric: None,
        }
    }

    /// From queued batches in LSN order, keeping the changes `wanted` accepts (the last change
    /// of a memory wins). A change id that is not UTF-8 names no memory and is skipped.
    pub fn new(batches: Vec<Arc<[IndexChange]>>, wanted: impl Fn(&IndexChange) -> bool) -> TailView {
        // At most one place per change: reserved once, so the table never rehashes.
        let changes: usize = batches.iter().map(|b| b.len()).sum();
        let mut tail = TailView {
            batches,
            versions: Vec::with_capacity(changes),
            changed: HashTable::with_capacity(changes),
            ..TailView::empty()
        };
        let TailView {
            batches,
            versions,
            changed,
            hasher,
            metric,
        } = &mut tail;
        for (b, batch) in batches.iter().enumerate() {
            for (c, change) in batch.iter().enumerate() {
                if !wanted(change) {
                    continue;
                }
                match change.key.space {
                    Space::Meta if change.key.id == METRIC_KEY => {
                        if let Some(found) = change.value.as_deref().and_then(super::index::metric_of) {
                            *metric = Some(found);
                        }
                    }
                    Space::Memory if std::str::from_utf8(&change.key.id).is_ok() => {
                        let place = ChangePlace {
                            batch: b as u32,
                            change: c as u32,
                        };
                        let id = change.key.id.as_slice();
                        let hash = hasher.hash_one(id);
                        match changed.find(hash, |&v| id_at(batches, versions, v) == id) {
                            Some(&v) => versions[v as usize] = place,
                            None => {
                                changed.insert_unique(hash, versions.len() as u32, |&v| hasher.hash_one(id_at(batches, versions, v)));
                                versions.push(place);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        tail
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Whether the tail changed the memory `id` (so the index's version of it is not the answer).
    #[inline]
    pub fn changed(&self, id: &str) -> bool {
        if self.versions.is_empty() {
            return false;
        }
        let id = id.as_bytes();
        let hash = self.hasher.hash_one(id);
        self.changed
            .find(hash, |&v| id_at(&self.batches, &self.versions, v) == id)
            .is_some()
    }

    /// The value of the memory at `place` at the snapshot (`None`: the tail deleted it).
    fn value(&self, place: u32) -> Option<&Arc<Value>> {
        let at = *self.versions.get(place as usize)?;
        change_at(&self.batches, at).value.as_ref()
    }

    pub fn memory(&self, place: u32) -> Option<&Memory> {
        match self.value(place).map(Arc::as_ref) {
            Some(Value::Memory(m)) => Some(m),
            _ => None,
        }
    }

    /// The memories the tail holds at the snapshot (not the ones it deleted), with their places.
    fn memories(&self) -> impl Iterator<Item = (u32, &Memory)> {
        (0..self.versions.len() as u32).filter_map(|p| self.memory(p).map(|m| (p, m)))
    }
}

/// Places only ever point at changes of the view's own batches.
#[inline]
fn change_at(batches: &[Arc<[IndexChange]>], place: ChangePlace) -> &IndexChange {
    &batches[place.batch as usize][place.change as usize]
}

/// The memory id of entry `v` of `versions` (what the id table hashes and compares).
#[inline]
fn id_at<'a>(batches: &'a [Arc<[IndexChange]>], versions: &[ChangePlace], v: u32) -> &'a [u8] {
    &change_at(batches, versions[v as usize]).key.id
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
    // Two passes: the first finds the embeddings (a chain of loads per memory, through its
    // batch and value, which the CPU overlaps across memories in a short loop); the second
    // computes distances, each embedding's first lines requested a few memories ahead.
    let candidates: Vec<(u32, &[f32])> = tail
        .memories()
        .filter_map(|(place, memory)| {
            let embedding = memory.embedding.as_deref().filter(|e| e.len() == query.len())?;
            super::filter::matches(filter, &memory.metadata).then_some((place, embedding))
        })
        .collect();
    hits.reserve(candidates.len());
    for (i, &(place, embedding)) in candidates.iter().enumerate() {
        if let Some((_, ahead)) = candidates.get(i + SCAN_PREFETCH_DISTANCE) {
            prefetch_lines(ahead, SCAN_PREFETCH_LINES);
        }
        let distance = metric.distance_to_unprepared(&prepared_query, embedding);
        hits.push((Document::Tail(place), metric.score(distance)));
    }
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
