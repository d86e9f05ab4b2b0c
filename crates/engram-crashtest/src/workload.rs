//! Seeded random transactions over memories (with embeddings and metadata), the knowledge graph,
//! key/value and outbox events, with occasional checkpoints. Each transaction's net effect is
//! computed from the transaction's own view before it commits (its state minus the snapshot it
//! began on), so whoever checks a crash knows exactly what the commit must change.

use crate::rng::Rng;
use crate::state::{read_state, Effects, Flat, NAMESPACES};
use engram_core::{
    CheckpointOptions, CommitInfo, Database, DatabaseOptions, Entity, GraphReads, KvValue, MemoryPatch, MemoryReads, NewMemory, ReadView,
    Relation, RetentionPolicy, Transaction, WalOptions,
};
use serde_json::{json, Value as Json};

const NAMES: [&str; 6] = ["Ada", "Bob", "Cy", "Di", "Eve", "Fay"];
const ENTITY_TYPES: [&str; 2] = ["person", "robot"];
const OBSERVATIONS: [&str; 5] = ["likes tea", "lives in Paris", "owns a cat", "is tall", "speaks Welsh"];
const RELATION_TYPES: [&str; 2] = ["knows", "likes"];
/// Two keys are not UTF-8 (the feed names them in hex).
const KEYS: [&[u8]; 8] = [b"s/a", b"s/b", b"s/c", b"t", b"u/1", b"u/2", b"\xff\x00k", b"s/\xfe"];
const TOPICS: [&str; 2] = ["memory.added", "state.changed"];
const DIMENSION: usize = 4;
/// Memories beyond this are deleted more often than inserted, so the state stays small.
const MEMORY_SOFT_CAP: usize = 24;
/// A replaced value this big logs ~24 KB (before and after images): a transaction with two
/// of them spans several 32 KiB log records.
const BIG_VALUE_BYTES: usize = 12_000;

/// Relative weights of the kinds of work; a transaction draws 1-4 steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    pub memory: u64,
    pub graph: u64,
    pub kv: u64,
    pub event: u64,
    /// Weight of a checkpoint between transactions (drawn once per transaction).
    pub checkpoint: u64,
    /// Weight of a large value (a transaction streamed in several log records).
    pub big: u64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            memory: 4,
            graph: 4,
            kv: 4,
            event: 2,
            checkpoint: 1,
            big: 1,
        }
    }
}

impl std::str::FromStr for Mix {
    type Err = String;

    /// `memory=4,graph=4,kv=4,event=2,checkpoint=1,big=1` (absent kinds keep their default).
    fn from_str(text: &str) -> Result<Mix, String> {
        let mut mix = Mix::default();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(|| format!("{part:?} is not kind=weight"))?;
            let weight: u64 = weight.parse().map_err(|_| format!("weight {weight:?} is not a number"))?;
            let slot = match name {
                "memory" => &mut mix.memory,
                "graph" => &mut mix.graph,
                "kv" => &mut mix.kv,
                "event" => &mut mix.event,
                "checkpoint" => &mut mix.checkpoint,
                "big" => &mut mix.big,
                other => return Err(format!("unknown kind {other:?} (memory, graph, kv, event, checkpoint, big)")),
            };
            *slot = weight;
        }
        if mix.memory + mix.graph + mix.kv + mix.event + mix.big == 0 {
            return Err("the mix has no transactional work".into());
        }
        Ok(mix)
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory={},graph={},kv={},event={},checkpoint={},big={}",
            self.memory, self.graph, self.kv, self.event, self.checkpoint, self.big
        )
    }
}

/// Options of every campaign database: small segments (so checkpoints truncate whole ones and
/// recovery crosses several), records small enough that big values stream over several.
pub fn database_options(background_checkpoints: bool) -> DatabaseOptions {
    DatabaseOptions {
        wal: WalOptions {
            segment_bytes: 128 * 1024,
            max_record_bytes: 32 * 1024,
            ..Default::default()
        },
        checkpoint: CheckpointOptions {
            every_log_bytes: background_checkpoints.then_some(192 * 1024),
            // A fixed threshold: the campaigns want checkpoints throughout, however large.
            grow_with_database: false,
            every: None,
            retain_log_records: 8,
            reuse_retired_file: true,
        },
        // Bounded history keeps checkpoints (and so every open) small over thousands of runs.
        retention: RetentionPolicy::KeepVersions { per_key: 3 },
        ..Default::default()
    }
}

/// Options for the simulated file system: no background thread (so that the sequence of I/O
/// calls, and with it every crash point, is the same on every replay of a seed), and segments
/// small enough that a short workload fills several and checkpoints truncate them.
pub fn simulated_options() -> DatabaseOptions {
    DatabaseOptions {
        wal: WalOptions {
            segment_bytes: 32 * 1024,
            max_record_bytes: 28 * 1024,
            background_preallocation: false,
            ..Default::default()
        },
        checkpoint: CheckpointOptions {
            retain_log_records: 2,
            ..CheckpointOptions::on_demand()
        },
        ..Default::default()
    }
}

/// A transaction ready to commit, its expected net effect, and the state it began on.
pub struct Prepared {
    pub txn: Transaction,
    pub effects: Effects,
    pub before: Flat,
}

pub struct Workload {
    rng: Rng,
    mix: Mix,
    /// The state at an LSN, known from the last commit (saves reading it again: reading the
    /// whole state is most of the cost of a transaction here).
    known_state: Option<(engram_core::Lsn, Flat)>,
}

fn metadata(rng: &mut Rng) -> Json {
    match rng.below(3) {
        0 => Json::Null,
        1 => json!({ "source": "crashtest", "n": rng.below(1000) }),
        _ => json!({ "tags": ["a", "b"], "score": rng.below(100), "nested": { "ok": true } }),
    }
}

/// Values exactly representable in f32 and in JSON text, so that every path agrees on them.
fn embedding(rng: &mut Rng) -> Vec<f32> {
    (0..DIMENSION).map(|_| rng.below(64) as f32 / 4.0 - 8.0).collect()
}

fn names(rng: &mut Rng, at_most: u64) -> Vec<String> {
    let mut out: Vec<String> = (0..1 + rng.below(at_most)).map(|_| rng.pick(&NAMES).to_string()).collect();
    out.sort();
    out.dedup();
    out
}

impl Workload {
    pub fn new(seed: u64, mix: Mix) -> Workload {
        Workload {
            rng: Rng::new(seed),
            mix,
            known_state: None,
        }
    }

    /// Records that `effects` committed at `lsn` on top of the state the transaction read.
    pub fn committed(&mut self, lsn: engram_core::Lsn, mut state: Flat, effects: &Effects) {
        effects.apply_to(&mut state);
        self.known_state = Some((lsn, state));
    }

    /// Whether to run a checkpoint before the next transaction.
    pub fn wants_checkpoint(&mut self) -> bool {
        let total = self.mix.memory + self.mix.graph + self.mix.kv + self.mix.event + self.mix.big + self.mix.checkpoint;
        self.rng.below(total) < self.mix.checkpoint
    }

    /// Builds the next transaction on `db` (not committed). Steps that fail (a missing entity,
    /// deliberately bad input) must change nothing; the effect is measured, not assumed.
    pub fn prepare(&mut self, db: &Database) -> engram_core::Result<Prepared> {
        let mut txn = db.begin();
        let before = match self.known_state.take() {
            Some((lsn, state)) if lsn == txn.read_lsn() => state,
            _ => read_state(&txn)?,
        };
        let mut events = Vec::new();
        for _ in 0..1 + self.rng.below(4) {
            self.step(&mut txn, &mut events)?;
        }
        let after = read_state(&txn)?;
        Ok(Prepared {
            txn,
            effects: Effects::between(&before, &after, events),
            before,
        })
    }

    fn step(&mut self, txn: &mut Transaction, events: &mut Vec<Json>) -> engram_core::Result<()> {
        let ns = *self.rng.pick(&NAMESPACES);
        let m = &self.mix;
        let total = m.memory + m.graph + m.kv + m.event + m.big;
        let mut draw = self.rng.below(total);
        let mut kind = 0;
        for weight in [m.memory, m.graph, m.kv, m.event, m.big] {
            if draw < weight {
                break;
            }
            draw -= weight;
            kind += 1;
        }
        match kind {
            0 => self.memory_step(txn, ns),
            1 => self.graph_step(txn, ns),
            2 => self.kv_step(txn, ns),
            3 => {
                let topic = *self.rng.pick(&TOPICS);
                let payload = json!({ "n": self.rng.below(1_000_000), "note": "outbox" });
                txn.emit_event(ns, topic, payload.clone())?;
                events.push(json!({ "ns": ns, "topic": topic, "payload": payload }));
                Ok(())
            }
            _ => {
                let fill = self.rng.below(256) as u8;
                let key = format!("big/{}", self.rng.below(3));
                txn.kv_put(ns, key.as_bytes(), KvValue::Bytes(vec![fill; BIG_VALUE_BYTES]))
            }
        }
    }

    fn memory_step(&mut self, txn: &mut Transaction, ns: &str) -> engram_core::Result<()> {
        let existing = txn.list_memories(ns)?;
        let roll = self.rng.below(100);
        let insert_share = if existing.len() > MEMORY_SOFT_CAP { 20 } else { 60 };
        if existing.is_empty() || roll < insert_share {
            let memory = NewMemory {
                text: format!("note {} about {}", self.rng.below(10_000), self.rng.pick(&NAMES)),
                embedding: self.rng.chance(70).then(|| embedding(&mut self.rng)),
                metadata: metadata(&mut self.rng),
            };
            txn.insert_memory(ns, memory)?;
        } else if roll < insert_share + 5 {
            // Bad input: a typed error, and nothing changes (the measured effect shows it).
            let bad = NewMemory {
                text: "bad".into(),
                embedding: None,
                metadata: json!([1, 2, 3]),
            };
            if txn.insert_memory(ns, bad).is_ok() {
                return Err(engram_core::CoreError::MetadataNotObject { got: "accepted an array" });
            }
        } else if roll < insert_share + 25 {
            let id = existing[self.rng.index(existing.len())].id.clone();
            let patch = MemoryPatch {
                text: self.rng.chance(50).then(|| format!("revised {}", self.rng.below(1000))),
                embedding: self.rng.chance(30).then(|| embedding(&mut self.rng)),
                metadata: self.rng.chance(50).then(|| metadata(&mut self.rng)),
            };
            txn.update_memory(ns, &id, patch)?;
        } else {
            let id = existing[self.rng.index(existing.len())].id.clone();
            txn.delete_memory(ns, &id)?;
        }
        Ok(())
    }

    fn graph_step(&mut self, txn: &mut Transaction, ns: &str) -> engram_core::Result<()> {
        // Failures here are the documented refusals (a missing entity): ignored, since the
        // measured effect must then show no change from the step.
        let _ = match self.rng.below(6) {
            0 | 1 => {
                let entities: Vec<Entity> = names(&mut self.rng, 3)
                    .into_iter()
                    .map(|name| Entity {
                        name,
                        entity_type: self.rng.pick(&ENTITY_TYPES).to_string(),
                        observations: vec![self.rng.pick(&OBSERVATIONS).to_string()],
                    })
                    .collect();
                txn.create_entities(ns, &entities).map(drop)
            }
            2 => {
                let relations: Vec<Relation> = (0..1 + self.rng.below(2))
                    .map(|_| Relation {
                        from: self.rng.pick(&NAMES).to_string(),
                        to: self.rng.pick(&NAMES).to_string(),
                        relation_type: self.rng.pick(&RELATION_TYPES).to_string(),
                    })
                    .collect();
                txn.create_relations(ns, &relations).map(drop)
            }
            3 => {
                let additions: Vec<(String, Vec<String>)> = names(&mut self.rng, 2)
                    .into_iter()
                    .map(|n| (n, vec![self.rng.pick(&OBSERVATIONS).to_string()]))
                    .collect();
                txn.add_observations(ns, &additions).map(drop)
            }
            4 => {
                let deletions: Vec<(String, Vec<String>)> = names(&mut self.rng, 2)
                    .into_iter()
                    .map(|n| (n, vec![self.rng.pick(&OBSERVATIONS).to_string()]))
                    .collect();
                txn.delete_observations(ns, &deletions)
            }
            _ => {
                if self.rng.chance(50) {
                    txn.delete_entities(ns, &names(&mut self.rng, 2))
                } else {
                    let graph = txn.read_graph(ns)?;
                    let doomed: Vec<Relation> = graph.relations.into_iter().filter(|_| self.rng.chance(50)).collect();
                    txn.delete_relations(ns, &doomed)
                }
            }
        };
        Ok(())
    }

    fn kv_step(&mut self, txn: &mut Transaction, ns: &str) -> engram_core::Result<()> {
        let key = *self.rng.pick(&KEYS);
        match self.rng.below(5) {
            0 => {
                txn.kv_delete(ns, key)?;
            }
            1 | 2 => txn.kv_put(ns, key, KvValue::Json(json!({ "v": self.rng.below(1_000_000), "list": [1, 2, 3] })))?,
            _ => {
                let len = self.rng.below(300) as usize;
                let bytes = (0..len).map(|_| self.rng.below(256) as u8).collect();
                txn.kv_put(ns, key, KvValue::Bytes(bytes))?
            }
        }
        Ok(())
    }
}

impl Workload {
    /// Commits a prepared transaction (a commit with no logged work has txn id 0).
    pub fn commit(&mut self, prepared: Prepared) -> engram_core::Result<(CommitInfo, Effects)> {
        let info = prepared.txn.commit()?;
        // With only this writer, the state at the commit's LSN is the one read plus the effect.
        if info.txn_id != 0 {
            self.committed(info.lsn, prepared.before, &prepared.effects);
        }
        Ok((info, prepared.effects))
    }
}
