//! Keyword search: BM25 over an inverted index whose postings are memory versions, so a query
//! at any snapshot sees exactly the documents valid there, with collection statistics (document
//! count, average length, document frequencies) computed at that snapshot too.
//!
//! Tokens are maximal runs of alphanumeric characters (Unicode), lower-cased; no stemming and no
//! stop words, so results are predictable and hand-checkable. Scoring is BM25 with k1 = 1.2 and
//! b = 0.75 and the non-negative idf `ln(1 + (N - df + 0.5) / (df + 0.5))` (as Lucene).

use std::borrow::Cow;
use std::collections::HashMap;

pub const BM25_K1: f32 = 1.2;
pub const BM25_B: f32 = 0.75;

/// The tokens of `text`, in order, lower-cased.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
        .collect()
}

/// The tokens of `text` as [`tokenize`] finds them, borrowed from `text` where lower-casing
/// changes nothing (the common case: no allocation per token).
fn tokens_borrowed(text: &str) -> impl Iterator<Item = Cow<'_, str>> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(|t| {
        if t.chars().any(char::is_uppercase) || !t.is_ascii() {
            Cow::Owned(t.to_lowercase())
        } else {
            Cow::Borrowed(t)
        }
    })
}

/// Each distinct term of `tokens` with its count.
pub(crate) fn term_counts(tokens: &[String]) -> HashMap<&str, u32> {
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for t in tokens {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    counts
}

/// The BM25 inverse document frequency of a term found in `df` of `n` documents.
pub fn bm25_idf(n: f32, df: f32) -> f32 {
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// The BM25 weight of one term occurring `tf` times in a document of `doc_len` tokens.
pub fn bm25_term(idf: f32, tf: f32, doc_len: f32, avg_len: f32) -> f32 {
    let norm = if avg_len > 0.0 { doc_len / avg_len } else { 0.0 };
    idf * tf * (BM25_K1 + 1.0) / (tf + BM25_K1 * (1.0 - BM25_B + BM25_B * norm))
}

/// Postings of memory versions (index slots), per term.
#[derive(Default)]
pub(crate) struct InvertedIndex {
    /// term -> (slot, occurrences in that version's text), slots ascending.
    postings: HashMap<Box<str>, Vec<(u32, u32)>>,
}

impl InvertedIndex {
    /// Indexes the text of the version in `slot`; returns its length in tokens.
    ///
    /// On the indexer's hot path (every memory version): tokens are borrowed from the text where
    /// possible and counted by sorting rather than hashing, so each distinct term is hashed once,
    /// for its postings list.
    pub fn add(&mut self, slot: u32, text: &str) -> u32 {
        let mut tokens: Vec<Cow<'_, str>> = tokens_borrowed(text).collect();
        let length = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        tokens.sort_unstable();
        let mut rest = tokens.as_slice();
        while let Some(term) = rest.first() {
            let count = rest.iter().take_while(|t| *t == term).count();
            let occurrences = (slot, u32::try_from(count).unwrap_or(u32::MAX));
            match self.postings.get_mut(term.as_ref()) {
                Some(list) => list.push(occurrences),
                None => {
                    self.postings.insert(term.as_ref().into(), vec![occurrences]);
                }
            }
            rest = &rest[count..];
        }
        length
    }

    pub fn postings(&self, term: &str) -> &[(u32, u32)] {
        self.postings.get(term).map_or(&[], |v| v.as_slice())
    }

    pub fn heap_bytes(&self) -> usize {
        self.postings.iter().map(|(t, p)| t.len() + 16 + 24 + p.capacity() * 8).sum()
    }
}

/// BM25 over a small set of documents given as token lists (used for entities, read from the
/// snapshot): `(document number, score)` for every document matching a query term, unsorted.
pub(crate) fn bm25_over(documents: &[Vec<String>], query_terms: &[String]) -> Vec<(usize, f32)> {
    let n = documents.len() as f32;
    if documents.is_empty() {
        return Vec::new();
    }
    let total: usize = documents.iter().map(Vec::len).sum();
    let avg_len = total as f32 / n;
    let counts: Vec<HashMap<&str, u32>> = documents.iter().map(|d| term_counts(d)).collect();
    let mut scores: HashMap<usize, f32> = HashMap::new();
    for term in query_terms {
        let df = counts.iter().filter(|c| c.contains_key(term.as_str())).count();
        if df == 0 {
            continue;
        }
        let idf = bm25_idf(n, df as f32);
        for (i, c) in counts.iter().enumerate() {
            if let Some(&tf) = c.get(term.as_str()) {
                *scores.entry(i).or_default() += bm25_term(idf, tf as f32, documents[i].len() as f32, avg_len);
            }
        }
    }
    scores.into_iter().collect()
}

/// The distinct terms of a query, in first-occurrence order (a repeated query term counts once).
pub(crate) fn query_terms(text: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    tokenize(text).into_iter().filter(|t| seen.insert(t.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXTS: &[&str] = &[
        "",
        "the agent noted something worth remembering, the agent did",
        "Mixed CASE words and MIXED case Words",
        "Straße STRASSE İstanbul ΣΟΦΟΣ σοφος naïve café 東京 tokyo 2026-11-26",
        "  punctuation!!! only... and   spaces\t\nnewlines  ",
    ];

    #[test]
    fn borrowed_tokens_are_exactly_the_tokenized_ones() {
        for text in TEXTS {
            let borrowed: Vec<String> = tokens_borrowed(text).map(Cow::into_owned).collect();
            assert_eq!(borrowed, tokenize(text), "{text:?}");
        }
    }

    #[test]
    fn postings_hold_each_distinct_term_once_per_version_with_its_count() {
        let mut index = InvertedIndex::default();
        for (slot, text) in TEXTS.iter().enumerate() {
            let length = index.add(slot as u32, text);
            assert_eq!(length as usize, tokenize(text).len());
        }
        let mut expected: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        for (slot, text) in TEXTS.iter().enumerate() {
            let tokens = tokenize(text);
            let mut counts: Vec<(&str, u32)> = term_counts(&tokens).into_iter().collect();
            counts.sort();
            for (term, count) in counts {
                expected.entry(term.to_string()).or_default().push((slot as u32, count));
            }
        }
        assert_eq!(index.postings.len(), expected.len());
        for (term, list) in &expected {
            assert_eq!(index.postings(term), list.as_slice(), "{term}");
        }
    }
}
