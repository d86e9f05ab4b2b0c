//! engram-core: the Engram database on top of engram-wal.
//!
//! Memories, a knowledge graph, key/value state and outbox events live in namespaces; every
//! change is a transaction with snapshot isolation whose commit record (preceded, for a large
//! transaction, by records streaming its operations) is durable in the log before it is applied
//! or acknowledged. Versions are kept under a retention policy (all of them by default), so every
//! read can be as of a past LSN or time back to the history horizon. See docs/architecture.md.

mod allocator;
mod checkpoint;
mod cursors;
mod db;
mod embedding;
mod error;
mod feed;
mod graph;
mod kv;
mod legacy;
mod maintenance;
mod memory;
mod metadata;
mod model;
mod names;
mod record;
mod retention;
mod search;
mod store;
mod threads;
mod txn;
mod write_set;

pub use allocator::{tune_allocator, ARENA_GROWTH_BYTES};
pub use checkpoint::{
    CheckpointOptions, CheckpointReport, OpenReport, RejectedCheckpoint, CHECKPOINT_DIR, CHECKPOINT_FORMAT_VERSION,
    SPARE_FILE as CHECKPOINT_SPARE_FILE,
};
pub use db::{Database, DatabaseOptions, ReplayProgress, WAL_DIR};
pub use engram_wal::{Lsn, SyncPolicy, WalOptions};
pub use error::{CoreError, Result};
pub use feed::{ChangeEvent, ChangeFeed, ChangeKind, ChangeOp, KeyEncoding};
pub use graph::{AddedObservations, GraphReads, KnowledgeGraph};
pub use kv::KvReads;
pub use memory::{MemoryPatch, MemoryReads, MemoryRef, NewMemory};
pub use metadata::Metadata;
pub use model::{Embedding, Entity, Key, KvValue, Memory, NamespaceMeta, Relation, Space, Value};
pub use names::{validate_namespace, MAX_DIMENSION, MAX_KEY_BYTES, MAX_NAMESPACE_BYTES, MAX_NAME_BYTES, MAX_TEXT_BYTES, MAX_VALUE_BYTES};
pub use record::{CommitRecord, LogRecord, Op, KIND_COMMIT, KIND_OPS, RECORD_VERSION, STREAM_RECORD_BYTES};
pub use retention::{RetainedView, RetentionPolicy};
pub use search::persist::INDEX_DIR as SEARCH_INDEX_DIR;
pub use search::{
    bm25_idf, bm25_term, tokenize, Direction, EntityHit, IndexOrigin, IndexQueueBound, IndexStats, Metric, SearchHit, SearchHitRef,
    SearchMode, SearchReads, SearchRequest, SignalScore, BM25_B, BM25_K1, DEFAULT_EF_SEARCH, EXACT_SEARCH_MAX_VECTORS, HYBRID_CANDIDATES,
    MAX_EF_SEARCH, MAX_K, MAX_NEIGHBOUR_DEPTH, MAX_QUERY_TEXT_BYTES, MAX_QUEUED_INDEX_CHANGES, MAX_QUEUED_INDEX_VECTOR_BYTES, RRF_K,
    SEARCH_INDEX_WAIT,
};
pub use store::VersionInfo;
pub use txn::{CommitInfo, ReadView, Snapshot, Transaction};
