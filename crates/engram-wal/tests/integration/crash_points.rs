//! Crash-point exploration on the fault-injecting file system.
//!
//! For each of many seeded workloads (appends of varied sizes that rotate segments, durable and
//! unsynced appends, explicit syncs, batches, now and then a prefix or a suffix truncation), the
//! machine loses power at every mutating I/O call in turn: after the first k mutations for every
//! k from 0 to the workload's total. The log is then reopened, and must satisfy THE INVARIANT:
//!
//! - every record acknowledged as durable is present, in order, byte for byte (an `Always`
//!   append that returned, anything before a `sync()` that returned, anything kept by a
//!   suffix truncation that returned, anything below `durable_lsn()`);
//! - nothing is present that was never appended;
//! - the records present are a prefix of the appended sequence (a suffix truncation that
//!   returned cuts that sequence; one that did not return may or may not have happened), from
//!   the first retained LSN on, with dense LSNs;
//! - prefix truncation only drops what it was asked to, and is durable once it returns.
//!
//! Power loss comes in two kinds: every unsynced write is lost, or the last one partly reached
//! the disk (a 512-byte-sector prefix) while the earlier ones did not. Then, for every crash
//! state whose recovery writes (a torn tail to zero, files to remove, a first segment to start),
//! the machine loses power again at every mutating call of that recovery; the second recovery
//! must succeed, with the same invariant.
//!
//! Hand-written workloads at the end reproduce, in a few operations, what the sweeps look for.
//!
//! `ENGRAM_CRASH_WORKLOADS=<n>` changes the number of workloads (default 50) for a long run by
//! hand; `ENGRAM_CRASH_SEED=<n>` changes the first seed.

use engram_wal::storage::{CrashMode, FaultStorage};
use engram_wal::{Lsn, SyncPolicy, Wal, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const DIR: &str = "/db";
const DEFAULT_WORKLOADS: u64 = 50;
const MAX_RECORD_BYTES: usize = 2048;

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 8192,
        max_record_bytes: MAX_RECORD_BYTES,
        // Segments are prepared by the appender that needs them: one deterministic I/O order.
        background_preallocation: false,
        ..Default::default()
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")))
        .unwrap_or(default)
}

fn open(fs: &FaultStorage) -> engram_wal::Result<Wal> {
    Wal::open_with_storage(Arc::new(fs.clone()), DIR, options())
}

// ---------------------------------------------------------------------------------------------
// Seeded workloads
// ---------------------------------------------------------------------------------------------

/// splitmix64: a tiny, good-enough, seedable generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        kind: u8,
        payload: Vec<u8>,
        policy: SyncPolicy,
    },
    Batch {
        records: Vec<(u8, Vec<u8>)>,
        policy: SyncPolicy,
    },
    Sync,
    /// `truncate_prefix` keeping records from `permille`/1000 of the current log on.
    TruncatePrefix {
        permille: u64,
    },
    /// `truncate_suffix` dropping the last `drop` records (as many as are retained, at most).
    TruncateSuffix {
        drop: u64,
    },
}

fn payload(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.next().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Payload sizes: many small, some medium, a few large enough that a segment holds only three.
fn payload_len(rng: &mut Rng) -> usize {
    match rng.range(0, 99) {
        0..=44 => rng.range(0, 48) as usize,
        45..=84 => rng.range(49, 700) as usize,
        _ => rng.range(1200, MAX_RECORD_BYTES as u64) as usize,
    }
}

fn policy(rng: &mut Rng) -> SyncPolicy {
    if rng.percent(40) {
        SyncPolicy::Always
    } else {
        SyncPolicy::Never
    }
}

fn kind(rng: &mut Rng) -> u8 {
    rng.range(1, 255) as u8
}

fn generate_workload(seed: u64) -> Vec<Op> {
    let mut rng = Rng(seed);
    let len = rng.range(25, 45);
    (0..len)
        .map(|_| match rng.range(0, 99) {
            0..=67 => {
                let len = payload_len(&mut rng);
                Op::Append {
                    kind: kind(&mut rng),
                    payload: payload(&mut rng, len),
                    policy: policy(&mut rng),
                }
            }
            68..=79 => {
                let n = rng.range(2, 5);
                let records = (0..n)
                    .map(|_| {
                        let len = rng.range(0, 600) as usize;
                        (kind(&mut rng), payload(&mut rng, len))
                    })
                    .collect();
                Op::Batch {
                    records,
                    policy: policy(&mut rng),
                }
            }
            80..=90 => Op::Sync,
            91..=95 => Op::TruncatePrefix {
                permille: rng.range(0, 1000),
            },
            _ => Op::TruncateSuffix { drop: rng.range(0, 6) },
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What a run promised, and the invariant a recovered log must satisfy
// ---------------------------------------------------------------------------------------------

/// What the appending process was told before the machine went down.
#[derive(Debug, Clone, Default)]
struct Promises {
    /// Every record whose append was attempted, at index LSN - 1 (cut by suffix truncations
    /// that returned).
    attempted: Vec<(u8, Vec<u8>)>,
    /// Records up to this LSN were acknowledged as durable.
    durable: Lsn,
    /// The largest `keep_from` of any prefix truncation attempted: records below it may be gone.
    may_drop_below: Lsn,
    /// The first retained LSN right after the last prefix truncation that returned.
    dropped_below: Lsn,
    /// A suffix truncation to this LSN was attempted but did not return.
    unfinished_cut: Option<Lsn>,
}

/// Applies one operation, recording what was attempted before the call and what was promised
/// after it. Stops at the first error: after it, the simulated machine is down.
fn apply(wal: &Wal, op: &Op, p: &mut Promises) -> engram_wal::Result<()> {
    match op {
        Op::Append { kind, payload, policy } => {
            p.attempted.push((*kind, payload.clone()));
            let lsn = wal.append_with(*kind, payload, *policy)?;
            assert_eq!(lsn, p.attempted.len() as Lsn, "LSNs are dense");
            if *policy == SyncPolicy::Always {
                p.durable = lsn;
            }
        }
        Op::Batch { records, policy } => {
            let first = p.attempted.len() as Lsn + 1;
            p.attempted.extend(records.iter().cloned());
            let refs: Vec<(u8, &[u8])> = records.iter().map(|(k, b)| (*k, b.as_slice())).collect();
            let lsns = wal.append_batch(&refs, *policy)?;
            assert_eq!(lsns, first..=p.attempted.len() as Lsn, "a batch gets consecutive LSNs");
            if *policy == SyncPolicy::Always {
                p.durable = *lsns.end();
            }
        }
        Op::Sync => {
            let upto = wal.sync()?;
            assert_eq!(upto, p.attempted.len() as Lsn, "sync covers every record appended");
            p.durable = upto;
        }
        Op::TruncatePrefix { permille } => {
            let keep_from = 1 + p.attempted.len() as Lsn * permille / 1000;
            p.may_drop_below = p.may_drop_below.max(keep_from);
            wal.truncate_prefix(keep_from)?;
            p.dropped_below = wal.first_lsn();
        }
        Op::TruncateSuffix { drop } => {
            let last_kept = (p.attempted.len() as Lsn).saturating_sub(*drop).max(wal.first_lsn() - 1);
            p.unfinished_cut = Some(last_kept);
            wal.truncate_suffix(last_kept)?;
            p.unfinished_cut = None;
            p.attempted.truncate(last_kept as usize);
            // The cut is durable, and so is everything it kept.
            p.durable = last_kept;
        }
    }
    Ok(())
}

/// Runs `ops` from a fresh open until the first error. Returns the promises made and the log
/// (if it opened), which the caller drops only after the crash.
fn run_workload(fs: &FaultStorage, ops: &[Op]) -> (Promises, Option<Wal>) {
    let mut promises = Promises::default();
    let Ok(wal) = open(fs) else { return (promises, None) };
    for op in ops {
        if apply(&wal, op, &mut promises).is_err() {
            break;
        }
        // Readers serve records up to `durable_lsn()`: that is an acknowledgement too.
        promises.durable = promises.durable.max(wal.durable_lsn());
    }
    (promises, Some(wal))
}

/// THE INVARIANT (see the module documentation), checked on a freshly recovered log. Also
/// checks that the log accepts an append afterwards, with the next LSN.
fn check_recovered(wal: &Wal, p: &Promises) -> Result<(), String> {
    let first = wal.first_lsn();
    let last = wal.last_lsn();
    if wal.durable_lsn() != last {
        return Err(format!("after recovery durable_lsn {} != last_lsn {last}", wal.durable_lsn()));
    }
    if wal.recovery_report().last_lsn != last {
        return Err(format!(
            "recovery report says last LSN {}, the log says {last}",
            wal.recovery_report().last_lsn
        ));
    }
    if last > p.attempted.len() as Lsn {
        return Err(format!(
            "the log ends at LSN {last}, but only {} records were appended and not cut away by a \
             suffix truncation that returned",
            p.attempted.len()
        ));
    }
    let required = match p.unfinished_cut {
        // The interrupted cut may have happened (then exactly `cut` records remain) or not.
        Some(cut) if last < p.durable && last != cut => {
            return Err(format!(
                "LSNs up to {} were acknowledged durable and a cut to {cut} was interrupted, \
                 but the log ends at {last} (neither cut nor intact)",
                p.durable
            ))
        }
        Some(cut) => p.durable.min(cut),
        None => p.durable,
    };
    if last < required {
        return Err(format!(
            "acknowledged-durable records are lost: durable up to {required}, log ends at {last}"
        ));
    }
    if first > p.may_drop_below.max(1) {
        return Err(format!(
            "the log starts at LSN {first}, but no prefix truncation asked to drop below {}",
            p.may_drop_below.max(1)
        ));
    }
    if first < p.dropped_below {
        return Err(format!(
            "a completed prefix truncation left the log at {}, yet after recovery it starts at {first}",
            p.dropped_below
        ));
    }
    if first > last + 1 {
        return Err(format!("first LSN {first} is beyond last LSN {last} + 1"));
    }
    let reader = wal.reader(first).map_err(|e| format!("reader({first}): {e}"))?;
    let mut expected_lsn = first;
    for record in reader {
        let record = record.map_err(|e| format!("reading LSN {expected_lsn}: {e}"))?;
        if record.lsn != expected_lsn {
            return Err(format!("LSNs are not dense: got {} where {expected_lsn} was expected", record.lsn));
        }
        let (kind, payload) = &p.attempted[(record.lsn - 1) as usize];
        if record.kind != *kind || record.payload != *payload {
            return Err(format!(
                "LSN {} differs from what was appended (kind {} vs {kind}, {} vs {} bytes)",
                record.lsn,
                record.kind,
                record.payload.len(),
                payload.len()
            ));
        }
        expected_lsn += 1;
    }
    if expected_lsn != last + 1 {
        return Err(format!("the reader stopped at LSN {expected_lsn}, the log ends at {last}"));
    }
    match wal.append(1, b"after recovery") {
        Ok(lsn) if lsn == last + 1 => Ok(()),
        Ok(lsn) => Err(format!("the first append after recovery got LSN {lsn}, expected {}", last + 1)),
        Err(e) => Err(format!("the first append after recovery failed: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Copies of a crashed file system, to crash its recovery at every step
// ---------------------------------------------------------------------------------------------

/// The files of a crashed file system (after `crash`, everything visible is durable).
type Image = Vec<(PathBuf, Vec<u8>)>;

#[derive(Debug, Default)]
struct Explored {
    workloads: u64,
    workload_mutations: u64,
    /// Power lost during a workload (or its open), then recovered and checked.
    crash_states: u64,
    /// Crash states whose recovery itself writes (repairs a torn tail, removes files, starts
    /// the first segment); each of those was crashed again at every step of that recovery.
    recoveries_that_write: u64,
    /// Power lost during a recovery, then recovered again and checked.
    recovery_crash_states: u64,
    /// Crash states that broke the invariant, with what went wrong.
    violations: Vec<String>,
}

/// Loses power during the recovery of `image` after each of its mutating calls in turn; the
/// next recovery must succeed and satisfy the invariant.
fn crash_during_recovery(image: &Image, promises: &Promises, recovery_mutations: u64, context: &str, explored: &mut Explored) {
    let base = FaultStorage::with_files(Path::new(DIR), image).mutation_count();
    for j in 0..recovery_mutations {
        let fs = FaultStorage::with_files(Path::new(DIR), image);
        fs.crash_after_mutations(base + j);
        let interrupted = open(&fs);
        let mode = if j % 2 == 0 {
            CrashMode::DropUnsynced
        } else {
            CrashMode::TearLastWrite { seed: j }
        };
        fs.crash(mode);
        drop(interrupted);
        explored.recovery_crash_states += 1;
        let outcome = open(&fs)
            .map_err(|e| format!("the second recovery failed: {e}"))
            .and_then(|wal| check_recovered(&wal, promises));
        if let Err(violation) = outcome {
            explored.violations.push(format!(
                "{context}, then power lost after {j} of the recovery's {recovery_mutations} mutations ({mode:?}): {violation}"
            ));
        }
    }
}

/// One crash state: runs `ops` with power lost after `k` mutations, recovers and checks; then
/// crashes that recovery at each of its steps, if it writes anything.
fn explore_crash_point(name: &str, ops: &[Op], k: u64, mode: CrashMode, explored: &mut Explored) {
    let fs = FaultStorage::new();
    fs.crash_after_mutations(k);
    let (promises, wal) = run_workload(&fs, ops);
    fs.crash(mode);
    drop(wal);
    explored.crash_states += 1;
    let context = format!("{name}, power lost after {k} mutations ({mode:?})");
    let image = fs.image();
    let before = fs.mutation_count();
    let wal = match open(&fs) {
        Ok(wal) => wal,
        Err(e) => {
            explored.violations.push(format!("{context}: recovery failed: {e}"));
            return;
        }
    };
    let recovery_mutations = fs.mutation_count() - before;
    if let Err(violation) = check_recovered(&wal, &promises) {
        explored.violations.push(format!("{context}: {violation}"));
    }
    drop(wal);
    if recovery_mutations > 0 {
        explored.recoveries_that_write += 1;
        crash_during_recovery(&image, &promises, recovery_mutations, &context, explored);
    }
}

/// Runs `ops` once to count its mutations N, then explores the crash states after k mutations
/// for every k in 0..=N, with the crash mode `crash_for(k)`.
fn explore_workload(name: &str, ops: &[Op], crash_for: impl Fn(u64) -> CrashMode, explored: &mut Explored) {
    let fs = FaultStorage::new();
    let (promises, wal) = run_workload(&fs, ops);
    let wal = wal.expect("the workload opens its log");
    assert_eq!(
        wal.last_lsn(),
        promises.attempted.len() as Lsn,
        "{name}: the fault-free run completes every operation"
    );
    drop(wal);
    let total = fs.mutation_count();
    explored.workloads += 1;
    explored.workload_mutations += total;
    for k in 0..=total {
        explore_crash_point(name, ops, k, crash_for(k), explored);
    }
}

/// Groups violations by their message with numbers blanked out: one line per kind.
fn summarize(violations: &[String]) -> String {
    let mut kinds: Vec<(String, usize, &String)> = Vec::new();
    for v in violations {
        let what = v.rsplit_once("): ").map_or(v.as_str(), |(_, what)| what);
        let shape: String = what
            .split_whitespace()
            .map(|w| if w.contains(|c: char| c.is_ascii_digit()) { "#" } else { w })
            .collect::<Vec<_>>()
            .join(" ");
        match kinds.iter_mut().find(|(s, _, _)| *s == shape) {
            Some((_, n, _)) => *n += 1,
            None => kinds.push((shape, 1, v)),
        }
    }
    kinds
        .iter()
        .map(|(_, n, first)| format!("{n:5} x {first}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints what was explored and fails with a summary of the violations, if any.
fn report(title: &str, explored: &Explored, started: Instant) {
    eprintln!(
        "{title}: {} workloads ({} mutations), {} crash states, {} recoveries that write and \
         {} crash states during them, {} violations, in {:.1?}",
        explored.workloads,
        explored.workload_mutations,
        explored.crash_states,
        explored.recoveries_that_write,
        explored.recovery_crash_states,
        explored.violations.len(),
        started.elapsed()
    );
    assert!(
        explored.violations.is_empty(),
        "{title}: {} of {} crash states break the invariant. By kind (count x first case):\n{}",
        explored.violations.len(),
        explored.crash_states + explored.recovery_crash_states,
        summarize(&explored.violations)
    );
}

/// Explores `ENGRAM_CRASH_WORKLOADS` generated workloads with the crash mode `crash_for(seed, k)`.
fn explore_generated(title: &str, crash_for: impl Fn(u64, u64) -> CrashMode) -> Explored {
    let started = Instant::now();
    let workloads = env_u64("ENGRAM_CRASH_WORKLOADS", DEFAULT_WORKLOADS);
    let first_seed = env_u64("ENGRAM_CRASH_SEED", 0x5eed_0000);
    let mut explored = Explored::default();
    for seed in first_seed..first_seed + workloads {
        let ops = generate_workload(seed);
        explore_workload(&format!("workload seed {seed:#x}"), &ops, |k| crash_for(seed, k), &mut explored);
    }
    report(title, &explored, started);
    assert_eq!(explored.workloads, workloads);
    assert!(
        explored.crash_states >= 50 * workloads,
        "too few crash states: {}",
        explored.crash_states
    );
    explored
}

/// Power loss: every unsynced write is lost.
#[test]
fn power_loss_at_every_io_step_and_again_during_recovery_keeps_every_acknowledged_record() {
    let explored = explore_generated("power loss", |_, _| CrashMode::DropUnsynced);
    assert!(explored.recovery_crash_states > 0, "some recoveries write, and were crashed");
}

/// Power loss where the last unsynced write partly reached the disk (cut at a 512-byte sector)
/// while earlier unsynced writes did not: page writeback and drive caches do not keep order.
#[test]
fn power_loss_tearing_the_last_write_at_every_io_step_keeps_every_acknowledged_record() {
    let explored = explore_generated("torn last write", |seed, k| CrashMode::TearLastWrite {
        seed: seed ^ k.rotate_left(32),
    });
    assert!(
        explored.recovery_crash_states > 0,
        "torn tails are repaired, and those repairs were crashed"
    );
}

// ---------------------------------------------------------------------------------------------
// Small hand-written workloads: the sharpest reproductions of what the sweeps above look for
// ---------------------------------------------------------------------------------------------

fn append(len: usize, policy: SyncPolicy) -> Op {
    let mut rng = Rng(len as u64);
    Op::Append {
        kind: 7,
        payload: payload(&mut rng, len),
        policy,
    }
}

fn explore_fixed(title: &str, ops: &[Op], modes: &[CrashMode]) {
    let started = Instant::now();
    let mut explored = Explored::default();
    for mode in modes {
        explore_workload(title, ops, |_| *mode, &mut explored);
    }
    report(title, &explored, started);
}

/// Two cuts in a row within one segment. The first cut's only durable trace is the header of
/// the segment it started; the second cut must not let the records the first one removed
/// come back, whatever step it stops at.
#[test]
fn a_completed_suffix_truncation_stays_cut_when_power_fails_during_the_next_one() {
    let mut ops: Vec<Op> = (0..6).map(|_| append(300, SyncPolicy::Always)).collect();
    ops.push(Op::TruncateSuffix { drop: 3 });
    ops.push(Op::TruncateSuffix { drop: 1 });
    explore_fixed("cut 6 -> 3 -> 2", &ops, &[CrashMode::DropUnsynced]);
}

/// A cut reaching back across a segment boundary: after a power loss the log holds either
/// every record (the cut did not happen) or exactly the kept ones, never something in between.
#[test]
fn an_interrupted_suffix_truncation_across_segments_happens_entirely_or_not_at_all() {
    let mut ops: Vec<Op> = (0..8).map(|_| append(1500, SyncPolicy::Always)).collect();
    ops.push(Op::TruncateSuffix { drop: 6 });
    explore_fixed("8 records in 2+ segments, cut -> 2", &ops, &[CrashMode::DropUnsynced]);
}

/// An unsynced append is lost while part of the batch written after it reached the disk: the
/// valid records beyond the gap were never acknowledged, so this is a torn tail to repair,
/// not corruption that stops the log from opening.
#[test]
fn a_torn_batch_after_a_lost_unsynced_append_is_repaired_as_a_torn_tail() {
    let batch = Op::Batch {
        records: (1..=4).map(|i| (i as u8, vec![i as u8; 300])).collect(),
        policy: SyncPolicy::Never,
    };
    let ops = [append(10, SyncPolicy::Always), append(100, SyncPolicy::Never), batch];
    let tears: Vec<CrashMode> = (0..8).map(|seed| CrashMode::TearLastWrite { seed }).collect();
    explore_fixed("durable append, unsynced append, unsynced batch", &ops, &tears);
}
