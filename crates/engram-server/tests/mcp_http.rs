//! MCP at `/mcp` of the served router: behind the API keys (an unscoped read-write key is
//! needed), on the configured namespace, with writes visible to the HTTP API.

mod common;

use common::{config, TestServer};
use reqwest::{Method, StatusCode};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};

const READ_WRITE: &str = "rw-key-0123456789abcdef";
const READ_ONLY: &str = "ro-key-0123456789abcdef";
const SCOPED: &str = "scoped-key-0123456789abcdef";

fn keys_config() -> String {
    format!(
        "mcp_namespace = \"agents\"\n\
         [[keys]]\nkey = \"{READ_WRITE}\"\nrole = \"read_write\"\n\
         [[keys]]\nkey = \"{READ_ONLY}\"\nrole = \"read_only\"\n\
         [[keys]]\nkey = \"{SCOPED}\"\nrole = \"read_write\"\nnamespaces = [\"agents\"]\n"
    )
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
}

async fn raw_initialize(s: &TestServer, key: Option<&str>, host: Option<&str>) -> (StatusCode, String) {
    let mut request = s
        .client
        .post(s.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&initialize());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let response = request.send().await.expect("request");
    (response.status(), response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_http_needs_an_unscoped_read_write_key() {
    let mut s = TestServer::start_with(config(&keys_config())).await;

    let (status, body) = raw_initialize(&s, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], "unauthenticated");
    let (status, body) = raw_initialize(&s, Some("not-a-key-0123456789"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    for key in [READ_ONLY, SCOPED] {
        let (status, body) = raw_initialize(&s, Some(key), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], "forbidden");
    }
    // A valid key from a Host the server was not configured for (DNS rebinding) is refused.
    let (status, body) = raw_initialize(&s, Some(READ_WRITE), Some("attacker.example")).await;
    assert!(status.is_client_error(), "{status} {body}");
    let (status, body) = raw_initialize(&s, Some(READ_WRITE), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A real MCP client with the read-write key.
    let transport =
        StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(s.url("/mcp")).auth_header(READ_WRITE));
    let client = ().serve(transport).await.expect("MCP handshake with the key");
    let tools = client.list_tools(Default::default()).await.expect("tools/list");
    assert!(tools.tools.iter().any(|t| t.name == "create_entities"));
    let Value::Object(arguments) = json!({"entities": [{"name": "ada", "entityType": "person", "observations": ["counts"]}]}) else {
        unreachable!()
    };
    let created = client
        .call_tool(CallToolRequestParams::new("create_entities").with_arguments(arguments))
        .await
        .expect("tools/call");
    assert_ne!(created.is_error, Some(true), "{created:?}");
    let graph = client
        .call_tool(CallToolRequestParams::new("read_graph"))
        .await
        .expect("tools/call read_graph");
    assert_eq!(
        graph.structured_content,
        Some(json!({"entities": [{"name": "ada", "entityType": "person", "observations": ["counts"]}], "relations": []}))
    );
    client.cancel().await.expect("close the MCP session");

    // The tools wrote to the configured namespace, durably, as one commit each.
    s.key = Some(READ_ONLY.to_string());
    let read = s.ok(Method::GET, "/v1/namespaces/agents/graph/read_graph", None).await;
    assert_eq!(read["entities"][0]["name"], "ada");
    let other = s.ok(Method::GET, "/v1/namespaces/default/graph/read_graph", None).await;
    assert_eq!(other["entities"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_mcp_is_open_on_loopback_and_configured_hosts_are_accepted() {
    let s = TestServer::start_with(config("mcp_allowed_hosts = [\"memory.internal\", \"127.0.0.1\"]\n")).await;
    let (status, body) = raw_initialize(&s, None, Some("memory.internal")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = raw_initialize(&s, None, Some("localhost")).await;
    assert!(status.is_client_error(), "localhost is not in the configured list: {status} {body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_remember_uses_the_servers_embedder() {
    let fake = common::fake_embedder::start_fake().await;
    let s = TestServer::start_with(config(&format!("[embedder]\nurl = \"http://{fake}/v1\"\nmodel = \"fake-model\"\n"))).await;
    let client = ().serve(StreamableHttpClientTransport::from_uri(s.url("/mcp"))).await.expect("MCP handshake");
    let Value::Object(arguments) = json!({"text": "hello", "namespace": "notes"}) else {
        unreachable!()
    };
    let remembered = client
        .call_tool(CallToolRequestParams::new("remember").with_arguments(arguments))
        .await
        .expect("tools/call remember");
    assert_ne!(remembered.is_error, Some(true), "{remembered:?}");
    let id = remembered
        .structured_content
        .as_ref()
        .and_then(|c| c["id"].as_str())
        .expect("an id")
        .to_string();
    let Value::Object(arguments) = json!({"text": "make the embedder fail"}) else {
        unreachable!()
    };
    let failed = client
        .call_tool(CallToolRequestParams::new("remember").with_arguments(arguments))
        .await
        .expect("tools/call remember");
    assert_eq!(failed.is_error, Some(true), "an embedder failure is a tool error: {failed:?}");
    client.cancel().await.expect("close the MCP session");

    let memory = s.ok(Method::GET, &format!("/v1/namespaces/notes/memories/{id}"), None).await;
    assert_eq!(memory["embedding"], json!(common::fake_embedder::fake_vector("hello")));
    let found = s
        .ok(
            Method::POST,
            "/v1/namespaces/notes/search",
            Some(json!({"query": "hello", "k": 1, "mode": "vector"})),
        )
        .await;
    assert_eq!(found["hits"][0]["memory"]["id"], id.as_str());
    s.stop().await;
}
