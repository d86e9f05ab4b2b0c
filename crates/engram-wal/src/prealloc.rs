//! Segments are prepared ahead of use, off the append path: a temporary file is zero-filled to
//! full size, synced, renamed to its segment name, and the directory is synced. Writing zeros
//! (rather than only reserving space) means later fdatasyncs never have to journal an extent or
//! size change. A prepared segment has an all-zero header until it is started.
//!
//! The file is a retired segment when one is available (prefix truncation hands them over):
//! renamed to the temporary name, then zero-filled like a new one. Overwriting pages the page
//! cache still holds costs a fraction of filling new ones (here 0.2 s against 3.5 s of CPU per
//! GiB, docs/wal-format.md), and the result on disk is the same all-zero file.

use crate::error::{Error, IoContext, Result};
use crate::format::segment_file_name;
use crate::storage::{OpenMode, Storage, StorageFile};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

const ZERO_CHUNK_BYTES: usize = 1024 * 1024;
/// How many prepared segments the background thread keeps ready. Two, so that a burst of
/// rotations (64 appenders writing 4 KiB records fill a 64 MiB segment in about 0.4 s) does not
/// catch the preparer still zero-filling the only spare.
const READY_TARGET: usize = 2;
/// The zero-fill is synced every this many bytes: one fdatasync of a whole 64 MiB segment
/// floods the device queue and delayed the appenders' own fdatasyncs from ~0.15 ms to several ms.
const ZERO_SYNC_EVERY_BYTES: u64 = 8 * 1024 * 1024;
/// Retired segments kept for reuse at most; prefix truncation deletes the rest.
const RECYCLED_MAX: usize = READY_TARGET;

#[derive(Debug)]
pub(crate) struct Prepared {
    pub id: u64,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
}

/// The temporary name of segment `id` while it is being prepared (removed at open if left over).
fn temporary_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{}.tmp", segment_file_name(id)))
}

/// A retired segment's file, under a temporary name, waiting to be prepared again.
pub(crate) struct Recycled {
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
}

/// Creates one zero-filled segment file, durable under its final name: a new file, or the
/// `recycled` one when given.
pub(crate) fn prepare_segment(
    storage: &dyn Storage,
    dir: &Path,
    id: u64,
    segment_bytes: u64,
    recycled: Option<Recycled>,
) -> Result<Prepared> {
    let path = dir.join(segment_file_name(id));
    let tmp = temporary_path(dir, id);
    let what = || format!("preparing segment {}", path.display());
    let file = match recycled {
        Some(old) => {
            // The new name must be durable before the old records are overwritten: after a
            // power loss the file must not reappear under its segment name holding zeros.
            storage.rename(&old.path, &tmp).context(what)?;
            storage.sync_dir(dir).context(what)?;
            old.file
        }
        None => storage.open(&tmp, OpenMode::CreateNew).context(what)?,
    };
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut at = 0u64;
    while at < segment_bytes {
        let n = ((segment_bytes - at) as usize).min(ZERO_CHUNK_BYTES);
        file.write_all_at(&zeros[..n], at).context(what)?;
        at += n as u64;
        if at.is_multiple_of(ZERO_SYNC_EVERY_BYTES) && at < segment_bytes {
            file.sync_data().context(what)?;
        }
    }
    file.sync_data().context(what)?;
    storage.rename(&tmp, &path).context(what)?;
    storage.sync_dir(dir).context(what)?;
    Ok(Prepared { id, path, file })
}

#[derive(Default)]
struct PoolState {
    ready: VecDeque<Prepared>,
    /// Retired segments to prepare again instead of creating files.
    recycled: Vec<Recycled>,
    next_id: u64,
    /// The last background failure; reported to the appender that needed a segment.
    failure: Option<Error>,
    shutdown: bool,
}

/// The pool of prepared segments, refilled by a background thread or on demand.
pub(crate) struct Preparer {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    segment_bytes: u64,
    background: bool,
    state: Mutex<PoolState>,
    changed: Condvar,
    /// Held while a segment is prepared on the calling thread: appenders that need a segment at
    /// the same moment would otherwise prepare the same id and destroy each other's files.
    inline: Mutex<()>,
}

impl Preparer {
    pub fn new(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        segment_bytes: u64,
        background: bool,
        adopted: Vec<Prepared>,
        next_id: u64,
    ) -> Arc<Self> {
        let state = PoolState {
            ready: adopted.into(),
            next_id,
            ..Default::default()
        };
        Arc::new(Preparer {
            storage,
            dir,
            segment_bytes,
            background,
            state: Mutex::new(state),
            changed: Condvar::new(),
            inline: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn spawn(self: &Arc<Self>) -> Result<Option<JoinHandle<()>>> {
        if !self.background {
            return Ok(None);
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("engram-wal-prealloc".into())
            .spawn(move || me.run())
            .map(Some)
            .map_err(|e| Error::io("starting the segment preparation thread", e))
    }

    fn run(&self) {
        let mut st = self.lock();
        loop {
            while !st.shutdown && (st.ready.len() >= READY_TARGET || st.failure.is_some()) {
                st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.shutdown {
                return;
            }
            let id = st.next_id;
            let recycled = st.recycled.pop();
            drop(st);
            let result = prepare_segment(&*self.storage, &self.dir, id, self.segment_bytes, recycled);
            st = self.lock();
            match result {
                Ok(p) => {
                    st.next_id = id + 1;
                    st.ready.push_back(p);
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not prepare a log segment");
                    self.remove_leftover(id);
                    st.failure = Some(e);
                }
            }
            self.changed.notify_all();
        }
    }

    fn remove_leftover(&self, id: u64) {
        let _ = self.storage.remove(&temporary_path(&self.dir, id));
    }

    /// Takes a retired segment's file for reuse, if the pool wants one and the file is a whole
    /// segment: renames it to a temporary name (so that a crash leaves a leftover that open
    /// removes, never a segment with old records) and returns true. The caller syncs the
    /// directory; on false it deletes the file itself.
    pub fn recycle(&self, path: &Path, file: Arc<dyn StorageFile>) -> Result<bool> {
        let mut st = self.lock();
        if st.shutdown || st.recycled.len() >= RECYCLED_MAX || file.size_bytes().ok() != Some(self.segment_bytes) {
            return Ok(false);
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = self.dir.join(format!("{name}.tmp"));
        self.storage
            .rename(path, &tmp)
            .context(|| format!("renaming {} for reuse", path.display()))?;
        st.recycled.push(Recycled { path: tmp, file });
        Ok(true)
    }

    /// A prepared segment without waiting, if one is ready.
    pub fn try_take(&self) -> Option<Prepared> {
        let p = self.lock().ready.pop_front();
        if p.is_some() {
            self.changed.notify_all();
        }
        p
    }

    /// Makes sure a prepared segment is ready: waits for the background thread, or prepares
    /// one on the calling thread. Never called with the append lock held.
    pub fn ensure_ready(&self) -> Result<()> {
        if !self.background {
            return self.prepare_inline();
        }
        let mut st = self.lock();
        // A failure recorded before this demand is stale (the disk may have room again): drop it
        // and wait for the outcome of a new attempt.
        if st.ready.is_empty() && st.failure.take().is_some() {
            self.changed.notify_all();
        }
        while st.ready.is_empty() && st.failure.is_none() && !st.shutdown {
            self.changed.notify_all();
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.ready.is_empty() {
            return Err(st.failure.take().unwrap_or(Error::Closed));
        }
        Ok(())
    }

    /// Prepares a segment on the calling thread unless one is ready (used when there is no
    /// background thread, and at open before the thread starts).
    pub fn prepare_inline(&self) -> Result<()> {
        let _one_at_a_time = self.inline.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.lock();
        if !st.ready.is_empty() {
            return Ok(());
        }
        let id = st.next_id;
        let recycled = st.recycled.pop();
        drop(st);
        let result = prepare_segment(&*self.storage, &self.dir, id, self.segment_bytes, recycled);
        if result.is_err() {
            self.remove_leftover(id);
        }
        let p = result?;
        let mut st = self.lock();
        st.next_id = id + 1;
        st.ready.push_back(p);
        Ok(())
    }

    /// Stops the background thread. Retired segments kept for reuse stay on disk as `.seg.tmp`
    /// files, which the next open removes with any other leftover: closing makes no file
    /// system change of its own (the crash campaigns count every mutating call of a run).
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.changed.notify_all();
    }
}
