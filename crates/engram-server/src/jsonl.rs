//! Export and import of a whole database as JSON Lines (docs/http-api.md, "Export format").
//!
//! Every line is one object with a `type`: `namespace` (its embedding dimension), `memory`,
//! `entity`, `relation` or `kv`, each with a `namespace`. Lines of the MCP reference memory
//! server's `memory.jsonl` (`entity` and `relation` without `namespace`) are read too and go to
//! the default namespace. An export holds the current state at one LSN (not the history).
//!
//! An import streams: lines are read one at a time and committed in bounded batches, so its
//! memory use does not depend on the file's size ([`import`]); [`import_file`] checks the whole
//! file first, so a bad line (named by its number) imports nothing. Entities and relations follow
//! the graph's rules (an existing name or triple is skipped); memories keep their ids and
//! timestamps and replace a memory with the same id; keys are overwritten: every kind of line
//! is idempotent, so importing a file again is safe.

use crate::dto::{EntityBody, KvValueBody, MemoryBody, RelationBody};
use engram_core::{CoreError, Database, GraphReads, KvReads, Lsn, MemoryReads, ReadView, Transaction};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, Read, Seek, Write};

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
    #[error("line {line}: longer than {max_bytes} bytes (ImportOptions::max_line_bytes)")]
    LineTooLong { line: u64, max_bytes: usize },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// An import that stopped, and what it had committed before it stopped.
#[derive(Debug, thiserror::Error)]
#[error("{error}{}", committed_text(.committed))]
pub struct ImportError {
    pub error: JsonlError,
    /// `None`: nothing was imported.
    pub committed: Option<Committed>,
}

/// The batches an import committed before it stopped: lines 1 to `through_line`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub through_line: u64,
    pub lsn: Lsn,
    pub batches: u64,
}

fn committed_text(committed: &Option<Committed>) -> String {
    match committed {
        None => " (nothing was imported)".to_string(),
        Some(c) => format!(
            " (lines 1 to {} were imported, in {} batches, up to LSN {}; every kind of line imports idempotently, \
             so importing the corrected file again is safe)",
            c.through_line, c.batches, c.lsn
        ),
    }
}

impl From<JsonlError> for ImportError {
    fn from(error: JsonlError) -> Self {
        ImportError { error, committed: None }
    }
}

/// How an import reads and commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// A batch is committed when it holds this many lines...
    pub batch_lines: usize,
    /// ...or this many bytes of input, whichever comes first: the memory an import uses is
    /// bounded by one batch, whatever the file's size.
    pub batch_bytes: usize,
    /// A longer line is refused (before it is buffered whole).
    pub max_line_bytes: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            batch_lines: 10_000,
            batch_bytes: 16 << 20,
            // Room for the largest memory engram-core accepts, with its embedding and metadata.
            max_line_bytes: 32 << 20,
        }
    }
}

/// What [`import_file`] is doing when it reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportPhase {
    /// Reading the whole file and checking every line, committing nothing.
    Checking,
    /// Reading it again and committing it in batches.
    Committing,
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
    fn add(&mut self, other: &Counts) {
        self.namespaces += other.namespaces;
        self.memories += other.memories;
        self.entities += other.entities;
        self.relations += other.relations;
        self.kv += other.kv;
    }

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
    /// The last batch's commit LSN (the visible LSN if nothing was written).
    pub lsn: Lsn,
    pub counts: Counts,
    /// Transactions committed.
    pub batches: u64,
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

/// The lines of a JSONL input, one buffer reused for all, each bounded in length.
struct LineReader<R> {
    input: R,
    buffer: Vec<u8>,
    number: u64,
    bytes_read: u64,
    max_line_bytes: usize,
}

impl<R: BufRead> LineReader<R> {
    fn new(input: R, max_line_bytes: usize) -> Self {
        LineReader {
            input,
            buffer: Vec::new(),
            number: 0,
            bytes_read: 0,
            max_line_bytes,
        }
    }

    /// The next line that is not blank, parsed, with its number; `None` at the end.
    fn next_line(&mut self) -> Result<Option<(u64, Line)>, JsonlError> {
        loop {
            self.buffer.clear();
            let limit = self.max_line_bytes as u64 + 1;
            let read = (&mut self.input).take(limit).read_until(b'\n', &mut self.buffer)?;
            if read == 0 {
                return Ok(None);
            }
            self.number += 1;
            self.bytes_read += read as u64;
            if self.buffer.len() > self.max_line_bytes && self.buffer.last() != Some(&b'\n') {
                return Err(JsonlError::LineTooLong {
                    line: self.number,
                    max_bytes: self.max_line_bytes,
                });
            }
            let text = self.buffer.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let line = serde_json::from_slice(text).map_err(|e| JsonlError::BadLine {
                line: self.number,
                message: e.to_string(),
            })?;
            return Ok(Some((self.number, line)));
        }
    }
}

/// Applies one line to a transaction; the error is the line's message.
fn apply_line(txn: &mut Transaction, line: &Line, default_namespace: &str, counts: &mut Counts) -> Result<(), String> {
    let ns = |n: &Option<String>| n.clone().unwrap_or_else(|| default_namespace.to_string());
    let core = |e: CoreError| e.to_string();
    match line {
        Line::Namespace { namespace, dimension } => {
            if let Some(d) = dimension {
                txn.declare_dimension(namespace, *d).map_err(core)?;
            } else {
                engram_core::validate_namespace(namespace).map_err(core)?;
            }
            counts.namespaces += 1;
        }
        Line::Memory { namespace, memory } => {
            txn.restore_memory(&ns(namespace), memory.clone().into()).map_err(core)?;
            counts.memories += 1;
        }
        Line::Entity { namespace, entity } => {
            txn.create_entities(&ns(namespace), &[entity.clone().into()]).map_err(core)?;
            counts.entities += 1;
        }
        Line::Relation { namespace, relation } => {
            txn.create_relations(&ns(namespace), &[relation.clone().into()]).map_err(core)?;
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
                Some("hex") => hex::decode(key).map_err(|e| format!("key is not hexadecimal: {e}"))?,
                Some(other) => return Err(format!("unknown key_encoding {other:?} (utf8 or hex)")),
            };
            let value = value.clone().into_value().map_err(|e| e.message)?;
            txn.kv_put(&ns(namespace), &key_bytes, value).map_err(core)?;
            counts.kv += 1;
        }
    }
    Ok(())
}

/// The dimension a line fixes for its namespace, if any.
fn dimension_of<'a>(line: &'a Line, default_namespace: &'a str) -> Option<(&'a str, usize)> {
    match line {
        Line::Namespace {
            namespace,
            dimension: Some(d),
        } => Some((namespace, *d)),
        Line::Memory { namespace, memory } => memory
            .embedding
            .as_ref()
            .map(|e| (namespace.as_deref().unwrap_or(default_namespace), e.len())),
        _ => None,
    }
}

/// Reads the whole input and checks every line as the import will apply it, against the
/// database's current state, without committing anything; `progress` gets the bytes read.
///
/// Lines are applied to a scratch transaction that is dropped at every batch boundary (as
/// [`import`] would commit), so memory stays bounded; the one thing a dropped batch would forget, a namespace's embedding
/// dimension, is tracked across the whole file.
pub fn check(
    db: &Database,
    input: impl BufRead,
    default_namespace: &str,
    options: &ImportOptions,
    mut progress: impl FnMut(u64),
) -> Result<Counts, JsonlError> {
    engram_core::validate_namespace(default_namespace)?;
    let mut reader = LineReader::new(input, options.max_line_bytes);
    let mut counts = Counts::default();
    let mut dimensions: HashMap<String, (usize, u64)> = HashMap::new();
    let mut scratch = db.begin();
    let mut in_scratch = 0;
    let mut scratch_start_bytes = 0;
    while let Some((number, line)) = reader.next_line()? {
        if let Some((namespace, dimension)) = dimension_of(&line, default_namespace) {
            match dimensions.get(namespace) {
                Some(&(first, first_line)) if first != dimension => {
                    return Err(JsonlError::BadLine {
                        line: number,
                        message: format!(
                            "namespace {namespace:?} has {first}-dimension embeddings (line {first_line}); this line gives {dimension}"
                        ),
                    })
                }
                Some(_) => {}
                None => {
                    dimensions.insert(namespace.to_string(), (dimension, number));
                }
            }
        }
        apply_line(&mut scratch, &line, default_namespace, &mut counts).map_err(|message| JsonlError::BadLine { line: number, message })?;
        in_scratch += 1;
        if in_scratch >= options.batch_lines || reader.bytes_read - scratch_start_bytes >= options.batch_bytes as u64 {
            scratch = db.begin();
            in_scratch = 0;
            scratch_start_bytes = reader.bytes_read;
            progress(reader.bytes_read);
        }
    }
    progress(reader.bytes_read);
    Ok(counts)
}

/// Reads the input line by line and commits it in batches of at most `batch_lines` lines or
/// `batch_bytes` bytes, each batch one transaction (retried on a write-write conflict).
/// `progress` gets the bytes read so far.
///
/// An input that fits in one batch is imported atomically. A larger one is not: when a line
/// fails, the batches before it stay committed and the error says which lines they hold
/// ([`ImportError::committed`]). [`import_file`] checks the whole file first, so that bad input
/// imports nothing whatever its size.
pub fn import(
    db: &Database,
    input: impl BufRead,
    default_namespace: &str,
    options: &ImportOptions,
    mut progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    engram_core::validate_namespace(default_namespace).map_err(JsonlError::from)?;
    let mut reader = LineReader::new(input, options.max_line_bytes);
    let mut report = ImportReport {
        lsn: db.visible_lsn(),
        counts: Counts::default(),
        batches: 0,
    };
    let mut committed: Option<Committed> = None;
    let stopped = |error: JsonlError, committed: Option<Committed>| ImportError { error, committed };
    let mut batch: Vec<(u64, Line)> = Vec::new();
    let mut batch_start_bytes = 0;
    loop {
        let next = reader.next_line().map_err(|e| stopped(e, committed))?;
        let at_end = next.is_none();
        if let Some(line) = next {
            batch.push(line);
        }
        let full = batch.len() >= options.batch_lines || reader.bytes_read - batch_start_bytes >= options.batch_bytes as u64;
        if (full || at_end) && !batch.is_empty() {
            let (counts, lsn) = commit_batch(db, &batch, default_namespace).map_err(|e| stopped(e, committed))?;
            report.counts.add(&counts);
            report.lsn = lsn;
            report.batches += 1;
            committed = Some(Committed {
                through_line: batch.last().map_or(0, |(number, _)| *number),
                lsn,
                batches: report.batches,
            });
            batch.clear();
            batch_start_bytes = reader.bytes_read;
            progress(reader.bytes_read);
        }
        if at_end {
            break;
        }
    }
    progress(reader.bytes_read);
    Ok(report)
}

/// One batch in one transaction, retried a few times if a concurrent writer wins a conflict.
fn commit_batch(db: &Database, batch: &[(u64, Line)], default_namespace: &str) -> Result<(Counts, Lsn), JsonlError> {
    const ATTEMPTS: u32 = 10;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut txn = db.begin();
        let mut counts = Counts::default();
        for (number, line) in batch {
            apply_line(&mut txn, line, default_namespace, &mut counts).map_err(|message| JsonlError::BadLine { line: *number, message })?;
        }
        match txn.commit() {
            Ok(info) => return Ok((counts, info.lsn)),
            Err(CoreError::Conflict { .. }) if attempt < ATTEMPTS => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Imports a JSONL file: [`check`] reads it all and checks every line without writing, then
/// [`import`] reads it again and commits it in batches. Bad input therefore imports nothing,
/// whatever the file's size; only a failure of the database itself (a full disk, a failed
/// fsync) or a concurrent writer's conflicting change (none when the command line owns the data
/// directory) can stop an import with some batches committed, and the error then says which.
pub fn import_file(
    db: &Database,
    path: &std::path::Path,
    default_namespace: &str,
    options: &ImportOptions,
    mut progress: impl FnMut(ImportPhase, u64),
) -> Result<ImportReport, ImportError> {
    let mut file = std::fs::File::open(path).map_err(JsonlError::from)?;
    check(db, std::io::BufReader::new(&file), default_namespace, options, |n| {
        progress(ImportPhase::Checking, n)
    })?;
    file.seek(std::io::SeekFrom::Start(0)).map_err(JsonlError::from)?;
    import(db, std::io::BufReader::new(file), default_namespace, options, |n| {
        progress(ImportPhase::Committing, n)
    })
}
