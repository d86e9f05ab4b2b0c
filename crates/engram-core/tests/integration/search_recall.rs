//! Recall@10 of the approximate (HNSW) search against exact search on clustered data, for each
//! metric. Sizes: 50,000 x 128 for cosine by default (about half a minute in the test profile on
//! 2 cores); `ENGRAM_RECALL_VECTORS` sets another size. Dot and L2 run on 10,000 x 64.

use crate::search_support;

use engram_core::*;
use search_support::*;
use std::time::Instant;

fn recall_at_10(metric: Metric, count: usize, dimension: usize, queries: usize, seed: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut txn = db.begin();
    txn.declare_vector_space("ns", dimension, metric).unwrap();
    txn.commit().unwrap();
    let mut rng = Rng(seed);
    let data = clustered(&mut rng, count + queries, dimension, 64, 0.35);
    let (data, probes) = data.split_at(count);
    let started = Instant::now();
    let ids = load(&db, "ns", data, |i| format!("m{i}"), |_| serde_json::Value::Null);
    let built = started.elapsed();
    assert!(db.index_stats().vectors >= count);
    let snapshot = db.snapshot();
    let started = Instant::now();
    let mut found_total = 0;
    for probe in probes {
        let expected: Vec<&str> = exact_top(metric, data, probe, 10).into_iter().map(|i| ids[i].as_str()).collect();
        let hits = snapshot.search(&vector_request("ns", probe.clone(), 10)).unwrap();
        assert_eq!(hits.len(), 10);
        found_total += hits.iter().filter(|h| expected.contains(&h.memory.id.as_str())).count();
    }
    let recall = found_total as f64 / (10 * queries) as f64;
    println!(
        "{metric:?} {count} x {dimension}: recall@10 {recall:.4}, load+index {:.1} s, {:.0} queries/s (test profile)",
        built.as_secs_f64(),
        queries as f64 / started.elapsed().as_secs_f64()
    );
    recall
}

#[test]
fn approximate_search_recalls_at_least_95_percent_of_the_exact_top_10_cosine() {
    let count = std::env::var("ENGRAM_RECALL_VECTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let recall = recall_at_10(Metric::Cosine, count, 128, 200, 1);
    assert!(recall >= 0.95, "recall@10 {recall}");
}

#[test]
fn approximate_search_recalls_at_least_95_percent_of_the_exact_top_10_dot_and_l2() {
    for (metric, seed) in [(Metric::Dot, 2), (Metric::L2, 3)] {
        let recall = recall_at_10(metric, 10_000, 64, 100, seed);
        assert!(recall >= 0.95, "{metric:?} recall@10 {recall}");
    }
}
