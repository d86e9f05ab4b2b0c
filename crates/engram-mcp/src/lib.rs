//! engram-mcp: Engram over the Model Context Protocol.
//!
//! [`EngramMcp`] serves, over any rmcp transport:
//! - the nine tools of the MCP reference memory server (`create_entities`, `create_relations`,
//!   `add_observations`, `delete_entities`, `delete_observations`, `delete_relations`,
//!   `read_graph`, `search_nodes`, `open_nodes`) with its names, schemas, result shapes (text and
//!   structured content) and semantics, on the server's default namespace, so that an existing
//!   client configuration only changes its command;
//! - the `memory://knowledge-graph` resource;
//! - engram's own tools: `remember`, `recall` (hybrid search), `forget`, `history`, and `as_of` (an LSN or an RFC 3339
//!   time) on every read tool.
//!
//! Every tool call is one engram transaction: durable when it answers, and nothing of it is
//! committed when it fails. [`serve_stdio`] runs it on standard input and output;
//! [`streamable_http_service`] gives a tower service to mount in axum (`Router::nest_service`).
//! docs/mcp.md has the tools, their schemas and the differences from the reference server.

mod access;
mod as_of;
mod embedder;
mod engram_tools;
pub mod recall;
mod reference;
mod server;

pub use access::{McpAccess, READ_TOOLS, WRITE_TOOLS};
pub use as_of::AsOf;
pub use embedder::{EmbedError, EmbedFuture, TextEmbedder};
pub use engram_tools::{ForgetOutput, ForgetParams, HistoryOutput, HistoryParams, RememberOutput, RememberParams, VersionView};
pub use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
pub use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
pub use server::{EngramMcp, KNOWLEDGE_GRAPH_URI};

use engram_core::{CoreError, Database};
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::ServiceExt;
use std::sync::Arc;

/// The tower service that serves MCP over streamable HTTP.
pub type McpHttpService = StreamableHttpService<EngramMcp, LocalSessionManager>;

/// Why an MCP server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum McpServeError {
    #[error(transparent)]
    Database(#[from] CoreError),
    #[error("the MCP session could not start: {0}")]
    Initialize(String),
    #[error("the MCP session stopped abnormally: {0}")]
    Session(String),
}

impl EngramMcp {
    /// Serves one MCP session on standard input and output until the client closes it.
    pub async fn serve_stdio(self) -> Result<(), McpServeError> {
        let running = self
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| McpServeError::Initialize(e.to_string()))?;
        running.waiting().await.map_err(|e| McpServeError::Session(e.to_string()))?;
        Ok(())
    }

    /// A tower service serving MCP over streamable HTTP (one session per client, kept in
    /// memory), for `axum::Router::nest_service("/mcp", ...)`. `config` decides, among other
    /// things, which `Host` headers are accepted (loopback names only by default, against DNS
    /// rebinding: a server reachable under another name must list it).
    pub fn streamable_http_service_with(self, config: StreamableHttpServerConfig) -> McpHttpService {
        StreamableHttpService::new(move || Ok(self.clone()), Arc::new(LocalSessionManager::default()), config)
    }
}

/// Serves MCP on standard input and output over `db`, the reference tools using `namespace`.
pub async fn serve_stdio(db: impl Into<Arc<Database>>, namespace: &str) -> Result<(), McpServeError> {
    EngramMcp::new(db, namespace)?.serve_stdio().await
}

/// The streamable HTTP service over `db` with the default configuration (see
/// [`EngramMcp::streamable_http_service_with`]).
pub fn streamable_http_service(db: impl Into<Arc<Database>>, namespace: &str) -> Result<McpHttpService, CoreError> {
    Ok(EngramMcp::new(db, namespace)?.streamable_http_service_with(StreamableHttpServerConfig::default()))
}
