//! A client for an OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, Ollama, vLLM, TEI).
//! With one configured, memories written with text and no embedding get one; without, the
//! database stores text only and search is keyword-only.

use crate::config::EmbedderConfig;
use crate::error::ApiError;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub struct Embedder {
    client: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<String>,
}

#[derive(Serialize)]
struct EmbeddingRequest<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

fn upstream(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "embedder_failed", message)
}

impl Embedder {
    pub fn new(config: &EmbedderConfig) -> Result<Embedder, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| format!("cannot build the embedder's HTTP client: {e}"))?;
        Ok(Embedder {
            client,
            endpoint: format!("{}/embeddings", config.url.trim_end_matches('/')),
            model: config.model.clone(),
            api_key: config.api_key.clone(),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One vector per text, in order. Failures of the endpoint are 502s (the request itself was
    /// fine), and nothing is written.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ApiError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut request = self.client.post(&self.endpoint).json(&EmbeddingRequest {
            model: &self.model,
            input: texts,
        });
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| upstream(format!("embedder at {} unreachable: {e}", self.endpoint)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            return Err(upstream(format!("embedder at {} answered {status}: {body}", self.endpoint)));
        }
        let parsed: EmbeddingResponse = response
            .json()
            .await
            .map_err(|e| upstream(format!("embedder at {} sent an unreadable response: {e}", self.endpoint)))?;
        if parsed.data.len() != texts.len() {
            return Err(upstream(format!(
                "embedder returned {} vectors for {} texts",
                parsed.data.len(),
                texts.len()
            )));
        }
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (position, item) in parsed.data.into_iter().enumerate() {
            let index = item.index.unwrap_or(position);
            match vectors.get_mut(index) {
                Some(slot @ None) => *slot = Some(item.embedding),
                _ => return Err(upstream(format!("embedder returned a duplicate or out-of-range index {index}"))),
            }
        }
        Ok(vectors.into_iter().map(|v| v.unwrap_or_default()).collect())
    }
}
