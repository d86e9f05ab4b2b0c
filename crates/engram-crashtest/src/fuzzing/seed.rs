//! The small database the request fuzzers run against: two namespaces with memories (3-dimension
//! embeddings), a knowledge graph, key/value pairs (JSON and bytes), an event and a durable
//! cursor, in a temporary directory that lives as long as the harness.

use engram_core::{Database, DatabaseOptions, Entity, KvValue, NewMemory, Relation};
use serde_json::json;

/// Namespaces the seed writes to; `gamma` is valid but empty.
pub const NAMESPACES: [&str; 3] = ["alpha", "beta", "gamma"];
pub const ENTITIES: [&str; 3] = ["Alice", "Bob", "Carol"];
pub const RELATION_TYPES: [&str; 2] = ["knows", "works_with"];
pub const KEYS: [&str; 3] = ["config/mode", "counter", "blob"];
pub const CURSOR: &str = "seed-cursor";
pub const DIMENSION: usize = 3;

const DIR_PREFIX: &str = "engram-fuzz-";

/// The harnesses live in statics, which are never dropped, so a process leaves its database
/// directory behind. Each directory is named after its process; a new one removes those of
/// processes that have ended (Linux: /proc tells).
fn remove_directories_of_finished_processes(parent: &std::path::Path) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

pub struct Seeded {
    /// Holds the database directory.
    pub dir: tempfile::TempDir,
    pub db: Database,
    pub memory_ids: Vec<String>,
}

/// Opens a fresh database under the system temporary directory (`TMPDIR`: a tmpfs makes the
/// fuzzers faster, as fdatasync is then free) and seeds it.
pub fn seeded_database() -> Seeded {
    remove_directories_of_finished_processes(&std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .expect("a temporary directory for the fuzzed database");
    let db = Database::open(dir.path(), DatabaseOptions::default()).expect("a fresh database opens");
    let mut txn = db.begin();
    let mut memory_ids = Vec::new();
    for (i, (namespace, text)) in [
        ("alpha", "the user prefers green tea"),
        ("alpha", "meeting with Bob on Friday"),
        ("alpha", "Alice lives in Lisbon"),
        ("beta", "project deadline is in December"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = txn
            .insert_memory(
                namespace,
                NewMemory {
                    text: text.to_string(),
                    embedding: Some(vec![1.0, i as f32, 0.5]),
                    metadata: json!({ "topic": if i % 2 == 0 { "food" } else { "work" }, "n": i }),
                },
            )
            .expect("the seed memory is valid");
        memory_ids.push(id);
    }
    for namespace in ["alpha", "beta"] {
        let entities: Vec<Entity> = ENTITIES
            .iter()
            .map(|name| Entity {
                name: name.to_string(),
                entity_type: "person".into(),
                observations: vec![format!("{name} is in {namespace}"), "likes tea".into()],
            })
            .collect();
        txn.create_entities(namespace, &entities).expect("the seed entities are valid");
        let relations = [
            Relation {
                from: "Alice".into(),
                to: "Bob".into(),
                relation_type: "knows".into(),
            },
            Relation {
                from: "Bob".into(),
                to: "Carol".into(),
                relation_type: "works_with".into(),
            },
        ];
        txn.create_relations(namespace, &relations).expect("the seed relations are valid");
        txn.kv_put(namespace, b"config/mode", KvValue::Json(json!({ "mode": "fast" })))
            .expect("a valid key");
        txn.kv_put(namespace, b"counter", KvValue::Json(json!(7))).expect("a valid key");
        txn.kv_put(namespace, b"blob", KvValue::Bytes(vec![0, 159, 255]))
            .expect("a valid key");
        txn.emit_event(namespace, "seeded", json!({ "by": "fuzz harness" }))
            .expect("a valid event");
    }
    let info = txn.commit().expect("the seed commits");
    db.advance_cursor(CURSOR, info.lsn).expect("the seed cursor");
    Seeded { dir, db, memory_ids }
}
