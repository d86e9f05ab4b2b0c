//! Visibility and as-of: a random history of inserts, updates, deletes and imports (deleted ids
//! written again, live ones replaced); at every snapshot of it, vector, filtered, keyword and
//! hybrid search equal exact search over a model of that snapshot, before and after a
//! checkpoint and reopen, after more commits replayed from the log on top of the checkpoint,
//! after a reopen that rebuilds the indexes, and while the indexer lags (paused, then racing):
//! searches never wait for it, and stay exact.

use crate::search_support;

use engram_core::*;
use search_support::*;
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, HashMap};

const WORDS: [&str; 7] = ["alpha", "beta", "gamma", "delta", "echo", "fox", "golf"];
const DIMENSION: usize = 6;

#[derive(Clone, Debug, PartialEq)]
struct ModelMemory {
    text: String,
    vector: Vec<f32>,
    metadata: Map<String, Json>,
}

type State = BTreeMap<String, ModelMemory>;

fn random_text(rng: &mut Rng) -> String {
    (0..1 + rng.below(4))
        .map(|_| WORDS[rng.below(WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn random_metadata(rng: &mut Rng) -> Map<String, Json> {
    json!({ "group": rng.below(3) }).as_object().cloned().unwrap()
}

/// Commits `steps` random transactions of one to three operations; returns (LSN, state) after
/// each.
fn random_history(db: &Database, rng: &mut Rng, state: &mut State, steps: usize) -> Vec<(Lsn, State)> {
    let mut snapshots = Vec::new();
    // Ids deleted in this history, which an import may write again.
    let mut deleted: Vec<String> = Vec::new();
    for _ in 0..steps {
        let mut txn = db.begin();
        let mut next = state.clone();
        for _ in 0..1 + rng.below(3) {
            let ids: Vec<String> = next.keys().cloned().collect();
            match rng.below(12) {
                // An import (`restore_memory`): a deleted id written again (maybe in the commit
                // that deleted it), or a live one replaced.
                10..=11 if !deleted.is_empty() || !ids.is_empty() => {
                    let id = if rng.below(2) == 0 && !deleted.is_empty() {
                        deleted.swap_remove(rng.below(deleted.len()))
                    } else if !ids.is_empty() {
                        ids[rng.below(ids.len())].clone()
                    } else {
                        deleted.swap_remove(rng.below(deleted.len()))
                    };
                    let m = ModelMemory {
                        text: random_text(rng),
                        vector: rng.vector(DIMENSION),
                        metadata: random_metadata(rng),
                    };
                    let memory = Memory {
                        id: id.clone(),
                        text: m.text.clone(),
                        embedding: Some(m.vector.clone().into()),
                        metadata: Metadata::from(m.metadata.clone()),
                        created_ms: 1,
                        updated_ms: 2,
                    };
                    txn.restore_memory("ns", memory).unwrap();
                    next.insert(id, m);
                }
                0..=4 => {
                    let m = ModelMemory {
                        text: random_text(rng),
                        vector: rng.vector(DIMENSION),
                        metadata: random_metadata(rng),
                    };
                    let memory = NewMemory {
                        text: m.text.clone(),
                        embedding: Some(m.vector.clone()),
                        metadata: Json::Object(m.metadata.clone()),
                    };
                    let id = txn.insert_memory("ns", memory).unwrap();
                    next.insert(id, m);
                }
                5..=7 if !ids.is_empty() => {
                    let id = &ids[rng.below(ids.len())];
                    let m = next.get_mut(id).unwrap();
                    let mut patch = MemoryPatch::default();
                    if rng.below(2) == 0 {
                        m.text = random_text(rng);
                        patch.text = Some(m.text.clone());
                    }
                    if rng.below(2) == 0 {
                        m.vector = rng.vector(DIMENSION);
                        patch.embedding = Some(m.vector.clone());
                    }
                    m.metadata = random_metadata(rng);
                    patch.metadata = Some(Json::Object(m.metadata.clone()));
                    txn.update_memory("ns", id, patch).unwrap();
                }
                _ if !ids.is_empty() => {
                    let id = &ids[rng.below(ids.len())];
                    txn.delete_memory("ns", id).unwrap();
                    next.remove(id);
                    deleted.push(id.clone());
                }
                _ => {}
            }
        }
        let lsn = txn.commit().unwrap().lsn;
        *state = next;
        snapshots.push((lsn, state.clone()));
    }
    snapshots
}

fn matches_filter(m: &ModelMemory, filter: Option<&Map<String, Json>>) -> bool {
    filter.is_none_or(|f| f.iter().all(|(k, v)| m.metadata.get(k) == Some(v)))
}

/// BM25 (k1 1.2, b 0.75, idf ln(1 + (N - df + 0.5) / (df + 0.5))) over the model, written out
/// independently of the engine: (id, score) best first, ties by id.
fn model_bm25(state: &State, query: &str, filter: Option<&Map<String, Json>>) -> Vec<(String, f32)> {
    let docs: Vec<(&String, Vec<String>)> = state
        .iter()
        .map(|(id, m)| (id, m.text.split(' ').map(str::to_string).collect()))
        .collect();
    let n = docs.len() as f32;
    let avg = docs.iter().map(|(_, d)| d.len()).sum::<usize>() as f32 / n;
    let mut terms: Vec<&str> = Vec::new();
    for t in query.split(' ') {
        if !terms.contains(&t) {
            terms.push(t);
        }
    }
    let mut scores: HashMap<&String, f32> = HashMap::new();
    for t in terms {
        let df = docs.iter().filter(|(_, d)| d.iter().any(|w| w == t)).count() as f32;
        if df == 0.0 {
            continue;
        }
        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        for (id, d) in &docs {
            let tf = d.iter().filter(|w| *w == t).count() as f32;
            if tf > 0.0 {
                let len = d.len() as f32;
                *scores.entry(id).or_default() += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / avg));
            }
        }
    }
    let mut out: Vec<(String, f32)> = scores
        .into_iter()
        .filter(|(id, _)| matches_filter(&state[*id], filter))
        .map(|(id, s)| (id.clone(), s))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

fn assert_hit_is_the_model_version(hit: &SearchHit, state: &State, lsn: Lsn) {
    let m = state
        .get(&hit.memory.id)
        .unwrap_or_else(|| panic!("at LSN {lsn}: hit {} does not exist there", hit.memory.id));
    assert_eq!(hit.memory.text, m.text, "at LSN {lsn}: stale text");
    assert_eq!(hit.memory.embedding.as_deref(), Some(&m.vector[..]), "at LSN {lsn}: stale vector");
    assert_eq!(hit.memory.metadata, m.metadata, "at LSN {lsn}: stale metadata");
}

fn check_snapshot(db: &Database, lsn: Lsn, state: &State, rng: &mut Rng) {
    let view = db.as_of(lsn).unwrap();
    for filtered in [false, true] {
        let filter = filtered.then(|| random_metadata(rng));
        let filter_ref = filter.as_ref();
        // Vector: exactly the model's top k among matching memories (scores compared, so float
        // ties cannot make the test flaky).
        let query = rng.vector(DIMENSION);
        let k = 1 + rng.below(6);
        let mut request = vector_request("ns", query.clone(), k);
        request.filter = filter.clone();
        let hits = view.search(&request).unwrap();
        let mut expected: Vec<(f32, &String)> = state
            .iter()
            .filter(|(_, m)| matches_filter(m, filter_ref))
            .map(|(id, m)| (cosine(&query, &m.vector), id))
            .collect();
        expected.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(hits.len(), expected.len().min(k), "at LSN {lsn}: min(k, matching) hits");
        for (i, hit) in hits.iter().enumerate() {
            assert_hit_is_the_model_version(hit, state, lsn);
            assert!(matches_filter(&state[&hit.memory.id], filter_ref));
            assert!(
                (hit.score - expected[i].0).abs() < 1e-5,
                "at LSN {lsn}: rank {i} score {} vs {}",
                hit.score,
                expected[i].0
            );
            assert_eq!(hit.vector.map(|s| s.rank), Some(i + 1));
        }
        // Keyword: every matching memory, with the model's BM25 scores in the model's order.
        let text = format!("{} {}", WORDS[rng.below(WORDS.len())], WORDS[rng.below(WORDS.len())]);
        let mut request = keyword_request("ns", &text, MAX_K);
        request.filter = filter.clone();
        let hits = view.search(&request).unwrap();
        let expected = model_bm25(state, &text, filter_ref);
        let got: Vec<(String, f32)> = hits.iter().map(|h| (h.memory.id.clone(), h.score)).collect();
        assert_eq!(got.len(), expected.len(), "at LSN {lsn}: keyword hits for {text:?}");
        for ((gid, gs), (eid, es)) in got.iter().zip(&expected) {
            assert!((gs - es).abs() < 1e-4, "at LSN {lsn}: BM25 {gs} vs {es}");
            // Equal scores may come in either order only if they are equal within rounding.
            if gid != eid {
                let other = expected.iter().find(|(id, _)| id == gid).map(|(_, s)| *s);
                assert!(other.is_some_and(|s| (s - es).abs() < 1e-4), "at LSN {lsn}: {gid} out of order");
            }
        }
        for hit in &hits {
            assert_hit_is_the_model_version(hit, state, lsn);
        }
        // Hybrid: per-signal ranks are those of the single-signal searches, fused by RRF.
        let mut request = vector_request("ns", query.clone(), 20);
        request.text = Some(text.clone());
        request.mode = SearchMode::Hybrid;
        request.filter = filter.clone();
        let fused = view.search(&request).unwrap();
        let mut vector_only = request.clone();
        vector_only.mode = SearchMode::Vector;
        vector_only.k = HYBRID_CANDIDATES;
        let vector_ranks: HashMap<String, usize> = view
            .search(&vector_only)
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, h)| (h.memory.id, i + 1))
            .collect();
        let keyword_ranks: HashMap<String, usize> = expected.iter().enumerate().map(|(i, (id, _))| (id.clone(), i + 1)).collect();
        for hit in &fused {
            assert_hit_is_the_model_version(hit, state, lsn);
            let rrf =
                hit.vector.map_or(0.0, |s| 1.0 / (RRF_K + s.rank as f32)) + hit.keyword.map_or(0.0, |s| 1.0 / (RRF_K + s.rank as f32));
            assert!((hit.score - rrf).abs() < 1e-6);
            assert_eq!(hit.vector.map(|s| s.rank), vector_ranks.get(&hit.memory.id).copied());
            if let Some(s) = hit.keyword {
                // Keyword ranks may differ among exactly tied scores only.
                let expected_score = expected[s.rank - 1].1;
                assert!((s.score - expected_score).abs() < 1e-4);
                assert!(keyword_ranks.contains_key(&hit.memory.id));
            }
        }
        assert!(fused.windows(2).all(|w| w[0].score >= w[1].score));
    }
}

fn check_all(db: &Database, history: &[(Lsn, State)], rng: &mut Rng) {
    for (lsn, state) in history {
        check_snapshot(db, *lsn, state, rng);
    }
}

#[test]
fn search_at_every_snapshot_equals_exact_search_over_the_model_before_and_after_reopen() {
    let cases: u64 = std::env::var("ENGRAM_SEARCH_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for seed in 0..cases {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(seed);
        let mut state = State::new();
        let mut history = {
            let db = open(dir.path());
            let mut history = random_history(&db, &mut rng, &mut state, 60);
            check_all(&db, &history, &mut rng);
            // The index lagging: every snapshot after the pause is answered from the index plus
            // the queued tail, the memories the tail changed hidden in the index.
            db.pause_indexer(true);
            history.extend(random_history(&db, &mut rng, &mut state, 40));
            let stats = db.index_stats();
            assert!(stats.lag_lsns > 0 && stats.queued_changes > 0, "{stats:?}");
            check_all(&db, &history, &mut rng);
            // The indexer catching up while searches run (partial progress at every step).
            db.pause_indexer(false);
            check_all(&db, &history, &mut rng);
            db.wait_for_index(db.visible_lsn(), std::time::Duration::from_secs(60)).unwrap();
            check_all(&db, &history, &mut rng);
            db.checkpoint().unwrap();
            history
        };
        let db = open(dir.path());
        assert!(
            matches!(db.index_stats().origin, IndexOrigin::Checkpoint { .. }),
            "{:?}",
            db.index_stats().origin
        );
        check_all(&db, &history, &mut rng);
        // More commits after the checkpoint, then reopen: they are replayed from the log.
        history.extend(random_history(&db, &mut rng, &mut state, 30));
        check_all(&db, &history, &mut rng);
        drop(db);
        let db = open(dir.path());
        check_all(&db, &history, &mut rng);
        // Without index files the open rebuilds the indexes from the store, in the background:
        // searches scan the whole retained history as the tail, then race the rebuild.
        drop(db);
        for entry in std::fs::read_dir(dir.path().join(SEARCH_INDEX_DIR)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "index") {
                std::fs::remove_file(path).unwrap();
            }
        }
        let db = open(dir.path());
        assert!(matches!(db.index_stats().origin, IndexOrigin::Rebuilt { .. }));
        db.pause_indexer(true);
        check_all(&db, &history, &mut rng);
        db.pause_indexer(false);
        check_all(&db, &history, &mut rng);
    }
}

#[test]
fn the_approximate_index_never_returns_a_version_invalid_at_the_snapshot() {
    // Enough vectors for the graph path; then half are updated with new vectors and a quarter
    // deleted. Old snapshots see the old versions, new ones never do.
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut rng = Rng(42);
    let count = EXACT_SEARCH_MAX_VECTORS + 1000;
    let data = clustered(&mut rng, count, 16, 16, 0.3);
    let ids = load(&db, "ns", &data, |i| format!("v1 {i}"), |_| json!({"version": 1}));
    let before = db.visible_lsn();
    let mut txn = db.begin();
    let mut current: Vec<Option<Vec<f32>>> = data.iter().cloned().map(Some).collect();
    for (i, id) in ids.iter().enumerate() {
        match i % 4 {
            0 | 1 => {
                let v = rng.vector(16);
                let patch = MemoryPatch {
                    text: Some(format!("v2 {i}")),
                    embedding: Some(v.clone()),
                    metadata: Some(json!({"version": 2})),
                };
                txn.update_memory("ns", id, patch).unwrap();
                current[i] = Some(v);
            }
            2 => {
                txn.delete_memory("ns", id).unwrap();
                current[i] = None;
            }
            _ => {}
        }
    }
    // First with the update still queued for the indexer (the graph holds only the old
    // versions; the tail's are merged and the ones it replaced hidden inside the traversal),
    // then once it is indexed.
    db.pause_indexer(true);
    let after = txn.commit().unwrap().lsn;
    for indexed in [false, true] {
        if indexed {
            db.pause_indexer(false);
            db.wait_for_index(after, std::time::Duration::from_secs(60)).unwrap();
        } else {
            assert!(db.index_stats().indexed_lsn < after);
        }
        check_old_and_new_snapshots(&db, before, &mut rng, &data, &ids, &current, &format!("indexed: {indexed}"));
    }
    // Reopened from the checkpoint's index file: the per-node validity the traversal reads is
    // restored from the saved versions.
    db.checkpoint().unwrap();
    drop(db);
    let db = open(dir.path());
    assert!(matches!(db.index_stats().origin, IndexOrigin::Checkpoint { .. }));
    check_old_and_new_snapshots(&db, before, &mut rng, &data, &ids, &current, "reopened");
}

/// At `before` every hit is a first version and the top 10 are found; at the current snapshot
/// every hit is the current version of a live memory (never a superseded or deleted one).
fn check_old_and_new_snapshots(
    db: &Database,
    before: Lsn,
    rng: &mut Rng,
    data: &[Vec<f32>],
    ids: &[String],
    current: &[Option<Vec<f32>>],
    case: &str,
) {
    let live: Vec<(usize, Vec<f32>)> = current.iter().enumerate().filter_map(|(i, v)| v.clone().map(|v| (i, v))).collect();
    let live_vectors: Vec<Vec<f32>> = live.iter().map(|(_, v)| v.clone()).collect();
    let old = db.as_of(before).unwrap();
    let new = db.snapshot();
    let (mut found_old, mut found_new) = (0, 0);
    for _ in 0..50 {
        let q = rng.vector(16);
        let hits = old.search(&vector_request("ns", q.clone(), 10)).unwrap();
        assert_eq!(hits.len(), 10);
        let expected: Vec<&String> = exact_top(Metric::Cosine, data, &q, 10).into_iter().map(|i| &ids[i]).collect();
        for h in &hits {
            assert_eq!(h.memory.metadata["version"], 1, "an old snapshot saw a newer version ({case})");
            let i = ids.iter().position(|id| *id == h.memory.id).unwrap();
            assert_eq!(h.memory.embedding.as_deref(), Some(&data[i][..]));
        }
        found_old += hits.iter().filter(|h| expected.contains(&&h.memory.id)).count();
        let hits = new.search(&vector_request("ns", q.clone(), 10)).unwrap();
        assert_eq!(hits.len(), 10);
        let expected: Vec<&String> = exact_top(Metric::Cosine, &live_vectors, &q, 10)
            .into_iter()
            .map(|j| &ids[live[j].0])
            .collect();
        for h in &hits {
            let i = ids.iter().position(|id| *id == h.memory.id).unwrap();
            assert_eq!(
                h.memory.embedding.as_deref(),
                current[i].as_deref(),
                "a new snapshot saw a superseded or deleted version ({case})"
            );
        }
        found_new += hits.iter().filter(|h| expected.contains(&&h.memory.id)).count();
    }
    assert!(found_old >= 475, "recall at the old snapshot {found_old}/500 ({case})");
    assert!(found_new >= 475, "recall at the new snapshot {found_new}/500 ({case})");
}

#[test]
fn searches_racing_with_writers_see_exactly_their_snapshot() {
    // Writers insert, update and delete while a reader searches at fresh snapshots (the
    // indexer applying changes meanwhile): every hit is the version the store holds at that
    // snapshot, a vector search returns min(k, live) hits and a keyword search every memory
    // containing the word.
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    // Declared first: writers racing to set the dimension by their first insert would conflict.
    let mut txn = db.begin();
    txn.declare_vector_space("ns", DIMENSION, Metric::Cosine).unwrap();
    txn.commit().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for w in 0..3u64 {
            let (db, stop) = (&db, &stop);
            s.spawn(move || {
                let mut rng = Rng(100 + w);
                let mut mine: Vec<String> = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut txn = db.begin();
                    if mine.len() < 40 || rng.below(3) == 0 {
                        let memory = NewMemory {
                            text: random_text(&mut rng),
                            embedding: Some(rng.vector(DIMENSION)),
                            metadata: Json::Object(random_metadata(&mut rng)),
                        };
                        mine.push(txn.insert_memory("ns", memory).unwrap());
                    } else if rng.below(2) == 0 {
                        let id = &mine[rng.below(mine.len())];
                        let patch = MemoryPatch {
                            embedding: Some(rng.vector(DIMENSION)),
                            text: Some(random_text(&mut rng)),
                            ..Default::default()
                        };
                        txn.update_memory("ns", id, patch).unwrap();
                    } else {
                        let id = mine.swap_remove(rng.below(mine.len()));
                        txn.delete_memory("ns", &id).unwrap();
                    }
                    txn.commit().unwrap();
                }
            });
        }
        let mut rng = Rng(7);
        for _ in 0..300 {
            let view = db.snapshot();
            let live = view.list_memories("ns").unwrap();
            let k = 1 + rng.below(20);
            let hits = view.search(&vector_request("ns", rng.vector(DIMENSION), k)).unwrap();
            assert_eq!(hits.len(), live.len().min(k));
            for hit in &hits {
                assert_eq!(view.get_memory("ns", &hit.memory.id).unwrap().as_ref(), Some(&hit.memory));
            }
            let word = WORDS[rng.below(WORDS.len())];
            let hits = view.search(&keyword_request("ns", word, MAX_K)).unwrap();
            let containing = live.iter().filter(|m| m.text.split(' ').any(|t| t == word)).count();
            assert_eq!(hits.len(), containing);
            for hit in &hits {
                assert_eq!(view.get_memory("ns", &hit.memory.id).unwrap().as_ref(), Some(&hit.memory));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// While the indexer lags, a search takes from the queued tail only its own namespace's
/// memories, whether a queued batch holds one namespace or several (a transaction writing to
/// two namespaces); and the same once indexed.
#[test]
fn a_lagging_search_takes_only_its_own_namespace_from_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.pause_indexer(true);
    let insert = |txn: &mut Transaction, namespace: &str, word: &str, vector: [f32; 3]| {
        let memory = NewMemory {
            text: format!("{word} shared"),
            embedding: Some(vector.to_vec()),
            metadata: json!({}),
        };
        txn.insert_memory(namespace, memory).unwrap();
    };
    let mut both = db.begin();
    insert(&mut both, "a", "alpha", [1.0, 0.0, 0.0]);
    insert(&mut both, "b", "beta", [0.0, 1.0, 0.0]);
    both.commit().unwrap();
    let mut only_b = db.begin();
    insert(&mut only_b, "b", "bravo", [0.0, 0.9, 0.1]);
    only_b.commit().unwrap();
    let mut only_a = db.begin();
    insert(&mut only_a, "a", "able", [0.9, 0.1, 0.0]);
    let last = only_a.commit().unwrap().lsn;
    for indexed in [false, true] {
        if indexed {
            db.pause_indexer(false);
            db.wait_for_index(last, std::time::Duration::from_secs(60)).unwrap();
        } else {
            assert!(db.index_stats().queued_changes >= 4);
        }
        let snapshot = db.snapshot();
        for (namespace, expected) in [("a", ["able shared", "alpha shared"]), ("b", ["beta shared", "bravo shared"])] {
            let texts = |hits: Vec<SearchHit>| {
                let mut texts: Vec<String> = hits.into_iter().map(|h| h.memory.text).collect();
                texts.sort();
                texts
            };
            let by_vector = texts(snapshot.search(&vector_request(namespace, vec![0.5, 0.5, 0.0], 10)).unwrap());
            let by_keyword = texts(snapshot.search(&keyword_request(namespace, "shared", 10)).unwrap());
            assert_eq!(by_vector, expected, "vector search of {namespace}, indexed: {indexed}");
            assert_eq!(by_keyword, expected, "keyword search of {namespace}, indexed: {indexed}");
        }
    }
}
