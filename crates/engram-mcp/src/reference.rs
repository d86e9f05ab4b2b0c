//! The nine tools of the MCP reference memory server (@modelcontextprotocol/server-memory),
//! with its names, titles, descriptions, input and output schemas and annotations, as its
//! release 2026.8.31 lists them (docs/mcp.md records what was checked and how). The only
//! change: the three read tools accept an optional `as_of`.
//!
//! The schemas are written out rather than derived so that they stay byte-for-byte the
//! reference's, which clients and prompts written for it rely on.

use crate::as_of::{as_of_property, AsOf};
use engram_core::{Entity, Relation};
use rmcp::model::Tool;
use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) const CREATE_ENTITIES: &str = "create_entities";
pub(crate) const CREATE_RELATIONS: &str = "create_relations";
pub(crate) const ADD_OBSERVATIONS: &str = "add_observations";
pub(crate) const DELETE_ENTITIES: &str = "delete_entities";
pub(crate) const DELETE_OBSERVATIONS: &str = "delete_observations";
pub(crate) const DELETE_RELATIONS: &str = "delete_relations";
pub(crate) const READ_GRAPH: &str = "read_graph";
pub(crate) const SEARCH_NODES: &str = "search_nodes";
pub(crate) const OPEN_NODES: &str = "open_nodes";

/// The messages of the reference's delete tools (it reports success whether or not anything
/// matched).
pub(crate) const ENTITIES_DELETED: &str = "Entities deleted successfully";
pub(crate) const OBSERVATIONS_DELETED: &str = "Observations deleted successfully";
pub(crate) const RELATIONS_DELETED: &str = "Relations deleted successfully";

#[derive(Debug, Deserialize)]
pub(crate) struct CreateEntities {
    pub entities: Vec<Entity>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateRelations {
    pub relations: Vec<Relation>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ObservationAddition {
    pub entity_name: String,
    pub contents: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AddObservations {
    pub observations: Vec<ObservationAddition>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeleteEntities {
    pub entity_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ObservationDeletion {
    pub entity_name: String,
    pub observations: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeleteObservations {
    pub deletions: Vec<ObservationDeletion>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeleteRelations {
    pub relations: Vec<Relation>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReadGraph {
    pub as_of: Option<AsOf>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SearchNodes {
    pub query: String,
    pub as_of: Option<AsOf>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct OpenNodes {
    pub names: Vec<String>,
    pub as_of: Option<AsOf>,
}

const DRAFT_07: &str = "http://json-schema.org/draft-07/schema#";

fn entity_schema(closed: bool) -> Value {
    let mut schema = json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "description": "The name of the entity" },
            "entityType": { "type": "string", "description": "The type of the entity" },
            "observations": {
                "type": "array",
                "items": { "type": "string" },
                "description": "An array of observation contents associated with the entity"
            }
        },
        "required": ["name", "entityType", "observations"]
    });
    if closed {
        schema["additionalProperties"] = json!(false);
    }
    schema
}

fn relation_schema(closed: bool) -> Value {
    let mut schema = json!({
        "type": "object",
        "properties": {
            "from": { "type": "string", "description": "The name of the entity where the relation starts" },
            "to": { "type": "string", "description": "The name of the entity where the relation ends" },
            "relationType": { "type": "string", "description": "The type of the relation" }
        },
        "required": ["from", "to", "relationType"]
    });
    if closed {
        schema["additionalProperties"] = json!(false);
    }
    schema
}

/// An input schema as the reference's SDK writes it (zod to draft-07, open objects).
fn input(properties: Value, required: &[&str]) -> Value {
    let mut schema = json!({ "type": "object", "properties": properties });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema["$schema"] = json!(DRAFT_07);
    schema
}

/// An output schema as the reference's SDK writes it (closed objects).
fn output(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "$schema": DRAFT_07,
        "additionalProperties": false
    })
}

fn graph_output() -> Value {
    output(
        json!({
            "entities": { "type": "array", "items": entity_schema(true) },
            "relations": { "type": "array", "items": relation_schema(true) }
        }),
        &["entities", "relations"],
    )
}

fn status_output() -> Value {
    output(
        json!({ "success": { "type": "boolean" }, "message": { "type": "string" } }),
        &["success", "message"],
    )
}

fn annotations(read_only: bool, destructive: bool, idempotent: bool) -> Value {
    json!({
        "readOnlyHint": read_only,
        "destructiveHint": destructive,
        "idempotentHint": idempotent,
        "openWorldHint": false
    })
}

pub(crate) fn tool(name: &str, title: &str, description: &str, input_schema: Value, output_schema: Value, annotations: Value) -> Tool {
    let definition = json!({
        "name": name,
        "title": title,
        "description": description,
        "inputSchema": input_schema,
        "outputSchema": output_schema,
        "annotations": annotations,
    });
    serde_json::from_value(definition).expect("a tool definition built from literals is a valid Tool")
}

/// The reference's nine tools, in its order.
pub(crate) fn tools() -> Vec<Tool> {
    let observations_item = json!({
        "type": "object",
        "properties": {
            "entityName": { "type": "string", "description": "The name of the entity to add the observations to" },
            "contents": { "type": "array", "items": { "type": "string" }, "description": "An array of observation contents to add" }
        },
        "required": ["entityName", "contents"]
    });
    let deletions_item = json!({
        "type": "object",
        "properties": {
            "entityName": { "type": "string", "description": "The name of the entity containing the observations" },
            "observations": { "type": "array", "items": { "type": "string" }, "description": "An array of observations to delete" }
        },
        "required": ["entityName", "observations"]
    });
    vec![
        tool(
            CREATE_ENTITIES,
            "Create Entities",
            "Create multiple new entities in the knowledge graph",
            input(
                json!({ "entities": { "type": "array", "items": entity_schema(false) } }),
                &["entities"],
            ),
            output(
                json!({ "entities": { "type": "array", "items": entity_schema(true) } }),
                &["entities"],
            ),
            annotations(false, false, false),
        ),
        tool(
            CREATE_RELATIONS,
            "Create Relations",
            "Create multiple new relations between entities in the knowledge graph. Relations should be in active voice",
            input(
                json!({ "relations": { "type": "array", "items": relation_schema(false) } }),
                &["relations"],
            ),
            output(
                json!({ "relations": { "type": "array", "items": relation_schema(true) } }),
                &["relations"],
            ),
            annotations(false, false, false),
        ),
        tool(
            ADD_OBSERVATIONS,
            "Add Observations",
            "Add new observations to existing entities in the knowledge graph",
            input(
                json!({ "observations": { "type": "array", "items": observations_item } }),
                &["observations"],
            ),
            output(
                json!({ "results": { "type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "entityName": { "type": "string" },
                        "addedObservations": { "type": "array", "items": { "type": "string" } }
                    },
                    "required": ["entityName", "addedObservations"],
                    "additionalProperties": false
                } } }),
                &["results"],
            ),
            annotations(false, false, false),
        ),
        tool(
            DELETE_ENTITIES,
            "Delete Entities",
            "Delete multiple entities and their associated relations from the knowledge graph",
            input(
                json!({ "entityNames": { "type": "array", "items": { "type": "string" }, "description": "An array of entity names to delete" } }),
                &["entityNames"],
            ),
            status_output(),
            annotations(false, true, true),
        ),
        tool(
            DELETE_OBSERVATIONS,
            "Delete Observations",
            "Delete specific observations from entities in the knowledge graph",
            input(json!({ "deletions": { "type": "array", "items": deletions_item } }), &["deletions"]),
            status_output(),
            annotations(false, true, true),
        ),
        tool(
            DELETE_RELATIONS,
            "Delete Relations",
            "Delete multiple relations from the knowledge graph",
            input(
                json!({ "relations": { "type": "array", "items": relation_schema(false), "description": "An array of relations to delete" } }),
                &["relations"],
            ),
            status_output(),
            annotations(false, true, true),
        ),
        tool(
            READ_GRAPH,
            "Read Graph",
            "Read the entire knowledge graph",
            input(json!({ "as_of": as_of_property() }), &[]),
            graph_output(),
            annotations(true, false, true),
        ),
        tool(
            SEARCH_NODES,
            "Search Nodes",
            "Search for nodes in the knowledge graph based on a query",
            input(
                json!({
                    "query": { "type": "string", "description": "The search query to match against entity names, types, and observation content" },
                    "as_of": as_of_property()
                }),
                &["query"],
            ),
            graph_output(),
            annotations(true, false, true),
        ),
        tool(
            OPEN_NODES,
            "Open Nodes",
            "Open specific nodes in the knowledge graph by their names",
            input(
                json!({
                    "names": { "type": "array", "items": { "type": "string" }, "description": "An array of entity names to retrieve" },
                    "as_of": as_of_property()
                }),
                &["names"],
            ),
            graph_output(),
            annotations(true, false, true),
        ),
    ]
}
