//! What the database stores: keys in namespaces and spaces, and the values behind them.

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

/// An embedding in binary encodings (log records, checkpoints) as one byte string: its f32s'
/// little-endian bytes after the byte count, so that encoding and decoding it is one copy
/// rather than a call per element; in human-readable encodings (JSON), an array of numbers.
/// Records before version 3 and checkpoints before version 3 held a sequence of f32s
/// (`crate::legacy`).
pub(crate) mod embedding_bytes {
    use serde::de::{Error, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    struct Floats<'a>(&'a [f32]);

    impl Serialize for Floats<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                return self.0.serialize(s);
            }
            #[cfg(target_endian = "little")]
            {
                // SAFETY: f32 has no padding and every bit pattern of its 4 bytes is a valid u8;
                // the slice covers exactly the floats' memory, which outlives the borrow.
                let bytes = unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), std::mem::size_of_val(self.0)) };
                s.serialize_bytes(bytes)
            }
            #[cfg(not(target_endian = "little"))]
            {
                let bytes: Vec<u8> = self.0.iter().flat_map(|f| f.to_le_bytes()).collect();
                s.serialize_bytes(&bytes)
            }
        }
    }

    struct FloatBuf(Vec<f32>);

    struct BytesVisitor;

    impl Visitor<'_> for BytesVisitor {
        type Value = FloatBuf;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an embedding's bytes (4 per dimension)")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<FloatBuf, E> {
            if !bytes.len().is_multiple_of(4) {
                return Err(E::custom(format!(
                    "an embedding of {} bytes is not a whole number of f32s",
                    bytes.len()
                )));
            }
            Ok(FloatBuf(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ))
        }
    }

    impl<'de> Deserialize<'de> for FloatBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FloatBuf, D::Error> {
            if d.is_human_readable() {
                Vec::<f32>::deserialize(d).map(FloatBuf)
            } else {
                d.deserialize_bytes(BytesVisitor)
            }
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<Vec<f32>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().map(Floats).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f32>>, D::Error> {
        Ok(Option::<FloatBuf>::deserialize(d)?.map(|f| f.0))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub id: String,
    pub text: String,
    #[serde(with = "embedding_bytes")]
    pub embedding: Option<Vec<f32>>,
    #[serde(with = "json_text")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
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
            embedding,
            metadata: serde_json::Map::new(),
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
