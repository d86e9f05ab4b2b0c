//! The real `engram` binary: `serve` on a loopback port, SIGTERM, import, export, checkpoint,
//! status, wal inspection.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_engram");

struct Served {
    child: Child,
    base: String,
}

/// Starts `engram serve` on port 0 and reads the bound address from its log.
fn serve(data: &Path) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start engram serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the server reports its address");
    Served {
        child,
        base: format!("http://{addr}"),
    }
}

impl Served {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::blocking::Client::new();
        let mut r = client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let response = r.send().expect("request");
        let status = response.status().as_u16();
        (status, response.json().expect("JSON"))
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let killed = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "engram serve did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn engram(args: &[&str], data: &Path) -> Output {
    let output = Command::new(BIN).args(args).arg("--data").arg(data).output().unwrap();
    assert!(
        output.status.success(),
        "engram {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn sigterm_exits_zero_and_acknowledged_writes_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("db");
    let server = serve(&data);
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let durability = if i % 2 == 0 { "always" } else { "buffered" };
        let (status, body) = server.call(
            reqwest::Method::PUT,
            &format!("/v1/namespaces/n/kv/key{i}?durability={durability}"),
            Some(json!({"json": i})),
        );
        assert_eq!(status, 200, "{body}");
        acknowledged.push(i);
    }
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");

    let server = serve(&data);
    for i in acknowledged {
        let (status, body) = server.call(reqwest::Method::GET, &format!("/v1/namespaces/n/kv/key{i}"), None);
        assert_eq!(status, 200, "key{i} lost: {body}");
        assert_eq!(body["value"], json!({"json": i}));
    }
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn import_of_a_reference_memory_jsonl_then_read_graph_returns_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("db");
    let file = tmp.path().join("memory.jsonl");
    let entities = [
        json!({"type": "entity", "name": "John_Smith", "entityType": "person", "observations": ["Speaks fluent Spanish", "Graduated in 2019"]}),
        json!({"type": "entity", "name": "Anthropic", "entityType": "organization", "observations": ["Makes Claude"]}),
        json!({"type": "entity", "name": "Tea", "entityType": "drink", "observations": []}),
    ];
    let relations = [
        json!({"type": "relation", "from": "John_Smith", "to": "Anthropic", "relationType": "works_at"}),
        json!({"type": "relation", "from": "John_Smith", "to": "Tea", "relationType": "likes"}),
    ];
    let text: String = entities.iter().chain(&relations).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let out = engram(&["import", "--namespace", "agent-1", file.to_str().unwrap()], &data);
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 entities, 2 relations"));

    let server = serve(&data);
    let (status, graph) = server.call(reqwest::Method::GET, "/v1/namespaces/agent-1/graph/read_graph", None);
    assert_eq!(status, 200);
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("type");
        v
    };
    assert_eq!(graph["entities"], Value::Array(entities.iter().map(strip).collect()));
    assert_eq!(graph["relations"], Value::Array(relations.iter().map(strip).collect()));
    assert_eq!(server.terminate().code(), Some(0));

    // The same data exported, then imported elsewhere, exports identically.
    let export_file = tmp.path().join("export.jsonl");
    engram(&["export", "--output", export_file.to_str().unwrap()], &data);
    let copy = tmp.path().join("copy");
    engram(&["import", export_file.to_str().unwrap()], &copy);
    let again = engram(&["export"], &copy);
    assert_eq!(
        String::from_utf8(again.stdout).unwrap(),
        std::fs::read_to_string(&export_file).unwrap()
    );

    // A bad file imports nothing and says which line.
    std::fs::write(
        &file,
        "{\"type\":\"entity\",\"name\":\"X\",\"entityType\":\"t\",\"observations\":[]}\n{oops\n",
    )
    .unwrap();
    let failed = Command::new(BIN)
        .args(["import", file.to_str().unwrap(), "--data"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("line 2"));
}

#[test]
fn checkpoint_status_and_wal_inspection() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("db");
    let file = tmp.path().join("in.jsonl");
    std::fs::write(
        &file,
        "{\"type\":\"kv\",\"namespace\":\"n\",\"key\":\"k\",\"value\":{\"json\":1}}\n",
    )
    .unwrap();
    engram(&["import", file.to_str().unwrap()], &data);

    let verify = String::from_utf8(engram(&["wal", "verify"], &data).stdout).unwrap();
    assert!(verify.starts_with("ok: 1 records"), "{verify}");
    let dump = String::from_utf8(engram(&["wal", "dump"], &data).stdout).unwrap();
    assert_eq!(dump.lines().count(), 1, "{dump}");
    let stat = String::from_utf8(engram(&["wal", "stat"], &data).stdout).unwrap();
    assert!(stat.contains("LSN range:      1..=1"), "{stat}");

    let checkpoint = String::from_utf8(engram(&["checkpoint"], &data).stdout).unwrap();
    assert!(checkpoint.contains("checkpoint at LSN 1 (written)"), "{checkpoint}");
    let status = String::from_utf8(engram(&["status"], &data).stdout).unwrap();
    assert!(status.contains("last checkpoint:   LSN 1"), "{status}");
    assert!(
        status.contains("namespace n: 0 memories (dimension unset), 0 entities, 0 relations, 1 keys"),
        "{status}"
    );

    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));
}

#[test]
fn serve_refuses_a_public_address_without_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("without an API key"));
}
