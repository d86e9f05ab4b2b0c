//! Retrieval over HTTP: each search mode, filters, as_of, min_lsn, bounds errors as typed 4xx
//! JSON, the embedder path (query text embedded), keyword-only without an embedder, entity
//! search, neighbours and the vector-space declaration.

use crate::common;

use common::fake_embedder::{fake_vector, start_fake};
use common::{config, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SEARCH: &str = "/v1/namespaces/s/search";

/// Inserts a memory and returns (id, commit LSN).
async fn insert(s: &TestServer, ns: &str, body: Value) -> (String, u64) {
    let (status, created) = s.post(&format!("/v1/namespaces/{ns}/memories"), body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (created["id"].as_str().unwrap().to_string(), created["lsn"].as_u64().unwrap())
}

async fn search(s: &TestServer, body: Value) -> Value {
    let (status, result) = s.post(SEARCH, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body} -> {result}");
    result
}

fn hit_ids(result: &Value) -> Vec<&str> {
    result["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["memory"]["id"].as_str().unwrap())
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-5
}

/// Three memories with given vectors: a pie, a tree, the ocean.
async fn fixture(s: &TestServer) -> (String, String, String, u64) {
    let (pie, _) = insert(
        s,
        "s",
        json!({"text": "red apple pie", "embedding": [1.0, 0.0, 0.0], "metadata": {"kind": "food"}}),
    )
    .await;
    let (tree, _) = insert(
        s,
        "s",
        json!({"text": "green apple tree in the garden", "embedding": [0.8, 0.6, 0.0], "metadata": {"kind": "plant"}}),
    )
    .await;
    let (ocean, lsn) = insert(
        s,
        "s",
        json!({"text": "blue ocean", "embedding": [0.0, 0.0, 1.0], "metadata": {"kind": "place"}}),
    )
    .await;
    (pie, tree, ocean, lsn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_ranks_and_reports_its_signals() {
    let s = TestServer::start().await;
    let (pie, tree, ocean, lsn) = fixture(&s).await;

    let vector = search(&s, json!({"vector": [1.0, 0.0, 0.0], "k": 2, "mode": "vector"})).await;
    assert_eq!(hit_ids(&vector), [pie.as_str(), tree.as_str()]);
    assert_eq!(vector["mode"], "vector");
    assert_eq!(vector["embedder_used"], false);
    assert_eq!(vector["lsn"], lsn);
    let first = &vector["hits"][0];
    assert!(
        close(first["score"].as_f64().unwrap(), 1.0),
        "cosine of a vector with itself: {first}"
    );
    assert_eq!(first["vector"]["rank"], 1);
    assert!(first.get("keyword").is_none(), "{first}");
    assert!(close(vector["hits"][1]["score"].as_f64().unwrap(), 0.8), "{vector}");
    assert_eq!(first["memory"]["text"], "red apple pie");
    assert_eq!(first["memory"]["metadata"], json!({"kind": "food"}));

    let keyword = search(&s, json!({"query": "apple pie", "k": 10, "mode": "keyword"})).await;
    assert_eq!(
        hit_ids(&keyword),
        [pie.as_str(), tree.as_str()],
        "only memories with a query term, best first"
    );
    assert_eq!(keyword["mode"], "keyword");
    assert!(keyword["hits"][0].get("vector").is_none());
    assert_eq!(keyword["hits"][0]["keyword"]["rank"], 1);
    assert!(keyword["hits"][0]["score"].as_f64().unwrap() > keyword["hits"][1]["score"].as_f64().unwrap());
    assert!(keyword.get("note").is_none(), "keyword was asked for: {keyword}");

    // Hybrid: the ocean is first by keyword and last by vector; the pie first by vector only.
    let hybrid = search(&s, json!({"query": "ocean", "vector": [1.0, 0.0, 0.0], "k": 3, "mode": "hybrid"})).await;
    assert_eq!(hybrid["mode"], "hybrid");
    assert_eq!(hit_ids(&hybrid), [ocean.as_str(), pie.as_str(), tree.as_str()]);
    let top = &hybrid["hits"][0];
    assert_eq!(top["keyword"]["rank"], 1);
    assert_eq!(top["vector"]["rank"], 3);
    let rrf = |rank: f64| 1.0 / (engram_core::RRF_K as f64 + rank);
    assert!(close(top["score"].as_f64().unwrap(), rrf(1.0) + rrf(3.0)), "{top}");
    assert!(close(hybrid["hits"][1]["score"].as_f64().unwrap(), rrf(1.0)), "{hybrid}");

    // Without a mode: hybrid when both signals are there, else the one that is.
    let both = search(&s, json!({"query": "ocean", "vector": [1.0, 0.0, 0.0], "k": 3})).await;
    assert_eq!(both["mode"], "hybrid");
    assert_eq!(both["hits"], hybrid["hits"]);
    let only_vector = search(&s, json!({"vector": [0.0, 0.0, 1.0], "k": 1})).await;
    assert_eq!(only_vector["mode"], "vector");
    assert_eq!(hit_ids(&only_vector), [ocean.as_str()]);

    // k past the namespace returns every match; an unknown namespace has no hits.
    let all = search(&s, json!({"vector": [1.0, 0.0, 0.0], "k": 1000})).await;
    assert_eq!(all["hits"].as_array().unwrap().len(), 3);
    let (status, none) = s.post("/v1/namespaces/elsewhere/search", json!({"query": "apple", "k": 5})).await;
    assert_eq!(status, StatusCode::OK, "{none}");
    assert_eq!(none["hits"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_embedder_text_searches_by_keyword_and_says_so() {
    let s = TestServer::start().await;
    let (pie, tree, _, _) = fixture(&s).await;
    for body in [
        json!({"query": "apple", "k": 5}),
        json!({"query": "apple", "k": 5, "mode": "hybrid"}),
    ] {
        let result = search(&s, body).await;
        assert_eq!(result["mode"], "keyword");
        assert_eq!(result["embedder_used"], false);
        assert!(result["note"].as_str().unwrap().contains("no embedder"), "{result}");
        let mut ids = hit_ids(&result);
        ids.sort();
        let mut expected = [pie.as_str(), tree.as_str()];
        expected.sort();
        assert_eq!(ids, expected);
    }
    // Vector mode with text only cannot run: a 400 that says why.
    let (status, error) = s.post(SEARCH, json!({"query": "apple", "k": 5, "mode": "vector"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "missing_query");
    assert!(error["message"].as_str().unwrap().contains("no embedder"), "{error}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_as_of_and_min_lsn() {
    let s = TestServer::start().await;
    let (pie, tree, ocean, before) = fixture(&s).await;

    // A filter is applied inside the search: k hits that all match.
    let filtered = search(&s, json!({"vector": [1.0, 0.0, 0.0], "k": 1, "filter": {"kind": "place"}})).await;
    assert_eq!(hit_ids(&filtered), [ocean.as_str()]);
    let filtered = search(&s, json!({"query": "apple", "k": 5, "filter": {"kind": "plant"}})).await;
    assert_eq!(hit_ids(&filtered), [tree.as_str()]);
    let nothing = search(&s, json!({"query": "apple", "k": 5, "filter": {"kind": "nothing"}})).await;
    assert_eq!(nothing["hits"], json!([]));

    // The pie is deleted and the tree rewritten; as_of still sees them as they were.
    s.ok(Method::DELETE, &format!("/v1/namespaces/s/memories/{pie}"), None).await;
    let patched = s
        .ok(
            Method::PATCH,
            &format!("/v1/namespaces/s/memories/{tree}"),
            Some(json!({"text": "a pear tree"})),
        )
        .await;
    let after = patched["lsn"].as_u64().unwrap();
    let now = search(&s, json!({"query": "apple", "k": 5})).await;
    assert_eq!(now["hits"], json!([]), "no memory mentions apples any more: {now}");
    assert_eq!(now["lsn"], after);
    let then = search(&s, json!({"query": "apple", "k": 5, "as_of": before.to_string()})).await;
    assert_eq!(then["lsn"], before);
    assert_eq!(then["hits"].as_array().unwrap().len(), 2, "{then}");
    let pie_then = then["hits"].as_array().unwrap().iter().find(|h| h["memory"]["id"] == pie.as_str());
    assert_eq!(pie_then.unwrap()["memory"]["text"], "red apple pie");
    let vector_then = search(&s, json!({"vector": [1.0, 0.0, 0.0], "k": 1, "as_of": before.to_string()})).await;
    assert_eq!(hit_ids(&vector_then), [pie.as_str()]);
    // A time after every commit reads the newest state.
    let by_time = search(&s, json!({"query": "pear", "k": 5, "as_of": "2999-01-01T00:00:00Z"})).await;
    assert_eq!(hit_ids(&by_time), [tree.as_str()]);

    // min_lsn: waits for the index (already there here); an LSN never committed is refused.
    let waited = search(&s, json!({"query": "pear", "k": 5, "min_lsn": after})).await;
    assert_eq!(hit_ids(&waited), [tree.as_str()]);
    let (status, error) = s.post(SEARCH, json!({"query": "pear", "k": 5, "min_lsn": after + 1000})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "min_lsn_ahead");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_search_input_is_a_typed_4xx() {
    let s = TestServer::start().await;
    fixture(&s).await;
    let cases = [
        (json!({"query": "apple", "k": 0}), "out_of_range"),
        (json!({"query": "apple", "k": 1001}), "out_of_range"),
        (json!({"vector": [1.0, 0.0, 0.0], "k": 5, "ef_search": 0}), "out_of_range"),
        (json!({"vector": [1.0, 0.0, 0.0], "k": 5, "ef_search": 10001}), "out_of_range"),
        (json!({"vector": [1.0, 0.0], "k": 5}), "dimension_mismatch"),
        (json!({"vector": [], "k": 5}), "bad_dimension"),
        // 1e39 is past f32: it arrives as infinity.
        (json!({"vector": [1e39, 0.0, 0.0], "k": 5}), "non_finite_value"),
        (json!({"vector": vec![0.5; 4097], "k": 5}), "bad_dimension"),
        (json!({"k": 5}), "missing_query"),
        (json!({"query": "", "k": 5}), "missing_query"),
        (json!({"vector": [1.0, 0.0, 0.0], "k": 5, "mode": "keyword"}), "missing_query"),
        (json!({"query": "x".repeat(5000), "k": 5}), "too_large"),
        (json!({"query": "apple"}), "wrong_type"),
        (json!({"query": "apple", "k": 5, "mode": "fuzzy"}), "wrong_type"),
        (json!({"query": "apple", "k": 5, "colour": "red"}), "wrong_type"),
        (json!({"query": "apple", "k": 5, "filter": [1]}), "wrong_type"),
        (json!({"query": "apple", "k": 5, "as_of": "yesterday"}), "bad_as_of"),
    ];
    for (body, code) in cases {
        let (status, error) = s.post(SEARCH, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {error}");
        assert_eq!(error["code"], code, "{body} -> {error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    // JSON has no NaN: a client that writes one sends malformed JSON.
    let response = s
        .request(Method::POST, SEARCH)
        .header("content-type", "application/json")
        .body(r#"{"vector": [NaN, 0, 0], "k": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "malformed_json");
    let (status, error) = s
        .post(&format!("/v1/namespaces/{}/search", "n".repeat(300)), json!({"query": "x", "k": 1}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "invalid_name");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedder_embeds_query_text_for_vector_and_hybrid() {
    let fake = start_fake().await;
    let s = TestServer::start_with(config(&format!("[embedder]\nurl = \"http://{fake}/v1\"\nmodel = \"fake-model\"\n"))).await;
    let (hello, _) = insert(&s, "s", json!({"text": "hello"})).await;
    let (zebra, _) = insert(&s, "s", json!({"text": "zebra crossing"})).await;
    insert(&s, "s", json!({"text": "an apple a day keeps worries away"})).await;

    let hybrid = search(&s, json!({"query": "hello", "k": 3})).await;
    assert_eq!(hybrid["mode"], "hybrid");
    assert_eq!(hybrid["embedder_used"], true);
    assert!(hybrid.get("note").is_none());
    let top = &hybrid["hits"][0];
    assert_eq!(top["memory"]["id"], hello.as_str());
    assert_eq!(top["memory"]["embedding"], json!(fake_vector("hello")));
    assert_eq!(top["keyword"]["rank"], 1);
    assert_eq!(top["vector"]["rank"], 1);
    assert!(close(top["vector"]["score"].as_f64().unwrap(), 1.0), "{top}");

    // The embedded query "zebra crossing" equals that memory's vector.
    let vector = search(&s, json!({"query": "zebra crossing", "k": 1, "mode": "vector"})).await;
    assert_eq!(vector["embedder_used"], true);
    assert_eq!(hit_ids(&vector), [zebra.as_str()]);
    assert!(vector["hits"][0].get("keyword").is_none());

    // Keyword mode does not call the embedder; a given vector is used as given.
    let keyword = search(&s, json!({"query": "hello", "k": 3, "mode": "keyword"})).await;
    assert_eq!(keyword["embedder_used"], false);
    assert_eq!(hit_ids(&keyword), [hello.as_str()]);
    let given = search(
        &s,
        json!({"query": "hello", "vector": fake_vector("zebra crossing"), "k": 1, "mode": "vector"}),
    )
    .await;
    assert_eq!(given["embedder_used"], false);
    assert_eq!(hit_ids(&given), [zebra.as_str()]);

    // An embedder failure is a 502: the request was fine, the upstream was not.
    let (status, error) = s.post(SEARCH, json!({"query": "make the embedder fail", "k": 3})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{error}");
    assert_eq!(error["code"], "embedder_failed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_and_entity_search() {
    let s = TestServer::start().await;
    s.ok(
        Method::POST,
        "/v1/namespaces/g/graph/create_entities",
        Some(json!({"entities": [
            {"name": "ada", "entityType": "person", "observations": ["wrote the first program"]},
            {"name": "charles", "entityType": "person", "observations": ["designed the analytical engine"]},
            {"name": "engine", "entityType": "machine", "observations": ["the analytical engine, never finished"]},
            {"name": "london", "entityType": "city", "observations": []}
        ]})),
    )
    .await;
    let created = s
        .ok(
            Method::POST,
            "/v1/namespaces/g/graph/create_relations",
            Some(json!({"relations": [
                {"from": "ada", "to": "charles", "relationType": "knows"},
                {"from": "charles", "to": "engine", "relationType": "designed"},
                {"from": "ada", "to": "london", "relationType": "lived_in"}
            ]})),
        )
        .await;
    let relations_lsn = created["lsn"].as_u64().unwrap();
    let names = |g: &Value| {
        let mut n: Vec<String> = g["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    let base = "/v1/namespaces/g/graph/neighbours";

    let one_hop = s.ok(Method::GET, &format!("{base}?entity=ada"), None).await;
    assert_eq!(names(&one_hop), ["ada", "charles", "london"]);
    assert_eq!(one_hop["relations"].as_array().unwrap().len(), 2, "{one_hop}");
    assert_eq!(one_hop["lsn"], relations_lsn);
    let knows = s
        .ok(
            Method::GET,
            &format!("{base}?entity=ada&depth=2&relation_types=knows,designed"),
            None,
        )
        .await;
    assert_eq!(names(&knows), ["ada", "charles", "engine"]);
    let incoming = s.ok(Method::GET, &format!("{base}?entity=charles&direction=in"), None).await;
    assert_eq!(names(&incoming), ["ada", "charles"]);
    let outgoing = s.ok(Method::GET, &format!("{base}?entity=charles&direction=out"), None).await;
    assert_eq!(names(&outgoing), ["charles", "engine"]);
    let alone = s.ok(Method::GET, &format!("{base}?entity=charles&depth=0"), None).await;
    assert_eq!(names(&alone), ["charles"]);

    // as_of: before the relations existed, ada had no neighbours.
    let before = s
        .ok(Method::GET, &format!("{base}?entity=ada&as_of={}", relations_lsn - 1), None)
        .await;
    assert_eq!(names(&before), ["ada"]);

    for (query, status, code) in [
        ("entity=nobody", StatusCode::NOT_FOUND, "not_found"),
        ("entity=ada&depth=17", StatusCode::BAD_REQUEST, "out_of_range"),
        ("entity=ada&direction=sideways", StatusCode::BAD_REQUEST, "bad_query"),
        ("entity=ada&depth=-1", StatusCode::BAD_REQUEST, "bad_query"),
        ("depth=1", StatusCode::BAD_REQUEST, "bad_query"),
        ("entity=ada&as_of=never", StatusCode::BAD_REQUEST, "bad_as_of"),
    ] {
        let (got, error) = s.get(&format!("{base}?{query}")).await;
        assert_eq!(got, status, "{query} -> {error}");
        assert_eq!(error["code"], code, "{query} -> {error}");
    }

    let found = s
        .ok(
            Method::POST,
            "/v1/namespaces/g/graph/search_entities",
            Some(json!({"query": "analytical engine", "k": 5})),
        )
        .await;
    let hits = found["hits"].as_array().unwrap();
    let found_names: Vec<&str> = hits.iter().map(|h| h["entity"]["name"].as_str().unwrap()).collect();
    assert_eq!(
        found_names,
        ["engine", "charles"],
        "the name, type and observations all count: {found}"
    );
    assert!(hits[0]["score"].as_f64().unwrap() > hits[1]["score"].as_f64().unwrap());
    assert_eq!(found["lsn"], relations_lsn);
    let (status, error) = s
        .post("/v1/namespaces/g/graph/search_entities", json!({"query": "engine", "k": 0}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "out_of_range");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_vector_space_fixes_dimension_and_metric() {
    let s = TestServer::start().await;
    let path = "/v1/namespaces/v/vector_space";
    let declared = s.ok(Method::PUT, path, Some(json!({"dimension": 2, "metric": "l2"}))).await;
    assert!(declared["lsn"].as_u64().unwrap() > 0);
    let (near, _) = insert(&s, "v", json!({"text": "near", "embedding": [1.0, 1.0]})).await;
    insert(&s, "v", json!({"text": "far", "embedding": [10.0, 10.0]})).await;
    let result = s
        .ok(Method::POST, "/v1/namespaces/v/search", Some(json!({"vector": [1.0, 2.0], "k": 2})))
        .await;
    assert_eq!(
        hit_ids(&result),
        [near.as_str(), result["hits"][1]["memory"]["id"].as_str().unwrap()]
    );
    assert!(
        close(result["hits"][0]["score"].as_f64().unwrap(), -1.0),
        "l2 scores are negated distances: {result}"
    );

    // The same declaration again is accepted; another metric or dimension is not.
    s.ok(Method::PUT, path, Some(json!({"dimension": 2, "metric": "l2"}))).await;
    let lsn = s.visible_lsn().await;
    for (body, code) in [
        (json!({"dimension": 2, "metric": "cosine"}), "metric_mismatch"),
        (json!({"dimension": 3, "metric": "l2"}), "dimension_mismatch"),
        (json!({"dimension": 0, "metric": "l2"}), "bad_dimension"),
        (json!({"dimension": 5000, "metric": "l2"}), "bad_dimension"),
        (json!({"dimension": 2, "metric": "manhattan"}), "wrong_type"),
    ] {
        let (status, error) = s.call(Method::PUT, path, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {error}");
        assert_eq!(error["code"], code, "{body} -> {error}");
    }
    assert_eq!(s.visible_lsn().await, lsn, "refused declarations commit nothing");
    s.stop().await;
}
