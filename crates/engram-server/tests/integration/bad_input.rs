//! Every class of bad input gets a 4xx with a JSON {code, message} and commits nothing; the
//! server answers every request (no 5xx, no panic).

use crate::common;

use common::{config, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A request as raw parts, so that malformed bodies can be sent.
struct Bad {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
}

fn bad(method: Method, path: &str, body: &str, status: StatusCode, code: &'static str) -> Bad {
    Bad {
        method,
        path: path.to_string(),
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        status,
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_and_changes_nothing() {
    // Small limits so that each can be crossed cheaply.
    let s = TestServer::start_with(config(
        "[limits]\nmax_body_bytes = 4096\nmax_batch_items = 3\nmax_dimension = 8\nmax_scan_items = 5\n",
    ))
    .await;
    // A namespace with dimension 2, an entity, a key.
    s.ok(
        Method::POST,
        "/v1/namespaces/a/memories",
        Some(json!({"text": "x", "embedding": [1.0, 0.0]})),
    )
    .await;
    s.ok(
        Method::POST,
        "/v1/namespaces/a/graph/create_entities",
        Some(json!({"entities": [{"name": "E", "entityType": "t"}]})),
    )
    .await;
    s.ok(Method::PUT, "/v1/namespaces/a/kv/k", Some(json!({"json": 1}))).await;
    let lsn = s.visible_lsn().await;
    let feed_before = s.changes("").await;

    let mem = "/v1/namespaces/a/memories";
    let big = format!("{{\"text\": \"{}\"}}", "x".repeat(5000));
    let nine = format!("{{\"text\": \"x\", \"embedding\": {:?}}}", vec![0.5f32; 9]);
    let four_entities =
        json!({"entities": (0..4).map(|i| json!({"name": format!("n{i}"), "entityType": "t"})).collect::<Vec<_>>()}).to_string();
    let cases = vec![
        // Malformed JSON and wrong types.
        bad(Method::POST, mem, "{\"text\": ", StatusCode::BAD_REQUEST, "malformed_json"),
        bad(Method::POST, mem, "not json", StatusCode::BAD_REQUEST, "malformed_json"),
        bad(Method::POST, mem, "{\"text\": 5}", StatusCode::BAD_REQUEST, "wrong_type"),
        bad(Method::POST, mem, "{\"txt\": \"typo\"}", StatusCode::BAD_REQUEST, "wrong_type"),
        bad(Method::POST, mem, "[]", StatusCode::BAD_REQUEST, "wrong_type"),
        bad(Method::POST, mem, "{\"text\": \"x\", \"embedding\": \"many\"}", StatusCode::BAD_REQUEST, "wrong_type"),
        bad(Method::POST, mem, "{\"text\": \"x\", \"metadata\": [1]}", StatusCode::BAD_REQUEST, "metadata_not_object"),
        Bad {
            content_type: None,
            ..bad(Method::POST, mem, "{\"text\": \"x\"}", StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        },
        // NaN and infinities: JSON has no NaN token, and numbers beyond f32 become infinite.
        bad(Method::POST, mem, "{\"text\": \"x\", \"embedding\": [NaN, 1.0]}", StatusCode::BAD_REQUEST, "malformed_json"),
        bad(Method::POST, mem, "{\"text\": \"x\", \"embedding\": [1e39, 1.0]}", StatusCode::BAD_REQUEST, "non_finite_value"),
        // Vector dimension: the namespace's, the configured limit, empty.
        bad(Method::POST, mem, "{\"text\": \"x\", \"embedding\": [1.0, 2.0, 3.0]}", StatusCode::BAD_REQUEST, "dimension_mismatch"),
        bad(Method::POST, mem, &nine, StatusCode::BAD_REQUEST, "bad_dimension"),
        bad(Method::POST, mem, "{\"text\": \"x\", \"embedding\": []}", StatusCode::BAD_REQUEST, "bad_dimension"),
        // Body size.
        bad(Method::POST, mem, &big, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        // Batch size.
        bad(Method::POST, "/v1/namespaces/a/graph/create_entities", &four_entities, StatusCode::BAD_REQUEST, "batch_too_large"),
        // Name rules.
        bad(Method::POST, "/v1/namespaces/.hidden/memories", "{\"text\": \"x\"}", StatusCode::BAD_REQUEST, "invalid_name"),
        bad(Method::POST, "/v1/namespaces/a%2Fb/memories", "{\"text\": \"x\"}", StatusCode::BAD_REQUEST, "invalid_name"),
        bad(Method::POST, "/v1/namespaces/a..b%00/memories", "{\"text\": \"x\"}", StatusCode::BAD_REQUEST, "invalid_name"),
        bad(
            Method::POST,
            "/v1/namespaces/a/graph/create_entities",
            "{\"entities\": [{\"name\": \"bad\\u0000name\", \"entityType\": \"t\"}]}",
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        bad(
            Method::POST,
            "/v1/namespaces/a/graph/create_entities",
            "{\"entities\": [{\"name\": \"\", \"entityType\": \"t\"}]}",
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        // Scan limit and query parameters.
        bad(Method::GET, "/v1/namespaces/a/kv?limit=6", "", StatusCode::BAD_REQUEST, "bad_limit"),
        bad(Method::GET, "/v1/namespaces/a/kv?limit=-1", "", StatusCode::BAD_REQUEST, "bad_query"),
        bad(Method::GET, "/v1/namespaces/a/kv?prefix=a&from=b", "", StatusCode::BAD_REQUEST, "bad_query"),
        bad(Method::GET, "/v1/namespaces/a/graph/read_graph?as_of=yesterday", "", StatusCode::BAD_REQUEST, "bad_as_of"),
        bad(Method::GET, "/v1/changes?from_lsn=abc", "", StatusCode::BAD_REQUEST, "bad_query"),
        bad(Method::PUT, "/v1/namespaces/a/kv/k", "{\"hex\": \"zz\"}", StatusCode::BAD_REQUEST, "bad_hex"),
        bad(Method::PUT, "/v1/namespaces/a/kv/k", "{\"text\": \"x\"}", StatusCode::BAD_REQUEST, "wrong_type"),
        // Transactions: empty, too many operations, unknown op, a bad op among good ones.
        bad(Method::POST, "/v1/transactions", "{\"operations\": []}", StatusCode::BAD_REQUEST, "empty_transaction"),
        bad(
            Method::POST,
            "/v1/transactions",
            &json!({"operations": (0..4).map(|i| json!({"op": "kv_put", "namespace": "a", "key": format!("k{i}"), "value": {"json": i}})).collect::<Vec<_>>()}).to_string(),
            StatusCode::BAD_REQUEST,
            "batch_too_large",
        ),
        bad(Method::POST, "/v1/transactions", "{\"operations\": [{\"op\": \"drop_table\"}]}", StatusCode::BAD_REQUEST, "wrong_type"),
        bad(
            Method::POST,
            "/v1/transactions",
            &json!({"operations": [
                {"op": "kv_put", "namespace": "a", "key": "k", "value": {"json": 2}},
                {"op": "create_entities", "namespace": "a", "entities": [{"name": "F", "entityType": "t"}]},
                {"op": "add_observations", "namespace": "a", "observations": [{"entityName": "Missing", "contents": ["x"]}]}
            ]})
            .to_string(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        // Unknown routes and methods.
        bad(Method::GET, "/v1/nothing", "", StatusCode::NOT_FOUND, "no_route"),
        bad(Method::DELETE, "/v1/transactions", "", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        // Missing items.
        bad(Method::PATCH, "/v1/namespaces/a/memories/nope", "{\"text\": \"y\"}", StatusCode::NOT_FOUND, "not_found"),
    ];
    for case in cases {
        let mut request = s.client.request(case.method.clone(), s.url(&case.path)).body(case.body.clone());
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let text = response.text().await.unwrap();
        let body: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{} {}: not JSON: {text:?}", case.method, case.path));
        assert_eq!(status, case.status, "{} {}: {body}", case.method, case.path);
        assert_eq!(body["code"], case.code, "{} {}: {body}", case.method, case.path);
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(s.visible_lsn().await, lsn, "nothing was committed");
    assert_eq!(s.changes("").await, feed_before, "the change feed is unchanged");
    let value = s.ok(Method::GET, "/v1/namespaces/a/kv/k", None).await;
    assert_eq!(value["value"], json!({"json": 1}));
    let graph = s.ok(Method::GET, "/v1/namespaces/a/graph/read_graph", None).await;
    assert_eq!(graph["entities"].as_array().unwrap().len(), 1);
    let health = s.ok(Method::GET, "/healthz", None).await;
    assert_eq!(health["status"], "ok");
}
