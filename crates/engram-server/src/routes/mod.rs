//! The HTTP handlers, one file per area.

pub mod admin;
pub mod changes;
pub mod graph;
pub mod kv;
pub mod memories;
pub mod search;
pub mod transactions;

use crate::config::Limits;
use crate::error::{ApiError, ApiResult};

/// Refuses a call with more than `limits.max_batch_items` items.
pub(crate) fn check_batch(limits: &Limits, what: &str, count: usize) -> ApiResult<()> {
    if count > limits.max_batch_items {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("{count} {what} in one call; the limit is {}", limits.max_batch_items),
        ));
    }
    Ok(())
}

/// Refuses an embedding longer than the configured limit (the engine checks the rest: empty,
/// NaN, infinite, the namespace's dimension).
pub(crate) fn check_dimension(limits: &Limits, embedding: Option<&Vec<f32>>) -> ApiResult<()> {
    match embedding {
        Some(e) if e.len() > limits.max_dimension => Err(ApiError::bad_request(
            "bad_dimension",
            format!("embedding has {} dimensions; the limit is {}", e.len(), limits.max_dimension),
        )),
        _ => Ok(()),
    }
}
