//! A scripted session whose every result must equal what the MCP reference memory server
//! (@modelcontextprotocol/server-memory 2026.8.31) answers to the same calls, errors included,
//! over both transports. The expectations are derived by hand from the reference's semantics
//! (docs/mcp.md); tests/reference/probe.mjs replays the same session against any server over
//! stdio, which is how they were checked against the reference itself.

use crate::common;

use common::*;
use engram_mcp::EngramMcp;
use rmcp::model::{PaginatedRequestParams, Tool};
use serde_json::{json, Value};

enum Expect {
    /// Exactly this result on the wire.
    Exactly(Value),
    /// A tool error starting with this text (the reference's wording of argument errors comes
    /// from its validation library; ours from serde, after the same prefix).
    ErrorStartingWith(&'static str),
}

fn script() -> Vec<(&'static str, Value, Expect)> {
    use Expect::*;
    let alice = entity("Alice", "person", &["works at Acme Corp", "likes tea"]);
    let bob = entity("Bob", "person", &["likes programming"]);
    let acme = entity("Acme Corp", "company", &["tech company"]);
    let carol = entity("Carol", "person", &["lives in Paris"]);
    let works_at = relation("Alice", "Acme Corp", "works_at");
    let alice_knows_bob = relation("Alice", "Bob", "knows");
    let carol_knows_dave = relation("Carol", "Dave", "knows");
    let bob_knows_alice = relation("Bob", "Alice", "knows");
    let created_entities = json!([alice, bob, acme]);
    let created_relations = json!([works_at, alice_knows_bob, carol_knows_dave]);
    let results = json!([
        { "entityName": "Alice", "addedObservations": ["has a dog"] },
        { "entityName": "Bob", "addedObservations": ["uses Rust"] }
    ]);
    // Bob did not get "likes chess": the failed call changed nothing.
    let bob_opened = graph(
        vec![entity("Bob", "person", &["likes programming", "uses Rust"])],
        vec![alice_knows_bob.clone(), bob_knows_alice.clone()],
    );
    // Alice matches through an observation and Acme Corp through its name; every relation that
    // touches either is listed, including those to Bob, who does not match.
    let acme_found = graph(
        vec![
            entity("Alice", "person", &["works at Acme Corp", "likes tea", "has a dog"]),
            acme.clone(),
        ],
        vec![works_at.clone(), alice_knows_bob.clone(), bob_knows_alice.clone()],
    );
    let paris_found = graph(vec![carol.clone()], vec![carol_knows_dave.clone()]);
    let empty = graph(vec![], vec![]);
    let final_graph = graph(
        vec![
            entity("Alice", "person", &["works at Acme Corp", "has a dog"]),
            acme.clone(),
            carol.clone(),
        ],
        vec![works_at.clone(), carol_knows_dave.clone()],
    );
    vec![
        (
            "create_entities",
            json!({ "entities": created_entities }),
            Exactly(success_json(&created_entities, json!({ "entities": created_entities }))),
        ),
        (
            "create_entities",
            json!({ "entities": [entity("Alice", "robot", &[]), carol] }),
            Exactly(success_json(&json!([carol]), json!({ "entities": [carol] }))),
        ),
        (
            "create_relations",
            json!({ "relations": created_relations }),
            Exactly(success_json(&created_relations, json!({ "relations": created_relations }))),
        ),
        (
            "create_relations",
            json!({ "relations": [alice_knows_bob, bob_knows_alice] }),
            Exactly(success_json(&json!([bob_knows_alice]), json!({ "relations": [bob_knows_alice] }))),
        ),
        (
            "add_observations",
            json!({ "observations": [
                { "entityName": "Alice", "contents": ["likes tea", "has a dog"] },
                { "entityName": "Bob", "contents": ["uses Rust"] }
            ] }),
            Exactly(success_json(&results, json!({ "results": results }))),
        ),
        (
            "add_observations",
            json!({ "observations": [
                { "entityName": "Bob", "contents": ["likes chess"] },
                { "entityName": "Ghost", "contents": ["boo"] }
            ] }),
            Exactly(tool_error("Entity with name Ghost not found")),
        ),
        (
            "open_nodes",
            json!({ "names": ["Bob"] }),
            Exactly(success_json(&bob_opened, bob_opened.clone())),
        ),
        (
            "search_nodes",
            json!({ "query": "ACME" }),
            Exactly(success_json(&acme_found, acme_found.clone())),
        ),
        (
            "search_nodes",
            json!({ "query": "paris" }),
            Exactly(success_json(&paris_found, paris_found.clone())),
        ),
        ("open_nodes", json!({ "names": [] }), Exactly(success_json(&empty, empty.clone()))),
        (
            "delete_observations",
            json!({ "deletions": [
                { "entityName": "Alice", "observations": ["likes tea", "never said this"] },
                { "entityName": "Nobody", "observations": ["x"] }
            ] }),
            Exactly(status("Observations deleted successfully")),
        ),
        (
            "delete_relations",
            json!({ "relations": [alice_knows_bob, relation("Alice", "Bob", "hates")] }),
            Exactly(status("Relations deleted successfully")),
        ),
        (
            "delete_entities",
            json!({ "entityNames": ["Bob", "Nobody"] }),
            Exactly(status("Entities deleted successfully")),
        ),
        ("read_graph", json!({}), Exactly(success_json(&final_graph, final_graph.clone()))),
        (
            "create_entities",
            json!({ "entities": [{ "name": "X", "entityType": 5, "observations": [] }] }),
            ErrorStartingWith("MCP error -32602: Input validation error: Invalid arguments for tool create_entities: "),
        ),
        (
            "create_entities",
            json!({}),
            ErrorStartingWith("MCP error -32602: Input validation error: Invalid arguments for tool create_entities: "),
        ),
        (
            "no_such_tool",
            json!({}),
            Exactly(tool_error("MCP error -32602: Tool no_such_tool not found")),
        ),
    ]
}

async fn run_script(transport: Transport) {
    let (_dir, db) = open_db();
    let client = connect(EngramMcp::new(db.clone(), NAMESPACE).unwrap(), transport).await;
    for (index, (tool, arguments, expect)) in script().into_iter().enumerate() {
        let before = db.visible_lsn();
        let result = call(&client, tool, arguments).await;
        match expect {
            Expect::Exactly(expected) => assert_eq!(wire(&result), expected, "{transport:?} step {index} ({tool})"),
            Expect::ErrorStartingWith(prefix) => assert_tool_error(&result, prefix),
        }
        if result.is_error == Some(true) {
            assert_eq!(db.visible_lsn(), before, "{transport:?} step {index} ({tool}) failed yet committed");
        }
    }
    // The resource is the graph, as the reference's JSON text.
    let final_graph = text(&call(&client, "read_graph", json!({})).await);
    assert_eq!(
        read_graph_resource(&client).await,
        json!([{ "uri": "memory://knowledge-graph", "mimeType": "application/json", "text": final_graph }])
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_session_matches_the_reference_over_the_duplex_transport() {
    run_script(Transport::Duplex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_session_matches_the_reference_over_streamable_http() {
    run_script(Transport::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_content_is_indented_by_two_spaces_like_json_stringify() {
    let (_dir, db) = open_db();
    let client = connect(EngramMcp::new(db, NAMESPACE).unwrap(), Transport::Duplex).await;
    let result = call(
        &client,
        "create_entities",
        json!({ "entities": [entity("Alice", "person", &["likes tea"])] }),
    )
    .await;
    // Each literal is the reference server's answer to the same call, byte for byte.
    let reference_text =
        "[\n  {\n    \"name\": \"Alice\",\n    \"entityType\": \"person\",\n    \"observations\": [\n      \"likes tea\"\n    ]\n  }\n]";
    assert_eq!(text(&result), reference_text);
    let empty = call(&client, "open_nodes", json!({ "names": [] })).await;
    assert_eq!(text(&empty), "{\n  \"entities\": [],\n  \"relations\": []\n}");
    let relations = call(
        &client,
        "create_relations",
        json!({ "relations": [relation("Alice", "Bob", "knows")] }),
    )
    .await;
    assert_eq!(
        text(&relations),
        "[\n  {\n    \"from\": \"Alice\",\n    \"to\": \"Bob\",\n    \"relationType\": \"knows\"\n  }\n]"
    );
    let added = call(
        &client,
        "add_observations",
        json!({ "observations": [{ "entityName": "Alice", "contents": ["has a dog"] }] }),
    )
    .await;
    assert_eq!(
        text(&added),
        "[\n  {\n    \"entityName\": \"Alice\",\n    \"addedObservations\": [\n      \"has a dog\"\n    ]\n  }\n]"
    );
    let graph = call(&client, "read_graph", json!({})).await;
    assert_eq!(
        text(&graph),
        "{\n  \"entities\": [\n    {\n      \"name\": \"Alice\",\n      \"entityType\": \"person\",\n      \"observations\": [\n        \"likes tea\",\n        \"has a dog\"\n      ]\n    }\n  ],\n  \"relations\": [\n    {\n      \"from\": \"Alice\",\n      \"to\": \"Bob\",\n      \"relationType\": \"knows\"\n    }\n  ]\n}"
    );
}

/// The reference's tools/list (tests/reference/tools-list.json, captured from the reference
/// server), less the TypeScript SDK's `execution` field, with `as_of` added to the three read
/// tools: our nine tools must list exactly that, in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nine_reference_tools_are_listed_with_the_reference_schemas() {
    let (_dir, db) = open_db();
    let client = connect(EngramMcp::new(db, NAMESPACE).unwrap(), Transport::Duplex).await;
    let listed = client.list_tools(Some(PaginatedRequestParams::default())).await.unwrap().tools;
    let reference: Value = serde_json::from_str(include_str!("reference/tools-list.json")).unwrap();
    let mut expected = reference["tools"].as_array().unwrap().clone();
    for tool in &mut expected {
        tool.as_object_mut().unwrap().remove("execution");
        if matches!(tool["name"].as_str(), Some("read_graph" | "search_nodes" | "open_nodes")) {
            let as_of = json!({
                "type": ["integer", "string"],
                "minimum": 0,
                "description": "Read the database as it was at this point: an LSN (an integer, or a string of digits; every commit at or below it) or an RFC 3339 time such as \"2026-11-25T14:50:00Z\" (every commit at or before it). Omit for the current state."
            });
            tool["inputSchema"]["properties"]["as_of"] = as_of;
        }
    }
    let ours: Vec<Value> = listed[..9].iter().map(|t: &Tool| serde_json::to_value(t).unwrap()).collect();
    assert_eq!(ours, expected);
    let names: Vec<&str> = listed[9..].iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["remember", "forget", "history", "recall"]);
}
