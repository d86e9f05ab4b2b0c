//! MCP at `/mcp` of the served router: behind the API keys (scopes apply per tool call), on the
//! configured namespace, with writes visible to the HTTP API.

use crate::common;

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
const SCOPED_READ_ONLY: &str = "scoped-ro-key-0123456789abcdef";
const ELSEWHERE: &str = "elsewhere-key-0123456789abcdef";

fn keys_config() -> String {
    format!(
        "mcp_namespace = \"agents\"\n\
         [[keys]]\nkey = \"{READ_WRITE}\"\nrole = \"read_write\"\n\
         [[keys]]\nkey = \"{READ_ONLY}\"\nrole = \"read_only\"\n\
         [[keys]]\nkey = \"{SCOPED}\"\nrole = \"read_write\"\nnamespaces = [\"agents\", \"notes\"]\n\
         [[keys]]\nkey = \"{SCOPED_READ_ONLY}\"\nrole = \"read_only\"\nnamespaces = [\"agents\"]\n\
         [[keys]]\nkey = \"{ELSEWHERE}\"\nrole = \"admin\"\nnamespaces = [\"elsewhere\"]\n"
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
async fn mcp_over_http_needs_a_key_that_reaches_the_mcp_namespace() {
    let mut s = TestServer::start_with(config(&keys_config())).await;

    let (status, body) = raw_initialize(&s, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], "unauthenticated");
    let (status, body) = raw_initialize(&s, Some("not-a-key-0123456789"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // A key limited to namespaces without the MCP namespace cannot open /mcp at all.
    let (status, body) = raw_initialize(&s, Some(ELSEWHERE), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let refusal: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refusal["code"], "forbidden");
    assert!(refusal["message"].as_str().unwrap().contains("\"agents\""), "{refusal}");
    // Read-only keys and keys whose scope holds the MCP namespace can (their calls are checked).
    for key in [READ_ONLY, SCOPED, SCOPED_READ_ONLY] {
        let (status, body) = raw_initialize(&s, Some(key), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
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

fn arguments(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("tool arguments must be an object, not {other}"),
    }
}

/// One call of every tool, with arguments that succeed for a caller allowed to make it
/// (`memory_id` names a memory of the MCP namespace, which `forget` deletes).
fn every_tool_call(memory_id: &str) -> Vec<(&'static str, Value)> {
    vec![
        (
            "create_entities",
            json!({"entities": [{"name": "bob", "entityType": "person", "observations": ["x"]}]}),
        ),
        (
            "create_relations",
            json!({"relations": [{"from": "ada", "to": "ada", "relationType": "knows"}]}),
        ),
        (
            "add_observations",
            json!({"observations": [{"entityName": "ada", "contents": ["more"]}]}),
        ),
        (
            "delete_observations",
            json!({"deletions": [{"entityName": "ada", "observations": ["absent"]}]}),
        ),
        (
            "delete_relations",
            json!({"relations": [{"from": "ada", "to": "nobody", "relationType": "knows"}]}),
        ),
        ("delete_entities", json!({"entityNames": ["nobody"]})),
        ("remember", json!({"text": "a note"})),
        ("forget", json!({"id": memory_id})),
        ("read_graph", json!({})),
        ("search_nodes", json!({"query": "ada"})),
        ("open_nodes", json!({"names": ["ada"]})),
        ("recall", json!({"query": "note", "mode": "keyword"})),
        ("history", json!({"entityName": "ada"})),
    ]
}

async fn connect(s: &TestServer, key: &str) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    let transport =
        StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(s.url("/mcp")).auth_header(key));
    ().serve(transport).await.expect("MCP handshake")
}

async fn call(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    tool: &'static str,
    args: Value,
) -> rmcp::model::CallToolResult {
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(arguments(args)))
        .await
        .expect("tools/call answers (refusals are tool errors)")
}

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_scopes_apply_per_tool_call() {
    let mut s = TestServer::start_with(config(&keys_config())).await;
    s.key = Some(READ_WRITE.to_string());
    s.ok(
        Method::POST,
        "/v1/namespaces/agents/graph/create_entities",
        Some(json!({"entities": [{"name": "ada", "entityType": "person", "observations": ["counts"]}]})),
    )
    .await;
    let memory = s
        .ok(Method::POST, "/v1/namespaces/agents/memories", Some(json!({"text": "to forget"})))
        .await;
    let memory_id = memory["id"].as_str().expect("a memory id").to_string();
    let before = s.ok(Method::GET, "/v1/namespaces/agents/graph/read_graph", None).await;
    let lsn_before = s.visible_lsn().await;

    // Read-only keys (scoped or not): every read tool and the resource work, every write tool
    // is refused with a tool error naming the reason, and nothing is written.
    for key in [READ_ONLY, SCOPED_READ_ONLY] {
        let client = connect(&s, key).await;
        for (tool, args) in every_tool_call(&memory_id) {
            let result = call(&client, tool, args).await;
            if engram_mcp::READ_TOOLS.contains(&tool) {
                assert_ne!(result.is_error, Some(true), "{key}: {tool} reads: {result:?}");
            } else {
                assert_eq!(result.is_error, Some(true), "{key}: {tool} writes: {result:?}");
                let text = text_of(&result);
                assert!(
                    text.starts_with("forbidden:") && text.contains("read-only") && text.contains(tool),
                    "{text}"
                );
            }
        }
        let resource = client
            .read_resource(rmcp::model::ReadResourceRequestParams::new(engram_mcp::KNOWLEDGE_GRAPH_URI))
            .await
            .expect("a read-only key reads the knowledge-graph resource");
        assert_eq!(resource.contents.len(), 1);
        client.cancel().await.expect("close the MCP session");
    }
    assert_eq!(s.ok(Method::GET, "/v1/namespaces/agents/graph/read_graph", None).await, before);
    assert_eq!(s.visible_lsn().await, lsn_before, "refused calls commit nothing");

    // A namespace-scoped key: every tool in its namespaces, none outside them.
    let client = connect(&s, SCOPED).await;
    for (tool, args) in every_tool_call(&memory_id) {
        let result = call(&client, tool, args).await;
        assert_ne!(result.is_error, Some(true), "{tool} in the MCP namespace: {result:?}");
    }
    for (tool, namespace) in [("remember", "notes"), ("recall", "notes")] {
        let args = match tool {
            "remember" => json!({"text": "in scope", "namespace": namespace}),
            _ => json!({"query": "scope", "mode": "keyword", "namespace": namespace}),
        };
        assert_ne!(call(&client, tool, args).await.is_error, Some(true), "{tool} in {namespace}");
    }
    let lsn = s.visible_lsn().await;
    for (tool, args) in [
        ("remember", json!({"text": "outside", "namespace": "private"})),
        ("recall", json!({"query": "outside", "mode": "keyword", "namespace": "private"})),
        ("history", json!({"entityName": "ada", "namespace": "private"})),
        ("forget", json!({"id": "01J00000000000000000000000", "namespace": "private"})),
    ] {
        let result = call(&client, tool, args).await;
        assert_eq!(result.is_error, Some(true), "{tool} outside the key's namespaces: {result:?}");
        assert!(text_of(&result).contains("may not access namespace \"private\""), "{result:?}");
    }
    client.cancel().await.expect("close the MCP session");
    assert_eq!(s.visible_lsn().await, lsn, "refused calls commit nothing");
    s.stop().await;
}
