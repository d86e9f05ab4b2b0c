//! Values as older builds encoded them, still read: log records of versions 1 and 2 and
//! checkpoints of format versions 1 and 2 hold a memory's embedding as a postcard sequence of
//! f32s (a varint count, then 4 bytes per element) where newer ones hold one byte string
//! (`Embedding`'s own encoding). Everything else encodes alike, so these types differ from the
//! current ones only on the way to a memory.

use crate::model::{self, Entity, Key, KvValue, NamespaceMeta, Relation};
use crate::record;
use serde::{Deserialize, Serialize};

/// How versions 1 and 2 encode a [`model::Memory`]: the same fields, the embedding as a
/// sequence of f32s (serde's remote derive: no separate type to convert from).
#[derive(Serialize, Deserialize)]
#[serde(remote = "model::Memory")]
struct MemoryV2 {
    id: String,
    text: String,
    #[serde(with = "float_sequence")]
    embedding: Option<model::Embedding>,
    #[serde(with = "model::json_text")]
    metadata: crate::Metadata,
    created_ms: u64,
    updated_ms: u64,
}

/// An embedding as a postcard sequence of f32s.
mod float_sequence {
    use crate::model::Embedding;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Embedding>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Embedding>, D::Error> {
        Ok(Option::<Vec<f32>>::deserialize(d)?.map(Embedding::from))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Value {
    Meta(NamespaceMeta),
    Memory(#[serde(with = "MemoryV2")] model::Memory),
    Entity(Entity),
    Relation(Relation),
    Kv(KvValue),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Op {
    Put {
        key: Key,
        before: Option<Value>,
        after: Value,
    },
    Delete {
        key: Key,
        before: Value,
    },
    Event {
        namespace: String,
        topic: String,
        #[serde(with = "record::json_payload")]
        payload: serde_json::Value,
    },
}

impl From<Value> for model::Value {
    fn from(v: Value) -> model::Value {
        match v {
            Value::Meta(m) => model::Value::Meta(m),
            Value::Memory(m) => model::Value::Memory(m),
            Value::Entity(e) => model::Value::Entity(e),
            Value::Relation(r) => model::Value::Relation(r),
            Value::Kv(kv) => model::Value::Kv(kv),
        }
    }
}

impl From<Op> for record::Op {
    fn from(op: Op) -> record::Op {
        match op {
            Op::Put { key, before, after } => record::Op::Put {
                key,
                before: before.map(Into::into),
                after: after.into(),
            },
            Op::Delete { key, before } => record::Op::Delete {
                key,
                before: before.into(),
            },
            Op::Event { namespace, topic, payload } => record::Op::Event { namespace, topic, payload },
        }
    }
}

/// The other way, for tests that write what older builds wrote.
#[cfg(test)]
impl From<model::Value> for Value {
    fn from(v: model::Value) -> Value {
        match v {
            model::Value::Meta(m) => Value::Meta(m),
            model::Value::Memory(m) => Value::Memory(m),
            model::Value::Entity(e) => Value::Entity(e),
            model::Value::Relation(r) => Value::Relation(r),
            model::Value::Kv(kv) => Value::Kv(kv),
        }
    }
}

#[cfg(test)]
impl From<record::Op> for Op {
    fn from(op: record::Op) -> Op {
        match op {
            record::Op::Put { key, before, after } => Op::Put {
                key,
                before: before.map(Into::into),
                after: after.into(),
            },
            record::Op::Delete { key, before } => Op::Delete {
                key,
                before: before.into(),
            },
            record::Op::Event { namespace, topic, payload } => Op::Event { namespace, topic, payload },
        }
    }
}
