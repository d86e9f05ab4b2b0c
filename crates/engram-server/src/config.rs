//! The server's configuration (TOML): listen address, data directory, limits, the embedder and
//! API keys. Every field has a default, so an empty file (or none) is a valid configuration.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
pub const DEFAULT_DATA_DIR: &str = "./engram-data";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`--listen` overrides it).
    pub listen: Option<String>,
    /// Database directory (`--data` overrides it).
    pub data: Option<PathBuf>,
    #[serde(default)]
    pub limits: Limits,
    /// How far the search indexer may trail commits before writers of memories wait for it.
    #[serde(default)]
    pub index: IndexConfig,
    /// An OpenAI-compatible embeddings endpoint; environment variables override it.
    pub embedder: Option<EmbedderConfig>,
    /// API keys. With none, every request is allowed (and only a loopback address may be used).
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
    /// The namespace of the MCP reference tools served at `/mcp` (`default` when absent).
    pub mcp_namespace: Option<String>,
    /// `Host` names `/mcp` accepts (DNS-rebinding protection). Absent: loopback names only
    /// (`localhost`, `127.0.0.1`, `::1`); a server reached under another name must list it.
    pub mcp_allowed_hosts: Option<Vec<String>>,
}

pub const DEFAULT_MCP_NAMESPACE: &str = "default";

/// The search indexer's queue bound (`engram_core::IndexQueueBound`): a larger one lets a burst
/// of memory commits be acknowledged before it is indexed, a smaller one keeps searches fast
/// during the burst (each scans what is queued exactly). Absent fields keep the engine's default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Most memory versions queued for the indexer.
    pub queue_max_changes: Option<usize>,
    /// Most MiB of embeddings queued for the indexer.
    pub queue_max_vector_mib: Option<usize>,
}

impl IndexConfig {
    /// The engine's bound with this section's overrides.
    pub fn queue_bound(&self) -> engram_core::IndexQueueBound {
        let default = engram_core::IndexQueueBound::default();
        engram_core::IndexQueueBound {
            changes: self.queue_max_changes.unwrap_or(default.changes),
            vector_bytes: self
                .queue_max_vector_mib
                .map_or(default.vector_bytes, |mib| mib.saturating_mul(1 << 20)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Most items in one call: operations of a transaction, entities, relations, observation
    /// groups, names.
    pub max_batch_items: usize,
    /// Most dimensions of an embedding (the engine's own limit is 4096).
    pub max_dimension: usize,
    /// Most items one key/value scan or memory listing returns.
    pub max_scan_items: usize,
    /// Most change-feed streams open at once (each holds a thread while it follows the log).
    pub max_feed_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 * 1024 * 1024,
            max_batch_items: 1000,
            max_dimension: engram_core::MAX_DIMENSION,
            max_scan_items: 10_000,
            max_feed_streams: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderConfig {
    /// Base URL of the API, e.g. `http://127.0.0.1:11434/v1`; `/embeddings` is appended.
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    #[serde(default = "default_embedder_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_embedder_timeout_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including /v1/admin.
    Admin,
    ReadWrite,
    ReadOnly,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The secret, sent as `Authorization: Bearer <key>`.
    pub key: String,
    pub role: Role,
    /// The namespaces this key may touch; absent means all.
    pub namespaces: Option<Vec<String>>,
    /// A label for logs.
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Overrides the embedder from `ENGRAM_EMBEDDER_URL`, `ENGRAM_EMBEDDER_MODEL` and
    /// `ENGRAM_EMBEDDER_API_KEY` (URL and model together define one).
    pub fn apply_env(&mut self) {
        let url = std::env::var("ENGRAM_EMBEDDER_URL").ok().filter(|v| !v.is_empty());
        let model = std::env::var("ENGRAM_EMBEDDER_MODEL").ok().filter(|v| !v.is_empty());
        let key = std::env::var("ENGRAM_EMBEDDER_API_KEY").ok().filter(|v| !v.is_empty());
        if let (Some(url), Some(model)) = (url.clone(), model.clone()) {
            self.embedder = Some(EmbedderConfig {
                url,
                model,
                api_key: key.clone(),
                timeout_ms: default_embedder_timeout_ms(),
            });
        }
        if let (Some(embedder), Some(key)) = (self.embedder.as_mut(), key) {
            embedder.api_key = Some(key);
        }
    }

    /// The namespace of the MCP reference tools.
    pub fn mcp_namespace(&self) -> &str {
        self.mcp_namespace.as_deref().unwrap_or(DEFAULT_MCP_NAMESPACE)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        engram_core::validate_namespace(self.mcp_namespace()).map_err(|e| ConfigError::Invalid(format!("mcp_namespace: {e}")))?;
        if let Some(hosts) = &self.mcp_allowed_hosts {
            if hosts.iter().any(|h| h.trim().is_empty()) {
                return Err(ConfigError::Invalid("mcp_allowed_hosts: a host name must not be empty".into()));
            }
        }
        let l = &self.limits;
        if l.max_body_bytes < 1024 || l.max_batch_items == 0 || l.max_scan_items == 0 || l.max_feed_streams == 0 {
            return Err(ConfigError::Invalid(
                "limits: max_body_bytes must be at least 1024; max_batch_items, max_scan_items and max_feed_streams at least 1".into(),
            ));
        }
        if l.max_dimension == 0 || l.max_dimension > engram_core::MAX_DIMENSION {
            return Err(ConfigError::Invalid(format!(
                "limits.max_dimension must be between 1 and {}",
                engram_core::MAX_DIMENSION
            )));
        }
        for (i, k) in self.keys.iter().enumerate() {
            if k.key.len() < 16 {
                return Err(ConfigError::Invalid(format!("keys[{i}]: a key must be at least 16 characters")));
            }
            if self.keys[..i].iter().any(|o| o.key == k.key) {
                return Err(ConfigError::Invalid(format!("keys[{i}]: the same key appears twice")));
            }
            for ns in k.namespaces.iter().flatten() {
                engram_core::validate_namespace(ns).map_err(|e| ConfigError::Invalid(format!("keys[{i}]: {e}")))?;
            }
        }
        Ok(())
    }

    /// Refuses a listen address beyond loopback when no API key is configured.
    pub fn check_listen(&self, addr: &SocketAddr) -> Result<(), ConfigError> {
        if !addr.ip().is_loopback() && self.keys.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {addr} (not a loopback address) without an API key: add [[keys]] to the config file"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_valid_and_loopback_only() {
        let c = Config::parse("").unwrap();
        assert!(c.check_listen(&"127.0.0.1:7700".parse().unwrap()).is_ok());
        assert!(c.check_listen(&"[::1]:7700".parse().unwrap()).is_ok());
        assert!(c.check_listen(&"0.0.0.0:7700".parse().unwrap()).is_err());
    }

    #[test]
    fn keys_allow_any_address_and_are_checked() {
        let c = Config::parse("[[keys]]\nkey = \"0123456789abcdef\"\nrole = \"read_only\"\nnamespaces = [\"a\"]\n").unwrap();
        assert!(c.check_listen(&"0.0.0.0:7700".parse().unwrap()).is_ok());
        assert!(Config::parse("[[keys]]\nkey = \"short\"\nrole = \"admin\"\n").is_err());
        assert!(Config::parse("[[keys]]\nkey = \"0123456789abcdef\"\nrole = \"root\"\n").is_err());
        assert!(Config::parse("[[keys]]\nkey = \"0123456789abcdef\"\nrole = \"admin\"\nnamespaces = [\"a/b\"]\n").is_err());
        assert!(Config::parse("unknown = 1\n").is_err());
    }

    /// The first TOML block after `heading` in a document.
    fn toml_block_after<'a>(document: &'a str, heading: &str) -> &'a str {
        let from = document.find(heading).expect("the heading is in the document");
        let start = from + document[from..].find("```toml\n").expect("a TOML block follows") + "```toml\n".len();
        let end = start + document[start..].find("```").expect("the block is closed");
        &document[start..end]
    }

    /// The configurations the README and docs/http-api.md show are valid as written (a
    /// top-level key placed after a table would belong to that table and be refused).
    #[test]
    fn the_documented_configurations_parse() {
        for (name, document, heading) in [
            ("README.md", include_str!("../../../README.md"), "## Configuration"),
            ("docs/http-api.md", include_str!("../../../docs/http-api.md"), "## Configuration"),
        ] {
            let config = Config::parse(toml_block_after(document, heading)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(config.mcp_namespace(), "default", "{name}");
            assert!(config.embedder.is_some(), "{name}");
            assert!(!config.keys.is_empty(), "{name}");
            assert_eq!(config.index.queue_bound(), engram_core::IndexQueueBound::default(), "{name}");
        }
    }

    #[test]
    fn the_index_section_overrides_the_engine_queue_bound_field_by_field() {
        let default = engram_core::IndexQueueBound::default();
        assert_eq!(Config::parse("").unwrap().index.queue_bound(), default);
        let c = Config::parse("[index]\nqueue_max_vector_mib = 16\n").unwrap();
        assert_eq!(
            c.index.queue_bound(),
            engram_core::IndexQueueBound {
                changes: default.changes,
                vector_bytes: 16 << 20
            }
        );
        let c = Config::parse("[index]\nqueue_max_changes = 0\nqueue_max_vector_mib = 0\n").unwrap();
        assert_eq!(
            c.index.queue_bound(),
            engram_core::IndexQueueBound {
                changes: 0,
                vector_bytes: 0
            }
        );
        assert!(Config::parse("[index]\nqueue_max_vectors = 1\n").is_err());
        assert!(Config::parse("[index]\nqueue_max_changes = -1\n").is_err());
    }
}
