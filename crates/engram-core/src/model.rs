//! What the database stores: keys in namespaces and spaces, and the values behind them.

pub use crate::embedding::Embedding;
use crate::metadata::Metadata;
use serde::{Deserialize, Serialize};

/// Which kind of item a key names. The order is part of the key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Space {
    /// Per-namespace settings (the embedding dimension).
    Meta,
    Memory,
    Entity,
    /// Relations keyed by (from, relationType, to).
    Relation,
    Kv,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub namespace: String,
    pub space: Space,
    pub id: Vec<u8>,
}

impl Key {
    pub fn new(namespace: &str, space: Space, id: impl Into<Vec<u8>>) -> Key {
        Key {
            namespace: namespace.to_string(),
            space,
            id: id.into(),
        }
    }

    pub fn relation(namespace: &str, relation: &Relation) -> Key {
        // NUL cannot occur in validated labels, so it separates the three parts unambiguously.
        let id = [relation.from.as_bytes(), relation.relation_type.as_bytes(), relation.to.as_bytes()].join(&0u8);
        Key::new(namespace, Space::Relation, id)
    }

    /// The id as text (ids of memories, entities and relations are UTF-8).
    pub fn id_text(&self) -> String {
        String::from_utf8_lossy(&self.id).replace('\0', " / ")
    }
}

/// JSON stored as text inside binary log records (postcard cannot carry self-describing JSON).
pub(crate) mod json_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        serde_json::to_string(v).map_err(serde::ser::Error::custom)?.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(d: D) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub id: String,
    pub text: String,
    /// On the heap, or read in place from the checkpoint file the database was opened from
    /// (crate::embedding); either way it serializes as its floats.
    pub embedding: Option<Embedding>,
    #[serde(with = "json_text")]
    pub metadata: Metadata,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entity {
    pub name: String,
    pub entity_type: String,
    pub observations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relation {
    pub from: String,
    pub to: String,
    pub relation_type: String,
}

/// A key/value value: raw bytes or a JSON document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KvValue {
    Bytes(Vec<u8>),
    Json(#[serde(with = "json_text")] serde_json::Value),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceMeta {
    pub dimension: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Meta(NamespaceMeta),
    Memory(Memory),
    Entity(Entity),
    Relation(Relation),
    Kv(KvValue),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(embedding: Option<Vec<f32>>) -> Memory {
        Memory {
            id: "m".into(),
            text: "t".into(),
            embedding: embedding.map(Embedding::from),
            metadata: Metadata::new(),
            created_ms: 1,
            updated_ms: 2,
        }
    }

    #[test]
    fn an_embedding_is_one_byte_string_in_binary_encodings_and_numbers_in_json() {
        let m = memory(Some(vec![1.0, -2.0]));
        let bytes = postcard::to_stdvec(&m).unwrap();
        // After id "m" and text "t": Some, 8 bytes, the two floats little-endian.
        assert_eq!(bytes[4..14], [0x01, 0x08, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0]);
        assert_eq!(postcard::from_bytes::<Memory>(&bytes).unwrap(), m);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["embedding"], serde_json::json!([1.0, -2.0]));
        assert_eq!(serde_json::from_value::<Memory>(json).unwrap(), m);
        let none = memory(None);
        assert_eq!(postcard::from_bytes::<Memory>(&postcard::to_stdvec(&none).unwrap()).unwrap(), none);
    }
}
