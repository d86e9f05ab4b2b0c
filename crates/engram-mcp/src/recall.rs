//! The designed `recall` tool (hybrid search over memories). It is **not served yet**: it needs
//! engram-core's search (`SearchReads::search`), which is being built separately. These types
//! fix its input and output so that wiring it is a matter of calling the search and mapping
//! the hits; docs/mcp.md describes the tool. Nothing here pretends to search.

use crate::engram_tools::{input_schema, output_schema};
use crate::reference::tool;
use rmcp::model::Tool;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub const RECALL: &str = "recall";
/// Hits returned when `k` is absent.
pub const DEFAULT_RECALL_K: usize = 10;
/// The largest `k` accepted.
pub const MAX_RECALL_K: usize = 100;

/// How `recall` ranks memories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecallMode {
    /// Vector similarity and keyword relevance fused (the default). Without an embedder and
    /// without `vector`, it falls back to keyword search and says so in `mode`.
    #[default]
    Hybrid,
    /// Vector similarity only: needs `vector`, or `query` and an embedder.
    Vector,
    /// Keyword relevance only (BM25 over the memory text).
    Keyword,
}

/// Input of `recall`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecallParams {
    /// What to look for, in words.
    #[serde(default)]
    pub query: Option<String>,
    /// A query vector of the namespace's dimension (instead of, or with, `query`).
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    /// How many memories to return (1 to 100; 10 if absent).
    #[serde(default)]
    pub k: Option<usize>,
    /// hybrid (default), vector or keyword.
    #[serde(default)]
    pub mode: Option<RecallMode>,
    /// Only memories whose metadata has these top-level key/value pairs (equality).
    #[serde(default)]
    pub filter: Option<Map<String, Value>>,
    /// The namespace; the server's default if absent.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// One memory found by `recall`.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct RecallHit {
    pub id: String,
    pub text: String,
    pub metadata: Map<String, Value>,
    /// Higher is more relevant; comparable only within one answer.
    pub score: f32,
}

/// Output of `recall`.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct RecallOutput {
    /// The mode actually used (hybrid falls back to keyword without a vector).
    pub mode: RecallMode,
    /// Best first.
    pub hits: Vec<RecallHit>,
}

/// The tool definition to list once `recall` is served.
pub fn recall_tool() -> Tool {
    tool(
        RECALL,
        "Recall",
        "Find the memories most relevant to a query (hybrid vector + keyword search by default), optionally filtered by metadata.",
        input_schema::<RecallParams>(),
        output_schema::<RecallOutput>(),
        json!({ "readOnlyHint": true, "destructiveHint": false, "idempotentHint": true, "openWorldHint": false }),
    )
}
