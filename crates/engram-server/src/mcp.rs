//! The MCP endpoint: engram-mcp's streamable HTTP service mounted at `/mcp`, behind the same
//! API keys as the rest of the API, with the server's embedder for `remember`.
//!
//! MCP tools write, and Engram's own tools take any `namespace` as an argument, so a key scoped
//! to some namespaces or to reading could reach past its scope through them. `/mcp` therefore
//! needs an unscoped key with the `read_write` or `admin` role (any caller when no keys are
//! configured, which is loopback only).

use crate::auth::{authenticate, Caller};
use crate::config::Role;
use crate::embedder::Embedder;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use engram_mcp::{EmbedError, EmbedFuture, EngramMcp, StreamableHttpServerConfig, TextEmbedder};
use std::sync::Arc;

/// Where the MCP service is mounted.
pub const MCP_PATH: &str = "/mcp";

impl TextEmbedder for Embedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move { Embedder::embed(self, texts).await.map_err(|e| EmbedError::new(e.message)) })
    }
}

/// The MCP server over the state's database, on `namespace`, with the state's embedder if any.
pub fn engram_mcp(state: &AppState, namespace: &str) -> Result<EngramMcp, engram_core::CoreError> {
    match &state.embedder {
        Some(embedder) => EngramMcp::with_embedder(state.db.clone(), namespace, embedder.clone() as Arc<dyn TextEmbedder>),
        None => EngramMcp::new(state.db.clone(), namespace),
    }
}

/// The `/mcp` routes: authentication, the access check, then the MCP service.
pub fn mcp_router(state: &AppState) -> Router<AppState> {
    let config = &state.config;
    let mut http_config = StreamableHttpServerConfig::default().with_cancellation_token(state.mcp_shutdown.clone());
    if let Some(hosts) = &config.mcp_allowed_hosts {
        http_config = http_config.with_allowed_hosts(hosts.iter().cloned());
    }
    let routes = match engram_mcp(state, config.mcp_namespace()) {
        Ok(server) => Router::new().nest_service(MCP_PATH, server.streamable_http_service_with(http_config)),
        // Config::validate checks the namespace, so this is reached only with an unvalidated
        // config: answer every /mcp request with the reason rather than fail the whole API.
        Err(e) => {
            let message = format!("the MCP endpoint is not available: mcp_namespace: {e}");
            tracing::error!("{message}");
            let answer = move || {
                let message = message.clone();
                async move { ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "mcp_unavailable", message) }
            };
            Router::new().route(MCP_PATH, axum::routing::any(answer))
        }
    };
    routes
        .layer(axum::middleware::from_fn(require_mcp_access))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
}

/// Lets through callers allowed to use every MCP tool (see the module docs).
async fn require_mcp_access(request: Request, next: Next) -> Response {
    let Some(caller) = request.extensions().get::<Caller>() else {
        return ApiError::internal("/mcp is missing the authentication layer").into_response();
    };
    if caller.role == Role::ReadOnly {
        return forbidden("/mcp needs a read_write or admin API key: MCP tools write");
    }
    if caller.namespaces.is_some() {
        return forbidden("/mcp needs an API key not limited to namespaces: MCP tools take any namespace");
    }
    next.run(request).await
}

fn forbidden(message: &str) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
}
