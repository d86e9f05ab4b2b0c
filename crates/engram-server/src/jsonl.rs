//! Export and import of a whole database as JSON Lines (docs/http-api.md, "Export format").
//!
//! Every line is one object with a `type`: `namespace` (its embedding dimension), `memory`,
//! `entity`, `relation` or `kv`, each with a `namespace`. Lines of the MCP reference memory
//! server's `memory.jsonl` (`entity` and `relation` without `namespace`) are read too and go to
//! the default namespace. An export holds the current state at one LSN (not the history).
//!
//! An import is one transaction: a bad line (named by its number) imports nothing. Entities and
//! relations follow the graph's rules (an existing name or triple is skipped); memories keep
//! their ids and timestamps and replace a memory with the same id; keys are overwritten.

use crate::dto::{EntityBody, KvValueBody, MemoryBody, RelationBody};
use engram_core::{CoreError, Database, GraphReads, KvReads, Lsn, MemoryReads, ReadView};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    Namespace {
        namespace: String,
        dimension: Option<usize>,
    },
    Memory {
        namespace: Option<String>,
        #[serde(flatten)]
        memory: MemoryBody,
    },
    Entity {
        namespace: Option<String>,
        #[serde(flatten)]
        entity: EntityBody,
    },
    Relation {
        namespace: Option<String>,
        #[serde(flatten)]
        relation: RelationBody,
    },
    Kv {
        namespace: Option<String>,
        key: String,
        /// `utf8` (default) or `hex`.
        #[serde(default)]
        key_encoding: Option<String>,
        value: KvValueBody,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("line {line}: {message}")]
    BadLine { line: u64, message: String },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Core(#[from] CoreError),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub namespaces: u64,
    pub memories: u64,
    pub entities: u64,
    pub relations: u64,
    pub kv: u64,
}

impl Counts {
    pub fn lines(&self) -> u64 {
        self.namespaces + self.memories + self.entities + self.relations + self.kv
    }
}

#[derive(Debug, Clone)]
pub struct ExportReport {
    pub lsn: Lsn,
    pub counts: Counts,
}

#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The commit LSN (the snapshot's if nothing was written).
    pub lsn: Lsn,
    pub counts: Counts,
}

fn write_line(out: &mut impl Write, line: &Line) -> Result<(), JsonlError> {
    serde_json::to_writer(&mut *out, line).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes the database's current state; `progress` is called with the number of lines written.
pub fn export(db: &Database, out: &mut impl Write, mut progress: impl FnMut(u64)) -> Result<ExportReport, JsonlError> {
    let snapshot = db.snapshot();
    let mut counts = Counts::default();
    for ns in snapshot.namespaces()? {
        let namespace = Some(ns.clone());
        write_line(
            out,
            &Line::Namespace {
                namespace: ns.clone(),
                dimension: snapshot.dimension(&ns),
            },
        )?;
        counts.namespaces += 1;
        for memory in snapshot.list_memories(&ns)? {
            write_line(
                out,
                &Line::Memory {
                    namespace: namespace.clone(),
                    memory: memory.into(),
                },
            )?;
            counts.memories += 1;
            progress(counts.lines());
        }
        let graph = snapshot.read_graph(&ns)?;
        for entity in graph.entities {
            write_line(
                out,
                &Line::Entity {
                    namespace: namespace.clone(),
                    entity: entity.into(),
                },
            )?;
            counts.entities += 1;
        }
        for relation in graph.relations {
            write_line(
                out,
                &Line::Relation {
                    namespace: namespace.clone(),
                    relation: relation.into(),
                },
            )?;
            counts.relations += 1;
        }
        progress(counts.lines());
        for (key, value) in snapshot.kv_scan_prefix(&ns, b"")? {
            let (key, encoding) = crate::dto::key_text(&key);
            write_line(
                out,
                &Line::Kv {
                    namespace: namespace.clone(),
                    key,
                    key_encoding: Some(encoding.to_string()),
                    value: value.into(),
                },
            )?;
            counts.kv += 1;
        }
        progress(counts.lines());
    }
    out.flush()?;
    Ok(ExportReport {
        lsn: snapshot.read_lsn(),
        counts,
    })
}

/// Reads every line first (so a bad line fails before anything is written), then commits them
/// in one transaction. `progress` is called with the bytes read so far.
pub fn import(
    db: &Database,
    input: impl BufRead,
    default_namespace: &str,
    mut progress: impl FnMut(u64),
) -> Result<ImportReport, JsonlError> {
    engram_core::validate_namespace(default_namespace)?;
    let mut lines = Vec::new();
    let mut bytes_read = 0u64;
    for (index, text) in input.lines().enumerate() {
        let text = text?;
        let number = index as u64 + 1;
        bytes_read += text.len() as u64 + 1;
        if text.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| JsonlError::BadLine {
            line: number,
            message: e.to_string(),
        })?;
        lines.push((number, line));
        if lines.len() % 1000 == 0 {
            progress(bytes_read);
        }
    }
    progress(bytes_read);
    let mut counts = Counts::default();
    let (_, info) = db.run(10, |txn| {
        counts = Counts::default();
        for (number, line) in &lines {
            let at = |e: CoreError| match e {
                CoreError::Conflict { .. } => e,
                other => CoreError::InvalidName {
                    what: "import line",
                    value: number.to_string(),
                    reason: leak_reason(other.to_string()),
                },
            };
            let ns = |n: &Option<String>| n.clone().unwrap_or_else(|| default_namespace.to_string());
            match line {
                Line::Namespace { namespace, dimension } => {
                    if let Some(d) = dimension {
                        txn.declare_dimension(namespace, *d).map_err(at)?;
                    }
                    counts.namespaces += 1;
                }
                Line::Memory { namespace, memory } => {
                    txn.restore_memory(&ns(namespace), memory.clone().into()).map_err(at)?;
                    counts.memories += 1;
                }
                Line::Entity { namespace, entity } => {
                    txn.create_entities(&ns(namespace), &[entity.clone().into()]).map_err(at)?;
                    counts.entities += 1;
                }
                Line::Relation { namespace, relation } => {
                    txn.create_relations(&ns(namespace), &[relation.clone().into()]).map_err(at)?;
                    counts.relations += 1;
                }
                Line::Kv {
                    namespace,
                    key,
                    key_encoding,
                    value,
                } => {
                    let key_bytes = match key_encoding.as_deref() {
                        None | Some("utf8") => key.as_bytes().to_vec(),
                        Some("hex") => hex::decode(key).map_err(|e| at(bad_field("key", e.to_string())))?,
                        Some(other) => return Err(at(bad_field("key_encoding", format!("unknown encoding {other:?}")))),
                    };
                    let value = value.clone().into_value().map_err(|e| at(bad_field("value", e.message)))?;
                    txn.kv_put(&ns(namespace), &key_bytes, value).map_err(at)?;
                    counts.kv += 1;
                }
            }
        }
        Ok(())
    })?;
    Ok(ImportReport { lsn: info.lsn, counts })
}

fn bad_field(what: &'static str, reason: String) -> CoreError {
    CoreError::InvalidName {
        what,
        value: String::new(),
        reason: leak_reason(reason),
    }
}

/// `CoreError::InvalidName` carries a `&'static str` reason; an import fails once per process
/// run, so leaking its one message is bounded.
fn leak_reason(reason: String) -> &'static str {
    Box::leak(reason.into_boxed_str())
}
