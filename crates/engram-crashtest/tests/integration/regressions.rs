//! Bugs the campaigns found, each kept as the smallest test that shows it.

use engram_core::CoreError;
use engram_crashtest::simulated::{open, run_workload, verify};
use engram_crashtest::workload::Mix;
use engram_wal::storage::{FaultKind, FaultStorage, OpKind};

/// Found by `io_errors`: an I/O error opening or reading the newest checkpoint made open skip it
/// as if it were damaged; when the older checkpoint failed the same way (or the log no longer
/// covered it), open reported `MissingCheckpoint` — data loss, to an operator — for what was a
/// transient EIO. Only a checkpoint that fails verification may be skipped.
#[test]
fn regression_an_io_error_on_a_checkpoint_is_reported_as_io_not_as_a_missing_checkpoint() {
    let fs = FaultStorage::new();
    let mix: Mix = "kv=1,checkpoint=1,big=1".parse().unwrap();
    let mut run = run_workload(&fs, 3, &mix, 40);
    drop(run.db.take());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(run.report.checkpoints >= 2, "the workload must leave checkpoints");

    for persistent in [false, true] {
        fs.fail_on_path(OpKind::Open, "/checkpoints/", 1, persistent, FaultKind::Io);
        match open(&fs) {
            Err(CoreError::Io { .. }) => {}
            Err(other) => panic!("persistent: {persistent}: an I/O error on a checkpoint reported as {other:?}"),
            Ok(db) => panic!(
                "persistent: {persistent}: open skipped an unreadable checkpoint (loaded {:?})",
                db.open_report()
            ),
        }
        fs.clear_faults();
        verify(&fs, &run.report).unwrap();
    }
}
