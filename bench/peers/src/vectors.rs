//! Workload 3, Engram's side: the data set `bench/vectors.py` writes (base, queries, exact top-100
//! by squared L2) loaded as memories through the public engram-core API, then single-thread
//! vector searches at the peers' search widths, scored against the same ground truth.
//!
//! Two ways to run it:
//! - `peers vectors --data DIR --rows N` (what vectors.py does): builds, prints one JSON line
//!   describing the build, then answers commands on stdin, one JSON line each:
//!   `search EF` runs one pass over every query at that ef; `quit` (or end of input) removes the
//!   database and exits. vectors.py interleaves these passes with faiss's and hnswlib's, so a
//!   burst of load from elsewhere on the machine hits every peer alike.
//! - `peers vectors --data DIR --rows N --out FILE [--ef 10,32,128] [--passes 3] [--keep]`:
//!   builds (or, with `--keep`, reuses a database a previous `--keep` run left), sweeps the ef
//!   values by itself, fastest of `--passes`, and writes the peer's JSON (for profiling).

use crate::vecfile::{read_fvecs, read_ivecs, Rows};
use engram_core::{Database, DatabaseOptions, Memory, Metric, NewMemory, SearchMode, SearchReads, SearchRequest, Snapshot, SyncPolicy};
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "bench-vectors";
const DIMENSION: usize = 384;
const QUERIES: usize = 1000;
const TRUTH_WIDTH: usize = 100;
const K: usize = 10;
const MEMORIES_PER_TRANSACTION: usize = 1000;
/// The graph parameters engram-core builds with (crates/engram-core/src/search/hnsw.rs,
/// `DEFAULT_M` and `DEFAULT_EF_CONSTRUCTION`, and the codes and re-scoring of codes.rs and
/// index.rs `rerank_count`; not configurable through the public API). Only
/// printed in the settings, so a reader can compare them with the peers' M=32, efConstruction=200.
const ENGRAM_GRAPH: &str = "M=32 (64 links on level 0), ef_construction=128, nodes hold int8 codes (one scale per vector), \
     the best max(2k, 32) of the ef candidates re-scored with the exact f32 distance from each memory's embedding";
const DEFAULT_EF: [usize; 7] = [10, 16, 32, 64, 128, 256, 512];
/// How long a build may take to reach the index before the run is abandoned.
const INDEX_WAIT: Duration = Duration::from_secs(3600);

fn text_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

struct DataSet {
    base: Rows<f32>,
    queries: Rows<f32>,
    /// The exact 10 nearest base rows of each query.
    truth: Vec<HashSet<u32>>,
}

fn load(data: &Path, rows: usize) -> Result<DataSet, String> {
    let base = read_fvecs(&data.join(format!("base-{rows}x{DIMENSION}.fvecs")))?;
    let queries = read_fvecs(&data.join(format!("queries-{QUERIES}x{DIMENSION}.fvecs")))?;
    let truth = read_ivecs(&data.join(format!("groundtruth-{rows}-{QUERIES}x{TRUTH_WIDTH}.ivecs")))?;
    for (what, set, want_rows, want_width) in [
        ("base", (base.len(), base.width), rows, DIMENSION),
        ("queries", (queries.len(), queries.width), QUERIES, DIMENSION),
        ("ground truth", (truth.len(), truth.width), QUERIES, TRUTH_WIDTH),
    ] {
        if set != (want_rows, want_width) {
            return Err(format!(
                "{what}: {} rows of {}, expected {want_rows} of {want_width} (regenerate with vectors.py --generate-only)",
                set.0, set.1
            ));
        }
    }
    let truth = (0..truth.len())
        .map(|q| {
            truth.row(q)[..K]
                .iter()
                .map(|&id| {
                    u32::try_from(id)
                        .ok()
                        .filter(|&id| (id as usize) < rows)
                        .ok_or(format!("ground truth row {q} names base row {id}"))
                })
                .collect::<Result<HashSet<u32>, String>>()
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(DataSet { base, queries, truth })
}

/// What the build measured, printed as the first JSON line and folded into the peer's JSON.
struct Built {
    db: Database,
    figures: serde_json::Value,
}

fn open_options() -> DatabaseOptions {
    // The defaults: durable commits (fdatasync before acknowledging), background checkpoints.
    DatabaseOptions::default()
}

fn build(dir: &Path, data: &DataSet) -> Result<Built, String> {
    let _ = std::fs::remove_dir_all(dir);
    let db = Database::open(dir, open_options()).map_err(text_err)?;
    db.run(1, |t| t.declare_vector_space(NAMESPACE, DIMENSION, Metric::L2))
        .map_err(text_err)?;
    let started = Instant::now();
    let mut last_lsn = 0;
    for first in (0..data.base.len()).step_by(MEMORIES_PER_TRANSACTION) {
        let mut txn = db.begin();
        txn.set_durability(SyncPolicy::Always);
        for row in first..(first + MEMORIES_PER_TRANSACTION).min(data.base.len()) {
            let memory = NewMemory {
                text: format!("base row {row}"),
                embedding: Some(data.base.row(row).to_vec()),
                metadata: serde_json::json!({ "row": row }),
            };
            txn.insert_memory(NAMESPACE, memory).map_err(text_err)?;
        }
        last_lsn = txn.commit().map_err(text_err)?.lsn;
    }
    let commit_s = started.elapsed().as_secs_f64();
    db.wait_for_index(last_lsn, INDEX_WAIT).map_err(text_err)?;
    let build_s = started.elapsed().as_secs_f64();
    // Saves the graph, so a `--keep` run reopens without rebuilding it, and leaves no log bytes
    // behind that could trigger a background checkpoint during the searches.
    let checkpoint_started = Instant::now();
    db.checkpoint().map_err(text_err)?;
    let checkpoint_s = checkpoint_started.elapsed().as_secs_f64();
    let figures = serde_json::json!({
        "build_s": build_s,
        "commit_s": commit_s,
        "checkpoint_s": checkpoint_s,
    });
    Ok(Built { db, figures })
}

/// Reopens a database a `--keep` run left, if it holds exactly the data set's rows.
fn reopen(dir: &Path, rows: usize) -> Result<Option<Built>, String> {
    if !dir.exists() {
        return Ok(None);
    }
    let started = Instant::now();
    let db = Database::open(dir, open_options()).map_err(text_err)?;
    db.wait_for_index(db.visible_lsn(), INDEX_WAIT).map_err(text_err)?;
    if db.index_stats().vectors != rows || db.metric(NAMESPACE) != Metric::L2 {
        return Ok(None);
    }
    let figures = serde_json::json!({ "reopened_s": started.elapsed().as_secs_f64() });
    Ok(Some(Built { db, figures }))
}

fn describe(built: &Built) -> serde_json::Value {
    let stats = built.db.index_stats();
    let mut figures = built.figures.clone();
    figures["index_heap_bytes"] = stats.heap_bytes.into();
    figures["index_vectors"] = stats.vectors.into();
    figures["index_origin"] = format!("{:?}", stats.origin).into();
    figures["settings"] = format!(
        "engram-core {} embedded: Database::open with DatabaseOptions::default() (fdatasync before every acknowledgement, background checkpoints); \
         declare_vector_space({DIMENSION}, L2); each base row one memory (text \"base row i\", metadata {{\"row\": i}}, the embedding) in durable transactions of {MEMORIES_PER_TRANSACTION}; \
         build = commits + wait_for_index (the indexer plans the graph searches of queued vectors on as many threads as cores, up to 4, and links them on one; graph {ENGRAM_GRAPH}, fixed in engram-core), then one explicit checkpoint (not in the build time); \
         search: one Snapshot::search_refs(SearchRequest {{ mode: vector, k: {K}, ef_search: ef }}) per query on one thread, each hit sharing its memory (text, metadata, embedding) with the database instead of copying it, \
         memory row read from the hit's metadata",
        env!("CARGO_PKG_VERSION")
    )
    .into();
    figures
}

/// One pass over every query at `ef`: the seconds it took and recall@10.
fn pass(snapshot: &Snapshot, data: &DataSet, ef: usize) -> Result<(f64, f64), String> {
    // The requests own their query vectors: built before the clock starts.
    let requests: Vec<SearchRequest> = (0..data.queries.len())
        .map(|q| SearchRequest {
            namespace: NAMESPACE.into(),
            text: None,
            vector: Some(data.queries.row(q).to_vec()),
            k: K,
            mode: SearchMode::Vector,
            filter: None,
            ef_search: Some(ef),
        })
        .collect();
    let mut found: Vec<Vec<u32>> = Vec::with_capacity(requests.len());
    let started = Instant::now();
    for request in &requests {
        // Shared hits: an agent reading its top 10 looks at their text and metadata; copying
        // each memory out, embedding included, is for callers who keep or modify them.
        let hits = snapshot.search_refs(request).map_err(text_err)?;
        found.push(hits.iter().map(|h| row_of(&h.memory)).collect::<Result<_, _>>()?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let hits: usize = found
        .iter()
        .zip(&data.truth)
        .map(|(rows, truth)| rows.iter().filter(|r| truth.contains(r)).count())
        .sum();
    Ok((seconds, hits as f64 / (data.truth.len() * K) as f64))
}

fn row_of(memory: &Memory) -> Result<u32, String> {
    memory
        .metadata
        .get("row")
        .and_then(serde_json::Value::as_u64)
        .and_then(|r| u32::try_from(r).ok())
        .ok_or_else(|| format!("memory {} has no row in its metadata", memory.id))
}

fn emit(out: &mut impl Write, value: &serde_json::Value) -> Result<(), String> {
    writeln!(out, "{value}").and_then(|_| out.flush()).map_err(text_err)
}

/// The stdin/stdout protocol vectors.py drives (module docs).
fn serve(built: &Built, data: &DataSet) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    emit(&mut stdout, &describe(built))?;
    let snapshot = built.db.snapshot();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(text_err)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["search", ef] => {
                let ef: usize = ef.parse().map_err(|_| format!("search: bad ef {ef:?}"))?;
                let (seconds, recall) = pass(&snapshot, data, ef)?;
                emit(
                    &mut stdout,
                    &serde_json::json!({ "ef": ef, "recall_at_10": recall, "seconds": seconds }),
                )?;
            }
            ["quit"] => break,
            [] => {}
            _ => return Err(format!("unknown command {line:?} (expected `search EF` or `quit`)")),
        }
    }
    Ok(())
}

/// Sweeps the ef values alone, fastest of `passes` each, and returns the peer's JSON.
fn sweep(built: &Built, data: &DataSet, efs: &[usize], passes: usize) -> Result<serde_json::Value, String> {
    let snapshot = built.db.snapshot();
    let mut points = Vec::new();
    for &ef in efs {
        let mut best = f64::INFINITY;
        let mut recall = 0.0;
        for _ in 0..passes.max(1) {
            let (seconds, r) = pass(&snapshot, data, ef)?;
            best = best.min(seconds);
            recall = r;
        }
        let qps = data.queries.len() as f64 / best;
        eprintln!("engram  ef={ef:<4} recall@10={recall:.4} {qps:.0} q/s");
        points.push(serde_json::json!({ "ef": ef, "recall_at_10": recall, "queries_per_second": qps }));
    }
    let mut peer = describe(built);
    peer["peer"] = "engram".into();
    peer["points"] = points.into();
    Ok(peer)
}

pub fn run(args: &[String], scratch: &Path) -> Result<(), String> {
    let flag = |name| crate::flag(args, name);
    let data = PathBuf::from(flag("--data").ok_or("vectors: --data DIR is required")?);
    let rows: usize = flag("--rows")
        .unwrap_or_else(|| "100000".into())
        .parse()
        .map_err(|_| "vectors: bad --rows")?;
    let keep = args.iter().any(|a| a == "--keep");
    let dir = scratch.join("engram-vectors");
    let set = load(&data, rows)?;
    let reused = if keep { reopen(&dir, rows)? } else { None };
    let built = match reused {
        Some(built) => built,
        None => build(&dir, &set)?,
    };
    let result = match flag("--out") {
        None => serve(&built, &set),
        Some(out) => {
            let efs = match flag("--ef") {
                None => DEFAULT_EF.to_vec(),
                Some(list) => list
                    .split(',')
                    .map(|e| e.trim().parse().map_err(|_| format!("vectors: bad --ef {list:?}")))
                    .collect::<Result<_, _>>()?,
            };
            let passes: usize = flag("--passes")
                .unwrap_or_else(|| "3".into())
                .parse()
                .map_err(|_| "vectors: bad --passes")?;
            sweep(&built, &set, &efs, passes).and_then(|peer| crate::write_json(&out, &peer))
        }
    };
    drop(built);
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
