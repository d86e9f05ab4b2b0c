//! A small OpenAI-compatible `/v1/embeddings` endpoint (a real axum server on a loopback port)
//! returning deterministic 3-dimensional vectors; model `fake-model`; the input
//! `make the embedder fail` gets a 500.

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The vector the fake endpoint returns for `text`: deterministic and text-dependent.
pub fn fake_vector(text: &str) -> Vec<f32> {
    vec![text.len() as f32, f32::from(text.bytes().next().unwrap_or(0)), 1.0]
}

async fn fake_embeddings(Json(request): Json<Value>) -> Result<Json<Value>, (axum::http::StatusCode, String)> {
    let inputs = request["input"].as_array().cloned().unwrap_or_default();
    if request["model"] != "fake-model" {
        return Err((axum::http::StatusCode::BAD_REQUEST, "unknown model".into()));
    }
    if inputs.iter().any(|t| t.as_str() == Some("make the embedder fail")) {
        return Err((axum::http::StatusCode::INTERNAL_SERVER_ERROR, "model crashed".into()));
    }
    // Out of order on purpose: clients must use `index`.
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": fake_vector(t.as_str().unwrap_or(""))}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": "fake-model"})))
}

pub async fn start_fake() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/v1/embeddings", post(fake_embeddings));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
