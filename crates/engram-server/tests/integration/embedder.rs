//! The embedder client against a small local OpenAI-compatible endpoint (a real axum server on a
//! loopback port returning deterministic vectors).

use crate::common;

use common::fake_embedder::{fake_vector, start_fake};
use common::{config, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_only_memories_are_embedded_on_write() {
    let fake = start_fake().await;
    let s = TestServer::start_with(config(&format!(
        "[embedder]\nurl = \"http://{fake}/v1\"\nmodel = \"fake-model\"\napi_key = \"sk-test\"\n"
    )))
    .await;
    let (status, created) = s.post("/v1/namespaces/a/memories", json!({"text": "hello"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["embedding"], "embedded");
    let id = created["id"].as_str().unwrap();
    let read = s.ok(Method::GET, &format!("/v1/namespaces/a/memories/{id}"), None).await;
    assert_eq!(read["embedding"], json!(fake_vector("hello")));

    // A given embedding is kept as given.
    let (_, given) = s
        .post("/v1/namespaces/a/memories", json!({"text": "x", "embedding": [9.0, 9.0, 9.0]}))
        .await;
    assert_eq!(given["embedding"], "given");

    // A new text is re-embedded.
    let patched = s
        .ok(
            Method::PATCH,
            &format!("/v1/namespaces/a/memories/{id}"),
            Some(json!({"text": "bye now"})),
        )
        .await;
    assert_eq!(patched["embedding"], json!(fake_vector("bye now")));

    // In a transaction, each insert gets its own vector.
    let result = s
        .ok(
            Method::POST,
            "/v1/transactions",
            Some(json!({"operations": [
                {"op": "insert_memory", "namespace": "a", "text": "one"},
                {"op": "insert_memory", "namespace": "a", "text": "three"}
            ]})),
        )
        .await;
    for (i, text) in ["one", "three"].iter().enumerate() {
        assert_eq!(result["results"][i]["embedding"], "embedded");
        let id = result["results"][i]["id"].as_str().unwrap();
        let read = s.ok(Method::GET, &format!("/v1/namespaces/a/memories/{id}"), None).await;
        assert_eq!(read["embedding"], json!(fake_vector(text)));
    }

    let stats = s.ok(Method::GET, "/v1/stats", None).await;
    assert_eq!(stats["embedder"]["model"], "fake-model");

    // A failing embedder is a 502 and nothing is written.
    let lsn = s.visible_lsn().await;
    let (status, err) = s.post("/v1/namespaces/a/memories", json!({"text": "make the embedder fail"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{err}");
    assert_eq!(err["code"], "embedder_failed");
    assert_eq!(s.visible_lsn().await, lsn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_embedder_is_a_502_not_a_write() {
    // A port nobody listens on: bind, take the address, close.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = TestServer::start_with(config(&format!(
        "[embedder]\nurl = \"http://{addr}/v1\"\nmodel = \"fake-model\"\ntimeout_ms = 2000\n"
    )))
    .await;
    let (status, err) = s.post("/v1/namespaces/a/memories", json!({"text": "hello"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{err}");
    assert_eq!(s.visible_lsn().await, 0);
}
