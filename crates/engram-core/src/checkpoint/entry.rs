//! How format 4 encodes an entry: the postcard encoding of the key and its versions, in which a
//! memory's embedding is only its number of floats, then zero bytes up to the next file offset
//! divisible by 4, then the floats of every embedding in the entry, in version order, as
//! little-endian f32s. Aligned in the file, the floats can be read in place from a mapping of it
//! (crate::embedding) instead of being copied to the heap. docs/checkpoint-format.md.

use super::EntryIn;
use super::VersionIn;
use crate::embedding::{self, Embedding, MappedFile};
use crate::model::{json_text, Entity, Key, KvValue, Memory, NamespaceMeta, Relation, Value};
use crate::store::Version;
use engram_wal::Lsn;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One entry as written: a key and a run of its versions, oldest first, each value as `V`
/// encodes it (format 4: [`ValueOut`]; the tests write older formats with other `V`s).
/// `created` is `Chain::created`, on the first entry of a key only.
#[derive(Serialize)]
pub(super) struct EntryOut<'a, V> {
    pub key: &'a Key,
    pub created: Option<(Lsn, u32)>,
    pub versions: Vec<VersionOut<V>>,
}

#[derive(Serialize)]
pub(super) struct VersionOut<V> {
    pub lsn: Lsn,
    pub op_index: u32,
    pub value: Option<V>,
}

impl<'a, V> EntryOut<'a, V> {
    pub fn of(key: &'a Key, created: Option<(Lsn, u32)>, versions: &'a [Version], value_of: impl Fn(&'a Value) -> V) -> Self {
        EntryOut {
            key,
            created,
            versions: versions
                .iter()
                .map(|v| VersionOut {
                    lsn: v.lsn,
                    op_index: v.op_index,
                    value: v.value.as_deref().map(&value_of),
                })
                .collect(),
        }
    }
}

/// [`Value`] with the memory's embedding reduced to its length; the variants in `Value`'s order,
/// so that postcard numbers them alike.
#[derive(Serialize)]
enum ValueOut<'a> {
    Meta(&'a NamespaceMeta),
    Memory(MemoryOut<'a>),
    Entity(&'a Entity),
    Relation(&'a Relation),
    Kv(&'a KvValue),
}

#[derive(Serialize)]
struct MemoryOut<'a> {
    id: &'a str,
    text: &'a str,
    embedding_floats: Option<u32>,
    #[serde(serialize_with = "json_text::serialize")]
    metadata: &'a crate::Metadata,
    created_ms: u64,
    updated_ms: u64,
}

impl<'a> ValueOut<'a> {
    fn of(value: &'a Value) -> ValueOut<'a> {
        match value {
            Value::Meta(m) => ValueOut::Meta(m),
            Value::Memory(m) => ValueOut::Memory(MemoryOut {
                id: &m.id,
                text: &m.text,
                embedding_floats: m.embedding.as_ref().map(|e| e.len() as u32),
                metadata: &m.metadata,
                created_ms: m.created_ms,
                updated_ms: m.updated_ms,
            }),
            Value::Entity(e) => ValueOut::Entity(e),
            Value::Relation(r) => ValueOut::Relation(r),
            Value::Kv(kv) => ValueOut::Kv(kv),
        }
    }
}

/// Appends the entry of `key`'s `versions` to `out`, whose first byte will be at file offset
/// `out_file_offset` (the floats' alignment is the file's, not the buffer's).
pub(super) fn encode(out: &mut Vec<u8>, out_file_offset: u64, key: &Key, created: Option<(Lsn, u32)>, versions: &[Version]) {
    let entry = EntryOut::of(key, created, versions, ValueOut::of);
    let mut buf = postcard::to_extend(&entry, std::mem::take(out)).expect("encoding to memory cannot fail");
    let misalignment = (out_file_offset + buf.len() as u64) % 4;
    if misalignment != 0 {
        buf.resize(buf.len() + (4 - misalignment) as usize, 0);
    }
    for v in versions {
        if let Some(Value::Memory(Memory {
            embedding: Some(embedding),
            ..
        })) = v.value.as_deref()
        {
            buf.extend_from_slice(&embedding::le_bytes(embedding));
        }
    }
    *out = buf;
}

#[derive(Deserialize)]
struct EntryIn4 {
    key: Key,
    created: Option<(Lsn, u32)>,
    versions: Vec<VersionIn<ValueIn>>,
}

#[derive(Deserialize)]
enum ValueIn {
    Meta(NamespaceMeta),
    Memory(MemoryIn),
    Entity(Entity),
    Relation(Relation),
    Kv(KvValue),
}

#[derive(Deserialize)]
struct MemoryIn {
    id: String,
    text: String,
    embedding_floats: Option<u32>,
    #[serde(with = "json_text")]
    metadata: crate::Metadata,
    created_ms: u64,
    updated_ms: u64,
}

/// Decodes the entry `bytes` found at file offset `file_offset`. With `mapped` (the same file,
/// mapped), embeddings read their floats in place; without, they are copied to the heap.
pub(super) fn decode(bytes: &[u8], file_offset: u64, mapped: Option<&Arc<MappedFile>>) -> Result<EntryIn, String> {
    let (entry, rest) = postcard::take_from_bytes::<EntryIn4>(bytes).map_err(|e| e.to_string())?;
    let mut position = bytes.len() - rest.len();
    let padding = ((4 - (file_offset + position as u64) % 4) % 4) as usize;
    match bytes.get(position..position + padding) {
        Some(pad) if pad.iter().all(|&b| b == 0) => position += padding,
        Some(_) => return Err("the padding before the embeddings is not zero".into()),
        None => return Err("the entry ends inside the padding before its embeddings".into()),
    }
    let mut take_embedding = |floats: u32| -> Result<Embedding, String> {
        let byte_len = (floats as usize).saturating_mul(4);
        let Some(floats_bytes) = bytes.get(position..position.saturating_add(byte_len)) else {
            return Err(format!(
                "an embedding of {floats} floats runs past the entry's {} bytes",
                bytes.len()
            ));
        };
        let embedding = mapped
            .and_then(|file| Embedding::mapped(file, (file_offset + position as u64) as usize, floats as usize))
            .unwrap_or_else(|| Embedding::from_le_bytes(floats_bytes));
        position += byte_len;
        Ok(embedding)
    };
    let mut versions = Vec::with_capacity(entry.versions.len());
    for v in entry.versions {
        let value = match v.value {
            None => None,
            Some(ValueIn::Meta(m)) => Some(Value::Meta(m)),
            Some(ValueIn::Memory(m)) => Some(Value::Memory(Memory {
                id: m.id,
                text: m.text,
                embedding: m.embedding_floats.map(&mut take_embedding).transpose()?,
                metadata: m.metadata,
                created_ms: m.created_ms,
                updated_ms: m.updated_ms,
            })),
            Some(ValueIn::Entity(e)) => Some(Value::Entity(e)),
            Some(ValueIn::Relation(r)) => Some(Value::Relation(r)),
            Some(ValueIn::Kv(kv)) => Some(Value::Kv(kv)),
        };
        versions.push(VersionIn {
            lsn: v.lsn,
            op_index: v.op_index,
            value,
        });
    }
    if position != bytes.len() {
        return Err(format!("{} bytes follow the entry's embeddings", bytes.len() - position));
    }
    Ok(EntryIn {
        key: entry.key,
        created: entry.created,
        versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Space;

    fn memory_version(embedding: Option<Vec<f32>>) -> Version {
        Version {
            lsn: 300,
            op_index: 0,
            value: Some(Arc::new(Value::Memory(Memory {
                id: "m".into(),
                text: "t".into(),
                embedding: embedding.map(Embedding::from),
                metadata: crate::Metadata::new(),
                created_ms: 5,
                updated_ms: 6,
            }))),
        }
    }

    /// The postcard part of the example in docs/checkpoint-format.md: key ("ns", Memory, "m"),
    /// no `created`, one version at LSN 300 whose memory has 2 floats.
    const EXAMPLE_POSTCARD: [u8; 24] = [
        0x02, 0x6e, 0x73, 0x01, 0x01, 0x6d, 0x00, 0x01, 0xac, 0x02, 0x00, 0x01, 0x01, 0x01, 0x6d, 0x01, 0x74, 0x01, 0x02, 0x02, 0x7b, 0x7d,
        0x05, 0x06,
    ];
    const EXAMPLE_FLOATS: [u8; 8] = [0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0];

    #[test]
    fn a_memory_entry_is_encoded_as_documented_with_its_floats_aligned_in_the_file() {
        let key = Key::new("ns", Space::Memory, b"m".to_vec());
        let versions = [memory_version(Some(vec![1.0, -2.0]))];
        // At file offset 92 (after the header and the length), the postcard part ends on a
        // multiple of 4: no padding.
        let mut out = Vec::new();
        encode(&mut out, 92, &key, None, &versions);
        assert_eq!(out, [&EXAMPLE_POSTCARD[..], &EXAMPLE_FLOATS].concat());
        // One byte later, three zero bytes bring the floats to offset 120.
        let mut shifted = vec![0xEE];
        encode(&mut shifted, 92, &key, None, &versions);
        assert_eq!(shifted, [&[0xEE][..], &EXAMPLE_POSTCARD, &[0, 0, 0], &EXAMPLE_FLOATS].concat());
        let decoded = decode(&shifted[1..], 93, None).unwrap();
        assert_eq!((decoded.key, decoded.created), (key, None));
        assert_eq!(decoded.versions.len(), 1);
        assert_eq!(decoded.versions[0].value.as_ref(), versions[0].value.as_deref());
    }

    #[test]
    fn values_other_than_memories_encode_as_in_version_3_and_embeddings_follow_in_version_order() {
        let key = Key::new("ns", Space::Memory, b"m".to_vec());
        let kv = Version {
            lsn: 301,
            op_index: 1,
            value: Some(Arc::new(Value::Kv(KvValue::Json(serde_json::json!({"a": 1}))))),
        };
        let deleted = Version {
            lsn: 302,
            op_index: 0,
            value: None,
        };
        let mut second = memory_version(Some(vec![3.0; 3]));
        second.lsn = 303;
        let versions = [memory_version(Some(vec![1.0, -2.0])), kv, deleted, memory_version(None), second];
        for offset in 0..4 {
            let mut out = Vec::new();
            encode(&mut out, offset, &key, Some((7, 0)), &versions);
            let decoded = decode(&out, offset, None).unwrap();
            assert_eq!(decoded.created, Some((7, 0)));
            let values: Vec<Option<&Value>> = decoded.versions.iter().map(|v| v.value.as_ref()).collect();
            let expected: Vec<Option<&Value>> = versions.iter().map(|v| v.value.as_deref()).collect();
            assert_eq!(values, expected);
            // The floats of both embeddings close the entry, the first on a multiple of 4.
            let floats_start = out.len() - 5 * 4;
            assert_eq!((offset as usize + floats_start) % 4, 0);
            assert_eq!(out[floats_start..floats_start + 4], 1.0f32.to_le_bytes());
        }
    }

    fn error_of(bytes: &[u8], file_offset: u64) -> String {
        decode(bytes, file_offset, None).err().expect("an error")
    }

    #[test]
    fn damaged_padding_lengths_and_trailing_bytes_are_errors_not_panics() {
        let key = Key::new("ns", Space::Memory, b"m".to_vec());
        let versions = [memory_version(Some(vec![1.0, -2.0]))];
        let mut out = Vec::new();
        encode(&mut out, 93, &key, None, &versions);
        let padding_at = EXAMPLE_POSTCARD.len();
        let mut bad_padding = out.clone();
        bad_padding[padding_at] = 1;
        assert!(error_of(&bad_padding, 93).contains("padding"));
        assert!(error_of(&out[..out.len() - 1], 93).contains("runs past"));
        assert!(error_of(&out[..padding_at + 1], 93).contains("inside the padding"));
        let mut trailing = out.clone();
        trailing.push(0);
        assert!(error_of(&trailing, 93).contains("follow"));
        // A float count far beyond the entry (varint 0xffffffff where 2 was).
        let mut huge = EXAMPLE_POSTCARD.to_vec();
        huge.splice(18..19, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(error_of(&huge, 92).contains("runs past"));
        // Every truncation is an error.
        for cut in 0..out.len() {
            assert!(decode(&out[..cut], 93, None).is_err(), "cut at {cut}");
        }
    }
}
