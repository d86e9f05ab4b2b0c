//! The `mcp_request` fuzz target: a JSON-RPC session with the MCP server (`engram_mcp::EngramMcp`)
//! over its real stdio transport, rmcp's newline-delimited JSON codec, on the two ends of a
//! `tokio::io::duplex` pipe. Each input is one session: the initialize handshake, then fuzzed
//! messages, then end of input (the server must end the session).
//!
//! The messages: `tools/call` with any of the thirteen tools (the reference's nine, remember,
//! recall, forget, history) or a made-up name, with arguments shaped like the tool's schema and
//! mutated (fields dropped, retyped, added; `as_of` as LSNs, times and garbage); `resources/read`
//! with the knowledge-graph URI or others; list, ping and unknown methods; notifications; JSON
//! that is no message; raw bytes (newlines split them into several lines). Inputs starting with
//! `LINES\n` are instead sent as they are, one message per line (the seeds, from the MCP tests).
//!
//! Checked: no panic; every line the server writes is a well-formed JSON-RPC 2.0 message (a
//! result or an error `{code, message}` with an id, or a notification); every request gets its
//! answer (within a generous timeout); a tool call that answers with an error (a JSON-RPC error
//! or `isError: true`) commits nothing (the visible LSN is unchanged); `remember` and `forget`
//! answer with the LSN of their commit, visible afterwards. Messages go one at a time: a request
//! is followed by its answer, anything else by a `ping` whose answer shows the server is done
//! with it, so each LSN check sees only its own call.

use super::seed::{seeded_database, DIMENSION, ENTITIES, KEYS, NAMESPACES, RELATION_TYPES};
use super::values::{any_object, any_value, as_of, list, number, optional, shaped, text, vector};
use arbitrary::{Result as Drawn, Unstructured};
use engram_core::Database;
use engram_mcp::{EngramMcp, KNOWLEDGE_GRAPH_URI};
use rmcp::model::{ClientJsonRpcMessage, JsonRpcMessage};
use rmcp::ServiceExt;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

/// The namespace of the reference tools.
pub const MCP_NAMESPACE: &str = "alpha";
/// Inputs that start with this are sent as they are, one message per line.
pub const LINES_PREFIX: &[u8] = b"LINES\n";

/// Longest wait for one answer: far above any real answer, so hitting it is a hang.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// At most this many fuzzed messages per session.
const MAX_MESSAGES: usize = 8;
/// After this many commits the harness starts again from a fresh seeded database.
const RESEED_AFTER_COMMITS: u64 = 20_000;
const PIPE_BYTES: usize = 4 << 20;

const TOOLS: [&str; 13] = [
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
    "recall",
    "forget",
    "history",
];

struct Harness {
    runtime: tokio::runtime::Runtime,
    db: Arc<Database>,
    server: EngramMcp,
    words: Vec<&'static str>,
    memory_ids: Vec<&'static str>,
    seed_lsn: u64,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let seeded = seeded_database();
        let db = Arc::new(seeded.db);
        let seed_lsn = db.visible_lsn();
        let server = EngramMcp::new(db.clone(), MCP_NAMESPACE).expect("a valid namespace");
        let memory_ids: Vec<&'static str> = seeded.memory_ids.into_iter().map(|id| &*Box::leak(id.into_boxed_str())).collect();
        let mut words: Vec<&'static str> = Vec::new();
        words.extend(NAMESPACES);
        words.extend(ENTITIES);
        words.extend(RELATION_TYPES);
        words.extend(KEYS);
        words.extend(&memory_ids);
        words.extend(["person", "tea", "topic", "food", "likes tea", "Alice is in alpha"]);
        Harness {
            runtime,
            db,
            server,
            words,
            memory_ids,
            seed_lsn,
            _dir: seeded.dir,
        }
    }
}

fn harness() -> MutexGuard<'static, Harness> {
    static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();
    let mut guard = HARNESS
        .get_or_init(|| Mutex::new(Harness::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if guard.db.visible_lsn() > guard.seed_lsn + RESEED_AFTER_COMMITS {
        *guard = Harness::new();
    }
    guard
}

struct Context<'a> {
    words: &'a [&'static str],
    memory_ids: &'a [&'static str],
    lsn: u64,
}

impl Context<'_> {
    fn word(&self, u: &mut Unstructured) -> Drawn<Value> {
        Ok(Value::String(text(u, self.words)?))
    }

    fn pick(&self, u: &mut Unstructured, known: &[&str]) -> Drawn<Value> {
        if u.ratio(3u8, 4)? {
            Ok(Value::String(u.choose(known)?.to_string()))
        } else {
            self.word(u)
        }
    }

    fn entity(&self, u: &mut Unstructured) -> Drawn<Value> {
        self.pick(u, &ENTITIES)
    }

    fn words_list(&self, u: &mut Unstructured) -> Drawn<Value> {
        list(u, 3, |u| self.word(u))
    }

    fn entity_json(&self, u: &mut Unstructured) -> Drawn<Value> {
        let fields = vec![
            ("name", Some(self.entity(u)?)),
            ("entityType", Some(self.word(u)?)),
            ("observations", Some(self.words_list(u)?)),
        ];
        shaped(u, self.words, fields)
    }

    fn relation_json(&self, u: &mut Unstructured) -> Drawn<Value> {
        let fields = vec![
            ("from", Some(self.entity(u)?)),
            ("to", Some(self.entity(u)?)),
            ("relationType", Some(self.pick(u, &RELATION_TYPES)?)),
        ];
        shaped(u, self.words, fields)
    }

    fn observations_json(&self, u: &mut Unstructured, field: &'static str) -> Drawn<Value> {
        let fields = vec![("entityName", Some(self.entity(u)?)), (field, Some(self.words_list(u)?))];
        shaped(u, self.words, fields)
    }

    fn namespace(&self, u: &mut Unstructured) -> Drawn<Option<Value>> {
        optional(u, |u| self.pick(u, &NAMESPACES))
    }

    fn as_of(&self, u: &mut Unstructured) -> Drawn<Option<Value>> {
        optional(u, |u| as_of(u, self.words, self.lsn))
    }

    /// Arguments shaped like `tool`'s input schema.
    fn arguments(&self, u: &mut Unstructured, tool: &str) -> Drawn<Value> {
        let w = self.words;
        let fields: Vec<(&str, Option<Value>)> = match tool {
            "create_entities" => vec![("entities", Some(list(u, 3, |u| self.entity_json(u))?))],
            "create_relations" | "delete_relations" => vec![("relations", Some(list(u, 3, |u| self.relation_json(u))?))],
            "add_observations" => vec![("observations", Some(list(u, 3, |u| self.observations_json(u, "contents"))?))],
            "delete_entities" => vec![("entityNames", Some(list(u, 3, |u| self.entity(u))?))],
            "delete_observations" => vec![("deletions", Some(list(u, 3, |u| self.observations_json(u, "observations"))?))],
            "read_graph" => vec![("as_of", self.as_of(u)?)],
            "search_nodes" => vec![("query", Some(self.word(u)?)), ("as_of", self.as_of(u)?)],
            "open_nodes" => vec![("names", Some(list(u, 3, |u| self.entity(u))?)), ("as_of", self.as_of(u)?)],
            "remember" => vec![
                ("text", Some(self.word(u)?)),
                ("metadata", optional(u, |u| Ok(Value::Object(any_object(u, w, 1)?)))?),
                ("embedding", optional(u, |u| vector(u, DIMENSION))?),
                ("namespace", self.namespace(u)?),
            ],
            "recall" => vec![
                ("query", optional(u, |u| self.word(u))?),
                ("vector", optional(u, |u| vector(u, DIMENSION))?),
                ("k", optional(u, |u| number(u, 0))?),
                ("mode", optional(u, |u| self.pick(u, &["hybrid", "vector", "keyword"]))?),
                ("filter", optional(u, |u| Ok(Value::Object(any_object(u, w, 1)?)))?),
                ("namespace", self.namespace(u)?),
                ("as_of", self.as_of(u)?),
            ],
            "forget" => vec![("id", Some(self.pick(u, self.memory_ids)?)), ("namespace", self.namespace(u)?)],
            "history" => {
                let (field, value) = match u.int_in_range(0u8..=2)? {
                    0 => ("id", self.pick(u, self.memory_ids)?),
                    1 => ("entityName", self.entity(u)?),
                    _ => ("key", self.pick(u, &KEYS)?),
                };
                vec![
                    (field, Some(value)),
                    ("id", optional(u, |u| self.pick(u, self.memory_ids))?.filter(|_| field != "id")),
                    ("namespace", self.namespace(u)?),
                    ("as_of", self.as_of(u)?),
                ]
            }
            _ => return Ok(Value::Object(any_object(u, w, 2)?)),
        };
        shaped(u, w, fields)
    }

    /// One message line (without its newline).
    fn message(&self, u: &mut Unstructured, id: i64) -> Drawn<Vec<u8>> {
        let id = if u.ratio(1u8, 12)? { json!(format!("r-{id}")) } else { json!(id) };
        let request = |method: &str, params: Option<Value>| {
            let mut message = json!({ "jsonrpc": "2.0", "id": id, "method": method });
            if let Some(params) = params {
                message["params"] = params;
            }
            message
        };
        let message = match u.int_in_range(0u8..=19)? {
            0..=11 => {
                let name = if u.ratio(15u8, 16)? {
                    u.choose(&TOOLS)?.to_string()
                } else {
                    text(u, self.words)?
                };
                let arguments = self.arguments(u, &name)?;
                request("tools/call", Some(json!({ "name": name, "arguments": arguments })))
            }
            12 => {
                let uri = if u.ratio(2u8, 3)? {
                    KNOWLEDGE_GRAPH_URI.to_string()
                } else {
                    text(u, &[KNOWLEDGE_GRAPH_URI, "memory://other", "file:///etc/passwd", ""])?
                };
                request("resources/read", Some(json!({ "uri": uri })))
            }
            13 => {
                let method = *u.choose(&[
                    "tools/list",
                    "resources/list",
                    "resources/templates/list",
                    "prompts/list",
                    "ping",
                    "initialize",
                    "logging/setLevel",
                    "completion/complete",
                    "no/such_method",
                ])?;
                let params = optional(u, |u| any_value(u, self.words, 2))?;
                request(method, params)
            }
            14 => {
                let method = *u.choose(&[
                    "notifications/initialized",
                    "notifications/cancelled",
                    "notifications/progress",
                    "notifications/roots/list_changed",
                    "notifications/whatever",
                ])?;
                json!({ "jsonrpc": "2.0", "method": method, "params": { "requestId": id, "reason": "fuzz" } })
            }
            15 => {
                // A tools/call whose params or id are the wrong shape.
                let params = any_value(u, self.words, 2)?;
                let id = if u.arbitrary()? { id } else { number(u, 0)? };
                json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params })
            }
            16 => any_value(u, self.words, 3)?,
            _ => {
                let bytes: Vec<u8> = u.arbitrary()?;
                return Ok(bytes);
            }
        };
        Ok(serde_json::to_vec(&message).expect("JSON serialises"))
    }
}

/// What a line sent to the server asks of it, as the server's own parser sees the line.
enum Expect {
    /// A request: its answer carries this id.
    Answer { id: Value, tool: Option<String> },
    /// Nothing to wait for (a notification, a response, garbage, an invalid message).
    Nothing,
}

fn expectation(line: &[u8]) -> Expect {
    match serde_json::from_slice::<ClientJsonRpcMessage>(line) {
        Ok(JsonRpcMessage::Request(request)) => {
            let value: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
            let tool = (value["method"] == "tools/call")
                .then(|| value["params"]["name"].as_str().map(str::to_string))
                .flatten();
            Expect::Answer {
                id: serde_json::to_value(&request.id).expect("an id serialises"),
                tool,
            }
        }
        _ => Expect::Nothing,
    }
}

/// Checks that a line from the server is a well-formed JSON-RPC 2.0 message; returns it.
fn check_server_line(line: &str) -> Value {
    let message: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("the server wrote a line that is not JSON ({e}): {line}"));
    assert_eq!(message["jsonrpc"], "2.0", "not JSON-RPC 2.0: {line}");
    // rmcp answers a line that is JSON but not a message with an error that has no `id` at all
    // (JSON-RPC 2.0 asks for `"id": null`; MCP's 2025-11-25 schema makes it optional): taken as
    // the null id, since the error itself is well formed.
    let is_response = message.get("method").is_none() && (message.get("id").is_some() || message.get("error").is_some());
    if is_response {
        match (message.get("result"), message.get("error")) {
            (Some(result), None) => assert!(result.is_object(), "a result that is not an object: {line}"),
            (None, Some(error)) => {
                assert!(error["code"].is_i64(), "an error without an integer code: {line}");
                assert!(error["message"].is_string(), "an error without a message: {line}");
            }
            _ => panic!("a response with neither or both of result and error: {line}"),
        }
    } else {
        assert!(
            message["method"].is_string(),
            "neither a response nor a request or notification: {line}"
        );
    }
    message
}

struct Session {
    reader: BufReader<ReadHalf<DuplexStream>>,
    writer: WriteHalf<DuplexStream>,
    barriers: u64,
}

impl Session {
    async fn send(&mut self, line: &[u8]) {
        // The server may have ended the session (it owns that decision); later writes fail.
        let _ = self.writer.write_all(line).await;
        let _ = self.writer.write_all(b"\n").await;
        let _ = self.writer.flush().await;
    }

    /// Reads server lines, checking each, until the answer to `id`.
    async fn answer(&mut self, id: &Value, what: &str) -> Value {
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(ANSWER_TIMEOUT, self.reader.read_line(&mut line))
                .await
                .unwrap_or_else(|_| panic!("no answer to {what} within {ANSWER_TIMEOUT:?}"));
            match read {
                Ok(0) => panic!("the server ended the session before answering {what}"),
                Ok(_) => {}
                Err(e) => panic!("reading the answer to {what}: {e}"),
            }
            let message = check_server_line(line.trim_end());
            if message.get("id") == Some(id) && message.get("method").is_none() {
                return message;
            }
        }
    }

    /// Sends a ping and waits for its answer: the server has handled every earlier line.
    async fn barrier(&mut self, what: &str) {
        self.barriers += 1;
        let id = json!(format!("barrier-{}", self.barriers));
        let ping = serde_json::to_vec(&json!({ "jsonrpc": "2.0", "id": id, "method": "ping" })).expect("JSON serialises");
        self.send(&ping).await;
        self.answer(&id, &format!("the ping after {what}")).await;
    }
}

fn shown(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(300)]).into_owned()
}

/// Runs one fuzzed MCP session (module docs). Returns whether any tool call succeeded; panics
/// on a violated property.
pub fn mcp_request(data: &[u8]) -> bool {
    let guard = harness();
    let cx = Context {
        words: &guard.words,
        memory_ids: &guard.memory_ids,
        lsn: guard.db.visible_lsn(),
    };
    let lines: Vec<Vec<u8>> = match data.strip_prefix(LINES_PREFIX) {
        Some(rest) => rest.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect(),
        None => {
            let mut u = Unstructured::new(data);
            let mut lines = Vec::new();
            let count = u.int_in_range(1..=MAX_MESSAGES).unwrap_or(1);
            for i in 0..count {
                let Ok(line) = cx.message(&mut u, i as i64 + 1) else { break };
                // A newline inside raw bytes makes several lines, as it would on the wire.
                lines.extend(line.split(|&b| b == b'\n').map(<[u8]>::to_vec));
            }
            lines
        }
    };
    let db = guard.db.clone();
    let server = guard.server.clone();
    guard.runtime.block_on(async move {
        let (client_end, server_end) = tokio::io::duplex(PIPE_BYTES);
        let served = tokio::spawn(async move {
            if let Ok(running) = server.serve(server_end).await {
                let _ = running.waiting().await;
            }
        });
        let (read, writer) = tokio::io::split(client_end);
        let mut session = Session {
            reader: BufReader::new(read),
            writer,
            barriers: 0,
        };
        let initialize = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": { "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "engram-fuzz", "version": "0" } }
        });
        session.send(&serde_json::to_vec(&initialize).expect("JSON serialises")).await;
        let answer = session.answer(&json!(0), "initialize").await;
        assert!(answer.get("result").is_some(), "initialize failed: {answer}");
        session.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;

        let mut succeeded = false;
        for line in &lines {
            if line.is_empty() {
                continue;
            }
            let before = db.visible_lsn();
            session.send(line).await;
            match expectation(line) {
                Expect::Nothing => session.barrier(&shown(line)).await,
                Expect::Answer { id, tool } => {
                    let answer = session.answer(&id, &shown(line)).await;
                    let after = db.visible_lsn();
                    let Some(tool) = tool else { continue };
                    let failed = answer.get("error").is_some() || answer["result"]["isError"] == json!(true);
                    if failed {
                        assert_eq!(before, after, "the failed call {} committed: {answer}", shown(line));
                        continue;
                    }
                    succeeded = true;
                    let result = &answer["result"];
                    assert!(result["content"].is_array(), "a tool result without content: {answer}");
                    if tool == "remember" || tool == "forget" {
                        let lsn = result["structuredContent"]["lsn"]
                            .as_u64()
                            .unwrap_or_else(|| panic!("{tool} answered without an LSN: {answer}"));
                        assert!(
                            lsn > before && lsn <= after,
                            "{tool} acknowledged LSN {lsn}, visible went {before} -> {after}"
                        );
                    }
                }
            }
        }
        // End of input: the server must end the session and write nothing malformed on the way.
        let _ = session.writer.shutdown().await;
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(ANSWER_TIMEOUT, session.reader.read_line(&mut line))
                .await
                .expect("the server did not end the session after the end of its input");
            match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    check_server_line(line.trim_end());
                }
            }
        }
        tokio::time::timeout(ANSWER_TIMEOUT, served)
            .await
            .expect("the server task did not stop")
            .expect("the server task panicked");
        succeeded
    })
}

/// Seed inputs in the literal form (`LINES\n` and one message per line), taken from the calls
/// of engram-mcp's tests (tests/integration/tools.rs, reference_session.rs, recall.rs) and moved onto the
/// seeded namespace.
pub fn seed_inputs() -> Vec<Vec<u8>> {
    let id = {
        let guard = harness();
        guard.memory_ids[0]
    };
    let call = |n: i64, tool: &str, arguments: Value| json!({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": tool, "arguments": arguments}});
    let session = |messages: Vec<Value>| {
        let mut input = LINES_PREFIX.to_vec();
        for m in messages {
            input.extend(serde_json::to_vec(&m).expect("JSON serialises"));
            input.push(b'\n');
        }
        input
    };
    vec![
        session(vec![
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "resources/list"}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": KNOWLEDGE_GRAPH_URI}}),
        ]),
        session(vec![
            call(1, "create_entities", json!({"entities": [{"name": "Dave", "entityType": "person", "observations": ["likes coffee"]}]})),
            call(2, "create_relations", json!({"relations": [{"from": "Dave", "to": "Alice", "relationType": "knows"}]})),
            call(3, "add_observations", json!({"observations": [{"entityName": "Dave", "contents": ["plays chess"]}]})),
            call(4, "add_observations", json!({"observations": [{"entityName": "Nobody", "contents": ["x"]}]})),
            call(5, "read_graph", json!({})),
        ]),
        session(vec![
            call(1, "delete_observations", json!({"deletions": [{"entityName": "Alice", "observations": ["likes tea"]}]})),
            call(2, "delete_relations", json!({"relations": [{"from": "Alice", "to": "Bob", "relationType": "knows"}]})),
            call(3, "delete_entities", json!({"entityNames": ["Carol"]})),
            call(4, "search_nodes", json!({"query": "tea"})),
            call(5, "open_nodes", json!({"names": ["Alice", "Bob"], "as_of": 2})),
        ]),
        session(vec![
            call(1, "remember", json!({"text": "the user prefers tea", "metadata": {"source": "chat"}, "embedding": [0.5, -1.0, 2.0]})),
            call(2, "remember", json!({"text": "wrong dimension", "embedding": [1.0, 2.0]})),
            call(3, "recall", json!({"query": "tea", "k": 3})),
            call(4, "recall", json!({"vector": [1.0, 0.0, 0.5], "mode": "vector", "filter": {"topic": "food"}})),
            call(5, "history", json!({"id": id})),
        ]),
        session(vec![
            call(1, "forget", json!({"id": id})),
            call(2, "forget", json!({"id": id})),
            call(3, "history", json!({"id": id, "as_of": "2026-11-25T14:00:00Z"})),
            call(4, "history", json!({"entityName": "Alice", "namespace": "beta"})),
            call(5, "history", json!({"key": "counter", "id": id})),
        ]),
        session(vec![
            call(1, "read_graph", json!({"as_of": "yesterday"})),
            call(2, "no_such_tool", json!({})),
            call(3, "create_entities", json!({"entities": "not a list"})),
            json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "read_graph", "arguments": [1]}}),
            json!({"jsonrpc": "2.0", "id": 5, "method": "resources/read", "params": {"uri": "memory://other"}}),
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}}),
            json!({"jsonrpc": "2.0", "id": 6, "method": "no/such_method"}),
            json!([1, 2, 3]),
        ]),
        b"LINES\n{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"tools/call\", \"params\": {\"name\": \"remember\"\nnot json at all\n\xff\xfe\n{}\n".to_vec(),
    ]
}
