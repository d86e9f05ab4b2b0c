//! Per-call access control for MCP served behind API keys.
//!
//! An HTTP front end (engram-server) attaches a [`McpAccess`] to each HTTP request's extensions;
//! rmcp hands the request's `http::request::Parts` to the handler, so every tool call and resource
//! read is checked against the scope of the key that sent it, with the namespace the call
//! actually touches (Engram's own tools take a `namespace` argument). Over stdio there are no
//! HTTP parts: the process owner has full access, unless the server was built with
//! [`EngramMcp::require_access`](crate::EngramMcp::require_access).

use crate::engram_tools::{FORGET, HISTORY, REMEMBER};
use crate::recall::RECALL;
use crate::reference::*;
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use std::collections::HashSet;
use std::sync::Arc;

/// What the caller of one MCP request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpAccess {
    /// Only read tools and resources.
    pub read_only: bool,
    /// `None`: every namespace.
    pub namespaces: Option<Arc<HashSet<String>>>,
}

impl McpAccess {
    /// Everything: the caller of a server without keys, or of stdio.
    pub fn full() -> McpAccess {
        McpAccess {
            read_only: false,
            namespaces: None,
        }
    }

    pub fn may_use_namespace(&self, namespace: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|allowed| allowed.contains(namespace))
    }

    /// Why `tool` on `namespace` is refused to this caller, if it is.
    pub(crate) fn refusal(&self, tool: &str, namespace: &str) -> Option<String> {
        if self.read_only && tool_writes(tool) {
            return Some(format!(
                "forbidden: {tool} writes, and this API key is read-only (read tools: {})",
                READ_TOOLS.join(", ")
            ));
        }
        if !self.may_use_namespace(namespace) {
            return Some(format!("forbidden: this API key may not access namespace {namespace:?}"));
        }
        None
    }
}

/// The tools that only read; every other tool writes.
pub const READ_TOOLS: [&str; 5] = [READ_GRAPH, SEARCH_NODES, OPEN_NODES, RECALL, HISTORY];

/// The tools that commit changes.
pub const WRITE_TOOLS: [&str; 8] = [
    CREATE_ENTITIES,
    CREATE_RELATIONS,
    ADD_OBSERVATIONS,
    DELETE_ENTITIES,
    DELETE_OBSERVATIONS,
    DELETE_RELATIONS,
    REMEMBER,
    FORGET,
];

/// Unknown tools count as writing, so a tool added later is refused to read-only keys until it
/// is listed in [`READ_TOOLS`].
pub(crate) fn tool_writes(tool: &str) -> bool {
    !READ_TOOLS.contains(&tool)
}

/// The access a request carries: from its HTTP parts, or `None` when it came without any (stdio).
pub(crate) fn access_of(context: &RequestContext<RoleServer>) -> Option<&McpAccess> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<McpAccess>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_tool_is_classified_once() {
        let tools: Vec<String> = crate::reference::tools()
            .into_iter()
            .chain(crate::engram_tools::tools())
            .chain([crate::recall::recall_tool()])
            .map(|t| t.name.to_string())
            .collect();
        for tool in &tools {
            let listed = READ_TOOLS.contains(&tool.as_str()) as u8 + WRITE_TOOLS.contains(&tool.as_str()) as u8;
            assert_eq!(listed, 1, "{tool} must be in exactly one of READ_TOOLS and WRITE_TOOLS");
        }
        assert_eq!(tools.len(), READ_TOOLS.len() + WRITE_TOOLS.len());
    }

    #[test]
    fn read_only_and_namespace_scopes_refuse_with_reasons() {
        let scoped = McpAccess {
            read_only: true,
            namespaces: Some(Arc::new(HashSet::from(["agents".to_string()]))),
        };
        assert_eq!(scoped.refusal(READ_GRAPH, "agents"), None);
        assert_eq!(scoped.refusal(RECALL, "agents"), None);
        let write = scoped.refusal(CREATE_ENTITIES, "agents").unwrap();
        assert!(write.contains("read-only") && write.contains("create_entities"), "{write}");
        let other = scoped.refusal(HISTORY, "other").unwrap();
        assert!(other.contains("\"other\""), "{other}");
        assert!(scoped.refusal("some_future_tool", "agents").is_some());
        assert_eq!(McpAccess::full().refusal(DELETE_ENTITIES, "anything"), None);
    }
}
