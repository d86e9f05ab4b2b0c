//! Engram's own tools (remember, forget, history), `as_of` on the read tools, the embedder
//! seam, namespaces, and the rule that a failing call commits nothing: each over the duplex
//! transport and over streamable HTTP where the transport could matter.

use crate::common;

use common::*;
use engram_core::{DatabaseOptions, GraphReads, KvValue, MemoryReads, RetentionPolicy};
use engram_mcp::{EmbedError, EmbedFuture, EngramMcp, TextEmbedder};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn structured(result: &rmcp::model::CallToolResult) -> Value {
    assert_ne!(result.is_error, Some(true), "unexpected tool error: {result:?}");
    let value = result.structured_content.clone().expect("structured content");
    // Our tools follow the reference's convention: the text is the same JSON, indented.
    assert_eq!(serde_json::from_str::<Value>(&text(result)).unwrap(), value);
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remember_forget_and_history_over_both_transports() {
    for transport in TRANSPORTS {
        let (_dir, db) = open_db();
        let client = connect(EngramMcp::new(db.clone(), NAMESPACE).unwrap(), transport).await;
        let remembered = structured(
            &call(
                &client,
                "remember",
                json!({ "text": "the user prefers tea", "metadata": { "source": "chat" }, "embedding": [0.5, -1.0, 2.0] }),
            )
            .await,
        );
        let id = remembered["id"].as_str().unwrap().to_string();
        let remembered_lsn = remembered["lsn"].as_u64().unwrap();
        assert_eq!(remembered_lsn, db.visible_lsn(), "{transport:?}: the answer carries the commit LSN");
        let stored = db.snapshot().get_memory(NAMESPACE, &id).unwrap().expect("the memory is stored");
        assert_eq!(stored.text, "the user prefers tea");
        assert_eq!(stored.embedding.map(|e| e.to_vec()), Some(vec![0.5, -1.0, 2.0]));
        assert_eq!(stored.metadata.to_value(), json!({ "source": "chat" }));

        let forgotten = structured(&call(&client, "forget", json!({ "id": id })).await);
        let forgotten_lsn = forgotten["lsn"].as_u64().unwrap();
        assert!(forgotten_lsn > remembered_lsn);
        assert_eq!(db.snapshot().get_memory(NAMESPACE, &id).unwrap(), None);

        let history = structured(&call(&client, "history", json!({ "id": id })).await);
        let versions = history["versions"].as_array().unwrap();
        assert_eq!(versions.len(), 2, "{transport:?}: {history}");
        assert_eq!(versions[0]["lsn"], json!(remembered_lsn));
        assert_eq!(versions[0]["deleted"], json!(false));
        assert_eq!(versions[0]["value"]["text"], json!("the user prefers tea"));
        assert_eq!(versions[0]["value"]["metadata"], json!({ "source": "chat" }));
        assert_eq!(versions[0]["value"]["embedding"], json!([0.5, -1.0, 2.0]));
        assert_eq!(
            versions[1],
            json!({ "lsn": forgotten_lsn, "committedAt": versions[1]["committedAt"], "deleted": true, "value": null })
        );
        assert!(
            versions[1]["committedAt"].as_str().unwrap().ends_with('Z'),
            "RFC 3339 in UTC: {history}"
        );

        // As of the first commit, only the first version existed.
        let past = structured(&call(&client, "history", json!({ "id": id, "as_of": remembered_lsn })).await);
        assert_eq!(past["versions"].as_array().unwrap().len(), 1);

        // Forgetting it again is an error and commits nothing.
        let before = db.visible_lsn();
        let again = call(&client, "forget", json!({ "id": id })).await;
        assert_tool_error(&again, "memory");
        assert!(text(&again).contains("not found"), "{again:?}");
        assert_eq!(db.visible_lsn(), before);

        // History of something that never existed is empty, not an error.
        let none = structured(&call(&client, "history", json!({ "id": "01J0000000000000000000000" })).await);
        assert_eq!(none, json!({ "versions": [] }));
        client.cancel().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_an_entity_and_of_a_key() {
    let (_dir, db) = open_db();
    let client = connect(EngramMcp::new(db.clone(), NAMESPACE).unwrap(), Transport::Duplex).await;
    call(
        &client,
        "create_entities",
        json!({ "entities": [entity("Ada", "person", &["writes programs"])] }),
    )
    .await;
    call(
        &client,
        "add_observations",
        json!({ "observations": [{ "entityName": "Ada", "contents": ["likes engines"] }] }),
    )
    .await;
    call(&client, "delete_entities", json!({ "entityNames": ["Ada"] })).await;
    let history = structured(&call(&client, "history", json!({ "entityName": "Ada" })).await);
    let values: Vec<Value> = history["versions"].as_array().unwrap().iter().map(|v| v["value"].clone()).collect();
    assert_eq!(
        values,
        [
            entity("Ada", "person", &["writes programs"]),
            entity("Ada", "person", &["writes programs", "likes engines"]),
            Value::Null
        ]
    );

    db.run(1, |t| t.kv_put(NAMESPACE, b"state/step", KvValue::Json(json!({ "step": 1 }))))
        .unwrap();
    db.run(1, |t| t.kv_put(NAMESPACE, b"state/step", KvValue::Bytes(vec![0, 255])))
        .unwrap();
    let history = structured(&call(&client, "history", json!({ "key": "state/step" })).await);
    let values: Vec<Value> = history["versions"].as_array().unwrap().iter().map(|v| v["value"].clone()).collect();
    assert_eq!(values, [json!({ "json": { "step": 1 } }), json!({ "bytesHex": "00ff" })]);

    for bad in [
        json!({}),
        json!({ "id": "x", "key": "y" }),
        json!({ "entityName": "Ada", "id": "x", "key": "k" }),
    ] {
        let result = call(&client, "history", bad.clone()).await;
        assert_tool_error(
            &result,
            "MCP error -32602: Input validation error: Invalid arguments for tool history: ",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_tools_read_the_past_as_of_an_lsn_or_a_time() {
    for transport in TRANSPORTS {
        let (_dir, db) = open_db();
        let client = connect(EngramMcp::new(db.clone(), NAMESPACE).unwrap(), transport).await;
        let empty_lsn = db.visible_lsn();
        call(
            &client,
            "create_entities",
            json!({ "entities": [entity("Ada", "person", &["writes programs"]), entity("Babbage", "person", &[])] }),
        )
        .await;
        call(
            &client,
            "create_relations",
            json!({ "relations": [relation("Ada", "Babbage", "works_with")] }),
        )
        .await;
        let created_lsn = db.visible_lsn();
        call(
            &client,
            "add_observations",
            json!({ "observations": [{ "entityName": "Ada", "contents": ["likes engines"] }] }),
        )
        .await;
        call(&client, "delete_entities", json!({ "entityNames": ["Babbage"] })).await;

        let then = graph(
            vec![entity("Ada", "person", &["writes programs"]), entity("Babbage", "person", &[])],
            vec![relation("Ada", "Babbage", "works_with")],
        );
        // The LSN as an integer and as a string of digits.
        for as_of in [json!(created_lsn), json!(created_lsn.to_string())] {
            let past = structured(&call(&client, "read_graph", json!({ "as_of": as_of })).await);
            assert_eq!(past, then, "{transport:?}");
        }
        let now = structured(&call(&client, "read_graph", json!({})).await);
        assert_eq!(
            now,
            graph(vec![entity("Ada", "person", &["writes programs", "likes engines"])], vec![])
        );
        let past_search = structured(&call(&client, "search_nodes", json!({ "query": "babbage", "as_of": created_lsn })).await);
        assert_eq!(
            past_search,
            graph(
                vec![entity("Babbage", "person", &[])],
                vec![relation("Ada", "Babbage", "works_with")]
            )
        );
        let past_open = structured(&call(&client, "open_nodes", json!({ "names": ["Ada"], "as_of": created_lsn })).await);
        assert_eq!(
            past_open,
            graph(
                vec![entity("Ada", "person", &["writes programs"])],
                vec![relation("Ada", "Babbage", "works_with")]
            )
        );
        let before_anything = structured(&call(&client, "read_graph", json!({ "as_of": empty_lsn })).await);
        assert_eq!(before_anything, graph(vec![], vec![]));

        // As of a time: the commit time of the relation's creation, from history.
        let history = structured(&call(&client, "history", json!({ "entityName": "Babbage" })).await);
        let created_at = history["versions"][0]["committedAt"].as_str().unwrap().to_string();
        let at_time = structured(&call(&client, "read_graph", json!({ "as_of": created_at })).await);
        assert!(
            at_time["entities"].as_array().unwrap().iter().any(|e| e["name"] == "Babbage"),
            "{at_time}"
        );
        let epoch = structured(&call(&client, "read_graph", json!({ "as_of": "1970-01-01T00:00:00Z" })).await);
        assert_eq!(epoch, graph(vec![], vec![]));

        for bad in [
            json!("yesterday"),
            json!(-1),
            json!(1.5),
            json!({ "lsn": 1 }),
            json!("1969-12-31T23:59:59Z"),
        ] {
            let result = call(&client, "read_graph", json!({ "as_of": bad })).await;
            assert_tool_error(
                &result,
                "MCP error -32602: Input validation error: Invalid arguments for tool read_graph: ",
            );
        }
        client.cancel().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_below_the_retained_history_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = DatabaseOptions {
        retention: RetentionPolicy::KeepVersions { per_key: 1 },
        ..DatabaseOptions::default()
    };
    let db = engram_core::Database::open(dir.path(), options).unwrap();
    let client = connect(EngramMcp::new(db.clone(), NAMESPACE).unwrap(), Transport::Duplex).await;
    call(&client, "create_entities", json!({ "entities": [entity("Ada", "person", &[])] })).await;
    let old = db.visible_lsn();
    call(
        &client,
        "add_observations",
        json!({ "observations": [{ "entityName": "Ada", "contents": ["later"] }] }),
    )
    .await;
    db.checkpoint().unwrap();
    let result = call(&client, "read_graph", json!({ "as_of": old })).await;
    assert_tool_error(&result, &format!("LSN {old} is not readable"));
}

/// Embeds a text into 3 dimensions: (length, words, vowels); counts its calls.
#[derive(Default)]
struct CountingEmbedder {
    calls: AtomicUsize,
}

impl TextEmbedder for CountingEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            Ok(texts
                .iter()
                .map(|t| {
                    let vowels = t.chars().filter(|c| "aeiou".contains(*c)).count();
                    vec![t.len() as f32, t.split_whitespace().count() as f32, vowels as f32]
                })
                .collect())
        })
    }
}

/// An embedder that is down, or that answers with the wrong number of vectors.
enum BrokenEmbedder {
    Down,
    NoVector,
    TwoVectors,
}

impl TextEmbedder for BrokenEmbedder {
    fn embed<'a>(&'a self, _texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move {
            match self {
                BrokenEmbedder::Down => Err(EmbedError::new("connection refused")),
                BrokenEmbedder::NoVector => Ok(vec![]),
                BrokenEmbedder::TwoVectors => Ok(vec![vec![1.0], vec![2.0]]),
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remember_embeds_text_only_memories_when_the_server_has_an_embedder() {
    let (_dir, db) = open_db();
    let embedder = Arc::new(CountingEmbedder::default());
    let server = EngramMcp::with_embedder(db.clone(), NAMESPACE, embedder.clone()).unwrap();
    let client = connect(server, Transport::Duplex).await;
    let id = structured(&call(&client, "remember", json!({ "text": "tea at noon" })).await)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = db.snapshot().get_memory(NAMESPACE, &id).unwrap().unwrap();
    assert_eq!(stored.embedding.map(|e| e.to_vec()), Some(vec![11.0, 3.0, 5.0]));
    assert_eq!(embedder.calls.load(Ordering::SeqCst), 1);
    // A given embedding is used as is, without asking the embedder.
    let id = structured(&call(&client, "remember", json!({ "text": "x", "embedding": [1.0, 2.0, 3.0] })).await)["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        db.snapshot()
            .get_memory(NAMESPACE, &id)
            .unwrap()
            .unwrap()
            .embedding
            .map(|e| e.to_vec()),
        Some(vec![1.0, 2.0, 3.0])
    );
    assert_eq!(embedder.calls.load(Ordering::SeqCst), 1);
    // A text over the size limit is refused before the embedder is asked.
    let too_long = call(&client, "remember", json!({ "text": "x".repeat(1024 * 1024 + 1) })).await;
    assert_tool_error(&too_long, "memory text is 1048577 bytes");
    assert_eq!(embedder.calls.load(Ordering::SeqCst), 1);

    // Without an embedder the memory has no vector.
    let (_dir2, plain_db) = open_db();
    let plain = connect(EngramMcp::new(plain_db.clone(), NAMESPACE).unwrap(), Transport::Duplex).await;
    let id = structured(&call(&plain, "remember", json!({ "text": "tea at noon" })).await)["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(plain_db.snapshot().get_memory(NAMESPACE, &id).unwrap().unwrap().embedding, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedder_failure_commits_nothing() {
    for (broken, message) in [
        (BrokenEmbedder::Down, "the embedder failed: connection refused"),
        (BrokenEmbedder::NoVector, "the embedder failed: it returned 0 vectors for 1 text"),
        (BrokenEmbedder::TwoVectors, "the embedder failed: it returned 2 vectors for 1 text"),
    ] {
        let (_dir, db) = open_db();
        let client = connect(
            EngramMcp::with_embedder(db.clone(), NAMESPACE, Arc::new(broken)).unwrap(),
            Transport::Duplex,
        )
        .await;
        let before = db.visible_lsn();
        let result = call(&client, "remember", json!({ "text": "tea" })).await;
        assert_eq!(wire(&result), tool_error(message));
        assert_eq!(db.visible_lsn(), before);
        assert!(db.snapshot().list_memories(NAMESPACE).unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_tools_take_a_namespace_and_the_reference_tools_use_the_default() {
    let (_dir, db) = open_db();
    let client = connect(EngramMcp::new(db.clone(), "agent-1").unwrap(), Transport::Duplex).await;
    call(&client, "create_entities", json!({ "entities": [entity("Ada", "person", &[])] })).await;
    assert_eq!(db.snapshot().read_graph("agent-1").unwrap().entities.len(), 1);
    let in_other = structured(&call(&client, "remember", json!({ "text": "elsewhere", "namespace": "agent-2" })).await);
    let id = in_other["id"].as_str().unwrap();
    assert!(db.snapshot().get_memory("agent-2", id).unwrap().is_some());
    assert!(db.snapshot().get_memory("agent-1", id).unwrap().is_none());
    let history = structured(&call(&client, "history", json!({ "id": id, "namespace": "agent-2" })).await);
    assert_eq!(history["versions"].as_array().unwrap().len(), 1);
    let forgotten_elsewhere = call(&client, "forget", json!({ "id": id })).await;
    assert_tool_error(&forgotten_elsewhere, "memory");

    let before = db.visible_lsn();
    for bad in ["", "a/b", "..", ".hidden", "tab\there"] {
        let result = call(&client, "remember", json!({ "text": "x", "namespace": bad })).await;
        assert_tool_error(&result, "invalid namespace");
    }
    assert_eq!(db.visible_lsn(), before);
    assert!(EngramMcp::new(db, "no/slashes").is_err());
}

/// Every class of bad input, for every writing tool: a tool error, and the database's LSN does
/// not move (nothing was committed), including when the bad item comes after good ones in the
/// same call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_tool_error_and_commits_nothing() {
    let (_dir, db) = open_db();
    let client = connect(EngramMcp::new(db.clone(), NAMESPACE).unwrap(), Transport::Duplex).await;
    call(
        &client,
        "create_entities",
        json!({ "entities": [entity("Ada", "person", &["first"])] }),
    )
    .await;
    call(
        &client,
        "remember",
        json!({ "text": "sets the dimension", "embedding": [1.0, 2.0] }),
    )
    .await;
    let long_name = "n".repeat(2000);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "create_entities",
            json!({ "entities": "Ada" }),
            "MCP error -32602: Input validation error",
        ),
        (
            "create_entities",
            json!({ "entities": [entity("Good", "t", &[]), { "name": "NoType", "observations": [] }] }),
            "MCP error -32602",
        ),
        (
            "create_entities",
            json!({ "entities": [entity("Good", "t", &[]), entity("", "t", &[])] }),
            "invalid entity name",
        ),
        (
            "create_entities",
            json!({ "entities": [entity("Good", "t", &[]), entity(&long_name, "t", &[])] }),
            "invalid entity name",
        ),
        (
            "create_entities",
            json!({ "entities": [entity("Good", "t", &[]), entity("bad\u{1}name", "t", &[])] }),
            "invalid entity name",
        ),
        (
            "create_relations",
            json!({ "relations": [relation("Ada", "Good", "knows"), relation("Ada", "", "knows")] }),
            "invalid relation target",
        ),
        (
            "create_relations",
            json!({ "relations": [{ "from": "Ada", "to": "B" }] }),
            "MCP error -32602",
        ),
        (
            "add_observations",
            json!({ "observations": [{ "entityName": "Ada", "contents": ["second"] }, { "entityName": "Ghost", "contents": ["x"] }] }),
            "Entity with name Ghost not found",
        ),
        (
            "add_observations",
            json!({ "observations": [{ "entityName": "Ada", "contents": "second" }] }),
            "MCP error -32602",
        ),
        ("delete_entities", json!({ "entityNames": [1, 2] }), "MCP error -32602"),
        (
            "delete_observations",
            json!({ "deletions": [{ "entityName": "Ada" }] }),
            "MCP error -32602",
        ),
        ("delete_relations", json!({ "relations": null }), "MCP error -32602"),
        ("search_nodes", json!({ "query": 3 }), "MCP error -32602"),
        ("open_nodes", json!({}), "MCP error -32602"),
        (
            "remember",
            json!({ "text": "x", "embedding": [1.0, 2.0, 3.0] }),
            "embedding has 3 dimensions",
        ),
        ("remember", json!({ "text": "x", "embedding": [] }), "embedding must have between 1"),
        (
            "remember",
            json!({ "text": "x", "embedding": [1e39, 0.0] }),
            "embedding value at index 0 is inf",
        ),
        ("remember", json!({ "text": "x", "metadata": [1, 2] }), "MCP error -32602"),
        ("remember", json!({ "text": "x", "namespce": "typo" }), "MCP error -32602"),
        (
            "remember",
            json!({ "text": "x".repeat(1024 * 1024 + 1) }),
            "memory text is 1048577 bytes",
        ),
        ("forget", json!({ "id": 7 }), "MCP error -32602"),
    ];
    for (tool, arguments, prefix) in cases {
        let before = db.visible_lsn();
        let result = call(&client, tool, arguments.clone()).await;
        assert_tool_error(&result, prefix);
        assert_eq!(db.visible_lsn(), before, "{tool} {arguments} failed yet committed");
    }
    let graph_now = db.snapshot().read_graph(NAMESPACE).unwrap();
    assert_eq!(graph_now.entities.len(), 1, "no 'Good' entity from the failed calls: {graph_now:?}");
    assert_eq!(graph_now.entities[0].observations, ["first"], "Ada did not get 'second'");
    assert!(graph_now.relations.is_empty());
}

/// Concurrent calls from several clients that all write the same entity: every call that was
/// acknowledged is in the graph, and every call that failed (a conflict after all retries) is
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_lose_no_acknowledged_observation() {
    let (_dir, db) = open_db();
    let server = EngramMcp::new(db.clone(), NAMESPACE).unwrap();
    let first = connect(server.clone(), Transport::Duplex).await;
    call(
        &first,
        "create_entities",
        json!({ "entities": [entity("Shared", "notebook", &[])] }),
    )
    .await;
    let mut writers = Vec::new();
    for writer in 0..3 {
        let client = connect(server.clone(), if writer == 0 { Transport::Http } else { Transport::Duplex }).await;
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..6 {
                let observation = format!("writer {writer} note {n}");
                let args = json!({ "observations": [{ "entityName": "Shared", "contents": [observation] }] });
                let result = call(&client, "add_observations", args).await;
                outcomes.push((observation, result.is_error != Some(true)));
            }
            outcomes
        }));
    }
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for writer in writers {
        for (observation, ok) in writer.await.unwrap() {
            if ok {
                acknowledged.push(observation);
            } else {
                refused.push(observation);
            }
        }
    }
    let stored = db.snapshot().open_nodes(NAMESPACE, &["Shared".to_string()]).unwrap().entities[0]
        .observations
        .clone();
    for observation in &acknowledged {
        assert!(
            stored.contains(observation),
            "acknowledged {observation:?} is missing from {stored:?}"
        );
    }
    for observation in &refused {
        assert!(!stored.contains(observation), "refused {observation:?} was stored");
    }
    assert_eq!(stored.len(), acknowledged.len());
    assert!(!acknowledged.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resource_is_listed_and_unknown_resources_are_refused() {
    let (_dir, db) = open_db();
    let client = connect(EngramMcp::new(db, NAMESPACE).unwrap(), Transport::Http).await;
    let listed = client.list_resources(None).await.unwrap();
    assert_eq!(
        serde_json::to_value(&listed.resources).unwrap(),
        json!([{
            "uri": "memory://knowledge-graph",
            "name": "knowledge-graph",
            "title": "Knowledge Graph",
            "description": "The full knowledge graph with all entities and relations",
            "mimeType": "application/json"
        }])
    );
    assert_eq!(
        read_graph_resource(&client).await,
        json!([{ "uri": "memory://knowledge-graph", "mimeType": "application/json", "text": "{\n  \"entities\": [],\n  \"relations\": []\n}" }])
    );
    let unknown = client
        .read_resource(rmcp::model::ReadResourceRequestParams::new("memory://elsewhere"))
        .await;
    assert!(unknown.is_err(), "{unknown:?}");
}
