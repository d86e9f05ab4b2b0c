//! The API's errors: every failure is a JSON body `{code, message}` with a stable `code`.
//! Input errors are 4xx and change nothing; 5xx is reserved for faults of the server itself
//! (a failed disk, a stopped database, an unreachable embedder).

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use engram_core::CoreError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::error::Category;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ErrorBody {
    /// Stable, machine-readable: e.g. `malformed_json`, `invalid_name`, `conflict`.
    pub code: String,
    /// For people: what was wrong and, where it helps, what to do.
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let message = e.to_string();
        let (status, code) = match &e {
            CoreError::InvalidName { .. } => (StatusCode::BAD_REQUEST, "invalid_name"),
            CoreError::TooLarge { .. } => (StatusCode::BAD_REQUEST, "too_large"),
            CoreError::DimensionMismatch { .. } => (StatusCode::BAD_REQUEST, "dimension_mismatch"),
            CoreError::NonFiniteValue { .. } => (StatusCode::BAD_REQUEST, "non_finite_value"),
            CoreError::BadDimension { .. } => (StatusCode::BAD_REQUEST, "bad_dimension"),
            CoreError::MetadataNotObject { .. } => (StatusCode::BAD_REQUEST, "metadata_not_object"),
            CoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            CoreError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            CoreError::HistoryNotRetained { .. } => (StatusCode::GONE, "history_not_retained"),
            CoreError::OutOfRange { .. } => (StatusCode::BAD_REQUEST, "out_of_range"),
            CoreError::MissingQuery { .. } => (StatusCode::BAD_REQUEST, "missing_query"),
            CoreError::MetricMismatch { .. } => (StatusCode::BAD_REQUEST, "metric_mismatch"),
            // The index did not catch up within the bounded wait: retry later.
            CoreError::IndexTimeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "index_timeout"),
            CoreError::Poisoned { .. } => (StatusCode::SERVICE_UNAVAILABLE, "database_stopped"),
            CoreError::CorruptRecord { .. }
            | CoreError::CorruptCheckpoint { .. }
            | CoreError::MissingCheckpoint { .. }
            | CoreError::Io { .. }
            | CoreError::Wal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request("bad_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request("bad_path", r.body_text())
    }
}

/// A JSON request body (or response), whose rejections are JSON `ApiError`s.
///
/// The body is parsed with `serde_json::from_slice` straight from the buffered bytes into the
/// target type. (`axum::Json` tracks the path of every value it parses, through
/// serde_path_to_error, to name the field of an error; on a 384-float embedding that tracking
/// cost more than the parse itself. serde_json's own errors name the line and column.)
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request with Content-Type: application/json",
            ));
        }
        let body = Bytes::from_request(request, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", r.body_text())
            } else {
                ApiError::bad_request("bad_body", r.body_text())
            }
        })?;
        serde_json::from_slice(&body).map(ApiJson).map_err(|e| match e.classify() {
            Category::Data => ApiError::bad_request("wrong_type", format!("the JSON body does not have the expected shape: {e}")),
            Category::Syntax | Category::Eof => ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}")),
            Category::Io => ApiError::bad_request("bad_body", format!("the body could not be read: {e}")),
        })
    }
}

/// `application/json`, or a `+json` type such as `application/merge-patch+json`, with any
/// parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` with JSON rejections.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path` with JSON rejections.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_are_recognised_by_their_media_type() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            is_json(&headers)
        };
        for yes in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(with(yes), "{yes}");
        }
        for no in ["text/plain", "application/jsonl", "application/x-www-form-urlencoded", "json", ""] {
            assert!(!with(no), "{no}");
        }
        assert!(!is_json(&HeaderMap::new()), "no Content-Type");
    }
}
