//! The database against a model: a plain in-test copy of the state (maps and insertion-ordered
//! lists) and the list of acknowledged commits with their events.
//!
//! `the_database_behaves_like_its_model` drives random command sequences through the public API:
//! transactions of several steps over memories (with and without embeddings, metadata objects,
//! bad input), the graph (create / add / delete, including the failing add to a missing entity),
//! key/value and outbox events, committed or dropped, including large transactions streamed in
//! several log records; pairs of concurrent transactions writing the same item (exactly the first
//! committer wins, the loser changes nothing); checkpoints; named cursors; clean reopens; and
//! crashes of every kind (power loss, torn last write, process death) while idle, inside a commit,
//! inside a checkpoint and inside the recoveries that follow. After every command the reads
//! (current, inside transactions, and as of past commits) equal the model; after every crash the
//! state is the model at the last acknowledged commit, plus — whole or not at all — the commit that
//! was interrupted; the change feed lists exactly the commits present, with every change (before
//! and after images) and every event, in order; and the log still holds what every cursor and the
//! fallback checkpoint need.
//!
//! `a_crash_at_every_io_point_of_a_checkpoint_or_of_recovery_loses_nothing` crashes a fixed
//! workload at every mutating I/O call of a checkpoint, and of the recovery (twice nested) after
//! several kinds of crash.
//!
//! The last three tests are the smallest failing cases the model found, kept as specifications.
//!
//! `PROPTEST_CASES` sets the number of random cases (default 128); `PROPTEST_RNG_SEED` replays a
//! run.

use crate::options::{open_on, small_log_checkpoints_on_demand};
use engram_core::*;
use engram_wal::storage::{CrashMode, FaultStorage};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

const NAMESPACES: [&str; 2] = ["agent", "team"];
const NAMES: [&str; 4] = ["Ada", "Bob", "Cy", "Di"];
const ENTITY_TYPES: [&str; 2] = ["person", "robot"];
const OBSERVATIONS: [&str; 4] = ["likes tea", "lives in Paris", "owns a cat", "is tall"];
const RELATION_TYPES: [&str; 2] = ["knows", "likes"];
const TEXTS: [&str; 3] = ["remember the milk", "the meeting moved to Tuesday", ""];
/// Key/value keys; two are not UTF-8 (the feed shows them in hex). Three share the prefix "s/".
const KEYS: [&[u8]; 5] = [b"s/a", b"s/b", b"s/\xff", b"t", b"\xfe\x00k"];
const TOPICS: [&str; 2] = ["memory.added", "state.changed"];
const CURSORS: [&str; 2] = ["indexer", "mailer"];
/// Values this big fill the 64 KiB test segments in a few commits, so that checkpoints have
/// whole segments to truncate (a replaced value logs its before image too: ~24 KB per record).
const BIG_VALUE_BYTES: usize = 12_000;

fn options() -> DatabaseOptions {
    small_log_checkpoints_on_demand(64 * 1024, 32 * 1024)
}

fn open(fs: &FaultStorage) -> Result<Database> {
    open_on(fs, options())
}

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone, Default, PartialEq)]
struct Namespace {
    dimension: Option<usize>,
    /// By id, which is the order `list_memories` promises.
    memories: BTreeMap<String, Memory>,
    /// In insertion order (of the current incarnation), as the reference server lists them.
    entities: Vec<Entity>,
    relations: Vec<Relation>,
    kv: BTreeMap<Vec<u8>, KvValue>,
}

#[derive(Debug, Clone, PartialEq)]
struct State {
    namespaces: BTreeMap<&'static str, Namespace>,
    cursors: BTreeMap<&'static str, Lsn>,
}

impl State {
    fn empty() -> State {
        State {
            namespaces: NAMESPACES.iter().map(|ns| (*ns, Namespace::default())).collect(),
            cursors: BTreeMap::new(),
        }
    }

    fn ns(&mut self, ns: &str) -> &mut Namespace {
        self.namespaces.get_mut(ns).expect("a test namespace")
    }

    fn get(&self, ns: &str) -> &Namespace {
        &self.namespaces[ns]
    }
}

/// An application event: (namespace, topic, payload).
type Event = (&'static str, &'static str, Json);

/// An item as the change feed names it: (kind, namespace, key, key is hex).
type FlatKey = (&'static str, String, String, bool);

#[derive(Debug)]
struct Commit {
    lsn: Lsn,
    state: State,
    /// Every item of `state` as the change feed shows it (computed once).
    flat: BTreeMap<FlatKey, Json>,
    events: Vec<Event>,
}

/// The acknowledged history: the state after every commit, in LSN order.
struct Model {
    initial: Commit,
    commits: Vec<Commit>,
}

impl Model {
    fn new() -> Model {
        let state = State::empty();
        Model {
            initial: Commit {
                lsn: 0,
                flat: flatten(&state),
                state,
                events: Vec::new(),
            },
            commits: Vec::new(),
        }
    }

    fn current(&self) -> &Commit {
        self.commits.last().unwrap_or(&self.initial)
    }

    fn state(&self) -> &State {
        &self.current().state
    }

    fn last_lsn(&self) -> Lsn {
        self.current().lsn
    }

    /// The commit visible at `lsn`.
    fn at(&self, lsn: Lsn) -> &Commit {
        let n = self.commits.partition_point(|c| c.lsn <= lsn);
        n.checked_sub(1).map_or(&self.initial, |i| &self.commits[i])
    }

    fn record(&mut self, lsn: Lsn, state: State, events: Vec<Event>) {
        assert!(lsn > self.last_lsn(), "commit LSN {lsn} after {}", self.last_lsn());
        self.commits.push(Commit {
            lsn,
            flat: flatten(&state),
            state,
            events,
        });
    }
}

/// A transaction's view in the model: the snapshot it began on plus its own steps.
#[derive(Debug, Clone)]
struct Work {
    state: State,
    events: Vec<Event>,
}

impl Work {
    fn on(state: &State) -> Work {
        Work {
            state: state.clone(),
            events: Vec::new(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn key_text(key: &[u8]) -> (String, bool) {
    match std::str::from_utf8(key) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (hex(key), true),
    }
}

/// Every item of a state keyed and shaped as the change feed shows it (see `ChangeEvent`).
fn flatten(state: &State) -> BTreeMap<FlatKey, Json> {
    let mut out = BTreeMap::new();
    for (ns, n) in &state.namespaces {
        let ns = ns.to_string();
        if let Some(d) = n.dimension {
            out.insert(("meta", ns.clone(), "dimension".into(), false), json!({ "dimension": d }));
        }
        for m in n.memories.values() {
            let value = json!({
                "id": m.id,
                "text": m.text,
                "embedding": m.embedding,
                "metadata": m.metadata,
                "created_ms": m.created_ms,
                "updated_ms": m.updated_ms,
            });
            out.insert(("memory", ns.clone(), m.id.clone(), false), value);
        }
        for e in &n.entities {
            let value = json!({ "name": e.name, "entityType": e.entity_type, "observations": e.observations });
            out.insert(("entity", ns.clone(), e.name.clone(), false), value);
        }
        for r in &n.relations {
            let key = format!("{} / {} / {}", r.from, r.relation_type, r.to);
            let value = json!({ "from": r.from, "to": r.to, "relationType": r.relation_type });
            out.insert(("relation", ns.clone(), key, false), value);
        }
        for (k, v) in &n.kv {
            let (text, is_hex) = key_text(k);
            let value = match v {
                KvValue::Json(j) => json!({ "json": j }),
                KvValue::Bytes(b) => json!({ "hex": hex(b) }),
            };
            out.insert(("kv", ns.clone(), text, is_hex), value);
        }
    }
    out
}

fn kind_label(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Meta => "meta",
        ChangeKind::Memory => "memory",
        ChangeKind::Entity => "entity",
        ChangeKind::Relation => "relation",
        ChangeKind::Kv => "kv",
        ChangeKind::Event => "event",
    }
}

// ---------------------------------------------------------------------------------------------
// Commands.

#[derive(Debug, Clone, Copy)]
enum Invalid {
    MetadataNotObject,
    NonFiniteEmbedding,
    EmptyEmbedding,
}

/// One call inside a transaction.
#[derive(Debug, Clone)]
enum Step {
    InsertMemory {
        ns: &'static str,
        text: &'static str,
        /// Length of the embedding, if any (the namespace's dimension is fixed by the first).
        dimension: Option<usize>,
        tag: u8,
    },
    /// Bad input: refused with a typed error, changes nothing.
    InvalidInsert {
        ns: &'static str,
        how: Invalid,
    },
    UpdateMemory {
        ns: &'static str,
        /// Which existing memory (modulo their number); `None`: one that does not exist.
        pick: Option<usize>,
        text: Option<&'static str>,
        dimension: Option<usize>,
        tag: Option<u8>,
    },
    DeleteMemory {
        ns: &'static str,
        pick: Option<usize>,
    },
    CreateEntities {
        ns: &'static str,
        entities: Vec<(&'static str, &'static str, Vec<&'static str>)>,
    },
    CreateRelations {
        ns: &'static str,
        relations: Vec<(&'static str, &'static str, &'static str)>,
    },
    /// Distinct names; fails as a whole (changing nothing) if one is missing.
    AddObservations {
        ns: &'static str,
        additions: Vec<(&'static str, Vec<&'static str>)>,
    },
    DeleteEntities {
        ns: &'static str,
        names: Vec<&'static str>,
    },
    DeleteObservations {
        ns: &'static str,
        deletions: Vec<(&'static str, Vec<&'static str>)>,
    },
    DeleteRelations {
        ns: &'static str,
        relations: Vec<(&'static str, &'static str, &'static str)>,
    },
    KvPut {
        ns: &'static str,
        key: &'static [u8],
        value: u8,
    },
    KvDelete {
        ns: &'static str,
        key: &'static [u8],
    },
    /// A `BIG_VALUE_BYTES` value under `big/<key>`.
    BigPut {
        ns: &'static str,
        key: u8,
        fill: u8,
    },
    Emit {
        ns: &'static str,
        topic: &'static str,
        n: u8,
    },
}

/// What two concurrent transactions both write.
#[derive(Debug, Clone)]
enum Target {
    Kv {
        key: &'static [u8],
        loser_deletes: bool,
    },
    /// An existing memory (falls back to a key when there is none).
    Memory {
        pick: usize,
        loser_deletes: bool,
    },
    /// An existing entity (falls back to a key when there is none).
    Entity {
        pick: usize,
        loser_deletes: bool,
    },
}

#[derive(Debug, Clone)]
enum CrashPoint {
    Idle,
    /// Inside the commit of these steps, after `after` more mutating I/O calls.
    Commit {
        steps: Vec<Step>,
        after: u64,
    },
    /// Inside a checkpoint, after `after` more mutating I/O calls.
    Checkpoint {
        after: u64,
    },
}

#[derive(Debug, Clone)]
enum Command {
    Commit(Vec<Step>),
    /// The transaction is dropped without committing.
    Abort(Vec<Step>),
    /// Two transactions begin on the same snapshot and write the same item; the winner commits
    /// first, then the loser runs `loser_steps` (still on its snapshot) and fails to commit.
    Conflict {
        ns: &'static str,
        target: Target,
        loser_steps: Vec<Step>,
    },
    Checkpoint,
    /// Moves a cursor to the LSN of the `back`-th newest commit (0 when there are fewer), but
    /// never back.
    AdvanceCursor {
        name: &'static str,
        back: usize,
    },
    DeleteCursor {
        name: &'static str,
    },
    Crash {
        point: CrashPoint,
        mode: CrashMode,
        /// Also crash (power loss) the recoveries that follow: the first after this many
        /// mutating calls, the next (if that one crashed) after the second number, and so on.
        recovery_crashes: Vec<u64>,
    },
    Reopen,
}

fn metadata(tag: u8) -> Json {
    if tag.is_multiple_of(3) {
        Json::Null // no metadata: an empty object
    } else {
        json!({ "tag": tag, "source": "model" })
    }
}

fn metadata_map(tag: u8) -> engram_core::Metadata {
    match metadata(tag) {
        Json::Object(map) => map.into(),
        _ => engram_core::Metadata::new(),
    }
}

/// Exactly representable values, so that JSON and binary round trips are trivially exact.
fn embedding(dimension: usize, tag: u8) -> Vec<f32> {
    (0..dimension).map(|i| f32::from(tag % 8) * 0.25 - i as f32).collect()
}

fn kv_value(n: u8) -> KvValue {
    if n.is_multiple_of(2) {
        KvValue::Json(json!({ "n": n, "list": [n, "x"] }))
    } else {
        KvValue::Bytes(vec![n; 1 + usize::from(n % 5)])
    }
}

fn big_key(key: u8) -> Vec<u8> {
    format!("big/{key}").into_bytes()
}

fn pick_memory(n: &Namespace, pick: Option<usize>) -> Option<String> {
    let pick = pick?;
    (!n.memories.is_empty()).then(|| n.memories.keys().nth(pick % n.memories.len()).unwrap().clone())
}

fn relation((from, relation_type, to): (&str, &str, &str)) -> Relation {
    Relation {
        from: from.into(),
        to: to.into(),
        relation_type: relation_type.into(),
    }
}

/// Runs one step on a transaction and on its model, checking what the call returns.
fn apply_step(t: &mut Transaction, w: &mut Work, step: &Step) {
    match step {
        Step::InsertMemory { ns, text, dimension, tag } => {
            let fits = match (dimension, w.state.get(ns).dimension) {
                (Some(d), Some(expected)) => *d == expected,
                _ => true,
            };
            let result = t.insert_memory(
                ns,
                NewMemory {
                    text: text.to_string(),
                    embedding: dimension.map(|d| embedding(d, *tag)),
                    metadata: metadata(*tag),
                },
            );
            if !fits {
                assert!(matches!(result, Err(CoreError::DimensionMismatch { .. })), "{step:?}: {result:?}");
                return;
            }
            let id = result.unwrap_or_else(|e| panic!("{step:?}: {e}"));
            let m = t.get_memory(ns, &id).unwrap().expect("a transaction reads its own insert");
            assert_eq!(m.id, id);
            assert_eq!(m.text, *text);
            assert_eq!(m.embedding, dimension.map(|d| embedding(d, *tag).into()));
            assert_eq!(m.metadata, metadata_map(*tag));
            assert_eq!(m.created_ms, m.updated_ms);
            let n = w.state.ns(ns);
            assert!(!n.memories.contains_key(&id), "memory ids are unique");
            if let Some(d) = dimension {
                n.dimension.get_or_insert(*d);
            }
            n.memories.insert(id, m);
        }
        Step::InvalidInsert { ns, how } => {
            let (embedding, metadata) = match how {
                Invalid::MetadataNotObject => (None, json!(["not", "an", "object"])),
                Invalid::NonFiniteEmbedding => (Some(vec![1.0, f32::NAN, 0.0]), Json::Null),
                Invalid::EmptyEmbedding => (Some(Vec::new()), Json::Null),
            };
            let result = t.insert_memory(
                ns,
                NewMemory {
                    text: "refused".into(),
                    embedding,
                    metadata,
                },
            );
            let expected = matches!(
                (how, &result),
                (Invalid::MetadataNotObject, Err(CoreError::MetadataNotObject { .. }))
                    | (Invalid::NonFiniteEmbedding, Err(CoreError::NonFiniteValue { index: 1, .. }))
                    | (Invalid::EmptyEmbedding, Err(CoreError::BadDimension { got: 0, .. }))
            );
            assert!(expected, "{step:?}: {result:?}");
        }
        Step::UpdateMemory {
            ns,
            pick,
            text,
            dimension,
            tag,
        } => {
            let id = pick_memory(w.state.get(ns), *pick);
            let patch = MemoryPatch {
                text: text.map(str::to_string),
                embedding: dimension.map(|d| embedding(d, tag.unwrap_or(1))),
                metadata: tag.map(metadata),
            };
            let Some(id) = id else {
                let result = t.update_memory(ns, "no-such-memory", patch);
                assert!(
                    matches!(result, Err(CoreError::NotFound { what: "memory", .. })),
                    "{step:?}: {result:?}"
                );
                return;
            };
            let fits = match (dimension, w.state.get(ns).dimension) {
                (Some(d), Some(expected)) => *d == expected,
                _ => true,
            };
            let result = t.update_memory(ns, &id, patch.clone());
            if !fits {
                assert!(matches!(result, Err(CoreError::DimensionMismatch { .. })), "{step:?}: {result:?}");
                return;
            }
            let updated = result.unwrap_or_else(|e| panic!("{step:?}: {e}"));
            let n = w.state.ns(ns);
            let old = &n.memories[&id];
            let mut expected = old.clone();
            if let Some(text) = patch.text {
                expected.text = text;
            }
            if let Some(e) = patch.embedding {
                expected.embedding = Some(e.into());
            }
            if let Some(tag) = tag {
                expected.metadata = metadata_map(*tag);
            }
            expected.updated_ms = updated.updated_ms;
            assert_eq!(updated, expected, "{step:?}");
            assert!(updated.updated_ms >= old.updated_ms && updated.updated_ms >= updated.created_ms);
            assert_eq!(t.get_memory(ns, &id).unwrap().as_ref(), Some(&updated));
            if let Some(d) = dimension {
                n.dimension.get_or_insert(*d);
            }
            n.memories.insert(id, updated);
        }
        Step::DeleteMemory { ns, pick } => match pick_memory(w.state.get(ns), *pick) {
            Some(id) => {
                t.delete_memory(ns, &id).unwrap_or_else(|e| panic!("{step:?}: {e}"));
                assert_eq!(t.get_memory(ns, &id).unwrap(), None);
                w.state.ns(ns).memories.remove(&id);
            }
            None => {
                let result = t.delete_memory(ns, "no-such-memory");
                assert!(
                    matches!(result, Err(CoreError::NotFound { what: "memory", .. })),
                    "{step:?}: {result:?}"
                );
            }
        },
        Step::CreateEntities { ns, entities } => {
            let input: Vec<Entity> = entities
                .iter()
                .map(|(name, entity_type, observations)| Entity {
                    name: name.to_string(),
                    entity_type: entity_type.to_string(),
                    observations: observations.iter().map(|o| o.to_string()).collect(),
                })
                .collect();
            let n = w.state.ns(ns);
            let mut expected = Vec::new();
            for e in &input {
                if n.entities.iter().any(|x| x.name == e.name) {
                    continue; // an existing name is skipped (also one created earlier in the call)
                }
                let mut observations: Vec<String> = Vec::new();
                for o in &e.observations {
                    if !observations.contains(o) {
                        observations.push(o.clone());
                    }
                }
                let created = Entity { observations, ..e.clone() };
                n.entities.push(created.clone());
                expected.push(created);
            }
            let created = t.create_entities(ns, &input).unwrap_or_else(|e| panic!("{step:?}: {e}"));
            assert_eq!(created, expected, "{step:?}");
        }
        Step::CreateRelations { ns, relations } => {
            let input: Vec<Relation> = relations.iter().copied().map(relation).collect();
            let n = w.state.ns(ns);
            let mut expected = Vec::new();
            for r in &input {
                if !n.relations.contains(r) {
                    n.relations.push(r.clone());
                    expected.push(r.clone());
                }
            }
            let created = t.create_relations(ns, &input).unwrap_or_else(|e| panic!("{step:?}: {e}"));
            assert_eq!(created, expected, "{step:?}");
        }
        Step::AddObservations { ns, additions } => {
            let input: Vec<(String, Vec<String>)> = additions
                .iter()
                .map(|(name, obs)| (name.to_string(), obs.iter().map(|o| o.to_string()).collect()))
                .collect();
            let result = t.add_observations(ns, &input);
            let n = w.state.ns(ns);
            if input.iter().any(|(name, _)| !n.entities.iter().any(|e| e.name == *name)) {
                assert!(
                    matches!(result, Err(CoreError::NotFound { what: "entity", .. })),
                    "{step:?}: {result:?}"
                );
                return; // and nothing changed: checked by the reads after the step
            }
            let mut expected = Vec::new();
            for (name, contents) in &input {
                let entity = n.entities.iter_mut().find(|e| e.name == *name).unwrap();
                let mut added = Vec::new();
                for c in contents {
                    if !entity.observations.contains(c) {
                        entity.observations.push(c.clone());
                        added.push(c.clone());
                    }
                }
                expected.push(AddedObservations {
                    entity_name: name.clone(),
                    added_observations: added,
                });
            }
            assert_eq!(result.unwrap_or_else(|e| panic!("{step:?}: {e}")), expected, "{step:?}");
        }
        Step::DeleteEntities { ns, names } => {
            let input: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            t.delete_entities(ns, &input).unwrap_or_else(|e| panic!("{step:?}: {e}"));
            let n = w.state.ns(ns);
            n.relations.retain(|r| !input.contains(&r.from) && !input.contains(&r.to));
            n.entities.retain(|e| !input.contains(&e.name));
        }
        Step::DeleteObservations { ns, deletions } => {
            let input: Vec<(String, Vec<String>)> = deletions
                .iter()
                .map(|(name, obs)| (name.to_string(), obs.iter().map(|o| o.to_string()).collect()))
                .collect();
            t.delete_observations(ns, &input).unwrap_or_else(|e| panic!("{step:?}: {e}"));
            let n = w.state.ns(ns);
            for (name, observations) in &input {
                if let Some(e) = n.entities.iter_mut().find(|e| e.name == *name) {
                    e.observations.retain(|o| !observations.contains(o));
                }
            }
        }
        Step::DeleteRelations { ns, relations } => {
            let input: Vec<Relation> = relations.iter().copied().map(relation).collect();
            t.delete_relations(ns, &input).unwrap_or_else(|e| panic!("{step:?}: {e}"));
            w.state.ns(ns).relations.retain(|r| !input.contains(r));
        }
        Step::KvPut { ns, key, value } => {
            t.kv_put(ns, key, kv_value(*value)).unwrap_or_else(|e| panic!("{step:?}: {e}"));
            w.state.ns(ns).kv.insert(key.to_vec(), kv_value(*value));
        }
        Step::KvDelete { ns, key } => {
            let existed = t.kv_delete(ns, key).unwrap_or_else(|e| panic!("{step:?}: {e}"));
            let was = w.state.ns(ns).kv.remove(*key);
            assert_eq!(existed, was.is_some(), "{step:?}");
        }
        Step::BigPut { ns, key, fill } => {
            let value = KvValue::Bytes(vec![*fill; BIG_VALUE_BYTES]);
            t.kv_put(ns, &big_key(*key), value.clone())
                .unwrap_or_else(|e| panic!("{step:?}: {e}"));
            w.state.ns(ns).kv.insert(big_key(*key), value);
        }
        Step::Emit { ns, topic, n } => {
            let payload = json!({ "n": n, "by": "model" });
            t.emit_event(ns, topic, payload.clone()).unwrap_or_else(|e| panic!("{step:?}: {e}"));
            w.events.push((ns, topic, payload));
        }
    }
}

/// Every read of `view` equals `state` (memories, dimension, graph in insertion order, keys).
fn check_view<V: RetainedView>(view: &V, state: &State, what: &str) {
    for ns in NAMESPACES {
        let n = state.get(ns);
        assert_eq!(view.dimension(ns), n.dimension, "{what}: dimension of {ns}");
        let memories: Vec<Memory> = n.memories.values().cloned().collect();
        assert_eq!(view.list_memories(ns).unwrap(), memories, "{what}: memories of {ns}");
        for memory in &memories {
            assert_eq!(
                view.get_memory(ns, &memory.id).unwrap().as_ref(),
                Some(memory),
                "{what}: memory by id"
            );
            let shared = view.get_memory_ref(ns, &memory.id).unwrap().map(|m| m.to_memory());
            assert_eq!(shared.as_ref(), Some(memory), "{what}: memory by id, shared");
        }
        let graph = view.read_graph(ns).unwrap();
        assert_eq!(graph.entities, n.entities, "{what}: entities of {ns} (in insertion order)");
        assert_eq!(graph.relations, n.relations, "{what}: relations of {ns} (in insertion order)");
        let kv: Vec<(Vec<u8>, KvValue)> = n.kv.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(view.kv_scan_prefix(ns, b"").unwrap(), kv, "{what}: keys of {ns}");
        let prefixed: Vec<(Vec<u8>, KvValue)> = kv.iter().filter(|(k, _)| k.starts_with(b"s/")).cloned().collect();
        assert_eq!(view.kv_scan_prefix(ns, b"s/").unwrap(), prefixed, "{what}: keys of {ns} under s/");
        for key in KEYS {
            assert_eq!(view.kv_get(ns, key).unwrap().as_ref(), n.kv.get(key), "{what}: key {key:?} of {ns}");
        }
    }
}

/// LSNs of the checkpoint files on disk, oldest first.
fn checkpoint_lsns(fs: &FaultStorage) -> Vec<Lsn> {
    let dir = Path::new("/db").join(CHECKPOINT_DIR);
    let mut lsns: Vec<Lsn> = fs
        .files()
        .into_iter()
        .filter(|p| p.parent() == Some(dir.as_path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            name.strip_prefix("ckpt-")?.strip_suffix(".ckpt")?.parse().ok()
        })
        .collect();
    lsns.sort_unstable();
    lsns
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    commands: u64,
    commits: u64,
    aborts: u64,
    conflicts: u64,
    checkpoints: u64,
    truncations: u64,
    crashes: u64,
    interrupted_commits_present: u64,
    interrupted_commits_absent: u64,
    recovery_crashes: u64,
    reopens: u64,
    feed_checks: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.commands += o.commands;
        self.commits += o.commits;
        self.aborts += o.aborts;
        self.conflicts += o.conflicts;
        self.checkpoints += o.checkpoints;
        self.truncations += o.truncations;
        self.crashes += o.crashes;
        self.interrupted_commits_present += o.interrupted_commits_present;
        self.interrupted_commits_absent += o.interrupted_commits_absent;
        self.recovery_crashes += o.recovery_crashes;
        self.reopens += o.reopens;
        self.feed_checks += o.feed_checks;
    }
}

/// A database on a `FaultStorage` and its model.
struct Harness {
    fs: FaultStorage,
    db: Option<Database>,
    model: Model,
    counts: Counts,
}

impl Harness {
    fn new() -> Harness {
        let fs = FaultStorage::new();
        let db = open(&fs).expect("a new database opens");
        Harness {
            fs,
            db: Some(db),
            model: Model::new(),
            counts: Counts::default(),
        }
    }

    fn db(&self) -> &Database {
        self.db.as_ref().expect("the database is open")
    }

    /// Adopts the outcome of a successful commit of `w`.
    fn committed(&mut self, info: CommitInfo, w: Work) {
        let last = self.model.last_lsn();
        let changed = w.state != *self.model.state() || !w.events.is_empty();
        if info.txn_id == 0 {
            assert!(!changed, "a transaction that changed something was not logged: {info:?}");
            assert!(info.lsn >= last, "a transaction that logged nothing reads its snapshot");
        } else {
            assert!(info.lsn > last, "the commit takes a new LSN: {info:?} after {last}");
            assert_eq!(self.db().visible_lsn(), info.lsn, "a commit is visible when acknowledged");
            self.model.record(info.lsn, w.state, w.events);
            self.counts.commits += 1;
        }
    }

    fn run(&mut self, index: usize, command: &Command) {
        self.counts.commands += 1;
        match command {
            Command::Commit(steps) => {
                let (t, w) = self.run_steps(steps);
                let info = t.commit().unwrap_or_else(|e| panic!("commit of {steps:?}: {e}"));
                self.committed(info, w);
            }
            Command::Abort(steps) => {
                let (t, _) = self.run_steps(steps);
                drop(t);
                self.counts.aborts += 1;
            }
            Command::Conflict { ns, target, loser_steps } => self.conflict(ns, target, loser_steps),
            Command::Checkpoint => self.checkpoint(),
            Command::AdvanceCursor { name, back } => {
                let mut lsn = self
                    .model
                    .commits
                    .len()
                    .checked_sub(back + 1)
                    .map_or(0, |i| self.model.commits[i].lsn);
                // A consumer moves its cursor forward, and a new one starts within the retained
                // log: moving back to, or starting at, a position the log has already truncated
                // cannot be honoured (and is not specified).
                lsn = match self.model.state().cursors.get(name) {
                    Some(current) => lsn.max(*current),
                    None => lsn.max(self.oldest_feedable() - 1),
                };
                let info = self.db().advance_cursor(name, lsn).unwrap();
                assert_ne!(info.txn_id, 0, "a cursor position is a logged commit");
                let mut state = self.model.state().clone();
                state.cursors.insert(name, lsn);
                self.model.record(info.lsn, state, Vec::new());
                assert_eq!(self.db().cursor(name).unwrap(), Some(lsn));
                self.check_feeds();
            }
            Command::DeleteCursor { name } => {
                let existed = self.db().delete_cursor(name).unwrap();
                assert_eq!(existed, self.model.state().cursors.contains_key(name));
                if existed {
                    let mut state = self.model.state().clone();
                    state.cursors.remove(name);
                    let lsn = self.db().visible_lsn();
                    self.model.record(lsn, state, Vec::new());
                }
                assert_eq!(self.db().cursor(name).unwrap(), None);
            }
            Command::Crash {
                point,
                mode,
                recovery_crashes,
            } => {
                let pending = match point {
                    CrashPoint::Idle => None,
                    CrashPoint::Commit { steps, after } => {
                        let (t, w) = self.run_steps(steps);
                        self.fs.crash_after_mutations(self.fs.mutation_count() + after);
                        match t.commit() {
                            Ok(info) => {
                                self.committed(info, w);
                                None
                            }
                            Err(e) => {
                                assert!(!e.is_conflict(), "{e}");
                                Some(w)
                            }
                        }
                    }
                    CrashPoint::Checkpoint { after } => {
                        self.fs.crash_after_mutations(self.fs.mutation_count() + after);
                        let visible = self.db().visible_lsn();
                        if let Ok(report) = self.db().checkpoint() {
                            assert_eq!(report.lsn, visible);
                        }
                        None
                    }
                };
                self.crash_and_recover(*mode, recovery_crashes, pending);
            }
            Command::Reopen => {
                self.db = None;
                self.db = Some(open(&self.fs).unwrap_or_else(|e| panic!("a clean reopen: {e}")));
                self.counts.reopens += 1;
                self.after_open();
            }
        }
        self.check(index);
    }

    fn run_steps(&self, steps: &[Step]) -> (Transaction, Work) {
        let mut t = self.db().begin();
        let mut w = Work::on(self.model.state());
        for step in steps {
            apply_step(&mut t, &mut w, step);
            check_view(&t, &w.state, &format!("inside a transaction after {step:?}"));
        }
        (t, w)
    }

    fn conflict(&mut self, ns: &'static str, target: &Target, loser_steps: &[Step]) {
        let initial = self.model.state().clone();
        let n = initial.get(ns);
        let kv = |key| {
            (
                Step::KvPut { ns, key, value: 200 },
                Step::KvDelete { ns, key },
                Step::KvPut { ns, key, value: 201 },
            )
        };
        let (won, lost_delete, lost_write, loser_deletes) = match target {
            Target::Kv { key, loser_deletes } => {
                let (a, b, c) = kv(key);
                (a, b, c, *loser_deletes)
            }
            Target::Memory { pick, loser_deletes } if !n.memories.is_empty() => {
                let update = |text| Step::UpdateMemory {
                    ns,
                    pick: Some(*pick),
                    text: Some(text),
                    dimension: None,
                    tag: None,
                };
                let delete = Step::DeleteMemory { ns, pick: Some(*pick) };
                (update(TEXTS[0]), delete, update(TEXTS[1]), *loser_deletes)
            }
            Target::Entity { pick, loser_deletes } if !n.entities.is_empty() => {
                let name = &n.entities[pick % n.entities.len()].name;
                let name: &'static str = NAMES.iter().find(|x| **x == name).unwrap();
                let add = |o| Step::AddObservations {
                    ns,
                    additions: vec![(name, vec![o])],
                };
                let delete = Step::DeleteEntities { ns, names: vec![name] };
                (add(OBSERVATIONS[0]), delete, add(OBSERVATIONS[1]), *loser_deletes)
            }
            Target::Memory { loser_deletes, .. } | Target::Entity { loser_deletes, .. } => {
                let (a, b, c) = kv(KEYS[0]);
                (a, b, c, *loser_deletes)
            }
        };
        let db = self.db().clone();
        let mut winner = db.begin();
        let mut loser = db.begin();
        let mut ww = Work::on(&initial);
        let mut lw = Work::on(&initial);
        apply_step(&mut winner, &mut ww, &won);
        apply_step(&mut winner, &mut ww, &Step::Emit { ns, topic: "won", n: 1 });
        apply_step(&mut loser, &mut lw, if loser_deletes { &lost_delete } else { &lost_write });
        let info = winner.commit().expect("the first committer wins");
        assert_ne!(info.txn_id, 0);
        self.committed(info, ww);
        // The loser still reads its snapshot (plus its own writes), not the winner's commit.
        for step in loser_steps {
            apply_step(&mut loser, &mut lw, step);
        }
        apply_step(&mut loser, &mut lw, &Step::Emit { ns, topic: "lost", n: 2 });
        check_view(&loser, &lw.state, "the loser after the winner committed");
        match loser.commit() {
            Err(e) if e.is_conflict() => {}
            other => panic!("the second committer of {target:?} must get a conflict, got {other:?}"),
        }
        self.counts.conflicts += 1;
        assert_eq!(db.visible_lsn(), self.model.last_lsn(), "a conflicting commit logs nothing");
    }

    fn checkpoint(&mut self) {
        let db = self.db().clone();
        let first_before = db.wal_stats().first_lsn;
        let visible = db.visible_lsn();
        let report = db.checkpoint().unwrap_or_else(|e| panic!("checkpoint: {e}"));
        self.counts.checkpoints += 1;
        // (The visible LSN may be past the last commit: see `crash_and_recover`.)
        assert_eq!(report.lsn, visible, "a checkpoint covers every visible commit");
        let on_disk = checkpoint_lsns(&self.fs);
        let cursor_floor = self.model.state().cursors.values().map(|l| l + 1).min().unwrap_or(Lsn::MAX);
        let older = if on_disk.len() >= 2 { on_disk[on_disk.len() - 2] + 1 } else { 1 };
        if report.written {
            assert!(on_disk.len() <= 2, "two checkpoints are kept: {on_disk:?}");
            assert_eq!(on_disk.last(), Some(&report.lsn));
            assert_eq!(
                report.log_kept_from,
                older.min(cursor_floor).max(1),
                "the log is kept from the older checkpoint or the oldest cursor: {report:?}"
            );
        } else {
            assert!(report.log_kept_from <= older && report.log_kept_from <= cursor_floor, "{report:?}");
        }
        // (An earlier checkpoint may have truncated more than this one would: truncation never
        // goes back. What the log must still hold is checked by `check_feeds`.)
        let first = db.wal_stats().first_lsn;
        if first > first_before {
            self.counts.truncations += 1;
        }
        self.check_feeds();
    }

    /// Crashes the file system (with the database open and, maybe, a commit interrupted), then
    /// recovers, maybe crashing the recovery too, and checks the state and the log.
    fn crash_and_recover(&mut self, mode: CrashMode, recovery_crashes: &[u64], pending: Option<Work>) {
        self.fs.crash(mode);
        self.db = None;
        self.counts.crashes += 1;
        for after in recovery_crashes {
            self.fs.crash_after_mutations(self.fs.mutation_count() + after);
            match open(&self.fs) {
                Ok(db) => {
                    // Recovery needed fewer mutating calls: disarm the trigger.
                    self.fs.crash_after_mutations(u64::MAX);
                    self.db = Some(db);
                    break;
                }
                Err(_) => {
                    self.counts.recovery_crashes += 1;
                    self.fs.crash(CrashMode::DropUnsynced);
                }
            }
        }
        if self.db.is_none() {
            self.db = Some(open(&self.fs).unwrap_or_else(|e| panic!("reopen after a crash ({mode:?}): {e}")));
        }
        if let Some(w) = pending {
            // An interrupted commit is present after recovery iff the feed shows it (it wrote
            // something or emitted an event in a user namespace, or it would not have been
            // logged). If present, it must be there whole: the state and the feed are compared
            // with the model below.
            let last = self.model.last_lsn();
            let db = self.db().clone();
            let mut feed = db
                .changes(last + 1)
                .expect("the log keeps what follows the last commit")
                .include_system_namespace();
            match feed.next_event().unwrap() {
                Some(event) => {
                    self.model.record(event.lsn, w.state, w.events);
                    self.counts.interrupted_commits_present += 1;
                }
                None => self.counts.interrupted_commits_absent += 1,
            }
        }
        // Exactly the acknowledged commits (and the interrupted one if present) are there: the
        // feed (`check_feeds`) lists the commits of the model and no other, and the reads equal
        // the model (`check`). The visible LSN may be past the last commit: records of a
        // transaction that never committed take LSNs too.
        assert!(self.db().visible_lsn() >= self.model.last_lsn(), "after a crash ({mode:?})");
        self.after_open();
    }

    fn after_open(&mut self) {
        let db = self.db().clone();
        let report = db.open_report();
        assert!(report.rejected_checkpoints.is_empty(), "{report:?}");
        let newest = checkpoint_lsns(&self.fs).last().copied();
        assert_eq!(report.checkpoint_lsn, newest, "open loads the newest checkpoint");
        assert_eq!(db.last_checkpoint_lsn(), newest);
        assert_eq!(
            report.replayed_records,
            db.visible_lsn() - newest.unwrap_or(0),
            "open replays the log after the checkpoint"
        );
        self.check_feeds();
    }

    /// Reads now and as of a few past commits equal the model.
    fn check(&self, index: usize) {
        let db = self.db();
        assert!(db.visible_lsn() >= self.model.last_lsn());
        check_view(&db.snapshot(), self.model.state(), "snapshot");
        let cursors: Vec<(String, Lsn)> = self.model.state().cursors.iter().map(|(n, l)| (n.to_string(), *l)).collect();
        assert_eq!(db.cursors(), cursors);
        let mut lsns = BTreeSet::from([0]);
        let n = self.model.commits.len();
        if n > 0 {
            lsns.extend([
                self.model.commits[index % n].lsn,
                self.model.commits[n / 2].lsn,
                self.model.commits[n - 1].lsn,
                self.model.commits[n.saturating_sub(2)].lsn,
            ]);
        }
        for lsn in lsns {
            let view = db.as_of(lsn).unwrap();
            assert_eq!(view.read_lsn(), lsn);
            check_view(&view, &self.model.at(lsn).state, &format!("as of LSN {lsn}"));
        }
    }

    /// The change feed from the oldest retained LSN, and from every cursor, lists exactly the
    /// changes and events of the model's commits; the log holds what cursors and the fallback
    /// checkpoint need.
    fn check_feeds(&mut self) {
        self.counts.feed_checks += 1;
        let db = self.db().clone();
        let first = db.wal_stats().first_lsn;
        for (name, lsn) in &self.model.state().cursors {
            assert!(first <= lsn + 1, "the log was truncated to {first}, past cursor {name} at {lsn}");
        }
        let on_disk = checkpoint_lsns(&self.fs);
        let fallback = if on_disk.len() >= 2 { on_disk[on_disk.len() - 2] + 1 } else { 1 };
        assert!(
            first <= fallback,
            "the log starts at {first} but the fallback checkpoint needs {fallback} ({on_disk:?})"
        );
        if first > 1 {
            assert!(
                matches!(db.changes(1), Err(CoreError::HistoryNotRetained { oldest, .. }) if oldest == db.oldest_feed_lsn().unwrap() && oldest >= first),
                "a feed from a truncated LSN says so"
            );
        }
        let start = self.oldest_feedable();
        let feed = db.changes(start).unwrap().include_system_namespace();
        self.check_feed(feed, start, "the feed from the first retained LSN");
        for (name, lsn) in &self.model.state().cursors {
            let feed = db
                .changes_for_cursor(name)
                .unwrap_or_else(|e| panic!("the feed of cursor {name} at {lsn}: {e}"));
            let feed = feed.include_system_namespace();
            self.check_feed(feed, lsn + 1, &format!("the feed of cursor {name} at {lsn}"));
        }
    }

    /// The oldest LSN the log holds. Truncation never splits a transaction (a large one takes
    /// several records), so a feed can start there: it needs nothing before it.
    /// The first transaction boundary the log holds (it may begin with the tail of a large
    /// transaction whose first records went with a truncated segment).
    fn oldest_feedable(&self) -> Lsn {
        let oldest = self.db().oldest_feed_lsn().unwrap();
        assert!(oldest >= self.db().wal_stats().first_lsn);
        oldest
    }

    fn check_feed(&self, mut feed: ChangeFeed, from: Lsn, what: &str) {
        let mut events: Vec<ChangeEvent> = Vec::new();
        while let Some(event) = feed.next_event().unwrap_or_else(|e| panic!("{what}: {e}")) {
            events.push(event);
        }
        let last = self.model.last_lsn();
        assert!(feed.position() >= last.max(from - 1), "{what}: position once caught up");
        // Every commit changes something (cursor commits change the internal namespace), so
        // the full feed names exactly the commits of the model: none lost, none invented, none
        // partial (a transaction's changes all carry its LSN).
        let lsns: BTreeSet<Lsn> = events.iter().map(|e| e.lsn).collect();
        let commits: BTreeSet<Lsn> = self.model.commits.iter().map(|c| c.lsn).filter(|l| *l >= from).collect();
        assert_eq!(lsns, commits, "{what}: the commits in the feed");
        let mut groups: Vec<(Lsn, Vec<&ChangeEvent>)> = Vec::new();
        for e in events.iter().filter(|e| !e.namespace.starts_with('.')) {
            match groups.last_mut() {
                Some((lsn, group)) if *lsn == e.lsn => group.push(e),
                Some((lsn, _)) if *lsn > e.lsn => panic!("{what}: LSN {} after {lsn}", e.lsn),
                _ => groups.push((e.lsn, vec![e])),
            }
        }
        let mut groups = groups.into_iter().peekable();
        let (mut last_txn, mut last_ts) = (0, 0);
        for commit in self.model.commits.iter().filter(|c| c.lsn >= from) {
            let what = format!("{what}: commit at LSN {}", commit.lsn);
            let group = match groups.peek() {
                Some((lsn, _)) if *lsn == commit.lsn => groups.next().unwrap().1,
                _ => Vec::new(),
            };
            let before = &self.model.at(commit.lsn - 1).flat;
            let after = &commit.flat;
            let mut seen = BTreeSet::new();
            let mut recreated = BTreeSet::new();
            let mut app_events: Vec<(String, String, Json)> = Vec::new();
            if let Some(e) = group.first() {
                assert!(e.txn_id > last_txn, "{what}: transaction ids grow with LSNs");
                assert!(e.commit_ts_ms >= last_ts, "{what}: commit times never go back");
                (last_txn, last_ts) = (e.txn_id, e.commit_ts_ms);
            }
            for e in &group {
                assert_eq!((e.txn_id, e.commit_ts_ms), (last_txn, last_ts), "{what}: one transaction");
                if e.op == ChangeOp::Event {
                    assert_eq!((e.kind, &e.key, &e.before), (ChangeKind::Event, &None, &None), "{what}: {e:?}");
                    let body = e.after.clone().unwrap();
                    app_events.push((
                        e.namespace.clone(),
                        body["topic"].as_str().unwrap().to_string(),
                        body["payload"].clone(),
                    ));
                    continue;
                }
                assert!(app_events.is_empty(), "{what}: events come after the changes: {e:?}");
                let key = (
                    kind_label(e.kind),
                    e.namespace.clone(),
                    e.key.clone().expect("a change names its item"),
                    e.key_encoding == KeyEncoding::Hex,
                );
                // A graph item deleted and created again in one transaction is logged as its
                // deletion followed by its creation (it moves to the end of the listing).
                let graph_item = matches!(e.kind, ChangeKind::Entity | ChangeKind::Relation);
                if graph_item && e.op == ChangeOp::Delete && after.contains_key(&key) && recreated.insert(key.clone()) {
                    assert_eq!(e.before.as_ref(), before.get(&key), "{what}: before image of re-created {key:?}");
                    continue;
                }
                let second_half = recreated.contains(&key);
                assert!(seen.insert(key.clone()), "{what}: {key:?} changed twice in one commit");
                let expected_before = if second_half { None } else { before.get(&key) };
                assert_eq!(e.before.as_ref(), expected_before, "{what}: before image of {key:?}");
                assert_eq!(e.after.as_ref(), after.get(&key), "{what}: after image of {key:?}");
                match e.op {
                    ChangeOp::Put => assert!(e.after.is_some(), "{what}: {e:?}"),
                    ChangeOp::Delete => assert!(e.before.is_some() && e.after.is_none(), "{what}: {e:?}"),
                    ChangeOp::Event => unreachable!(),
                }
            }
            for key in before.keys().chain(after.keys()) {
                if before.get(key) != after.get(key) {
                    assert!(seen.contains(key), "{what}: the change of {key:?} is missing from the feed");
                }
            }
            let expected: Vec<(String, String, Json)> = commit
                .events
                .iter()
                .map(|(ns, topic, payload)| (ns.to_string(), topic.to_string(), payload.clone()))
                .collect();
            assert_eq!(app_events, expected, "{what}: the events of the commit, in order");
        }
        let extra: Vec<Lsn> = groups.map(|(lsn, _)| lsn).collect();
        assert!(
            extra.is_empty(),
            "{what}: the feed has changes at LSNs {extra:?} that no commit made"
        );
    }

    /// The end of a run: a clean reopen still reads the same.
    fn finish(&mut self) {
        self.check_feeds();
        self.run(0, &Command::Reopen);
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn ns() -> impl Strategy<Value = &'static str> {
    select(&NAMESPACES[..])
}

fn name() -> impl Strategy<Value = &'static str> {
    select(&NAMES[..])
}

fn observations(min: usize) -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(select(&OBSERVATIONS[..]), min..3)
}

fn relation_triple() -> impl Strategy<Value = (&'static str, &'static str, &'static str)> {
    (name(), select(&RELATION_TYPES[..]), name())
}

fn dimension() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![4 => Just(None), 5 => Just(Some(3)), 1 => Just(Some(2))]
}

fn pick() -> impl Strategy<Value = Option<usize>> {
    prop::option::weighted(0.9, 0..16usize)
}

fn memory_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (ns(), select(&TEXTS[..]), dimension(), any::<u8>())
            .prop_map(|(ns, text, dimension, tag)| Step::InsertMemory { ns, text, dimension, tag }),
        1 => (ns(), select(vec![Invalid::MetadataNotObject, Invalid::NonFiniteEmbedding, Invalid::EmptyEmbedding]))
            .prop_map(|(ns, how)| Step::InvalidInsert { ns, how }),
        3 => (ns(), pick(), prop::option::of(select(&TEXTS[..])), dimension(), prop::option::of(any::<u8>()))
            .prop_map(|(ns, pick, text, dimension, tag)| Step::UpdateMemory { ns, pick, text, dimension, tag }),
        2 => (ns(), pick()).prop_map(|(ns, pick)| Step::DeleteMemory { ns, pick }),
    ]
}

fn graph_step() -> impl Strategy<Value = Step> {
    let entity = (name(), select(&ENTITY_TYPES[..]), observations(0));
    prop_oneof![
        4 => (ns(), prop::collection::vec(entity, 1..3)).prop_map(|(ns, entities)| Step::CreateEntities { ns, entities }),
        3 => (ns(), prop::collection::vec(relation_triple(), 1..3))
            .prop_map(|(ns, relations)| Step::CreateRelations { ns, relations }),
        3 => (ns(), prop::collection::vec((name(), observations(0)), 1..3)).prop_map(|(ns, additions)| {
            // One entry per entity: how repeated names in one call merge is not specified.
            let mut seen = BTreeSet::new();
            let additions = additions.into_iter().filter(|(name, _)| seen.insert(*name)).collect();
            Step::AddObservations { ns, additions }
        }),
        2 => (ns(), prop::collection::vec(name(), 1..3)).prop_map(|(ns, names)| Step::DeleteEntities { ns, names }),
        2 => (ns(), prop::collection::vec((name(), observations(1)), 1..3))
            .prop_map(|(ns, deletions)| Step::DeleteObservations { ns, deletions }),
        2 => (ns(), prop::collection::vec(relation_triple(), 1..3))
            .prop_map(|(ns, relations)| Step::DeleteRelations { ns, relations }),
    ]
}

fn kv_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (ns(), select(&KEYS[..]), any::<u8>()).prop_map(|(ns, key, value)| Step::KvPut { ns, key, value }),
        2 => (ns(), select(&KEYS[..])).prop_map(|(ns, key)| Step::KvDelete { ns, key }),
        3 => (ns(), select(&TOPICS[..]), any::<u8>()).prop_map(|(ns, topic, n)| Step::Emit { ns, topic, n }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![3 => memory_step(), 5 => graph_step(), 3 => kv_step()]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..6)
}

fn big_put() -> impl Strategy<Value = Vec<Step>> {
    (ns(), 0..4u8, any::<u8>(), select(&TOPICS[..]))
        .prop_map(|(ns, key, fill, topic)| vec![Step::BigPut { ns, key, fill }, Step::Emit { ns, topic, n: fill }])
}

/// Three big values in one transaction: more than a log record holds (32 KiB here), so the
/// transaction is streamed in several records before its commit record.
fn large_transaction() -> impl Strategy<Value = Vec<Step>> {
    (ns(), prop::sample::subsequence(vec![0u8, 1, 2, 3], 3), any::<u8>(), steps()).prop_map(|(ns, keys, fill, mut rest)| {
        let mut steps: Vec<Step> = keys.into_iter().map(|key| Step::BigPut { ns, key, fill }).collect();
        steps.append(&mut rest);
        steps
    })
}

fn crash_mode() -> impl Strategy<Value = CrashMode> {
    prop_oneof![
        Just(CrashMode::DropUnsynced),
        any::<u64>().prop_map(|seed| CrashMode::TearLastWrite { seed }),
        Just(CrashMode::ProcessOnly),
    ]
}

fn crash() -> impl Strategy<Value = Command> {
    let point = prop_oneof![
        1 => Just(CrashPoint::Idle),
        2 => (steps(), 0..4u64).prop_map(|(steps, after)| CrashPoint::Commit { steps, after }),
        1 => (big_put(), 0..4u64).prop_map(|(steps, after)| CrashPoint::Commit { steps, after }),
        1 => (large_transaction(), 0..8u64).prop_map(|(steps, after)| CrashPoint::Commit { steps, after }),
        2 => (0..16u64).prop_map(|after| CrashPoint::Checkpoint { after }),
    ];
    let recovery_crashes = prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(0..3u64, 1..3)];
    (point, crash_mode(), recovery_crashes).prop_map(|(point, mode, recovery_crashes)| Command::Crash {
        point,
        mode,
        recovery_crashes,
    })
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        (select(&KEYS[..]), any::<bool>()).prop_map(|(key, loser_deletes)| Target::Kv { key, loser_deletes }),
        (0..16usize, any::<bool>()).prop_map(|(pick, loser_deletes)| Target::Memory { pick, loser_deletes }),
        (0..16usize, any::<bool>()).prop_map(|(pick, loser_deletes)| Target::Entity { pick, loser_deletes }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        10 => steps().prop_map(Command::Commit),
        2 => steps().prop_map(Command::Abort),
        5 => big_put().prop_map(Command::Commit),
        1 => large_transaction().prop_map(Command::Commit),
        2 => (ns(), target(), prop::collection::vec(step(), 0..3))
            .prop_map(|(ns, target, loser_steps)| Command::Conflict { ns, target, loser_steps }),
        2 => Just(Command::Checkpoint),
        2 => (select(&CURSORS[..]), 0..8usize).prop_map(|(name, back)| Command::AdvanceCursor { name, back }),
        1 => select(&CURSORS[..]).prop_map(|name| Command::DeleteCursor { name }),
        3 => crash(),
        1 => Just(Command::Reopen),
    ]
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn the_database_behaves_like_its_model() {
    let config = Config {
        cases: env_u32("PROPTEST_CASES", 128),
        // Keep to this one file: the minimal failing input is printed instead.
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let started = Instant::now();
    let totals = std::cell::RefCell::new(Counts::default());
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(&prop::collection::vec(command(), 1..64), |commands| {
        let mut h = Harness::new();
        for (i, command) in commands.iter().enumerate() {
            h.run(i, command);
        }
        h.finish();
        *totals.borrow_mut() += h.counts;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let totals = totals.into_inner();
    eprintln!(
        "model test: {} cases in {:.1?} (totals include shrinking runs): {totals:?}",
        config.cases,
        started.elapsed()
    );
    assert!(totals.crashes > 0 && totals.conflicts > 0 && totals.checkpoints > 0);
}

// ---------------------------------------------------------------------------------------------
// Crash at every I/O point of a checkpoint and of recovery.

fn big_round(commands: &mut Vec<Command>, ns: &'static str, round: u8) {
    for i in 0..6 {
        commands.push(Command::Commit(vec![
            Step::BigPut {
                ns,
                key: i % 4,
                fill: round * 10 + i,
            },
            Step::Emit {
                ns,
                topic: TOPICS[1],
                n: round * 10 + i,
            },
        ]));
    }
}

/// Memories, graph, keys and events in both namespaces, an abort and a conflict, two
/// checkpoints and two cursors, and enough big values to span several log segments. The cursor
/// "indexer" ends in the middle of the second round, below the older retained checkpoint, so the
/// next checkpoint truncates the log up to the cursor and no further.
fn workload() -> Vec<Command> {
    let (a, t) = ("agent", "team");
    let mut w = vec![
        Command::Commit(vec![
            Step::CreateEntities {
                ns: a,
                entities: vec![("Ada", "person", vec!["likes tea", "owns a cat"]), ("Bob", "robot", vec![])],
            },
            Step::CreateRelations {
                ns: a,
                relations: vec![("Ada", "knows", "Bob"), ("Bob", "likes", "Ada")],
            },
            Step::InsertMemory {
                ns: a,
                text: TEXTS[0],
                dimension: Some(3),
                tag: 1,
            },
            Step::KvPut {
                ns: a,
                key: KEYS[0],
                value: 2,
            },
            Step::Emit {
                ns: a,
                topic: TOPICS[0],
                n: 1,
            },
        ]),
        Command::AdvanceCursor { name: "indexer", back: 0 },
    ];
    big_round(&mut w, a, 1);
    w.push(Command::Commit(vec![
        Step::AddObservations {
            ns: a,
            additions: vec![("Ada", vec!["is tall"])],
        },
        Step::InsertMemory {
            ns: t,
            text: TEXTS[1],
            dimension: None,
            tag: 2,
        },
        Step::KvPut {
            ns: t,
            key: KEYS[2],
            value: 3,
        },
        Step::Emit {
            ns: t,
            topic: TOPICS[1],
            n: 2,
        },
    ]));
    w.push(Command::Abort(vec![
        Step::DeleteEntities { ns: a, names: vec!["Ada"] },
        Step::KvPut {
            ns: a,
            key: KEYS[1],
            value: 9,
        },
        Step::Emit {
            ns: a,
            topic: TOPICS[0],
            n: 9,
        },
    ]));
    w.push(Command::Conflict {
        ns: a,
        target: Target::Kv {
            key: KEYS[1],
            loser_deletes: false,
        },
        loser_steps: vec![Step::InsertMemory {
            ns: a,
            text: TEXTS[1],
            dimension: Some(3),
            tag: 4,
        }],
    });
    w.push(Command::AdvanceCursor { name: "indexer", back: 0 });
    w.push(Command::Checkpoint);
    big_round(&mut w, t, 2);
    w.push(Command::Commit(vec![
        Step::DeleteEntities { ns: a, names: vec!["Bob"] },
        Step::UpdateMemory {
            ns: a,
            pick: Some(0),
            text: Some(TEXTS[2]),
            dimension: Some(3),
            tag: Some(5),
        },
        Step::KvDelete { ns: a, key: KEYS[0] },
        Step::CreateEntities {
            ns: t,
            entities: vec![("Cy", "person", vec!["owns a cat"])],
        },
        Step::Emit {
            ns: a,
            topic: TOPICS[0],
            n: 3,
        },
    ]));
    w.push(Command::Checkpoint);
    big_round(&mut w, a, 3);
    w.push(Command::Commit(vec![
        Step::DeleteObservations {
            ns: a,
            deletions: vec![("Ada", vec!["likes tea"])],
        },
        Step::CreateRelations {
            ns: t,
            relations: vec![("Cy", "knows", "Di")],
        },
        Step::KvPut {
            ns: t,
            key: KEYS[4],
            value: 4,
        },
        Step::Emit {
            ns: t,
            topic: TOPICS[0],
            n: 4,
        },
    ]));
    // 9 commits back: the fifth big value of the second round.
    w.push(Command::AdvanceCursor { name: "indexer", back: 9 });
    w.push(Command::AdvanceCursor { name: "mailer", back: 0 });
    w
}

fn build() -> Harness {
    let mut h = Harness::new();
    for (i, command) in workload().iter().enumerate() {
        h.run(i, command);
    }
    h
}

/// What happened just before the crash whose recovery is crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Before {
    /// Everything acknowledged and durable.
    Idle,
    /// A commit's record was written but not synced when the process died (it survives in
    /// the page cache, unsynced: recovery must make it durable or drop it, never half).
    CommitWrittenProcessDied,
    /// A big commit's write was torn by a power loss.
    CommitTorn,
    /// A large transaction (operations streamed in several records before its commit record)
    /// was interrupted after `after` mutating calls by a crash of this kind, so that some of
    /// its records survive without the commit record.
    LargeCommitInterrupted { after: u64, mode: CrashMode },
    /// A checkpoint was interrupted half-way by a power loss.
    CheckpointInterrupted,
}

/// Brings a built workload to the point just before the crash; returns the crash mode and the
/// interrupted commit, if any.
fn prepare(h: &mut Harness, before: Before, checkpoint_calls: u64) -> (CrashMode, Option<Work>) {
    let interrupted = |h: &mut Harness, steps: &[Step], after: u64| {
        let (t, w) = h.run_steps(steps);
        h.fs.crash_after_mutations(h.fs.mutation_count() + after);
        assert!(t.commit().is_err(), "the commit is interrupted");
        Some(w)
    };
    match before {
        Before::Idle => (CrashMode::DropUnsynced, None),
        Before::CommitWrittenProcessDied => {
            let steps = [
                Step::KvPut {
                    ns: "agent",
                    key: KEYS[3],
                    value: 7,
                },
                Step::Emit {
                    ns: "agent",
                    topic: TOPICS[1],
                    n: 7,
                },
            ];
            (CrashMode::ProcessOnly, interrupted(h, &steps, 1))
        }
        Before::CommitTorn => {
            let steps = [Step::BigPut {
                ns: "team",
                key: 1,
                fill: 99,
            }];
            (CrashMode::TearLastWrite { seed: 3 }, interrupted(h, &steps, 1))
        }
        Before::LargeCommitInterrupted { after, mode } => {
            let steps = [0, 2, 3].map(|key| Step::BigPut {
                ns: "agent",
                key,
                fill: 77,
            });
            (mode, interrupted(h, &steps, after))
        }
        Before::CheckpointInterrupted => {
            h.fs.crash_after_mutations(h.fs.mutation_count() + checkpoint_calls / 2);
            assert!(h.db().checkpoint().is_err());
            (CrashMode::DropUnsynced, None)
        }
    }
}

#[test]
fn a_crash_at_every_io_point_of_a_checkpoint_or_of_recovery_loses_nothing() {
    let started = Instant::now();
    let mut crash_states = 0u64;

    // (a) The checkpoint after the workload: count its mutating calls; it writes a third
    // checkpoint, deletes the oldest, and truncates the log up to the cursor and no further.
    let checkpoint_calls = {
        let h = build();
        let before = h.fs.mutation_count();
        let report = h.db().checkpoint().unwrap();
        assert!(
            report.written && report.removed_files > 0 && report.log_segments_removed > 0,
            "{report:?}"
        );
        let indexer = h.model.state().cursors["indexer"];
        let older = checkpoint_lsns(&h.fs)[0];
        assert!(indexer < older, "the cursor, not the older checkpoint, bounds the truncation");
        assert_eq!(report.log_kept_from, indexer + 1);
        h.fs.mutation_count() - before
    };
    assert!(
        checkpoint_calls >= 8,
        "a checkpoint makes at least 8 mutating calls, got {checkpoint_calls}"
    );
    let modes = |k: u64| {
        [
            CrashMode::DropUnsynced,
            CrashMode::TearLastWrite { seed: k },
            CrashMode::ProcessOnly,
        ]
    };
    for k in 0..=checkpoint_calls {
        for mode in modes(k) {
            let mut h = build();
            h.fs.crash_after_mutations(h.fs.mutation_count() + k);
            let result = h.db().checkpoint();
            assert_eq!(
                result.is_ok(),
                k == checkpoint_calls,
                "crash after {k} of {checkpoint_calls}: {result:?}"
            );
            h.crash_and_recover(mode, &[], None);
            crash_states += 1;
            // The next checkpoint cleans up after the interrupted one; the database reopens
            // from it with the same state, and nothing of the interrupted run is left.
            h.run(1, &Command::Checkpoint);
            h.run(2, &Command::Reopen);
            let leftovers: Vec<_> =
                h.fs.files()
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
                    .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");
        }
    }

    // (b) Recovery after each kind of crash, itself crashed (power loss) after every number
    // of its mutating calls, and then the recovery of that crash crashed again at every point.
    // A crash that keeps the first records of the large transaction but not its commit record.
    let process_crashes = (1..8).map(|after| (after, CrashMode::ProcessOnly));
    let tears = (1..8).flat_map(|after| (0..4).map(move |seed| (after, CrashMode::TearLastWrite { seed })));
    let (after, mode) = process_crashes
        .chain(tears)
        .find(|&(after, mode)| {
            let mut h = build();
            let (mode, pending) = prepare(&mut h, Before::LargeCommitInterrupted { after, mode }, checkpoint_calls);
            h.crash_and_recover(mode, &[], pending);
            h.db().visible_lsn() > h.model.last_lsn()
        })
        .expect("a crash inside a large transaction that leaves records without their commit");
    let mut recovery_calls_seen = BTreeMap::new();
    for before in [
        Before::Idle,
        Before::CommitWrittenProcessDied,
        Before::CommitTorn,
        Before::LargeCommitInterrupted { after, mode },
        Before::CheckpointInterrupted,
    ] {
        let recovery_calls = |crashes: &[u64]| {
            let mut h = build();
            let (mode, _interrupted) = prepare(&mut h, before, checkpoint_calls);
            h.fs.crash(mode);
            h.db = None;
            for after in crashes {
                h.fs.crash_after_mutations(h.fs.mutation_count() + after);
                assert!(open(&h.fs).is_err());
                h.fs.crash(CrashMode::DropUnsynced);
            }
            let start = h.fs.mutation_count();
            h.db = Some(open(&h.fs).unwrap());
            h.fs.mutation_count() - start
        };
        let first = recovery_calls(&[]);
        recovery_calls_seen.insert(format!("{before:?}"), first);
        for k in 0..=first {
            // After a crash at k, the next recovery may have other work left: crash it at
            // each of its points too (k2 = its full count: it completes).
            let second = if k < first { recovery_calls(&[k]) } else { 0 };
            for k2 in 0..=second {
                let mut h = build();
                let (mode, pending) = prepare(&mut h, before, checkpoint_calls);
                let crashes: Vec<u64> = if k < first { vec![k, k2] } else { vec![k] };
                h.crash_and_recover(mode, &crashes, pending);
                crash_states += 1;
                // The recovered database takes new commits durably.
                h.run(
                    1,
                    &Command::Commit(vec![
                        Step::KvPut {
                            ns: "team",
                            key: KEYS[0],
                            value: 42,
                        },
                        Step::Emit {
                            ns: "team",
                            topic: TOPICS[0],
                            n: 42,
                        },
                    ]),
                );
                h.run(
                    2,
                    &Command::Crash {
                        point: CrashPoint::Idle,
                        mode: CrashMode::DropUnsynced,
                        recovery_crashes: Vec::new(),
                    },
                );
            }
        }
    }
    eprintln!(
        "crash points: {crash_states} crash states explored in {:.1?} ({checkpoint_calls} mutating calls per checkpoint, \
         recovery calls by prior crash: {recovery_calls_seen:?})",
        started.elapsed()
    );
    assert!(crash_states >= 40, "only {crash_states} crash states explored");
}

// ---------------------------------------------------------------------------------------------
// The smallest case the model found.

/// docs/architecture.md: graph reads order items by where their *current incarnation* began,
/// which is the reference server's insertion order. An item deleted and created again within
/// one transaction is a new incarnation, exactly as when the two calls are committed
/// separately: it is listed after the items that existed before it — inside the transaction,
/// once committed, and after a reopen from a checkpoint.
#[test]
fn an_item_deleted_and_created_again_in_one_transaction_is_listed_last() {
    let entity = |name: &str| Entity {
        name: name.into(),
        entity_type: "person".into(),
        observations: Vec::new(),
    };
    let names = |g: &KnowledgeGraph| g.entities.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    let triples = |g: &KnowledgeGraph| g.relations.iter().map(|r| format!("{}->{}", r.from, r.to)).collect::<Vec<_>>();
    let (bc, cb) = (relation(("B", "knows", "C")), relation(("C", "knows", "B")));
    let setup = |db: &Database| {
        db.run(1, |t| {
            t.create_entities("ns", &[entity("A"), entity("B")])?;
            t.create_relations("ns", &[bc.clone(), cb.clone()])
        })
        .unwrap();
    };

    // Committed separately: the reference behaviour, which Engram already has.
    let fs = FaultStorage::new();
    let db = open(&fs).unwrap();
    setup(&db);
    db.run(1, |t| t.delete_entities("ns", &["A".into()])).unwrap();
    db.run(1, |t| t.delete_relations("ns", std::slice::from_ref(&bc))).unwrap();
    db.run(1, |t| t.create_entities("ns", &[entity("A")])).unwrap();
    db.run(1, |t| t.create_relations("ns", std::slice::from_ref(&bc))).unwrap();
    let separately = db.snapshot().read_graph("ns").unwrap();
    assert_eq!(
        (names(&separately), triples(&separately)),
        (vec!["B".into(), "A".into()], vec!["C->B".into(), "B->C".into()])
    );

    // The same calls in one transaction must end the same way.
    let fs = FaultStorage::new();
    let db = open(&fs).unwrap();
    setup(&db);
    let mut t = db.begin();
    t.delete_entities("ns", &["A".into()]).unwrap();
    t.delete_relations("ns", std::slice::from_ref(&bc)).unwrap();
    t.create_entities("ns", &[entity("A")]).unwrap();
    t.create_relations("ns", std::slice::from_ref(&bc)).unwrap();
    assert_eq!(t.read_graph("ns").unwrap(), separately, "inside the transaction");
    t.commit().unwrap();
    assert_eq!(db.snapshot().read_graph("ns").unwrap(), separately, "once committed");
    db.checkpoint().unwrap();
    drop(db);
    let db = open(&fs).unwrap();
    assert_eq!(db.snapshot().read_graph("ns").unwrap(), separately, "after a reopen");

    // Also for an item first created in the same transaction: created, deleted, created again
    // after another one.
    let mut t = db.begin();
    t.create_entities("ns", &[entity("X"), entity("Y")]).unwrap();
    t.delete_entities("ns", &["X".into()]).unwrap();
    t.create_entities("ns", &[entity("X")]).unwrap();
    let expected = ["B", "A", "Y", "X"].map(String::from).to_vec();
    assert_eq!(names(&t.read_graph("ns").unwrap()), expected, "inside the transaction");
    t.commit().unwrap();
    assert_eq!(names(&db.snapshot().read_graph("ns").unwrap()), expected, "once committed");
}

/// A process crash while the log prepares its next segment (the file is renamed into place but
/// its directory entry is not yet synced) leaves a zero-filled segment that recovery adopts as
/// ready for use. Commits acknowledged after that recovery go into it, and must survive a later
/// power loss: the segment's name must be durable before it holds acknowledged records.
#[test]
fn commits_acknowledged_after_a_process_crash_during_segment_preparation_survive_a_power_loss() {
    let value = |i: u8| KvValue::Bytes(vec![i; BIG_VALUE_BYTES]);
    let put = |db: &Database, i: u8| db.run(1, |t| t.kv_put("ns", format!("k{i}").as_bytes(), value(i)));
    // Five values fill the first 64 KiB segment; the sixth commit starts the second one.
    let calls = {
        let fs = FaultStorage::new();
        let db = open(&fs).unwrap();
        for i in 0..5 {
            put(&db, i).unwrap();
        }
        assert_eq!(db.wal_stats().segments, 1);
        let before = fs.mutation_count();
        put(&db, 5).unwrap();
        assert_eq!(db.wal_stats().segments, 2, "this commit starts a new segment");
        fs.mutation_count() - before
    };
    for k in 0..calls {
        let fs = FaultStorage::new();
        let db = open(&fs).unwrap();
        let mut acknowledged: Vec<u8> = Vec::new();
        for i in 0..5 {
            put(&db, i).unwrap();
            acknowledged.push(i);
        }
        fs.crash_after_mutations(fs.mutation_count() + k);
        assert!(put(&db, 5).is_err(), "the crash after {k} of {calls} calls interrupts the commit");
        fs.crash(CrashMode::ProcessOnly);
        drop(db);
        let db = open(&fs).unwrap();
        // Three values: they fit in the second segment (a third one would be prepared, and its
        // directory sync would make the second one's name durable by chance).
        for i in 6..9 {
            put(&db, i).unwrap();
            acknowledged.push(i);
        }
        fs.crash(CrashMode::DropUnsynced);
        drop(db);
        let db = open(&fs).unwrap();
        let snapshot = db.snapshot();
        let lost: Vec<u8> = acknowledged
            .into_iter()
            .filter(|i| snapshot.kv_get("ns", format!("k{i}").as_bytes()).unwrap() != Some(value(*i)))
            .collect();
        assert!(
            lost.is_empty(),
            "acknowledged commits {lost:?} lost: process crash after {k} of the {calls} mutating calls of a commit \
             that starts a segment, recovery, more commits, then a power loss (log files now: {:?})",
            fs.files()
        );
    }
}

/// "Truncation never splits a transaction": the log is truncated in whole segments, so the
/// oldest segment kept may begin inside a large transaction (streamed in several records) that
/// the checkpoints hold. A feed from the oldest LSN a feed can start at (the first transaction
/// boundary the log holds) reads every transaction after it whole, up to the end.
#[test]
fn a_feed_from_the_oldest_retained_lsn_reads_every_transaction_whole() {
    let fs = FaultStorage::new();
    let db = open(&fs).unwrap();
    let large = |ns: &str, fill: u8| {
        db.run(1, |t| {
            for key in 0..3 {
                t.kv_put(ns, &big_key(key), KvValue::Bytes(vec![fill; BIG_VALUE_BYTES]))?;
            }
            Ok(())
        })
        .unwrap()
        .1
        .lsn
    };
    let before = db.visible_lsn();
    let first = large("agent", 1);
    assert!(first > before + 1, "three big values take several log records");
    large("team", 2);
    db.checkpoint().unwrap();
    for i in 0..6 {
        db.run(1, |t| t.kv_put("agent", format!("small/{i}").as_bytes(), KvValue::Json(json!(i))))
            .unwrap();
    }
    let report = db.checkpoint().unwrap();
    assert!(report.log_segments_removed > 0, "{report:?}");
    let oldest = db.oldest_feed_lsn().unwrap();
    assert!(oldest >= db.wal_stats().first_lsn);
    let mut feed = db.changes(oldest).unwrap();
    let mut lsns = BTreeSet::new();
    loop {
        match feed.next_event() {
            Ok(Some(event)) => lsns.insert(event.lsn),
            Ok(None) => break,
            Err(e) => panic!(
                "a feed from the oldest retained LSN {oldest} (log truncated below {}): {e}",
                report.log_kept_from
            ),
        };
    }
    assert_eq!(lsns.last(), Some(&db.visible_lsn()));
}
