//! The router and the serving loop with graceful shutdown.

use crate::auth::authenticate;
use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::routes::{admin, changes, graph, kv, memories, search, transactions};
use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use std::future::Future;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use utoipa::OpenApi;

/// The whole API, and MCP at `/mcp`. `/healthz` and `/openapi.json` are public; everything else
/// passes the API-key check when keys are configured.
pub fn router(state: AppState) -> Router {
    let ns = "/v1/namespaces/{ns}";
    let protected = Router::new()
        .route(
            &format!("{ns}/memories"),
            post(memories::create_memory).get(memories::list_memories),
        )
        .route(
            &format!("{ns}/memories/{{id}}"),
            get(memories::get_memory)
                .patch(memories::update_memory)
                .delete(memories::delete_memory),
        )
        .route(&format!("{ns}/memories/{{id}}/history"), get(memories::memory_history))
        .route(&format!("{ns}/graph/create_entities"), post(graph::create_entities))
        .route(&format!("{ns}/graph/create_relations"), post(graph::create_relations))
        .route(&format!("{ns}/graph/add_observations"), post(graph::add_observations))
        .route(&format!("{ns}/graph/delete_entities"), post(graph::delete_entities))
        .route(&format!("{ns}/graph/delete_observations"), post(graph::delete_observations))
        .route(&format!("{ns}/graph/delete_relations"), post(graph::delete_relations))
        .route(&format!("{ns}/graph/read_graph"), get(graph::read_graph))
        .route(&format!("{ns}/graph/search_nodes"), post(graph::search_nodes))
        .route(&format!("{ns}/graph/open_nodes"), post(graph::open_nodes))
        .route(&format!("{ns}/graph/entity_history"), get(graph::entity_history))
        .route(&format!("{ns}/graph/relation_history"), get(graph::relation_history))
        .route(&format!("{ns}/search"), post(search::search))
        .route(&format!("{ns}/graph/search_entities"), post(search::search_entities))
        .route(&format!("{ns}/graph/neighbours"), get(search::neighbours))
        .route(&format!("{ns}/vector_space"), put(search::declare_vector_space))
        .route(&format!("{ns}/kv"), get(kv::kv_scan))
        .route(&format!("{ns}/kv/{{*key}}"), get(kv::kv_get).put(kv::kv_put).delete(kv::kv_delete))
        .route(&format!("{ns}/kv_history/{{*key}}"), get(kv::kv_history))
        .route("/v1/transactions", post(transactions::transaction))
        .route("/v1/changes", get(changes::changes))
        .route("/v1/cursors", post(changes::create_cursor).get(changes::list_cursors))
        .route("/v1/cursors/{name}", get(changes::get_cursor).delete(changes::delete_cursor))
        .route("/v1/cursors/{name}/advance", post(changes::advance_cursor))
        .route("/v1/cursors/{name}/changes", get(changes::cursor_changes))
        .route("/v1/admin/checkpoint", post(admin::checkpoint))
        .route("/v1/stats", get(admin::stats))
        .route("/metrics", get(admin::metrics))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    let max_body_bytes = state.config.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/openapi.json", get(|| async { axum::Json(ApiDoc::openapi()) }))
        .merge(protected)
        .merge(crate::mcp::mcp_router(&state))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

/// Serves `app` (usually [`router`], possibly with more merged in) on `listener` until
/// `shutdown` resolves; then stops accepting, ends change-feed streams, lets in-flight requests
/// (and so their commits) finish, and syncs the log, so that even writes acknowledged with
/// `durability=buffered` are durable when this returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let flag = state.shutting_down.clone();
    let mcp_shutdown = state.mcp_shutdown.clone();
    // Responses go out as soon as they are written: with Nagle's algorithm a response written
    // while the connection's previous segment awaits its (delayed) acknowledgement waits too.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing requests in flight");
            flag.store(true, Ordering::Release);
            mcp_shutdown.cancel();
        })
        .await;
    let db = state.db.clone();
    match tokio::task::spawn_blocking(move || db.sync()).await {
        Ok(Ok(lsn)) => tracing::info!(durable_lsn = lsn, "log synced"),
        Ok(Err(e)) => tracing::error!("final sync failed: {e}"),
        Err(e) => tracing::error!("final sync did not run: {e}"),
    }
    result
}
