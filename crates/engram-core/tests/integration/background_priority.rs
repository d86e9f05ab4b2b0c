//! The background threads (search indexer, checkpointer) run at a lower priority than the
//! threads that commit and read, so that on a busy machine acknowledgements win the CPU.
#![cfg(target_os = "linux")]

use engram_core::{Database, DatabaseOptions};

/// Nice value of each thread of this process with the given name (from /proc/self/task).
/// Other tests of this binary open databases too: their threads come and go meanwhile, so a
/// thread that exits between the listing and the read is skipped.
fn nice_of_threads_named(name: &str) -> Vec<i64> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state is field 3, nice is field 19.
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i64 = after_comm.split(' ').nth(16).unwrap().parse().unwrap();
        found.push(nice);
    }
    found
}

fn own_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(16).unwrap().parse().unwrap()
}

#[test]
fn indexer_and_checkpointer_run_at_the_configured_nice_value() {
    assert!(
        DatabaseOptions::default().background_thread_nice > 0,
        "background threads yield by default"
    );
    // A value no other test uses, so that this database's threads are told apart from those of
    // databases other tests of this binary open at the same time.
    let configured_nice = 13;
    let options = DatabaseOptions {
        background_thread_nice: configured_nice,
        ..DatabaseOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options).unwrap();
    // A thread cannot raise its priority above its process's (nice is only ever raised here).
    let expected = own_nice().max(i64::from(configured_nice));
    // The threads set their priority as they start; give them a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (indexer, checkpointer) = (nice_of_threads_named("engram-indexer"), nice_of_threads_named("engram-checkpoi"));
        if indexer.contains(&expected) && checkpointer.contains(&expected) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "indexers {indexer:?}, checkpointers {checkpointer:?}, expected one of each at {expected}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(db);
}
