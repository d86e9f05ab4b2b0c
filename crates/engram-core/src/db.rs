//! The database: open (the newest checkpoint, then the log after it), begin transactions, take
//! snapshots, and the commit pipeline shared by all transactions.

use crate::checkpoint::{self, Background, CheckpointOptions, CheckpointState, OpenReport, Trigger, CHECKPOINT_DIR};
use crate::error::{CoreError, Result};
use crate::model::Key;
use crate::record::{self, Assembler, CommitRecord, Layout, LogRecord, KIND_COMMIT, KIND_OPS};
use crate::retention::RetentionPolicy;
use crate::search::FastHashMap;
use crate::search::{
    self,
    index::{IndexApplier, IndexChange, IndexOrigin, IndexQueueBound, Indexes},
};
use crate::store::compact_key::{self, StoredKey};
use crate::store::Store;
use crate::txn::{CommitInfo, Snapshot, Transaction};
use engram_wal::storage::{StdStorage, Storage};
use engram_wal::{Lsn, SyncPolicy, Wal, WalOptions, WalStats};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Directory of the log inside the database directory.
pub const WAL_DIR: &str = "wal";

/// Reports replay progress at open: (records replayed, last LSN to replay).
pub type ReplayProgress = Arc<dyn Fn(u64, Lsn) + Send + Sync>;

#[derive(Clone)]
pub struct DatabaseOptions {
    pub wal: WalOptions,
    /// Durability of commits unless a transaction overrides it. The log's own policy is unused.
    pub durability: SyncPolicy,
    pub on_replay_progress: Option<ReplayProgress>,
    /// Background checkpoint triggers and log retention.
    pub checkpoint: CheckpointOptions,
    /// Which past versions checkpoints keep (history retention; every version by default).
    pub retention: RetentionPolicy,
    /// Nice value (Linux) of the background threads, the search indexer and the checkpointer,
    /// so that commits and reads win the CPU from them (src/threads.rs); 0 keeps the process's
    /// priority.
    pub background_thread_nice: i32,
    /// How much the search indexer may trail before committing writers of memories wait for it:
    /// bursts absorbed against search latency during them ([`IndexQueueBound`]).
    pub index_queue_bound: IndexQueueBound,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        DatabaseOptions {
            wal: WalOptions::default(),
            durability: SyncPolicy::Always,
            on_replay_progress: None,
            checkpoint: CheckpointOptions::default(),
            retention: RetentionPolicy::default(),
            background_thread_nice: 10,
            index_queue_bound: IndexQueueBound::default(),
        }
    }
}

impl std::fmt::Debug for DatabaseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseOptions")
            .field("wal", &self.wal)
            .field("durability", &self.durability)
            .field("checkpoint", &self.checkpoint)
            .field("retention", &self.retention)
            .field("background_thread_nice", &self.background_thread_nice)
            .field("index_queue_bound", &self.index_queue_bound)
            .finish_non_exhaustive()
    }
}

/// State guarded by the commit lock: what is needed to order commits and detect conflicts.
pub(crate) struct CommitState {
    /// Keys written by commits that are queued but not yet applied, with their LSN. Held as
    /// the store encodes them (inline, no allocation for a usual key) and hashed with foldhash:
    /// this map is read and written under the commit lock by every commit.
    pending: FastHashMap<StoredKey, Lsn>,
    prune_at_len: usize,
    next_txn_id: u64,
    last_commit_ts_ms: u64,
}

impl CommitState {
    /// LSN of the newest queued (not yet applied) commit that wrote `key`, or 0.
    pub fn pending_lsn(&self, key: &Key) -> Lsn {
        self.pending.get(compact_key::encode(key).as_slice()).copied().unwrap_or(0)
    }

    pub fn next_txn_id(&mut self) -> u64 {
        self.next_txn_id += 1;
        self.next_txn_id
    }

    /// Commit times never go backwards, even if the clock does.
    pub fn next_commit_ts(&mut self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.last_commit_ts_ms = self.last_commit_ts_ms.max(now);
        self.last_commit_ts_ms
    }
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub options: DatabaseOptions,
    /// Where the log and the checkpoints live (a `FaultStorage` in crash tests).
    pub storage: Arc<dyn Storage>,
    pub wal: Wal,
    pub store: Store,
    /// Serialises checkpoint runs; commits and reads never take it.
    pub checkpoints: Mutex<CheckpointState>,
    pub last_checkpoint_lsn: AtomicU64,
    /// Size of the newest checkpoint's file (the byte trigger grows with it).
    pub last_checkpoint_file_bytes: AtomicU64,
    /// Log payload bytes committed since the last checkpoint (the byte trigger).
    pub log_bytes_since_checkpoint: AtomicU64,
    pub trigger: Trigger,
    pub open_report: OpenReport,
    commit: Mutex<CommitState>,
    /// Commits queued in the log and not yet applied, in LSN order, with their log bytes.
    apply_queue: Mutex<VecDeque<(Lsn, Arc<CommitRecord>, u64)>>,
    /// Serialises appliers so that commits reach the store in LSN order.
    applier: Mutex<()>,
    /// Every commit at or below this LSN is applied; snapshots are taken here.
    visible_lsn: AtomicU64,
    poisoned: Mutex<Option<String>>,
    /// Search indexes, kept up to date after commit by `_index_applier` (search/index.rs).
    pub indexes: Arc<Indexes>,
    _index_applier: IndexApplier,
}

/// An embedded Engram database in one directory. Cheap to clone; share it between threads.
#[derive(Clone)]
pub struct Database {
    pub(crate) shared: Arc<Shared>,
    /// The background checkpointer, stopped when the last handle owning it drops (`None` for
    /// the checkpointer's own handle, so that it never waits for itself).
    pub(crate) _background: Option<Arc<Background>>,
}

impl Database {
    /// Opens (or creates) the database in `dir`: recovers the log, loads the newest checkpoint
    /// that verifies, and replays every committed transaction in the log after it.
    pub fn open(dir: impl AsRef<Path>, options: DatabaseOptions) -> Result<Database> {
        Self::open_with_storage(Arc::new(StdStorage), dir, options)
    }

    /// Opens the database on a given storage (tests use `FaultStorage`).
    pub fn open_with_storage(
        storage: Arc<dyn engram_wal::storage::Storage>,
        dir: impl AsRef<Path>,
        options: DatabaseOptions,
    ) -> Result<Database> {
        let dir = dir.as_ref().to_path_buf();
        let started = Instant::now();
        let wal = Wal::open_with_storage(storage.clone(), dir.join(WAL_DIR), options.wal.clone())?;
        let log_recovery_us = micros_since(started);
        Self::from_wal(storage, dir, wal, log_recovery_us, options)
    }

    fn from_wal(storage: Arc<dyn Storage>, dir: PathBuf, wal: Wal, log_recovery_us: u64, options: DatabaseOptions) -> Result<Database> {
        let last = wal.durable_lsn();
        let phase_started = Instant::now();
        let checkpoint_dir = dir.join(CHECKPOINT_DIR);
        let (loaded, rejected_checkpoints) = checkpoint::load_newest(&*storage, &checkpoint_dir, wal.first_lsn(), last)?;
        let (store, checkpoint_file, checkpoint_mapping, mut max_txn_id, mut max_ts) = match loaded {
            Some(c) => (
                Store::from_checkpoint(c.chains, c.commit_times),
                Some(c.file),
                c.mapping,
                c.header.txn_id_floor,
                c.header.commit_ts_floor_ms,
            ),
            None => (Store::default(), None, None, 0, 0),
        };
        store.restore_history_horizon(checkpoint_file.as_ref().map_or(0, |c| c.history_horizon_lsn));
        let checkpoint_lsn = checkpoint_file.as_ref().map_or(0, |c| c.lsn);
        let checkpoint_file_bytes = checkpoint_file.as_ref().map_or(0, |c| c.file_bytes);
        let checkpoint_load_us = micros_since(phase_started);
        // The search indexes: from the checkpoint's index file when it verifies (then caught up
        // with the replayed log below), otherwise rebuilt from the store after replay. The file
        // is loaded on a thread of its own while this one replays the log: the load reads only
        // versions at or below the checkpoint's LSN, which replay never changes.
        let index_file_dir = dir.join(search::persist::INDEX_DIR);
        let (index_load, replay) = std::thread::scope(|scope| {
            let index_thread = checkpoint_file.as_ref().map(|file| {
                let (storage, store, index_file_dir) = (&*storage, &store, &index_file_dir);
                let load = move || {
                    let started = Instant::now();
                    let loaded = search::persist::load(storage, index_file_dir, file.lsn, store);
                    (loaded, micros_since(started))
                };
                std::thread::Builder::new()
                    .name("engram-open-idx".into())
                    .spawn_scoped(scope, load)
                    .map_err(|e| format!("cannot start the index loading thread: {e}"))
            });
            let started = Instant::now();
            // Without a checkpoint there is no index file: the indexes are queued from the store
            // after the replay (which holds every retained version), so its changes are not kept.
            let keep_index_changes = checkpoint_file.is_some();
            let replay = replay_log(&wal, &store, checkpoint_lsn, last, keep_index_changes, &options);
            let replay_us = micros_since(started);
            let index_load = index_thread
                .map(|spawned| spawned.and_then(|thread| thread.join().map_err(|_| "the index loading thread panicked".to_string())));
            (index_load, replay.map(|r| (r, replay_us)))
        });
        let (replay, replay_us) = replay?;
        max_txn_id = max_txn_id.max(replay.max_txn_id);
        max_ts = max_ts.max(replay.max_commit_ts_ms);
        let mut index_load_us = 0;
        let mut rebuild_reason = None;
        let loaded_indexes = match (&checkpoint_file, index_load) {
            (None, _) | (Some(_), None) => None,
            (Some(file), Some(outcome)) => {
                let outcome = outcome.and_then(|(loaded, elapsed_us)| {
                    index_load_us = elapsed_us;
                    loaded
                });
                match outcome {
                    Ok(Some(namespaces)) => Some(Indexes::from_loaded(namespaces, file.lsn)),
                    Ok(None) => {
                        rebuild_reason = Some(format!("the checkpoint at LSN {} has no index file", file.lsn));
                        None
                    }
                    Err(reason) => {
                        let reason = format!("the index file of the checkpoint at LSN {} is not usable: {reason}", file.lsn);
                        tracing::warn!(%reason, "rebuilding the search indexes from the store");
                        rebuild_reason = Some(reason);
                        None
                    }
                }
            }
        };
        let phase_started = Instant::now();
        let indexes = Arc::new(match loaded_indexes {
            Some(indexes) => {
                for (lsn, changes) in replay.index_changes {
                    indexes.enqueue_at_open(lsn, changes);
                }
                // The index is complete at `last` once the queue is drained (the log may end in
                // commits without index changes, or in records that commit nothing).
                indexes.enqueue_at_open(last, Vec::new());
                indexes
            }
            None => Indexes::queued_from_store(&store, last, IndexOrigin::Rebuilt { reason: rebuild_reason }),
        });
        index_load_us += micros_since(phase_started);
        // Loading (or rebuilding) the indexes read every mapped embedding once; none is needed
        // resident until a search or a read asks for it.
        if let Some(mapping) = checkpoint_mapping {
            mapping.release_resident_pages();
        }
        indexes.set_bound(options.index_queue_bound);
        let index_applier = IndexApplier::spawn(indexes.clone(), options.background_thread_nice)?;
        let open_report = OpenReport {
            checkpoint_lsn: checkpoint_file.as_ref().map(|c| c.lsn),
            rejected_checkpoints,
            replayed_records: replay.records,
            log_recovery_us,
            checkpoint_load_us,
            index_load_us,
            replay_us,
        };
        let shared = Shared {
            dir,
            options,
            storage,
            wal,
            store,
            checkpoints: Mutex::new(CheckpointState::new(checkpoint_dir, checkpoint_file)),
            last_checkpoint_lsn: AtomicU64::new(checkpoint_lsn),
            last_checkpoint_file_bytes: AtomicU64::new(checkpoint_file_bytes),
            // The replayed tail counts toward the byte trigger, so a database that keeps
            // crashing before its first checkpoint still gets one.
            log_bytes_since_checkpoint: AtomicU64::new(replay.payload_bytes),
            trigger: Trigger::default(),
            open_report,
            commit: Mutex::new(CommitState {
                pending: FastHashMap::default(),
                prune_at_len: 1024,
                next_txn_id: max_txn_id,
                last_commit_ts_ms: max_ts,
            }),
            apply_queue: Mutex::new(VecDeque::new()),
            applier: Mutex::new(()),
            visible_lsn: AtomicU64::new(last),
            poisoned: Mutex::new(None),
            indexes,
            _index_applier: index_applier,
        };
        let shared = Arc::new(shared);
        // The thread that makes a group durable applies it before waking the group's committers
        // (the log holds only a weak reference: no cycle through the log's own hook).
        let weak = Arc::downgrade(&shared);
        let hook: engram_wal::DurableHook = Box::new(move |durable_lsn| {
            if let Some(shared) = weak.upgrade() {
                shared.apply_durable(durable_lsn);
            }
        });
        if shared.wal.set_durable_hook(hook).is_err() {
            unreachable!("the log was opened by this call, which sets its hook once");
        }
        let background = checkpoint::spawn_background(&shared)?;
        Ok(Database {
            shared,
            _background: background,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Starts a read-write transaction on the current snapshot.
    pub fn begin(&self) -> Transaction {
        Transaction::new(self.shared.clone(), self.visible_lsn(), self.shared.options.durability)
    }

    /// A read-only view of everything committed so far.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            db: self.shared.clone(),
            lsn: self.visible_lsn(),
        }
    }

    /// A read-only view as of `lsn` (every commit at or below it). Any LSN from the history
    /// horizon on is readable (from 0 unless the retention policy pruned history): checkpoints
    /// carry the retained versions, so history survives the truncation of the log below a
    /// checkpoint. Below the horizon: `HistoryNotRetained`. An LSN beyond the visible one reads
    /// at the visible one.
    pub fn as_of(&self, lsn: Lsn) -> Result<Snapshot> {
        let lsn = lsn.min(self.visible_lsn());
        self.shared.store.check_retained(lsn)?;
        Ok(Snapshot {
            db: self.shared.clone(),
            lsn,
        })
    }

    /// A read-only view as of a wall-clock time (milliseconds since the Unix epoch): every
    /// commit whose commit time is at or before it.
    pub fn as_of_time(&self, ts_ms: u64) -> Result<Snapshot> {
        self.as_of(self.shared.store.lsn_at_time(ts_ms))
    }

    /// Runs `work` in a transaction and commits it, retrying on write-write conflicts (up to
    /// `max_attempts`, with a short growing pause). `work` must be safe to run again.
    pub fn run<T>(&self, max_attempts: u32, mut work: impl FnMut(&mut Transaction) -> Result<T>) -> Result<(T, CommitInfo)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut txn = self.begin();
            let result = work(&mut txn).and_then(|value| txn.commit().map(|info| (value, info)));
            match result {
                Err(e) if e.is_conflict() && attempt < max_attempts => {
                    std::thread::sleep(Duration::from_micros(50 * u64::from(attempt.min(20))));
                }
                other => return other,
            }
        }
    }

    /// Every commit at or below this LSN is visible to new snapshots.
    pub fn visible_lsn(&self) -> Lsn {
        self.shared.visible_lsn.load(Ordering::Acquire)
    }

    pub fn wal_stats(&self) -> WalStats {
        self.shared.wal.stats()
    }

    pub fn recovery_report(&self) -> &engram_wal::RecoveryReport {
        self.shared.wal.recovery_report()
    }
}

impl Shared {
    pub fn lock_commit(&self) -> MutexGuard<'_, CommitState> {
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (transaction id, commit time) counters: at least those of every commit submitted so far,
    /// so at least those of every commit a checkpoint taken now contains.
    pub fn counter_floors(&self) -> (u64, u64) {
        let commit = self.lock_commit();
        (commit.next_txn_id, commit.last_commit_ts_ms)
    }

    pub fn check_running(&self) -> Result<()> {
        match &*self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(cause) => Err(CoreError::Poisoned { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    fn poison(&self, cause: String) {
        let mut p = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
        p.get_or_insert(cause);
    }

    /// Logs the transaction as `layout` says (one COMMIT record, or its OPS records and then its
    /// COMMIT), taking the LSNs, and queues it for the applier; returns the LSN of the COMMIT.
    /// Called with the commit lock held, so LSN order is commit order and the records of one
    /// transaction are contiguous. Each record is submitted on its own (a batch must fit one
    /// segment; a large transaction may span several). If a submit fails after some OPS records
    /// were queued, the transaction fails and those records, never followed by its COMMIT, are
    /// dropped by recovery and the change feed.
    pub fn submit(&self, commit: &mut CommitState, record: Arc<CommitRecord>, layout: Layout) -> Result<Lsn> {
        let (lsn, logged_bytes) = match layout {
            Layout::Single { mut buf } => {
                let bytes = record::encode_single_commit(record.txn_id, record.commit_ts_ms, &mut buf);
                let (submitted, bytes_len) = (self.wal.submit(&[(KIND_COMMIT, bytes)]), bytes.len());
                record::recycle_record_buffer(buf);
                (*submitted?.end(), bytes_len)
            }
            Layout::Streamed { chunks } => {
                let (last, streamed) = chunks.split_last().expect("a layout has at least one range");
                let mut first_lsn = 0;
                let mut logged_bytes = 0;
                for range in streamed {
                    // Every OPS record names the transaction's first record (0 in that one).
                    let bytes = record::encode_ops(record.txn_id, first_lsn, &record.ops[range.clone()]);
                    let lsn = *self.wal.submit(&[(KIND_OPS, &bytes)])?.end();
                    if first_lsn == 0 {
                        first_lsn = lsn;
                    }
                    logged_bytes += bytes.len();
                }
                let bytes = record::encode_commit(record.txn_id, record.commit_ts_ms, first_lsn, &record.ops[last.clone()]);
                (*self.wal.submit(&[(KIND_COMMIT, &bytes)])?.end(), logged_bytes + bytes.len())
            }
        };
        let visible = self.visible_lsn.load(Ordering::Acquire);
        if commit.pending.len() >= commit.prune_at_len {
            commit.pending.retain(|_, l| *l > visible);
            commit.prune_at_len = (commit.pending.len() * 2).max(1024);
        }
        for op in &record.ops {
            if let Some(key) = op.key() {
                commit.pending.insert(compact_key::stored(key), lsn);
            }
        }
        self.apply_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((lsn, record, logged_bytes as u64));
        Ok(lsn)
    }

    /// The record size large transactions are streamed at, and the log's limit on one record.
    pub fn record_limits(&self) -> (usize, usize) {
        let max = self.wal.options().max_record_bytes;
        (record::stream_record_bytes(max), max)
    }

    /// Waits for the commit at `lsn` to meet `policy`, then applies every queued commit up to
    /// it, in LSN order. A failure here stops the database: the log is poisoned.
    pub fn finish_commit(&self, lsn: Lsn, policy: SyncPolicy) -> Result<()> {
        let logged = self.wal.complete(lsn, policy);
        self.apply_logged(lsn, logged)
    }

    /// [`Shared::finish_commit`] without blocking the calling thread while the log syncs.
    /// Dropped before it finishes (a server's request abandoned by its client), it still sees
    /// the commit made durable and visible ([`FinishOnDrop`]).
    pub async fn finish_commit_async(&self, lsn: Lsn, policy: SyncPolicy) -> Result<()> {
        let mut unfinished = FinishOnDrop {
            shared: self,
            lsn,
            armed: true,
        };
        let logged = self.wal.complete_async(lsn, policy).await;
        unfinished.armed = false;
        self.apply_logged(lsn, logged)
    }

    /// What a dropped [`Shared::finish_commit_async`] leaves to do for its logged commit: make it
    /// durable without waiting (the log's syncer leads a round if no committer does, even for a
    /// `Never` commit), so that the durable hook applies it. If it is durable already, the hook
    /// may have run before the commit was queued for the applier: apply it here.
    fn finish_abandoned(&self, lsn: Lsn) {
        let durable = self.wal.durable_lsn();
        if durable >= lsn {
            self.apply_durable(durable);
        } else {
            self.wal.request_durable(lsn);
        }
    }

    /// Once the log has met the commit's policy (`logged`), applies every queued commit up to
    /// `lsn`; a log failure poisons the database instead.
    fn apply_logged(&self, lsn: Lsn, logged: engram_wal::Result<()>) -> Result<()> {
        if let Err(e) = logged {
            self.poison(e.to_string());
            return Err(e.into());
        }
        // The round's leader usually applied this commit already, in the log's durable hook
        // (`apply_durable`): then there is no need to queue on the applier lock.
        if self.visible_lsn.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let applier = self.applier.lock().unwrap_or_else(|p| p.into_inner());
        // Otherwise (a `Never` commit, or a round whose hook ran before this commit was queued)
        // everything durable is applied along with it, so that others find it done.
        self.apply_queued(applier, lsn.max(self.wal.durable_lsn()));
        Ok(())
    }

    /// The log's durable hook: applies the queued commits up to `durable_lsn`, on the thread
    /// that made them durable and before it wakes their committers, so that they find their
    /// commits visible (`apply_logged` returns at once) instead of queueing on the applier lock
    /// to apply the group one after another.
    fn apply_durable(&self, durable_lsn: Lsn) {
        if self.visible_lsn.load(Ordering::Acquire) >= durable_lsn {
            return;
        }
        let applier = self.applier.lock().unwrap_or_else(|p| p.into_inner());
        self.apply_queued(applier, durable_lsn);
    }

    /// Makes visible the queued commits that are already durable, if no one else is applying.
    /// Any thread may do this: a commit's own task applies it only when next polled, and an
    /// executor busy with tasks retrying against that commit (a conflict loop that never
    /// yields) might not poll it again; helping keeps visibility, and so every retry, moving.
    pub fn help_apply(&self) {
        let durable = self.wal.durable_lsn();
        if self.visible_lsn.load(Ordering::Acquire) >= durable {
            return;
        }
        if let Ok(applier) = self.applier.try_lock() {
            self.apply_queued(applier, durable);
        }
    }

    /// Applies every queued commit up to `lsn` (each of them logged as its policy requires), in
    /// LSN order, and publishes them.
    fn apply_queued(&self, _applier: MutexGuard<'_, ()>, lsn: Lsn) {
        if self.visible_lsn.load(Ordering::Acquire) >= lsn {
            return;
        }
        let ready: Vec<(Lsn, Arc<CommitRecord>, u64)> = {
            let mut queue = self.apply_queue.lock().unwrap_or_else(|p| p.into_inner());
            let n = queue.iter().take_while(|(l, _, _)| *l <= lsn).count();
            queue.drain(..n).collect()
        };
        let Some(&(applied_lsn, _, _)) = ready.last() else { return };
        let logged_bytes = ready.iter().map(|(_, _, bytes)| bytes).sum();
        let mut index_changes = Vec::new();
        // The committers dropped their references before waiting, so these are usually the last
        // ones and the records move into the store without a copy.
        let commits = ready.into_iter().map(|(lsn, record, _)| (lsn, Arc::unwrap_or_clone(record)));
        self.store.apply_batch(commits, &mut index_changes);
        // Queued under the applier lock, so batches reach the index applier in LSN order; the
        // indexing itself happens on its thread, off the commit path.
        self.indexes.enqueue(applied_lsn, index_changes);
        self.visible_lsn.store(applied_lsn, Ordering::Release);
        // Counted once visible: a checkpoint covers only visible commits, so bytes counted
        // earlier could be cleared by a checkpoint that does not contain them.
        self.note_logged_bytes(logged_bytes);
    }
}

/// Finishes a logged commit whose async committer was dropped before it finished: without it the
/// commit would be durable only with some later group and visible only when a later commit
/// applies the queue (docs/architecture.md, "Async commits").
struct FinishOnDrop<'a> {
    shared: &'a Shared,
    lsn: Lsn,
    armed: bool,
}

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.finish_abandoned(self.lsn);
        }
    }
}

/// What replaying the log after the checkpoint found.
struct Replayed {
    records: u64,
    payload_bytes: u64,
    max_txn_id: u64,
    max_commit_ts_ms: u64,
    /// Each replayed commit's index changes, for the indexer's queue (unused when the indexes
    /// are rebuilt from the store instead).
    index_changes: Vec<(Lsn, Vec<IndexChange>)>,
}

/// Redoes every transaction committed in the log after `checkpoint_lsn` (up to `last`) into
/// `store`, keeping their index changes if `keep_index_changes`.
fn replay_log(
    wal: &Wal,
    store: &Store,
    checkpoint_lsn: Lsn,
    last: Lsn,
    keep_index_changes: bool,
    options: &DatabaseOptions,
) -> Result<Replayed> {
    let mut replayed = Replayed {
        records: 0,
        payload_bytes: 0,
        max_txn_id: 0,
        max_commit_ts_ms: 0,
        index_changes: Vec::new(),
    };
    // A large transaction's OPS records are held until its COMMIT, which redoes the whole
    // transaction at the COMMIT's LSN. OPS records without their COMMIT (at the end of the log,
    // or followed by another transaction's records after a failed submit) belong to a
    // transaction that never committed: they are dropped. A checkpoint is taken at a commit
    // LSN, so no transaction after it began before it; if one did anyway, its first records are
    // read back from the log.
    let mut assembler = Assembler::default();
    for record in wal.reader(checkpoint_lsn + 1)? {
        let record = record?;
        let lsn = record.lsn;
        let decoded = LogRecord::decode(lsn, record.kind, &record.payload)?;
        replayed.max_txn_id = replayed.max_txn_id.max(decoded.txn_id());
        let read_back = |txn_id, from, to| record::read_streamed(wal.reader(from)?, txn_id, to, |_| true);
        if let Some(commit) = assembler.take(lsn, decoded, |_| true, read_back)? {
            replayed.max_commit_ts_ms = replayed.max_commit_ts_ms.max(commit.commit_ts_ms);
            // The replayed commits' index changes go to the indexer's queue, as live commits'
            // do: the open does not wait for their graph inserts (searches meanwhile scan the
            // queued tail exactly, search/tail.rs).
            let changes = store.apply(lsn, commit);
            if keep_index_changes && !changes.is_empty() {
                replayed.index_changes.push((lsn, changes));
            }
        }
        replayed.records += 1;
        replayed.payload_bytes += record.payload.len() as u64;
        if let Some(progress) = &options.on_replay_progress {
            if replayed.records.is_multiple_of(10_000) || record.lsn == last {
                progress(replayed.records, last);
            }
        }
    }
    Ok(replayed)
}

fn micros_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}
