//! Model-based property test: random sequences of concurrent appends (several threads at once,
//! durable and not, single records and batches), syncs, reads, crashes of every kind and clean
//! reopens, checked against a model of what the log acknowledged.
//!
//! With several threads the order is the log's to decide: each append's returned LSN places
//! its record. Every payload encodes the thread and a sequence number unique within the case.
//! After every reopen:
//! - every record the log acknowledged as durable is present, in order, byte for byte (an
//!   `Always` append or a `sync()` that returned, or `durable_lsn()` having reached it);
//! - nothing is present that was never appended, and no record appears twice;
//! - only an unsynced suffix may be missing, and only after a power loss.
//!
//! `PROPTEST_CASES=<n>` sets the number of cases (default 64).

use engram_wal::storage::{CrashMode, FaultStorage};
use engram_wal::{Lsn, SyncPolicy, Wal, WalOptions};
use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;

const DIR: &str = "/db";
const MAX_RECORD_BYTES: usize = 2048;
/// Thread number (1 byte) and sequence number (8 bytes) lead every payload.
const ID_BYTES: usize = 9;

fn options(background_preallocation: bool) -> WalOptions {
    WalOptions {
        segment_bytes: 8192,
        max_record_bytes: MAX_RECORD_BYTES,
        background_preallocation,
        ..Default::default()
    }
}

fn open(fs: &FaultStorage, background_preallocation: bool) -> Wal {
    Wal::open_with_storage(Arc::new(fs.clone()), DIR, options(background_preallocation)).expect("the log opens")
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// One call of one appender: `lens.len()` records (a batch when more than one).
#[derive(Debug, Clone)]
struct Append {
    lens: Vec<usize>,
    durable: bool,
}

#[derive(Debug, Clone)]
enum Step {
    /// Each inner list is one thread's calls, made in order while the other threads run theirs.
    Append(Vec<Vec<Append>>),
    Sync,
    /// Read every durable record through a reader.
    ReadDurable,
    /// The machine or the process goes down, and the log is reopened.
    Crash(CrashMode),
    /// The log is dropped without a sync (no crash) and reopened.
    Reopen,
}

fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        5 => ID_BYTES..48,
        4 => 48..700usize,
        1 => 1200..=MAX_RECORD_BYTES,
    ]
}

fn append() -> impl Strategy<Value = Append> {
    (
        prop_oneof![4 => vec(payload_len(), 1..=1), 1 => vec(ID_BYTES..400usize, 2..=4)],
        proptest::bool::weighted(0.4),
    )
        .prop_map(|(lens, durable)| Append { lens, durable })
}

fn crash_mode() -> impl Strategy<Value = CrashMode> {
    prop_oneof![
        Just(CrashMode::DropUnsynced),
        any::<u64>().prop_map(|seed| CrashMode::TearLastWrite { seed }),
        Just(CrashMode::ProcessOnly),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => vec(vec(append(), 1..6), 1..=4).prop_map(Step::Append),
        2 => Just(Step::Sync),
        1 => Just(Step::ReadDurable),
        3 => crash_mode().prop_map(Step::Crash),
        0 => Just(Step::Reopen),
    ]
}

fn payload(thread: u8, seq: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.push(thread);
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend((0..len - ID_BYTES).map(|i| (seq as usize * 13 + i * 7) as u8));
    p
}

fn sequence_number(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[1..ID_BYTES].try_into().expect("8 bytes"))
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

struct Model {
    fs: FaultStorage,
    background_preallocation: bool,
    wal: Option<Wal>,
    /// Every appended record at index LSN - 1, as its append returned it.
    log: Vec<(u8, Vec<u8>)>,
    /// Records up to this LSN were acknowledged as durable.
    durable: Lsn,
    next_seq: u64,
}

type Outcome = Result<(), String>;

/// A record as its append returned it: LSN, (kind, payload), and whether it was a durable append.
type Placed = (Lsn, (u8, Vec<u8>), bool);

impl Model {
    fn new(background_preallocation: bool) -> Self {
        let fs = FaultStorage::new();
        let wal = Some(open(&fs, background_preallocation));
        Model {
            fs,
            background_preallocation,
            wal,
            log: Vec::new(),
            durable: 0,
            next_seq: 0,
        }
    }

    fn wal(&self) -> &Wal {
        self.wal.as_ref().expect("open between steps")
    }

    /// Records that the log acknowledged `lsn` as durable, and whatever `durable_lsn()` reports
    /// (an acknowledgement too: readers serve records up to it).
    fn acknowledge(&mut self, lsn: Lsn) -> Outcome {
        let last = self.wal().last_lsn();
        if lsn > last {
            return Err(format!("durable LSN {lsn} is beyond the last LSN {last}"));
        }
        self.durable = self.durable.max(lsn).max(self.wal().durable_lsn());
        Ok(())
    }

    fn apply(&mut self, step: &Step) -> Outcome {
        match step {
            Step::Append(threads) => self.append_concurrently(threads),
            Step::Sync => {
                let upto = self.wal().sync().map_err(|e| format!("sync: {e}"))?;
                if upto != self.log.len() as Lsn {
                    return Err(format!("sync returned {upto}, {} records were appended", self.log.len()));
                }
                self.acknowledge(upto)
            }
            Step::ReadDurable => {
                let durable = self.wal().durable_lsn();
                let served = self.read_all()?;
                if served.len() as Lsn != durable {
                    return Err(format!("a reader served {} records, {durable} are durable", served.len()));
                }
                self.acknowledge(durable)
            }
            Step::Crash(mode) => {
                drop(self.wal.take());
                self.fs.crash(*mode);
                self.reopen(*mode == CrashMode::ProcessOnly)
            }
            Step::Reopen => {
                drop(self.wal.take());
                self.reopen(true)
            }
        }
    }

    /// Runs each thread's appends at once; places every returned record at its LSN.
    fn append_concurrently(&mut self, threads: &[Vec<Append>]) -> Outcome {
        let mut plans = Vec::new();
        for (t, calls) in threads.iter().enumerate() {
            let mut plan = Vec::new();
            for call in calls {
                let records: Vec<(u8, Vec<u8>)> = call
                    .lens
                    .iter()
                    .map(|&len| {
                        self.next_seq += 1;
                        (t as u8 + 1, payload(t as u8, self.next_seq, len))
                    })
                    .collect();
                plan.push((records, if call.durable { SyncPolicy::Always } else { SyncPolicy::Never }));
            }
            plans.push(plan);
        }
        let wal = self.wal();
        let results: Vec<Result<Vec<Placed>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = plans
                .into_iter()
                .map(|plan| {
                    s.spawn(move || {
                        let mut placed = Vec::new();
                        let mut previous = 0;
                        for (records, policy) in plan {
                            let refs: Vec<(u8, &[u8])> = records.iter().map(|(k, p)| (*k, p.as_slice())).collect();
                            let lsns = wal.append_batch(&refs, policy).map_err(|e| format!("append: {e}"))?;
                            if *lsns.start() <= previous || lsns.clone().count() != records.len() {
                                return Err(format!("a thread's calls got LSNs {lsns:?} after {previous}"));
                            }
                            previous = *lsns.end();
                            for (lsn, record) in lsns.zip(records) {
                                placed.push((lsn, record, policy == SyncPolicy::Always));
                            }
                        }
                        Ok(placed)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("appender thread")).collect()
        });
        let mut placed = Vec::new();
        for r in results {
            placed.extend(r?);
        }
        placed.sort_by_key(|(lsn, _, _)| *lsn);
        let mut acknowledged = 0;
        for (lsn, record, durable) in placed {
            if lsn != self.log.len() as Lsn + 1 {
                return Err(format!("LSN {lsn} was returned where {} was next", self.log.len() + 1));
            }
            self.log.push(record);
            if durable {
                acknowledged = lsn;
            }
        }
        if self.wal().last_lsn() != self.log.len() as Lsn {
            return Err(format!(
                "the log ends at {}, {} records were appended",
                self.wal().last_lsn(),
                self.log.len()
            ));
        }
        self.acknowledge(acknowledged)
    }

    fn read_all(&self) -> Result<Vec<(Lsn, u8, Vec<u8>)>, String> {
        let mut served = Vec::new();
        for record in self.wal().reader(1).map_err(|e| format!("reader: {e}"))? {
            let r = record.map_err(|e| format!("reading: {e}"))?;
            let expected = self.log.get((r.lsn - 1) as usize);
            if r.lsn != served.len() as Lsn + 1 || expected != Some(&(r.kind, r.payload.clone())) {
                return Err(format!("a reader served LSN {} unlike what was appended with it", r.lsn));
            }
            served.push((r.lsn, r.kind, r.payload));
        }
        Ok(served)
    }

    /// Reopens and checks the recovered log; `everything_written` when no write can have been
    /// lost (the process died, the machine did not).
    fn reopen(&mut self, everything_written: bool) -> Outcome {
        let reopened = Wal::open_with_storage(Arc::new(self.fs.clone()), DIR, options(self.background_preallocation));
        self.wal = Some(reopened.map_err(|e| format!("the log does not reopen: {e}"))?);
        let last = self.wal().last_lsn();
        let appended = self.log.len() as Lsn;
        if last > appended {
            return Err(format!("the log ends at LSN {last}, only {appended} records were appended"));
        }
        if last < self.durable {
            return Err(format!(
                "acknowledged records are lost: durable up to {}, the log ends at {last}",
                self.durable
            ));
        }
        if everything_written && last != appended {
            return Err(format!(
                "without a power loss every written record survives: {appended} appended, {last} recovered"
            ));
        }
        if self.wal().first_lsn() != 1 || self.wal().durable_lsn() != last {
            return Err(format!(
                "after recovery: first {}, durable {}",
                self.wal().first_lsn(),
                self.wal().durable_lsn()
            ));
        }
        let served = self.read_all()?;
        if served.len() as Lsn != last {
            return Err(format!("a reader served {} records of {last}", served.len()));
        }
        let mut seen = HashSet::new();
        if let Some((lsn, _, _)) = served.iter().find(|(_, _, p)| !seen.insert(sequence_number(p))) {
            return Err(format!("LSN {lsn} repeats an earlier record"));
        }
        // The lost suffix is gone for good: its LSNs will be given to new records.
        self.log.truncate(last as usize);
        self.acknowledge(last)
    }
}

fn run(background_preallocation: bool, steps: &[Step]) -> Outcome {
    let mut model = Model::new(background_preallocation);
    for (i, step) in steps.iter().enumerate() {
        model.apply(step).map_err(|e| format!("step {i} ({step:?}): {e}"))?;
    }
    // Whatever the sequence, a final power loss keeps everything acknowledged.
    model
        .apply(&Step::Crash(CrashMode::DropUnsynced))
        .map_err(|e| format!("final power loss: {e}"))
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    ProptestConfig {
        cases,
        // Keep the tree clean: a failing case is printed, shrunk, with its seed.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn concurrent_appends_syncs_crashes_and_reopens_keep_every_acknowledged_record_and_nothing_else(
        background_preallocation in any::<bool>(),
        steps in vec(step(), 1..24),
    ) {
        run(background_preallocation, &steps).map_err(TestCaseError::fail)?;
    }
}

/// The sharpest case the model finds: a process exits without syncing, the log is reopened and
/// reports the records it found as durable, and readers serve them, so they must survive a
/// later power loss.
#[test]
fn records_a_reopened_log_reports_durable_survive_a_power_loss() {
    let fs = FaultStorage::new();
    let wal = open(&fs, false);
    for seq in 1..=3 {
        wal.append_with(1, &payload(0, seq, 32), SyncPolicy::Never).unwrap();
    }
    drop(wal); // the process exits; nothing was synced
    let wal = open(&fs, false);
    assert_eq!(wal.durable_lsn(), 3, "recovery reports the three records durable");
    assert_eq!(wal.reader(1).unwrap().count(), 3, "and readers serve them");
    drop(wal);
    fs.crash(CrashMode::DropUnsynced);
    let wal = open(&fs, false);
    assert_eq!(wal.last_lsn(), 3, "records served as durable were lost in a power loss");
}

/// Without background preparation, appenders that find the active segment full prepare the
/// next one themselves; several may do so at the same moment.
#[test]
fn appenders_needing_a_new_segment_at_the_same_time_all_succeed_and_lose_nothing() {
    let mut failures = Vec::new();
    for round in 0..20 {
        let fs = FaultStorage::new();
        let wal = open(&fs, false);
        let results: Vec<Result<(Lsn, Vec<u8>), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6u8)
                .map(|t| {
                    let wal = &wal;
                    s.spawn(move || {
                        (0..12u64)
                            .map(|i| {
                                let p = payload(t, u64::from(t) << 32 | i, 1500);
                                match wal.append_with(t + 1, &p, SyncPolicy::Always) {
                                    Ok(lsn) => Ok((lsn, p)),
                                    Err(e) => Err(format!("round {round}: thread {t}, append {i}: {e}")),
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        drop(wal);
        let present: Vec<_> = match Wal::open_with_storage(Arc::new(fs.clone()), DIR, options(false)) {
            Ok(wal) => wal.reader(1).unwrap().map(|r| r.unwrap()).collect(),
            Err(e) => {
                failures.push(format!("round {round}: the log does not reopen: {e}"));
                continue;
            }
        };
        for result in results {
            match result {
                Ok((lsn, p)) if present.get((lsn - 1) as usize).map(|r| &r.payload) != Some(&p) => {
                    failures.push(format!("round {round}: acknowledged LSN {lsn} is lost after a clean reopen"))
                }
                Ok(_) => {}
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(6)].join("\n")
    );
}
