//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz), shared with the test that runs the
//! checked-in corpora in CI (`tests/integration/fuzz_corpus.rs`), so both exercise exactly the same code.
//! Each takes arbitrary bytes and must never panic; errors are the expected outcome for most.
//! The request fuzzers (`http`, `mcp`) drive the real server in-process and check properties of
//! every answer; they panic when one is violated.

pub mod http;
pub mod mcp;
pub mod seed;
pub mod values;

pub use http::http_request;
pub use mcp::mcp_request;

use crate::kill::Report;
use crate::simulated::{continue_workload_with, restore, Image};
use crate::state::{read_feed, read_state};
use crate::workload::Mix;
use engram_core::{CheckpointOptions, Database, DatabaseOptions, LogRecord, Lsn, WalOptions};
use engram_wal::storage::{FaultStorage, OpenMode, Storage};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Segment size of the fuzzed logs (the smallest the log accepts, to keep inputs small).
pub const FUZZ_SEGMENT_BYTES: usize = 8 * 1024;
const DIR: &str = "/db";
pub const CHECKPOINT_HEADER_BYTES: usize = 88;

fn options() -> DatabaseOptions {
    DatabaseOptions {
        wal: WalOptions {
            segment_bytes: FUZZ_SEGMENT_BYTES as u64,
            max_record_bytes: 4 * 1024,
            background_preallocation: false,
            ..Default::default()
        },
        checkpoint: CheckpointOptions {
            // The log stays whole, so checkpoints can sit anywhere on it.
            retain_log_records: 1_000_000,
            ..CheckpointOptions::on_demand()
        },
        ..Default::default()
    }
}

fn put_file(fs: &FaultStorage, path: &str, bytes: &[u8]) {
    let path = Path::new(path);
    fs.create_dir_all(path.parent().expect("a file in a directory"))
        .expect("the in-memory file system accepts directories");
    let file = fs.open(path, OpenMode::CreateNew).expect("the in-memory file system accepts files");
    file.write_all_at(bytes, 0).expect("no faults are set");
    file.sync_data().expect("no faults are set");
}

/// Opens a database on `fs` and, if that works, reads everything it holds (state and feed).
/// Returns whether it opened, and whether a checkpoint was loaded.
fn open_and_read_everything(fs: &FaultStorage) -> (bool, bool) {
    let Ok(db) = Database::open_with_storage(Arc::new(fs.clone()), DIR, options()) else {
        return (false, false);
    };
    let _ = read_state(&db.snapshot());
    let _ = read_feed(&db);
    (true, db.open_report().checkpoint_lsn.is_some())
}

/// The log record decoder: the first byte is the record kind, the rest its payload. Returns
/// whether the input decoded (the entry points' results tell the corpus test that its inputs
/// reach past the first checks; the fuzzers ignore them).
pub fn decode_record(data: &[u8]) -> bool {
    let Some((&kind, payload)) = data.split_first() else { return false };
    let Ok(record) = LogRecord::decode(1, kind, payload) else {
        return false;
    };
    // What decodes must encode again, and that must decode to the same bytes.
    let (kind_again, bytes) = record.encode();
    let again = LogRecord::decode(1, kind_again, &bytes).expect("an encoded record decodes");
    assert_eq!(again.encode().1, bytes, "decode(encode(record)) changed the record");
    true
}

/// The log's segment scanner and recovery, then replay into a database and a full read: the
/// input is the first segment's bytes, and what exceeds one segment the next segment's.
/// Returns whether the database opened.
pub fn recover_log(data: &[u8]) -> bool {
    let fs = FaultStorage::new();
    for (i, chunk) in data.chunks(FUZZ_SEGMENT_BYTES).take(3).enumerate() {
        put_file(&fs, &format!("{DIR}/wal/wal-{:020}.seg", i + 1), chunk);
    }
    open_and_read_everything(&fs).0
}

/// A log of a few dozen commits (built once per process) for checkpoints to sit on, and its
/// last LSN.
pub fn reference_log() -> &'static (Image, Lsn) {
    static LOG: OnceLock<(Image, Lsn)> = OnceLock::new();
    LOG.get_or_init(|| {
        let fs = FaultStorage::new();
        let mix: Mix = "memory=2,graph=2,kv=2,event=1,checkpoint=0,big=0".parse().expect("a valid mix");
        let mut run = continue_workload_with(&fs, options(), 1, &mix, Report::default(), 40);
        let db = run.db.take().expect("the reference opens");
        assert!(run.error.is_none(), "the reference log failed: {:?}", run.error);
        let last = db.visible_lsn();
        drop(db);
        let image = fs
            .image()
            .into_iter()
            .filter(|(p, b)| !b.is_empty() && p.to_string_lossy().contains("/wal/"))
            .collect();
        (image, last)
    })
}

/// The checkpoint loader: the input is a checkpoint file over the reference log. Its LSN field is
/// brought into the log's range (the file named after it) and its CRC trailer recomputed, so
/// that the fuzzer explores the decoder behind them (the corruption sweep shows that damage is
/// caught by the CRC); then the log after it is replayed on top and everything read.
/// Returns whether the checkpoint was loaded.
pub fn load_checkpoint(data: &[u8]) -> bool {
    let (log, last) = reference_log();
    let mut bytes = data.to_vec();
    let mut lsn = 0;
    if bytes.len() >= CHECKPOINT_HEADER_BYTES + 4 {
        let field: [u8; 8] = bytes[16..24].try_into().expect("8 bytes");
        lsn = u64::from_le_bytes(field) % (last + 1);
        bytes[16..24].copy_from_slice(&lsn.to_le_bytes());
        let body_end = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..body_end]);
        bytes[body_end..].copy_from_slice(&crc.to_le_bytes());
    }
    let fs = restore(log);
    put_file(&fs, &format!("{DIR}/checkpoints/ckpt-{lsn:020}.ckpt"), &bytes);
    open_and_read_everything(&fs).1
}

/// Seed inputs for the five targets: from a real database, every log record (kind byte and
/// payload), every log segment, and a checkpoint of it; the requests of the server's and the
/// MCP crate's integration tests.
pub fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let (log, _) = reference_log();
    // The first segment alone, and the whole log (segments are FUZZ_SEGMENT_BYTES long).
    let mut seeds: Vec<(&'static str, Vec<u8>)> = vec![
        ("recover_log", log[0].1.clone()),
        ("recover_log", log.iter().flat_map(|(_, b)| b.clone()).collect()),
    ];
    let fs = restore(log);
    let db = Database::open_with_storage(Arc::new(fs.clone()), DIR, options()).expect("the reference opens");
    let report = db.checkpoint().expect("a checkpoint of the reference");
    if let Some(path) = report.path {
        seeds.push(("load_checkpoint", fs.read_file(&path).expect("the checkpoint exists")));
    }
    drop(db);
    let wal = engram_wal::Wal::open_with_storage(Arc::new(restore(log)), format!("{DIR}/wal"), options().wal).expect("the log opens");
    let mut records = wal.reader(1).expect("a reader from the start");
    while let Ok(Some(record)) = records.next_record() {
        let mut input = vec![record.kind];
        input.extend_from_slice(&record.payload);
        seeds.push(("decode_record", input));
    }
    seeds.extend(http::seed_inputs().into_iter().map(|input| ("http_request", input)));
    seeds.extend(mcp::seed_inputs().into_iter().map(|input| ("mcp_request", input)));
    seeds
}
