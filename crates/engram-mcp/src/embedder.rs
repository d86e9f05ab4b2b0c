//! Turning text into vectors on write: `remember` with text and no embedding asks the embedder,
//! when the server has one. The server crate implements this for its OpenAI-compatible HTTP
//! embedder; this crate only defines the seam.

use std::future::Future;
use std::pin::Pin;

/// Why an embedder could not embed: shown to the MCP client as the tool's error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the embedder failed: {message}")]
pub struct EmbedError {
    pub message: String,
}

impl EmbedError {
    pub fn new(message: impl Into<String>) -> EmbedError {
        EmbedError { message: message.into() }
    }
}

/// What [`TextEmbedder::embed`] returns: a boxed future, so that the trait can be used as
/// `Arc<dyn TextEmbedder>`.
pub type EmbedFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, EmbedError>> + Send + 'a>>;

/// Embeds texts into vectors of one fixed dimension.
pub trait TextEmbedder: Send + Sync {
    /// One vector per text, in the order of `texts`. A result of another length is treated as
    /// an embedder failure, and the write that needed it commits nothing.
    fn embed<'a>(&'a self, texts: &'a [String]) -> EmbedFuture<'a>;
}
