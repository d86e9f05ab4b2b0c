//! Engram against the stores agents use today, on one machine in one run.
//!
//! `peers commit --round N --out FILE`  durable one-memory transactions, every peer, 1/4/16/64 writers
//! `peers recovery --out FILE`          Engram open time after ~1 GB of log, and after a checkpoint + 100 MB
//! `peers reads --out FILE`             get-by-id from 2 threads while 64 writers commit (Engram only)
//! `peers vectors --data DIR --rows N`  Engram's vector search on vectors.py's data set (driven by vectors.py;
//!                                      `--out FILE` sweeps alone; see vectors.rs)
//!
//! ENGRAM_BENCH_QUICK=1 shortens every workload; ENGRAM_BENCH_DIR sets the scratch directory (it
//! must be on the disk being measured); ENGRAM_BENCH_PG is the PostgreSQL connection string.
//! bench/run.sh runs all of it; see bench/README.md.

mod commit;
mod measure;
mod peers;
mod reads;
mod recovery;
mod vecfile;
mod vectors;
mod workload;

use std::path::PathBuf;

fn scratch_dir() -> PathBuf {
    std::env::var_os("ENGRAM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().expect("current directory").join("scratch"))
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn write_json(path: &str, value: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("writing {path}: {e}"))
}

/// The `engram` binary's allocator (docs/architecture.md, *Allocator*). The Rust peers in this
/// process (redb, fjall) allocate from it too; SQLite, RocksDB and libpq allocate with the C
/// library's malloc, tuned below as before.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // glibc's malloc, which the C and C++ peers use: engram_core::tune_allocator.
    engram_core::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let command = args.get(1).map(String::as_str).unwrap_or("");
    let out = flag(&args, "--out");
    let result = match (command, out) {
        ("commit", Some(out)) => {
            let round: u32 = flag(&args, "--round").and_then(|r| r.parse().ok()).unwrap_or(1);
            commit::run(&scratch_dir(), round).and_then(|v| write_json(&out, &v))
        }
        ("recovery", Some(out)) => recovery::run(&scratch_dir()).and_then(|v| write_json(&out, &v)),
        ("reads", Some(out)) => reads::run(&scratch_dir()).and_then(|v| write_json(&out, &v)),
        ("recovery-open", _) => recovery::open_child(&args),
        ("vectors", _) => vectors::run(&args, &scratch_dir()),
        _ => Err(
            "usage: peers (commit --round N | recovery | reads) --out FILE.json | peers vectors --data DIR --rows N [--out FILE.json]"
                .into(),
        ),
    };
    if let Err(e) = result {
        eprintln!("peers: {e}");
        std::process::exit(1);
    }
}
