//! `EngramMcp`: the MCP server handler. Every tool call is one engram transaction (retried on a
//! write-write conflict). Writes run on the call's own task and await their group commit
//! (`Transaction::commit_async`: no thread waits for the fdatasync, and a call cancelled after
//! its commit was logged still sees it made durable and visible); reads, searches and history
//! run on tokio's blocking pool, since their CPU time grows with the request.
//! A call that fails, for any reason, commits nothing and answers with a tool error
//! (`isError: true`) whose text says why, as the reference server does.

use crate::access::{access_of, McpAccess};
use crate::as_of::snapshot_at;
use crate::embedder::TextEmbedder;
use crate::engram_tools::{
    self, version_view, ForgetOutput, ForgetParams, HistoryOutput, HistoryParams, HistoryTarget, RememberOutput, RememberParams,
};
use crate::recall::{
    self, decimal_score, resolve_mode, RecallHit, RecallMode, RecallOutput, RecallParams, RecallSignal, DEFAULT_RECALL_K, MAX_RECALL_K,
};
use crate::reference::{self as reference, *};
use engram_core::{
    validate_namespace, CoreError, Database, GraphReads, KvReads, MemoryReads, NewMemory, ReadView, SearchMode, SearchReads, SearchRequest,
    MAX_TEXT_BYTES,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource, ResourceContents,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The knowledge graph as a resource, as the reference server offers it.
pub const KNOWLEDGE_GRAPH_URI: &str = "memory://knowledge-graph";

/// How many times a tool call's transaction is retried after losing a write-write conflict
/// to a concurrent writer.
const CONFLICT_ATTEMPTS: u32 = 16;

/// An MCP server over an engram database: the reference memory server's nine tools on a
/// default namespace, engram's own tools (remember, forget, history) on any namespace, and the
/// `memory://knowledge-graph` resource. Cheap to clone; one value can serve many sessions.
#[derive(Clone)]
pub struct EngramMcp {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    db: Arc<Database>,
    namespace: String,
    embedder: Option<Arc<dyn TextEmbedder>>,
    tools: Vec<Tool>,
    /// Refuse calls that carry no [`McpAccess`] (set when served behind API keys).
    require_access: bool,
}

impl std::fmt::Debug for EngramMcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngramMcp")
            .field("namespace", &self.inner.namespace)
            .field("embedder", &self.inner.embedder.is_some())
            .finish_non_exhaustive()
    }
}

impl EngramMcp {
    /// A server whose reference tools (and our tools, unless told otherwise) use `namespace`.
    /// Fails if the namespace name is not valid.
    pub fn new(db: impl Into<Arc<Database>>, namespace: impl Into<String>) -> Result<EngramMcp, CoreError> {
        Self::build(db.into(), namespace.into(), None)
    }

    /// The same, with an embedder: `remember` with text and no embedding stores the text's
    /// vector.
    pub fn with_embedder(
        db: impl Into<Arc<Database>>,
        namespace: impl Into<String>,
        embedder: Arc<dyn TextEmbedder>,
    ) -> Result<EngramMcp, CoreError> {
        Self::build(db.into(), namespace.into(), Some(embedder))
    }

    fn build(db: Arc<Database>, namespace: String, embedder: Option<Arc<dyn TextEmbedder>>) -> Result<EngramMcp, CoreError> {
        validate_namespace(&namespace)?;
        let mut tools = reference::tools();
        tools.extend(engram_tools::tools());
        tools.push(recall::recall_tool());
        Ok(EngramMcp {
            inner: Arc::new(Inner {
                db,
                namespace,
                embedder,
                tools,
                require_access: false,
            }),
        })
    }

    /// This server, refusing every tool call and resource read whose request carries no
    /// [`McpAccess`] in its HTTP parts' extensions. A front end that attaches one to every
    /// request it authenticates uses this so that a request reaching the service by another
    /// route is refused rather than given full access.
    pub fn require_access(self) -> EngramMcp {
        let mut inner = (*self.inner).clone();
        inner.require_access = true;
        EngramMcp { inner: Arc::new(inner) }
    }

    /// The access of one request: what it carries, full access over stdio, none when required
    /// and missing.
    fn access_for(&self, context: &RequestContext<RoleServer>) -> Result<McpAccess, String> {
        match access_of(context) {
            Some(access) => Ok(access.clone()),
            None if self.inner.require_access => Err("forbidden: this request carries no API key scope".to_string()),
            None => Ok(McpAccess::full()),
        }
    }

    /// Runs one tool call for a caller with `access`: a call outside its scope is a tool
    /// error that names the reason, and nothing runs.
    pub async fn call_as(&self, access: &McpAccess, name: &str, arguments: Value) -> CallToolResult {
        // Engram's own tools say which namespace they touch; the reference tools use the default.
        let namespace = arguments
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(&self.inner.namespace)
            .to_string();
        if let Some(reason) = access.refusal(name, &namespace) {
            tracing::debug!(tool = name, %namespace, "tool call refused: {reason}");
            return CallToolResult::error(vec![ContentBlock::text(reason)]);
        }
        self.call(name, arguments).await
    }

    /// The namespace of the reference tools.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The tools this server lists, in order: the reference's nine, then ours.
    pub fn tools(&self) -> &[Tool] {
        &self.inner.tools
    }

    /// Runs one tool call. Never fails at the protocol level: every failure is a tool error.
    pub async fn call(&self, name: &str, arguments: Value) -> CallToolResult {
        match self.dispatch(name, arguments).await {
            Ok(output) => output.into_result(),
            Err(failure) => {
                tracing::debug!(tool = name, error = %failure.message, "tool call failed");
                CallToolResult::error(vec![ContentBlock::text(failure.message)])
            }
        }
    }

    async fn dispatch(&self, name: &str, args: Value) -> Result<ToolOutput, ToolFailure> {
        match name {
            CREATE_ENTITIES => {
                let p: CreateEntities = params(name, args)?;
                let created = self.write(move |t, ns| t.create_entities(ns, &p.entities)).await?.0;
                Ok(ToolOutput::json_text(&created, json!({ "entities": created })))
            }
            CREATE_RELATIONS => {
                let p: CreateRelations = params(name, args)?;
                let created = self.write(move |t, ns| t.create_relations(ns, &p.relations)).await?.0;
                Ok(ToolOutput::json_text(&created, json!({ "relations": created })))
            }
            ADD_OBSERVATIONS => {
                let p: AddObservations = params(name, args)?;
                let additions: Vec<(String, Vec<String>)> = p.observations.into_iter().map(|o| (o.entity_name, o.contents)).collect();
                let results = self.write(move |t, ns| t.add_observations(ns, &additions)).await?.0;
                Ok(ToolOutput::json_text(&results, json!({ "results": results })))
            }
            DELETE_ENTITIES => {
                let p: DeleteEntities = params(name, args)?;
                self.write(move |t, ns| t.delete_entities(ns, &p.entity_names)).await?;
                Ok(ToolOutput::status(ENTITIES_DELETED))
            }
            DELETE_OBSERVATIONS => {
                let p: DeleteObservations = params(name, args)?;
                let deletions: Vec<(String, Vec<String>)> = p.deletions.into_iter().map(|d| (d.entity_name, d.observations)).collect();
                self.write(move |t, ns| t.delete_observations(ns, &deletions)).await?;
                Ok(ToolOutput::status(OBSERVATIONS_DELETED))
            }
            DELETE_RELATIONS => {
                let p: DeleteRelations = params(name, args)?;
                self.write(move |t, ns| t.delete_relations(ns, &p.relations)).await?;
                Ok(ToolOutput::status(RELATIONS_DELETED))
            }
            READ_GRAPH => {
                let p: ReadGraph = params(name, args)?;
                let graph = self.read(p.as_of, |snap, ns| snap.read_graph(ns)).await?;
                Ok(ToolOutput::json_text(&graph, json!(graph)))
            }
            SEARCH_NODES => {
                let p: SearchNodes = params(name, args)?;
                let graph = self.read(p.as_of, move |snap, ns| snap.search_nodes(ns, &p.query)).await?;
                Ok(ToolOutput::json_text(&graph, json!(graph)))
            }
            OPEN_NODES => {
                let p: OpenNodes = params(name, args)?;
                let graph = self.read(p.as_of, move |snap, ns| snap.open_nodes(ns, &p.names)).await?;
                Ok(ToolOutput::json_text(&graph, json!(graph)))
            }
            engram_tools::REMEMBER => self.remember(params(name, args)?).await,
            recall::RECALL => self.recall(params(name, args)?).await,
            engram_tools::FORGET => {
                let p: ForgetParams = params(name, args)?;
                let namespace = self.namespace_or_default(p.namespace)?;
                let (_, info) = self.commit(&namespace, |t, ns| t.delete_memory(ns, &p.id)).await?;
                let output = ForgetOutput { lsn: info.lsn };
                Ok(ToolOutput::json_text(&output, json!(output)))
            }
            engram_tools::HISTORY => {
                let p: HistoryParams = params(name, args)?;
                let target = p.target().map_err(|e| invalid_arguments(name, &e))?;
                let namespace = self.namespace_or_default(p.namespace)?;
                let db = self.inner.db.clone();
                let as_of = p.as_of;
                let versions = blocking(move || {
                    let snap = snapshot_at(&db, as_of)?;
                    match target {
                        HistoryTarget::Memory(id) => snap.memory_history(&namespace, &id),
                        HistoryTarget::Entity(entity) => snap.entity_history(&namespace, &entity),
                        HistoryTarget::Key(key) => snap.kv_history(&namespace, key.as_bytes()),
                    }
                })
                .await?;
                let output = HistoryOutput {
                    versions: versions.into_iter().map(version_view).collect(),
                };
                Ok(ToolOutput::json_text(&output, json!(output)))
            }
            other => Err(ToolFailure::new(format!("MCP error -32602: Tool {other} not found"))),
        }
    }

    async fn remember(&self, p: RememberParams) -> Result<ToolOutput, ToolFailure> {
        let namespace = self.namespace_or_default(p.namespace)?;
        // Refused before the embedder sees it, with the error the insert would give.
        if p.text.len() > MAX_TEXT_BYTES {
            return Err(core_failure(CoreError::TooLarge {
                what: "memory text",
                size_bytes: p.text.len(),
                max_bytes: MAX_TEXT_BYTES,
            }));
        }
        let embedding = match (p.embedding, &self.inner.embedder) {
            (Some(embedding), _) => Some(embedding),
            (None, Some(embedder)) => Some(embed_one(embedder.as_ref(), &p.text).await?),
            (None, None) => None,
        };
        let memory = NewMemory {
            text: p.text,
            embedding,
            metadata: p.metadata.map(Value::Object).unwrap_or(Value::Null),
        };
        let (id, info) = self.commit(&namespace, |t, ns| t.insert_memory(ns, memory.clone())).await?;
        let output = RememberOutput { id, lsn: info.lsn };
        Ok(ToolOutput::json_text(&output, json!(output)))
    }

    async fn recall(&self, p: RecallParams) -> Result<ToolOutput, ToolFailure> {
        let namespace = self.namespace_or_default(p.namespace)?;
        let k = p.k.unwrap_or(DEFAULT_RECALL_K);
        if k == 0 || k > MAX_RECALL_K {
            return Err(ToolFailure::new(format!("k must be between 1 and {MAX_RECALL_K}, not {k}")));
        }
        let query = p.query.filter(|q| !q.trim().is_empty());
        let wants_vector = p.mode != Some(RecallMode::Keyword);
        let vector = match (p.vector, &query, &self.inner.embedder) {
            (Some(vector), _, _) => Some(vector),
            (None, Some(text), Some(embedder)) if wants_vector => Some(embed_one(embedder.as_ref(), text).await?),
            _ => None,
        };
        let mode = resolve_mode(p.mode, query.is_some(), vector.is_some()).map_err(ToolFailure::new)?;
        let request = SearchRequest {
            namespace,
            text: if mode == RecallMode::Vector { None } else { query },
            vector: if mode == RecallMode::Keyword { None } else { vector },
            k,
            mode: match mode {
                RecallMode::Hybrid => SearchMode::Hybrid,
                RecallMode::Vector => SearchMode::Vector,
                RecallMode::Keyword => SearchMode::Keyword,
            },
            filter: p.filter,
            ef_search: None,
        };
        let db = self.inner.db.clone();
        let as_of = p.as_of;
        let (lsn, hits) = blocking(move || {
            let snap = snapshot_at(&db, as_of)?;
            let hits = snap.search(&request)?;
            Ok((snap.read_lsn(), hits))
        })
        .await?;
        let signal = |s: Option<engram_core::SignalScore>| {
            s.map(|s| RecallSignal {
                rank: s.rank,
                score: decimal_score(s.score),
            })
        };
        let output = RecallOutput {
            mode,
            lsn,
            hits: hits
                .into_iter()
                .map(|hit| RecallHit {
                    id: hit.memory.id,
                    text: hit.memory.text,
                    metadata: hit.memory.metadata.into(),
                    score: decimal_score(hit.score),
                    vector: signal(hit.vector),
                    keyword: signal(hit.keyword),
                })
                .collect(),
        };
        Ok(ToolOutput::json_text(&output, json!(output)))
    }

    fn namespace_or_default(&self, namespace: Option<String>) -> Result<String, ToolFailure> {
        let namespace = namespace.unwrap_or_else(|| self.inner.namespace.clone());
        validate_namespace(&namespace).map_err(core_failure)?;
        Ok(namespace)
    }

    /// One transaction in the default namespace, retried on conflicts.
    async fn write<T>(
        &self,
        work: impl Fn(&mut engram_core::Transaction, &str) -> Result<T, CoreError>,
    ) -> Result<(T, engram_core::CommitInfo), ToolFailure> {
        let namespace = self.inner.namespace.clone();
        self.commit(&namespace, work).await
    }

    /// One transaction in `namespace`, committed on this task (`commit_async`) and retried on
    /// write-write conflicts with `Database::run`'s bounded, growing pause. `work` only buffers
    /// changes and reads the in-memory store, so it runs inline; it runs again on each attempt.
    async fn commit<T>(
        &self,
        namespace: &str,
        work: impl Fn(&mut engram_core::Transaction, &str) -> Result<T, CoreError>,
    ) -> Result<(T, engram_core::CommitInfo), ToolFailure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut txn = self.inner.db.begin();
            let value = work(&mut txn, namespace).map_err(core_failure)?;
            match txn.commit_async().await {
                Ok(info) => return Ok((value, info)),
                Err(e) if e.is_conflict() && attempt < CONFLICT_ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_micros(50 * u64::from(attempt.min(20)))).await;
                }
                Err(e) => return Err(core_failure(e)),
            }
        }
    }

    /// One read of the default namespace, now or as of a past point.
    async fn read<T: Send + 'static>(
        &self,
        as_of: Option<crate::AsOf>,
        work: impl FnOnce(&engram_core::Snapshot, &str) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, ToolFailure> {
        let db = self.inner.db.clone();
        let namespace = self.inner.namespace.clone();
        blocking(move || work(&snapshot_at(&db, as_of)?, &namespace)).await
    }

    /// The knowledge graph of the default namespace as the reference server's resource text.
    async fn knowledge_graph_text(&self) -> Result<String, ToolFailure> {
        let graph = self.read(None, |snap, ns| snap.read_graph(ns)).await?;
        Ok(pretty(&graph))
    }
}

async fn embed_one(embedder: &dyn TextEmbedder, text: &str) -> Result<Vec<f32>, ToolFailure> {
    let texts = [text.to_string()];
    let mut vectors = embedder.embed(&texts).await.map_err(|e| ToolFailure::new(e.to_string()))?;
    match vectors.len() {
        1 => Ok(vectors.remove(0)),
        count => Err(ToolFailure::new(format!(
            "the embedder failed: it returned {count} vectors for 1 text"
        ))),
    }
}

/// A successful tool result: the text content and the structured content.
struct ToolOutput {
    text: String,
    structured: Value,
}

impl ToolOutput {
    /// The reference's shape: the text is the result as JSON indented by two spaces.
    fn json_text(text_of: &impl Serialize, structured: Value) -> ToolOutput {
        ToolOutput {
            text: pretty(text_of),
            structured,
        }
    }

    fn status(message: &str) -> ToolOutput {
        ToolOutput {
            text: message.to_string(),
            structured: json!({ "success": true, "message": message }),
        }
    }

    fn into_result(self) -> CallToolResult {
        let mut result = CallToolResult::success(vec![ContentBlock::text(self.text)]);
        result.structured_content = Some(self.structured);
        // The reference leaves `isError` out of successful results.
        result.is_error = None;
        result
    }
}

/// JSON with two-space indentation, as `JSON.stringify(value, null, 2)` writes it.
fn pretty(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("unserialisable result: {e}"))
}

/// Why a tool call failed; its message is the text of the error result.
#[derive(Debug)]
struct ToolFailure {
    message: String,
}

impl ToolFailure {
    fn new(message: impl Into<String>) -> ToolFailure {
        ToolFailure { message: message.into() }
    }
}

fn invalid_arguments(tool: &str, reason: &str) -> ToolFailure {
    ToolFailure::new(format!(
        "MCP error -32602: Input validation error: Invalid arguments for tool {tool}: {reason}"
    ))
}

fn params<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, ToolFailure> {
    serde_json::from_value(args).map_err(|e| invalid_arguments(tool, &e.to_string()))
}

/// The reference's wording where it has one (a missing entity), engram's typed message otherwise.
fn core_failure(error: CoreError) -> ToolFailure {
    match error {
        CoreError::NotFound { what: "entity", id, .. } => ToolFailure::new(format!("Entity with name {id} not found")),
        other => ToolFailure::new(other.to_string()),
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, CoreError> + Send + 'static) -> Result<T, ToolFailure> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(core_failure),
        Err(join) => Err(ToolFailure::new(format!("the database call did not finish: {join}"))),
    }
}

impl ServerHandler for EngramMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_resources().build())
            .with_server_info(Implementation::new("engram", env!("CARGO_PKG_VERSION")).with_title("Engram"))
            .with_instructions(
                "Durable memory. The knowledge-graph tools (create_entities, ..., open_nodes) behave as the MCP reference memory \
                 server's; every call is one atomic, durable transaction. remember/forget/history manage free-text memories; \
                 read tools take as_of (an LSN or an RFC 3339 time) to read the past.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.inner.tools.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(&self, request: CallToolRequestParams, context: RequestContext<RoleServer>) -> Result<CallToolResponse, ErrorData> {
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let result = match self.access_for(&context) {
            Ok(access) => self.call_as(&access, &request.name, arguments).await,
            Err(reason) => CallToolResult::error(vec![ContentBlock::text(reason)]),
        };
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let graph = Resource::new(KNOWLEDGE_GRAPH_URI, "knowledge-graph")
            .with_title("Knowledge Graph")
            .with_description("The full knowledge graph with all entities and relations")
            .with_mime_type("application/json");
        Ok(ListResourcesResult::with_all_items(vec![graph]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let access = self
            .access_for(&context)
            .map_err(|reason| ErrorData::invalid_request(reason, None))?;
        if !access.may_use_namespace(&self.inner.namespace) {
            return Err(ErrorData::invalid_request(
                format!("forbidden: this API key may not access namespace {:?}", self.inner.namespace),
                None,
            ));
        }
        if request.uri != KNOWLEDGE_GRAPH_URI {
            return Err(ErrorData::resource_not_found(
                format!("no resource {:?}; this server has {KNOWLEDGE_GRAPH_URI}", request.uri),
                None,
            ));
        }
        let text = self
            .knowledge_graph_text()
            .await
            .map_err(|failure| ErrorData::internal_error(failure.message, None))?;
        let contents = ResourceContents::text(text, KNOWLEDGE_GRAPH_URI).with_mime_type("application/json");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}
