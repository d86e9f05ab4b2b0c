//! The change feed over HTTP: every committed change exactly once, in LSN order, across a
//! disconnect, with a durable cursor; NDJSON and SSE.

use crate::common;

use common::{config, TestServer};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const TRANSACTIONS: usize = 60;

/// Commits `TRANSACTIONS` transactions of 1 to 3 changes each; returns their commit LSNs.
async fn write_transactions(s: &TestServer) -> Vec<u64> {
    let mut lsns = Vec::new();
    for i in 0..TRANSACTIONS {
        let mut operations = vec![json!({"op": "kv_put", "namespace": "feed", "key": format!("k{}", i % 7), "value": {"json": i}})];
        if i % 3 == 0 {
            operations.push(json!({"op": "emit_event", "namespace": "feed", "topic": "tick", "payload": {"i": i}}));
        }
        if i % 5 == 0 {
            operations
                .push(json!({"op": "create_entities", "namespace": "other", "entities": [{"name": format!("e{i}"), "entityType": "t"}]}));
        }
        let result = s
            .ok(Method::POST, "/v1/transactions", Some(json!({"operations": operations})))
            .await;
        lsns.push(result["lsn"].as_u64().unwrap());
        tokio::task::yield_now().await;
    }
    lsns
}

/// Reads NDJSON lines from a streaming response until `stop` says so.
async fn read_lines(response: reqwest::Response, mut take: impl FnMut(Value) -> bool) {
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(&chunk.expect("stream chunk"));
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line).expect("an event per line");
            if !take(event) {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_in_lsn_order_across_a_reconnect_with_a_durable_cursor() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let (status, body) = s.post("/v1/cursors", json!({"name": "consumer"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let writer = {
        let s = s.clone();
        tokio::spawn(async move { write_transactions(&s).await })
    };

    // First session: follow the feed while the writer commits, process about half, record the
    // position (only transactions seen whole), then drop the connection mid-stream.
    let mut processed: Vec<Value> = Vec::new();
    let mut pending: Vec<Value> = Vec::new();
    let response = s.request(Method::GET, "/v1/cursors/consumer/changes").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    read_lines(response, |event| {
        let lsn = event["lsn"].as_u64().unwrap();
        if pending.first().is_some_and(|p| p["lsn"].as_u64().unwrap() != lsn) {
            // A higher LSN: the pending transaction is complete.
            processed.append(&mut pending);
        }
        pending.push(event);
        processed.len() < 50
    })
    .await;
    let position = processed.last().unwrap()["lsn"].as_u64().unwrap();
    s.ok(Method::POST, "/v1/cursors/consumer/advance", Some(json!({"lsn": position})))
        .await;

    let lsns = writer.await.unwrap();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]));

    // Second session from the durable cursor: the rest, then the stream ends (follow=false).
    let response = s
        .request(Method::GET, "/v1/cursors/consumer/changes?follow=false")
        .send()
        .await
        .unwrap();
    read_lines(response, |event| {
        processed.push(event);
        true
    })
    .await;
    let last = processed.last().unwrap()["lsn"].as_u64().unwrap();
    s.ok(Method::POST, "/v1/cursors/consumer/advance", Some(json!({"lsn": last}))).await;

    // Exactly the committed changes, once each, in order.
    let everything = s.changes("").await;
    let expected_events: usize = (0..TRANSACTIONS)
        .map(|i| 1 + usize::from(i % 3 == 0) + usize::from(i % 5 == 0))
        .sum();
    assert_eq!(everything.len(), expected_events);
    assert_eq!(processed, everything);
    let seen_lsns: Vec<u64> = {
        let mut l: Vec<u64> = processed.iter().map(|e| e["lsn"].as_u64().unwrap()).collect();
        l.dedup();
        l
    };
    assert_eq!(seen_lsns, lsns, "every transaction, in commit order");
    assert!(processed.windows(2).all(|w| w[0]["lsn"].as_u64() <= w[1]["lsn"].as_u64()));

    // Nothing more after the cursor.
    let response = s
        .request(Method::GET, "/v1/cursors/consumer/changes?follow=false")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "");

    // A namespace filter.
    let other = s.changes("namespace=other").await;
    assert_eq!(other.len(), TRANSACTIONS / 5);
    assert!(other.iter().all(|e| e["namespace"] == "other" && e["kind"] == "entity"));
    // From an LSN.
    let tail = s.changes(&format!("from_lsn={}", lsns[TRANSACTIONS - 1])).await;
    assert!(tail.iter().all(|e| e["lsn"].as_u64() == Some(lsns[TRANSACTIONS - 1])));
    assert!(!tail.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_carry_the_lsn_as_id() {
    let s = TestServer::start().await;
    for i in 0..3 {
        s.ok(Method::PUT, &format!("/v1/namespaces/n/kv/k{i}"), Some(json!({"json": i})))
            .await;
    }
    let response = s
        .request(Method::GET, "/v1/changes?follow=false")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|l| l.parse().unwrap())
        .collect();
    let data: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(data.len(), 3);
    assert!(data.iter().zip(&ids).all(|(d, id)| d["lsn"].as_u64() == Some(*id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_stream_sees_new_commits_and_ends_on_shutdown() {
    let s = TestServer::start().await;
    let response = s.request(Method::GET, "/v1/changes?from_lsn=1").send().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(read_lines(response, move |e| tx.send(e).is_ok()));
    s.ok(
        Method::PUT,
        "/v1/namespaces/n/kv/late",
        Some(json!({"json": "arrives after the stream opened"})),
    )
    .await;
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event["key"], "late");
    // Graceful shutdown ends the stream instead of waiting for it forever.
    tokio::time::timeout(std::time::Duration::from_secs(10), s.stop())
        .await
        .expect("shutdown with an open stream");
    tokio::time::timeout(std::time::Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_bounded() {
    let s = TestServer::start_with(config("[limits]\nmax_feed_streams = 1\n")).await;
    let first = s.request(Method::GET, "/v1/changes").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (status, body) = s.get("/v1/changes").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "too_many_streams");
    // Closing the first frees its slot once its thread notices (within a poll interval).
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let response = s.request(Method::GET, "/v1/changes?follow=false").send().await.unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
