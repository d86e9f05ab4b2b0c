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

/// The tokens of `text` as [`tokenize`] finds them, each with its [`sort_prefix`]. An ASCII
/// text (the common case) is split in one pass over its bytes: for ASCII, `char::is_alphanumeric`
/// is `u8::is_ascii_alphanumeric` and lower-casing is `to_ascii_lowercase`, so the tokens are the
/// same as the general path's, without decoding characters or scanning each token twice.
fn tokens_for_index(text: &str) -> Vec<(u64, Cow<'_, str>)> {
    if !text.is_ascii() {
        return tokens_borrowed(text).map(|t| (sort_prefix(&t), t)).collect();
    }
    let bytes = text.as_bytes();
    let mut tokens = Vec::with_capacity(bytes.len() / 6 + 1);
    let mut start = 0;
    while start < bytes.len() {
        if !bytes[start].is_ascii_alphanumeric() {
            start += 1;
            continue;
        }
        let mut end = start;
        let mut upper = false;
        while end < bytes.len() && bytes[end].is_ascii_alphanumeric() {
            upper |= bytes[end].is_ascii_uppercase();
            end += 1;
        }
        // In bounds and on character boundaries: an ASCII text's every byte is one.
        let token = &text[start..end];
        let token = if upper {
            Cow::Owned(token.to_ascii_lowercase())
        } else {
            Cow::Borrowed(token)
        };
        tokens.push((sort_prefix(&token), token));
        start = end;
    }
    tokens
}

/// The first 8 bytes of `token`, big-endian, zero-padded: comparing these orders tokens as
/// comparing the strings does, up to ties between tokens sharing their first 8 bytes, without
/// a `memcmp` call per comparison. Tokens hold no NUL (they are alphanumeric), so two tokens of
/// at most 8 bytes with equal prefixes are equal.
fn sort_prefix(token: &str) -> u64 {
    let mut prefix = [0u8; 8];
    let length = token.len().min(8);
    prefix[..length].copy_from_slice(&token.as_bytes()[..length]);
    u64::from_be_bytes(prefix)
}

/// Orders tokens with their prefixes: by prefix, then (only when both could differ past it) by
/// the strings.
fn compare_tokens(a: &(u64, Cow<'_, str>), b: &(u64, Cow<'_, str>)) -> std::cmp::Ordering {
    a.0.cmp(&b.0).then_with(|| {
        if a.1.len() <= 8 && b.1.len() <= 8 {
            std::cmp::Ordering::Equal
        } else {
            a.1.cmp(&b.1)
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
    postings: super::FastHashMap<Box<str>, Vec<(u32, u32)>>,
}

impl InvertedIndex {
    /// Indexes the text of the version in `slot`; returns its length in tokens.
    ///
    /// On the indexer's hot path (every memory version): tokens are borrowed from the text where
    /// possible and counted by sorting (on their 8-byte prefixes first) rather than hashing, so
    /// each distinct term is hashed once, for its postings list.
    pub fn add(&mut self, slot: u32, text: &str) -> u32 {
        let mut tokens = tokens_for_index(text);
        let length = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        tokens.sort_unstable_by(compare_tokens);
        let mut rest = tokens.as_slice();
        while let Some(term) = rest.first() {
            let count = rest.iter().take_while(|t| compare_tokens(t, term).is_eq()).count();
            let occurrences = (slot, u32::try_from(count).unwrap_or(u32::MAX));
            match self.postings.get_mut(term.1.as_ref()) {
                Some(list) => list.push(occurrences),
                None => {
                    self.postings.insert(term.1.as_ref().into(), vec![occurrences]);
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

    /// Random texts over an alphabet with upper and lower case, digits, punctuation, spaces and
    /// (in some texts) non-ASCII letters, so both the byte path and the general path are taken:
    /// the tokens are `tokenize`'s, each prefix is its token's, and the prefix order agrees with
    /// the string order.
    #[test]
    fn index_tokens_and_their_order_are_the_tokenized_ones_on_random_texts() {
        const ASCII: &[char] = &['a', 'b', 'Z', 'Q', 'z', '0', '9', ' ', '.', '-', '\n', '_', '~'];
        const WIDE: &[char] = &['é', 'Σ', 'ß', '東', 'İ'];
        let mut seed = 17u64;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for round in 0..2000 {
            let length = next(40);
            let text: String = (0..length)
                .map(|_| {
                    if round % 4 == 0 && next(6) == 0 {
                        WIDE[next(WIDE.len())]
                    } else {
                        ASCII[next(ASCII.len())]
                    }
                })
                .collect();
            let tokens = tokens_for_index(&text);
            let strings: Vec<String> = tokens.iter().map(|(_, t)| t.to_string()).collect();
            assert_eq!(strings, tokenize(&text), "{text:?}");
            for a in &tokens {
                assert_eq!(a.0, sort_prefix(&a.1));
                for b in &tokens {
                    assert_eq!(compare_tokens(a, b), a.1.cmp(&b.1), "{:?} {:?}", a.1, b.1);
                }
            }
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
