//! The whole user-visible state of a database as one map, keyed and shaped as the change feed
//! shows items, so that a state read through the public API, the net effect of a transaction and
//! what the change feed says about it can be compared exactly.

use engram_core::{ChangeEvent, ChangeKind, ChangeOp, Database, GraphReads, KeyEncoding, KvReads, KvValue, Lsn, MemoryReads};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

/// The namespaces every campaign writes.
pub const NAMESPACES: [&str; 2] = ["agent", "team"];

/// Item key (`kind|namespace|id`, hex ids as `hex:<digits>`) to the item as the feed shows it.
pub type Flat = BTreeMap<String, Json>;

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn flat_key(kind: &str, namespace: &str, id: &str, is_hex: bool) -> String {
    if is_hex {
        format!("{kind}|{namespace}|hex:{id}")
    } else {
        format!("{kind}|{namespace}|{id}")
    }
}

fn kv_flat_key(namespace: &str, key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => flat_key("kv", namespace, text, false),
        Err(_) => flat_key("kv", namespace, &hex(key), true),
    }
}

pub fn kv_json(value: &KvValue) -> Json {
    match value {
        KvValue::Json(j) => json!({ "json": j }),
        KvValue::Bytes(b) => json!({ "hex": hex(b) }),
    }
}

/// Reads every item of the test namespaces from a view (a snapshot or a transaction).
pub fn read_state<V: MemoryReads + GraphReads + KvReads + ?Sized>(view: &V) -> engram_core::Result<Flat> {
    let mut out = Flat::new();
    for ns in NAMESPACES {
        if let Some(d) = view.dimension(ns) {
            out.insert(flat_key("meta", ns, "dimension", false), json!({ "dimension": d }));
        }
        for m in view.list_memories(ns)? {
            let value = json!({
                "id": m.id, "text": m.text, "embedding": m.embedding, "metadata": m.metadata,
                "created_ms": m.created_ms, "updated_ms": m.updated_ms,
            });
            out.insert(flat_key("memory", ns, &m.id, false), value);
        }
        let graph = view.read_graph(ns)?;
        for e in graph.entities {
            let value = json!({ "name": e.name, "entityType": e.entity_type, "observations": e.observations });
            out.insert(flat_key("entity", ns, &e.name, false), value);
        }
        for r in graph.relations {
            let id = format!("{} / {} / {}", r.from, r.relation_type, r.to);
            let value = json!({ "from": r.from, "to": r.to, "relationType": r.relation_type });
            out.insert(flat_key("relation", ns, &id, false), value);
        }
        for (key, value) in view.kv_scan_prefix(ns, b"")? {
            out.insert(kv_flat_key(ns, &key), kv_json(&value));
        }
    }
    Ok(out)
}

/// The net effect of one transaction: the final value of every item it changed (`None`:
/// removed) and the events it emitted, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    pub changes: BTreeMap<String, Option<Json>>,
    /// `{"ns", "topic", "payload"}` in emission order.
    pub events: Vec<Json>,
}

impl Effects {
    /// What changed from `before` to `after`.
    pub fn between(before: &Flat, after: &Flat, events: Vec<Json>) -> Effects {
        let mut changes = BTreeMap::new();
        for (key, value) in after {
            if before.get(key) != Some(value) {
                changes.insert(key.clone(), Some(value.clone()));
            }
        }
        for key in before.keys() {
            if !after.contains_key(key) {
                changes.insert(key.clone(), None);
            }
        }
        Effects { changes, events }
    }

    pub fn apply_to(&self, state: &mut Flat) {
        for (key, value) in &self.changes {
            match value {
                Some(v) => state.insert(key.clone(), v.clone()),
                None => state.remove(key),
            };
        }
    }

    pub fn to_json(&self) -> Json {
        json!({ "changes": self.changes, "events": self.events })
    }

    pub fn from_json(value: &Json) -> Option<Effects> {
        let changes = value.get("changes")?.as_object()?;
        let changes = changes
            .iter()
            .map(|(k, v)| (k.clone(), if v.is_null() { None } else { Some(v.clone()) }))
            .collect();
        let events = value.get("events")?.as_array()?.clone();
        Some(Effects { changes, events })
    }

    /// FNV-1a (64 bits) of the canonical JSON text (object keys sorted): equal effects have
    /// equal digests in every process.
    pub fn digest(&self) -> u64 {
        let text = self.to_json().to_string();
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

/// One transaction as the change feed reports it.
#[derive(Debug, Clone)]
pub struct FedTransaction {
    pub lsn: Lsn,
    pub txn_id: u64,
    pub effects: Effects,
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

/// Folds a feed's events into transactions (net effect per item: a key written twice in one
/// transaction, say deleted and re-created, counts once; a write that leaves an item as it was
/// is no change). Fails if the feed breaks a transaction apart or disagrees with itself.
pub fn fold_feed(events: impl IntoIterator<Item = ChangeEvent>) -> Result<Vec<FedTransaction>, String> {
    let mut out: Vec<FedTransaction> = Vec::new();
    // Per transaction: item -> (value before the transaction, value after).
    let mut open: BTreeMap<String, (Option<Json>, Option<Json>)> = BTreeMap::new();
    let finish = |out: &mut Vec<FedTransaction>, open: &mut BTreeMap<String, (Option<Json>, Option<Json>)>| {
        if let Some(last) = out.last_mut() {
            for (key, (before, after)) in std::mem::take(open) {
                if before != after {
                    last.effects.changes.insert(key, after);
                }
            }
        }
    };
    for event in events {
        if out.last().is_none_or(|t| t.lsn != event.lsn) {
            if out.last().is_some_and(|t| t.lsn > event.lsn) {
                return Err(format!(
                    "feed goes back from LSN {} to {}",
                    out.last().map_or(0, |t| t.lsn),
                    event.lsn
                ));
            }
            finish(&mut out, &mut open);
            out.push(FedTransaction {
                lsn: event.lsn,
                txn_id: event.txn_id,
                effects: Effects::default(),
            });
        }
        let current = out.last_mut().expect("pushed above");
        if current.txn_id != event.txn_id {
            return Err(format!(
                "LSN {} carries transactions {} and {}",
                event.lsn, current.txn_id, event.txn_id
            ));
        }
        match event.op {
            ChangeOp::Event => {
                let after = event.after.unwrap_or(Json::Null);
                current.effects.events.push(json!({
                    "ns": event.namespace,
                    "topic": after.get("topic").cloned().unwrap_or(Json::Null),
                    "payload": after.get("payload").cloned().unwrap_or(Json::Null),
                }));
            }
            ChangeOp::Put | ChangeOp::Delete => {
                let id = event.key.clone().unwrap_or_default();
                let key = flat_key(
                    kind_label(event.kind),
                    &event.namespace,
                    &id,
                    event.key_encoding == KeyEncoding::Hex,
                );
                let entry = open.entry(key).or_insert_with(|| (event.before.clone(), None));
                entry.1 = event.after.clone();
            }
        }
    }
    finish(&mut out, &mut open);
    Ok(out)
}

/// Every transaction the change feed holds, from the oldest LSN it can start at.
pub fn read_feed(db: &Database) -> Result<(Lsn, Vec<FedTransaction>), String> {
    let from = db.oldest_feed_lsn().map_err(|e| format!("oldest_feed_lsn: {e}"))?;
    let mut feed = db.changes(from).map_err(|e| format!("changes({from}): {e}"))?;
    let mut events = Vec::new();
    while let Some(event) = feed.next_event().map_err(|e| format!("feed: {e}"))? {
        events.push(event);
    }
    Ok((from, fold_feed(events)?))
}
