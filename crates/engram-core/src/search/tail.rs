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
use super::FastHashMap;
use crate::model::{Memory, Space, Value};
use engram_wal::Lsn;
use serde_json::Map;
use std::collections::HashMap;
use std::sync::Arc;

/// A document of a search: an index entry (its slot) or a tail memory (its place in the tail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Document {
    Indexed(u32),
    Tail(u32),
}

/// The tail of one namespace as of a snapshot.
pub(crate) struct TailView {
    /// Memory id -> its place in `versions`. foldhash, not the standard SipHash: every search
    /// of a lagging namespace builds this map over the whole tail and every admitted index
    /// entry is looked up in it (docs/search.md, *Back-pressure*).
    changed: FastHashMap<Box<str>, u32>,
    /// Per memory the tail changed, in order of its first change there: its version valid at
    /// the snapshot (`None`: deleted there). A fixed order, so ties break the same way every time.
    versions: Vec<Option<Arc<Value>>>,
    /// The namespace's metric if the tail sets it.
    pub metric: Option<Metric>,
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
            changed: FastHashMap::default(),
            versions: Vec::new(),
            metric: None,
        }
    }

    /// From the tail's changes of one namespace, in LSN order (the last change of a memory wins).
    pub fn new<'a>(changes: impl Iterator<Item = &'a IndexChange>) -> TailView {
        let mut tail = TailView::empty();
        for change in changes {
            match change.key.space {
                Space::Meta if change.key.id == METRIC_KEY => {
                    if let Some(metric) = change.value.as_deref().and_then(super::index::metric_of) {
                        tail.metric = Some(metric);
                    }
                }
                Space::Memory => {
                    let Ok(id) = std::str::from_utf8(&change.key.id) else { continue };
                    match tail.changed.get(id) {
                        Some(&place) => tail.versions[place as usize] = change.value.clone(),
                        None => {
                            tail.changed.insert(id.into(), tail.versions.len() as u32);
                            tail.versions.push(change.value.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        tail
    }

    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }

    /// Whether the tail changed the memory `id` (so the index's version of it is not the answer).
    #[inline]
    pub fn changed(&self, id: &str) -> bool {
        !self.changed.is_empty() && self.changed.contains_key(id)
    }

    pub fn memory(&self, place: u32) -> Option<&Memory> {
        match self.versions.get(place as usize).and_then(Option::as_deref) {
            Some(Value::Memory(m)) => Some(m),
            _ => None,
        }
    }

    /// The memories the tail holds at the snapshot (not the ones it deleted), with their places.
    fn memories(&self) -> impl Iterator<Item = (u32, &Memory)> {
        (0..self.versions.len() as u32).filter_map(|p| self.memory(p).map(|m| (p, m)))
    }
}

/// The stored value (a memory) behind a document, shared with the store.
pub(crate) fn shared_value_of<'a>(index: Option<&'a NamespaceIndex>, tail: &'a TailView, document: Document) -> Option<&'a Arc<Value>> {
    match document {
        Document::Indexed(slot) => index?.entries.get(slot as usize)?.value.as_ref(),
        Document::Tail(place) => tail.versions.get(place as usize)?.as_ref(),
    }
}

/// The memory behind a document.
pub(crate) fn memory_of<'a>(index: Option<&'a NamespaceIndex>, tail: &'a TailView, document: Document) -> Option<&'a Memory> {
    match document {
        Document::Indexed(slot) => index?.entries.get(slot as usize)?.memory(),
        Document::Tail(place) => tail.memory(place),
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
    let mut prepared = Vec::with_capacity(query.len());
    for (place, memory) in tail.memories() {
        let Some(embedding) = memory.embedding.as_ref().filter(|e| e.len() == query.len()) else {
            continue;
        };
        if !super::filter::matches(filter, &memory.metadata) {
            continue;
        }
        metric.prepare_into(embedding, &mut prepared);
        let distance = metric.distance(&prepared_query, &prepared);
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
