//! Memories: text, an optional embedding (one dimension per namespace) and JSON metadata.

use crate::error::{CoreError, Result};
use crate::metadata::Metadata;
use crate::model::{Embedding, Key, Memory, NamespaceMeta, Space, Value};
use crate::names::{json_kind, validate_embedding, validate_namespace, validate_size, MAX_TEXT_BYTES, MAX_VALUE_BYTES};
use crate::retention::RetainedView;
use crate::store::VersionInfo;
use crate::txn::Transaction;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const DIMENSION_KEY: &[u8] = b"dimension";

/// A memory to insert.
#[derive(Debug, Clone, Default)]
pub struct NewMemory {
    pub text: String,
    pub embedding: Option<Vec<f32>>,
    /// Must be a JSON object (or null for none).
    pub metadata: serde_json::Value,
}

/// Changes to a memory; absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct MemoryPatch {
    pub text: Option<String>,
    pub embedding: Option<Vec<f32>>,
    /// Replaces the whole metadata object.
    pub metadata: Option<serde_json::Value>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn metadata_object(value: serde_json::Value) -> Result<Metadata> {
    match value {
        serde_json::Value::Null => Ok(Metadata::new()),
        serde_json::Value::Object(map) => {
            let size = crate::names::json_bytes(&map);
            validate_size("metadata", size, MAX_VALUE_BYTES)?;
            Ok(Metadata::from(map))
        }
        other => Err(CoreError::MetadataNotObject { got: json_kind(&other) }),
    }
}

fn memory_key(namespace: &str, id: &str) -> Key {
    Key::new(namespace, Space::Memory, id.as_bytes().to_vec())
}

fn not_found(namespace: &str, id: &str) -> CoreError {
    CoreError::NotFound {
        what: "memory",
        namespace: namespace.to_string(),
        id: id.to_string(),
    }
}

impl Transaction {
    /// Fixes the embedding dimension of a namespace before any memory is inserted. Declaring the
    /// dimension it already has is a no-op; another one is a `DimensionMismatch`.
    pub fn declare_dimension(&mut self, namespace: &str, dimension: usize) -> Result<()> {
        validate_namespace(namespace)?;
        if dimension == 0 || dimension > crate::names::MAX_DIMENSION {
            return Err(CoreError::BadDimension {
                got: dimension,
                max: crate::names::MAX_DIMENSION,
            });
        }
        self.check_dimension(namespace, dimension)
    }

    /// Checks `dimension` against the namespace's, fixing it if none was set.
    fn check_dimension(&mut self, namespace: &str, dimension: usize) -> Result<()> {
        match self.dimension(namespace) {
            Some(expected) if expected != dimension => Err(CoreError::DimensionMismatch {
                namespace: namespace.to_string(),
                expected,
                got: dimension,
            }),
            Some(_) => Ok(()),
            None => {
                let meta = NamespaceMeta {
                    dimension: Some(dimension),
                };
                self.put(Key::new(namespace, Space::Meta, DIMENSION_KEY.to_vec()), Value::Meta(meta));
                Ok(())
            }
        }
    }

    fn validated_embedding(&mut self, namespace: &str, embedding: Option<Vec<f32>>) -> Result<Option<Embedding>> {
        if let Some(e) = &embedding {
            validate_embedding(e)?;
            self.check_dimension(namespace, e.len())?;
        }
        Ok(embedding.map(Embedding::from))
    }

    /// Inserts a memory; returns its generated id (a ULID: unique and ordered by creation time).
    pub fn insert_memory(&mut self, namespace: &str, memory: NewMemory) -> Result<String> {
        validate_namespace(namespace)?;
        validate_size("memory text", memory.text.len(), MAX_TEXT_BYTES)?;
        let metadata = metadata_object(memory.metadata)?;
        let embedding = self.validated_embedding(namespace, memory.embedding)?;
        self.check_retained()?;
        let id = ulid::Ulid::new().to_string();
        let now = now_ms();
        let record = Memory {
            id: id.clone(),
            text: memory.text,
            embedding,
            metadata,
            created_ms: now,
            updated_ms: now,
        };
        self.put_generated(memory_key(namespace, &id), Value::Memory(record));
        Ok(id)
    }

    /// Applies `patch` to an existing memory.
    pub fn update_memory(&mut self, namespace: &str, id: &str, patch: MemoryPatch) -> Result<Memory> {
        validate_namespace(namespace)?;
        let mut memory = self.get_memory(namespace, id)?.ok_or_else(|| not_found(namespace, id))?;
        if let Some(text) = patch.text {
            validate_size("memory text", text.len(), MAX_TEXT_BYTES)?;
            memory.text = text;
        }
        if let Some(metadata) = patch.metadata {
            memory.metadata = metadata_object(metadata)?;
        }
        if patch.embedding.is_some() {
            memory.embedding = self.validated_embedding(namespace, patch.embedding)?;
        }
        memory.updated_ms = now_ms().max(memory.created_ms);
        self.put(memory_key(namespace, id), Value::Memory(memory.clone()));
        Ok(memory)
    }

    pub fn delete_memory(&mut self, namespace: &str, id: &str) -> Result<()> {
        validate_namespace(namespace)?;
        if self.get_memory(namespace, id)?.is_none() {
            return Err(not_found(namespace, id));
        }
        self.remove(memory_key(namespace, id));
        Ok(())
    }
}

/// A memory as stored, shared with the database rather than copied: a version never changes
/// once committed, so holding one is safe and costs a reference count (the text and the
/// embedding stay where they are). Dereferences to [`Memory`]; `to_memory` copies it out.
#[derive(Clone)]
pub struct MemoryRef(Arc<Value>);

impl MemoryRef {
    pub(crate) fn new(value: Arc<Value>) -> Option<MemoryRef> {
        matches!(*value, Value::Memory(_)).then_some(MemoryRef(value))
    }

    pub fn to_memory(&self) -> Memory {
        (**self).clone()
    }
}

impl std::ops::Deref for MemoryRef {
    type Target = Memory;
    fn deref(&self) -> &Memory {
        match &*self.0 {
            Value::Memory(m) => m,
            _ => unreachable!("a MemoryRef is only made from a memory value"),
        }
    }
}

impl std::fmt::Debug for MemoryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Reads of memories, available on snapshots and transactions. Those returning `Result` fail
/// with `HistoryNotRetained` if the view reads below the history horizon.
pub trait MemoryReads: RetainedView {
    /// The namespace's embedding dimension, if declared or fixed by a first insert. (Exact at
    /// any LSN: the setting is written once, and pruning never removes a key's newest version.)
    fn dimension(&self, namespace: &str) -> Option<usize> {
        match self.get_value(&Key::new(namespace, Space::Meta, DIMENSION_KEY.to_vec())) {
            Some(Value::Meta(meta)) => meta.dimension,
            _ => None,
        }
    }

    fn get_memory(&self, namespace: &str, id: &str) -> Result<Option<Memory>> {
        validate_namespace(namespace)?;
        let value = self.get_value(&memory_key(namespace, id));
        self.check_retained()?;
        Ok(match value {
            Some(Value::Memory(m)) => Some(m),
            _ => None,
        })
    }

    /// [`MemoryReads::get_memory`] without copying the memory out of the database: the cheaper
    /// read when the caller only looks at it (serialises it, compares it, returns a field).
    fn get_memory_ref(&self, namespace: &str, id: &str) -> Result<Option<MemoryRef>> {
        validate_namespace(namespace)?;
        let value = self.get_shared_value(namespace, Space::Memory, id.as_bytes());
        self.check_retained()?;
        Ok(value.and_then(MemoryRef::new))
    }

    /// Every memory of a namespace, in id (creation time) order.
    fn list_memories(&self, namespace: &str) -> Result<Vec<Memory>> {
        validate_namespace(namespace)?;
        let items = self.scan_values(namespace, Space::Memory, b"");
        self.check_retained()?;
        Ok(items
            .into_iter()
            .filter_map(|(_, v, _)| if let Value::Memory(m) = v { Some(m) } else { None })
            .collect())
    }

    /// The retained versions of a memory up to this view, oldest first (a `None` value is a
    /// deletion): every version unless the retention policy pruned older ones.
    fn memory_history(&self, namespace: &str, id: &str) -> Result<Vec<VersionInfo>> {
        validate_namespace(namespace)?;
        let history = self.key_history(&memory_key(namespace, id));
        self.check_retained()?;
        Ok(history)
    }
}

impl<T: RetainedView + ?Sized> MemoryReads for T {}
