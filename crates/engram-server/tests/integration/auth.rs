//! The auth matrix: no key, wrong key, read-only key writing, a key for namespace A touching B,
//! non-admin keys on admin endpoints; every refusal is a JSON 401/403 and changes nothing.

use crate::common;

use common::{config, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A request: method, path, JSON body.
type Req = (Method, String, Option<serde_json::Value>);

const ADMIN: &str = "admin-key-0123456789";
const WRITER_A: &str = "writer-a-0123456789";
const READER_A: &str = "reader-a-0123456789";
const WRITER_ALL: &str = "writer-all-0123456789";

fn keyed_config() -> engram_server::Config {
    config(&format!(
        r#"
[[keys]]
key = "{ADMIN}"
role = "admin"

[[keys]]
key = "{WRITER_A}"
role = "read_write"
namespaces = ["a"]

[[keys]]
key = "{READER_A}"
role = "read_only"
namespaces = ["a"]

[[keys]]
key = "{WRITER_ALL}"
role = "read_write"
"#
    ))
}

async fn as_key(
    s: &mut TestServer,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    s.key = key.map(str::to_string);
    s.call(method, path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_json_and_changes_nothing() {
    let mut s = TestServer::start_with(keyed_config()).await;
    let put = |ns: &str| (Method::PUT, format!("/v1/namespaces/{ns}/kv/k"), Some(json!({"json": 1})));
    let get = |ns: &str| (Method::GET, format!("/v1/namespaces/{ns}/kv/k"), None);

    // Seed both namespaces.
    for ns in ["a", "b"] {
        let (m, p, b) = put(ns);
        let (status, body) = as_key(&mut s, Some(ADMIN), m, &p, b).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    s.key = Some(ADMIN.into());
    let lsn = s.visible_lsn().await;

    // (key, request, expected status, expected code)
    let cases: Vec<(Option<&str>, Req, StatusCode, &str)> = vec![
        (None, get("a"), StatusCode::UNAUTHORIZED, "unauthenticated"),
        (None, put("a"), StatusCode::UNAUTHORIZED, "unauthenticated"),
        (Some("wrong-key-0123456789"), get("a"), StatusCode::UNAUTHORIZED, "invalid_key"),
        (Some("wrong-key-0123456789"), put("a"), StatusCode::UNAUTHORIZED, "invalid_key"),
        (Some(READER_A), put("a"), StatusCode::FORBIDDEN, "forbidden"),
        (Some(READER_A), get("b"), StatusCode::FORBIDDEN, "forbidden"),
        (Some(WRITER_A), put("b"), StatusCode::FORBIDDEN, "forbidden"),
        (Some(WRITER_A), get("b"), StatusCode::FORBIDDEN, "forbidden"),
        (
            Some(WRITER_A),
            (
                Method::POST,
                "/v1/transactions".into(),
                Some(json!({"operations": [
                    {"op": "kv_put", "namespace": "a", "key": "k", "value": {"json": 2}},
                    {"op": "kv_put", "namespace": "b", "key": "k", "value": {"json": 2}}
                ]})),
            ),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            Some(WRITER_A),
            (Method::POST, "/v1/admin/checkpoint".into(), None),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            Some(WRITER_ALL),
            (Method::POST, "/v1/admin/checkpoint".into(), None),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            Some(WRITER_A),
            (Method::GET, "/v1/changes?follow=false".into(), None),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            Some(WRITER_A),
            (Method::GET, "/v1/changes?follow=false&namespace=b".into(), None),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            Some(WRITER_A),
            (Method::POST, "/v1/cursors".into(), Some(json!({"name": "c"}))),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            Some(READER_A),
            (Method::POST, "/v1/namespaces/a/memories".into(), Some(json!({"text": "x"}))),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            Some(READER_A),
            (
                Method::POST,
                "/v1/namespaces/a/graph/create_entities".into(),
                Some(json!({"entities": []})),
            ),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            None,
            (Method::GET, "/metrics".into(), None),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
    ];
    for (key, (method, path, body), status, code) in cases {
        let response = {
            let mut r = s.client.request(method.clone(), s.url(&path));
            if let Some(k) = key {
                r = r.header("authorization", format!("Bearer {k}"));
            }
            if let Some(b) = &body {
                r = r.json(b);
            }
            r.send().await.unwrap()
        };
        assert_eq!(response.status(), status, "{key:?} {method} {path}");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["code"], code, "{key:?} {method} {path}: {json}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    s.key = Some(ADMIN.into());
    assert_eq!(s.visible_lsn().await, lsn, "no refused request committed anything");

    // What each key may do.
    let allowed: Vec<(&str, Req)> = vec![
        (READER_A, get("a")),
        (WRITER_A, put("a")),
        (WRITER_A, get("a")),
        (WRITER_A, (Method::GET, "/v1/changes?follow=false&namespace=a".into(), None)),
        (WRITER_ALL, put("b")),
        (WRITER_ALL, (Method::POST, "/v1/cursors".into(), Some(json!({"name": "c"})))),
        (ADMIN, (Method::POST, "/v1/admin/checkpoint".into(), None)),
    ];
    for (key, (method, path, body)) in allowed {
        let mut r = s.client.request(method.clone(), s.url(&path)).bearer_auth(key);
        if let Some(b) = &body {
            r = r.json(b);
        }
        let response = r.send().await.unwrap();
        assert!(response.status().is_success(), "{key} {method} {path}: {}", response.status());
    }
    // Public endpoints need no key.
    let health = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let doc = s.client.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(doc.status(), StatusCode::OK);
}

#[test]
fn a_non_loopback_address_needs_a_key() {
    let open = engram_server::Config::default();
    assert!(open.check_listen(&"0.0.0.0:7700".parse().unwrap()).is_err());
    assert!(open.check_listen(&"192.168.1.10:7700".parse().unwrap()).is_err());
    assert!(open.check_listen(&"127.0.0.1:7700".parse().unwrap()).is_ok());
    assert!(keyed_config().check_listen(&"0.0.0.0:7700".parse().unwrap()).is_ok());
}
