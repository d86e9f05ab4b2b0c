//! The log: open (with recovery), appends with group commit, rotation, sync, truncation.
//!
//! Appenders encode their records into a shared queue under the state lock, in LSN order. One
//! of them becomes the leader: it takes the queue, writes it with the lock released, issues one
//! fdatasync for everyone, publishes the new durable LSN and wakes the others. No I/O happens
//! under the state lock on the append path (suffix truncation, a rare administrative call,
//! holds it on purpose).

use crate::error::{Error, IoContext, Lsn, Result};
use crate::format::{encode_record, framed_bytes, SegmentHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::options::{SyncPolicy, WalOptions};
use crate::prealloc::{Prepared, Preparer};
use crate::reader::WalReader;
use crate::recovery::{recover, RecoveryReport};
use crate::segment::{Segment, SegmentCursor, Step, OPEN_ENDED};
use crate::stats::{Counters, WalStats};
use crate::storage::{LockGuard, StdStorage, Storage};
use crate::waiters::{RoundGates, Sleep, Waiter, Wake, Wakeups, SIGNAL_REACHED, SIGNAL_RECHECK, SIGNAL_WAITING, THREAD_SIGNAL};
use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const LOCK_FILE_NAME: &str = "LOCK";

/// Bytes queued for one segment at one offset, written by a leader in one call.
struct Chunk {
    segment: Arc<Segment>,
    offset: u64,
    bytes: Vec<u8>,
    /// LSN of the last record in the chunk (for a segment start: the previous segment's last).
    last_lsn: Lsn,
    records: u64,
    /// The header of a new segment; `previous` must be synced before it is written, and the
    /// header is synced before any record goes into the segment.
    start_after: Option<Arc<Segment>>,
}

struct State {
    next_lsn: Lsn,
    last_crc: u32,
    active: Arc<Segment>,
    active_offset: u64,
    pending: VecDeque<Chunk>,
    leader_active: bool,
    written_lsn: Lsn,
    durable_lsn: Lsn,
    last_written_segment: Arc<Segment>,
    /// The highest LSN some caller is waiting to see durable.
    sync_wanted_upto: Lsn,
    /// When appends with `SyncPolicy::Interval` need the background syncer to run.
    sync_deadline: Option<Instant>,
    poisoned: Option<String>,
    closed: bool,
    /// Appenders waiting for a leader's round (waiters.rs): threads on the gate of the round
    /// expected to satisfy them, the next leader parked on its own, tasks with their wakers.
    waiters: Vec<Waiter>,
    /// Whether a thread waits parked as the next leader ([`Sleep::Parked`]): the first thread
    /// to wait for the next round while none does.
    next_leader_parked: bool,
    /// Rounds started so far: the one in flight (while `leader_active`) is number `rounds`.
    rounds: u64,
    /// The last LSN the round in flight writes, and whether it syncs.
    round_last_lsn: Lsn,
    round_syncs: bool,
    /// Threads waiting on `progress` for the log to go quiet (suffix truncation).
    quiesce_waiters: usize,
    /// Identifies the next [`Completion`] to register as a waiter.
    next_task_id: u64,
    /// Buffers of chunks already written, kept for the next chunks: a group of a few hundred
    /// KB built in a fresh vector is reallocated and copied about ten times as it grows, under
    /// the state lock, and allocator churn of that size costs page faults as well.
    spare_chunk_buffers: Vec<Vec<u8>>,
}

/// How many written chunks' buffers are kept for reuse: one chunk fills while another is
/// written, so a few suffice.
const SPARE_CHUNK_BUFFERS: usize = 4;

/// See [`Wal::set_durable_hook`].
pub type DurableHook = Box<dyn Fn(Lsn) + Send + Sync>;

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub options: WalOptions,
    state: Mutex<State>,
    /// Signalled when a leader finishes a round (for `truncate_suffix` waiting for quiet).
    progress: Condvar,
    /// Where waiting appender threads sleep (waiters.rs).
    gates: RoundGates,
    /// Signalled for the background syncer.
    syncer_wakeup: Condvar,
    pub segments: RwLock<Vec<Arc<Segment>>>,
    durable_hook: std::sync::OnceLock<DurableHook>,
    durable_lsn: AtomicU64,
    durable_lock: Mutex<()>,
    durable_changed: Condvar,
    /// Followers blocked in `wait_durable`: publishing skips the notification (a syscall)
    /// when there are none.
    durable_waiters: AtomicUsize,
    preparer: Arc<Preparer>,
    pub counters: Counters,
    truncation: Mutex<()>,
}

/// A write-ahead log in one directory. Share it between threads with `Arc` or scoped threads.
pub struct Wal {
    inner: Arc<Inner>,
    recovery: RecoveryReport,
    threads: Vec<JoinHandle<()>>,
    /// Held by the `Wal` (not by readers), so dropping the `Wal` lets the directory be reopened.
    _dir_lock: Box<dyn LockGuard>,
}

fn random_salt(segment_id: u64) -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(segment_id);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` on the real file system, running recovery.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Wal> {
        Self::open_with_storage(Arc::new(StdStorage), dir, options)
    }

    pub fn open_with_storage(storage: Arc<dyn Storage>, dir: impl AsRef<Path>, options: WalOptions) -> Result<Wal> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        match storage.kind_of(&dir).context(|| format!("inspecting {}", dir.display()))? {
            Some(false) => return Err(Error::NotADirectory { path: dir }),
            Some(true) => {}
            None => storage.create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?,
        }
        let dir_lock = storage
            .try_lock(&dir.join(LOCK_FILE_NAME))
            .context(|| format!("locking {}", dir.display()))?
            .ok_or_else(|| Error::Locked { path: dir.clone() })?;

        let recovered = recover(&*storage, &dir, &options)?;
        let counters = Counters::default();
        let preparer = Preparer::new(
            storage.clone(),
            dir.clone(),
            options.segment_bytes,
            options.background_preallocation,
            recovered.prepared,
            recovered.next_segment_id,
        );
        let mut segments = recovered.segments;
        let mut active_offset = recovered.active_end_offset;
        if segments.is_empty() {
            preparer.prepare_inline()?;
            let prepared = preparer.try_take().expect("a segment was just prepared");
            let header = SegmentHeader {
                salt: random_salt(prepared.id),
                segment_id: prepared.id,
                prev_last_lsn: 0,
                prev_last_crc: 0,
                segment_bytes: options.segment_bytes,
            };
            segments.push(start_segment(prepared, header, &counters)?);
            active_offset = SEGMENT_HEADER_BYTES as u64;
        }
        let active = segments.last().expect("at least one segment").clone();
        let last_lsn = recovered.last_lsn.max(active.header.prev_last_lsn);
        let state = State {
            next_lsn: last_lsn + 1,
            last_crc: if recovered.last_lsn == last_lsn {
                recovered.last_crc
            } else {
                active.header.prev_last_crc
            },
            active: active.clone(),
            active_offset,
            pending: VecDeque::new(),
            leader_active: false,
            written_lsn: last_lsn,
            durable_lsn: last_lsn,
            last_written_segment: active,
            sync_wanted_upto: 0,
            sync_deadline: None,
            poisoned: None,
            closed: false,
            waiters: Vec::new(),
            next_leader_parked: false,
            rounds: 0,
            round_last_lsn: 0,
            round_syncs: false,
            quiesce_waiters: 0,
            next_task_id: 0,
            spare_chunk_buffers: Vec::new(),
        };
        let inner = Arc::new(Inner {
            dir,
            storage,
            options,
            state: Mutex::new(state),
            progress: Condvar::new(),
            gates: RoundGates::default(),
            syncer_wakeup: Condvar::new(),
            segments: RwLock::new(segments),
            durable_lsn: AtomicU64::new(last_lsn),
            durable_lock: Mutex::new(()),
            durable_changed: Condvar::new(),
            durable_waiters: AtomicUsize::new(0),
            durable_hook: std::sync::OnceLock::new(),
            preparer: preparer.clone(),
            counters,
            truncation: Mutex::new(()),
        });
        let mut threads = Vec::new();
        let started = (|| -> Result<()> {
            threads.extend(preparer.spawn()?);
            let syncer = inner.clone();
            let handle = std::thread::Builder::new()
                .name("engram-wal-syncer".into())
                .spawn(move || syncer.run_syncer())
                .map_err(|e| Error::io("starting the syncer thread", e))?;
            threads.push(handle);
            Ok(())
        })();
        if let Err(e) = started {
            // Stop what did start, so that no thread outlives the failed open.
            inner.lock_state().closed = true;
            inner.syncer_wakeup.notify_all();
            preparer.shutdown();
            for t in threads.drain(..) {
                let _ = t.join();
            }
            return Err(e);
        }
        Ok(Wal {
            inner,
            recovery: recovered.report,
            threads,
            _dir_lock: dir_lock,
        })
    }

    /// What recovery found when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn options(&self) -> &WalOptions {
        &self.inner.options
    }

    /// Appends one record with the log's sync policy; returns its LSN once the policy is met.
    pub fn append(&self, kind: u8, payload: &[u8]) -> Result<Lsn> {
        self.append_with(kind, payload, self.inner.options.sync_policy)
    }

    pub fn append_with(&self, kind: u8, payload: &[u8], policy: SyncPolicy) -> Result<Lsn> {
        Ok(*self.append_batch(&[(kind, payload)], policy)?.end())
    }

    /// Appends records with consecutive LSNs (no other append interleaves) and one wait.
    /// The batch must fit in one segment.
    pub fn append_batch(&self, records: &[(u8, &[u8])], policy: SyncPolicy) -> Result<RangeInclusive<Lsn>> {
        self.inner.append_batch(records, policy)
    }

    /// Queues records and assigns their LSNs without waiting for them to be written. Pair it with
    /// [`complete`](Self::complete): a caller can take LSNs inside its own critical section (a
    /// transaction manager ordering commits) and wait for durability outside it, so that
    /// concurrent committers still share one fdatasync. A submitted record is written by the
    /// next group even if `complete` is never called, but it is durable only once a `complete`
    /// or `sync` covering it returns.
    pub fn submit(&self, records: &[(u8, &[u8])]) -> Result<RangeInclusive<Lsn>> {
        self.inner.submit(records)
    }

    /// Waits until `last` and every record before it meet `policy` (written, or durable).
    pub fn complete(&self, last: Lsn, policy: SyncPolicy) -> Result<()> {
        self.inner.complete(last, policy)
    }

    /// [`complete`](Self::complete) for async callers: a future that is ready when `last` meets
    /// `policy`, without blocking a thread meanwhile. Waiting tasks share group commits with
    /// waiting threads; the log's syncer thread leads the rounds that only tasks wait for. Any
    /// executor can poll it (it uses only the task's `Waker`); dropping it withdraws the wait
    /// (the records stay submitted and are written by the next round).
    pub fn complete_async(&self, last: Lsn, policy: SyncPolicy) -> Completion<'_> {
        let durable = self.inner.request(last, policy);
        Completion {
            inner: &self.inner,
            target: last,
            durable,
            task_id: None,
        }
    }

    /// Makes every record appended so far durable; returns the durable LSN.
    pub fn sync(&self) -> Result<Lsn> {
        self.inner.sync()
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.inner.durable_lsn()
    }

    /// Asks for the records up to `lsn` to become durable soon, without waiting for it: the
    /// appender that leads the next round syncs them, or the syncer thread leads one if no
    /// appender does. For a caller that stopped waiting (a dropped [`Completion`]) but whose
    /// record must still become durable without depending on later appends.
    pub fn request_durable(&self, lsn: Lsn) {
        let mut st = self.inner.lock_state();
        if st.durable_lsn >= lsn || st.poisoned.is_some() || st.closed {
            return;
        }
        st.sync_wanted_upto = st.sync_wanted_upto.max(lsn.min(st.next_lsn - 1));
        if !st.leader_active {
            self.inner.syncer_wakeup.notify_one();
        }
    }

    /// Sets a function that the thread which made records durable calls with the new durable
    /// LSN, after it released the log's locks and woke the next round's leader, and before it
    /// wakes the appenders the round satisfied. A database applies the group's commits there,
    /// so that its committers wake once with their commits already visible instead of queueing
    /// to apply them. The hook runs on whichever thread led the round (an appender, the
    /// syncer, a `sync` caller); it must not append to or wait on this log. Set once: a second
    /// call returns the hook it was given.
    pub fn set_durable_hook(&self, hook: DurableHook) -> std::result::Result<(), DurableHook> {
        self.inner.durable_hook.set(hook)
    }

    /// LSN of the last record appended (durable or not).
    pub fn last_lsn(&self) -> Lsn {
        self.inner.lock_state().next_lsn - 1
    }

    /// The oldest retained LSN (prefix truncation moves it forward).
    pub fn first_lsn(&self) -> Lsn {
        self.inner.first_lsn()
    }

    /// A reader positioned at `from`; it returns durable records only.
    pub fn reader(&self, from: Lsn) -> Result<WalReader> {
        WalReader::new(self.inner.clone(), from)
    }

    pub fn stats(&self) -> WalStats {
        let mut s = self.inner.counters.snapshot();
        s.first_lsn = self.first_lsn();
        s.last_lsn = self.last_lsn();
        s.durable_lsn = self.durable_lsn();
        s.segments = self.inner.segments.read().unwrap_or_else(|p| p.into_inner()).len();
        s
    }

    /// Removes whole segments whose records all lie below `keep_from` (and are durable). The
    /// active segment is never removed. Returns how many segments were removed.
    pub fn truncate_prefix(&self, keep_from: Lsn) -> Result<usize> {
        self.inner.truncate_prefix(keep_from)
    }

    /// Drops every record after `last_kept` (a Raft follower discarding conflicting entries).
    /// The next append gets LSN `last_kept + 1`.
    pub fn truncate_suffix(&self, last_kept: Lsn) -> Result<()> {
        self.inner.truncate_suffix(last_kept)
    }

    /// Syncs what was written and stops the background threads.
    pub fn close(mut self) -> Result<()> {
        let result = self.inner.sync().map(|_| ());
        self.shutdown();
        result
    }

    fn shutdown(&mut self) {
        let mut wakeups = Wakeups::default();
        {
            let mut st = self.inner.lock_state();
            st.closed = true;
            // Tasks still waiting see the log closed when polled. (No thread can be waiting: it
            // would hold a reference to this log.)
            st.waiters.retain(|w| {
                w.wake.wake(SIGNAL_RECHECK, &mut wakeups);
                !w.wake.is_thread()
            });
            st.next_leader_parked = false;
        }
        wakeups.deliver(&self.inner.gates);
        self.inner.syncer_wakeup.notify_all();
        self.inner.progress.notify_all();
        self.inner.durable_changed.notify_all();
        self.inner.preparer.shutdown();
        for t in self.threads.drain(..) {
            // The last owner of the log can be dropped on the syncer thread itself (by the
            // durable hook of the layer above): that thread finishes on its own.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            // Appends with Interval policy were promised a sync; keep the promise on a clean drop.
            let needs_sync = {
                let st = self.inner.lock_state();
                st.poisoned.is_none() && st.written_lsn > st.durable_lsn && st.sync_deadline.is_some()
            };
            if needs_sync {
                let _ = self.inner.sync();
            }
            self.shutdown();
        }
    }
}

/// The future of [`Wal::complete_async`].
#[must_use = "a completion does nothing unless awaited"]
pub struct Completion<'a> {
    inner: &'a Inner,
    target: Lsn,
    durable: bool,
    /// Set while registered as a waiter.
    task_id: Option<u64>,
}

impl Future for Completion<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        this.inner.poll_completion(&mut this.task_id, this.target, this.durable, cx)
    }
}

impl Drop for Completion<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.task_id {
            self.inner.lock_state().waiters.retain(|w| !w.wake.is_task(id));
        }
    }
}

/// Writes a new segment's header and makes it durable before any record goes in.
fn start_segment(prepared: Prepared, header: SegmentHeader, counters: &Counters) -> Result<Arc<Segment>> {
    let what = || format!("starting segment {}", prepared.path.display());
    prepared.file.write_all_at(&header.encode(), 0).context(what)?;
    let t = Instant::now();
    prepared.file.sync_data().context(what)?;
    counters.sync_latency.record(t.elapsed());
    counters.syncs.fetch_add(1, Ordering::Relaxed);
    Ok(Arc::new(Segment::new(prepared.path, prepared.file, header, OPEN_ENDED)))
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn.load(Ordering::Acquire)
    }

    pub fn first_lsn(&self) -> Lsn {
        self.segments.read().unwrap_or_else(|p| p.into_inner())[0].first_lsn()
    }

    pub fn check_open(&self) -> Result<()> {
        let st = self.lock_state();
        if let Some(cause) = &st.poisoned {
            return Err(Error::Poisoned { cause: cause.clone() });
        }
        if st.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Blocks until the durable LSN reaches `lsn`, the timeout passes, or the log stops.
    pub fn wait_durable(&self, lsn: Lsn, timeout: Duration) -> Result<bool> {
        // A timeout too large to add (Duration::MAX) means no deadline.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.durable_lsn() >= lsn {
                return Ok(true);
            }
            // Not under `durable_lock`: leaders take the state lock first, then that one.
            self.check_open()?;
            let guard = self.durable_lock.lock().unwrap_or_else(|p| p.into_inner());
            if self.durable_lsn() >= lsn {
                return Ok(true);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(false);
            }
            // Bounded waits: a close or poisoning is noticed even without a notification.
            let wait = deadline.map_or(Duration::MAX, |d| d - now).min(Duration::from_millis(50));
            self.durable_waiters.fetch_add(1, Ordering::SeqCst);
            let guard = if self.durable_lsn.load(Ordering::SeqCst) >= lsn {
                guard
            } else {
                self.durable_changed.wait_timeout(guard, wait).unwrap_or_else(|p| p.into_inner()).0
            };
            self.durable_waiters.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
        }
    }

    fn publish_durable(&self, lsn: Lsn) {
        // SeqCst pairs with the follower's increment-then-check: either the follower sees the
        // new LSN, or this sees the follower and wakes it (under the lock it waits with).
        self.durable_lsn.store(lsn, Ordering::SeqCst);
        if self.durable_waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.durable_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.durable_changed.notify_all();
        }
    }

    fn append_batch(&self, records: &[(u8, &[u8])], policy: SyncPolicy) -> Result<RangeInclusive<Lsn>> {
        let (st, range) = self.submit_locked(records)?;
        if let Some(st) = st {
            self.complete_locked(st, *range.end(), policy)?;
        }
        Ok(range)
    }

    /// Validates and queues `records`, assigning their LSNs; returns the state lock still held
    /// (`None` for an empty batch) so that the caller can go on to wait without a second lock.
    fn submit_locked(&self, records: &[(u8, &[u8])]) -> Result<(Option<MutexGuard<'_, State>>, RangeInclusive<Lsn>)> {
        let max = self.options.max_record_bytes;
        let mut batch_bytes = 0usize;
        for (kind, payload) in records {
            if *kind == 0 {
                return Err(Error::ReservedKind);
            }
            if payload.len() > max {
                return Err(Error::RecordTooLarge {
                    size_bytes: payload.len(),
                    max_bytes: max,
                });
            }
            batch_bytes += framed_bytes(payload.len());
        }
        let room = (self.options.segment_bytes - SEGMENT_HEADER_BYTES as u64) as usize;
        if batch_bytes > room {
            return Err(Error::RecordTooLarge {
                size_bytes: batch_bytes,
                max_bytes: room - RECORD_HEADER_BYTES,
            });
        }
        if records.is_empty() {
            let lsn = self.lock_state().next_lsn - 1;
            return Ok((None, lsn + 1..=lsn));
        }
        let mut st = loop {
            let st = self.lock_state();
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned { cause: cause.clone() });
            }
            if st.closed {
                return Err(Error::Closed);
            }
            if st.active_offset + batch_bytes as u64 <= self.options.segment_bytes {
                break st;
            }
            if let Some(prepared) = self.preparer.try_take() {
                let mut st = st;
                self.rotate(&mut st, prepared);
                break st;
            }
            drop(st);
            self.counters.rotation_waits.fetch_add(1, Ordering::Relaxed);
            self.preparer.ensure_ready()?;
        };
        let first = st.next_lsn;
        for (kind, payload) in records {
            self.enqueue(&mut st, *kind, payload);
        }
        let last = st.next_lsn - 1;
        self.counters.appends.fetch_add(records.len() as u64, Ordering::Relaxed);
        self.counters
            .appended_bytes
            .fetch_add(records.iter().map(|r| r.1.len() as u64).sum(), Ordering::Relaxed);
        Ok((Some(st), first..=last))
    }

    pub fn submit(&self, records: &[(u8, &[u8])]) -> Result<RangeInclusive<Lsn>> {
        Ok(self.submit_locked(records)?.1)
    }

    pub fn complete(&self, last: Lsn, policy: SyncPolicy) -> Result<()> {
        self.complete_locked(self.lock_state(), last, policy)
    }

    /// Waits until the record at `last` (and everything before it) meets `policy`.
    fn complete_locked(&self, mut st: MutexGuard<'_, State>, last: Lsn, policy: SyncPolicy) -> Result<()> {
        let durable = self.note_policy(&mut st, last, policy);
        self.drive(st, last, durable)?;
        Ok(())
    }

    /// Records what `policy` asks of the records up to `last`; returns whether the caller must
    /// wait for them to be durable (else: written).
    fn request(&self, last: Lsn, policy: SyncPolicy) -> bool {
        self.note_policy(&mut self.lock_state(), last, policy)
    }

    fn note_policy(&self, st: &mut State, last: Lsn, policy: SyncPolicy) -> bool {
        match policy {
            SyncPolicy::Always => {
                st.sync_wanted_upto = st.sync_wanted_upto.max(last);
                true
            }
            SyncPolicy::Interval { ms } => {
                let due = Instant::now() + Duration::from_millis(ms);
                st.sync_deadline = Some(st.sync_deadline.map_or(due, |d| d.min(due)));
                self.syncer_wakeup.notify_one();
                false
            }
            SyncPolicy::Never => false,
        }
    }

    fn enqueue(&self, st: &mut State, kind: u8, payload: &[u8]) {
        let lsn = st.next_lsn;
        let offset = st.active_offset;
        let reuse = st.pending.back().is_some_and(|c| {
            c.start_after.is_none()
                && Arc::ptr_eq(&c.segment, &st.active)
                && c.offset + c.bytes.len() as u64 == offset
                && c.bytes.len() < self.options.max_group_bytes
        });
        if !reuse {
            let bytes = st.spare_chunk_buffers.pop().unwrap_or_default();
            st.pending.push_back(Chunk {
                segment: st.active.clone(),
                offset,
                bytes,
                last_lsn: lsn,
                records: 0,
                start_after: None,
            });
        }
        let salt = st.active.header.salt;
        let chunk = st.pending.back_mut().expect("a chunk was just ensured");
        let crc = encode_record(&mut chunk.bytes, salt, lsn, kind, payload);
        chunk.last_lsn = lsn;
        chunk.records += 1;
        st.last_crc = crc;
        st.next_lsn = lsn + 1;
        st.active_offset = offset + framed_bytes(payload.len()) as u64;
    }

    /// Switches appends to `prepared`. Only bookkeeping happens here; the leader that takes the
    /// resulting chunk syncs the old segment and writes and syncs the new header.
    fn rotate(&self, st: &mut State, prepared: Prepared) {
        let last = st.next_lsn - 1;
        let old = st.active.clone();
        old.seal(last);
        let header = SegmentHeader {
            salt: random_salt(prepared.id),
            segment_id: prepared.id,
            prev_last_lsn: last,
            prev_last_crc: st.last_crc,
            segment_bytes: self.options.segment_bytes,
        };
        let segment = Arc::new(Segment::new(prepared.path, prepared.file, header, OPEN_ENDED));
        self.segments.write().unwrap_or_else(|p| p.into_inner()).push(segment.clone());
        st.pending.push_back(Chunk {
            segment: segment.clone(),
            offset: 0,
            bytes: header.encode().to_vec(),
            last_lsn: last,
            records: 0,
            start_after: Some(old),
        });
        st.active = segment;
        st.active_offset = SEGMENT_HEADER_BYTES as u64;
        self.counters.rotations.fetch_add(1, Ordering::Relaxed);
    }

    /// [`Inner::drive`] for callers that go on under the state lock.
    fn drive_holding<'a>(&'a self, st: MutexGuard<'a, State>, target: Lsn, durable: bool) -> Result<MutexGuard<'a, State>> {
        Ok(match self.drive(st, target, durable)? {
            Some(st) => st,
            None => self.lock_state(),
        })
    }

    /// Waits until `target` is written (or durable), leading write rounds when no one else is.
    /// Returns the state lock if it holds it at the end; `None` when a leader's round reached
    /// `target` while this thread waited (it then leaves without taking the lock again).
    fn drive<'a>(&'a self, mut st: MutexGuard<'a, State>, target: Lsn, durable: bool) -> Result<Option<MutexGuard<'a, State>>> {
        loop {
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned { cause: cause.clone() });
            }
            let reached = if durable { st.durable_lsn } else { st.written_lsn };
            if reached >= target {
                return Ok(Some(st));
            }
            if st.leader_active {
                let signal = THREAD_SIGNAL.with(Arc::clone);
                signal.outcome.store(SIGNAL_WAITING, Ordering::Relaxed);
                // The round in flight holds this thread's records, or the next one will.
                let in_flight_reaches = target <= st.round_last_lsn && (st.round_syncs || !durable);
                let round = if in_flight_reaches { st.rounds } else { st.rounds + 1 };
                let sleep = if in_flight_reaches || st.next_leader_parked {
                    Sleep::Gate(RoundGates::for_round(round))
                } else {
                    st.next_leader_parked = true;
                    Sleep::Parked
                };
                st.waiters.push(Waiter {
                    target,
                    durable,
                    wake: Wake::Thread {
                        signal: signal.clone(),
                        sleep,
                    },
                });
                drop(st);
                let outcome = match sleep {
                    Sleep::Gate(gate) => self.gates.wait(gate, &signal),
                    Sleep::Parked => signal.wait_parked(),
                };
                if outcome == SIGNAL_REACHED {
                    return Ok(None);
                }
                st = self.lock_state();
                if outcome == SIGNAL_WAITING {
                    // The gate opened for a round that did not reach this thread's target:
                    // withdraw (unless a round satisfied it since) and look again.
                    if let Some(i) = st.waiters.iter().position(|w| w.wake.is_thread_of(&signal)) {
                        st.waiters.remove(i);
                        self.counters.gate_rewaits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            st.leader_active = true;
            let mut group = Vec::new();
            let mut group_bytes = 0;
            while let Some(c) = st.pending.front() {
                if group_bytes > 0 && group_bytes + c.bytes.len() > self.options.max_group_bytes {
                    break;
                }
                group_bytes += c.bytes.len();
                group.push(st.pending.pop_front().expect("front exists"));
            }
            let group_last = group.last().map_or(st.written_lsn, |c| c.last_lsn);
            let mut made_durable = None;
            let sync = st.sync_wanted_upto > st.durable_lsn || durable;
            let sync_segment = group.last().map_or_else(|| st.last_written_segment.clone(), |c| c.segment.clone());
            st.rounds += 1;
            st.round_last_lsn = group_last;
            st.round_syncs = sync;
            drop(st);
            let result = self.write_group(&group, sync.then_some(&sync_segment));
            st = self.lock_state();
            st.leader_active = false;
            self.keep_chunk_buffers(&mut st, &mut group);
            match result {
                Ok(durable_upto) => {
                    if let Some(last) = group.last() {
                        st.written_lsn = st.written_lsn.max(last.last_lsn);
                        st.last_written_segment = last.segment.clone();
                    }
                    let newly_durable = durable_upto.map_or(st.durable_lsn, |d| d.min(group_last)).max(st.durable_lsn);
                    if newly_durable > st.durable_lsn {
                        made_durable = Some(newly_durable);
                        self.counters
                            .records_synced
                            .fetch_add(newly_durable - st.durable_lsn, Ordering::Relaxed);
                        st.durable_lsn = newly_durable;
                        self.publish_durable(newly_durable);
                    }
                    self.counters.groups.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(error = %e, "log write failed; the log is stopped until reopened");
                    st.poisoned = Some(e.to_string());
                    self.durable_changed.notify_all();
                    let wakeups = self.wake_waiters(&mut st, true);
                    drop(st);
                    wakeups.deliver(&self.gates);
                    // The leader reports the I/O error itself; everyone else gets Poisoned.
                    return Err(e);
                }
            }
            let leader_done = (if durable { st.durable_lsn } else { st.written_lsn }) >= target;
            let mut wakeups = self.wake_waiters(&mut st, leader_done);
            drop(st);
            wakeups.deliver_successor();
            if let Some(durable_lsn) = made_durable {
                self.run_durable_hook(durable_lsn);
            }
            wakeups.deliver(&self.gates);
            if leader_done {
                return Ok(None);
            }
            st = self.lock_state();
        }
    }

    /// Takes the buffers of written chunks back for reuse (emptied, their capacity kept), up to
    /// [`SPARE_CHUNK_BUFFERS`], skipping any grown well past a group's size by one huge record.
    fn keep_chunk_buffers(&self, st: &mut State, group: &mut [Chunk]) {
        for chunk in group {
            if st.spare_chunk_buffers.len() >= SPARE_CHUNK_BUFFERS {
                return;
            }
            if chunk.bytes.capacity() <= 2 * self.options.max_group_bytes {
                let mut bytes = std::mem::take(&mut chunk.bytes);
                bytes.clear();
                st.spare_chunk_buffers.push(bytes);
            }
        }
    }

    /// Runs the hook (if set) for records newly durable up to `durable_lsn`. It is an
    /// optimisation for the layer above, which must not depend on it: a panicking hook is
    /// reported and the round goes on to wake its waiters.
    fn run_durable_hook(&self, durable_lsn: Lsn) {
        if let Some(hook) = self.durable_hook.get() {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(durable_lsn))).is_err() {
                tracing::error!(durable_lsn, "the durable hook panicked; waking the round's appenders anyway");
            }
        }
    }

    /// After a round: wakes the waiters it satisfied (all of them if the log stopped) and, when
    /// work remains and the leader is leaving, a successor: one more waiting thread, or, when
    /// only tasks wait, the syncer thread, which leads for them.
    fn wake_waiters(&self, st: &mut State, leader_leaving: bool) -> Wakeups {
        let mut wakeups = Wakeups::default();
        let stopped = st.poisoned.is_some();
        let (durable_lsn, written_lsn) = (st.durable_lsn, st.written_lsn);
        st.waiters.retain(|w| {
            let satisfied = stopped || (if w.durable { durable_lsn } else { written_lsn }) >= w.target;
            if satisfied {
                // A stopped log's waiters look again, under the lock, to read the cause.
                w.wake.wake(if stopped { SIGNAL_RECHECK } else { SIGNAL_REACHED }, &mut wakeups);
            }
            !satisfied
        });
        let work_remains = !st.pending.is_empty() || st.sync_wanted_upto > durable_lsn;
        if leader_leaving && work_remains {
            if let Some(successor) = st.waiters.iter().position(|w| w.wake.sleep() == Some(Sleep::Parked)) {
                st.waiters.remove(successor).wake.wake(SIGNAL_RECHECK, &mut wakeups);
                wakeups.successor = wakeups.satisfied.pop();
            } else if st.waiters.iter().any(|w| w.wake.is_thread()) {
                // Threads wait, but none parked as the next leader (it was satisfied by a round
                // that its leader went on to lead): open their gates; they look again under the
                // lock, and the first one leads.
                for w in &st.waiters {
                    if let Some(Sleep::Gate(gate)) = w.wake.sleep() {
                        wakeups.open_gate(gate);
                    }
                }
            } else if !st.waiters.is_empty() || st.sync_wanted_upto > durable_lsn {
                // Only tasks wait, or no one waits but durability was requested
                // (`request_durable`): the syncer leads.
                self.syncer_wakeup.notify_one();
            }
        }
        st.next_leader_parked = st.waiters.iter().any(|w| w.wake.sleep() == Some(Sleep::Parked));
        if st.quiesce_waiters > 0 {
            self.progress.notify_all();
        }
        wakeups
    }

    /// The round the syncer should lead for waiting tasks when no leader is running: up to the
    /// highest target any task waits for, durable if any of them needs it.
    fn task_round(st: &State) -> Option<(Lsn, bool)> {
        if st.leader_active {
            return None;
        }
        st.waiters
            .iter()
            .filter(|w| matches!(w.wake, Wake::Task { .. }))
            .filter(|w| (if w.durable { st.durable_lsn } else { st.written_lsn }) < w.target)
            .map(|w| (w.target, w.durable))
            .reduce(|(t1, d1), (t2, d2)| (t1.max(t2), d1 || d2))
    }

    /// One poll of a [`Completion`]: ready when `target` meets the policy (or the log stopped);
    /// otherwise registers (or refreshes) the task's waker and makes sure a round will run.
    fn poll_completion(&self, task_id: &mut Option<u64>, target: Lsn, durable: bool, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut st = self.lock_state();
        let reached = (if durable { st.durable_lsn } else { st.written_lsn }) >= target;
        let outcome = if let Some(cause) = &st.poisoned {
            Some(Err(Error::Poisoned { cause: cause.clone() }))
        } else if reached {
            Some(Ok(()))
        } else if st.closed {
            Some(Err(Error::Closed))
        } else {
            None
        };
        if let Some(outcome) = outcome {
            if let Some(id) = task_id.take() {
                st.waiters.retain(|w| !w.wake.is_task(id));
            }
            return Poll::Ready(outcome);
        }
        let registered = task_id.and_then(|id| st.waiters.iter_mut().find(|w| w.wake.is_task(id)));
        match registered {
            Some(Waiter {
                wake: Wake::Task { waker, .. },
                ..
            }) => waker.clone_from(cx.waker()),
            _ => {
                let id = *task_id.get_or_insert_with(|| {
                    st.next_task_id += 1;
                    st.next_task_id
                });
                st.waiters.push(Waiter {
                    target,
                    durable,
                    wake: Wake::Task {
                        id,
                        waker: cx.waker().clone(),
                    },
                });
            }
        }
        if !st.leader_active {
            self.syncer_wakeup.notify_one();
        }
        Poll::Pending
    }

    fn sync_file(&self, segment: &Segment) -> Result<()> {
        let t = Instant::now();
        segment
            .file
            .sync_data()
            .context(|| format!("fdatasync of {}", segment.path.display()))?;
        self.counters.sync_latency.record(t.elapsed());
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a group and syncs as needed; returns the LSN known durable afterwards, if any.
    fn write_group(&self, group: &[Chunk], sync_segment: Option<&Arc<Segment>>) -> Result<Option<Lsn>> {
        let mut durable_upto = None;
        let mut last_written = None;
        for chunk in group {
            if let Some(previous) = &chunk.start_after {
                // Nothing may reach a new segment before the old one is durable: recovery relies
                // on every segment but the last being complete.
                self.sync_file(previous)?;
                durable_upto = Some(chunk.last_lsn);
            }
            chunk
                .segment
                .file
                .write_all_at(&chunk.bytes, chunk.offset)
                .context(|| format!("writing {}", chunk.segment.path.display()))?;
            if chunk.start_after.is_some() {
                self.sync_file(&chunk.segment)?;
            }
            last_written = Some(chunk.last_lsn);
        }
        if let Some(segment) = sync_segment {
            self.sync_file(segment)?;
            durable_upto = Some(last_written.unwrap_or(Lsn::MAX));
        }
        Ok(durable_upto)
    }

    fn sync(&self) -> Result<Lsn> {
        let mut st = self.lock_state();
        let target = st.next_lsn - 1;
        st.sync_wanted_upto = st.sync_wanted_upto.max(target);
        self.drive(st, target, true)?;
        Ok(target)
    }

    /// The background syncer: leads rounds for tasks awaiting a [`Completion`] (they cannot lead
    /// themselves), and syncs appends made with `SyncPolicy::Interval` when their time is due.
    fn run_syncer(&self) {
        let mut st = self.lock_state();
        loop {
            if st.closed || st.poisoned.is_some() {
                return;
            }
            if let Some((target, durable)) = Self::task_round(&st) {
                st = match self.drive_holding(st, target, durable) {
                    Ok(st) => st,
                    Err(_) => return,
                };
                continue;
            }
            if !st.leader_active && st.sync_wanted_upto > st.durable_lsn {
                // Durability requested by someone who does not wait for it (`request_durable`).
                let target = st.sync_wanted_upto;
                st = match self.drive_holding(st, target, true) {
                    Ok(st) => st,
                    Err(_) => return,
                };
                continue;
            }
            match st.sync_deadline {
                Some(due) if Instant::now() >= due => {
                    st.sync_deadline = None;
                    let target = st.next_lsn - 1;
                    st.sync_wanted_upto = st.sync_wanted_upto.max(target);
                    st = match self.drive_holding(st, target, true) {
                        Ok(st) => st,
                        Err(_) => return,
                    };
                }
                Some(due) => {
                    let wait = due.saturating_duration_since(Instant::now());
                    st = self.syncer_wakeup.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner()).0;
                }
                None => st = self.syncer_wakeup.wait(st).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    fn truncate_prefix(&self, keep_from: Lsn) -> Result<usize> {
        let _serial = self.truncation.lock().unwrap_or_else(|p| p.into_inner());
        self.check_open()?;
        let bound = keep_from.min(self.durable_lsn() + 1);
        let removed: Vec<Arc<Segment>> = {
            let mut table = self.segments.write().unwrap_or_else(|p| p.into_inner());
            let n = table.iter().take(table.len() - 1).take_while(|s| s.last_lsn() < bound).count();
            table.drain(..n).collect()
        };
        let removed_count = removed.len();
        for segment in removed {
            // A segment no reader holds any more is prepared again rather than deleted (see
            // prealloc.rs); one a reader still holds is deleted (its file lives on until closed).
            let path = segment.path.clone();
            let recycled = match Arc::try_unwrap(segment) {
                Ok(segment) => self.preparer.recycle(&path, segment.file)?,
                Err(_) => false,
            };
            if recycled {
                self.counters.segments_recycled.fetch_add(1, Ordering::Relaxed);
            } else {
                self.storage.remove(&path).context(|| format!("removing {}", path.display()))?;
            }
        }
        if removed_count > 0 {
            self.storage
                .sync_dir(&self.dir)
                .context(|| format!("syncing directory {}", self.dir.display()))?;
        }
        Ok(removed_count)
    }

    fn truncate_suffix(&self, last_kept: Lsn) -> Result<()> {
        let _serial = self.truncation.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            self.preparer.ensure_ready()?;
            let mut st = self.lock_state();
            // Quiesce: everything queued is written and durable, and no leader is running. The
            // state lock is then held to the end, so no append can start meanwhile.
            loop {
                if let Some(cause) = &st.poisoned {
                    return Err(Error::Poisoned { cause: cause.clone() });
                }
                if st.leader_active {
                    st.quiesce_waiters += 1;
                    st = self.progress.wait(st).unwrap_or_else(|p| p.into_inner());
                    st.quiesce_waiters -= 1;
                } else if !st.pending.is_empty() || st.durable_lsn < st.next_lsn - 1 {
                    let target = st.next_lsn - 1;
                    st.sync_wanted_upto = st.sync_wanted_upto.max(target);
                    st = self.drive_holding(st, target, true)?;
                } else {
                    break;
                }
            }
            let last = st.next_lsn - 1;
            let first = self.first_lsn();
            if last_kept >= last {
                if last_kept > last {
                    return Err(Error::LsnOutOfRange {
                        lsn: last_kept,
                        first,
                        last,
                    });
                }
                return Ok(());
            }
            if last_kept + 1 < first {
                return Err(Error::LsnOutOfRange {
                    lsn: last_kept,
                    first,
                    last,
                });
            }
            let Some(prepared) = self.preparer.try_take() else { continue };
            let result = self.cut_after(&mut st, last_kept, prepared);
            if let Err(e) = &result {
                st.poisoned = Some(e.to_string());
                self.progress.notify_all();
            }
            return result;
        }
    }

    /// Suffix truncation proper. The new segment's header, naming `last_kept` as the previous
    /// record, is the durable marker of the cut: recovery cuts the segment before it there.
    fn cut_after(&self, st: &mut State, last_kept: Lsn, prepared: Prepared) -> Result<()> {
        let mut table = self.segments.write().unwrap_or_else(|p| p.into_inner());
        let idx = table.iter().rposition(|s| s.first_lsn() <= last_kept + 1).expect("range checked");
        let target = table[idx].clone();
        let crc = if last_kept >= target.first_lsn() {
            record_crc_at(&target, last_kept, self.options.max_record_bytes)?
        } else {
            target.header.prev_last_crc
        };
        let header = SegmentHeader {
            salt: random_salt(prepared.id),
            segment_id: prepared.id,
            prev_last_lsn: last_kept,
            prev_last_crc: crc,
            segment_bytes: self.options.segment_bytes,
        };
        // The durable header is the cut: once it is synced, recovery ignores whatever it
        // supersedes, so the files below can be removed in any order, and a crash before that
        // leaves either the whole log or the cut one.
        let segment = start_segment(prepared, header, &self.counters)?;
        let mut doomed: Vec<Arc<Segment>> = table.drain(idx + 1..).collect();
        if last_kept < target.first_lsn() {
            table.pop();
            doomed.push(target.clone());
        } else {
            target.seal(last_kept);
        }
        for s in doomed.iter().rev() {
            self.storage.remove(&s.path).context(|| format!("removing {}", s.path.display()))?;
        }
        if !doomed.is_empty() {
            self.storage
                .sync_dir(&self.dir)
                .context(|| format!("syncing directory {}", self.dir.display()))?;
        }
        table.push(segment.clone());
        st.active = segment.clone();
        st.last_written_segment = segment;
        st.active_offset = SEGMENT_HEADER_BYTES as u64;
        st.next_lsn = last_kept + 1;
        st.last_crc = crc;
        st.written_lsn = last_kept;
        st.durable_lsn = last_kept;
        st.sync_wanted_upto = st.sync_wanted_upto.min(last_kept);
        self.publish_durable(last_kept);
        Ok(())
    }
}

fn record_crc_at(segment: &Segment, lsn: Lsn, max_record_bytes: usize) -> Result<u32> {
    let file_bytes = segment
        .file
        .size_bytes()
        .context(|| format!("reading the size of {}", segment.path.display()))?;
    let mut cursor = SegmentCursor::new(segment.file.clone(), segment.header.salt, file_bytes, max_record_bytes);
    for expected in segment.first_lsn()..=lsn {
        match cursor
            .step(expected, Lsn::MAX)
            .context(|| format!("reading {}", segment.path.display()))?
        {
            Step::Record(h) if h.lsn == lsn => return Ok(h.crc),
            Step::Record(_) => {}
            Step::End(end) => {
                return Err(Error::Corruption {
                    file: segment.path.clone(),
                    offset: end.offset(),
                    lsn: expected,
                    reason: "record missing while truncating".into(),
                })
            }
        }
    }
    unreachable!("the loop returns at lsn")
}
