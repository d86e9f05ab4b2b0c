//! Embeddings loaded from a checkpoint are read in place from the mapped checkpoint file
//! instead of being copied to the heap. The contract: reads, searches, history and later
//! checkpoints see exactly the floats that were written; a mapped file is never written over
//! (a retired checkpoint is reused for the next one only when nothing maps it), even while a
//! memory read from a database that was closed still maps it and the directory is opened again.

use crate::search_support;

use engram_core::*;
use search_support::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Every memory of the namespace: id → embedding.
fn embeddings(db: &Database) -> BTreeMap<String, Vec<f32>> {
    db.snapshot()
        .list_memories("ns")
        .unwrap()
        .into_iter()
        .map(|m| (m.id, m.embedding.expect("an embedding").to_vec()))
        .collect()
}

/// Asserts that `db` holds exactly the `expected` embeddings (naming how many differ).
fn assert_embeddings(db: &Database, expected: &BTreeMap<String, Vec<f32>>) {
    let found = embeddings(db);
    let differing = expected.iter().filter(|(id, floats)| found.get(*id) != Some(floats)).count();
    assert_eq!(
        (found.len(), differing),
        (expected.len(), 0),
        "memories found, and embeddings that differ"
    );
}

fn mapped_count(db: &Database) -> usize {
    db.snapshot()
        .list_memories("ns")
        .unwrap()
        .iter()
        .filter(|m| m.embedding.as_ref().is_some_and(|e| e.is_mapped()))
        .count()
}

fn checkpoint_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(CHECKPOINT_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Inserts `count` more memories, then takes a checkpoint.
fn grow_and_checkpoint(db: &Database, rng: &mut Rng, count: usize, expected: &mut BTreeMap<String, Vec<f32>>) {
    let vectors: Vec<Vec<f32>> = (0..count).map(|_| rng.vector(16)).collect();
    let ids = load(db, "ns", &vectors, |i| format!("memory {i}"), |_| serde_json::json!({}));
    expected.extend(ids.into_iter().zip(vectors));
    db.checkpoint().unwrap();
}

#[test]
fn embeddings_loaded_from_a_checkpoint_are_mapped_and_stay_exact_through_later_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(17);
    let mut expected = BTreeMap::new();
    {
        let db = open(dir.path());
        grow_and_checkpoint(&db, &mut rng, 600, &mut expected);
        assert_eq!(mapped_count(&db), 0, "memories written by this process stay on the heap");
    }

    let db = open(dir.path());
    assert_eq!(mapped_count(&db), 600, "every embedding in the checkpoint is read in place");
    assert_embeddings(&db, &expected);
    let (held_id, held_floats) = expected.iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap();
    let held = db.snapshot().get_memory_ref("ns", &held_id).unwrap().unwrap();
    assert!(held.embedding.as_ref().unwrap().is_mapped());
    // A vector search re-scores with the mapped floats: the memory itself is its own nearest.
    let hits = db.snapshot().search(&vector_request("ns", held_floats.clone(), 1)).unwrap();
    assert_eq!(hits[0].memory.id, held_id);
    assert_eq!(hits[0].memory.embedding.as_deref(), Some(&held_floats[..]));

    // Four checkpoints retire the loaded file; with reuse on (the default) the retired file
    // would become the next checkpoint's: the mapped one must be deleted instead.
    let loaded_file = checkpoint_files(dir.path()).into_iter().find(|n| n.ends_with(".ckpt")).unwrap();
    for _ in 0..4 {
        grow_and_checkpoint(&db, &mut rng, 150, &mut expected);
        assert_embeddings(&db, &expected);
        assert_eq!(held.embedding.as_deref(), Some(&held_floats[..]));
    }
    assert!(!checkpoint_files(dir.path()).contains(&loaded_file), "the loaded file was retired");
    assert_eq!(mapped_count(&db), 600);
    drop(db);

    // A memory of the closed database still maps a file; the next open maps the newest one, and
    // its checkpoints must not write over either.
    let db = open(dir.path());
    assert_eq!(mapped_count(&db), expected.len());
    for _ in 0..4 {
        grow_and_checkpoint(&db, &mut rng, 100, &mut expected);
        assert_eq!(held.embedding.as_deref(), Some(&held_floats[..]));
    }
    assert_embeddings(&db, &expected);
    drop(db);

    let db = open(dir.path());
    assert_embeddings(&db, &expected);
    assert_eq!(mapped_count(&db), expected.len());
    // History keeps the mapped floats too: the held memory's only version.
    let history = db.snapshot().memory_history("ns", &held_id).unwrap();
    assert_eq!(history.len(), 1);
    match &history[0].value {
        Some(Value::Memory(m)) => assert_eq!(m.embedding.as_deref(), Some(&held_floats[..])),
        other => panic!("expected the memory, got {other:?}"),
    }
    drop(held);
}
