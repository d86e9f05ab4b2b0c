//! engram-server: Engram's HTTP/JSON API over an embedded `engram_core::Database`.
//!
//! [`router`] builds the whole API for an [`AppState`]; [`serve`] runs it with graceful
//! shutdown. The MCP endpoint and search are added by their own crates: merge their routers into
//! the one [`router`] returns (`.merge(...)`, `.nest_service("/mcp", ...)`), sharing the state's
//! `Arc<Database>`. See docs/http-api.md.

pub mod auth;
pub mod config;
pub mod dto;
pub mod embedder;
pub mod error;
pub mod jsonl;
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
