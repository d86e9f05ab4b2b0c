//! The workload process of the kill campaign: opens a real database in a directory and commits
//! seeded random transactions until it is killed. Before each commit it prints the transaction's
//! expected effect (`TRY <seq> <json>`), and as soon as the commit returns, its acknowledgement
//! (`ACK <seq> <txn id> <LSN> <digest>`; `NACK <seq>` for a commit refused, changing nothing,
//! with a retryable conflict), each line flushed at once, so the harness learns of
//! every acknowledged commit the moment the caller would have.
//!
//! Usage: crash-workload <dir> <seed> <mix>

use engram_core::{CoreError, Database};
use engram_crashtest::workload::{database_options, Workload};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, seed, mix] = args.as_slice() else {
        eprintln!("usage: crash-workload <dir> <seed> <mix>");
        return ExitCode::from(2);
    };
    let (Ok(seed), Ok(mix)) = (seed.parse::<u64>(), mix.parse()) else {
        eprintln!("bad seed or mix");
        return ExitCode::from(2);
    };
    match run(dir, seed, mix) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash-workload: {e}");
            ExitCode::from(1)
        }
    }
}

fn emit(out: &mut std::io::StdoutLock<'_>, line: String) -> Result<(), String> {
    // One write per line: lines are short of PIPE_BUF or, if longer, a torn last line has no
    // newline and the harness ignores it.
    out.write_all(format!("{line}\n").as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}

fn run(dir: &str, seed: u64, mix: engram_crashtest::workload::Mix) -> Result<(), String> {
    let db = Database::open(dir, database_options(true)).map_err(|e| format!("open: {e}"))?;
    let mut out = std::io::stdout().lock();
    emit(&mut out, format!("READY {}", db.visible_lsn()))?;
    let mut workload = Workload::new(seed, mix);
    for seq in 0u64.. {
        if workload.wants_checkpoint() {
            let report = db.checkpoint().map_err(|e| format!("checkpoint: {e}"))?;
            emit(&mut out, format!("CHECKPOINT {}", report.lsn))?;
        }
        // A background checkpoint may prune the history a transaction reads (bounded retention):
        // it fails with HistoryNotRetained, or at commit with a retryable Conflict; then the
        // work is redone on a new snapshot, as an application would.
        let prepared = match workload.prepare(&db) {
            Ok(p) => p,
            Err(CoreError::HistoryNotRetained { .. }) => continue,
            Err(e) => return Err(format!("prepare: {e}")),
        };
        emit(&mut out, format!("TRY {seq} {}", prepared.effects.to_json()))?;
        match workload.commit(prepared) {
            Ok((info, effects)) => emit(
                &mut out,
                format!("ACK {seq} {} {} {:016x}", info.txn_id, info.lsn, effects.digest()),
            )?,
            Err(e) if e.is_conflict() => emit(&mut out, format!("NACK {seq}"))?,
            Err(e) => return Err(format!("commit: {e}")),
        }
    }
    Ok(())
}
