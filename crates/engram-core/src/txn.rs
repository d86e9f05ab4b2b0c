//! Read-write transactions (snapshot isolation) and read-only snapshots.
//!
//! A transaction reads the snapshot taken at `begin` plus its own writes, and buffers its writes.
//! Commit checks, under the commit lock, that no key it writes was committed by someone else
//! after its snapshot (first committer wins), queues its log records (one COMMIT record; for a
//! large transaction, OPS records and then the COMMIT, contiguous), taking their LSNs in commit
//! order, then waits for durability outside the lock, so that concurrent commits share one
//! fdatasync. The commit is applied to the store in LSN order before `commit` returns.

use crate::db::Shared;
use crate::error::{CoreError, Result};
use crate::model::{Key, Space, Value};
use crate::record::{CommitRecord, Layout, Op};
use crate::store::{CreationOrder, VersionInfo};
use crate::write_set::WriteSet;
use engram_wal::{Lsn, SyncPolicy};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a successful commit returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// The LSN of the commit record (the last of the transaction's records): the version stamp
    /// of everything it wrote. For a transaction that wrote nothing, the snapshot it read.
    pub lsn: Lsn,
    pub txn_id: u64,
    pub commit_ts_ms: u64,
}

/// Read access shared by snapshots and transactions; the typed reads (memories, graph,
/// key/value, history) are built on it.
pub trait ReadView {
    /// The LSN this view reads at.
    fn read_lsn(&self) -> Lsn;
    #[doc(hidden)]
    fn get_value(&self, key: &Key) -> Option<Value>;
    /// The stored value of the key (namespace, space, id) itself, shared rather than copied
    /// (versions never change once written). Takes the key's parts: get-by-id builds no `Key`.
    #[doc(hidden)]
    fn get_shared_value(&self, namespace: &str, space: Space, id: &[u8]) -> Option<Arc<Value>>;
    #[doc(hidden)]
    fn scan_values(&self, namespace: &str, space: Space, prefix: &[u8]) -> Vec<(Key, Value, CreationOrder)>;
    #[doc(hidden)]
    fn scan_value_range(&self, namespace: &str, space: Space, from: &[u8], to: Option<&[u8]>) -> Vec<(Key, Value, CreationOrder)>;
    /// Every committed version of a key up to this view's LSN, oldest first.
    #[doc(hidden)]
    fn key_history(&self, key: &Key) -> Vec<VersionInfo>;
}

/// A consistent read-only view at one LSN. Never blocks writers and is never blocked.
#[derive(Clone)]
pub struct Snapshot {
    pub(crate) db: Arc<Shared>,
    pub(crate) lsn: Lsn,
}

fn unwrap_values(items: Vec<(Key, Arc<Value>, CreationOrder)>) -> Vec<(Key, Value, CreationOrder)> {
    items.into_iter().map(|(k, v, o)| (k, (*v).clone(), o)).collect()
}

impl ReadView for Snapshot {
    fn read_lsn(&self) -> Lsn {
        self.lsn
    }
    fn get_value(&self, key: &Key) -> Option<Value> {
        self.db.store.get(key, self.lsn).map(|v| (*v).clone())
    }
    fn get_shared_value(&self, namespace: &str, space: Space, id: &[u8]) -> Option<Arc<Value>> {
        self.db.store.get_parts(namespace, space, id, self.lsn)
    }
    fn scan_values(&self, namespace: &str, space: Space, prefix: &[u8]) -> Vec<(Key, Value, CreationOrder)> {
        unwrap_values(self.db.store.scan_prefix(namespace, space, prefix, self.lsn))
    }
    fn scan_value_range(&self, namespace: &str, space: Space, from: &[u8], to: Option<&[u8]>) -> Vec<(Key, Value, CreationOrder)> {
        unwrap_values(self.db.store.scan_range(namespace, space, from, to, self.lsn))
    }
    fn key_history(&self, key: &Key) -> Vec<VersionInfo> {
        self.db.store.history(key, self.lsn)
    }
}

/// A read-write transaction. Dropping it without `commit` aborts it (nothing was logged).
pub struct Transaction {
    pub(crate) db: Arc<Shared>,
    snapshot: Lsn,
    /// Buffered writes, by key.
    writes: WriteSet<Write>,
    events: Vec<Op>,
    write_count: u32,
    durability: SyncPolicy,
}

/// One buffered write.
struct Write {
    /// `None` deletes.
    value: Option<Value>,
    /// When the key was first written in this transaction (or written again after a delete
    /// here), so that items created together keep their order.
    order: u32,
    /// A graph item deleted and then created again in this transaction: a new item, which the
    /// commit logs as a delete followed by a put, so that it is listed after existing items, as
    /// the reference memory server (and two separate transactions) would list it.
    recreated: bool,
}

impl Transaction {
    pub(crate) fn new(db: Arc<Shared>, snapshot: Lsn, durability: SyncPolicy) -> Self {
        Transaction {
            db,
            snapshot,
            writes: WriteSet::default(),
            events: Vec::new(),
            write_count: 0,
            durability,
        }
    }

    /// Overrides the database's durability for this commit (e.g. `SyncPolicy::Never` for a bulk
    /// load); `Always` acknowledges only after fdatasync.
    pub fn set_durability(&mut self, policy: SyncPolicy) {
        self.durability = policy;
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.events.is_empty()
    }

    pub(crate) fn put(&mut self, key: Key, value: Value) {
        self.write(key, Some(value));
    }

    pub(crate) fn remove(&mut self, key: Key) {
        self.write(key, None);
    }

    fn write(&mut self, key: Key, value: Option<Value>) {
        let (order, recreated) = match self.writes.get(&key) {
            // Only graph items are listed in insertion order, so only they can be re-created;
            // elsewhere a delete then a write is simply an update.
            Some(w) if w.value.is_none() && value.is_some() && matches!(key.space, Space::Entity | Space::Relation) => {
                (self.write_count, true)
            }
            Some(w) => (w.order, w.recreated),
            None => (self.write_count, false),
        };
        self.write_count += 1;
        self.writes.insert(key, Write { value, order, recreated });
    }

    pub(crate) fn push_event(&mut self, event: Op) {
        self.events.push(event);
    }

    /// Commits atomically: every write and event, or none. A transaction too large for one log
    /// record is streamed in several (docs/record-format.md) and is still atomic; only a single
    /// operation that does not fit in one record (`WalOptions::max_record_bytes`, with its before
    /// and after images) is refused, with `TooLarge`, and then nothing changes.
    pub fn commit(self) -> Result<CommitInfo> {
        match self.log()? {
            Logged::Nothing(info) => Ok(info),
            Logged::Submitted {
                db,
                info,
                durability,
                writes_memories,
            } => {
                db.finish_commit(info.lsn, durability)?;
                if writes_memories {
                    // Keeps the search index lag bounded when commits outpace the indexer for long.
                    db.indexes.throttle();
                }
                Ok(info)
            }
        }
    }

    /// [`commit`](Self::commit) for async callers (a server, an agent runtime): the same
    /// transaction, atomicity and durability, but the task yields instead of blocking its thread
    /// while the log syncs; the log's syncer thread leads the group commits that only tasks wait
    /// for. Works on any executor. Dropping the future after the commit is logged does not undo
    /// it: the commit becomes durable and visible with the next group.
    pub async fn commit_async(self) -> Result<CommitInfo> {
        match self.log()? {
            Logged::Nothing(info) => Ok(info),
            Logged::Submitted {
                db,
                info,
                durability,
                writes_memories,
            } => {
                db.finish_commit_async(info.lsn, durability).await?;
                if writes_memories {
                    db.indexes.throttle_async().await;
                }
                Ok(info)
            }
        }
    }

    /// Everything in a commit up to the log append: checks, conflict detection, encoding, LSNs.
    fn log(self) -> Result<Logged> {
        let db = self.db.clone();
        db.check_running()?;
        let writes_memories = self.writes.iter().any(|(k, _)| k.space == Space::Memory);
        if self.is_empty() {
            return Ok(Logged::Nothing(CommitInfo {
                lsn: self.snapshot,
                txn_id: 0,
                commit_ts_ms: db.store.commit_time(self.snapshot),
            }));
        }
        // Everything that does not depend on other commits is prepared before the commit lock,
        // which serialises all committers: the before images are read at this transaction's
        // snapshot (if the commit goes ahead, nobody wrote these keys since, so they are the
        // newest versions), and the operations are encoded. Under the lock remain the conflict
        // check, the id and time, and the log append.
        let mut writes = Vec::with_capacity(self.writes.len());
        for (
            key,
            Write {
                value: after,
                order,
                recreated,
            },
        ) in self.writes
        {
            let before = db.store.get(&key, self.snapshot);
            writes.push((key, after, order, recreated, before));
        }
        writes.sort_by_key(|(_, _, order, _, _)| *order);
        let mut ops = Vec::with_capacity(writes.len() + self.events.len());
        // Deletions of keys absent from the snapshot log nothing, but are still writes: a
        // commit that created such a key meanwhile is a conflict, as for any other write.
        let mut unlogged_writes = Vec::new();
        for (key, after, _, recreated, before) in writes {
            let before = before.map(|v| (*v).clone());
            match (after, before) {
                (Some(after), Some(old)) if recreated => {
                    ops.push(Op::Delete {
                        key: key.clone(),
                        before: old,
                    });
                    ops.push(Op::Put { key, before: None, after });
                }
                (Some(after), before) => ops.push(Op::Put { key, before, after }),
                (None, Some(before)) => ops.push(Op::Delete { key, before }),
                (None, None) => unlogged_writes.push(key),
            }
        }
        ops.extend(self.events);
        // Sized before an id or a time is taken: an operation too large for one log record
        // fails here and changes nothing.
        let (stream_bytes, max_record_bytes) = db.record_limits();
        let layout = (!ops.is_empty())
            .then(|| Layout::plan(&ops, stream_bytes, max_record_bytes))
            .transpose()?;
        let info = {
            let mut commit = db.lock_commit();
            // First committer wins: a key written by a commit after this transaction's snapshot
            // (applied, or queued and not yet applied) is a conflict.
            for key in ops.iter().filter_map(Op::key).chain(&unlogged_writes) {
                if commit.pending_lsn(key).max(db.store.latest_lsn(key)) > self.snapshot {
                    drop(commit);
                    // A retry begins at the visible LSN: make the winner visible if it is
                    // durable, even if its own task has not been polled since.
                    db.help_apply();
                    return Err(CoreError::Conflict {
                        namespace: key.namespace.clone(),
                        what: space_name(key.space),
                        id: key.id_text(),
                    });
                }
            }
            let Some(layout) = layout else {
                // Only deletions of absent keys: nothing to log, like a read-only transaction.
                return Ok(Logged::Nothing(CommitInfo {
                    lsn: self.snapshot,
                    txn_id: 0,
                    commit_ts_ms: db.store.commit_time(self.snapshot),
                }));
            };
            let txn_id = commit.next_txn_id();
            let commit_ts_ms = commit.next_commit_ts();
            // The applier gets the only reference, so the record moves into the store uncopied.
            let lsn = db.submit(&mut commit, Arc::new(CommitRecord { txn_id, commit_ts_ms, ops }), layout)?;
            CommitInfo { lsn, txn_id, commit_ts_ms }
        };
        Ok(Logged::Submitted {
            db,
            info,
            durability: self.durability,
            writes_memories,
        })
    }
}

/// A transaction after its log append.
enum Logged {
    /// Nothing to log (empty, or only deletions of absent keys).
    Nothing(CommitInfo),
    /// In the log (not yet durable, not yet visible).
    Submitted {
        db: Arc<Shared>,
        info: CommitInfo,
        durability: SyncPolicy,
        writes_memories: bool,
    },
}

impl ReadView for Transaction {
    fn read_lsn(&self) -> Lsn {
        self.snapshot
    }

    fn get_value(&self, key: &Key) -> Option<Value> {
        match self.writes.get(key) {
            Some(w) => w.value.clone(),
            None => self.db.store.get(key, self.snapshot).map(|v| (*v).clone()),
        }
    }

    fn get_shared_value(&self, namespace: &str, space: Space, id: &[u8]) -> Option<Arc<Value>> {
        match self.writes.get_parts(namespace, space, id) {
            // This transaction's own write is not stored yet: shared from a copy.
            Some(w) => w.value.clone().map(Arc::new),
            None => self.db.store.get_parts(namespace, space, id, self.snapshot),
        }
    }

    fn scan_values(&self, namespace: &str, space: Space, prefix: &[u8]) -> Vec<(Key, Value, CreationOrder)> {
        let base = unwrap_values(self.db.store.scan_prefix(namespace, space, prefix, self.snapshot));
        self.overlay(base, |k| k.namespace == namespace && k.space == space && k.id.starts_with(prefix))
    }

    fn scan_value_range(&self, namespace: &str, space: Space, from: &[u8], to: Option<&[u8]>) -> Vec<(Key, Value, CreationOrder)> {
        let base = unwrap_values(self.db.store.scan_range(namespace, space, from, to, self.snapshot));
        self.overlay(base, |k| {
            k.namespace == namespace && k.space == space && k.id.as_slice() >= from && to.is_none_or(|t| k.id.as_slice() < t)
        })
    }

    fn key_history(&self, key: &Key) -> Vec<VersionInfo> {
        self.db.store.history(key, self.snapshot)
    }
}

impl Transaction {
    /// Merges this transaction's own writes into a scan of its snapshot (key order kept).
    fn overlay(&self, base: Vec<(Key, Value, CreationOrder)>, within: impl Fn(&Key) -> bool) -> Vec<(Key, Value, CreationOrder)> {
        let mut merged: BTreeMap<Key, (Value, CreationOrder)> = base.into_iter().map(|(k, v, o)| (k, (v, o))).collect();
        for (key, w) in self.writes.iter().filter(|(k, _)| within(k)) {
            match &w.value {
                Some(v) => {
                    // A key first written (or re-created) here sorts after everything committed.
                    let new_item = (Lsn::MAX, w.order);
                    let created = if w.recreated {
                        new_item
                    } else {
                        merged.get(key).map_or(new_item, |(_, o)| *o)
                    };
                    merged.insert(key.clone(), (v.clone(), created));
                }
                None => {
                    merged.remove(key);
                }
            }
        }
        merged.into_iter().map(|(k, (v, o))| (k, v, o)).collect()
    }
}

pub(crate) fn space_name(space: Space) -> &'static str {
    match space {
        Space::Meta => "namespace settings",
        Space::Memory => "memory",
        Space::Entity => "entity",
        Space::Relation => "relation",
        Space::Kv => "key",
    }
}
