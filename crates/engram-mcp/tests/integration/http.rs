//! The streamable HTTP service under malformed requests: each gets a 4xx, the server keeps
//! serving, and nothing is committed. Requests are written by hand on a loopback socket so that
//! they can be as wrong as a hostile client makes them.

use crate::common;

use common::*;
use engram_mcp::EngramMcp;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one HTTP/1.1 request and returns the status code.
async fn status_of(address: &str, host: &str, content_type: &str, accept: &str, body: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nAccept: {accept}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_requests_get_4xx_and_change_nothing() {
    let (_dir, db) = open_db();
    let url = serve_http(EngramMcp::new(db.clone(), NAMESPACE).unwrap()).await;
    let address = url.trim_start_matches("http://").trim_end_matches("/mcp").to_string();
    let both = "application/json, text/event-stream";
    let before = db.visible_lsn();
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "raw", "version": "1" } }
    })
    .to_string();
    let call_without_session = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": "create_entities", "arguments": { "entities": [{ "name": "X", "entityType": "t", "observations": [] }] } }
    })
    .to_string();
    let cases: Vec<(&str, &str, &str, &str, Vec<u8>)> = vec![
        ("not JSON", "127.0.0.1", "application/json", both, b"{not json".to_vec()),
        ("not UTF-8", "127.0.0.1", "application/json", both, vec![0xff, 0xfe, 0x00]),
        (
            "JSON but not JSON-RPC",
            "127.0.0.1",
            "application/json",
            both,
            b"[1, 2, 3]".to_vec(),
        ),
        (
            "wrong content type",
            "127.0.0.1",
            "text/plain",
            both,
            initialize.clone().into_bytes(),
        ),
        (
            "a foreign Host (DNS rebinding)",
            "evil.example",
            "application/json",
            both,
            initialize.clone().into_bytes(),
        ),
        (
            "a tool call without a session",
            "127.0.0.1",
            "application/json",
            both,
            call_without_session.into_bytes(),
        ),
    ];
    // The control: the same helper's well-formed initialize is accepted.
    assert_eq!(
        status_of(&address, "127.0.0.1", "application/json", both, initialize.as_bytes()).await,
        200
    );
    for (what, host, content_type, accept, body) in cases {
        let status = status_of(&address, host, content_type, accept, &body).await;
        assert!((400..500).contains(&status), "{what}: got HTTP {status}");
    }
    assert_eq!(db.visible_lsn(), before, "a malformed request committed something");
    // The server still serves a proper client.
    let client = connect(EngramMcp::new(db.clone(), NAMESPACE).unwrap(), Transport::Http).await;
    let result = call(&client, "read_graph", json!({})).await;
    assert_eq!(result.is_error, None);
}
