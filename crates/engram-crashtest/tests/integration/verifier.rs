//! The checker the campaigns rely on must itself catch what it claims to: a lost acknowledged
//! commit, a commit nobody acknowledged or announced, and a commit with different contents.

use engram_crashtest::simulated::{run_workload, verify};
use engram_crashtest::state::Effects;
use engram_crashtest::workload::Mix;
use engram_wal::storage::FaultStorage;
use serde_json::json;

fn honest() -> (FaultStorage, engram_crashtest::kill::Report) {
    let fs = FaultStorage::new();
    let mix: Mix = "memory=2,graph=2,kv=2,event=1,checkpoint=0,big=0".parse().unwrap();
    let mut run = run_workload(&fs, 5, &mix, 8);
    drop(run.db.take());
    assert!(run.error.is_none());
    (fs, run.report)
}

#[test]
fn the_verifier_accepts_the_truth() {
    let (fs, report) = honest();
    let stats = verify(&fs, &report).unwrap();
    assert_eq!(stats.acknowledged as usize, report.acks.iter().filter(|a| a.1 != 0).count());
}

#[test]
fn the_verifier_catches_a_lost_acknowledged_commit() {
    let (fs, mut report) = honest();
    let (_, _, last_lsn, _) = *report.acks.last().unwrap();
    let mut effects = Effects::default();
    effects.changes.insert("kv|agent|never-written".into(), Some(json!({ "json": 1 })));
    report.tries.push((1000, effects.clone()));
    report.acks.push((1000, 999, last_lsn + 1, effects.digest()));
    assert!(verify(&fs, &report).is_err());
}

#[test]
fn the_verifier_catches_a_commit_nobody_announced() {
    let (fs, mut report) = honest();
    let (seq, ..) = report.acks.pop().unwrap();
    report.tries.retain(|t| t.0 != seq);
    assert!(verify(&fs, &report).is_err());
}

#[test]
fn the_verifier_catches_different_contents() {
    let (fs, mut report) = honest();
    let (seq, ..) = *report.acks.last().unwrap();
    let effects = &mut report.tries.iter_mut().find(|t| t.0 == seq).unwrap().1;
    effects.changes.insert("kv|team|extra".into(), Some(json!({ "json": 2 })));
    let digest = effects.digest();
    report.acks.last_mut().unwrap().3 = digest;
    assert!(verify(&fs, &report).is_err());
}
