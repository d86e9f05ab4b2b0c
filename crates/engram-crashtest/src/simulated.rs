//! Workloads on the simulated file system (`engram_wal::storage::FaultStorage`) for the
//! power-loss, I/O-error and corruption campaigns: run a seeded workload until it ends or an
//! I/O call fails, and check a reopened database against what it acknowledged.

use crate::kill::{KillStats, Report, Verifier};
use crate::workload::{simulated_options, Mix, Workload};
use engram_core::{CoreError, Database, DatabaseOptions};
use engram_wal::storage::FaultStorage;
use std::sync::Arc;

/// Where the database lives inside the simulated file system.
pub const DIR: &str = "/db";

pub fn open(fs: &FaultStorage) -> engram_core::Result<Database> {
    open_with(fs, simulated_options())
}

pub fn open_with(fs: &FaultStorage, options: DatabaseOptions) -> engram_core::Result<Database> {
    Database::open_with_storage(Arc::new(fs.clone()), DIR, options)
}

/// How a workload run ended.
pub struct Run {
    pub report: Report,
    /// The first error (open, checkpoint or commit), which ended the run.
    pub error: Option<CoreError>,
    /// Where it came from: "open", "checkpoint" or "commit".
    pub failed_in: &'static str,
    /// The database, still open (after an error too), for callers that probe it further.
    pub db: Option<Database>,
    /// Log segments the run's checkpoints truncated.
    pub segments_removed: u64,
}

impl Run {
    pub fn failed_in_checkpoint(&self) -> bool {
        self.failed_in == "checkpoint"
    }
}

/// Runs `transactions` seeded transactions (and the checkpoints the mix draws) on `fs`,
/// numbered from `first_seq` in `report` (which may hold an earlier run's), stopping at the first
/// error. The transaction whose commit failed is the report's last, unacknowledged announcement.
pub fn run_workload(fs: &FaultStorage, seed: u64, mix: &Mix, transactions: u64) -> Run {
    continue_workload(fs, seed, mix, Report::default(), transactions)
}

pub fn continue_workload(fs: &FaultStorage, seed: u64, mix: &Mix, report: Report, transactions: u64) -> Run {
    continue_workload_with(fs, simulated_options(), seed, mix, report, transactions)
}

pub fn continue_workload_with(fs: &FaultStorage, options: DatabaseOptions, seed: u64, mix: &Mix, report: Report, transactions: u64) -> Run {
    let first_seq = report.tries.last().map_or(0, |t| t.0 + 1);
    let mut run = Run {
        report,
        error: None,
        failed_in: "",
        db: None,
        segments_removed: 0,
    };
    let db = match open_with(fs, options) {
        Ok(db) => db,
        Err(e) => {
            run.error = Some(e);
            run.failed_in = "open";
            return run;
        }
    };
    run.report.ready = true;
    let mut workload = Workload::new(seed, mix.clone());
    let db = run.db.insert(db);
    for seq in first_seq..first_seq + transactions {
        if workload.wants_checkpoint() {
            match db.checkpoint() {
                Ok(report) => run.segments_removed += report.log_segments_removed as u64,
                Err(e) => {
                    run.error = Some(e);
                    run.failed_in = "checkpoint";
                    return run;
                }
            }
            run.report.checkpoints += 1;
        }
        // Preparing only reads memory: it cannot meet an I/O fault.
        let prepared = workload.prepare(db).expect("reads of a running database do not fail");
        run.report.tries.push((seq, prepared.effects.clone()));
        match workload.commit(prepared) {
            Ok((info, effects)) => run.report.acks.push((seq, info.txn_id, info.lsn, effects.digest())),
            Err(e) => {
                run.error = Some(e);
                run.failed_in = "commit";
                return run;
            }
        }
    }
    run
}

/// Opens `fs` and checks the database against `report` (starting from an empty database).
pub fn verify(fs: &FaultStorage, report: &Report) -> Result<KillStats, String> {
    verify_with(fs, simulated_options(), report)
}

pub fn verify_with(fs: &FaultStorage, options: DatabaseOptions, report: &Report) -> Result<KillStats, String> {
    let db = open_with(fs, options).map_err(|e| format!("reopen failed: {e}"))?;
    let mut stats = KillStats::default();
    Verifier::default().check(&db, report, &mut stats)?;
    Ok(stats)
}

/// Every file of a simulated file system with its bytes (`FaultStorage::image`).
pub type Image = Vec<(std::path::PathBuf, Vec<u8>)>;

/// A new simulated file system holding `image`, every file and name durable (its directories
/// included, which `FaultStorage::with_files` does not create).
pub fn restore(image: &[(std::path::PathBuf, Vec<u8>)]) -> FaultStorage {
    use engram_wal::storage::{OpenMode, Storage};
    let fs = FaultStorage::new();
    let mut dirs = std::collections::BTreeSet::new();
    fs.create_dir_all(std::path::Path::new(DIR))
        .expect("a fresh file system accepts a directory");
    for (path, bytes) in image {
        let parent = path.parent().expect("files live in directories");
        fs.create_dir_all(parent).expect("a fresh file system accepts a directory");
        let file = fs.open(path, OpenMode::CreateNew).expect("a fresh file system accepts a file");
        file.write_all_at(bytes, 0).expect("no faults are set");
        file.sync_data().expect("no faults are set");
        dirs.insert(parent.to_path_buf());
    }
    for dir in dirs {
        fs.sync_dir(&dir).expect("no faults are set");
    }
    fs
}
