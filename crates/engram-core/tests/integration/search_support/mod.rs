//! Shared by the search_*.rs tests: a seeded generator, clustered vectors, exact k-NN.
#![allow(dead_code)]

use engram_core::*;
use std::path::Path;
use std::time::Duration;

pub use crate::rng::Rng;

/// `count` points around `clusters` random centres (spread `spread` per coordinate), as text
/// embeddings tend to be.
pub fn clustered(rng: &mut Rng, count: usize, dimension: usize, clusters: usize, spread: f32) -> Vec<Vec<f32>> {
    let centres: Vec<Vec<f32>> = (0..clusters).map(|_| rng.vector(dimension)).collect();
    (0..count)
        .map(|_| {
            let c = &centres[rng.below(clusters)];
            c.iter().map(|x| x + spread * rng.unit()).collect()
        })
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// The score the database reports for each metric (larger is better).
pub fn score(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::Cosine => cosine(a, b),
        Metric::Dot => a.iter().zip(b).map(|(x, y)| x * y).sum(),
        Metric::L2 => -a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt(),
    }
}

/// Indices of the `k` best of `data` for `query`, best first.
pub fn exact_top(metric: Metric, data: &[Vec<f32>], query: &[f32], k: usize) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = data.iter().enumerate().map(|(i, v)| (score(metric, query, v), i)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, i)| i).collect()
}

/// No background checkpoints (tests take them when they want them).
pub fn options() -> DatabaseOptions {
    DatabaseOptions {
        checkpoint: CheckpointOptions {
            retain_log_records: 0,
            ..CheckpointOptions::on_demand()
        },
        ..Default::default()
    }
}

pub fn open(dir: &Path) -> Database {
    Database::open(dir, options()).unwrap()
}

/// Inserts `vectors` (with `text_of(i)` and metadata `meta_of(i)`) in transactions of 1,000,
/// unsynced; returns the ids in order, after the indexes caught up.
pub fn load(
    db: &Database,
    namespace: &str,
    vectors: &[Vec<f32>],
    text_of: impl Fn(usize) -> String,
    meta_of: impl Fn(usize) -> serde_json::Value,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(vectors.len());
    let mut last = 0;
    for (chunk_index, chunk) in vectors.chunks(1000).enumerate() {
        let mut txn = db.begin();
        txn.set_durability(SyncPolicy::Never);
        for (j, v) in chunk.iter().enumerate() {
            let i = chunk_index * 1000 + j;
            let memory = NewMemory {
                text: text_of(i),
                embedding: Some(v.clone()),
                metadata: meta_of(i),
            };
            ids.push(txn.insert_memory(namespace, memory).unwrap());
        }
        last = txn.commit().unwrap().lsn;
    }
    db.wait_for_index(last, Duration::from_secs(600)).unwrap();
    ids
}

pub fn vector_request(namespace: &str, vector: Vec<f32>, k: usize) -> SearchRequest {
    SearchRequest {
        namespace: namespace.to_string(),
        text: None,
        vector: Some(vector),
        k,
        mode: SearchMode::Vector,
        filter: None,
        ef_search: None,
    }
}

pub fn keyword_request(namespace: &str, text: &str, k: usize) -> SearchRequest {
    SearchRequest {
        namespace: namespace.to_string(),
        text: Some(text.to_string()),
        vector: None,
        k,
        mode: SearchMode::Keyword,
        filter: None,
        ef_search: None,
    }
}
