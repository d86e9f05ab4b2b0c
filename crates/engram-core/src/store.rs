//! The multi-version store: every key keeps its versions, each stamped with the LSN of the
//! commit that wrote it. A reader at LSN L sees, for each key, the newest version at or below L.
//!
//! The applier only appends versions (in LSN order). The one other change is pruning under the
//! retention policy (retention.rs), at a checkpoint: it removes old versions at or below the
//! checkpoint LSN, after first raising the *history horizon*, the oldest LSN at which every read
//! still gives the answer it gave before. So a read at L at or above the horizon never changes
//! once L is visible, and a read below it is refused: the typed reads check the horizon *after*
//! reading (a read that saw pruned data then sees the raised horizon, which was published before
//! the write lock that removed the data).

pub(crate) mod compact_key;

use crate::error::{CoreError, Result};
use crate::model::{Key, Space, Value};
use crate::record::{CommitRecord, Op};
use crate::search::index::{is_indexed, IndexChange};
use compact_key::{KeyBytes, StoredKey};
use engram_wal::Lsn;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Keys planned or pruned per lock of the store: bounds how long the applier (and, for the write
/// lock, readers) can wait for it.
const PRUNE_KEYS_PER_LOCK: usize = 1024;

#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub lsn: Lsn,
    /// Position of the operation in its transaction, to order items created together.
    pub op_index: u32,
    /// `None` marks a deletion.
    pub value: Option<Arc<Value>>,
}

/// A key's versions. Most keys have one (memories are inserted once, and the open bench's keys all
/// do), so it is held inline: a `Vec` would allocate room for four (112 bytes of heap).
pub(crate) type Versions = SmallVec<[Version; 1]>;

/// The retained versions of one key, oldest first (never empty in the store).
#[derive(Debug, Clone, Default)]
pub(crate) struct Chain {
    pub versions: Versions,
    /// Where the incarnation that `versions[0]` belongs to was created, when that was an older
    /// version that pruning removed (graph reads order items by it); `None` when `versions[0]`
    /// itself created it.
    pub created: Option<CreationOrder>,
}

/// Which old versions a prune removes from each key, among its versions at or below the prune
/// LSN (see [`Store::plan_retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PruneRule {
    /// Nothing is pruned.
    Off,
    /// Every version but the newest n (at least 1) of each key.
    OlderThanNewest(usize),
    /// Every version a read at this LSN or later does not need: all but the version visible
    /// there and the newer ones.
    SupersededAt(Lsn),
}

/// What a prune does to one chain.
struct Cut {
    /// How many of the oldest versions go.
    drop: usize,
    /// Reads of the key at or above this LSN give the same answer after the cut (0: nothing goes).
    exact_from: Lsn,
    /// `Chain::created` after the cut.
    created: Option<CreationOrder>,
}

/// Applies `rule` to the first `upto` versions of `chain` (those at or below the prune LSN). The
/// newest of them stays, unless it is a deletion whose older versions all go: a read then finds
/// no version, which is what the deletion said, so the deletion goes too.
fn cut(chain: &Chain, upto: usize, rule: PruneRule) -> Cut {
    let v = &chain.versions[..upto];
    let mut drop = match rule {
        PruneRule::Off => 0,
        PruneRule::OlderThanNewest(n) => v.len().saturating_sub(n.max(1)),
        PruneRule::SupersededAt(lsn) => v.partition_point(|x| x.lsn <= lsn).saturating_sub(1),
    };
    if drop > 0 {
        while drop < v.len() && v[drop].value.is_none() {
            drop += 1;
        }
    }
    let Some(last_dropped) = drop.checked_sub(1).map(|i| &v[i]) else {
        return Cut {
            drop: 0,
            exact_from: 0,
            created: chain.created,
        };
    };
    match v.get(drop) {
        // The oldest kept version is current from its own LSN on; below it, the dropped one was.
        Some(first_kept) if last_dropped.value.is_some() => {
            let created = creation(chain, first_kept.lsn);
            Cut {
                drop,
                exact_from: first_kept.lsn,
                created: (created != (first_kept.lsn, first_kept.op_index)).then_some(created),
            }
        }
        // A dropped deletion: from it on, a read finds nothing, as before.
        _ => Cut {
            drop,
            exact_from: last_dropped.lsn,
            created: None,
        },
    }
}

/// What a checkpoint prunes (see [`Store::plan_retention`]), computed before the checkpoint is
/// written and applied to the store once it is durable.
#[derive(Debug)]
pub(crate) struct RetentionPlan {
    /// The prune LSN (the checkpoint's): versions above it are never touched.
    pub at: Lsn,
    pub rule: PruneRule,
    /// The history horizon after the prune: reads below it are refused.
    pub horizon: Lsn,
    /// The commit table up to `at` after the prune: every row at or above the horizon, and below
    /// it the rows of commits that wrote a retained version (their commit times are in history).
    pub commit_times: Vec<(Lsn, u64)>,
    pub versions_pruned: u64,
    /// Keys whose versions all go (the newest was a deletion).
    pub keys_pruned: u64,
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
    pub chains: Vec<(Key, Chain)>,
    /// The key to continue after; `None` when the export reached the last key.
    pub resume_after: Option<Key>,
}

/// Where an item's current incarnation was created: orders graph items by insertion.
pub(crate) type CreationOrder = (Lsn, u32);

/// The versions of every key, by key (encoded: see compact_key.rs).
type VersionMap = BTreeMap<StoredKey, Chain>;

#[derive(Default)]
pub(crate) struct Store {
    versions: RwLock<VersionMap>,
    /// (commit LSN, commit time) of applied commits, in LSN order, for as-of by time: every
    /// commit at or above the history horizon, and below it those that wrote a retained version.
    commit_times: RwLock<Vec<(Lsn, u64)>>,
    /// Reads below this LSN are refused: versions they may need were pruned. Only grows.
    history_horizon: AtomicU64,
}

fn visible(chain: &Chain, at: Lsn) -> Option<&Version> {
    let n = chain.versions.partition_point(|v| v.lsn <= at);
    n.checked_sub(1).map(|i| &chain.versions[i])
}

/// Where the incarnation visible at `at` began (after the last deletion at or below `at`).
fn creation(chain: &Chain, at: Lsn) -> CreationOrder {
    let v = &chain.versions;
    let n = v.partition_point(|x| x.lsn <= at);
    match v[..n].iter().rposition(|x| x.value.is_none()) {
        Some(i) => (v[i + 1].lsn, v[i + 1].op_index),
        None => chain.created.unwrap_or((v[0].lsn, v[0].op_index)),
    }
}

impl Store {
    fn read(&self) -> RwLockReadGuard<'_, VersionMap> {
        self.versions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, VersionMap> {
        self.versions.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &Key, at: Lsn) -> Option<Arc<Value>> {
        self.get_parts(&key.namespace, key.space, &key.id, at)
    }

    /// [`Store::get`] of the key (namespace, space, id), without building a `Key` (two
    /// allocations) for it: the get-by-id path.
    pub fn get_parts(&self, namespace: &str, space: Space, id: &[u8], at: Lsn) -> Option<Arc<Value>> {
        let key = compact_key::encode_prefix(namespace, space, id);
        self.read()
            .get(KeyBytes::new(key.as_slice()))
            .and_then(|chain| visible(chain, at))
            .and_then(|v| v.value.clone())
    }

    /// LSN of the newest version of `key`: what the commit path's conflict check compares with
    /// a transaction's snapshot. For a key without versions it is the history horizon (0 until
    /// something was pruned), because pruning may have removed its versions up to there (a
    /// deletion and what it deleted); a transaction whose snapshot is older then conflicts
    /// rather than overwriting a change it never saw. (Pruning never removes the newest version
    /// of a key that keeps any, so for those the answer is exact.)
    pub fn latest_lsn(&self, key: &Key) -> Lsn {
        let key = compact_key::encode(key);
        let map = self.read();
        match map.get(KeyBytes::new(key.as_slice())).and_then(|c| c.versions.last()) {
            Some(v) => v.lsn,
            None => self.history_horizon(),
        }
    }

    /// The newest version of `key`: its LSN (as [`Store::latest_lsn`]) and value (None if
    /// absent or deleted).
    #[cfg(test)]
    pub fn latest(&self, key: &Key) -> (Lsn, Option<Arc<Value>>) {
        let key = compact_key::encode(key);
        let map = self.read();
        match map.get(KeyBytes::new(key.as_slice())).and_then(|c| c.versions.last()) {
            Some(v) => (v.lsn, v.value.clone()),
            None => (self.history_horizon(), None),
        }
    }

    /// The oldest LSN reads are answered at (0: nothing was ever pruned).
    pub fn history_horizon(&self) -> Lsn {
        self.history_horizon.load(Ordering::Acquire)
    }

    /// `HistoryNotRetained` if a read at `at` may have lost versions to pruning. Readers call it
    /// after reading.
    pub fn check_retained(&self, at: Lsn) -> Result<()> {
        let oldest = self.history_horizon();
        if at < oldest {
            return Err(CoreError::HistoryNotRetained { lsn: at, oldest });
        }
        Ok(())
    }

    /// Sets the horizon of a store built from a checkpoint (at open).
    pub fn restore_history_horizon(&self, lsn: Lsn) {
        self.history_horizon.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Live items of one space in a namespace whose id starts with `prefix`, in key order.
    pub fn scan_prefix(&self, namespace: &str, space: Space, prefix: &[u8], at: Lsn) -> Vec<(Key, Arc<Value>, CreationOrder)> {
        // The id is the end of the encoding, so an id prefix is a prefix of the encoded key.
        let start = compact_key::encode_prefix(namespace, space, prefix);
        self.scan_from(&start, at, |k| k.starts_with(&start))
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
        let space_start = compact_key::encode_prefix(namespace, space, &[]);
        let start = compact_key::encode_prefix(namespace, space, from);
        let end = to.map(|to| compact_key::encode_prefix(namespace, space, to));
        self.scan_from(&start, at, |k| {
            k.starts_with(&space_start) && end.as_ref().is_none_or(|end| k < end.as_slice())
        })
    }

    fn scan_from(&self, start: &[u8], at: Lsn, mut within: impl FnMut(&[u8]) -> bool) -> Vec<(Key, Arc<Value>, CreationOrder)> {
        let map = self.read();
        let mut out = Vec::new();
        for (key, chain) in map.range::<[u8], _>((Bound::Included(start), Bound::Unbounded)) {
            if !within(key) {
                break;
            }
            if let Some(value) = visible(chain, at).and_then(|v| v.value.clone()) {
                out.push((compact_key::decode(key), value, creation(chain, at)));
            }
        }
        out
    }

    /// Namespaces holding at least one key with a version at or below `at` (live or not), in
    /// order. Skips from one namespace to the next, so the cost is one lookup per namespace.
    pub fn namespaces(&self, at: Lsn) -> Vec<String> {
        let map = self.read();
        let mut out = Vec::new();
        let mut start = compact_key::KeyBuf::new();
        while let Some((key, _)) = map
            .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Unbounded))
            .find(|(_, c)| c.versions.first().is_some_and(|v| v.lsn <= at))
        {
            let namespace = compact_key::namespace_of(key);
            start = compact_key::past_namespace(&namespace);
            out.push(namespace);
        }
        out
    }

    /// Every version of `key` at or below `at`, oldest first.
    pub fn history(&self, key: &Key, at: Lsn) -> Vec<VersionInfo> {
        let key = compact_key::encode(key);
        let map = self.read();
        let Some(chain) = map.get(KeyBytes::new(key.as_slice())) else {
            return Vec::new();
        };
        let times = self.commit_times.read().unwrap_or_else(|p| p.into_inner());
        chain
            .versions
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
    /// its versions at or below `at` that `rule` keeps; keys with none are left out. Versions at
    /// or below a visible LSN change only by pruning, which checkpoint runs serialise with their
    /// exports, so successive chunks, each taken under its own short read lock, add up to one
    /// consistent export while the applier keeps appending between them.
    pub fn export_chunk(&self, after: Option<&Key>, at: Lsn, max_keys: usize, rule: PruneRule) -> ExportChunk {
        let after = after.map(compact_key::encode);
        let map = self.read();
        let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut chains = Vec::new();
        let mut last_seen = None;
        for (key, chain) in map.range::<[u8], _>((start, Bound::Unbounded)).take(max_keys) {
            last_seen = Some(key);
            let n = chain.versions.partition_point(|v| v.lsn <= at);
            let cut = cut(chain, n, rule);
            if n > cut.drop {
                let kept = Chain {
                    versions: chain.versions[cut.drop..n].iter().cloned().collect(),
                    created: cut.created,
                };
                chains.push((compact_key::decode(key), kept));
            }
        }
        let resume_after = match last_seen {
            Some(key) if map.range::<[u8], _>((Bound::Excluded(&**key), Bound::Unbounded)).next().is_some() => {
                Some(compact_key::decode(key))
            }
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
    /// and the commit times in LSN order (the horizon is restored separately, see
    /// [`Store::restore_history_horizon`]). The log after the checkpoint is then applied on top.
    pub fn from_checkpoint(chains: Vec<(Key, Chain)>, commit_times: Vec<(Lsn, u64)>) -> Store {
        Store {
            versions: RwLock::new(chains.into_iter().map(|(key, chain)| (compact_key::stored(&key), chain)).collect()),
            commit_times: RwLock::new(commit_times),
            history_horizon: AtomicU64::new(0),
        }
    }

    /// What pruning the versions at or below `at` by `rule` removes, and the horizon and commit
    /// table after it. Walks the store in chunks of keys, each under a short read lock; nothing
    /// changes. Versions at or below a visible `at` change only by pruning, and the checkpoint
    /// mutex serialises plans and prunes, so `export_chunk` and `prune` with the same rule and
    /// LSN then agree with the plan key by key.
    pub fn plan_retention(&self, at: Lsn, rule: PruneRule) -> RetentionPlan {
        let all_times = self.commit_times_upto(at);
        let mut plan = RetentionPlan {
            at,
            rule,
            horizon: self.history_horizon(),
            commit_times: Vec::new(),
            versions_pruned: 0,
            keys_pruned: 0,
        };
        if rule == PruneRule::Off {
            plan.commit_times = all_times;
            return plan;
        }
        // Rows (by index) of the commits that wrote a retained version.
        let mut referenced = vec![0u64; all_times.len().div_ceil(64)];
        let mut after: Option<StoredKey> = None;
        loop {
            let map = self.read();
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut seen = 0;
            let mut last = None;
            for (key, chain) in map.range::<[u8], _>((start, Bound::Unbounded)).take(PRUNE_KEYS_PER_LOCK) {
                seen += 1;
                last = Some(key);
                let n = chain.versions.partition_point(|v| v.lsn <= at);
                let cut = cut(chain, n, rule);
                if cut.drop > 0 {
                    plan.versions_pruned += cut.drop as u64;
                    plan.horizon = plan.horizon.max(cut.exact_from);
                    if cut.drop == chain.versions.len() {
                        plan.keys_pruned += 1;
                    }
                }
                for v in &chain.versions[cut.drop..n] {
                    if let Ok(i) = all_times.binary_search_by_key(&v.lsn, |(l, _)| *l) {
                        referenced[i / 64] |= 1 << (i % 64);
                    }
                }
            }
            let last = last.cloned();
            drop(map);
            if seen < PRUNE_KEYS_PER_LOCK {
                break;
            }
            after = last;
        }
        let horizon = plan.horizon;
        plan.commit_times = all_times
            .into_iter()
            .enumerate()
            .filter(|(i, (lsn, _))| *lsn >= horizon || referenced[i / 64] & (1 << (i % 64)) != 0)
            .map(|(_, row)| row)
            .collect();
        plan
    }

    /// Applies a plan: raises the history horizon first, then removes the planned versions, one
    /// chunk of keys per short write lock (dropping the removed values after releasing it), then
    /// swaps in the pruned commit table. Returns (versions, keys) removed.
    pub fn prune(&self, plan: RetentionPlan) -> (u64, u64) {
        if plan.rule == PruneRule::Off {
            return (0, 0);
        }
        self.history_horizon.fetch_max(plan.horizon, Ordering::AcqRel);
        let (mut versions, mut keys) = (0u64, 0u64);
        let mut after: Option<StoredKey> = None;
        loop {
            let mut garbage: Vec<Version> = Vec::new();
            let mut emptied: Vec<StoredKey> = Vec::new();
            let mut seen = 0;
            let mut map = self.write();
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut last = None;
            for (key, chain) in map.range_mut::<[u8], _>((start, Bound::Unbounded)).take(PRUNE_KEYS_PER_LOCK) {
                seen += 1;
                last = Some(key);
                let n = chain.versions.partition_point(|v| v.lsn <= plan.at);
                let cut = cut(chain, n, plan.rule);
                if cut.drop == 0 {
                    continue;
                }
                versions += cut.drop as u64;
                garbage.extend(chain.versions.drain(..cut.drop));
                chain.created = cut.created;
                if chain.versions.is_empty() {
                    emptied.push(key.clone());
                } else if chain.versions.capacity() > 2 * chain.versions.len() + 8 {
                    chain.versions.shrink_to_fit();
                }
            }
            let last = last.cloned();
            for key in &emptied {
                map.remove(&**key);
            }
            drop(map);
            drop(garbage);
            keys += emptied.len() as u64;
            if seen < PRUNE_KEYS_PER_LOCK {
                break;
            }
            after = last;
        }
        // Rows above `at` were appended meanwhile; the rows at or below it are the plan's.
        let mut kept = plan.commit_times;
        kept.reserve(1024);
        let old = {
            let mut times = self.commit_times.write().unwrap_or_else(|p| p.into_inner());
            let tail = times.partition_point(|(l, _)| *l <= plan.at);
            kept.extend_from_slice(&times[tail..]);
            std::mem::replace(&mut *times, kept)
        };
        drop(old);
        (versions, keys)
    }

    /// Adds the versions written by the commit at `lsn`. Commits are applied in LSN order.
    /// Takes the record by value: its keys and values move into the store (no copies, which
    /// showed up as a fifth of the time of opening a large database).
    ///
    /// Returns the changes the search indexes follow (memories and the vector metric), sharing
    /// the stored values, for the index applier (search/index.rs).
    pub fn apply(&self, lsn: Lsn, record: CommitRecord) -> Vec<IndexChange> {
        let mut changes = Vec::new();
        self.apply_batch([(lsn, record)], &mut changes);
        changes
    }

    /// [`Store::apply`] for several commits, in LSN order, under one acquisition of each lock
    /// (the applier makes a whole group commit visible at once; readers wait for the write lock
    /// once per group instead of once per commit). Appends the index changes to `changes`.
    pub fn apply_batch(&self, commits: impl IntoIterator<Item = (Lsn, CommitRecord)>, changes: &mut Vec<IndexChange>) {
        // Everything but the B-tree's own updates is done before taking the write lock (values
        // moved into their `Arc`s, keys encoded, index changes made): readers wait for it only
        // as long as the updates take.
        let mut commit_times = Vec::new();
        let mut versions: Vec<(compact_key::KeyBuf, Version)> = Vec::new();
        for (lsn, record) in commits {
            commit_times.push((lsn, record.commit_ts_ms));
            for (op_index, op) in record.ops.into_iter().enumerate() {
                // An insert: the key had no live version just before this operation (read at the
                // transaction's snapshot, and no commit wrote the key since, or this one would have
                // been a conflict; a generated id is new).
                let (key, value, creates) = match op {
                    Op::Put { key, before, after } => (key, Some(Arc::new(after)), before.is_none()),
                    Op::Delete { key, .. } => (key, None, false),
                    Op::Event { .. } => continue,
                };
                let version = Version {
                    lsn,
                    op_index: op_index as u32,
                    value,
                };
                let stored = compact_key::encode(&key);
                if is_indexed(&key) {
                    changes.push(IndexChange {
                        creates,
                        ..IndexChange::new(lsn, key, version.value.clone())
                    });
                }
                versions.push((stored, version));
            }
        }
        let mut map = self.write();
        for (stored, version) in versions {
            // Looked up by the encoding built above: only a new key allocates (when too long to
            // be held inline).
            match map.get_mut(KeyBytes::new(stored.as_slice())) {
                Some(chain) => chain.versions.push(version),
                None => {
                    let chain = Chain {
                        versions: SmallVec::from_buf([version]),
                        created: None,
                    };
                    map.insert(StoredKey::from(stored.as_slice()), chain);
                }
            }
        }
        drop(map);
        self.commit_times.write().unwrap_or_else(|p| p.into_inner()).extend(commit_times);
    }

    /// The value of the version of the key (`namespace`, `space`, `id`) written exactly at
    /// `lsn` (None if there is none, or it is a deletion).
    pub fn version_at_exactly(&self, namespace: &str, space: Space, id: &[u8], lsn: Lsn) -> Option<Arc<Value>> {
        let key = compact_key::encode_prefix(namespace, space, id);
        let map = self.read();
        let chain = map.get(KeyBytes::new(key.as_slice()))?;
        let i = chain.versions.binary_search_by_key(&lsn, |v| v.lsn).ok()?;
        chain.versions[i].value.clone()
    }

    /// Calls `visit` with every key of `space` and its retained versions, in key order, under
    /// one read lock (used once at open, to build the search indexes).
    pub fn visit_space(&self, space: Space, mut visit: impl FnMut(&Key, &Chain)) {
        for (key, chain) in self.read().iter().filter(|(k, _)| compact_key::space_of(k) == space) {
            visit(&compact_key::decode(key), chain);
        }
    }
}

fn commit_time(times: &[(Lsn, u64)], lsn: Lsn) -> u64 {
    times.binary_search_by_key(&lsn, |(l, _)| *l).map_or(0, |i| times[i].1)
}

/// The store's reads against a model that keeps every version in a `BTreeMap<Key, _>` and
/// answers by filtering: the encoded keys must give the same keys, in the same order, for
/// namespaces that are prefixes of one another and ids that are prefixes of one another.
#[cfg(test)]
mod model_tests {
    use super::*;
    use crate::model::KvValue;
    use proptest::prelude::*;

    type Model = BTreeMap<Key, Vec<(Lsn, Option<Value>)>>;

    fn key() -> impl Strategy<Value = Key> {
        let namespace = prop::sample::select(vec!["a", "ab", "a-b", "a.b", "b", "ns"]);
        let space = prop::sample::select(vec![Space::Meta, Space::Memory, Space::Entity, Space::Kv]);
        let id = prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', b'b', 0xFF]), 0..4);
        // Ids behind a common run of bytes whose encodings straddle the longest key the store
        // holds inline (compact_key::INLINE_KEY_BYTES): inline and heap keys side by side.
        let long_prefix = prop::sample::select(vec![0usize, 38, 39, 40, 41, 42]);
        (namespace, space, long_prefix, id).prop_map(|(n, s, long, id)| {
            let mut full = vec![b'x'; long];
            full.extend(id);
            Key::new(n, s, full)
        })
    }

    /// Commits of puts (`Some(n)`) and deletions (`None`) of a few keys each.
    fn commits() -> impl Strategy<Value = Vec<Vec<(Key, Option<u8>)>>> {
        prop::collection::vec(prop::collection::vec((key(), prop::option::of(any::<u8>())), 1..4), 1..30)
    }

    fn value(n: u8) -> Value {
        Value::Kv(KvValue::Bytes(vec![n]))
    }

    fn visible_in(model: &Model, key: &Key, at: Lsn) -> Option<Value> {
        model
            .get(key)?
            .iter()
            .rev()
            .find(|(lsn, _)| *lsn <= at)
            .and_then(|(_, v)| v.clone())
    }

    fn build(commits: &[Vec<(Key, Option<u8>)>]) -> (Store, Model) {
        let store = Store::default();
        let mut model = Model::new();
        for (i, ops) in commits.iter().enumerate() {
            let lsn = i as Lsn + 1;
            let record = CommitRecord {
                txn_id: lsn,
                commit_ts_ms: lsn * 10,
                ops: ops
                    .iter()
                    .map(|(key, put)| match put {
                        Some(n) => Op::Put {
                            key: key.clone(),
                            before: None,
                            after: value(*n),
                        },
                        None => Op::Delete {
                            key: key.clone(),
                            before: value(0),
                        },
                    })
                    .collect(),
            };
            store.apply(lsn, record);
            for (key, put) in ops {
                model.entry(key.clone()).or_default().push((lsn, put.map(value)));
            }
        }
        (store, model)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn reads_scans_and_exports_match_a_key_ordered_model(commits in commits(), probe in key(), at_pick in 0u64..32) {
            let (store, model) = build(&commits);
            let at = at_pick.min(commits.len() as Lsn);
            for key in model.keys().chain([&probe]) {
                prop_assert_eq!(store.get(key, at).as_deref().cloned(), visible_in(&model, key, at));
                let newest = model.get(key).and_then(|v| v.last()).map_or(0, |(lsn, _)| *lsn);
                prop_assert_eq!(store.latest_lsn(key), newest);
            }
            let live = |want: &dyn Fn(&Key) -> bool| -> Vec<(Key, Value)> {
                model.keys().filter(|k| want(k)).filter_map(|k| visible_in(&model, k, at).map(|v| (k.clone(), v))).collect()
            };
            let scanned = |items: Vec<(Key, Arc<Value>, CreationOrder)>| -> Vec<(Key, Value)> {
                items.into_iter().map(|(k, v, _)| (k, (*v).clone())).collect()
            };
            let (ns, space, prefix) = (probe.namespace.as_str(), probe.space, probe.id.as_slice());
            prop_assert_eq!(
                scanned(store.scan_prefix(ns, space, prefix, at)),
                live(&|k| k.namespace == ns && k.space == space && k.id.starts_with(prefix))
            );
            prop_assert_eq!(
                scanned(store.scan_range(ns, space, prefix, Some(b"b"), at)),
                live(&|k| k.namespace == ns && k.space == space && k.id.as_slice() >= prefix && k.id.as_slice() < b"b".as_slice())
            );
            prop_assert_eq!(
                scanned(store.scan_range(ns, space, prefix, None, at)),
                live(&|k| k.namespace == ns && k.space == space && k.id.as_slice() >= prefix)
            );
            let mut namespaces: Vec<String> = model
                .iter()
                .filter(|(_, versions)| versions[0].0 <= at)
                .map(|(k, _)| k.namespace.clone())
                .collect();
            namespaces.dedup();
            prop_assert_eq!(store.namespaces(at), namespaces);
            // The export in chunks of 2 keys lists every key with a version at or below `at`, in order.
            let mut exported = Vec::new();
            let mut after: Option<Key> = None;
            loop {
                let chunk = store.export_chunk(after.as_ref(), at, 2, PruneRule::Off);
                exported.extend(chunk.chains.into_iter().map(|(k, c)| (k, c.versions.len())));
                match chunk.resume_after {
                    Some(key) => after = Some(key),
                    None => break,
                }
            }
            let expected: Vec<(Key, usize)> = model
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().filter(|(lsn, _)| *lsn <= at).count()))
                .filter(|(_, n)| *n > 0)
                .collect();
            prop_assert_eq!(exported, expected);
        }
    }
}
