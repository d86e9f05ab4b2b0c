//! Decoding a checkpoint's entries on helper threads, handed back in file order.
//!
//! At a million memories, decoding the entries (allocating every text, embedding and metadata
//! map) is about two thirds of loading a checkpoint, and reading the bytes, checking their CRC
//! and checking the entries' order the rest. Entries are length-prefixed, so the reading thread
//! can cut the body into runs of whole entries without decoding them; helper threads decode the
//! runs and the reading thread takes the results back in file order, so that every check (and
//! every error) is the one a sequential read makes, in the same order.

use crate::error::{CoreError, Result};
use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Bytes of entries handed to a helper at a time: large enough that channel traffic is
/// negligible, small enough that a few in flight cost little memory.
pub(super) const BATCH_BYTES: usize = 1 << 20;
/// Runs queued per helper: the reader stays ahead without holding much of the file.
const BATCHES_AHEAD_PER_HELPER: usize = 2;

/// Decodes one entry from its number (0-based, for error messages), its file offset and its
/// bytes.
pub(super) type DecodeFn<'a, T> = dyn Fn(u64, u64, &[u8]) -> Result<T> + Sync + 'a;

/// A run of consecutive entries' bytes, as read from the file.
pub(super) struct RawEntries {
    /// The number of the first entry in the body (0-based), for error messages.
    pub first_entry: u64,
    pub bytes: Vec<u8>,
    /// Where each entry ends in `bytes`.
    pub ends: Vec<usize>,
    /// The file offset of each entry's first byte.
    pub offsets: Vec<u64>,
}

impl RawEntries {
    fn empty() -> RawEntries {
        RawEntries {
            first_entry: 0,
            bytes: Vec::with_capacity(BATCH_BYTES + BATCH_BYTES / 4),
            ends: Vec::new(),
            offsets: Vec::new(),
        }
    }

    /// The same buffers emptied, for the next run: a fresh megabyte per run was fresh pages
    /// for the kernel to zero, the whole body's worth over a load (at 1M memories, 1.8 GB and
    /// about two fifths of the checkpoint's load time on a VM).
    fn recycled(mut self) -> RawEntries {
        self.bytes.clear();
        self.ends.clear();
        self.offsets.clear();
        self
    }

    /// Each entry's number, file offset and bytes.
    fn entries(&self) -> impl Iterator<Item = (u64, u64, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        (self.first_entry..)
            .zip(self.offsets.iter().copied())
            .zip(starts.zip(self.ends.iter().copied()))
            .map(|((number, offset), (start, end))| (number, offset, &self.bytes[start..end]))
    }
}

/// Decodes entry runs from `read_next` (which fills the empty run it is given, setting its
/// `first_entry`, or returns `None` at the end) with `decode` and hands
/// every decoded entry to `visit`, in file order, stopping at the first error of any of the
/// three. With `helpers` above 1, that many threads decode while this one reads and visits;
/// should no helper start, it decodes itself. A helper that panics ends the decoding with
/// `helper_stopped()`.
pub(super) fn decode_in_order<T: Send>(
    helpers: usize,
    mut read_next: impl FnMut(RawEntries) -> Result<Option<RawEntries>>,
    decode: &DecodeFn<'_, T>,
    mut visit: impl FnMut(T) -> Result<()>,
    helper_stopped: impl Fn() -> CoreError,
) -> Result<()> {
    if helpers <= 1 {
        return decode_here(&mut read_next, decode, &mut visit);
    }
    std::thread::scope(|scope| {
        let mut workers = Vec::with_capacity(helpers);
        for _ in 0..helpers {
            let (raw_sender, raw_receiver) = sync_channel::<RawEntries>(BATCHES_AHEAD_PER_HELPER);
            let (decoded_sender, decoded_receiver) = sync_channel::<(Vec<Result<T>>, RawEntries)>(BATCHES_AHEAD_PER_HELPER);
            let spawned = std::thread::Builder::new()
                .name("engram-ckpt-decode".into())
                .spawn_scoped(scope, move || decode_runs(raw_receiver, decoded_sender, decode));
            match spawned {
                Ok(handle) => workers.push(Worker {
                    raw: raw_sender,
                    decoded: decoded_receiver,
                    handle,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a checkpoint decoding thread; decoding with fewer");
                    break;
                }
            }
        }
        let result = if workers.is_empty() {
            decode_here(&mut read_next, decode, &mut visit)
        } else {
            pipeline(&workers, &mut read_next, &mut visit, &helper_stopped)
        };
        // Closing both channels ends every helper, whether it waits for a run or to hand one
        // back; joining each here turns a panic into an error instead of a panic of the scope.
        let mut panicked = false;
        for Worker { raw, decoded, handle } in workers {
            drop((raw, decoded));
            panicked |= handle.join().is_err();
        }
        match result {
            Ok(()) if panicked => Err(helper_stopped()),
            other => other,
        }
    })
}

struct Worker<'scope, T> {
    raw: SyncSender<RawEntries>,
    /// Each run's decoded entries, and the run emptied for reuse.
    decoded: Receiver<(Vec<Result<T>>, RawEntries)>,
    handle: std::thread::ScopedJoinHandle<'scope, ()>,
}

fn decode_runs<T>(runs: Receiver<RawEntries>, decoded: SyncSender<(Vec<Result<T>>, RawEntries)>, decode: &DecodeFn<'_, T>) {
    for run in runs {
        // Up to and including the first failure: the entries before it are still visited.
        let mut entries = Vec::with_capacity(run.ends.len());
        for (number, offset, bytes) in run.entries() {
            let entry = decode(number, offset, bytes);
            let failed = entry.is_err();
            entries.push(entry);
            if failed {
                break;
            }
        }
        if decoded.send((entries, run.recycled())).is_err() {
            return;
        }
    }
}

/// Keeps every helper `BATCHES_AHEAD_PER_HELPER` runs ahead (runs go round-robin, so taking
/// the results round-robin too gives them in file order) and visits the results.
fn pipeline<T>(
    workers: &[Worker<'_, T>],
    read_next: &mut impl FnMut(RawEntries) -> Result<Option<RawEntries>>,
    visit: &mut impl FnMut(T) -> Result<()>,
    helper_stopped: &impl Fn() -> CoreError,
) -> Result<()> {
    let mut in_flight: VecDeque<usize> = VecDeque::new();
    let mut spare_runs: Vec<RawEntries> = Vec::new();
    let mut next_worker = 0;
    let mut reading = true;
    loop {
        while reading && in_flight.len() < workers.len() * BATCHES_AHEAD_PER_HELPER {
            match read_next(spare_runs.pop().unwrap_or_else(RawEntries::empty))? {
                Some(run) => {
                    workers[next_worker].raw.send(run).map_err(|_| helper_stopped())?;
                    in_flight.push_back(next_worker);
                    next_worker = (next_worker + 1) % workers.len();
                }
                None => reading = false,
            }
        }
        let Some(worker) = in_flight.pop_front() else {
            return Ok(());
        };
        let (entries, emptied) = workers[worker].decoded.recv().map_err(|_| helper_stopped())?;
        spare_runs.push(emptied);
        for entry in entries {
            visit(entry?)?;
        }
    }
}

fn decode_here<T>(
    read_next: &mut impl FnMut(RawEntries) -> Result<Option<RawEntries>>,
    decode: &DecodeFn<'_, T>,
    visit: &mut impl FnMut(T) -> Result<()>,
) -> Result<()> {
    let mut buffer = RawEntries::empty();
    while let Some(run) = read_next(buffer)? {
        for (number, offset, bytes) in run.entries() {
            visit(decode(number, offset, bytes)?)?;
        }
        buffer = run.recycled();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs of `per_run` entries, entry n being the 8 bytes of n, found at file offset
    /// `offset_of(n)` (as if each followed a 4-byte length).
    fn runs(count: u64, per_run: u64) -> impl FnMut(RawEntries) -> Result<Option<RawEntries>> {
        let mut next = 0;
        move |mut run: RawEntries| {
            if next >= count {
                return Ok(None);
            }
            assert!(
                run.bytes.is_empty() && run.ends.is_empty() && run.offsets.is_empty(),
                "runs are handed over empty"
            );
            run.first_entry = next;
            while next < count && run.ends.len() < per_run as usize {
                run.bytes.extend(next.to_le_bytes());
                run.ends.push(run.bytes.len());
                run.offsets.push(offset_of(next));
                next += 1;
            }
            Ok(Some(run))
        }
    }

    fn failure(what: impl Into<String>) -> CoreError {
        CoreError::CorruptRecord {
            lsn: 0,
            reason: what.into(),
        }
    }

    fn is_failure(error: &CoreError, what: &str) -> bool {
        matches!(error, CoreError::CorruptRecord { reason, .. } if reason == what)
    }

    fn stopped() -> CoreError {
        failure("stopped")
    }

    fn offset_of(entry: u64) -> u64 {
        100 + 12 * entry + 4
    }

    fn decode_number(number: u64, offset: u64, bytes: &[u8]) -> Result<u64> {
        let value = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        assert_eq!(value, number, "an entry is decoded with its own number");
        assert_eq!(offset, offset_of(number), "an entry is decoded with its own file offset");
        Ok(value)
    }

    #[test]
    fn entries_come_back_in_file_order_whatever_the_helper_count() {
        for helpers in [0, 1, 2, 3, 5] {
            for per_run in [1, 7, 1000] {
                let mut seen = Vec::new();
                decode_in_order(
                    helpers,
                    runs(2_500, per_run),
                    &decode_number,
                    |n| {
                        seen.push(n);
                        Ok(())
                    },
                    stopped,
                )
                .unwrap();
                assert_eq!(seen, (0..2_500).collect::<Vec<_>>(), "helpers {helpers}, {per_run} per run");
            }
        }
    }

    #[test]
    fn the_first_error_in_file_order_wins_and_nothing_after_it_is_visited() {
        for helpers in [1, 2, 3] {
            let decoded = AtomicUsize::new(0);
            let failing = |number: u64, offset: u64, bytes: &[u8]| -> Result<u64> {
                decoded.fetch_add(1, Ordering::Relaxed);
                match decode_number(number, offset, bytes)? {
                    n @ (1_234 | 1_800) => Err(failure(format!("entry {n}"))),
                    n => Ok(n),
                }
            };
            let mut visited = Vec::new();
            let error = decode_in_order(
                helpers,
                runs(5_000, 10),
                &failing,
                |n| {
                    visited.push(n);
                    Ok(())
                },
                stopped,
            )
            .unwrap_err();
            assert!(is_failure(&error, "entry 1234"), "{error}");
            assert_eq!(visited, (0..1_234).collect::<Vec<_>>());
            // Helpers stop soon after: only the runs already in flight are decoded.
            assert!(decoded.load(Ordering::Relaxed) < 1_234 + 10 * (2 * helpers + 2));
        }
    }

    #[test]
    fn a_visit_error_or_a_read_error_stops_the_decoding() {
        for helpers in [1, 2] {
            let error = decode_in_order(
                helpers,
                runs(1_000, 10),
                &decode_number,
                |n| {
                    if n == 500 {
                        return Err(failure("visit"));
                    }
                    Ok(())
                },
                stopped,
            )
            .unwrap_err();
            assert!(is_failure(&error, "visit"));
            let mut inner = runs(1_000, 10);
            let mut served = 0;
            let read = |run| {
                served += 1;
                if served == 30 {
                    return Err(failure("read"));
                }
                inner(run)
            };
            let mut visited = 0;
            let error = decode_in_order(
                helpers,
                read,
                &decode_number,
                |_| {
                    visited += 1;
                    Ok(())
                },
                stopped,
            )
            .unwrap_err();
            assert!(is_failure(&error, "read"));
            assert!(visited <= 290, "only entries of runs read before the failure are visited");
        }
    }

    #[test]
    fn a_panicking_helper_is_an_error_not_a_panic() {
        let panicking = |number: u64, offset: u64, bytes: &[u8]| -> Result<u64> {
            if number == 77 {
                panic!("a bug in a decoder");
            }
            decode_number(number, offset, bytes)
        };
        let error = decode_in_order(2, runs(1_000, 10), &panicking, |_| Ok(()), stopped).unwrap_err();
        assert!(is_failure(&error, "stopped"), "{error}");
    }
}
