//! A write the server acknowledged survives a power loss.
//!
//! Commits are awaited on the request's task (`commit_async`), so this checks the server's side
//! of the contract end to end: a 2xx answer is sent only once the commit is durable. Concurrent
//! HTTP clients write memories, keys and multi-operation transactions into a database on
//! `FaultStorage`; after some acknowledgements the storage is set to die after a few more I/O
//! calls (a machine crash at an arbitrary point of the group commits in flight); the clients run
//! on until the database refuses them. Then only what was synced survives (`DropUnsynced`), and
//! the reopened database must hold every acknowledged write, with its content, and each
//! transaction whole.

use engram_core::{Database, DatabaseOptions, KvReads, KvValue, MemoryReads};
use engram_server::{router, serve, AppState, Config};
use engram_wal::storage::{CrashMode, FaultStorage};
use engram_wal::WalOptions;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLIENTS: u64 = 8;
/// Acknowledgements collected before the crash is armed.
const ACKS_BEFORE_ARMING: u64 = 150;
/// The whole write phase; reaching it is a hang.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

fn options() -> DatabaseOptions {
    DatabaseOptions {
        wal: WalOptions {
            segment_bytes: 256 * 1024,
            max_record_bytes: 32 * 1024,
            background_preallocation: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn open(fs: &FaultStorage) -> Database {
    Database::open_with_storage(Arc::new(fs.clone()), "/db", options()).expect("open")
}

/// What the server acknowledged, to be found after the crash.
#[derive(Debug, Default)]
struct Acknowledged {
    /// (memory id, text)
    memories: Vec<(String, String)>,
    /// (key, value)
    keys: Vec<(String, u64)>,
    /// (memory text, key) of every transaction sent, acknowledged or not.
    transactions_sent: Vec<(String, String)>,
}

/// One client: the three kinds of write in turn until the server refuses one.
async fn client(base: String, client: u64, acknowledged: Arc<Mutex<Acknowledged>>, acks: Arc<AtomicU64>) -> u64 {
    let http = reqwest::Client::new();
    let mut i = 0u64;
    loop {
        let text = format!("client {client} write {i}");
        let key = format!("c{client}/{i}");
        let embedding = [client as f32, i as f32, 1.0];
        let request = match i % 3 {
            0 => http
                .post(format!("{base}/v1/namespaces/agent/memories"))
                .json(&json!({"text": text, "embedding": embedding, "metadata": {"client": client}})),
            1 => http.put(format!("{base}/v1/namespaces/agent/kv/{key}")).json(&json!({"json": i})),
            _ => http.post(format!("{base}/v1/transactions")).json(&json!({"operations": [
                {"op": "insert_memory", "namespace": "agent", "text": text, "embedding": embedding},
                {"op": "kv_put", "namespace": "agent", "key": key, "value": {"json": i}},
                {"op": "emit_event", "namespace": "agent", "topic": "wrote", "payload": {"i": i}},
            ]})),
        };
        if i % 3 == 2 {
            acknowledged.lock().unwrap().transactions_sent.push((text.clone(), key.clone()));
        }
        // A transport error counts as a refusal too: either way nothing was acknowledged.
        let Ok(response) = request.send().await else { return i };
        let status = response.status();
        let Ok(body) = response.json::<Value>().await else { return i };
        if !status.is_success() {
            // The crash stops the database: 5xx, never a 4xx (the input is valid).
            assert!(status.is_server_error(), "client {client} write {i}: {status} {body}");
            return i;
        }
        {
            let mut a = acknowledged.lock().unwrap();
            match i % 3 {
                0 => a.memories.push((body["id"].as_str().expect("id").to_string(), text)),
                1 => a.keys.push((key, i)),
                _ => {
                    a.memories.push((body["results"][0]["id"].as_str().expect("id").to_string(), text));
                    a.keys.push((key, i));
                }
            }
        }
        acks.fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
}

/// Writes through the server until a crash `crash_after_calls` I/O calls after arming; returns
/// what was acknowledged.
fn write_until_crash(fs: &FaultStorage, crash_after_calls: u64) -> Acknowledged {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    runtime.block_on(async {
        let state = AppState::new(open(fs), Config::default(), None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state.clone(), router(state.clone()), async move {
            let _ = stopped.await;
        }));
        drop(state);
        let declared = reqwest::Client::new()
            .put(format!("{base}/v1/namespaces/agent/vector_space"))
            .json(&json!({"dimension": 3, "metric": "cosine"}))
            .send()
            .await
            .unwrap();
        assert!(declared.status().is_success());

        let acks = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| tokio::spawn(client(base.clone(), c, acknowledged.clone(), acks.clone())))
            .collect();
        let writes = async {
            while acks.load(Ordering::Relaxed) < ACKS_BEFORE_ARMING {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            fs.crash_after_mutations(fs.mutation_count() + crash_after_calls);
            let mut refused_at = Vec::new();
            for c in clients {
                refused_at.push(c.await.expect("client task"));
            }
            refused_at
        };
        let refused_at = tokio::time::timeout(PHASE_TIMEOUT, writes)
            .await
            .expect("the clients did not all stop after the crash: a request hung");
        assert!(fs.has_crashed(), "the crash was reached (clients stopped at {refused_at:?})");
        let _ = stop.send(());
        // The final sync fails (the machine is down) and says so in the log; serving itself
        // ends cleanly.
        server.await.expect("server task").expect("serve");
    });
    drop(runtime);
    Arc::into_inner(acknowledged).unwrap().into_inner().unwrap()
}

#[test]
fn every_acknowledged_http_write_survives_a_power_loss() {
    // Crash points: at the arming moment, and a few calls into the group commits in flight.
    for crash_after_calls in [0, 3, 11] {
        let fs = FaultStorage::new();
        let acknowledged = write_until_crash(&fs, crash_after_calls);
        fs.crash(CrashMode::DropUnsynced);
        let db = open(&fs);
        let snapshot = db.snapshot();
        assert!(acknowledged.memories.len() + acknowledged.keys.len() >= ACKS_BEFORE_ARMING as usize);
        for (id, text) in &acknowledged.memories {
            let memory = snapshot
                .get_memory("agent", id)
                .unwrap()
                .unwrap_or_else(|| panic!("crash after {crash_after_calls} calls: acknowledged memory {id} ({text:?}) was lost"));
            assert_eq!(&memory.text, text);
        }
        for (key, value) in &acknowledged.keys {
            assert_eq!(
                snapshot.kv_get("agent", key.as_bytes()).unwrap(),
                Some(KvValue::Json(json!(value))),
                "crash after {crash_after_calls} calls: acknowledged key {key} lost or wrong"
            );
        }
        // Every transaction, acknowledged or cut by the crash, is there whole or not at all.
        let texts: std::collections::HashSet<String> = snapshot.list_memories("agent").unwrap().into_iter().map(|m| m.text).collect();
        for (text, key) in &acknowledged.transactions_sent {
            let has_key = snapshot.kv_get("agent", key.as_bytes()).unwrap().is_some();
            assert_eq!(texts.contains(text), has_key, "transaction {text:?} / {key} is there in part");
        }
    }
}
