//! The process-kill campaign as a test: `ENGRAM_KILLS` kills (default 200) of a workload process
//! committing seeded random transactions to a real directory, each followed by a reopen checked
//! against what the process acknowledged (see `engram_crashtest::kill`). `ENGRAM_KILL_SEED`
//! replays a campaign.

use engram_crashtest::kill::{run_campaign, KillConfig};
use engram_crashtest::workload::Mix;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn every_acknowledged_commit_survives_sigkill_and_nothing_is_half_applied() {
    let dir = tempfile::tempdir().unwrap();
    let config = KillConfig {
        seed: env_u64("ENGRAM_KILL_SEED", 0x6b11),
        kills: env_u64("ENGRAM_KILLS", 200),
        mix: Mix::default(),
        dir: dir.path().join("db"),
        workload_bin: env!("CARGO_BIN_EXE_crash-workload").into(),
        max_delay_ms: 200,
        progress_every: 0,
    };
    let stats = run_campaign(&config).unwrap_or_else(|e| panic!("{e}"));
    println!("kill campaign: {stats}");
    assert_eq!(stats.kills, config.kills);
    // A campaign that never got a commit acknowledged, or never interrupted one, proved nothing.
    assert!(stats.acknowledged > stats.kills, "{stats}");
    assert!(stats.in_flight_present + stats.in_flight_absent > 0, "{stats}");
}
