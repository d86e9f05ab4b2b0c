//! `engram mcp` end to end: the real binary, JSON-RPC over its standard input and output, as an
//! MCP client configured with `{"command": "engram", "args": ["mcp", ...]}` talks to it.

use engram_core::{Database, DatabaseOptions, GraphReads};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_engram");
const ANSWER_WAIT: Duration = Duration::from_secs(60);

fn send(stdin: &mut ChildStdin, message: Value) {
    let mut line = serde_json::to_string(&message).unwrap();
    line.push('\n');
    stdin.write_all(line.as_bytes()).expect("write to engram mcp");
    stdin.flush().unwrap();
}

/// The next line the server wrote on stdout, which must be one JSON-RPC message.
fn receive(lines: &Receiver<String>) -> Value {
    let line = lines.recv_timeout(ANSWER_WAIT).expect("engram mcp answers");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout carries only JSON-RPC, got {line:?}: {e}"))
}

fn call(stdin: &mut ChildStdin, lines: &Receiver<String>, id: u64, method: &str, params: Value) -> Value {
    send(stdin, json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
    let answer = receive(lines);
    assert_eq!(answer["jsonrpc"], "2.0", "{answer}");
    assert_eq!(answer["id"], id, "answers come in order for a sequential client: {answer}");
    assert!(answer.get("error").is_none(), "{method} failed: {answer}");
    answer["result"].clone()
}

#[test]
fn engram_mcp_serves_the_reference_tools_on_stdio_and_the_writes_are_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut child = Command::new(BIN)
        .args(["mcp", "--namespace", "agent-7", "--data"])
        .arg(&data)
        .env("RUST_LOG", "debug")
        .env_remove("ENGRAM_EMBEDDER_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start engram mcp");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let logs = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    let init = call(
        &mut stdin,
        &lines,
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "cli-test", "version": "1"}}),
    );
    assert_eq!(init["serverInfo"]["name"], "engram", "{init}");
    assert!(init["capabilities"]["tools"].is_object(), "{init}");
    send(&mut stdin, json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));

    let listed = call(&mut stdin, &lines, 2, "tools/list", json!({}));
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for tool in [
        "create_entities",
        "create_relations",
        "add_observations",
        "delete_entities",
        "delete_observations",
        "delete_relations",
        "read_graph",
        "search_nodes",
        "open_nodes",
        "remember",
        "forget",
        "history",
    ] {
        assert!(names.contains(&tool), "{tool} missing from {names:?}");
    }

    let created = call(
        &mut stdin,
        &lines,
        3,
        "tools/call",
        json!({"name": "create_entities", "arguments": {"entities": [
            {"name": "Ada", "entityType": "person", "observations": ["wrote the first program"]},
            {"name": "Engine", "entityType": "machine", "observations": []}
        ]}}),
    );
    assert!(created.get("isError").is_none() || created["isError"] == false, "{created}");
    assert_eq!(
        created["structuredContent"]["entities"],
        json!([
            {"name": "Ada", "entityType": "person", "observations": ["wrote the first program"]},
            {"name": "Engine", "entityType": "machine", "observations": []}
        ])
    );
    call(
        &mut stdin,
        &lines,
        4,
        "tools/call",
        json!({"name": "create_relations", "arguments": {"relations": [{"from": "Ada", "to": "Engine", "relationType": "programmed"}]}}),
    );
    let graph = call(&mut stdin, &lines, 5, "tools/call", json!({"name": "read_graph", "arguments": {}}));
    let expected_graph = json!({
        "entities": [
            {"name": "Ada", "entityType": "person", "observations": ["wrote the first program"]},
            {"name": "Engine", "entityType": "machine", "observations": []}
        ],
        "relations": [{"from": "Ada", "to": "Engine", "relationType": "programmed"}]
    });
    assert_eq!(graph["structuredContent"], expected_graph);
    let text = graph["content"][0]["text"].as_str().expect("text content");
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), expected_graph);

    // A bad call is a tool error, and the session goes on.
    let bad = call(
        &mut stdin,
        &lines,
        6,
        "tools/call",
        json!({"name": "open_nodes", "arguments": {"nodes": []}}),
    );
    assert_eq!(bad["isError"], true, "{bad}");

    // Closing standard input ends the session and the process, cleanly.
    drop(stdin);
    let status = child.wait().expect("engram mcp exits");
    let logs = logs.join().unwrap();
    assert!(status.success(), "exit {status}; stderr:\n{logs}");
    assert!(lines.try_recv().is_err(), "nothing but answers on stdout");
    assert!(logs.contains("serving MCP on stdio"), "logs go to stderr:\n{logs}");

    // What the tools wrote is in the database, in the namespace given on the command line.
    let db = Database::open(&data, DatabaseOptions::default()).unwrap();
    let stored = db.snapshot().read_graph("agent-7").unwrap();
    assert_eq!(stored.entities.len(), 2);
    assert_eq!(stored.relations.len(), 1);
    assert!(db.snapshot().read_graph("default").unwrap().entities.is_empty());
}
