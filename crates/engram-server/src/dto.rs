//! JSON shapes of the API (requests and responses), with their OpenAPI schemas.

use engram_core::{Entity, KvValue, Lsn, Memory, Metadata, Relation, Value, VersionInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every write answers with the LSN of its commit: the version stamp of what it wrote, and a
/// position in the change feed. The write is durable when the response is sent (unless
/// `?durability=buffered` was asked for).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WriteResult {
    pub lsn: Lsn,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct MemoryBody {
    pub id: String,
    pub text: String,
    pub embedding: Option<Vec<f32>>,
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl From<Memory> for MemoryBody {
    fn from(m: Memory) -> Self {
        MemoryBody {
            id: m.id,
            text: m.text,
            embedding: m.embedding.map(|e| e.to_vec()),
            metadata: m.metadata,
            created_ms: m.created_ms,
            updated_ms: m.updated_ms,
        }
    }
}

/// A memory serialised where it is stored, without copying its text, embedding and metadata
/// out: the JSON of [`MemoryBody`] (the same fields in the same order), for answers built from
/// shared memories (`MemoryRef`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryBodyRef<'a> {
    pub id: &'a str,
    pub text: &'a str,
    pub embedding: Option<&'a [f32]>,
    pub metadata: &'a Metadata,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl<'a> From<&'a Memory> for MemoryBodyRef<'a> {
    fn from(m: &'a Memory) -> Self {
        MemoryBodyRef {
            id: &m.id,
            text: &m.text,
            embedding: m.embedding.as_deref(),
            metadata: &m.metadata,
            created_ms: m.created_ms,
            updated_ms: m.updated_ms,
        }
    }
}

impl From<MemoryBody> for Memory {
    fn from(m: MemoryBody) -> Self {
        Memory {
            id: m.id,
            text: m.text,
            embedding: m.embedding.map(Into::into),
            metadata: m.metadata,
            created_ms: m.created_ms,
            updated_ms: m.updated_ms,
        }
    }
}

/// A memory as read, with the LSN of its current version (the `version` a precondition names).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemoryRead {
    #[serde(flatten)]
    pub memory: MemoryBody,
    pub version: Lsn,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemoryList {
    pub memories: Vec<MemoryBody>,
    /// The LSN the list was read at.
    pub read_lsn: Lsn,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMemoryBody {
    pub text: String,
    /// Optional; with an embedder configured and no embedding given, the text is embedded.
    pub embedding: Option<Vec<f32>>,
    /// A JSON object.
    #[schema(value_type = Object)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMemoryBody {
    pub text: Option<String>,
    pub embedding: Option<Vec<f32>>,
    /// Replaces the whole metadata object.
    #[schema(value_type = Object)]
    pub metadata: Option<serde_json::Value>,
}

/// Where a stored memory's embedding came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingSource {
    /// The request carried it.
    Given,
    /// The configured embedder computed it from the text.
    Embedded,
    /// None: no embedder is configured, so this memory is found by keyword search only.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedMemory {
    pub id: String,
    pub lsn: Lsn,
    pub embedding: EmbeddingSource,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdatedMemory {
    #[serde(flatten)]
    pub memory: MemoryBody,
    pub lsn: Lsn,
}

/// One version of an item; `value` is null when this version deleted it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionBody {
    pub lsn: Lsn,
    pub commit_ts_ms: u64,
    pub deleted: bool,
    #[schema(value_type = Object)]
    pub value: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryBody {
    /// Oldest first: every retained version up to the read LSN.
    pub versions: Vec<VersionBody>,
}

impl HistoryBody {
    pub fn from_versions(versions: Vec<VersionInfo>) -> Self {
        HistoryBody {
            versions: versions
                .into_iter()
                .map(|v| VersionBody {
                    lsn: v.lsn,
                    commit_ts_ms: v.commit_ts_ms,
                    deleted: v.value.is_none(),
                    value: v.value.map(value_json),
                })
                .collect(),
        }
    }
}

/// The JSON of a stored value, as the API shows it.
pub fn value_json(value: Value) -> serde_json::Value {
    match value {
        Value::Memory(m) => serde_json::to_value(MemoryBody::from(m)).unwrap_or_default(),
        Value::Entity(e) => serde_json::to_value(EntityBody::from(e)).unwrap_or_default(),
        Value::Relation(r) => serde_json::to_value(RelationBody::from(r)).unwrap_or_default(),
        Value::Kv(v) => serde_json::to_value(KvValueBody::from(v)).unwrap_or_default(),
        Value::Meta(m) => serde_json::json!({ "dimension": m.dimension }),
    }
}

/// An entity of the knowledge graph (the MCP reference memory server's shape).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityBody {
    pub name: String,
    pub entity_type: String,
    #[serde(default)]
    pub observations: Vec<String>,
}

impl From<Entity> for EntityBody {
    fn from(e: Entity) -> Self {
        EntityBody {
            name: e.name,
            entity_type: e.entity_type,
            observations: e.observations,
        }
    }
}

impl From<EntityBody> for Entity {
    fn from(e: EntityBody) -> Self {
        Entity {
            name: e.name,
            entity_type: e.entity_type,
            observations: e.observations,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelationBody {
    pub from: String,
    pub to: String,
    pub relation_type: String,
}

impl From<Relation> for RelationBody {
    fn from(r: Relation) -> Self {
        RelationBody {
            from: r.from,
            to: r.to,
            relation_type: r.relation_type,
        }
    }
}

impl From<RelationBody> for Relation {
    fn from(r: RelationBody) -> Self {
        Relation {
            from: r.from,
            to: r.to,
            relation_type: r.relation_type,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq, Default)]
pub struct GraphBody {
    pub entities: Vec<EntityBody>,
    pub relations: Vec<RelationBody>,
}

impl From<engram_core::KnowledgeGraph> for GraphBody {
    fn from(g: engram_core::KnowledgeGraph) -> Self {
        GraphBody {
            entities: g.entities.into_iter().map(Into::into).collect(),
            relations: g.relations.into_iter().map(Into::into).collect(),
        }
    }
}

/// A key/value value: `{"json": <any JSON>}` or `{"hex": "<lowercase hex of raw bytes>"}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KvValueBody {
    Json(serde_json::Value),
    Hex(String),
}

impl From<KvValue> for KvValueBody {
    fn from(v: KvValue) -> Self {
        match v {
            KvValue::Json(j) => KvValueBody::Json(j),
            KvValue::Bytes(b) => KvValueBody::Hex(hex::encode(b)),
        }
    }
}

impl KvValueBody {
    pub fn into_value(self) -> Result<KvValue, crate::error::ApiError> {
        match self {
            KvValueBody::Json(j) => Ok(KvValue::Json(j)),
            KvValueBody::Hex(h) => hex::decode(&h)
                .map(KvValue::Bytes)
                .map_err(|e| crate::error::ApiError::bad_request("bad_hex", format!("value.hex is not hexadecimal: {e}"))),
        }
    }
}

/// How a key is shown: as text when it is UTF-8, else as hex.
pub fn key_text(key: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(key) {
        Ok(s) => (s.to_string(), "utf8"),
        Err(_) => (hex::encode(key), "hex"),
    }
}
