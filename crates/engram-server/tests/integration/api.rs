//! Every endpoint against a real server on a loopback port.

use crate::common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memories_create_read_patch_delete_history_and_as_of() {
    let s = TestServer::start().await;
    let (status, created) = s
        .post(
            "/v1/namespaces/agent-1/memories",
            json!({"text": "likes tea", "embedding": [0.5, 0.25], "metadata": {"topic": "drinks"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["embedding"], "given");
    let id = created["id"].as_str().unwrap().to_string();
    let first_lsn = created["lsn"].as_u64().unwrap();
    assert!(first_lsn > 0);

    let read = s.ok(Method::GET, &format!("/v1/namespaces/agent-1/memories/{id}"), None).await;
    assert_eq!(read["text"], "likes tea");
    assert_eq!(read["embedding"], json!([0.5, 0.25]));
    assert_eq!(read["metadata"], json!({"topic": "drinks"}));
    assert_eq!(read["version"].as_u64().unwrap(), first_lsn);

    let patched = s
        .ok(
            Method::PATCH,
            &format!("/v1/namespaces/agent-1/memories/{id}"),
            Some(json!({"text": "likes green tea"})),
        )
        .await;
    let patch_lsn = patched["lsn"].as_u64().unwrap();
    assert!(patch_lsn > first_lsn);
    assert_eq!(patched["text"], "likes green tea");
    assert_eq!(
        patched["embedding"],
        json!([0.5, 0.25]),
        "a text change without an embedder keeps the vector"
    );

    // As of the first commit, by LSN and by time.
    let old = s
        .ok(
            Method::GET,
            &format!("/v1/namespaces/agent-1/memories/{id}?as_of={first_lsn}"),
            None,
        )
        .await;
    assert_eq!(old["text"], "likes tea");
    let history = s
        .ok(Method::GET, &format!("/v1/namespaces/agent-1/memories/{id}/history"), None)
        .await;
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["value"]["text"], "likes tea");
    assert_eq!(versions[1]["value"]["text"], "likes green tea");
    let first_ts = versions[0]["commit_ts_ms"].as_u64().unwrap();
    let time = chrono_like_rfc3339(first_ts);
    let by_time = s
        .ok(Method::GET, &format!("/v1/namespaces/agent-1/memories/{id}?as_of={time}"), None)
        .await;
    assert_eq!(by_time["text"], "likes tea", "as of {time}");

    let list = s.ok(Method::GET, "/v1/namespaces/agent-1/memories", None).await;
    assert_eq!(list["memories"].as_array().unwrap().len(), 1);

    let deleted = s.ok(Method::DELETE, &format!("/v1/namespaces/agent-1/memories/{id}"), None).await;
    assert!(deleted["lsn"].as_u64().unwrap() > patch_lsn);
    let (status, body) = s.get(&format!("/v1/namespaces/agent-1/memories/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
    let (status, _) = s.call(Method::DELETE, &format!("/v1/namespaces/agent-1/memories/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let history = s
        .ok(Method::GET, &format!("/v1/namespaces/agent-1/memories/{id}/history"), None)
        .await;
    assert_eq!(history["versions"].as_array().unwrap().len(), 3);
    assert_eq!(history["versions"][2]["deleted"], true);
    // Still readable in the past.
    let past = s
        .ok(
            Method::GET,
            &format!("/v1/namespaces/agent-1/memories/{id}?as_of={patch_lsn}"),
            None,
        )
        .await;
    assert_eq!(past["text"], "likes green tea");
}

/// Formats ms since the epoch as RFC 3339 (UTC) without a date library in the tests.
fn chrono_like_rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_endpoints_follow_the_reference_server() {
    let s = TestServer::start().await;
    let g = "/v1/namespaces/kg/graph";
    let created = s
        .ok(
            Method::POST,
            &format!("{g}/create_entities"),
            Some(json!({"entities": [
                {"name": "Alice", "entityType": "person", "observations": ["likes tea"]},
                {"name": "Bob", "entityType": "person", "observations": []},
                {"name": "Alice", "entityType": "robot", "observations": []}
            ]})),
        )
        .await;
    assert_eq!(created["created"].as_array().unwrap().len(), 2, "{created}");
    let first_lsn = created["lsn"].as_u64().unwrap();
    let again = s
        .ok(
            Method::POST,
            &format!("{g}/create_entities"),
            Some(json!({"entities": [{"name": "Alice", "entityType": "x", "observations": []}]})),
        )
        .await;
    assert_eq!(again["created"], json!([]));

    let rel = s
        .ok(
            Method::POST,
            &format!("{g}/create_relations"),
            Some(json!({"relations": [{"from": "Alice", "to": "Bob", "relationType": "knows"}]})),
        )
        .await;
    assert_eq!(rel["created"].as_array().unwrap().len(), 1);

    let added = s
        .ok(
            Method::POST,
            &format!("{g}/add_observations"),
            Some(json!({"observations": [{"entityName": "Bob", "contents": ["plays chess", "plays chess"]}]})),
        )
        .await;
    assert_eq!(
        added["results"],
        json!([{"entityName": "Bob", "addedObservations": ["plays chess"]}])
    );
    let (status, err) = s
        .post(
            &format!("{g}/add_observations"),
            json!({"observations": [{"entityName": "Nobody", "contents": ["x"]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");

    let graph = s.ok(Method::GET, &format!("{g}/read_graph"), None).await;
    assert_eq!(
        graph,
        json!({
            "entities": [
                {"name": "Alice", "entityType": "person", "observations": ["likes tea"]},
                {"name": "Bob", "entityType": "person", "observations": ["plays chess"]}
            ],
            "relations": [{"from": "Alice", "to": "Bob", "relationType": "knows"}]
        })
    );
    let found = s
        .ok(Method::POST, &format!("{g}/search_nodes"), Some(json!({"query": "CHESS"})))
        .await;
    assert_eq!(found["entities"].as_array().unwrap().len(), 1);
    assert_eq!(found["entities"][0]["name"], "Bob");
    // As the published reference does: relations with at least one end among the entities found.
    assert_eq!(found["relations"], json!([{"from": "Alice", "to": "Bob", "relationType": "knows"}]));
    let opened = s
        .ok(Method::POST, &format!("{g}/open_nodes"), Some(json!({"names": ["Alice", "Bob"]})))
        .await;
    assert_eq!(opened, graph);
    let old = s.ok(Method::GET, &format!("{g}/read_graph?as_of={first_lsn}"), None).await;
    assert_eq!(old["relations"], json!([]));
    assert_eq!(old["entities"][1]["observations"], json!([]));
    let old_search = s
        .ok(
            Method::POST,
            &format!("{g}/search_nodes"),
            Some(json!({"query": "chess", "as_of": first_lsn.to_string()})),
        )
        .await;
    assert_eq!(old_search["entities"], json!([]));

    s.ok(
        Method::POST,
        &format!("{g}/delete_observations"),
        Some(json!({"deletions": [{"entityName": "Alice", "observations": ["likes tea"]}]})),
    )
    .await;
    s.ok(
        Method::POST,
        &format!("{g}/delete_relations"),
        Some(json!({"relations": [{"from": "Alice", "to": "Bob", "relationType": "knows"}]})),
    )
    .await;
    let hist = s
        .ok(
            Method::GET,
            &format!("{g}/relation_history?from=Alice&to=Bob&relationType=knows"),
            None,
        )
        .await;
    assert_eq!(hist["versions"].as_array().unwrap().len(), 2);
    s.ok(
        Method::POST,
        &format!("{g}/delete_entities"),
        Some(json!({"entityNames": ["Alice", "Missing"]})),
    )
    .await;
    let graph = s.ok(Method::GET, &format!("{g}/read_graph"), None).await;
    assert_eq!(graph["entities"].as_array().unwrap().len(), 1);
    let hist = s.ok(Method::GET, &format!("{g}/entity_history?name=Alice"), None).await;
    let versions = hist["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3, "{hist}");
    assert_eq!(versions[1]["value"]["observations"], json!([]));
    assert_eq!(versions[2]["deleted"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_get_put_delete_scan_and_history() {
    let s = TestServer::start().await;
    let kv = "/v1/namespaces/state/kv";
    let put = s
        .ok(Method::PUT, &format!("{kv}/threads/1/step"), Some(json!({"json": {"n": 1}})))
        .await;
    let v1 = put["lsn"].as_u64().unwrap();
    s.ok(Method::PUT, &format!("{kv}/threads/1/step"), Some(json!({"json": {"n": 2}})))
        .await;
    s.ok(Method::PUT, &format!("{kv}/threads/2/step"), Some(json!({"hex": "00ff"})))
        .await;
    s.ok(Method::PUT, &format!("{kv}/zzz"), Some(json!({"json": "last"}))).await;

    let got = s.ok(Method::GET, &format!("{kv}/threads/1/step"), None).await;
    assert_eq!(got["value"], json!({"json": {"n": 2}}));
    let old = s.ok(Method::GET, &format!("{kv}/threads/1/step?as_of={v1}"), None).await;
    assert_eq!(old["value"], json!({"json": {"n": 1}}));
    assert_eq!(old["version"].as_u64().unwrap(), v1);
    let bytes = s.ok(Method::GET, &format!("{kv}/threads/2/step"), None).await;
    assert_eq!(bytes["value"], json!({"hex": "00ff"}));

    let scan = s.ok(Method::GET, &format!("{kv}?prefix=threads/"), None).await;
    let keys: Vec<&str> = scan["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["threads/1/step", "threads/2/step"]);
    let range = s.ok(Method::GET, &format!("{kv}?from=threads/2&to=zzz"), None).await;
    assert_eq!(range["items"].as_array().unwrap().len(), 1);
    let page = s.ok(Method::GET, &format!("{kv}?limit=1"), None).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_from"], "threads/2/step");

    let history = s.ok(Method::GET, "/v1/namespaces/state/kv_history/threads/1/step", None).await;
    assert_eq!(history["versions"].as_array().unwrap().len(), 2);

    let del = s.ok(Method::DELETE, &format!("{kv}/zzz"), None).await;
    assert_eq!(del["existed"], true);
    let (status, _) = s.get(&format!("{kv}/zzz")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let del = s.ok(Method::DELETE, &format!("{kv}/zzz"), None).await;
    assert_eq!(del["existed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_atomic_across_namespaces_with_preconditions() {
    let s = TestServer::start().await;
    let result = s
        .ok(
            Method::POST,
            "/v1/transactions",
            Some(json!({"operations": [
                {"op": "insert_memory", "namespace": "a", "text": "hello"},
                {"op": "create_entities", "namespace": "b", "entities": [{"name": "E", "entityType": "t", "observations": []}]},
                {"op": "kv_put", "namespace": "c", "key": "counter", "value": {"json": 1}},
                {"op": "emit_event", "namespace": "c", "topic": "counted", "payload": {"n": 1}}
            ]})),
        )
        .await;
    let lsn = result["lsn"].as_u64().unwrap();
    assert_eq!(result["results"][0]["op"], "insert_memory");
    let events = s.changes("").await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events.iter().all(|e| e["lsn"].as_u64() == Some(lsn)), "one commit, one LSN");

    // Compare-and-set on the counter: the right version commits, a stale one is a 409.
    let cas = |version: Value, n: i64| {
        json!({"operations": [{"op": "kv_put", "namespace": "c", "key": "counter", "value": {"json": n}}],
               "preconditions": [{"kind": "kv", "namespace": "c", "key": "counter", "version": version}]})
    };
    let ok = s.ok(Method::POST, "/v1/transactions", Some(cas(json!(lsn), 2))).await;
    let (status, err) = s.post("/v1/transactions", cas(json!(lsn), 3)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "precondition_failed");
    let (status, err) = s.post("/v1/transactions", cas(json!("absent"), 3)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["code"], "precondition_failed");
    let value = s.ok(Method::GET, "/v1/namespaces/c/kv/counter", None).await;
    assert_eq!(value["value"], json!({"json": 2}));
    assert_eq!(value["version"], ok["lsn"]);
    let create_once = json!({"operations": [{"op": "kv_put", "namespace": "c", "key": "fresh", "value": {"json": true}}],
                             "preconditions": [{"kind": "kv", "namespace": "c", "key": "fresh", "version": "absent"}]});
    s.ok(Method::POST, "/v1/transactions", Some(create_once.clone())).await;
    let (status, _) = s.post("/v1/transactions", create_once).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // One bad operation at the end: nothing of the transaction is committed.
    let before = s.visible_lsn().await;
    let (status, err) = s
        .post(
            "/v1/transactions",
            json!({"operations": [
                {"op": "kv_put", "namespace": "c", "key": "counter", "value": {"json": 100}},
                {"op": "insert_memory", "namespace": "a", "text": "x", "embedding": [1.0, 2.0]},
                {"op": "insert_memory", "namespace": "a", "text": "y", "embedding": [1.0, 2.0, 3.0]}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["code"], "dimension_mismatch");
    assert!(err["message"].as_str().unwrap().starts_with("operations[2]"), "{err}");
    assert_eq!(s.visible_lsn().await, before);
    let value = s.ok(Method::GET, "/v1/namespaces/c/kv/counter", None).await;
    assert_eq!(value["value"], json!({"json": 2}));
    let list = s.ok(Method::GET, "/v1/namespaces/a/memories", None).await;
    assert_eq!(list["memories"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_admin_stats_metrics_health_and_openapi() {
    let s = TestServer::start().await;
    s.ok(Method::PUT, "/v1/namespaces/n/kv/k", Some(json!({"json": 1}))).await;
    let (status, created) = s.post("/v1/cursors", json!({"name": "indexer"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, _) = s.post("/v1/cursors", json!({"name": "indexer"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let list = s.ok(Method::GET, "/v1/cursors", None).await;
    assert_eq!(list["cursors"], json!([{"name": "indexer", "lsn": 0}]));
    s.ok(Method::POST, "/v1/cursors/indexer/advance", Some(json!({"lsn": 1}))).await;
    let got = s.ok(Method::GET, "/v1/cursors/indexer", None).await;
    assert_eq!(got["lsn"], 1);
    let (status, err) = s.post("/v1/cursors/indexer/advance", json!({"lsn": 1_000_000})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let deleted = s.ok(Method::DELETE, "/v1/cursors/indexer", None).await;
    assert_eq!(deleted["lsn"], 1);
    let (status, _) = s.get("/v1/cursors/indexer").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let checkpoint = s.ok(Method::POST, "/v1/admin/checkpoint", None).await;
    assert_eq!(checkpoint["written"], true);
    assert!(checkpoint["lsn"].as_u64().unwrap() >= 1);
    let stats = s.ok(Method::GET, "/v1/stats", None).await;
    assert_eq!(stats["last_checkpoint_lsn"], checkpoint["lsn"]);
    assert!(stats["search"].as_str().unwrap().contains("keyword-only"));
    assert!(stats["log"]["fsyncs"].as_u64().unwrap() >= 1);

    let health = s.ok(Method::GET, "/healthz", None).await;
    assert_eq!(health["status"], "ok");

    let metrics = s.request(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    for name in [
        "engram_commits_total",
        "engram_commit_latency_seconds_bucket",
        "engram_wal_fsyncs_total",
        "engram_wal_group_size_records",
        "engram_wal_bytes_total",
        "engram_checkpoint_duration_seconds_count 1",
        "engram_replay_duration_seconds",
        "engram_index_lag_lsns",
        "engram_index_queued_changes",
        "engram_index_queued_vector_bytes",
        "engram_index_vectors",
        "engram_index_throttled_commits_total 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let commits_line = metrics.lines().find(|l| l.starts_with("engram_commits_total ")).unwrap();
    // The key/value put; cursor positions are committed by the engine's cursor API directly.
    assert_eq!(commits_line, "engram_commits_total 1");

    let doc = s.ok(Method::GET, "/openapi.json", None).await;
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/v1/namespaces/{ns}/memories", vec!["post", "get"]),
        ("/v1/namespaces/{ns}/memories/{id}", vec!["get", "patch", "delete"]),
        ("/v1/namespaces/{ns}/memories/{id}/history", vec!["get"]),
        ("/v1/namespaces/{ns}/graph/create_entities", vec!["post"]),
        ("/v1/namespaces/{ns}/graph/create_relations", vec!["post"]),
        ("/v1/namespaces/{ns}/graph/add_observations", vec!["post"]),
        ("/v1/namespaces/{ns}/graph/delete_entities", vec!["post"]),
        ("/v1/namespaces/{ns}/graph/delete_observations", vec!["post"]),
        ("/v1/namespaces/{ns}/graph/delete_relations", vec!["post"]),
        ("/v1/namespaces/{ns}/graph/read_graph", vec!["get"]),
        ("/v1/namespaces/{ns}/graph/search_nodes", vec!["post"]),
        ("/v1/namespaces/{ns}/graph/open_nodes", vec!["post"]),
        ("/v1/namespaces/{ns}/graph/entity_history", vec!["get"]),
        ("/v1/namespaces/{ns}/graph/relation_history", vec!["get"]),
        ("/v1/namespaces/{ns}/search", vec!["post"]),
        ("/v1/namespaces/{ns}/graph/search_entities", vec!["post"]),
        ("/v1/namespaces/{ns}/graph/neighbours", vec!["get"]),
        ("/v1/namespaces/{ns}/vector_space", vec!["put"]),
        ("/v1/namespaces/{ns}/kv", vec!["get"]),
        ("/v1/namespaces/{ns}/kv/{key}", vec!["get", "put", "delete"]),
        ("/v1/namespaces/{ns}/kv_history/{key}", vec!["get"]),
        ("/v1/transactions", vec!["post"]),
        ("/v1/changes", vec!["get"]),
        ("/v1/cursors", vec!["post", "get"]),
        ("/v1/cursors/{name}", vec!["get", "delete"]),
        ("/v1/cursors/{name}/advance", vec!["post"]),
        ("/v1/cursors/{name}/changes", vec!["get"]),
        ("/v1/admin/checkpoint", vec!["post"]),
        ("/v1/stats", vec!["get"]),
        ("/healthz", vec!["get"]),
        ("/metrics", vec!["get"]),
    ];
    for (path, methods) in &expected {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} missing from the OpenAPI document"));
        for m in methods {
            assert!(item.get(*m).is_some(), "{m} {path} missing from the OpenAPI document");
        }
    }
    assert_eq!(
        paths.len(),
        expected.len(),
        "documented paths: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for schema in [
        "ErrorBody",
        "MemoryBody",
        "TransactionBody",
        "Operation",
        "ChangeEventBody",
        "GraphBody",
        "KvValueBody",
        "SearchBody",
        "SearchResult",
        "NeighboursResult",
    ] {
        assert!(doc["components"]["schemas"].get(schema).is_some(), "schema {schema} missing");
    }
    s.stop().await;
}
