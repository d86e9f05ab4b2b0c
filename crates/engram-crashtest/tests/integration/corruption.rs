//! Corruption sweep through the whole database: a reference database on the simulated file
//! system (several log segments and two checkpoints, the log covering both) is damaged one byte
//! at a time — a bit flipped, the byte zeroed, a random value — in every log segment and every
//! checkpoint file, and opened. Each damaged database must either refuse to open with a
//! corruption error that names the damaged file, or open to a state that was really committed:
//! every acknowledged commit (falling back to the older checkpoint if the newer one is damaged),
//! or — only for damage in the last record of the last segment, a torn tail — all but the last.
//! Its change feed must agree. Never a panic.
//!
//! `ENGRAM_CORRUPTION_STRIDE` (default 61) damages every n-th byte; 1 sweeps every byte;
//! `ENGRAM_PROGRESS` prints the outcomes after each file (for long runs).

use engram_core::{CheckpointOptions, Database, DatabaseOptions, WalOptions};
use engram_crashtest::kill::{KillStats, Report, Verifier};
use engram_crashtest::rng::Rng;
use engram_crashtest::simulated::{continue_workload_with, open_with, restore, Image};
use engram_crashtest::state::{read_state, Flat};
use engram_crashtest::workload::Mix;
use engram_wal::storage::FaultStorage;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

fn options() -> DatabaseOptions {
    DatabaseOptions {
        wal: WalOptions {
            segment_bytes: 8 * 1024,
            max_record_bytes: 4 * 1024,
            background_preallocation: false,
            ..Default::default()
        },
        checkpoint: CheckpointOptions {
            // The log keeps everything, so a damaged newer checkpoint can fall back.
            retain_log_records: 1_000_000,
            ..CheckpointOptions::on_demand()
        },
        ..Default::default()
    }
}

/// Builds the reference: 60 transactions, a checkpoint, 30 more, a checkpoint, 12 more.
fn reference() -> (Image, Report) {
    let fs = FaultStorage::new();
    let mix: Mix = "memory=3,graph=3,kv=3,event=1,checkpoint=0,big=0".parse().unwrap();
    let mut report = Report::default();
    for (seed, transactions, checkpoint) in [(11, 60, true), (12, 30, true), (13, 12, false)] {
        let mut run = continue_workload_with(&fs, options(), seed, &mix, report, transactions);
        assert!(run.error.is_none(), "{:?}", run.error);
        let db = run.db.take().unwrap();
        if checkpoint {
            db.checkpoint().unwrap();
        }
        report = run.report;
    }
    let image: Image = fs
        .image()
        .into_iter()
        .filter(|(p, b)| !b.is_empty() && !p.ends_with("LOCK"))
        .collect();
    let segments = image.iter().filter(|(p, _)| p.to_string_lossy().contains("/wal/")).count();
    let checkpoints = image.iter().filter(|(p, _)| p.to_string_lossy().contains("/checkpoints/")).count();
    let listing: Vec<String> = image.iter().map(|(p, b)| format!("{} {}", p.display(), b.len())).collect();
    assert!(
        segments >= 3 && checkpoints == 2,
        "reference has {segments} segments and {checkpoints} checkpoints: {listing:?}"
    );
    (image, report)
}

/// The state after each acknowledged commit (index 0: empty).
fn prefix_states(report: &Report) -> Vec<Flat> {
    let mut states = vec![Flat::new()];
    for (seq, ..) in &report.acks {
        let effects = &report.tries.iter().find(|t| t.0 == *seq).unwrap().1;
        let mut next = states.last().unwrap().clone();
        effects.apply_to(&mut next);
        states.push(next);
    }
    states
}

fn truncated(report: &Report, acks: usize) -> Report {
    let acks: Vec<_> = report.acks[..acks].to_vec();
    let last_seq = acks.last().map(|a| a.0);
    let tries = report
        .tries
        .iter()
        .filter(|t| last_seq.is_some_and(|s| t.0 <= s))
        .cloned()
        .collect();
    Report {
        tries,
        acks,
        ..report.clone()
    }
}

#[derive(Debug, Default)]
struct Outcomes {
    damaged: u64,
    refused: BTreeMap<String, u64>,
    opened_complete: u64,
    opened_after_checkpoint_fallback: u64,
    torn_tail_truncated: u64,
}

/// What a damaged database did; `Err` is a violation.
fn check(
    db: Result<Database, engram_core::CoreError>,
    file: &str,
    last_segment: bool,
    states: &[Flat],
    report: &Report,
    o: &mut Outcomes,
) -> Result<(), String> {
    let db = match db {
        Err(e) => {
            let text = e.to_string();
            if !text.contains(file) {
                return Err(format!("refused without naming the damaged file: {text}"));
            }
            let class = format!("{e:?}").split([' ', '(', '{']).next().unwrap_or("").to_string();
            *o.refused.entry(class).or_default() += 1;
            return Ok(());
        }
        Ok(db) => db,
    };
    let state = read_state(&db.snapshot()).map_err(|e| format!("reads failed after open: {e}"))?;
    let n = states.len() - 1;
    let kept = if state == states[n] {
        n
    } else if state == states[n - 1] && last_segment {
        o.torn_tail_truncated += 1;
        n - 1
    } else {
        let matches: Vec<usize> = (0..=n).filter(|&k| states[k] == state).collect();
        return Err(format!(
            "opened to a state that is not the committed one (it equals the states after {matches:?} of {n} commits)"
        ));
    };
    if kept == n {
        if db.open_report().rejected_checkpoints.is_empty() {
            o.opened_complete += 1;
        } else {
            o.opened_after_checkpoint_fallback += 1;
        }
    }
    Verifier::default().check(&db, &truncated(report, kept), &mut KillStats::default())
}

#[test]
fn every_damaged_byte_of_log_and_checkpoints_is_detected_or_harmless_and_never_served() {
    let stride: usize = std::env::var("ENGRAM_CORRUPTION_STRIDE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(61)
        .max(1);
    let started = Instant::now();
    let (image, report) = reference();
    let states = prefix_states(&report);
    let last_segment = image
        .iter()
        .filter(|(p, _)| p.to_string_lossy().contains("/wal/"))
        .map(|(p, _)| p.clone())
        .max()
        .unwrap();
    let mut rng = Rng::new(0xc0de);
    let mut by_file: BTreeMap<String, Outcomes> = BTreeMap::new();
    for (index, (path, bytes)) in image.iter().enumerate() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let kind = if path.to_string_lossy().contains("/wal/") {
            "log segment"
        } else {
            "checkpoint"
        };
        let o = by_file.entry(format!("{kind} {name} ({} bytes)", bytes.len())).or_default();
        for offset in (index % stride..bytes.len()).step_by(stride) {
            for damage in ["flip", "zero", "random"] {
                let mut damaged = image.clone();
                let byte = &mut damaged[index].1[offset];
                let original = *byte;
                *byte = match damage {
                    "flip" => original ^ (1 << (offset % 8)),
                    "zero" => 0,
                    _ => original ^ (1 + rng.below(255) as u8),
                };
                if *byte == original {
                    continue;
                }
                o.damaged += 1;
                let fs = restore(&damaged);
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    check(open_with(&fs, options()), &name, *path == last_segment, &states, &report, o)
                }));
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("{kind} {name}, byte {offset} ({damage}, {original:#04x}): {e}"),
                    Err(_) => panic!("{kind} {name}, byte {offset} ({damage}, {original:#04x}): panicked"),
                }
            }
        }
        if std::env::var_os("ENGRAM_PROGRESS").is_some() {
            eprintln!("[corruption] {kind} {name}: {o:?}, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    let mut total = 0;
    for (file, o) in &by_file {
        total += o.damaged;
        println!("{file}: {o:?}");
    }
    println!(
        "corruption sweep, stride {stride}: {total} damaged databases, 0 violations, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
