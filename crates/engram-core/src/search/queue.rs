//! The search indexer's queue: the index changes of committed transactions not yet applied,
//! in LSN order, read by the indexer and, as the tail, by every search of a lagging namespace
//! (search/tail.rs).
//!
//! The changes are kept in *chunks*: runs of consecutive changes in one allocation, shared by
//! reference count. A search takes its tail with one reference per chunk rather than one per
//! commit (at 50,000 queued one-memory commits, cloning a reference per commit under the queue
//! lock took 0.36 to 0.41 ms while commits queued behind it, and dropping them 0.3 ms more), and
//! walks the changes in memory order rather than one allocation each. New changes go to an open
//! chunk, which is sealed when a reader needs its changes or when it reaches
//! [`MAX_OPEN_CHANGES`]. A chunk is freed once the indexer has applied all of it and no search
//! holds it, so the applied changes it keeps alive are bounded by the chunk size (and by the
//! searches running).
//!
//! The open chunk is a buffer of [`MAX_OPEN_CHANGES`] changes from the start, and a full one is
//! sealed by moving the buffer itself into the chunk; the indexer hands the buffers of the
//! chunks it has applied back to the queue (emptied) for the next open chunk. A queue that grew
//! its open chunk by doubling and copied it out at each seal took fresh pages for every chunk;
//! the kernel zeroing them was 8 % of all the CPU of text commits (docs/benchmarks.md).

use super::index::IndexChange;
use engram_wal::Lsn;
use std::collections::VecDeque;
use std::sync::Arc;

/// An open chunk is sealed at this many changes even if nobody reads it, bounding how many
/// applied changes a chunk can keep alive (their keys and tail codes, a few hundred bytes each).
/// Also the capacity of every chunk buffer the queue reuses.
pub(crate) const MAX_OPEN_CHANGES: usize = 1024;

/// An open chunk sealed by a reader with fewer changes than this is copied out exactly rather
/// than taking its whole buffer, so that a lagging namespace searched often does not hold a
/// mostly empty buffer per search.
const MIN_MOVED_CHANGES: usize = MAX_OPEN_CHANGES / 8;

/// Emptied buffers kept for the next open chunks. The indexer gives back the buffers of a
/// whole round at once, which during a vector backlog is tens of chunks; at about 100 bytes a
/// change, 16 spare buffers are 1.6 MB.
const SPARE_BUFFERS: usize = 16;

/// A sealed run of consecutive queued changes, shared by the queue, the indexer and searches.
/// A `Vec` rather than a slice, so that its buffer can be reused once nobody holds it.
pub(crate) type Chunk = Arc<Vec<IndexChange>>;

/// The changes of the commits up to `lsn` (every change of a commit at or below `lsn` is in
/// this batch or an earlier one): one `Indexes::enqueue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueuedBatch {
    pub lsn: Lsn,
    /// How many changes the batch queued.
    pub changes: usize,
    pub vector_bytes: usize,
    /// Queued by the open (the log replayed after the checkpoint, or the store when the
    /// indexes are rebuilt): owed already, so it does not count toward the bound that holds
    /// new commits (`Indexes::over_bound`).
    pub at_open: bool,
    /// The queue position just after the batch's last change (positions count every change
    /// ever queued).
    end: u64,
}

/// A snapshot of the queue for the indexer: every queued batch, and the chunks holding their
/// changes, from the first batch's first change on.
pub(crate) struct QueueSnapshot {
    pub batches: Vec<QueuedBatch>,
    chunks: Vec<Chunk>,
    /// Changes at the front of the first chunk that belong to batches already applied.
    skip: usize,
}

impl QueueSnapshot {
    /// The changes of the snapshot's batches, in order (batch after batch).
    pub fn changes(&self) -> impl Iterator<Item = &IndexChange> {
        self.chunks.iter().flat_map(|chunk| chunk.iter()).skip(self.skip)
    }

    /// Drops the snapshot, emptying (outside the queue lock) the reusable buffers of the chunks
    /// that only it still held (the queue has removed them as applied, and no search holds
    /// them), and returns those buffers for [`ChangeQueue::recycle`].
    pub fn into_spare_buffers(self) -> Vec<Vec<IndexChange>> {
        let mut spare = Vec::new();
        for chunk in self.chunks {
            if spare.len() == SPARE_BUFFERS {
                break;
            }
            if let Ok(mut buffer) = Arc::try_unwrap(chunk) {
                if buffer.capacity() == MAX_OPEN_CHANGES {
                    buffer.clear();
                    spare.push(buffer);
                }
            }
        }
        spare
    }
}

#[derive(Default)]
pub(crate) struct ChangeQueue {
    /// Every batch not yet applied, in LSN order.
    batches: VecDeque<QueuedBatch>,
    /// Sealed chunks, each with the position just after its last change, in order. The first
    /// may begin with changes already applied.
    chunks: VecDeque<(u64, Chunk)>,
    /// The position of the first chunk's first change.
    chunks_start: u64,
    /// The newest changes, not yet in a chunk; they follow the last chunk. Its capacity is
    /// [`MAX_OPEN_CHANGES`] once the first change arrives.
    open: Vec<IndexChange>,
    /// Changes ever queued: the position after the last one.
    pushed: u64,
    /// Empty buffers of capacity [`MAX_OPEN_CHANGES`], at most [`SPARE_BUFFERS`].
    spare: Vec<Vec<IndexChange>>,
}

impl ChangeQueue {
    /// Queued batches.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Appends a batch of changes (in LSN order, after every batch before it).
    pub fn push(&mut self, lsn: Lsn, mut changes: Vec<IndexChange>, vector_bytes: usize, at_open: bool) {
        let count = changes.len();
        if count >= MAX_OPEN_CHANGES {
            // A large batch (an open's backlog) becomes a chunk of its own, without a copy.
            self.seal();
            self.pushed += count as u64;
            self.chunks.push_back((self.pushed, Arc::new(changes)));
        } else {
            if self.open.len() + count > MAX_OPEN_CHANGES {
                self.seal();
            }
            if self.open.is_empty() && self.open.capacity() < MAX_OPEN_CHANGES {
                self.open = self.spare_buffer();
            }
            self.open.append(&mut changes);
            self.pushed += count as u64;
        }
        self.batches.push_back(QueuedBatch {
            lsn,
            changes: count,
            vector_bytes,
            at_open,
            end: self.pushed,
        });
        if self.open.len() == MAX_OPEN_CHANGES {
            self.seal();
        }
    }

    /// Moves the open chunk's changes into a chunk of their own (no copy of any key or value):
    /// the whole buffer, or an exact copy of a few changes.
    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let sealed = if self.open.len() >= MIN_MOVED_CHANGES {
            let buffer = self.spare_buffer();
            std::mem::replace(&mut self.open, buffer)
        } else {
            self.open.drain(..).collect()
        };
        self.chunks.push_back((self.pushed, Arc::new(sealed)));
    }

    fn spare_buffer(&mut self) -> Vec<IndexChange> {
        self.spare.pop().unwrap_or_else(|| Vec::with_capacity(MAX_OPEN_CHANGES))
    }

    /// Keeps emptied chunk buffers ([`QueueSnapshot::into_spare_buffers`]) for the next open
    /// chunks.
    pub fn recycle(&mut self, buffers: Vec<Vec<IndexChange>>) {
        for buffer in buffers {
            if self.spare.len() < SPARE_BUFFERS && buffer.is_empty() && buffer.capacity() == MAX_OPEN_CHANGES {
                self.spare.push(buffer);
            }
        }
    }

    /// The chunks holding every queued change of the commits at or below `at` (they may also
    /// hold changes already applied, and changes above `at`, which the caller filters by LSN).
    pub fn chunks_through(&mut self, at: Lsn) -> Vec<Chunk> {
        // Batches are in LSN order; a batch's changes may reach down to `at` only in the first
        // batch above it, so the changes needed end with that one.
        let above = self.batches.partition_point(|b| b.lsn <= at);
        let Some(needed_end) = self.batches.get(above).or(self.batches.back()).map(|b| b.end) else {
            return Vec::new();
        };
        if needed_end > self.pushed - self.open.len() as u64 {
            self.seal();
        }
        let mut start = self.chunks_start;
        let mut needed = Vec::new();
        for (end, chunk) in &self.chunks {
            if start >= needed_end {
                break;
            }
            needed.push(chunk.clone());
            start = *end;
        }
        needed
    }

    /// Every queued batch and its changes, for the indexer.
    pub fn snapshot(&mut self) -> QueueSnapshot {
        self.seal();
        let first_batch_start = self.batches.front().map_or(self.pushed, |b| b.end - b.changes as u64);
        QueueSnapshot {
            batches: self.batches.iter().copied().collect(),
            chunks: self.chunks.iter().map(|(_, chunk)| chunk.clone()).collect(),
            skip: (first_batch_start - self.chunks_start) as usize,
        }
    }

    /// Removes `applied`, batches the indexer took from the front of the queue and has applied,
    /// and frees the chunks that hold only applied changes.
    pub fn pop_applied(&mut self, applied: &[QueuedBatch]) {
        for batch in applied {
            if self.batches.front() == Some(batch) {
                self.batches.pop_front();
            }
        }
        let applied_end = self.batches.front().map_or(self.pushed, |b| b.end - b.changes as u64);
        while let Some(&(end, _)) = self.chunks.front() {
            if end > applied_end {
                break;
            }
            self.chunks.pop_front();
            self.chunks_start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::index::tests::memory_change;

    fn batch_of(lsn: Lsn, count: usize) -> Vec<IndexChange> {
        (0..count).map(|i| memory_change(lsn, &format!("m{lsn}.{i}"), None)).collect()
    }

    fn lsns(chunks: &[Chunk]) -> Vec<Lsn> {
        chunks.iter().flat_map(|c| c.iter().map(|change| change.lsn)).collect()
    }

    /// A model of the queue: after any sequence of pushes, tails, snapshots and pops of applied
    /// batches, a tail at `at` holds every queued change at or below `at` (in order, nothing
    /// missing), the indexer's snapshot holds exactly the queued batches' changes, and chunks
    /// are freed once applied: at most one chunk's worth of applied changes stays held.
    #[test]
    fn the_chunked_queue_gives_every_reader_exactly_the_queued_changes() {
        let mut state = 7u64;
        let mut next = |below: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % below
        };
        for _ in 0..40 {
            let mut queue = ChangeQueue::default();
            // The model: (lsn, changes) of every queued batch.
            let mut model: VecDeque<(Lsn, usize)> = VecDeque::new();
            let mut lsn = 0;
            for _ in 0..300 {
                match next(10) {
                    0..=5 => {
                        lsn += 1 + next(2);
                        let count = match next(20) {
                            0 => 0,
                            1 => MAX_OPEN_CHANGES + next(100) as usize,
                            _ => 1 + next(3) as usize,
                        };
                        queue.push(lsn, batch_of(lsn, count), 0, false);
                        model.push_back((lsn, count));
                    }
                    6..=7 => {
                        let at = lsn.saturating_sub(next(5));
                        let chunks = queue.chunks_through(at);
                        // A chunk sealed early with a few changes holds no whole buffer.
                        assert!(chunks.iter().all(|c| c.len() >= MIN_MOVED_CHANGES || c.capacity() == c.len()));
                        let wanted: Vec<Lsn> = lsns(&chunks).into_iter().filter(|&l| l <= at).collect();
                        let applied_below = model.front().map_or(Lsn::MAX, |b| b.0);
                        let expected: Vec<Lsn> = model
                            .iter()
                            .filter(|b| b.0 <= at)
                            .flat_map(|&(l, n)| std::iter::repeat_n(l, n))
                            .collect();
                        let found: Vec<Lsn> = wanted.into_iter().filter(|&l| l >= applied_below).collect();
                        assert_eq!(found, expected, "tail at {at}");
                    }
                    _ => {
                        let snapshot = queue.snapshot();
                        let expected: Vec<Lsn> = model.iter().flat_map(|&(l, n)| std::iter::repeat_n(l, n)).collect();
                        assert_eq!(snapshot.changes().map(|c| c.lsn).collect::<Vec<_>>(), expected);
                        assert_eq!(snapshot.batches.len(), model.len());
                        let applied = next(snapshot.batches.len() as u64 + 1) as usize;
                        queue.pop_applied(&snapshot.batches[..applied]);
                        queue.recycle(snapshot.into_spare_buffers());
                        assert!(queue.spare.len() <= SPARE_BUFFERS);
                        model.drain(..applied);
                        assert_eq!(queue.len(), model.len());
                        let held: usize = queue.chunks.iter().map(|(_, c)| c.len()).sum::<usize>() + queue.open.len();
                        let queued: usize = model.iter().map(|b| b.1).sum();
                        let largest = queue.chunks.front().map_or(0, |(_, c)| c.len());
                        assert!(held >= queued && held - queued < largest.max(1), "{held} held for {queued} queued");
                    }
                }
            }
        }
    }

    /// The buffer of a full chunk comes back for the next open chunk once the indexer has
    /// applied it, unless a search still holds the chunk; commits then append to a buffer that
    /// is already there rather than to fresh memory.
    #[test]
    fn an_applied_chunk_buffer_is_reused_unless_a_search_holds_it() {
        let mut queue = ChangeQueue::default();
        for lsn in 1..=MAX_OPEN_CHANGES as Lsn {
            queue.push(lsn, batch_of(lsn, 1), 0, false);
        }
        assert!(queue.open.is_empty(), "a full open chunk is sealed");
        let full_buffer = queue.chunks[0].1.as_ptr();
        let snapshot = queue.snapshot();
        queue.pop_applied(&snapshot.batches);
        let spare = snapshot.into_spare_buffers();
        assert_eq!(spare.len(), 1);
        assert!(spare[0].is_empty() && spare[0].capacity() == MAX_OPEN_CHANGES);
        queue.recycle(spare);
        // The open chunk took a spare buffer at the seal; the recycled one is next.
        let next = MAX_OPEN_CHANGES as Lsn + 1;
        for lsn in next..next + MAX_OPEN_CHANGES as Lsn {
            queue.push(lsn, batch_of(lsn, 1), 0, false);
        }
        let last = next + MAX_OPEN_CHANGES as Lsn;
        queue.push(last, batch_of(last, 1), 0, false);
        assert_eq!(
            queue.open.as_ptr(),
            full_buffer,
            "the applied chunk's buffer is the open chunk's again"
        );

        // A search holding the chunk keeps its buffer: nothing comes back.
        let held = queue.chunks_through(next);
        let snapshot = queue.snapshot();
        let all_but_the_open_one = snapshot.batches.len() - 1;
        queue.pop_applied(&snapshot.batches[..all_but_the_open_one]);
        assert!(snapshot.into_spare_buffers().is_empty());
        assert_eq!(lsns(&held).len(), MAX_OPEN_CHANGES);
    }
}
