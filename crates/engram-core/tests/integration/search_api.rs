//! Search API contracts: metadata filters (min(k, matching) hits, all matching, on the exact and
//! the graph path), BM25 on a hand-checked corpus, entity keyword search, bounds and their typed
//! errors, metrics per namespace, read-your-writes, and graph neighbours with depth, relation
//! types, direction and as_of.

use crate::search_support;

use engram_core::*;
use search_support::*;
use serde_json::json;
use std::time::Duration;

fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().cloned().unwrap()
}

fn insert_texts(db: &Database, namespace: &str, texts: &[&str]) -> Vec<String> {
    let mut txn = db.begin();
    let ids = texts
        .iter()
        .map(|t| {
            let memory = NewMemory {
                text: t.to_string(),
                ..Default::default()
            };
            txn.insert_memory(namespace, memory).unwrap()
        })
        .collect();
    let lsn = txn.commit().unwrap().lsn;
    db.wait_for_index(lsn, Duration::from_secs(10)).unwrap();
    ids
}

#[test]
fn a_filtered_search_returns_min_k_matching_hits_all_matching_on_both_paths() {
    for count in [300, EXACT_SEARCH_MAX_VECTORS + 1000] {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let mut rng = Rng(count as u64);
        let data = clustered(&mut rng, count, 16, 8, 0.3);
        let ids = load(
            &db,
            "ns",
            &data,
            |i| format!("m{i}"),
            |i| json!({"group": i % 10, "rare": i % 500 == 7}),
        );
        let view = db.snapshot();
        for _ in 0..20 {
            let q = rng.vector(16);
            let group = rng.below(10);
            let mut request = vector_request("ns", q.clone(), 10);
            request.filter = Some(object(json!({"group": group})));
            let hits = view.search(&request).unwrap();
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| h.memory.metadata["group"] == group));
            // The exact answer among the matching memories (the graph path may miss a few).
            let matching: Vec<usize> = (0..count).filter(|i| i % 10 == group).collect();
            let vectors: Vec<Vec<f32>> = matching.iter().map(|&i| data[i].clone()).collect();
            let expected: Vec<&String> = exact_top(Metric::Cosine, &vectors, &q, 10)
                .into_iter()
                .map(|j| &ids[matching[j]])
                .collect();
            let found = hits.iter().filter(|h| expected.contains(&&h.memory.id)).count();
            assert!(found >= 8, "filtered recall {found}/10");

            // A filter matching fewer than k: every match comes back.
            let rare = (0..count).filter(|i| i % 500 == 7).count();
            request.filter = Some(object(json!({"rare": true, "group": 7})));
            let hits = view.search(&request).unwrap();
            assert_eq!(hits.len(), rare.min(10));
            assert!(hits.iter().all(|h| h.memory.metadata["rare"] == true));

            request.filter = Some(object(json!({"group": "no such group"})));
            assert!(view.search(&request).unwrap().is_empty());
        }
        // k larger than the namespace returns everything.
        let mut request = vector_request("ns", rng.vector(16), MAX_K);
        request.filter = Some(object(json!({"rare": true})));
        assert_eq!(view.search(&request).unwrap().len(), (0..count).filter(|i| i % 500 == 7).count());
    }
}

#[test]
fn bm25_scores_on_a_hand_checked_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    // N = 3 documents of 3, 2 and 4 tokens: average length 3.
    let ids = insert_texts(&db, "ns", &["The cat sat.", "the DOG", "cat, cat; dog bird"]);
    let view = db.snapshot();
    let scores = |q: &str| -> Vec<(String, f32)> {
        view.search(&keyword_request("ns", q, 10))
            .unwrap()
            .into_iter()
            .map(|h| (h.memory.id, h.score))
            .collect()
    };
    // "cat": df 2, idf = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln 1.6 = 0.4700036.
    // doc 1: tf 1, len 3 = average: idf * 1 * 2.2 / (1 + 1.2) = 0.4700036.
    // doc 3: tf 2, len 4: norm 0.25 + 0.75 * 4/3 = 1.25; idf * 2 * 2.2 / (2 + 1.5) = 0.5908617.
    let got = scores("cat");
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].0.as_str(), got[1].0.as_str()), (ids[2].as_str(), ids[0].as_str()));
    assert!((got[0].1 - 0.590_861_7).abs() < 1e-5, "{got:?}");
    assert!((got[1].1 - 0.470_003_6).abs() < 1e-5, "{got:?}");
    // "dog bird": dog df 2 (idf 0.4700036), bird df 1: idf = ln(1 + 2.5 / 1.5) = 0.9808293.
    // doc 2: dog tf 1, len 2: norm 0.25 + 0.5 = 0.75; 0.4700036 * 2.2 / (1 + 0.9) = 0.5442147.
    // doc 3: dog: 0.4700036 * 2.2 / (1 + 1.5) = 0.4136032; bird: 0.9808293 * 0.88 = 0.8631298;
    // total 1.2767330.
    let got = scores("dog bird");
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].0.as_str(), got[1].0.as_str()), (ids[2].as_str(), ids[1].as_str()));
    assert!((got[0].1 - 1.276_733).abs() < 1e-5, "{got:?}");
    assert!((got[1].1 - 0.544_214_7).abs() < 1e-5, "{got:?}");
    // Case and punctuation do not matter; a repeated query term counts once; no match, no hit.
    assert_eq!(scores("CAT cat!"), scores("cat"));
    assert!(scores("zebra").is_empty());
    // The hit reports its keyword rank and score.
    let hits = view.search(&keyword_request("ns", "cat", 10)).unwrap();
    assert_eq!(
        hits[1].keyword,
        Some(SignalScore {
            rank: 2,
            score: hits[1].score
        })
    );
    assert_eq!(hits[1].vector, None);
}

#[test]
fn entities_are_ranked_by_bm25_over_name_type_and_observations() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let entity = |name: &str, kind: &str, obs: &[&str]| Entity {
        name: name.into(),
        entity_type: kind.into(),
        observations: obs.iter().map(|o| o.to_string()).collect(),
    };
    let mut txn = db.begin();
    txn.create_entities(
        "ns",
        &[
            entity("Ada", "person", &["writes rust", "likes tea"]),
            entity("Rust", "language", &["systems language"]),
            entity("Bob", "person", &["likes coffee"]),
        ],
    )
    .unwrap();
    txn.commit().unwrap();
    let view = db.snapshot();
    let hits = view.search_entities("ns", "rust", 10).unwrap();
    let names: Vec<&str> = hits.iter().map(|h| h.entity.name.as_str()).collect();
    // Both contain "rust" once; Rust's document (4 tokens) is shorter than Ada's (7).
    assert_eq!(names, vec!["Rust", "Ada"]);
    assert!(hits[0].score > hits[1].score);
    let hits = view.search_entities("ns", "person likes", 1).unwrap();
    assert_eq!(hits.len(), 1);
    // search_nodes keeps the reference's substring semantics ("ust" is no token).
    assert_eq!(view.search_nodes("ns", "UST").unwrap().entities.len(), 2);
    assert!(view.search_entities("ns", "ust", 10).unwrap().is_empty());
}

#[test]
fn bounds_and_bad_requests_fail_with_typed_errors_and_k_beyond_the_namespace_returns_all() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut txn = db.begin();
    txn.declare_vector_space("ns", 3, Metric::L2).unwrap();
    for i in 0..5 {
        let memory = NewMemory {
            text: format!("note {i}"),
            embedding: Some(vec![i as f32, 0.0, 0.0]),
            metadata: json!({}),
        };
        txn.insert_memory("ns", memory).unwrap();
    }
    let lsn = txn.commit().unwrap().lsn;
    db.wait_for_index(lsn, Duration::from_secs(10)).unwrap();
    let view = db.snapshot();
    let ok = vector_request("ns", vec![0.0, 0.0, 0.0], 3);
    let with = |f: &dyn Fn(&mut SearchRequest)| {
        let mut r = ok.clone();
        f(&mut r);
        view.search(&r)
    };
    assert!(matches!(with(&|r| r.k = 0), Err(CoreError::OutOfRange { what: "k", .. })));
    assert!(matches!(with(&|r| r.k = MAX_K + 1), Err(CoreError::OutOfRange { what: "k", .. })));
    assert!(matches!(
        with(&|r| r.ef_search = Some(0)),
        Err(CoreError::OutOfRange { what: "ef_search", .. })
    ));
    assert!(matches!(
        with(&|r| r.ef_search = Some(MAX_EF_SEARCH + 1)),
        Err(CoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        with(&|r| r.vector = Some(vec![0.0; 4])),
        Err(CoreError::DimensionMismatch { expected: 3, got: 4, .. })
    ));
    assert!(matches!(
        with(&|r| r.vector = Some(vec![0.0, f32::NAN, 0.0])),
        Err(CoreError::NonFiniteValue { index: 1, .. })
    ));
    assert!(matches!(
        with(&|r| r.vector = Some(vec![f32::INFINITY, 0.0, 0.0])),
        Err(CoreError::NonFiniteValue { .. })
    ));
    assert!(matches!(with(&|r| r.vector = Some(vec![])), Err(CoreError::BadDimension { .. })));
    assert!(matches!(
        with(&|r| r.vector = None),
        Err(CoreError::MissingQuery { mode: "vector", .. })
    ));
    assert!(matches!(
        with(&|r| r.mode = SearchMode::Keyword),
        Err(CoreError::MissingQuery { mode: "keyword", .. })
    ));
    assert!(matches!(
        with(&|r| r.mode = SearchMode::Hybrid),
        Err(CoreError::MissingQuery { mode: "hybrid", .. })
    ));
    assert!(matches!(
        with(&|r| {
            r.mode = SearchMode::Keyword;
            r.text = Some("x".repeat(MAX_QUERY_TEXT_BYTES + 1));
        }),
        Err(CoreError::TooLarge { .. })
    ));
    assert!(matches!(
        with(&|r| r.namespace = "bad/name".into()),
        Err(CoreError::InvalidName { .. })
    ));
    // An unknown namespace has no hits; so has a namespace without vectors.
    assert!(with(&|r| r.namespace = "nobody".into()).unwrap().is_empty());
    // k beyond the namespace: all of it, nearest first (L2 scores are negated distances).
    let all = with(&|r| r.k = 50).unwrap();
    let scores: Vec<f32> = all.iter().map(|h| h.score).collect();
    assert_eq!(scores, vec![0.0, -1.0, -2.0, -3.0, -4.0]);
    // The metric is fixed with the dimension.
    let mut txn = db.begin();
    assert!(matches!(
        txn.declare_vector_space("ns", 3, Metric::Cosine),
        Err(CoreError::MetricMismatch {
            expected: "l2",
            got: "cosine",
            ..
        })
    ));
    assert!(matches!(
        txn.declare_vector_space("ns", 4, Metric::L2),
        Err(CoreError::DimensionMismatch { .. })
    ));
    txn.declare_vector_space("ns", 3, Metric::L2).unwrap();
    // A namespace whose dimension came from a first insert is cosine.
    let memory = NewMemory {
        text: String::new(),
        embedding: Some(vec![1.0, 0.0]),
        metadata: json!({}),
    };
    txn.insert_memory("implicit", memory).unwrap();
    txn.commit().unwrap();
    assert_eq!(db.metric("implicit"), Metric::Cosine);
    assert_eq!(db.metric("ns"), Metric::L2);
    let mut txn = db.begin();
    assert!(matches!(
        txn.declare_vector_space("implicit", 2, Metric::Dot),
        Err(CoreError::MetricMismatch { .. })
    ));
    // Neighbour depth.
    assert!(matches!(
        view.neighbours("ns", "x", MAX_NEIGHBOUR_DEPTH + 1, &[], Direction::Both),
        Err(CoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        view.neighbours("ns", "x", 1, &[], Direction::Both),
        Err(CoreError::NotFound { .. })
    ));
}

#[test]
fn dot_metric_ranks_by_inner_product() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut txn = db.begin();
    txn.declare_vector_space("ns", 2, Metric::Dot).unwrap();
    for v in [[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]] {
        let memory = NewMemory {
            text: String::new(),
            embedding: Some(v.to_vec()),
            metadata: json!({}),
        };
        txn.insert_memory("ns", memory).unwrap();
    }
    let lsn = txn.commit().unwrap().lsn;
    db.wait_for_index(lsn, Duration::from_secs(10)).unwrap();
    let hits = db.snapshot().search(&vector_request("ns", vec![1.0, 0.5], 3)).unwrap();
    let scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
    assert_eq!(scores, vec![3.0, 1.0, 1.0]);
}

#[test]
fn a_search_after_commit_sees_the_commit_and_stats_report_the_lag() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    for i in 0..20 {
        let mut txn = db.begin();
        let memory = NewMemory {
            text: format!("fact number{i}"),
            ..Default::default()
        };
        let id = txn.insert_memory("ns", memory).unwrap();
        txn.commit().unwrap();
        // No wait: a search reads the index plus the changes it has not indexed yet.
        let hits = db.snapshot().search(&keyword_request("ns", &format!("number{i}"), 1)).unwrap();
        assert_eq!(hits[0].memory.id, id);
    }
    // The indexer runs behind the commits; once it has caught up, the stats say so.
    db.wait_for_index(db.visible_lsn(), Duration::from_secs(10)).unwrap();
    let stats = db.index_stats();
    assert_eq!(stats.indexed_lsn, stats.visible_lsn);
    assert_eq!(stats.lag_lsns, 0);
    assert_eq!(stats.versions, 20);
    assert_eq!(stats.vectors, 0);
    assert!(matches!(
        db.wait_for_index(db.visible_lsn() + 1_000, Duration::from_millis(20)),
        Err(CoreError::IndexTimeout { .. })
    ));
}

#[test]
fn neighbours_follow_depth_relation_types_direction_and_as_of() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let entity = |name: &str| Entity {
        name: name.into(),
        entity_type: "node".into(),
        observations: vec![],
    };
    let relation = |from: &str, kind: &str, to: &str| Relation {
        from: from.into(),
        to: to.into(),
        relation_type: kind.into(),
    };
    let mut txn = db.begin();
    txn.create_entities("g", &["A", "B", "C", "D", "E"].map(entity)).unwrap();
    txn.create_relations(
        "g",
        &[
            relation("A", "knows", "B"),
            relation("B", "knows", "C"),
            relation("C", "works_at", "D"),
            relation("E", "knows", "A"),
        ],
    )
    .unwrap();
    let before = txn.commit().unwrap().lsn;
    let names = |g: &KnowledgeGraph| g.entities.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    let edges = |g: &KnowledgeGraph| g.relations.iter().map(|r| format!("{}>{}", r.from, r.to)).collect::<Vec<_>>();
    let view = db.snapshot();
    let n = |depth, types: &[&str], direction| {
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        view.neighbours("g", "A", depth, &types, direction).unwrap()
    };
    let g = n(0, &[], Direction::Both);
    assert_eq!((names(&g), edges(&g)), (vec!["A".to_string()], vec![]));
    let g = n(1, &[], Direction::Outgoing);
    assert_eq!((names(&g), edges(&g)), (vec!["A".into(), "B".into()], vec!["A>B".to_string()]));
    let g = n(3, &[], Direction::Outgoing);
    assert_eq!(names(&g), vec!["A", "B", "C", "D"]);
    assert_eq!(edges(&g), vec!["A>B", "B>C", "C>D"]);
    let g = n(3, &["knows"], Direction::Outgoing);
    assert_eq!(names(&g), vec!["A", "B", "C"]);
    let g = n(1, &[], Direction::Incoming);
    assert_eq!((names(&g), edges(&g)), (vec!["A".into(), "E".into()], vec!["E>A".to_string()]));
    let g = n(1, &[], Direction::Both);
    assert_eq!(names(&g), vec!["A", "B", "E"]);
    assert_eq!(edges(&g), vec!["A>B", "E>A"]);
    // as_of: after B>C is deleted, C is unreachable now but still reachable before.
    let mut txn = db.begin();
    txn.delete_relations("g", &[relation("B", "knows", "C")]).unwrap();
    txn.commit().unwrap();
    let now = db.snapshot().neighbours("g", "A", 2, &[], Direction::Outgoing).unwrap();
    assert_eq!(names(&now), vec!["A", "B"]);
    let then = db.as_of(before).unwrap().neighbours("g", "A", 2, &[], Direction::Outgoing).unwrap();
    assert_eq!(names(&then), vec!["A", "B", "C"]);
}

#[test]
fn shared_hits_are_their_snapshots_versions_in_search_order_and_outlive_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut rng = Rng(9);
    let vectors: Vec<Vec<f32>> = (0..40).map(|_| rng.vector(4)).collect();
    let ids = load(&db, "ns", &vectors, |i| format!("first word{i}"), |i| json!({ "i": i }));
    let before = db.visible_lsn();
    // Updates left queued for the indexer, so hits come from both the index and the tail.
    db.pause_indexer(true);
    let mut txn = db.begin();
    for id in ids.iter().step_by(2) {
        let patch = MemoryPatch {
            text: Some("second word".into()),
            embedding: Some(rng.vector(4)),
            ..Default::default()
        };
        txn.update_memory("ns", id, patch).unwrap();
    }
    txn.commit().unwrap();
    let mut kept = Vec::new();
    for view in [db.as_of(before).unwrap(), db.snapshot()] {
        let mut hybrid = vector_request("ns", rng.vector(4), 10);
        hybrid.text = Some("word".into());
        hybrid.mode = SearchMode::Hybrid;
        for request in [vector_request("ns", rng.vector(4), 10), keyword_request("ns", "second", 10), hybrid] {
            let shared = view.search_refs(&request).unwrap();
            let copied = view.search(&request).unwrap();
            assert!(!shared.is_empty() || request.mode == SearchMode::Keyword);
            assert_eq!(shared.iter().map(SearchHitRef::to_hit).collect::<Vec<_>>(), copied);
            for hit in &shared {
                // The version valid at the view's snapshot, as a point read there returns it.
                let read = view.get_memory("ns", &hit.memory.id).unwrap().unwrap();
                assert_eq!(*hit.memory, read);
            }
            kept.push((shared, copied));
        }
    }
    db.pause_indexer(false);
    drop(db);
    // A shared hit holds its version, not a borrow of the database.
    for (shared, copied) in kept {
        assert_eq!(shared.iter().map(SearchHitRef::to_hit).collect::<Vec<_>>(), copied);
    }
}
