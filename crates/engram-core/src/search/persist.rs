//! The search indexes in a checkpoint: `ckpt-<L>.index` next to `ckpt-<L>.ckpt`, holding every
//! namespace's versions and HNSW graph as of the checkpoint LSN `L`, so that open does not
//! rebuild the graphs (docs/checkpoint-format.md, *The index file*). The inverted index is not
//! stored: it is rebuilt from the versions' texts at load, which costs little next to a graph.
//!
//! A missing, damaged or inconsistent index file is never used: open logs a warning and rebuilds
//! the indexes from the store, which is always the source of truth.

use super::flat_graph::{field, FlatGraph, FlatGraphSeed};
use super::hnsw::{Hnsw, SavedGraph, SavedLinks, SavedNode, SavedNodeParts, SavedNodeV1};
use super::index::{NamespaceIndex, NodeValidity, VersionEntry};
use super::vector::Metric;
use crate::error::{CoreError, Result};
use crate::model::{Space, Value};
use crate::store::Store;
use engram_wal::storage::{read_exact_at, OpenMode, Storage};
use engram_wal::Lsn;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Directory of the index files inside the database directory (next to `checkpoints/`).
pub const INDEX_DIR: &str = "search-index";

const MAGIC: &[u8; 8] = b"ENGRMIDX";
/// 3: graph nodes hold their links, and their int8 codes and scale (search/codes.rs) only when
/// the memory version they index was superseded or pruned by the checkpoint's LSN; the codes of
/// the others (nearly all, usually) are recomputed at load from the embeddings the checkpoint
/// holds anyway, so the file does not repeat them. 2: every node held its codes; still read.
/// 1: nodes held the f32 vector; still read, each vector encoded at load.
pub(crate) const INDEX_FORMAT_VERSION: u32 = 3;
const INDEX_FORMAT_VERSION_CODES: u32 = 2;
const INDEX_FORMAT_VERSION_F32: u32 = 1;
const HEADER_BYTES: usize = 40;
const TRAILER_BYTES: usize = 4;
const SECTION_LENGTH_BYTES: usize = 8;

pub(crate) fn file_name(lsn: Lsn) -> String {
    format!("ckpt-{lsn:020}.index")
}

/// The LSN in an index file name (`ckpt-<20 digits>.index`).
pub(crate) fn parse_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix("ckpt-")?.strip_suffix(".index")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// One namespace's section; `N` is the graph's node form (format 3: [`SavedLinks`]; format 2:
/// [`SavedNode`]; format 1: [`SavedNodeV1`]).
#[derive(Serialize, Deserialize)]
struct SavedNamespace<N = SavedLinks> {
    name: String,
    metric: Metric,
    entries: Vec<SavedEntry>,
    /// Graph node -> entry slot.
    node_entry: Vec<u32>,
    graph: Option<SavedGraph<N>>,
}

impl<N> SavedNamespace<N> {
    /// The same section with its graph (if any) converted, or the conversion's error.
    fn try_map_graph<M, E>(
        self,
        convert: impl FnOnce(SavedGraph<N>) -> std::result::Result<SavedGraph<M>, E>,
    ) -> std::result::Result<SavedNamespace<M>, E> {
        Ok(SavedNamespace {
            name: self.name,
            metric: self.metric,
            entries: self.entries,
            node_entry: self.node_entry,
            graph: self.graph.map(convert).transpose()?,
        })
    }
}

impl SavedNamespace<SavedNodeV1> {
    /// A format 1 section as loaded: every vector replaced by its codes.
    fn encode(self) -> std::result::Result<LoadedNamespace, Rejection> {
        self.try_map_graph(|g| g.encode().map(|g| g.map_nodes(SavedLinks::from)))?
            .into_loaded()
    }
}

impl<N: SavedNodeParts> SavedNamespace<N> {
    /// A section decoded whole (formats 1 and 2) as loaded.
    fn into_loaded(self) -> std::result::Result<LoadedNamespace, Rejection> {
        Ok(LoadedNamespace {
            name: self.name,
            metric: self.metric,
            entries: self.entries,
            node_entry: self.node_entry,
            graph: self.graph.map(FlatGraph::from_saved).transpose()?,
        })
    }
}

/// A section as the load takes it: its graph in the layout the graph keeps. Format 3 sections
/// decode into it directly ([`LoadedNamespaceSeed`]).
struct LoadedNamespace {
    name: String,
    metric: Metric,
    entries: Vec<SavedEntry>,
    node_entry: Vec<u32>,
    graph: Option<FlatGraph>,
}

/// Decodes a format 3 section (a [`SavedNamespace`]'s bytes) as a [`LoadedNamespace`], its
/// graph sized by the node slots decoded before it. A graph refused for what it holds leaves
/// the reason in `rejection`.
struct LoadedNamespaceSeed<'r> {
    rejection: &'r mut Option<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for LoadedNamespaceSeed<'_> {
    type Value = LoadedNamespace;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<LoadedNamespace, D::Error> {
        d.deserialize_struct("SavedNamespace", &["name", "metric", "entries", "node_entry", "graph"], self)
    }
}

impl<'de> serde::de::Visitor<'de> for LoadedNamespaceSeed<'_> {
    type Value = LoadedNamespace;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a namespace's index section")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<LoadedNamespace, A::Error> {
        use serde::de::Error;
        let name = field(&mut seq, 0, "name")?;
        let metric = field(&mut seq, 1, "metric")?;
        let entries = field(&mut seq, 2, "entries")?;
        let node_entry: Vec<u32> = field(&mut seq, 3, "node_entry")?;
        let graph = seq
            .next_element_seed(OptionalGraphSeed {
                nodes: node_entry.len(),
                rejection: self.rejection,
            })?
            .ok_or_else(|| A::Error::custom("field 4 (graph) is missing"))?;
        Ok(LoadedNamespace {
            name,
            metric,
            entries,
            node_entry,
            graph,
        })
    }
}

/// A section's `Option<SavedGraph>` as an optional [`FlatGraph`] of `nodes` nodes.
struct OptionalGraphSeed<'r> {
    nodes: usize,
    rejection: &'r mut Option<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for OptionalGraphSeed<'_> {
    type Value = Option<FlatGraph>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Option<FlatGraph>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for OptionalGraphSeed<'_> {
    type Value = Option<FlatGraph>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an optional graph")
    }

    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Option<FlatGraph>, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Option<FlatGraph>, D::Error> {
        use serde::de::DeserializeSeed;
        let seed = FlatGraphSeed {
            nodes: self.nodes,
            rejection: self.rejection,
        };
        seed.deserialize(d).map(Some)
    }
}

#[derive(Serialize, Deserialize)]
struct SavedEntry {
    /// The memory id (the key's id).
    id: String,
    created_lsn: Lsn,
    /// `u64::MAX` while current at `L`.
    superseded_lsn: Lsn,
}

fn io_error(context: String, source: std::io::Error) -> CoreError {
    CoreError::Io {
        context,
        source: Arc::new(source),
    }
}

/// The state of one namespace's index as of `lsn`: versions created after it are left out, and
/// a supersession after it is undone (the version was current at `lsn`). Nodes and entries are
/// numbered in LSN order, so both are prefixes.
fn saved_namespace(name: &str, index: &NamespaceIndex, lsn: Lsn) -> SavedNamespace {
    let entry_limit = index.entries.partition_point(|e| e.created_lsn <= lsn);
    let node_limit = index.node_entry.partition_point(|&slot| (slot as usize) < entry_limit);
    // A version current at `lsn` is in the checkpoint (retention never prunes a key's newest
    // version), so its codes can be recomputed from its embedding at load; a superseded one may
    // be pruned by this checkpoint or a later one, and one already pruned has no embedding left.
    let keep_codes = |n: usize| {
        let entry = &index.entries[index.node_entry[n] as usize];
        entry.superseded_lsn <= lsn || entry.value.is_none()
    };
    SavedNamespace {
        name: name.to_string(),
        metric: index.metric,
        entries: index.entries[..entry_limit]
            .iter()
            .map(|e| SavedEntry {
                id: e.memory().map(|m| m.id.clone()).unwrap_or_default(),
                created_lsn: e.created_lsn,
                superseded_lsn: if e.superseded_lsn > lsn { Lsn::MAX } else { e.superseded_lsn },
            })
            .collect(),
        node_entry: index.node_entry[..node_limit].to_vec(),
        graph: index.hnsw.as_ref().map(|g| g.export(node_limit, keep_codes)),
    }
}

/// Writes the index file of the checkpoint at `lsn` (the indexes must have reached `lsn`):
/// temp file, fdatasync, rename, directory sync, as for the checkpoint itself. Returns its size.
pub(crate) fn save(
    storage: &dyn Storage,
    dir: &Path,
    lsn: Lsn,
    namespaces: Vec<(String, Arc<std::sync::RwLock<NamespaceIndex>>)>,
) -> Result<u64> {
    let sections = namespaces.into_iter().map(|(name, index)| {
        // Copied out under the read lock; encoded after it is released.
        let index = index.read().unwrap_or_else(|p| p.into_inner());
        saved_namespace(&name, &index, lsn)
    });
    write_file(storage, dir, lsn, INDEX_FORMAT_VERSION, sections)
}

/// Writes an index file of format `version` whose sections are `sections` (format 1 only in
/// tests, which check that such a file still loads).
fn write_file<N: Serialize>(
    storage: &dyn Storage,
    dir: &Path,
    lsn: Lsn,
    version: u32,
    sections: impl ExactSizeIterator<Item = SavedNamespace<N>>,
) -> Result<u64> {
    let mut body = Vec::new();
    let count = sections.len() as u64;
    for saved in sections {
        let start = body.len();
        body.extend_from_slice(&[0; SECTION_LENGTH_BYTES]);
        body = postcard::to_extend(&saved, body).map_err(|e| CoreError::Io {
            context: "encoding the search index".into(),
            source: Arc::new(std::io::Error::other(e)),
        })?;
        let section = (body.len() - start - SECTION_LENGTH_BYTES) as u64;
        body[start..start + SECTION_LENGTH_BYTES].copy_from_slice(&section.to_le_bytes());
    }
    let mut file_bytes = Vec::with_capacity(HEADER_BYTES + body.len() + TRAILER_BYTES);
    file_bytes.extend_from_slice(MAGIC);
    file_bytes.extend_from_slice(&version.to_le_bytes());
    file_bytes.extend_from_slice(&0u32.to_le_bytes());
    file_bytes.extend_from_slice(&lsn.to_le_bytes());
    file_bytes.extend_from_slice(&count.to_le_bytes());
    file_bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file_bytes.extend_from_slice(&body);
    drop(body);
    let crc = crc32c::crc32c(&file_bytes);
    file_bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(format!("{}.tmp", file_name(lsn)));
    let path = dir.join(file_name(lsn));
    let what = |action: &str, p: &Path| format!("{action} {}", p.display());
    let _ = storage.remove(&tmp); // a leftover of an interrupted run may carry this name
    let file = storage
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| io_error(what("creating", &tmp), e))?;
    file.write_all_at(&file_bytes, 0).map_err(|e| io_error(what("writing", &tmp), e))?;
    file.sync_data().map_err(|e| io_error(what("fdatasync of", &tmp), e))?;
    storage
        .rename(&tmp, &path)
        .map_err(|e| io_error(format!("renaming {} to {}", tmp.display(), path.display()), e))?;
    storage.sync_dir(dir).map_err(|e| io_error(what("syncing directory", dir), e))?;
    Ok(file_bytes.len() as u64)
}

/// Makes sure the newest checkpoint (at `lsn`) has a good index file: writes it unless this
/// process wrote or loaded it, once the indexes reach `lsn`; then deletes the index files of
/// checkpoints no longer retained (`keep`: the retained checkpoints' LSNs) and leftovers of
/// interrupted runs. Whether the newest checkpoint has its file: indexes that do not reach
/// `lsn` within `SEARCH_INDEX_WAIT` (a backlog, or a rebuild after an open) defer it to a
/// later call, which is not an error (the checkpoint stands without it).
pub(crate) fn ensure_for_checkpoint(shared: &crate::db::Shared, lsn: Lsn, keep: &[Lsn]) -> Result<bool> {
    let storage = &*shared.storage;
    let dir = shared.dir.join(INDEX_DIR);
    let mut written = shared.indexes.file_lsn() == Some(lsn);
    if !written {
        crate::checkpoint::ensure_dir(storage, &dir)?;
        match shared.indexes.wait_for(lsn, super::SEARCH_INDEX_WAIT) {
            Ok(()) => {
                save(storage, &dir, lsn, shared.indexes.all())?;
                shared.indexes.set_file_lsn(lsn);
                written = true;
            }
            Err(CoreError::IndexTimeout { indexed_lsn, .. }) => {
                tracing::info!(
                    checkpoint_lsn = lsn,
                    indexed_lsn,
                    "index file deferred: the indexes have not reached the checkpoint"
                );
            }
            Err(e) => return Err(e),
        }
    }
    if storage
        .kind_of(&dir)
        .map_err(|e| io_error(format!("inspecting {}", dir.display()), e))?
        .is_none()
    {
        return Ok(written);
    }
    let names = storage.list(&dir).map_err(|e| io_error(format!("listing {}", dir.display()), e))?;
    let mut removed = false;
    for name in names {
        let stale = name.ends_with(".tmp") || parse_file_name(&name).is_some_and(|l| !keep.contains(&l));
        if stale {
            let path = dir.join(&name);
            storage
                .remove(&path)
                .map_err(|e| io_error(format!("removing {}", path.display()), e))?;
            removed = true;
        }
    }
    if removed {
        storage
            .sync_dir(&dir)
            .map_err(|e| io_error(format!("syncing directory {}", dir.display()), e))?;
    }
    Ok(written)
}

/// Why an index file was not used.
pub(crate) type Rejection = String;

/// How many graph nodes' codes the load recomputes between two releases of the mapped
/// embeddings' pages: 16,384 384-dimension embeddings are 24 MiB.
const RELEASE_MAPPED_PAGES_EVERY_NODES: usize = 16_384;

/// Loads the index file of the checkpoint at `lsn` against `store` (built from that
/// checkpoint). `Ok(None)`: there is none. `Err`: it exists but is unusable (the reason).
pub(crate) fn load(
    storage: &dyn Storage,
    dir: &Path,
    lsn: Lsn,
    store: &Store,
) -> std::result::Result<Option<Vec<(String, NamespaceIndex)>>, Rejection> {
    let path: PathBuf = dir.join(file_name(lsn));
    match storage.kind_of(&path) {
        Ok(None) => return Ok(None),
        Ok(Some(true)) => return Err("it is a directory".into()),
        Ok(Some(false)) => {}
        Err(e) => return Err(format!("cannot stat it: {e}")),
    }
    let file = storage.open(&path, OpenMode::Read).map_err(|e| format!("cannot open it: {e}"))?;
    let size = file.size_bytes().map_err(|e| format!("cannot read its size: {e}"))?;
    if size < (HEADER_BYTES + TRAILER_BYTES) as u64 {
        return Err(format!("{size} bytes is too short"));
    }
    let size = usize::try_from(size).map_err(|_| "too large for this machine".to_string())?;
    let mut bytes = vec![0u8; size];
    read_exact_at(&*file, &mut bytes, 0).map_err(|e| format!("cannot read it: {e}"))?;
    let (content, trailer) = bytes.split_at(size - TRAILER_BYTES);
    let stored_crc = u32::from_le_bytes(trailer.try_into().map_err(|_| "short trailer")?);
    if crc32c::crc32c(content) != stored_crc {
        return Err("checksum mismatch".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(content[at..at + 8].try_into().unwrap_or([0; 8]));
    if &content[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let version = u32::from_le_bytes(content[8..12].try_into().unwrap_or([0; 4]));
    if !(INDEX_FORMAT_VERSION_F32..=INDEX_FORMAT_VERSION).contains(&version) {
        return Err(format!(
            "format version {version}, this build reads {INDEX_FORMAT_VERSION_F32} to {INDEX_FORMAT_VERSION}"
        ));
    }
    if u64_at(16) != lsn {
        return Err(format!("it is for LSN {}, not {lsn}", u64_at(16)));
    }
    let count = u64_at(24);
    if u64_at(32) != (content.len() - HEADER_BYTES) as u64 {
        return Err("body length does not match the file".into());
    }
    let mut body = &content[HEADER_BYTES..];
    let mut sections = Vec::new();
    for _ in 0..count {
        if body.len() < SECTION_LENGTH_BYTES {
            return Err("truncated section".into());
        }
        let section = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
        let section = usize::try_from(section)
            .ok()
            .filter(|&s| s <= body.len() - SECTION_LENGTH_BYTES)
            .ok_or("section overruns the body")?;
        let bytes = &body[SECTION_LENGTH_BYTES..SECTION_LENGTH_BYTES + section];
        let decode_error = |e: postcard::Error| format!("section does not decode: {e}");
        let saved = match version {
            INDEX_FORMAT_VERSION_F32 => postcard::from_bytes::<SavedNamespace<SavedNodeV1>>(bytes)
                .map_err(decode_error)?
                .encode()?,
            INDEX_FORMAT_VERSION_CODES => postcard::from_bytes::<SavedNamespace<SavedNode>>(bytes)
                .map_err(decode_error)?
                .into_loaded()?,
            _ => {
                use serde::de::DeserializeSeed;
                let mut rejection = None;
                let seed = LoadedNamespaceSeed { rejection: &mut rejection };
                let decoded = seed.deserialize(&mut postcard::Deserializer::from_bytes(bytes));
                decoded.map_err(|e| rejection.unwrap_or_else(|| decode_error(e)))?
            }
        };
        body = &body[SECTION_LENGTH_BYTES + section..];
        sections.push(saved);
    }
    if !body.is_empty() {
        return Err("bytes after the last section".into());
    }
    // The file's bytes (54 MB at 1M memories) are freed before the restore builds the indexes.
    drop(bytes);
    let mut out = Vec::with_capacity(sections.len());
    for saved in sections {
        let name = saved.name.clone();
        let index = restore(saved, lsn, store).map_err(|r| format!("namespace {name:?}: {r}"))?;
        out.push((name, index));
    }
    Ok(Some(out))
}

/// Texts handed to the keyword thread at a time (a channel message per memory would cost more
/// than some of the texts' tokenizing).
const KEYWORD_BATCH: usize = 1024;

/// Restores one namespace's index. The keyword index is rebuilt from the versions' texts (it is
/// not stored) on a second thread, fed in slot order while this one checks the entries and
/// rebuilds the graph: tokenizing a million texts is about a fifth of opening a million
/// memories, and the two halves share nothing until the end.
///
/// The channel is unbounded: tokenizing is slower than checking the entries, and a bounded one
/// kept this thread waiting for the keyword thread (1.2 s of 4.6 s at 1M memories) instead of
/// going on to the graph. Its messages are shared values (16 bytes per memory), at most the
/// whole namespace's worth (16 MB at 1M memories), handed over as they are tokenized.
fn restore(saved: LoadedNamespace, lsn: Lsn, store: &Store) -> std::result::Result<NamespaceIndex, Rejection> {
    let (texts, received) = std::sync::mpsc::channel::<Vec<(u32, Arc<Value>)>>();
    std::thread::scope(|scope| {
        let keyword = std::thread::Builder::new()
            .name("engram-open-kw".into())
            .spawn_scoped(scope, move || {
                let mut keyword = super::keyword::InvertedIndex::default();
                let mut text_tokens = Vec::new();
                for batch in received {
                    for (slot, value) in batch {
                        if let Value::Memory(m) = &*value {
                            text_tokens.push((slot, keyword.add(slot, &m.text)));
                        }
                    }
                }
                (keyword, text_tokens)
            })
            .map_err(|e| format!("cannot start the keyword index thread: {e}"))?;
        // `texts` moves in, so it is dropped (ending the keyword thread's loop) however this
        // returns. The thread is joined either way, so that a panic in it becomes a rejection
        // (the indexes are then rebuilt) rather than a panic of the scope.
        let restored = restore_entries_and_graph(saved, lsn, store, texts);
        let joined = keyword.join();
        let mut index = restored?;
        let (keyword, text_tokens) = joined.map_err(|_| "the keyword index thread panicked".to_string())?;
        for (slot, tokens) in text_tokens {
            index.entries[slot as usize].text_tokens = tokens;
        }
        index.keyword = keyword;
        Ok(index)
    })
}

/// Everything of [`restore`] but the keyword index, whose texts go to `texts` in slot order.
fn restore_entries_and_graph(
    saved: LoadedNamespace,
    lsn: Lsn,
    store: &Store,
    texts: std::sync::mpsc::Sender<Vec<(u32, Arc<Value>)>>,
) -> std::result::Result<NamespaceIndex, Rejection> {
    let mut index = NamespaceIndex::new();
    let mut batch = Vec::with_capacity(KEYWORD_BATCH);
    let keyword_thread_gone = || "the keyword index thread stopped".to_string();
    index.metric = saved.metric;
    let mut previous = 0;
    // Sized once: growing the map to a million ids rehashed every id again and again (a tenth
    // of this function at 1M memories). (`entries` is left to grow by doubling: reserved
    // exactly, the first commits after the open doubled it.)
    let current = saved.entries.iter().filter(|e| e.superseded_lsn == Lsn::MAX).count();
    index.current.reserve(current);
    // `superseded_lsn == created_lsn` is an entry valid nowhere: a version pruned from the store
    // before the file was written (see below).
    for (slot, e) in saved.entries.into_iter().enumerate() {
        if e.created_lsn < previous
            || e.created_lsn > lsn
            || e.superseded_lsn < e.created_lsn
            || (e.superseded_lsn > lsn && e.superseded_lsn != Lsn::MAX)
        {
            return Err(format!("entry {slot}: bad validity [{}, {})", e.created_lsn, e.superseded_lsn));
        }
        previous = e.created_lsn;
        let value = store.version_at_exactly(&saved.name, Space::Memory, e.id.as_bytes(), e.created_lsn);
        let value = match value {
            Some(v) if matches!(&*v, Value::Memory(m) if m.id == e.id) => Some(v),
            // Pruned by the retention policy since: valid nowhere (such reads are refused).
            None if store.history_horizon() > e.created_lsn => None,
            _ => return Err(format!("entry {slot}: memory {:?} has no version at LSN {}", e.id, e.created_lsn)),
        };
        let superseded_lsn = if value.is_some() { e.superseded_lsn } else { e.created_lsn };
        if let Some(v) = &value {
            batch.push((slot as u32, v.clone()));
            if batch.len() == KEYWORD_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(KEYWORD_BATCH));
                texts.send(full).map_err(|_| keyword_thread_gone())?;
            }
        }
        if superseded_lsn == Lsn::MAX {
            match index.current.entry(e.id.into_boxed_str()) {
                Entry::Occupied(taken) => return Err(format!("memory {:?} has two current versions", taken.key())),
                Entry::Vacant(free) => {
                    free.insert(slot as u32);
                }
            }
        }
        index.entries.push(VersionEntry {
            created_lsn: e.created_lsn,
            superseded_lsn,
            value,
            // Set from the keyword thread's count once it is done.
            text_tokens: 0,
        });
    }
    if !batch.is_empty() {
        texts.send(batch).map_err(|_| keyword_thread_gone())?;
    }
    drop(texts);
    let nodes = saved.graph.as_ref().map_or(0, FlatGraph::len);
    if saved.node_entry.len() != nodes {
        return Err(format!("{} node slots for {nodes} nodes", saved.node_entry.len()));
    }
    if saved.node_entry.windows(2).any(|w| w[0] >= w[1]) || saved.node_entry.last().is_some_and(|&s| s as usize >= index.entries.len()) {
        return Err("node slots out of order or range".into());
    }
    index.node_validity = saved
        .node_entry
        .iter()
        .map(|&slot| NodeValidity::of(&index.entries[slot as usize]))
        .collect();
    index.ended_nodes = index.node_validity.iter().filter(|v| v.superseded_lsn != Lsn::MAX).count();
    index.node_entry = saved.node_entry;
    index.hnsw = match saved.graph {
        Some(graph) => {
            let metric = saved.metric;
            Some(Hnsw::import_recomputing(metric, graph, |n| {
                let embedding = index.entries[index.node_entry[n] as usize].memory()?.embedding.as_ref()?;
                // Every embedding is read once, here: the checkpoint's pages it maps are
                // released as the load goes, so that they never all sit in the resident set.
                if n % RELEASE_MAPPED_PAGES_EVERY_NODES == RELEASE_MAPPED_PAGES_EVERY_NODES - 1 {
                    if let Some(file) = embedding.mapped_file() {
                        file.release_resident_pages();
                    }
                }
                Some(&**embedding)
            })?)
        }
        None => None,
    };
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{IndexOrigin, SearchMode, SearchReads, SearchRequest};
    use crate::{CheckpointOptions, Database, DatabaseOptions, NewMemory, SyncPolicy};

    fn options() -> DatabaseOptions {
        DatabaseOptions {
            checkpoint: CheckpointOptions::on_demand(),
            ..Default::default()
        }
    }

    fn coordinate(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// Every answer compared: (memory id, score bits) of vector searches through the graph.
    fn answers(db: &Database, queries: &[Vec<f32>]) -> Vec<Vec<(String, u32)>> {
        let snapshot = db.snapshot();
        queries
            .iter()
            .map(|q| {
                let request = SearchRequest {
                    namespace: "ns".into(),
                    text: None,
                    vector: Some(q.clone()),
                    k: 10,
                    mode: SearchMode::Vector,
                    filter: None,
                    ef_search: Some(32),
                };
                let hits = snapshot.search(&request).unwrap();
                assert_eq!(hits.len(), 10);
                hits.into_iter().map(|h| (h.memory.id, h.score.to_bits())).collect()
            })
            .collect()
    }

    /// Replaces the index file of the checkpoint at `lsn` with `sections` in format `version`.
    fn rewrite_index_file<N: Serialize>(db: &Database, lsn: Lsn, version: u32, sections: Vec<SavedNamespace<N>>) {
        let dir = db.shared.dir.join(INDEX_DIR);
        write_file(&*db.shared.storage, &dir, lsn, version, sections.into_iter()).unwrap();
    }

    /// The checkpoint's index sections, each graph converted by `convert(index, graph)`.
    fn sections_as<N>(
        db: &Database,
        lsn: Lsn,
        convert: impl Fn(&NamespaceIndex, SavedGraph<SavedLinks>) -> SavedGraph<N>,
    ) -> Vec<SavedNamespace<N>> {
        db.shared
            .indexes
            .all()
            .into_iter()
            .map(|(name, index)| {
                let index = index.read().unwrap();
                let saved = saved_namespace(&name, &index, lsn);
                let converted = saved.try_map_graph(|g| Ok::<_, String>(convert(&index, g)));
                converted.unwrap()
            })
            .collect()
    }

    /// The checkpoint's index sections as format 1 wrote them: each node's prepared f32 vector
    /// (from its memory's embedding) instead of its codes.
    fn format_1_sections(db: &Database, lsn: Lsn) -> Vec<SavedNamespace<SavedNodeV1>> {
        sections_as(db, lsn, |index, graph| {
            let node = |n: usize, node: SavedLinks| {
                let slot = index.node_entry[n] as usize;
                let embedding = index.entries[slot].memory().unwrap().embedding.as_ref().unwrap();
                Ok::<_, String>(SavedNodeV1 {
                    links: node.links,
                    vector: index.metric.prepare(embedding),
                })
            };
            graph.try_map_nodes(node).unwrap()
        })
    }

    /// The checkpoint's index sections as format 2 wrote them: every node with its codes.
    fn format_2_sections(db: &Database, lsn: Lsn) -> Vec<SavedNamespace<SavedNode>> {
        sections_as(db, lsn, |index, graph| {
            let live = index.hnsw.as_ref().unwrap();
            live.export(graph.nodes.len(), |_| true).with_codes(index.metric, |_| None).unwrap()
        })
    }

    /// Index files of format 1 (f32 vectors) and 2 (every node's codes) still load: format 1's
    /// vectors are encoded at load, so the graph equals the one this build saved and every
    /// answer is the same to the bit. A format this build does not know is refused with its
    /// number named, and the indexes are rebuilt from the store (same answers again).
    #[test]
    fn index_files_of_formats_1_and_2_load_and_an_unknown_format_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 17u64;
        let count = crate::search::EXACT_SEARCH_MAX_VECTORS + 600;
        let queries: Vec<Vec<f32>> = (0..20).map(|_| (0..12).map(|_| coordinate(&mut seed)).collect()).collect();
        let (lsn, expected) = {
            let db = Database::open(dir.path(), options()).unwrap();
            for chunk in 0..count.div_ceil(1000) {
                let mut txn = db.begin();
                txn.set_durability(SyncPolicy::Never);
                for i in chunk * 1000..((chunk + 1) * 1000).min(count) {
                    let memory = NewMemory {
                        text: format!("memory {i}"),
                        embedding: Some((0..12).map(|_| coordinate(&mut seed)).collect()),
                        metadata: serde_json::json!({}),
                    };
                    txn.insert_memory("ns", memory).unwrap();
                }
                txn.commit().unwrap();
            }
            db.wait_for_index(db.visible_lsn(), std::time::Duration::from_secs(60)).unwrap();
            db.checkpoint().unwrap();
            let lsn = db.shared.indexes.file_lsn().expect("the checkpoint wrote an index file");
            let expected = answers(&db, &queries);
            let sections = format_1_sections(&db, lsn);
            rewrite_index_file(&db, lsn, INDEX_FORMAT_VERSION_F32, sections);
            (lsn, expected)
        };
        let db = Database::open(dir.path(), options()).unwrap();
        assert_eq!(db.index_stats().origin, IndexOrigin::Checkpoint { lsn });
        assert_eq!(answers(&db, &queries), expected);
        let sections = format_2_sections(&db, lsn);
        rewrite_index_file(&db, lsn, INDEX_FORMAT_VERSION_CODES, sections);
        drop(db);
        let db = Database::open(dir.path(), options()).unwrap();
        assert_eq!(db.index_stats().origin, IndexOrigin::Checkpoint { lsn });
        assert_eq!(answers(&db, &queries), expected);
        // Written again by this build, under a format number it does not know.
        let sections: Vec<SavedNamespace> = db
            .shared
            .indexes
            .all()
            .into_iter()
            .map(|(name, index)| saved_namespace(&name, &index.read().unwrap(), lsn))
            .collect();
        rewrite_index_file(&db, lsn, INDEX_FORMAT_VERSION + 1, sections);
        drop(db);
        let db = Database::open(dir.path(), options()).unwrap();
        match db.index_stats().origin {
            IndexOrigin::Rebuilt { reason: Some(reason) } => {
                assert!(reason.contains("format version 4, this build reads 1 to 3"), "{reason}")
            }
            other => panic!("a file of an unknown format was used: {other:?}"),
        }
        // The rebuild runs on the indexer thread, from the store's versions queued in commit
        // order: once it is done, the graph is the one the live indexer built.
        db.wait_for_index(db.visible_lsn(), std::time::Duration::from_secs(60)).unwrap();
        assert_eq!(answers(&db, &queries), expected);
    }

    /// Format 3 keeps the codes of exactly the nodes whose versions were superseded (updated or
    /// deleted) by the checkpoint, which a retention policy may prune; every other node's codes
    /// are recomputed from the checkpoint's embeddings. With the superseded versions pruned by
    /// `KeepVersions { per_key: 1 }`, the file still loads and answers exactly as before.
    #[test]
    fn format_3_keeps_only_the_codes_it_cannot_recompute_and_loads_after_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let options = || DatabaseOptions {
            retention: crate::RetentionPolicy::KeepVersions { per_key: 1 },
            ..options()
        };
        let mut seed = 23u64;
        let count = crate::search::EXACT_SEARCH_MAX_VECTORS + 600;
        let queries: Vec<Vec<f32>> = (0..20).map(|_| (0..12).map(|_| coordinate(&mut seed)).collect()).collect();
        let (lsn, expected) = {
            let db = Database::open(dir.path(), options()).unwrap();
            let mut ids = Vec::new();
            let mut txn = db.begin();
            txn.set_durability(SyncPolicy::Never);
            for i in 0..count {
                let memory = NewMemory {
                    text: format!("memory {i}"),
                    embedding: Some((0..12).map(|_| coordinate(&mut seed)).collect()),
                    metadata: serde_json::json!({}),
                };
                ids.push(txn.insert_memory("ns", memory).unwrap());
            }
            txn.commit().unwrap();
            let mut txn = db.begin();
            for (i, id) in ids.iter().enumerate() {
                if i % 5 == 0 {
                    txn.delete_memory("ns", id).unwrap();
                } else if i % 3 == 0 {
                    let patch = crate::MemoryPatch {
                        embedding: Some((0..12).map(|_| coordinate(&mut seed)).collect()),
                        ..Default::default()
                    };
                    txn.update_memory("ns", id, patch).unwrap();
                }
            }
            txn.commit().unwrap();
            db.wait_for_index(db.visible_lsn(), std::time::Duration::from_secs(60)).unwrap();
            let report = db.checkpoint().unwrap();
            assert!(report.pruned_versions > 0, "{report:?}");
            let lsn = db.shared.indexes.file_lsn().expect("the checkpoint wrote an index file");
            let (name, index) = db.shared.indexes.all().pop().unwrap();
            let index = index.read().unwrap();
            let saved = saved_namespace(&name, &index, lsn);
            let nodes = &saved.graph.as_ref().expect("a graph").nodes;
            let superseded = (0..nodes.len())
                .filter(|&n| index.entries[index.node_entry[n] as usize].superseded_lsn <= lsn)
                .count();
            let coded = nodes.iter().filter(|node| node.coded.is_some()).count();
            assert_eq!(coded, superseded);
            assert!(superseded > 0 && superseded < nodes.len() / 2, "{superseded} of {}", nodes.len());
            drop(index);
            (lsn, answers(&db, &queries))
        };
        for round in 0..2 {
            let db = Database::open(dir.path(), options()).unwrap();
            assert_eq!(db.index_stats().origin, IndexOrigin::Checkpoint { lsn }, "round {round}");
            assert_eq!(answers(&db, &queries), expected, "round {round}");
        }
    }

    #[test]
    fn file_names_carry_the_lsn_in_twenty_digits() {
        assert_eq!(file_name(42), "ckpt-00000000000000000042.index");
        assert_eq!(parse_file_name("ckpt-00000000000000000042.index"), Some(42));
        assert_eq!(parse_file_name("ckpt-00000000000000000042.ckpt"), None);
        assert_eq!(parse_file_name("ckpt-42.index"), None);
    }

    /// Without a usable index file, open queues every retained memory version (and the
    /// namespace's metric) for the indexer in commit order, one batch per commit, and applies
    /// none itself: the graph is built in the background while searches scan the queue. Once
    /// the indexer has drained it, the indexes hold the versions the live ones hold, with the
    /// same validity, in the same order.
    #[test]
    fn indexes_rebuilt_from_the_store_are_queued_in_commit_order_and_built_by_the_indexer() {
        use crate::search::index::{IndexApplier, Indexes};
        use crate::Metric;
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), options()).unwrap();
        let mut seed = 3u64;
        let mut vector = || (0..6).map(|_| coordinate(&mut seed)).collect::<Vec<f32>>();
        db.run(1, |t| t.declare_vector_space("ns", 6, Metric::L2)).unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let mut txn = db.begin();
            for i in 0..100 {
                let memory = NewMemory {
                    text: format!("memory {i}"),
                    embedding: Some(vector()),
                    metadata: serde_json::json!({}),
                };
                ids.push(txn.insert_memory("ns", memory).unwrap());
            }
            txn.commit().unwrap();
        }
        let mut txn = db.begin();
        for id in ids.iter().take(10) {
            let patch = crate::MemoryPatch {
                embedding: Some(vector()),
                ..Default::default()
            };
            txn.update_memory("ns", id, patch).unwrap();
        }
        txn.commit().unwrap();
        let mut txn = db.begin();
        for id in ids.iter().skip(50).take(5) {
            txn.delete_memory("ns", id).unwrap();
        }
        txn.commit().unwrap();
        // A last commit that changes no index.
        db.run(1, |t| t.kv_put("ns", b"k", crate::KvValue::Json(serde_json::json!(1))))
            .unwrap();
        let at = db.visible_lsn();
        db.wait_for_index(at, std::time::Duration::from_secs(60)).unwrap();

        let queued = Arc::new(Indexes::queued_from_store(
            &db.shared.store,
            at,
            IndexOrigin::Rebuilt { reason: None },
        ));
        let stats = queued.stats(at);
        assert_eq!(
            (stats.indexed_lsn, stats.versions, stats.vectors),
            (0, 0, 0),
            "nothing applied at open"
        );
        // The metric, 300 inserts, 10 updates and 5 deletions; a batch per commit that changed
        // an index (the declaration, 3 of inserts, the updates, the deletions), and the empty
        // one that marks the index complete at `at`.
        assert_eq!(stats.queued_changes, 1 + 300 + 10 + 5);
        assert_eq!(stats.queued_batches, 6 + 1);

        let applier = IndexApplier::spawn(queued.clone(), 0).unwrap();
        queued.wait_for(at, std::time::Duration::from_secs(60)).unwrap();
        drop(applier);
        let entries = |indexes: &Indexes| -> Vec<(Lsn, Lsn, Option<String>)> {
            let index = indexes.namespace("ns").unwrap();
            let index = index.read().unwrap();
            index
                .entries
                .iter()
                .map(|e| (e.created_lsn, e.superseded_lsn, e.memory().map(|m| m.id.clone())))
                .collect()
        };
        assert_eq!(entries(&queued), entries(&db.shared.indexes));
        let (rebuilt, live) = (queued.stats(at), db.index_stats());
        assert_eq!(
            (rebuilt.indexed_lsn, rebuilt.versions, rebuilt.vectors),
            (at, live.versions, live.vectors)
        );
        assert_eq!(queued.namespace("ns").unwrap().read().unwrap().metric, Metric::L2);
    }
}
