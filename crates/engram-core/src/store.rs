//! The multi-version store: every key keeps its versions, each stamped with the LSN of the
//! commit that wrote it. A reader at LSN L sees, for each key, the newest version at or below L.
//! Versions are only ever appended (in LSN order, by the applier), so a read at L never changes
//! once L is visible.

use crate::model::{Key, Space, Value};
use crate::record::{CommitRecord, Op};
use engram_wal::Lsn;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard};

#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub lsn: Lsn,
    /// Position of the operation in its transaction, to order items created together.
    pub op_index: u32,
    /// `None` marks a deletion.
    pub value: Option<Arc<Value>>,
}

/// One version of a key as seen by `history`.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    pub lsn: Lsn,
    pub commit_ts_ms: u64,
    /// `None` when this version deleted the key.
    pub value: Option<Value>,
}

/// One piece of a checkpoint export (see [`Store::export_chunk`]).
pub(crate) struct ExportChunk {
    pub chains: Vec<(Key, Vec<Version>)>,
    /// The key to continue after; `None` when the export reached the last key.
    pub resume_after: Option<Key>,
}

/// Where an item's current incarnation was created: orders graph items by insertion.
pub(crate) type CreationOrder = (Lsn, u32);

#[derive(Default)]
pub(crate) struct Store {
    versions: RwLock<BTreeMap<Key, Vec<Version>>>,
    /// (commit LSN, commit time) of every applied commit, in LSN order, for as-of by time.
    commit_times: RwLock<Vec<(Lsn, u64)>>,
}

fn visible(chain: &[Version], at: Lsn) -> Option<&Version> {
    let n = chain.partition_point(|v| v.lsn <= at);
    n.checked_sub(1).map(|i| &chain[i])
}

/// Where the incarnation visible at `at` began (after the last deletion at or below `at`).
fn creation(chain: &[Version], at: Lsn) -> CreationOrder {
    let n = chain.partition_point(|v| v.lsn <= at);
    let start = chain[..n].iter().rposition(|v| v.value.is_none()).map_or(0, |i| i + 1);
    (chain[start].lsn, chain[start].op_index)
}

impl Store {
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Key, Vec<Version>>> {
        self.versions.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &Key, at: Lsn) -> Option<Arc<Value>> {
        self.read()
            .get(key)
            .and_then(|chain| visible(chain, at))
            .and_then(|v| v.value.clone())
    }

    /// LSN of the newest version of `key` (0 if it never existed).
    pub fn latest_lsn(&self, key: &Key) -> Lsn {
        self.read().get(key).and_then(|c| c.last()).map_or(0, |v| v.lsn)
    }

    /// Live items of one space in a namespace whose id starts with `prefix`, in key order.
    pub fn scan_prefix(&self, namespace: &str, space: Space, prefix: &[u8], at: Lsn) -> Vec<(Key, Arc<Value>, CreationOrder)> {
        let start = Key::new(namespace, space, prefix.to_vec());
        self.scan_from(Bound::Included(start), at, |k| {
            k.namespace == namespace && k.space == space && k.id.starts_with(prefix)
        })
    }

    /// Live items of one space with ids in `[from, to)` (an absent bound is open).
    pub fn scan_range(
        &self,
        namespace: &str,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        at: Lsn,
    ) -> Vec<(Key, Arc<Value>, CreationOrder)> {
        let start = Key::new(namespace, space, from.to_vec());
        self.scan_from(Bound::Included(start), at, |k| {
            k.namespace == namespace && k.space == space && to.is_none_or(|to| k.id.as_slice() < to)
        })
    }

    fn scan_from(&self, start: Bound<Key>, at: Lsn, mut within: impl FnMut(&Key) -> bool) -> Vec<(Key, Arc<Value>, CreationOrder)> {
        let map = self.read();
        let mut out = Vec::new();
        for (key, chain) in map.range((start, Bound::Unbounded)) {
            if !within(key) {
                break;
            }
            if let Some(value) = visible(chain, at).and_then(|v| v.value.clone()) {
                out.push((key.clone(), value, creation(chain, at)));
            }
        }
        out
    }

    /// Every version of `key` at or below `at`, oldest first.
    pub fn history(&self, key: &Key, at: Lsn) -> Vec<VersionInfo> {
        let map = self.read();
        let Some(chain) = map.get(key) else { return Vec::new() };
        let times = self.commit_times.read().unwrap_or_else(|p| p.into_inner());
        chain
            .iter()
            .take_while(|v| v.lsn <= at)
            .map(|v| VersionInfo {
                lsn: v.lsn,
                commit_ts_ms: commit_time(&times, v.lsn),
                value: v.value.as_deref().cloned(),
            })
            .collect()
    }

    /// The LSN of the last commit at or before `ts_ms` (0 if none).
    pub fn lsn_at_time(&self, ts_ms: u64) -> Lsn {
        let times = self.commit_times.read().unwrap_or_else(|p| p.into_inner());
        let n = times.partition_point(|(_, t)| *t <= ts_ms);
        n.checked_sub(1).map_or(0, |i| times[i].0)
    }

    pub fn commit_time(&self, lsn: Lsn) -> u64 {
        commit_time(&self.commit_times.read().unwrap_or_else(|p| p.into_inner()), lsn)
    }

    /// Up to `max_keys` keys after `after` (from the start when `None`), in key order, each with
    /// its versions at or below `at`; keys with none are left out. Versions at or below a
    /// visible LSN never change, so successive chunks, each taken under its own short read lock,
    /// add up to one consistent export while the applier keeps appending between them.
    pub fn export_chunk(&self, after: Option<&Key>, at: Lsn, max_keys: usize) -> ExportChunk {
        let map = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut chains = Vec::new();
        let mut last_seen = None;
        for (key, chain) in map.range::<Key, _>((start, Bound::Unbounded)).take(max_keys) {
            last_seen = Some(key);
            let n = chain.partition_point(|v| v.lsn <= at);
            if n > 0 {
                chains.push((key.clone(), chain[..n].to_vec()));
            }
        }
        let resume_after = match last_seen {
            Some(key) if map.range::<Key, _>((Bound::Excluded(key), Bound::Unbounded)).next().is_some() => Some(key.clone()),
            _ => None,
        };
        ExportChunk { chains, resume_after }
    }

    /// (LSN, commit time) of every commit at or below `at`, in LSN order.
    pub fn commit_times_upto(&self, at: Lsn) -> Vec<(Lsn, u64)> {
        let times = self.commit_times.read().unwrap_or_else(|p| p.into_inner());
        let n = times.partition_point(|(l, _)| *l <= at);
        times[..n].to_vec()
    }

    /// A store holding exactly what a checkpoint holds: `chains` in key order, each oldest first,
    /// and the commit times in LSN order. The log after the checkpoint is then applied on top.
    pub fn from_checkpoint(chains: Vec<(Key, Vec<Version>)>, commit_times: Vec<(Lsn, u64)>) -> Store {
        Store {
            versions: RwLock::new(chains.into_iter().collect()),
            commit_times: RwLock::new(commit_times),
        }
    }

    /// Adds the versions written by the commit at `lsn`. Commits are applied in LSN order.
    pub fn apply(&self, lsn: Lsn, record: &CommitRecord) {
        let mut map = self.versions.write().unwrap_or_else(|p| p.into_inner());
        for (op_index, op) in record.ops.iter().enumerate() {
            let (key, value) = match op {
                Op::Put { key, after, .. } => (key, Some(Arc::new(after.clone()))),
                Op::Delete { key, .. } => (key, None),
                Op::Event { .. } => continue,
            };
            map.entry(key.clone()).or_default().push(Version {
                lsn,
                op_index: op_index as u32,
                value,
            });
        }
        drop(map);
        self.commit_times
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((lsn, record.commit_ts_ms));
    }
}

fn commit_time(times: &[(Lsn, u64)], lsn: Lsn) -> u64 {
    times.binary_search_by_key(&lsn, |(l, _)| *l).map_or(0, |i| times[i].1)
}
