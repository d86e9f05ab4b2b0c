//! Shared by the MCP tests: a database in a temporary directory, and a real rmcp client
//! connected to `EngramMcp` over an in-process duplex pipe or over streamable HTTP (axum on a
//! loopback port).

#![allow(dead_code)] // not every helper is used by every test

use engram_core::{Database, DatabaseOptions};
use engram_mcp::{EngramMcp, StreamableHttpServerConfig};
use rmcp::model::{CallToolRequestParams, CallToolResult, ReadResourceRequestParams};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use tempfile::TempDir;

pub type Client = RunningService<RoleClient, ()>;

pub const NAMESPACE: &str = "default";

pub fn open_db() -> (TempDir, Database) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = Database::open(dir.path(), DatabaseOptions::default()).expect("open database");
    (dir, db)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The client and the server on the two ends of a `tokio::io::duplex` pipe.
    Duplex,
    /// The server mounted at /mcp in an axum router on 127.0.0.1:0; the client speaks
    /// streamable HTTP to it.
    Http,
}

pub const TRANSPORTS: [Transport; 2] = [Transport::Duplex, Transport::Http];

pub async fn connect(server: EngramMcp, transport: Transport) -> Client {
    match transport {
        Transport::Duplex => {
            let (client_end, server_end) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                if let Ok(running) = server.serve(server_end).await {
                    let _ = running.waiting().await;
                }
            });
            ().serve(client_end).await.expect("client handshake over the duplex pipe")
        }
        Transport::Http => {
            let url = serve_http(server).await;
            ().serve(StreamableHttpClientTransport::from_uri(url))
                .await
                .expect("client handshake over streamable HTTP")
        }
    }
}

/// Mounts the server at /mcp of an axum router, next to another route (as engram-server will),
/// on a loopback port; returns the MCP URL.
pub async fn serve_http(server: EngramMcp) -> String {
    let service = server.streamable_http_service_with(StreamableHttpServerConfig::default());
    let router = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{address}/mcp")
}

pub async fn call(client: &Client, tool: &str, arguments: Value) -> CallToolResult {
    let Value::Object(arguments) = arguments else {
        panic!("tool arguments must be a JSON object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(arguments))
        .await
        .unwrap_or_else(|e| panic!("{tool}: protocol error {e}"))
}

/// The result as it travels: content, structuredContent and isError (absent when not set),
/// except that a text block holding a JSON array or object is shown parsed, under "json", so that
/// expectations can be written with `json!` (whose objects sort their keys). The exact text,
/// key order and indentation included, is checked by `text_content_is_indented_by_two_spaces_like_json_stringify`.
pub fn wire(result: &CallToolResult) -> Value {
    let mut value = serde_json::to_value(result).expect("a result serialises");
    if let Value::Object(map) = &mut value {
        map.remove("resultType");
        map.remove("_meta");
        if let Some(Value::Array(blocks)) = map.get_mut("content") {
            for block in blocks {
                let parsed = block["text"].as_str().and_then(|t| serde_json::from_str::<Value>(t).ok());
                if let Some(parsed @ (Value::Array(_) | Value::Object(_))) = parsed {
                    let block = block.as_object_mut().expect("a content block is an object");
                    block.remove("text");
                    block.insert("json".into(), parsed);
                }
            }
        }
    }
    value
}

/// The text of a single-text-content result.
pub fn text(result: &CallToolResult) -> String {
    assert_eq!(result.content.len(), 1, "one content block expected: {result:?}");
    result.content[0].as_text().map(|t| t.text.clone()).expect("a text content block")
}

/// A successful result in the reference's shape (as `wire` shows it): the text is `text_of` as
/// JSON, the structured content is `structured`, and there is no isError.
pub fn success_json(text_of: &Value, structured: Value) -> Value {
    json!({
        "content": [{ "type": "text", "json": text_of }],
        "structuredContent": structured,
    })
}

/// The reference's result for a delete tool.
pub fn status(message: &str) -> Value {
    json!({
        "content": [{ "type": "text", "text": message }],
        "structuredContent": { "success": true, "message": message },
    })
}

/// A tool error result with exactly this text.
pub fn tool_error(message: &str) -> Value {
    json!({ "content": [{ "type": "text", "text": message }], "isError": true })
}

/// Asserts that a call failed with a tool error whose text starts with `prefix`.
pub fn assert_tool_error(result: &CallToolResult, prefix: &str) {
    assert_eq!(result.is_error, Some(true), "expected a tool error, got {result:?}");
    let message = text(result);
    assert!(message.starts_with(prefix), "error text {message:?} should start with {prefix:?}");
}

pub async fn read_graph_resource(client: &Client) -> Value {
    let result = client
        .read_resource(ReadResourceRequestParams::new(engram_mcp::KNOWLEDGE_GRAPH_URI))
        .await
        .expect("resources/read");
    serde_json::to_value(&result.contents).expect("contents serialise")
}

pub fn entity(name: &str, entity_type: &str, observations: &[&str]) -> Value {
    json!({ "name": name, "entityType": entity_type, "observations": observations })
}

pub fn relation(from: &str, to: &str, relation_type: &str) -> Value {
    json!({ "from": from, "to": to, "relationType": relation_type })
}

pub fn graph(entities: Vec<Value>, relations: Vec<Value>) -> Value {
    json!({ "entities": entities, "relations": relations })
}
