//! The API's errors: every failure is a JSON body `{code, message}` with a stable `code`.
//! Input errors are 4xx and change nothing; 5xx is reserved for faults of the server itself
//! (a failed disk, a stopped database, an unreachable embedder).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use engram_core::CoreError;
use serde::{Deserialize, Serialize};
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

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let (status, code) = match &r {
            JsonRejection::JsonDataError(_) => (StatusCode::BAD_REQUEST, "wrong_type"),
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            JsonRejection::MissingJsonContentType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            _ => (StatusCode::BAD_REQUEST, "bad_body"),
        };
        ApiError::new(status, code, r.body_text())
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

/// `axum::Json` whose rejections are JSON `ApiError`s.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

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
