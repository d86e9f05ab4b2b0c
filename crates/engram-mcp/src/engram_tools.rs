//! Engram's own tools: `remember`, `forget` and `history` (and the designed, not yet served,
//! `recall`: see recall.rs). Their schemas are derived from the types below, so the schema a
//! client sees is the one the server parses.

use crate::as_of::AsOf;
use crate::reference::tool;
use chrono::{DateTime, SecondsFormat};
use engram_core::{KvValue, Lsn, Value as Stored, VersionInfo};
use rmcp::model::Tool;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub(crate) const REMEMBER: &str = "remember";
pub(crate) const FORGET: &str = "forget";
pub(crate) const HISTORY: &str = "history";

/// Input of `remember`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RememberParams {
    /// The memory's text.
    pub text: String,
    /// A JSON object stored with the memory (for filters and for the agent's own use).
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// The memory's embedding. Every memory of a namespace has the same dimension (set by the
    /// first one). Without it, the server embeds `text` if it has an embedder, and otherwise
    /// stores the memory without a vector (keyword search only).
    #[serde(default)]
    pub embedding: Option<Vec<f32>>,
    /// The namespace (agent, user or tenant) to write to; the server's default if absent.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Output of `remember`.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct RememberOutput {
    /// The new memory's id (a ULID: unique, ordered by creation time).
    pub id: String,
    /// The LSN of the commit that stored it: `as_of` this LSN or later sees it.
    pub lsn: Lsn,
}

/// Input of `forget`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgetParams {
    /// The id of the memory to delete (its past versions stay readable with `history` and
    /// `as_of`).
    pub id: String,
    /// The namespace; the server's default if absent.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Output of `forget`.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct ForgetOutput {
    /// The LSN of the commit that deleted the memory.
    pub lsn: Lsn,
}

/// Input of `history`: exactly one of `id`, `entityName` and `key`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// A memory id.
    #[serde(default)]
    pub id: Option<String>,
    /// A knowledge-graph entity name.
    #[serde(default, rename = "entityName")]
    pub entity_name: Option<String>,
    /// A key of the namespace's key/value state (UTF-8).
    #[serde(default)]
    pub key: Option<String>,
    /// The namespace; the server's default if absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// List only the versions committed up to this point (see `read_graph`).
    #[serde(default)]
    pub as_of: Option<AsOf>,
}

/// What `history` is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HistoryTarget {
    Memory(String),
    Entity(String),
    Key(String),
}

impl HistoryParams {
    pub(crate) fn target(&self) -> Result<HistoryTarget, String> {
        match (&self.id, &self.entity_name, &self.key) {
            (Some(id), None, None) => Ok(HistoryTarget::Memory(id.clone())),
            (None, Some(name), None) => Ok(HistoryTarget::Entity(name.clone())),
            (None, None, Some(key)) => Ok(HistoryTarget::Key(key.clone())),
            _ => Err("history takes exactly one of id, entityName and key".to_string()),
        }
    }
}

/// Output of `history`.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct HistoryOutput {
    /// The retained versions, oldest first; empty if the item never existed (or all its
    /// versions are past the retention policy).
    pub versions: Vec<VersionView>,
}

/// One version of an item.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    /// The LSN of the commit that wrote this version.
    pub lsn: Lsn,
    /// That commit's time, RFC 3339 (UTC, milliseconds).
    pub committed_at: String,
    /// True when this version deleted the item (then `value` is null).
    pub deleted: bool,
    /// The item as this version left it: a memory {id, text, metadata, embedding, createdMs,
    /// updatedMs}, an entity {name, entityType, observations}, or a key's value {json} or
    /// {bytesHex}.
    pub value: Option<Value>,
}

pub(crate) fn rfc3339_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms after the Unix epoch"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn stored_view(value: Stored) -> Value {
    match value {
        Stored::Memory(m) => json!({
            "id": m.id,
            "text": m.text,
            "metadata": m.metadata,
            "embedding": m.embedding,
            "createdMs": m.created_ms,
            "updatedMs": m.updated_ms,
        }),
        Stored::Entity(e) => json!(e),
        Stored::Relation(r) => json!(r),
        Stored::Kv(KvValue::Json(v)) => json!({ "json": v }),
        Stored::Kv(KvValue::Bytes(b)) => json!({ "bytesHex": hex(&b) }),
        Stored::Meta(meta) => json!({ "dimension": meta.dimension }),
    }
}

pub(crate) fn version_view(version: VersionInfo) -> VersionView {
    VersionView {
        lsn: version.lsn,
        committed_at: rfc3339_ms(version.commit_ts_ms),
        deleted: version.value.is_none(),
        value: version.value.map(stored_view),
    }
}

fn settings() -> SchemaSettings {
    let mut settings = SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    settings
}

pub(crate) fn input_schema<T: JsonSchema>() -> Value {
    settings().into_generator().into_root_schema_for::<T>().to_value()
}

pub(crate) fn output_schema<T: JsonSchema>() -> Value {
    settings().for_serialize().into_generator().into_root_schema_for::<T>().to_value()
}

fn annotations(read_only: bool, destructive: bool, idempotent: bool) -> Value {
    json!({
        "readOnlyHint": read_only,
        "destructiveHint": destructive,
        "idempotentHint": idempotent,
        "openWorldHint": false
    })
}

pub(crate) fn tools() -> Vec<Tool> {
    vec![
        tool(
            REMEMBER,
            "Remember",
            "Store a memory (text, optional JSON metadata, optional embedding) durably; returns its id and the commit LSN.",
            input_schema::<RememberParams>(),
            output_schema::<RememberOutput>(),
            annotations(false, false, false),
        ),
        tool(
            FORGET,
            "Forget",
            "Delete a memory by id. Its past versions stay readable through history and as_of.",
            input_schema::<ForgetParams>(),
            output_schema::<ForgetOutput>(),
            annotations(false, true, false),
        ),
        tool(
            HISTORY,
            "History",
            "List every retained version of a memory (id), an entity (entityName) or a key (key), oldest first, with commit LSNs and times.",
            input_schema::<HistoryParams>(),
            output_schema::<HistoryOutput>(),
            annotations(true, false, true),
        ),
    ]
}
