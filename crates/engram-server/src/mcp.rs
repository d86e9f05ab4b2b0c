//! The MCP endpoint: engram-mcp's streamable HTTP service mounted at `/mcp`, behind the same
//! API keys as the rest of the API, with the server's embedder for `remember`.
//!
//! Key scopes apply per call: the middleware attaches the caller's [`McpAccess`] to the request
//! and engram-mcp checks every tool call and resource read against it, with the namespace the
//! call touches (Engram's own tools take a `namespace` argument). A read-only key may call the
//! read tools ([`engram_mcp::READ_TOOLS`]) and read the resource; a write tool answers it with a
//! tool error. A key limited to some namespaces may open `/mcp` only when the MCP namespace
//! (`mcp_namespace`) is one of them, and its calls may name only its namespaces. Without keys
//! (loopback only) every caller has full access.

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
use engram_mcp::{EmbedError, EmbedFuture, EngramMcp, McpAccess, StreamableHttpServerConfig, TextEmbedder};
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
    let mut http_config = StreamableHttpServerConfig::default().with_cancellation_token((*state.mcp_shutdown).clone());
    if let Some(hosts) = &config.mcp_allowed_hosts {
        http_config = http_config.with_allowed_hosts(hosts.iter().cloned());
    }
    let routes = match engram_mcp(state, config.mcp_namespace()) {
        Ok(server) => Router::new().nest_service(MCP_PATH, server.require_access().streamable_http_service_with(http_config)),
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
    let namespace = config.mcp_namespace().to_string();
    routes
        .layer(axum::middleware::from_fn(move |request, next| {
            require_mcp_access(namespace.clone(), request, next)
        }))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
}

/// Lets through callers whose key reaches the MCP namespace, with their scope attached for the
/// per-call checks (see the module docs).
async fn require_mcp_access(namespace: String, mut request: Request, next: Next) -> Response {
    let Some(caller) = request.extensions().get::<Caller>() else {
        return ApiError::internal("/mcp is missing the authentication layer").into_response();
    };
    let access = McpAccess {
        read_only: caller.role == Role::ReadOnly,
        namespaces: caller.namespaces.clone(),
    };
    if !access.may_use_namespace(&namespace) {
        return forbidden(&format!(
            "this API key may not access namespace {namespace:?}, the namespace of /mcp (mcp_namespace)"
        ));
    }
    request.extensions_mut().insert(access);
    next.run(request).await
}

fn forbidden(message: &str) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
}
