//! engram-server: Engram's HTTP/JSON API over an embedded `engram_core::Database`.
//!
//! [`router`] builds the whole API for an [`AppState`], including search (`routes::search`) and
//! the MCP endpoint at `/mcp` ([`mcp`]); [`serve`] runs it with graceful shutdown. See
//! docs/http-api.md.

pub mod auth;
pub mod config;
pub mod dto;
pub mod embedder;
pub mod error;
pub mod jsonl;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod state;

pub use config::{ApiKeyConfig, Config, EmbedderConfig, Limits, Role};
pub use embedder::Embedder;
pub use error::{ApiError, ErrorBody};
pub use server::{router, serve, shutdown_signal};
pub use state::{AppState, AsOf, Durability};
