//! `recall`: hybrid search over memories through MCP. What is specified here: which search runs
//! for what the caller sent (and that the answer says which), per-signal ranks on every hit,
//! metadata filters, `as_of`, the query embedder seam, and clear tool errors for every bound.

use crate::common;

use common::*;
use engram_mcp::{EmbedFuture, EngramMcp, TextEmbedder};
use serde_json::{json, Value};
use std::sync::Arc;

fn answer(result: &rmcp::model::CallToolResult) -> Value {
    assert_ne!(result.is_error, Some(true), "unexpected tool error: {result:?}");
    let value = result.structured_content.clone().expect("structured content");
    assert_eq!(serde_json::from_str::<Value>(&text(result)).unwrap(), value);
    value
}

fn hit_texts(answer: &Value) -> Vec<String> {
    answer["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["text"].as_str().unwrap().to_string())
        .collect()
}

/// Puts a text on one of three axes by its first word, so similarities are known exactly.
struct AxisEmbedder;

fn axis_vector(text: &str) -> Vec<f32> {
    match text.split_whitespace().next().unwrap_or("") {
        "tea" => vec![1.0, 0.0, 0.0],
        "coffee" => vec![0.0, 1.0, 0.0],
        _ => vec![0.0, 0.0, 1.0],
    }
}

impl TextEmbedder for AxisEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a> {
        Box::pin(async move { Ok(texts.iter().map(|t| axis_vector(t)).collect()) })
    }
}

async fn remember(client: &Client, text: &str, embedding: Option<Vec<f32>>, metadata: Value) -> (String, u64) {
    let mut args = json!({ "text": text, "metadata": metadata });
    if let Some(embedding) = embedding {
        args["embedding"] = json!(embedding);
    }
    let out = answer(&call(client, "remember", args).await);
    (out["id"].as_str().unwrap().to_string(), out["lsn"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_is_listed_as_a_read_only_tool() {
    let (_dir, db) = open_db();
    let client = connect(EngramMcp::new(db, NAMESPACE).unwrap(), Transport::Duplex).await;
    let tools = client.list_all_tools().await.unwrap();
    let recall = tools.iter().find(|t| t.name == "recall").expect("recall is listed");
    let schema = serde_json::to_value(&recall.input_schema).unwrap();
    for field in ["query", "vector", "k", "mode", "filter", "namespace", "as_of"] {
        assert!(schema["properties"].get(field).is_some(), "input schema lacks {field}: {schema}");
    }
    assert_eq!(recall.annotations.as_ref().and_then(|a| a.read_only_hint), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_embedder_a_text_query_ranks_by_keyword_and_says_so() {
    for transport in TRANSPORTS {
        let (_dir, db) = open_db();
        let client = connect(EngramMcp::new(db, NAMESPACE).unwrap(), transport).await;
        remember(&client, "the user drinks green tea every morning", None, json!({})).await;
        remember(&client, "tea tea tea: the user collects tea pots", None, json!({})).await;
        remember(&client, "the user's car is blue", None, json!({})).await;
        let out = answer(&call(&client, "recall", json!({ "query": "tea" })).await);
        assert_eq!(out["mode"], json!("keyword"), "{transport:?}");
        let texts = hit_texts(&out);
        assert_eq!(texts.len(), 2, "only memories containing the term: {out}");
        assert_eq!(
            texts[0], "tea tea tea: the user collects tea pots",
            "more occurrences rank higher (BM25)"
        );
        for (rank, hit) in out["hits"].as_array().unwrap().iter().enumerate() {
            assert_eq!(hit["keyword"]["rank"], json!(rank + 1));
            assert!(hit.get("vector").is_none(), "no vector signal without a vector: {hit}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_fuses_both_signals_and_reports_each_rank() {
    let (_dir, db) = open_db();
    let client = connect(
        EngramMcp::with_embedder(db, NAMESPACE, Arc::new(AxisEmbedder)).unwrap(),
        Transport::Duplex,
    )
    .await;
    remember(&client, "tea is the user's favourite drink", None, json!({})).await;
    remember(&client, "coffee keeps the user awake", None, json!({})).await;
    remember(&client, "walks after lunch", None, json!({})).await;

    // The query text is embedded (on the tea axis) and also matched by keyword.
    let out = answer(&call(&client, "recall", json!({ "query": "tea drink", "k": 3 })).await);
    assert_eq!(out["mode"], json!("hybrid"));
    let hits = out["hits"].as_array().unwrap();
    assert_eq!(hits[0]["text"], json!("tea is the user's favourite drink"));
    assert_eq!(hits[0]["vector"]["rank"], json!(1));
    assert_eq!(hits[0]["keyword"]["rank"], json!(1));
    assert!(
        (hits[0]["vector"]["score"].as_f64().unwrap() - 1.0).abs() < 1e-5,
        "cosine of identical directions: {out}"
    );
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");

    // An explicit vector mode ranks by similarity only.
    let out = answer(&call(&client, "recall", json!({ "query": "coffee", "mode": "vector", "k": 1 })).await);
    assert_eq!(out["mode"], json!("vector"));
    assert_eq!(hit_texts(&out), vec!["coffee keeps the user awake"]);
    assert!(out["hits"][0].get("keyword").is_none());

    // A vector alone is enough, without any text.
    let out = answer(&call(&client, "recall", json!({ "vector": [0.0, 0.0, 1.0], "k": 1 })).await);
    assert_eq!(out["mode"], json!("vector"));
    assert_eq!(hit_texts(&out), vec!["walks after lunch"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_keep_only_matching_metadata_and_k_caps_the_answer() {
    let (_dir, db) = open_db();
    let client = connect(EngramMcp::new(db, NAMESPACE).unwrap(), Transport::Duplex).await;
    for i in 0..6 {
        let topic = if i % 2 == 0 { "work" } else { "home" };
        remember(&client, &format!("note {i} about the project"), None, json!({ "topic": topic })).await;
    }
    let out = answer(
        &call(
            &client,
            "recall",
            json!({ "query": "project", "filter": { "topic": "home" }, "k": 10 }),
        )
        .await,
    );
    let texts = hit_texts(&out);
    assert_eq!(texts.len(), 3, "k larger than the matches returns every match: {out}");
    for hit in out["hits"].as_array().unwrap() {
        assert_eq!(hit["metadata"]["topic"], json!("home"));
    }
    let out = answer(&call(&client, "recall", json!({ "query": "project", "k": 2 })).await);
    assert_eq!(hit_texts(&out).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_as_of_sees_a_forgotten_memory_only_before_it_was_forgotten() {
    let (_dir, db) = open_db();
    let client = connect(EngramMcp::new(db, NAMESPACE).unwrap(), Transport::Duplex).await;
    let (id, remembered_lsn) = remember(&client, "the door code is 1234", None, json!({})).await;
    answer(&call(&client, "forget", json!({ "id": id })).await);

    let now = answer(&call(&client, "recall", json!({ "query": "door code" })).await);
    assert_eq!(hit_texts(&now), Vec::<String>::new());
    let then = answer(&call(&client, "recall", json!({ "query": "door code", "as_of": remembered_lsn })).await);
    assert_eq!(hit_texts(&then), vec!["the door code is 1234"]);
    assert_eq!(then["lsn"], json!(remembered_lsn), "the answer names the snapshot it searched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bound_is_a_clear_tool_error() {
    let (_dir, db) = open_db();
    let client = connect(EngramMcp::new(db.clone(), NAMESPACE).unwrap(), Transport::Duplex).await;
    remember(&client, "tea", Some(vec![1.0, 0.0, 0.0]), json!({})).await;
    let before = db.visible_lsn();
    let cases = [
        (json!({ "query": "tea", "k": 0 }), "k must be between 1 and 100"),
        (json!({ "query": "tea", "k": 101 }), "k must be between 1 and 100"),
        (json!({}), "recall needs a `query`, a `vector`, or both"),
        (json!({ "query": "   " }), "recall needs a `query`, a `vector`, or both"),
        (json!({ "query": "tea", "mode": "vector" }), "vector recall needs `vector`"),
        (
            json!({ "vector": [1.0, 0.0, 0.0], "mode": "keyword" }),
            "keyword recall needs `query`",
        ),
    ];
    for (args, message) in cases {
        let result = call(&client, "recall", args.clone()).await;
        assert_tool_error(&result, message);
    }
    // Errors from the search itself (wrong dimension, unknown field, bad namespace) are tool errors too.
    for args in [
        json!({ "vector": [1.0, 0.0] }),
        json!({ "query": "tea", "colour": "red" }),
        json!({ "query": "tea", "namespace": "../etc" }),
        json!({ "query": "tea", "mode": "sideways" }),
    ] {
        let result = call(&client, "recall", args.clone()).await;
        assert_eq!(result.is_error, Some(true), "{args} must be refused: {result:?}");
    }
    assert_eq!(db.visible_lsn(), before, "a read tool commits nothing");
}
