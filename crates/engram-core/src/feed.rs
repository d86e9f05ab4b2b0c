//! The change feed: every committed change, read back from the log in commit (LSN) order.
//!
//! A transaction's log records hold every operation with its before and after image (record.rs),
//! so the feed needs nothing but the log: it works from any retained LSN, after a reopen, and
//! without touching the store. A large transaction is several records (OPS records, then its
//! COMMIT): the feed holds the OPS records and returns the whole transaction at its COMMIT, every
//! event with the COMMIT's LSN. A feed that starts inside such a transaction's records (at an LSN
//! after its first record and at or before its COMMIT) still returns the whole transaction, since
//! its LSN is at or after the start: the COMMIT names its first record, and the feed reads the
//! records it skipped back from there. OPS records never followed by their COMMIT belong to a
//! transaction that did not commit and are dropped (docs/record-format.md).
//!
//! A consumer that must not lose or repeat a change keeps its position in a named durable cursor
//! (cursors.rs): it processes events, calls `advance_cursor(name, feed.position())`, and after a
//! restart resumes with `changes_for_cursor(name)`. The cursor also holds log truncation until
//! it passes.
//!
//! The feed returns durable records only: a commit made with `SyncPolicy::Never` or `Interval`
//! is visible to snapshots before it is in the feed, because a change the feed announced must
//! never vanish in a crash.

use crate::cursors::SYSTEM_NAMESPACE;
use crate::db::Database;
use crate::error::{CoreError, Result};
use crate::model::{Key, KvValue, Space, Value};
use crate::record::{self, Assembler, CommitRecord, LogRecord, Op};
use engram_wal::{Lsn, Record, WalReader};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// A key was created or replaced (`before` is null when it was created).
    Put,
    /// A key was removed (`after` is null).
    Delete,
    /// An application event (`Transaction::emit_event`), published iff its transaction
    /// committed.
    Event,
}

/// What kind of item changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Namespace settings (the embedding dimension), and internal entries such as cursors.
    Meta,
    Memory,
    Entity,
    Relation,
    Kv,
    Event,
}

/// How `ChangeEvent::key` encodes the item's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyEncoding {
    /// The id as text. Relation ids are shown as `from / relationType / to`.
    Utf8,
    /// Lowercase hexadecimal of the id's bytes: key/value keys that are not valid UTF-8.
    Hex,
}

/// One change, as streamed to consumers (NDJSON or SSE: one JSON object per event).
///
/// JSON shape of `before` and `after` (null when absent), by `kind`:
/// - `memory`: `{"id", "text", "embedding": [f32] | null, "metadata": {...}, "created_ms", "updated_ms"}`
/// - `entity`: `{"name", "entityType", "observations": [..]}`
/// - `relation`: `{"from", "to", "relationType"}`
/// - `kv`: `{"json": <the JSON value>}` or `{"hex": "<lowercase hex of the bytes>"}`
/// - `meta`: `{"dimension": n | null}`
/// - `event`: `before` is null and `after` is `{"topic", "payload"}`; `key` is null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// LSN of the commit: shared by every event of one transaction.
    pub lsn: Lsn,
    pub txn_id: u64,
    pub commit_ts_ms: u64,
    pub namespace: String,
    pub op: ChangeOp,
    pub kind: ChangeKind,
    /// The item's id (memory id, entity name, relation, key/value key, setting name); null for
    /// events. See `key_encoding`.
    pub key: Option<String>,
    pub key_encoding: KeyEncoding,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Which namespaces a feed returns.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamespaceFilter {
    /// Every namespace but the internal one (cursor positions are bookkeeping, not changes).
    User,
    All,
    Only(String),
}

impl NamespaceFilter {
    fn admits(&self, namespace: &str) -> bool {
        match self {
            NamespaceFilter::User => namespace != SYSTEM_NAMESPACE,
            NamespaceFilter::All => true,
            NamespaceFilter::Only(only) => namespace == only,
        }
    }
}

/// Committed changes from an LSN on, in commit order; see `Database::changes`.
///
/// `next_event` (and the `Iterator`) returns `None` once caught up with the durable end of the
/// log; `next_blocking` waits for new commits. The feed does not keep the database open: once
/// every `Database` handle is dropped, waiting fails with a closed-log error.
pub struct ChangeFeed {
    reader: WalReader,
    filter: NamespaceFilter,
    /// Events of the commit being returned, so that a transaction comes out whole and in order.
    pending: VecDeque<ChangeEvent>,
    /// Every change at or below this LSN has been returned (or filtered out).
    position: Lsn,
    /// The OPS records of a large transaction read so far, until its COMMIT.
    assembler: Assembler,
    /// A record was read (the reader is past it) that does not decode, or whose transaction
    /// could not be read whole: the error is reported again on every call rather than the
    /// record skipped, so a consumer can never silently miss a commit.
    failed: Option<CoreError>,
    /// The iterator yields an error once and then ends, so that `for` loops terminate.
    iterator_failed: bool,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("position", &self.position)
            .field("filter", &self.filter)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// The committed changes with LSN `from_lsn` or later (0 and 1 both mean from the start of
    /// the log), in commit order. Events of the internal `.engram` namespace are left out unless
    /// asked for (`ChangeFeed::only_namespace`, `ChangeFeed::include_system_namespace`).
    ///
    /// A transaction's changes all have the LSN of its commit record: a `from_lsn` inside the
    /// records of a large transaction (after its first, at or before its commit) returns that
    /// transaction whole, reading its first records back from the log.
    ///
    /// Fails with `HistoryNotRetained` if the log no longer holds `from_lsn` (or, when the
    /// transaction is reached, the first records of a transaction it starts inside of).
    pub fn changes(&self, from_lsn: Lsn) -> Result<ChangeFeed> {
        let from_lsn = from_lsn.max(1);
        let first = self.shared.wal.first_lsn();
        // (A record that does not decode is reported by the feed when it gets there.)
        let starts_before_log = matches!(self.transaction_start(from_lsn), Ok(start) if start < first);
        if from_lsn < first || starts_before_log {
            return Err(CoreError::HistoryNotRetained {
                lsn: from_lsn,
                oldest: self.oldest_feed_lsn()?,
            });
        }
        let reader = self.shared.wal.reader(from_lsn).map_err(feed_error)?;
        Ok(ChangeFeed {
            reader,
            filter: NamespaceFilter::User,
            pending: VecDeque::new(),
            position: from_lsn - 1,
            assembler: Assembler::default(),
            failed: None,
            iterator_failed: false,
        })
    }

    /// The oldest LSN a change feed can start from: the first transaction boundary the log still
    /// holds. Prefix truncation removes whole segments, so the log may begin with the last
    /// records of a large transaction whose first records are gone (its changes live on in the
    /// checkpoints and the store); a feed cannot return that transaction whole, so it starts
    /// after it.
    pub fn oldest_feed_lsn(&self) -> Result<Lsn> {
        let first = self.shared.wal.first_lsn();
        let mut reader = self.shared.wal.reader(first).map_err(feed_error)?;
        while let Some(record) = reader.next_record().map_err(feed_error)? {
            if LogRecord::decode(record.lsn, record.kind, &record.payload)?.transaction_start(record.lsn) >= first {
                return Ok(record.lsn);
            }
        }
        Ok(self.shared.wal.durable_lsn() + 1)
    }

    /// The LSN of the first log record of the transaction that the record at `lsn` belongs to:
    /// `lsn` itself, unless it is one of the records of a large transaction after the first
    /// (docs/record-format.md). Whoever needs every transaction committed at or after `lsn`
    /// whole (log truncation, a follower copying the log) needs the log from there. An LSN past
    /// the durable end of the log is returned as is; one the log no longer holds is
    /// `HistoryNotRetained`.
    pub fn transaction_start(&self, lsn: Lsn) -> Result<Lsn> {
        let lsn = lsn.max(1);
        let mut reader = self.shared.wal.reader(lsn).map_err(feed_error)?;
        match reader.next_record().map_err(feed_error)? {
            Some(record) => Ok(LogRecord::decode(lsn, record.kind, &record.payload)?.transaction_start(lsn)),
            None => Ok(lsn),
        }
    }

    /// The changes after the position of cursor `name`: what its consumer has not processed yet.
    ///
    /// The cursor must exist (`NotFound` otherwise): a new consumer creates it first, e.g. with
    /// `advance_cursor(name, 0)`, so that it holds log truncation from the start.
    pub fn changes_for_cursor(&self, name: &str) -> Result<ChangeFeed> {
        let position = self.cursor(name)?.ok_or_else(|| CoreError::NotFound {
            what: "cursor",
            namespace: SYSTEM_NAMESPACE.to_string(),
            id: name.to_string(),
        })?;
        self.changes(position + 1)
    }
}

impl ChangeFeed {
    /// Returns only the events of `namespace` (the internal `.engram` namespace too, if named).
    pub fn only_namespace(mut self, namespace: &str) -> Self {
        self.filter = NamespaceFilter::Only(namespace.to_string());
        self
    }

    /// Returns the events of every namespace, including the internal `.engram` one (cursor
    /// positions).
    pub fn include_system_namespace(mut self) -> Self {
        self.filter = NamespaceFilter::All;
        self
    }

    /// Every change at or below this LSN has been returned or filtered out, and a transaction
    /// counts only once all of its events were returned. Advancing a cursor to it after
    /// processing the returned events loses nothing and repeats nothing.
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// The next event, or `None` when the feed has caught up with the durable end of the log.
    pub fn next_event(&mut self) -> Result<Option<ChangeEvent>> {
        loop {
            if let Some(event) = self.pop_pending() {
                return Ok(Some(event));
            }
            self.check_not_failed()?;
            match self.reader.next_record().map_err(feed_error)? {
                Some(record) => self.take_record(record)?,
                None => return Ok(None),
            }
        }
    }

    /// Like `next_event`, but waits up to `timeout` for a new commit to become durable. Returns
    /// `None` if none that passes the filter arrived in time.
    pub fn next_blocking(&mut self, timeout: Duration) -> Result<Option<ChangeEvent>> {
        // No deadline if it cannot be represented (e.g. `Duration::MAX`): wait indefinitely.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(event) = self.next_event()? {
                return Ok(Some(event));
            }
            let remaining = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if remaining.is_zero() {
                return Ok(None);
            }
            // The log computes its own deadline from the wait, so keep each wait representable.
            let wait = remaining.min(Duration::from_secs(3600));
            // On a timeout, the next turn finds the deadline passed (or waits again if the
            // wait was capped).
            if let Some(record) = self.reader.next_blocking(wait).map_err(feed_error)? {
                self.take_record(record)?;
            }
        }
    }

    fn pop_pending(&mut self) -> Option<ChangeEvent> {
        let event = self.pending.pop_front()?;
        if self.pending.is_empty() {
            self.position = event.lsn;
        }
        Some(event)
    }

    fn check_not_failed(&self) -> Result<()> {
        match &self.failed {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// Takes the next record; at a COMMIT, queues the events of its transaction that pass the
    /// filter.
    fn take_record(&mut self, record: Record) -> Result<()> {
        let lsn = record.lsn;
        let commit = match self.assemble(record) {
            Ok(Some(commit)) => commit,
            Ok(None) => return Ok(()),
            Err(error) => {
                self.failed = Some(error.clone());
                return Err(error);
            }
        };
        // The filter was applied to the operations as they were read.
        self.pending.extend(
            commit
                .ops
                .into_iter()
                .map(|op| change_event(lsn, commit.txn_id, commit.commit_ts_ms, op)),
        );
        if self.pending.is_empty() {
            self.position = lsn;
        }
        Ok(())
    }

    /// Decodes a record and hands it to the assembler, which holds OPS records and returns the
    /// whole transaction (only the operations the filter admits) at its COMMIT.
    fn assemble(&mut self, record: Record) -> Result<Option<CommitRecord>> {
        let decoded = LogRecord::decode(record.lsn, record.kind, &record.payload)?;
        let ChangeFeed {
            reader, filter, assembler, ..
        } = self;
        let keep = |op: &Op| filter.admits(op.namespace());
        let read_back = |txn_id, from, to| {
            let from = reader.reader_at(from).map_err(feed_error)?;
            record::read_streamed(from, txn_id, to, keep)
        };
        assembler.take(record.lsn, decoded, keep, read_back)
    }
}

impl Iterator for ChangeFeed {
    type Item = Result<ChangeEvent>;

    /// Yields events until the feed catches up; after an error, yields it once and ends.
    fn next(&mut self) -> Option<Result<ChangeEvent>> {
        if self.iterator_failed {
            return None;
        }
        let next = self.next_event().transpose();
        self.iterator_failed = matches!(next, Some(Err(_)));
        next
    }
}

/// A log position that truncation removed is history the database no longer retains.
fn feed_error(error: engram_wal::Error) -> CoreError {
    match error {
        engram_wal::Error::LsnOutOfRange { lsn, first, .. } => CoreError::HistoryNotRetained { lsn, oldest: first },
        other => other.into(),
    }
}

fn change_event(lsn: Lsn, txn_id: u64, commit_ts_ms: u64, op: Op) -> ChangeEvent {
    let keyed = |op, key: Key, before: Option<Value>, after: Option<Value>| {
        let (text, key_encoding) = key_text(&key);
        ChangeEvent {
            lsn,
            txn_id,
            commit_ts_ms,
            namespace: key.namespace,
            op,
            kind: space_kind(key.space),
            key: Some(text),
            key_encoding,
            before: before.map(value_json),
            after: after.map(value_json),
        }
    };
    match op {
        Op::Put { key, before, after } => keyed(ChangeOp::Put, key, before, Some(after)),
        Op::Delete { key, before } => keyed(ChangeOp::Delete, key, Some(before), None),
        Op::Event { namespace, topic, payload } => ChangeEvent {
            lsn,
            txn_id,
            commit_ts_ms,
            namespace,
            op: ChangeOp::Event,
            kind: ChangeKind::Event,
            key: None,
            key_encoding: KeyEncoding::Utf8,
            before: None,
            after: Some(serde_json::json!({ "topic": topic, "payload": payload })),
        },
    }
}

fn space_kind(space: Space) -> ChangeKind {
    match space {
        Space::Meta => ChangeKind::Meta,
        Space::Memory => ChangeKind::Memory,
        Space::Entity => ChangeKind::Entity,
        Space::Relation => ChangeKind::Relation,
        Space::Kv => ChangeKind::Kv,
    }
}

fn key_text(key: &Key) -> (String, KeyEncoding) {
    match std::str::from_utf8(&key.id) {
        Ok(_) if key.space == Space::Relation => (key.id_text(), KeyEncoding::Utf8),
        Ok(text) => (text.to_string(), KeyEncoding::Utf8),
        Err(_) => (hex(&key.id), KeyEncoding::Hex),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The JSON consumers see. The values' own `Serialize` impls are made for the binary log (they
/// carry JSON as escaped text and tag enum variants), so the feed spells out its own shape.
fn value_json(value: Value) -> serde_json::Value {
    use serde_json::json;
    match value {
        Value::Meta(meta) => json!({ "dimension": meta.dimension }),
        Value::Memory(m) => json!({
            "id": m.id,
            "text": m.text,
            "embedding": m.embedding,
            "metadata": m.metadata,
            "created_ms": m.created_ms,
            "updated_ms": m.updated_ms,
        }),
        Value::Entity(e) => json!({ "name": e.name, "entityType": e.entity_type, "observations": e.observations }),
        Value::Relation(r) => json!({ "from": r.from, "to": r.to, "relationType": r.relation_type }),
        Value::Kv(KvValue::Json(v)) => json!({ "json": v }),
        Value::Kv(KvValue::Bytes(b)) => json!({ "hex": hex(&b) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DatabaseOptions;
    use serde_json::json;

    fn put_kv(db: &Database, key: &[u8], value: serde_json::Value) -> Lsn {
        db.run(1, |t| t.kv_put("ns", key, KvValue::Json(value.clone()))).unwrap().1.lsn
    }

    #[test]
    fn a_record_of_unknown_kind_or_that_does_not_decode_is_a_typed_error_that_is_never_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), DatabaseOptions::default()).unwrap();
        let first = put_kv(&db, b"a", json!(1));
        let unknown = db.shared.wal.append(99, b"not a commit").unwrap();
        let mut feed = db.changes(first).unwrap();
        assert_eq!(feed.next_event().unwrap().unwrap().lsn, first);
        for _ in 0..2 {
            assert!(
                matches!(feed.next_event(), Err(CoreError::CorruptRecord { lsn, .. }) if lsn == unknown),
                "reported again, not skipped"
            );
        }
        assert_eq!(feed.position(), first, "the cursor position stops before the bad record");
        let garbage = db.shared.wal.append(record::KIND_COMMIT, &[1, 0xff, 0xff, 0xff]).unwrap();
        let mut feed = db.changes(garbage).unwrap();
        assert!(matches!(feed.next_event(), Err(CoreError::CorruptRecord { lsn, .. }) if lsn == garbage));
        let mut iterator = db.changes(garbage).unwrap();
        assert!(matches!(iterator.next(), Some(Err(CoreError::CorruptRecord { .. }))));
        assert!(iterator.next().is_none(), "the iterator ends after an error");
    }

    // Here rather than in tests/integration/feed.rs because it truncates the log under an open database:
    // truncating it behind a closed one leaves the database unable to reopen without a checkpoint.
    #[test]
    fn a_feed_from_an_lsn_the_log_no_longer_holds_is_history_not_retained() {
        let dir = tempfile::tempdir().unwrap();
        let options = DatabaseOptions {
            wal: engram_wal::WalOptions {
                segment_bytes: 64 * 1024,
                max_record_bytes: 32 * 1024,
                background_preallocation: false,
                ..Default::default()
            },
            ..Default::default()
        };
        let db = Database::open(dir.path(), options).unwrap();
        let mut not_started = db.changes(1).unwrap();
        // Large values fill the small segments quickly, so that truncation can drop whole ones.
        let mut last = 0;
        for i in 0..12 {
            let value = KvValue::Bytes(vec![7; 20_000]);
            last = db
                .run(1, |t| t.kv_put("ns", format!("k{i}").as_bytes(), value.clone()))
                .unwrap()
                .1
                .lsn;
        }
        assert!(db.shared.wal.truncate_prefix(last).unwrap() > 0);
        let first = db.shared.wal.first_lsn();
        assert!(first > 1);
        assert!(matches!(
            db.changes(first - 1),
            Err(CoreError::HistoryNotRetained { lsn, oldest }) if (lsn, oldest) == (first - 1, first)
        ));
        assert!(
            matches!(not_started.next_event(), Err(CoreError::HistoryNotRetained { lsn: 1, .. })),
            "a feed that fell behind truncation says so"
        );
        assert_eq!(db.changes(first).unwrap().next_event().unwrap().unwrap().lsn, first);
    }

    #[test]
    fn non_utf8_keys_are_hex_and_relation_ids_are_readable() {
        let kv = Key::new("ns", Space::Kv, vec![0xff, 0x00, 0x41]);
        assert_eq!(key_text(&kv), ("ff0041".to_string(), KeyEncoding::Hex));
        let relation = Key::relation(
            "ns",
            &crate::model::Relation {
                from: "Ada".into(),
                to: "Bob".into(),
                relation_type: "knows".into(),
            },
        );
        assert_eq!(key_text(&relation), ("Ada / knows / Bob".to_string(), KeyEncoding::Utf8));
    }
}
