//! The OpenAPI document served at `/openapi.json`: every endpoint and schema.

use crate::routes::{admin, changes, graph, kv, memories, search, transactions};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Engram", description = "A durable memory database for AI agents: memories, a knowledge graph, key/value state, transactions, history and as-of reads, a change feed. Every write is acknowledged once durable and answers with its commit LSN. Errors are JSON {code, message}."),
    paths(
        memories::create_memory, memories::list_memories, memories::get_memory, memories::update_memory, memories::delete_memory, memories::memory_history,
        graph::create_entities, graph::create_relations, graph::add_observations, graph::delete_entities, graph::delete_observations,
        graph::delete_relations, graph::read_graph, graph::search_nodes, graph::open_nodes, graph::entity_history, graph::relation_history,
        search::search, search::search_entities, search::neighbours, search::declare_vector_space,
        kv::kv_get, kv::kv_put, kv::kv_delete, kv::kv_scan, kv::kv_history,
        transactions::transaction,
        changes::changes, changes::cursor_changes, changes::create_cursor, changes::list_cursors, changes::get_cursor,
        changes::advance_cursor, changes::delete_cursor,
        admin::healthz, admin::stats, admin::checkpoint, admin::metrics,
    ),
    components(schemas(crate::error::ErrorBody, crate::state::Durability)),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
)]
pub struct ApiDoc;
