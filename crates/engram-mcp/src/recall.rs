//! The `recall` tool: hybrid (vector + keyword, fused by reciprocal rank) search over the
//! memories of a namespace, at the current snapshot or as of a past one. A text query is
//! embedded when the server has an embedder; without one, recall ranks by keyword only and says
//! so in `mode`. docs/mcp.md describes the tool.

use crate::as_of::AsOf;
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
    /// Search the memories as they were at this LSN or RFC 3339 time.
    #[serde(default)]
    pub as_of: Option<AsOf>,
}

/// Where a hit ranked in one signal (1 is best) and its score there.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct RecallSignal {
    pub rank: usize,
    pub score: f64,
}

/// One memory found by `recall`.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct RecallHit {
    pub id: String,
    pub text: String,
    pub metadata: Map<String, Value>,
    /// Higher is more relevant; comparable only within one answer.
    pub score: f64,
    /// Its rank and similarity in the vector search, if it was found there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<RecallSignal>,
    /// Its rank and BM25 score in the keyword search, if it was found there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<RecallSignal>,
}

/// Output of `recall`.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct RecallOutput {
    /// The mode actually used (hybrid falls back to keyword without a vector).
    pub mode: RecallMode,
    /// The LSN of the snapshot searched.
    pub lsn: u64,
    /// Best first.
    pub hits: Vec<RecallHit>,
}

/// The tool's definition.
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

/// A search score (an f32) as the f64 with the same shortest decimal form, so that the
/// structured content and the JSON text of an answer carry the same numbers.
pub(crate) fn decimal_score(score: f32) -> f64 {
    score.to_string().parse().unwrap_or(f64::from(score))
}

/// Which search a recall runs, given what the caller sent and whether a query vector can be
/// had (`vector` sent, or `query` plus an embedder). Hybrid fuses both signals only when both
/// exist, and otherwise degrades to the one that does; an explicit mode that cannot run is an
/// error the caller can act on.
pub(crate) fn resolve_mode(requested: Option<RecallMode>, has_query: bool, has_vector: bool) -> Result<RecallMode, String> {
    match requested.unwrap_or_default() {
        RecallMode::Hybrid => match (has_query, has_vector) {
            (true, true) => Ok(RecallMode::Hybrid),
            (true, false) => Ok(RecallMode::Keyword),
            (false, true) => Ok(RecallMode::Vector),
            (false, false) => Err("recall needs a `query`, a `vector`, or both".to_string()),
        },
        RecallMode::Vector if has_vector => Ok(RecallMode::Vector),
        RecallMode::Vector => {
            Err("vector recall needs `vector`, or `query` with an embedder configured (this server has none)".to_string())
        }
        RecallMode::Keyword if has_query => Ok(RecallMode::Keyword),
        RecallMode::Keyword => Err("keyword recall needs `query`".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_degrades_to_the_signal_that_exists_and_explicit_modes_say_what_they_miss() {
        assert_eq!(resolve_mode(None, true, true), Ok(RecallMode::Hybrid));
        assert_eq!(resolve_mode(None, true, false), Ok(RecallMode::Keyword));
        assert_eq!(resolve_mode(Some(RecallMode::Hybrid), false, true), Ok(RecallMode::Vector));
        assert!(resolve_mode(None, false, false).is_err());
        assert!(resolve_mode(Some(RecallMode::Vector), true, false)
            .unwrap_err()
            .contains("embedder"));
        assert!(resolve_mode(Some(RecallMode::Keyword), false, true).is_err());
        assert_eq!(resolve_mode(Some(RecallMode::Keyword), true, true), Ok(RecallMode::Keyword));
    }
}
