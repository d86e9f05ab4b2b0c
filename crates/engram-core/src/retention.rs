//! History retention: which old versions checkpoints prune, and the history horizon below which
//! as-of reads and `history()` are refused.
//!
//! Pruning happens only when a checkpoint is written: the checkpoint at LSN C omits the versions
//! the policy drops among those at or below C and records the new horizon, and once it is durable
//! the same versions are removed from the store in memory (store.rs). Two rules hold for every
//! policy:
//!
//! - **The current state is never affected.** The newest version of every key stays, unless it
//!   is a deletion whose older versions all go (then the whole chain goes: a read finds nothing
//!   either way). Graph insertion order survives too (a chain remembers where its incarnation was
//!   created when that version is pruned).
//! - **No read returns pruned data.** The *history horizon* is the oldest LSN at which every read
//!   still gives its original answer. Snapshots are not registered, so pruning does not wait for
//!   them: instead `as_of` below the horizon, and every typed read of a snapshot or transaction
//!   whose LSN the horizon has passed meanwhile, fails with `HistoryNotRetained { lsn, oldest }`.
//!   The check runs after the read, so a read racing with a prune cannot return pruned data. A
//!   transaction whose snapshot the horizon passed cannot read, and conflicts on commit if it
//!   writes a key whose versions were all pruned (see `Store::latest`).

use crate::db::Database;
use crate::error::Result;
use crate::store::{PruneRule, Store};
use crate::txn::{ReadView, Snapshot, Transaction};
use engram_wal::Lsn;
use std::time::Duration;

/// Which past versions the database keeps (`DatabaseOptions::retention`). Applied at every
/// checkpoint, to the versions at or below the checkpoint's LSN; see the module docs of
/// `retention.rs` and docs/architecture.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetentionPolicy {
    /// Every version is kept: `as_of` and `history()` reach back to LSN 0 (the default).
    #[default]
    KeepAll,
    /// Each key keeps its newest `per_key` versions (0 counts as 1: the current one always
    /// stays), counted among the versions at or below the checkpoint. `history()` then lists
    /// those. The horizon becomes the newest LSN at which some key lost a version that was still
    /// current, so with frequently updated keys `as_of` reaches back only to about the last
    /// checkpoint, and a snapshot or transaction open across a checkpoint may fail with
    /// `HistoryNotRetained` (a transaction's commit with a retryable `Conflict`).
    KeepVersions { per_key: usize },
    /// Every version that was current at some moment of the last `max_age` (by commit time,
    /// measured when the checkpoint runs) is kept; older versions go. The horizon becomes at most
    /// the last commit at or before `now - max_age`, so `as_of_time(t)` works for every `t` in
    /// the window.
    KeepFor { max_age: Duration },
}

impl RetentionPolicy {
    /// The rule a checkpoint at `at` applies, with `now_ms` the wall-clock time of the run.
    pub(crate) fn rule(&self, store: &Store, at: Lsn, now_ms: u64) -> PruneRule {
        match *self {
            RetentionPolicy::KeepAll => PruneRule::Off,
            RetentionPolicy::KeepVersions { per_key } => PruneRule::OlderThanNewest(per_key.max(1)),
            RetentionPolicy::KeepFor { max_age } => {
                let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
                // Commit times never decrease with the LSN, so this is the state at the cutoff.
                let cutoff = store.lsn_at_time(now_ms.saturating_sub(max_age_ms));
                PruneRule::SupersededAt(cutoff.min(at))
            }
        }
    }
}

/// A view that knows whether the history it reads is still retained: [`Snapshot`] and
/// [`Transaction`]. The typed reads (`MemoryReads`, `GraphReads`, `KvReads`) call
/// `check_retained` after reading and return its error instead of what they read.
pub trait RetainedView: ReadView {
    /// `HistoryNotRetained` if this view reads below the history horizon: versions it may need
    /// were pruned.
    fn check_retained(&self) -> Result<()>;
}

impl RetainedView for Snapshot {
    fn check_retained(&self) -> Result<()> {
        self.db.store.check_retained(self.lsn)
    }
}

impl RetainedView for Transaction {
    fn check_retained(&self) -> Result<()> {
        self.db.store.check_retained(self.read_lsn())
    }
}

impl Database {
    /// The oldest LSN that `as_of` and `history()` can read at: 0 until a checkpoint pruned
    /// history under the retention policy. Persisted in checkpoints, so it never goes back
    /// (except after a fallback to an older checkpoint, which holds more history).
    pub fn history_horizon_lsn(&self) -> Lsn {
        self.shared.store.history_horizon()
    }
}
