//! Checkpoints: the whole multi-version store at one LSN, in one checksummed file, so that open
//! replays only the log after it and the log below it can be truncated.
//!
//! A checkpoint at LSN L holds every retained version with an LSN at or below L (history
//! included: as-of reads keep working after the log below L is gone), the commit times that
//! history needs, the history horizon, and floors for the transaction-id and commit-time
//! counters. It is taken from an MVCC snapshot: the export copies (shares) versions under short
//! read locks, one chunk of keys at a time, and all file I/O happens without the commit lock, so
//! commits and readers keep going. A checkpoint is also when history is pruned under the
//! retention policy (retention.rs): the file omits the versions the policy drops, and once it is
//! verified they are removed from the store, in chunks under short write locks.
//!
//! Write protocol: `ckpt-<L>.tmp`, fdatasync, rename to `ckpt-<L>.ckpt`, fsync the directory,
//! read the file back and verify it, and only then delete older checkpoints beyond the newest
//! two. Open uses the newest checkpoint that verifies and falls back to the one before it; the
//! log is truncated only below the *older* of the two retained checkpoints, so the fallback
//! always has the log it needs. docs/checkpoint-format.md describes every byte.

mod decode;
mod entry;

use crate::db::{Database, Shared};
use crate::embedding::{self, MappedFile, MappedFilesRead};
use crate::error::{CoreError, Result};
use crate::legacy;
use crate::model::{Key, Memory, Value};
use crate::store::{Chain, RetentionPlan, Store, Version};
use decode::RawEntries;
use engram_wal::storage::{read_exact_at, OpenMode, Storage, StorageFile};
use engram_wal::{Lsn, SyncPolicy};
use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Directory of the checkpoints inside the database directory.
pub const CHECKPOINT_DIR: &str = "checkpoints";

const MAGIC: &[u8; 8] = b"ENGRMCKP";
/// Version of the checkpoint file format written (docs/checkpoint-format.md). Still read:
/// version 3 (embeddings inside the postcard encoding, not aligned, so always copied to the
/// heap), version 2 (embeddings as a sequence of f32s) and version 1 (also: an 80-byte header
/// without the history horizon, entries without `created`).
pub const CHECKPOINT_FORMAT_VERSION: u32 = 4;
const FORMAT_VERSION_3: u32 = 3;
const FORMAT_VERSION_2: u32 = 2;
const FORMAT_VERSION_1: u32 = 1;
/// Header size of the version written, and of version 1.
const HEADER_BYTES: usize = 88;
const HEADER_BYTES_V1: usize = 80;
const TRAILER_BYTES: usize = 4;
const COMMIT_ENTRY_BYTES: usize = 16;
const ENTRY_LENGTH_BYTES: usize = 4;
/// Long version chains are split over several entries so that no entry (which is encoded in
/// memory before it is written, and decoded whole) grows without bound.
const MAX_VERSIONS_PER_ENTRY: usize = 64;
/// Keys exported per read lock of the store: bounds how long the applier can wait for it.
const EXPORT_KEYS_PER_LOCK: usize = 1024;
/// Bytes buffered before each write, and read per read call.
const IO_CHUNK_BYTES: usize = 1 << 20;
/// A load decodes entries on helper threads (checkpoint/decode.rs) from this body size on:
/// below it, starting threads costs about what they save. The crate's own tests load every
/// checkpoint that way, so that their damaged and old-format files go through the helpers.
const PARALLEL_DECODE_MIN_BODY_BYTES: u64 = if cfg!(test) { 1 } else { 16 << 20 };
/// At most this many decoding helpers: with two, the reading thread's share (reading,
/// checksumming, checking order and building chains) is about as long as each helper's.
const MAX_DECODE_HELPERS: usize = 2;
/// How long the background thread waits after a failed checkpoint before it tries again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// When checkpoints are taken in the background, and how much log truncation keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Take a checkpoint once this many log payload bytes were committed since the last one.
    /// `None`: never for this reason.
    pub every_log_bytes: Option<u64>,
    /// Grow the byte trigger with the database: a checkpoint is due once the log since the last
    /// one holds `every_log_bytes` or as many bytes as that checkpoint's file, whichever is
    /// more. Every checkpoint rewrites the whole store, so with a fixed threshold a large
    /// database under a steady write load would spend most of its write bandwidth and a core on
    /// checkpoints (quadratic in its size); this bounds checkpoint writing to about one byte per
    /// byte of log, and replay after a crash to about the size of the checkpoint it starts from.
    pub grow_with_database: bool,
    /// Take a checkpoint once this much time passed since the last one, if anything was
    /// committed meanwhile. `None`: never for this reason.
    pub every: Option<Duration>,
    /// Truncation after a checkpoint keeps at least this many of the newest log records (for
    /// change-feed readers and followers without a durable cursor).
    pub retain_log_records: u64,
    /// Keep the file of the checkpoint retired last (renamed to [`SPARE_FILE`]) and write the
    /// next checkpoint over it: writes into pages the page cache still holds cost a fraction of
    /// filling new ones (docs/checkpoint-format.md), for one more checkpoint's worth of disk.
    pub reuse_retired_file: bool,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        CheckpointOptions {
            every_log_bytes: Some(64 * 1024 * 1024),
            grow_with_database: true,
            every: Some(Duration::from_secs(300)),
            retain_log_records: 0,
            reuse_retired_file: true,
        }
    }
}

impl CheckpointOptions {
    /// Checkpoints only when [`Database::checkpoint`] is called: no byte or time trigger (tests,
    /// benchmarks and tools that decide when checkpoints happen). The other settings are the
    /// defaults.
    pub fn on_demand() -> Self {
        CheckpointOptions {
            every_log_bytes: None,
            grow_with_database: false,
            every: None,
            ..CheckpointOptions::default()
        }
    }
}

/// What one `Database::checkpoint` call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReport {
    /// LSN of the newest checkpoint after the call (0 when there is none: nothing was committed).
    pub lsn: Lsn,
    /// False when nothing was committed since the newest checkpoint, so no file was written
    /// (truncation still ran).
    pub written: bool,
    /// The newest checkpoint file (`None` when there is none).
    pub path: Option<PathBuf>,
    pub file_bytes: u64,
    /// Distinct keys, versions and commits in the written checkpoint (0 when none was written).
    pub keys: u64,
    pub versions: u64,
    pub commits: u64,
    /// Versions the retention policy pruned in this run, and keys that lost all of theirs (the
    /// newest was a deletion). 0 when no checkpoint was written: pruning happens only then.
    pub pruned_versions: u64,
    pub pruned_keys: u64,
    /// The history horizon after the call (`Database::history_horizon_lsn`).
    pub history_horizon_lsn: Lsn,
    /// Older checkpoint files (and leftovers of interrupted runs) deleted.
    pub removed_files: usize,
    /// The log was truncated below this LSN (whole segments only, so it may keep more).
    pub log_kept_from: Lsn,
    pub log_segments_removed: usize,
    /// Whether the newest checkpoint has its search index file after the call. False when the
    /// indexes had not reached its LSN within `SEARCH_INDEX_WAIT` (a backlog, or a rebuild
    /// still running after an open): the checkpoint stands without it, and a later call
    /// writes it (an open before that rebuilds the indexes from the store).
    pub index_file_written: bool,
    pub elapsed: Duration,
}

/// A checkpoint that open skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedCheckpoint {
    pub path: PathBuf,
    pub reason: String,
}

/// How the database was loaded at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// LSN of the checkpoint the store was loaded from; `None`: replayed from the log's start.
    pub checkpoint_lsn: Option<Lsn>,
    /// Newer checkpoints that were not used (a failed checksum, say), newest first.
    pub rejected_checkpoints: Vec<RejectedCheckpoint>,
    /// Log records replayed after the checkpoint.
    pub replayed_records: u64,
    /// Where the open's time went: the log's recovery (finding its valid end); then reading
    /// and verifying the checkpoint into the store; then, at the same time on two threads,
    /// loading the search indexes from the checkpoint's index file and replaying the log after
    /// the checkpoint (when there is no index file to use, the indexes are rebuilt from the
    /// store after the replay, and `index_load_us` is that rebuild).
    pub log_recovery_us: u64,
    pub checkpoint_load_us: u64,
    pub index_load_us: u64,
    pub replay_us: u64,
}

pub(crate) fn file_name(lsn: Lsn) -> String {
    format!("ckpt-{lsn:020}.ckpt")
}

/// The name of the retired checkpoint file kept for the next checkpoint to overwrite. Never
/// read: its bytes are only ever replaced.
pub const SPARE_FILE: &str = "ckpt-spare.reuse";

fn tmp_name(lsn: Lsn) -> String {
    format!("ckpt-{lsn:020}.tmp")
}

/// The LSN in a checkpoint file name (`ckpt-<20 digits>.ckpt`).
fn parse_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix("ckpt-")?.strip_suffix(".ckpt")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn io_error(context: String, source: std::io::Error) -> CoreError {
    CoreError::Io {
        context,
        source: Arc::new(source),
    }
}

/// The fixed-size start of a checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Format version: `CHECKPOINT_FORMAT_VERSION` when written; 1 to 3 when read.
    pub version: u32,
    pub lsn: Lsn,
    /// Every transaction id at or below `lsn` is at most this.
    pub txn_id_floor: u64,
    /// Every commit time at or below `lsn` is at most this.
    pub commit_ts_floor_ms: u64,
    pub commit_count: u64,
    pub key_count: u64,
    pub entry_count: u64,
    pub version_count: u64,
    pub body_bytes: u64,
    /// Reads below this LSN are refused (0 in version 1: nothing was ever pruned).
    pub history_horizon_lsn: Lsn,
}

/// The header size of a format version.
fn header_bytes(version: u32) -> usize {
    if version == FORMAT_VERSION_1 {
        HEADER_BYTES_V1
    } else {
        HEADER_BYTES
    }
}

impl Header {
    /// The header in its version's layout (version 1 has no horizon).
    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; header_bytes(self.version)];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        // 12..16 stay zero.
        let mut fields = vec![
            self.lsn,
            self.txn_id_floor,
            self.commit_ts_floor_ms,
            self.commit_count,
            self.key_count,
            self.entry_count,
            self.version_count,
            self.body_bytes,
        ];
        if self.version != FORMAT_VERSION_1 {
            fields.push(self.history_horizon_lsn);
        }
        for (i, v) in fields.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// The format version in the first 16 bytes of a file, if it is one this build reads.
    fn version_of(b: &[u8]) -> std::result::Result<u32, String> {
        if &b[0..8] != MAGIC {
            return Err("bad magic (not a checkpoint file)".into());
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if !(FORMAT_VERSION_1..=CHECKPOINT_FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "format version {version} is not supported (this build reads versions {FORMAT_VERSION_1} to {CHECKPOINT_FORMAT_VERSION})"
            ));
        }
        if b[12..16] != [0; 4] {
            return Err("reserved header bytes are not zero".into());
        }
        Ok(version)
    }

    /// Decodes a whole header (`header_bytes(version)` bytes).
    fn decode(b: &[u8]) -> std::result::Result<Header, String> {
        let version = Header::version_of(b)?;
        if b.len() != header_bytes(version) {
            return Err(format!("a version {version} header is {} bytes", header_bytes(version)));
        }
        let field = |i: usize| u64::from_le_bytes(b[16 + 8 * i..24 + 8 * i].try_into().expect("8 bytes"));
        let header = Header {
            version,
            lsn: field(0),
            txn_id_floor: field(1),
            commit_ts_floor_ms: field(2),
            commit_count: field(3),
            key_count: field(4),
            entry_count: field(5),
            version_count: field(6),
            body_bytes: field(7),
            history_horizon_lsn: if version == FORMAT_VERSION_1 { 0 } else { field(8) },
        };
        if header.history_horizon_lsn > header.lsn {
            return Err(format!(
                "the history horizon {} is beyond the checkpoint LSN {}",
                header.history_horizon_lsn, header.lsn
            ));
        }
        Ok(header)
    }

    fn file_bytes(&self) -> u64 {
        (header_bytes(self.version) + TRAILER_BYTES) as u64 + self.body_bytes
    }
}

/// An entry as read back (postcard encodes `&T` exactly as `T`). `V` is the value as the
/// file's version encodes it: [`Value`] in version 3, [`legacy::Value`] before; format 4's
/// entries decode to `EntryIn<Value>` through checkpoint/entry.rs.
#[derive(Deserialize)]
struct EntryIn<V = Value> {
    key: Key,
    created: Option<(Lsn, u32)>,
    versions: Vec<VersionIn<V>>,
}

/// An entry of a version 1 file (no `created`).
#[derive(Deserialize)]
struct EntryInV1 {
    key: Key,
    versions: Vec<VersionIn<legacy::Value>>,
}

impl From<EntryInV1> for EntryIn<legacy::Value> {
    fn from(e: EntryInV1) -> Self {
        EntryIn {
            key: e.key,
            created: None,
            versions: e.versions,
        }
    }
}

impl From<EntryIn<legacy::Value>> for EntryIn {
    fn from(e: EntryIn<legacy::Value>) -> Self {
        EntryIn {
            key: e.key,
            created: e.created,
            versions: e
                .versions
                .into_iter()
                .map(|v| VersionIn {
                    lsn: v.lsn,
                    op_index: v.op_index,
                    value: v.value.map(Value::from),
                })
                .collect(),
        }
    }
}

#[derive(Deserialize)]
struct VersionIn<V> {
    lsn: Lsn,
    op_index: u32,
    value: Option<V>,
}

/// Buffers sequential writes to a file and checksums what it writes.
struct FileWriter {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    offset: u64,
    crc: u32,
    buf: Vec<u8>,
    /// The mapped checkpoint files whose embeddings this checkpoint copied: their pages are
    /// released from the resident set as it goes.
    mapped_read: MappedFilesRead,
}

impl FileWriter {
    fn maybe_flush(&mut self) -> Result<()> {
        if self.buf.len() >= IO_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buf, self.offset)
            .map_err(|e| io_error(format!("writing {}", self.path.display()), e))?;
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Bytes written or buffered so far.
    fn position(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }

    fn put_entry(&mut self, key: &Key, created: Option<(Lsn, u32)>, versions: &[Version]) -> Result<()> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; ENTRY_LENGTH_BYTES]);
        entry::encode(&mut self.buf, self.offset, key, created, versions);
        let length = u32::try_from(self.buf.len() - start - ENTRY_LENGTH_BYTES).map_err(|_| CoreError::TooLarge {
            what: "checkpoint entry",
            size_bytes: self.buf.len() - start - ENTRY_LENGTH_BYTES,
            max_bytes: u32::MAX as usize,
        })?;
        self.buf[start..start + ENTRY_LENGTH_BYTES].copy_from_slice(&length.to_le_bytes());
        for v in versions {
            if let Some(Value::Memory(Memory { embedding: Some(e), .. })) = v.value.as_deref() {
                self.mapped_read.note(e);
            }
        }
        self.maybe_flush()
    }
}

/// How much a checkpoint writes between two releases of the pages of the mapped embeddings it
/// copied (crate::embedding::MappedFile::release_resident_pages).
const RELEASE_MAPPED_PAGES_EVERY_BYTES: u64 = 32 << 20;

/// A checkpoint file that was written (and verified) or found at open.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointFile {
    pub lsn: Lsn,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub history_horizon_lsn: Lsn,
}

/// Writes the checkpoint of `store` at `plan.at` to `dir/ckpt-<lsn>.ckpt`, without what the
/// plan prunes (see the module docs for the protocol). The caller guarantees that the LSN is
/// visible and durable in the log.
///
/// With `spare`, a retired checkpoint file, the checkpoint is written over it (renamed to the
/// temporary name first, so that a crash leaves a leftover, never a file under a checkpoint
/// name) and cut to its new length before it is synced.
fn write(
    storage: &dyn Storage,
    dir: &Path,
    store: &Store,
    plan: &RetentionPlan,
    floors: (u64, u64),
    spare: Option<&Path>,
) -> Result<(CheckpointFile, Header)> {
    let lsn = plan.at;
    let tmp = dir.join(tmp_name(lsn));
    let path = dir.join(file_name(lsn));
    let file = match spare {
        Some(spare) => {
            storage
                .rename(spare, &tmp)
                .map_err(|e| io_error(format!("renaming {} to {}", spare.display(), tmp.display()), e))?;
            storage.open(&tmp, OpenMode::ReadWrite)
        }
        None => storage.open(&tmp, OpenMode::CreateNew),
    }
    .map_err(|e| io_error(format!("creating {}", tmp.display()), e))?;
    // The body starts after the header, which is written last, once the counts are known.
    let mut w = FileWriter {
        file: file.clone(),
        path: tmp.clone(),
        offset: HEADER_BYTES as u64,
        crc: 0,
        buf: Vec::with_capacity(IO_CHUNK_BYTES + IO_CHUNK_BYTES / 4),
        mapped_read: MappedFilesRead::default(),
    };
    let commit_times = &plan.commit_times;
    for (commit_lsn, ts_ms) in commit_times {
        w.buf.extend_from_slice(&commit_lsn.to_le_bytes());
        w.buf.extend_from_slice(&ts_ms.to_le_bytes());
        w.maybe_flush()?;
    }
    let (mut key_count, mut entry_count, mut version_count) = (0u64, 0u64, 0u64);
    let mut after: Option<Key> = None;
    let mut released_at = w.position();
    loop {
        let chunk = store.export_chunk(after.as_ref(), lsn, EXPORT_KEYS_PER_LOCK, plan.rule);
        for (key, chain) in &chunk.chains {
            key_count += 1;
            version_count += chain.versions.len() as u64;
            for (i, run) in chain.versions.chunks(MAX_VERSIONS_PER_ENTRY).enumerate() {
                entry_count += 1;
                w.put_entry(key, if i == 0 { chain.created } else { None }, run)?;
            }
        }
        if w.position() - released_at >= RELEASE_MAPPED_PAGES_EVERY_BYTES {
            std::mem::take(&mut w.mapped_read).release_resident_pages();
            released_at = w.position();
        }
        match chunk.resume_after {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    std::mem::take(&mut w.mapped_read).release_resident_pages();
    let header = Header {
        version: CHECKPOINT_FORMAT_VERSION,
        lsn,
        txn_id_floor: floors.0,
        commit_ts_floor_ms: floors.1,
        commit_count: commit_times.len() as u64,
        key_count,
        entry_count,
        version_count,
        body_bytes: w.position() - HEADER_BYTES as u64,
        history_horizon_lsn: plan.horizon,
    };
    let header_bytes = header.encode();
    // The trailer checksums header and body in file order; the body's CRC is already known, so
    // the two are combined rather than the body read again.
    let body_crc = crc32c::crc32c_append(w.crc, &w.buf);
    let file_crc = crc32c::crc32c_combine(crc32c::crc32c(&header_bytes), body_crc, header.body_bytes as usize);
    w.buf.extend_from_slice(&file_crc.to_le_bytes());
    w.flush()?;
    let what = |action: &str, p: &Path| format!("{action} {}", p.display());
    file.write_all_at(&header_bytes, 0)
        .map_err(|e| io_error(what("writing", &tmp), e))?;
    if spare.is_some() {
        file.set_len(header.file_bytes())
            .map_err(|e| io_error(what("cutting to length", &tmp), e))?;
    }
    file.sync_data().map_err(|e| io_error(what("fdatasync of", &tmp), e))?;
    storage
        .rename(&tmp, &path)
        .map_err(|e| io_error(format!("renaming {} to {}", tmp.display(), path.display()), e))?;
    storage.sync_dir(dir).map_err(|e| io_error(what("syncing directory", dir), e))?;
    let file = CheckpointFile {
        lsn,
        path,
        file_bytes: header.file_bytes(),
        history_horizon_lsn: header.history_horizon_lsn,
    };
    Ok((file, header))
}

/// Reads a file front to back, checksumming everything it hands out.
struct FileReader {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    offset: u64,
    end: u64,
    crc: u32,
    buf: Vec<u8>,
    buf_pos: usize,
}

impl FileReader {
    /// Bytes handed out so far (the file offset of the next byte).
    fn consumed(&self) -> u64 {
        self.offset - (self.buf.len() - self.buf_pos) as u64
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        self.take_into(n, &mut out)?;
        Ok(out)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        let mut filled = 0;
        while filled < N {
            let chunk = self.next_chunk(N - filled)?;
            out[filled..filled + chunk.len()].copy_from_slice(chunk);
            filled += chunk.len();
        }
        self.crc = crc32c::crc32c_append(self.crc, &out);
        Ok(out)
    }

    /// Appends the next `n` bytes to `out`.
    fn take_into(&mut self, n: usize, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.reserve(n);
        while out.len() - start < n {
            let chunk = self.next_chunk(n - (out.len() - start))?;
            out.extend_from_slice(chunk);
        }
        self.crc = crc32c::crc32c_append(self.crc, &out[start..]);
        Ok(())
    }

    /// Up to `most` of the next bytes (at least one), read from the file when the buffer is
    /// used up. Not yet checksummed: the callers do that.
    fn next_chunk(&mut self, most: usize) -> Result<&[u8]> {
        if self.buf_pos == self.buf.len() {
            let want = (self.end - self.offset).min(IO_CHUNK_BYTES as u64) as usize;
            if want == 0 {
                return Err(corrupt(&self.path, "the file ends inside its body"));
            }
            self.buf.resize(want, 0);
            read_exact_at(&*self.file, &mut self.buf, self.offset).map_err(|e| io_error(format!("reading {}", self.path.display()), e))?;
            self.offset += want as u64;
            self.buf_pos = 0;
        }
        let m = most.min(self.buf.len() - self.buf_pos);
        self.buf_pos += m;
        Ok(&self.buf[self.buf_pos - m..self.buf_pos])
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> CoreError {
    CoreError::CorruptCheckpoint {
        file: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What a checkpoint holds, ready to become a store.
pub(crate) struct Contents {
    pub header: Header,
    pub file: CheckpointFile,
    pub commit_times: Vec<(Lsn, u64)>,
    pub chains: Vec<(Key, Chain)>,
    /// The file's mapping, when the embeddings are read in place from it.
    pub mapping: Option<Arc<MappedFile>>,
}

/// Reads and checks a checkpoint file: size, checksum, header, and every entry decoded and
/// checked for order. With `keep`, the contents are returned; without, only the header (the
/// read-back verification of a new checkpoint, which then holds one entry at a time).
fn read(storage: &dyn Storage, path: &Path, keep: bool) -> Result<(Header, Option<Contents>)> {
    let what = |action: &str| format!("{action} {}", path.display());
    let file = storage.open(path, OpenMode::Read).map_err(|e| io_error(what("opening"), e))?;
    let size = file.size_bytes().map_err(|e| io_error(what("reading the size of"), e))?;
    let too_short = || corrupt(path, format!("{size} bytes is too short for a checkpoint"));
    if size < (HEADER_BYTES_V1 + TRAILER_BYTES) as u64 {
        return Err(too_short());
    }
    let mut r = FileReader {
        file: file.clone(),
        path: path.to_path_buf(),
        offset: 0,
        end: size - TRAILER_BYTES as u64,
        crc: 0,
        buf: Vec::new(),
        buf_pos: 0,
    };
    let mut header_bytes_read = r.take(HEADER_BYTES_V1)?;
    let version = Header::version_of(&header_bytes_read).map_err(|reason| corrupt(path, reason))?;
    let header_len = header_bytes(version);
    if size < (header_len + TRAILER_BYTES) as u64 {
        return Err(too_short());
    }
    header_bytes_read.extend(r.take(header_len - HEADER_BYTES_V1)?);
    let header = Header::decode(&header_bytes_read).map_err(|reason| corrupt(path, reason))?;
    if header.body_bytes.checked_add((header_len + TRAILER_BYTES) as u64) != Some(size) {
        return Err(corrupt(
            path,
            format!(
                "the header announces a body of {} bytes but the file has {size} bytes",
                header.body_bytes
            ),
        ));
    }
    // A load of a format 4 file reads the embeddings in place from a mapping of it, unless the
    // storage is not the real file system or the mapping fails (then they are copied).
    let mapped = (keep && header.version > FORMAT_VERSION_3)
        .then(|| file.std_file().and_then(MappedFile::map))
        .flatten();
    let parsed = parse_body(&mut r, &header, keep, mapped.as_ref());
    if let Err(e @ CoreError::Io { .. }) = parsed {
        return Err(e);
    }
    if parsed.is_err() {
        // Damage usually shows as a malformed table or entry first; read the rest so that the
        // error says whether the bytes are damaged (checksum) or were written wrong (structure).
        while r.consumed() < r.end {
            r.take(((r.end - r.consumed()) as usize).min(IO_CHUNK_BYTES))?;
        }
    }
    let mut trailer = [0u8; TRAILER_BYTES];
    read_exact_at(&*file, &mut trailer, size - TRAILER_BYTES as u64).map_err(|e| io_error(what("reading"), e))?;
    if u32::from_le_bytes(trailer) != r.crc {
        return Err(corrupt(path, "checksum mismatch"));
    }
    let Parsed {
        commit_times,
        chains,
        keys,
        entries,
        versions,
    } = parsed?;
    if (keys, entries, versions) != (header.key_count, header.entry_count, header.version_count) {
        return Err(corrupt(
            path,
            format!(
                "the header counts {}/{}/{} keys/entries/versions but the body holds {keys}/{entries}/{versions}",
                header.key_count, header.entry_count, header.version_count
            ),
        ));
    }
    let contents = keep.then(|| Contents {
        header,
        file: CheckpointFile {
            lsn: header.lsn,
            path: path.to_path_buf(),
            file_bytes: size,
            history_horizon_lsn: header.history_horizon_lsn,
        },
        commit_times,
        chains,
        mapping: mapped,
    });
    Ok((header, contents))
}

/// A body, as read by [`parse_body`].
struct Parsed {
    commit_times: Vec<(Lsn, u64)>,
    chains: Vec<(Key, Chain)>,
    keys: u64,
    entries: u64,
    versions: u64,
}

/// Decodes the commit table and the entries that fill the rest of the body, checking order.
fn parse_body(r: &mut FileReader, header: &Header, keep: bool, mapped: Option<&Arc<MappedFile>>) -> Result<Parsed> {
    let path = r.path.clone();
    let path = path.as_path();
    let commit_table_bytes = header.commit_count.checked_mul(COMMIT_ENTRY_BYTES as u64);
    if commit_table_bytes.is_none_or(|b| b > header.body_bytes) {
        return Err(corrupt(path, "the commit table is larger than the body"));
    }
    let mut commit_times = Vec::new();
    let mut previous_commit = 0;
    for _ in 0..header.commit_count {
        let b = r.take(COMMIT_ENTRY_BYTES)?;
        let lsn = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
        let ts_ms = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        if lsn <= previous_commit || lsn > header.lsn {
            return Err(corrupt(path, format!("commit LSN {lsn} is out of order or beyond the checkpoint")));
        }
        previous_commit = lsn;
        if keep {
            commit_times.push((lsn, ts_ms));
        }
    }
    let mut chains: Vec<(Key, Chain)> = Vec::new();
    let (mut keys, mut entries, mut versions) = (0u64, 0u64, 0u64);
    let mut last_key: Option<Key> = None;
    let mut last_version_lsn = 0;
    let mut last_version_op = 0u32;
    // Runs of whole entries are cut here (lengths checked, bytes checksummed) and decoded on
    // helper threads when loading; an error found while reading ahead is returned once every
    // entry before it was decoded and checked, as a sequential read would.
    let mut read_error = None;
    let mut next_entry = 0u64;
    let read_next = |mut run: RawEntries| -> Result<Option<RawEntries>> {
        if read_error.is_some() || r.consumed() >= r.end {
            return Ok(None);
        }
        run.first_entry = next_entry;
        while r.consumed() < r.end && run.bytes.len() < decode::BATCH_BYTES {
            let read = r.take_array::<ENTRY_LENGTH_BYTES>().and_then(|length| {
                let length = u32::from_le_bytes(length) as u64;
                if length > r.end - r.consumed() {
                    return Err(corrupt(path, format!("entry {next_entry} of {length} bytes runs past the body")));
                }
                let offset = r.consumed();
                r.take_into(length as usize, &mut run.bytes).map(|()| offset)
            });
            match read {
                Ok(offset) => run.offsets.push(offset),
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
            run.ends.push(run.bytes.len());
            next_entry += 1;
        }
        Ok(Some(run))
    };
    let version = header.version;
    let decode = |number: u64, file_offset: u64, bytes: &[u8]| -> Result<EntryIn> {
        let decoded = match version {
            FORMAT_VERSION_1 => postcard::from_bytes::<EntryInV1>(bytes)
                .map(|e| EntryIn::from(EntryIn::from(e)))
                .map_err(|e| e.to_string()),
            FORMAT_VERSION_2 => postcard::from_bytes::<EntryIn<legacy::Value>>(bytes)
                .map(EntryIn::from)
                .map_err(|e| e.to_string()),
            FORMAT_VERSION_3 => postcard::from_bytes::<EntryIn>(bytes).map_err(|e| e.to_string()),
            _ => entry::decode(bytes, file_offset, mapped),
        };
        decoded.map_err(|e| corrupt(path, format!("entry {number}: {e}")))
    };
    let visit = |entry: EntryIn| -> Result<()> {
        entries += 1;
        if entry.versions.is_empty() {
            return Err(corrupt(path, format!("entry {entries} has no versions")));
        }
        let continues = match &last_key {
            Some(k) if *k == entry.key => true,
            Some(k) if *k > entry.key => return Err(corrupt(path, format!("entry {entries}: keys out of order"))),
            _ => false,
        };
        if !continues {
            keys += 1;
            last_version_lsn = 0;
            last_version_op = 0;
        }
        if let Some((created_lsn, _)) = entry.created {
            // Where the first version's incarnation began: an older, pruned version.
            if continues || created_lsn == 0 || created_lsn >= entry.versions[0].lsn {
                return Err(corrupt(
                    path,
                    format!("entry {entries}: creation LSN {created_lsn} is not before the key's first version"),
                ));
            }
        }
        for v in &entry.versions {
            // Two versions may share an LSN (a key deleted and created again by one transaction),
            // ordered by their position in it.
            let in_order = (v.lsn, v.op_index) > (last_version_lsn, last_version_op);
            if !in_order || v.lsn > header.lsn {
                return Err(corrupt(
                    path,
                    format!("entry {entries}: version LSN {} is out of order or beyond the checkpoint", v.lsn),
                ));
            }
            last_version_lsn = v.lsn;
            last_version_op = v.op_index;
        }
        versions += entry.versions.len() as u64;
        if keep {
            let converted = entry.versions.into_iter().map(|v| Version {
                lsn: v.lsn,
                op_index: v.op_index,
                value: v.value.map(Arc::new),
            });
            match chains.last_mut() {
                Some((_, chain)) if continues => chain.versions.extend(converted),
                _ => chains.push((
                    entry.key.clone(),
                    Chain {
                        versions: converted.collect(),
                        created: entry.created,
                    },
                )),
            }
        }
        last_key = Some(entry.key);
        Ok(())
    };
    // Only a load decodes in parallel: the read-back of a new checkpoint runs on the
    // background thread, which should not take more than its one core from commits.
    let helpers = if keep && header.body_bytes >= PARALLEL_DECODE_MIN_BODY_BYTES {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DECODE_HELPERS))
    } else {
        1
    };
    decode::decode_in_order(helpers, read_next, &decode, visit, || {
        corrupt(path, "a thread decoding its entries panicked")
    })?;
    if let Some(e) = read_error {
        return Err(e);
    }
    Ok(Parsed {
        commit_times,
        chains,
        keys,
        entries,
        versions,
    })
}

/// Checkpoint files in `dir` by LSN, newest first (an absent directory holds none).
fn list(storage: &dyn Storage, dir: &Path) -> Result<Vec<(Lsn, PathBuf)>> {
    let what = || format!("listing {}", dir.display());
    match storage.kind_of(dir).map_err(|e| io_error(what(), e))? {
        None => return Ok(Vec::new()),
        Some(false) => return Err(io_error(what(), std::io::Error::other("not a directory"))),
        Some(true) => {}
    }
    let mut found: Vec<(Lsn, PathBuf)> = storage
        .list(dir)
        .map_err(|e| io_error(what(), e))?
        .into_iter()
        .filter_map(|name| parse_file_name(&name).map(|lsn| (lsn, dir.join(name))))
        .collect();
    found.sort_by_key(|(lsn, _)| std::cmp::Reverse(*lsn));
    Ok(found)
}

/// Finds the checkpoint to open from: the newest one that verifies and that the log continues
/// (the log holds every record after it). Damaged or unusable newer ones are skipped and
/// reported. Without a usable checkpoint the log must start at LSN 1.
pub(crate) fn load_newest(
    storage: &dyn Storage,
    dir: &Path,
    log_first_lsn: Lsn,
    log_last_lsn: Lsn,
) -> Result<(Option<Contents>, Vec<RejectedCheckpoint>)> {
    let mut rejected = Vec::new();
    for (lsn, path) in list(storage, dir)? {
        if lsn > log_last_lsn {
            // Checkpoints are taken only of durable commits, so the log lost acknowledged
            // records. Falling back to an older checkpoint would silently lose them too.
            return Err(corrupt(
                &path,
                format!("it is at LSN {lsn} but the log ends at LSN {log_last_lsn}: log records are missing"),
            ));
        }
        if lsn + 1 < log_first_lsn {
            rejected.push(RejectedCheckpoint {
                path,
                reason: format!("the log starts at LSN {log_first_lsn}, after the records that follow it"),
            });
            continue;
        }
        match read(storage, &path, true) {
            Ok((_, contents)) => return Ok((contents, rejected)),
            // Only a checkpoint that fails verification is skipped; an I/O error says nothing
            // about its bytes and is reported as such (falling back could end in a misleading
            // MissingCheckpoint once the log no longer covers the older one).
            Err(e @ CoreError::Io { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping a checkpoint that does not verify");
                rejected.push(RejectedCheckpoint {
                    path,
                    reason: e.to_string(),
                });
            }
        }
    }
    if log_first_lsn > 1 {
        let reason = if rejected.is_empty() {
            "there are no checkpoints".to_string()
        } else {
            rejected
                .iter()
                .map(|r| format!("{}: {}", r.path.display(), r.reason))
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(CoreError::MissingCheckpoint {
            first_lsn: log_first_lsn,
            reason,
        });
    }
    Ok((None, rejected))
}

/// Checkpoint bookkeeping, under a mutex that serialises checkpoint runs (commits never take it).
pub(crate) struct CheckpointState {
    pub dir: PathBuf,
    /// Verified checkpoints, newest first; at most the two newest are kept on disk.
    pub retained: Vec<CheckpointFile>,
}

impl CheckpointState {
    pub fn new(dir: PathBuf, loaded: Option<CheckpointFile>) -> Self {
        CheckpointState {
            dir,
            retained: loaded.into_iter().collect(),
        }
    }

    /// Deletes the files `stale` picks among the `ckpt-` files of the directory; returns how many.
    fn remove_files(&self, storage: &dyn Storage, stale: impl Fn(&str) -> bool) -> Result<usize> {
        let names = storage
            .list(&self.dir)
            .map_err(|e| io_error(format!("listing {}", self.dir.display()), e))?;
        let mut removed = 0;
        for name in names.iter().filter(|n| n.starts_with("ckpt-") && stale(n)) {
            let path = self.dir.join(name);
            storage
                .remove(&path)
                .map_err(|e| io_error(format!("removing {}", path.display()), e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Deletes `.tmp` files of interrupted runs. They need not be durably gone: one that
    /// reappears after a crash is never read, and is deleted again by the next run.
    fn remove_leftovers(&self, storage: &dyn Storage) -> Result<usize> {
        self.remove_files(storage, |name| name.ends_with(".tmp"))
    }

    /// The spare file to write the next checkpoint over, if reuse is on and there is one that
    /// no embedding reads in place (crate::embedding).
    fn spare(&self, storage: &dyn Storage, reuse: bool) -> Result<Option<PathBuf>> {
        let path = self.dir.join(SPARE_FILE);
        if !reuse {
            return Ok(None);
        }
        let found = storage
            .kind_of(&path)
            .map_err(|e| io_error(format!("inspecting {}", path.display()), e))?;
        Ok((found == Some(false) && !embedding::is_mapped(&path)).then_some(path))
    }

    /// Keeps the two newest verified checkpoints and deletes every other checkpoint file
    /// (older ones, and damaged ones open skipped), then syncs the directory. With `reuse`,
    /// the newest of the retired files becomes the spare (unless there is one) instead, unless
    /// embeddings read it in place: a file loaded at open is deleted, never written over (its
    /// blocks are freed when its last embedding is dropped).
    fn apply_retention(&mut self, storage: &dyn Storage, reuse: bool) -> Result<usize> {
        self.retained.truncate(2);
        let keep: Vec<&std::ffi::OsStr> = self.retained.iter().filter_map(|c| c.path.file_name()).collect();
        let is_retired = |name: &str| parse_file_name(name).is_some() && !keep.iter().any(|k| *k == std::ffi::OsStr::new(name));
        // The spare counts as a removed checkpoint file: one deleted when reuse is off (left from
        // a run with it on), or one retired file renamed to become it.
        let spare_changes = if !reuse {
            self.remove_files(storage, |name| name == SPARE_FILE)?
        } else if self.spare(storage, true)?.is_none() {
            let names = storage
                .list(&self.dir)
                .map_err(|e| io_error(format!("listing {}", self.dir.display()), e))?;
            let reusable = |name: &str| is_retired(name) && !embedding::is_mapped(&self.dir.join(name));
            match names.iter().filter(|n| reusable(n)).max_by_key(|n| parse_file_name(n)) {
                Some(newest_retired) => {
                    let (from, to) = (self.dir.join(newest_retired), self.dir.join(SPARE_FILE));
                    storage
                        .rename(&from, &to)
                        .map_err(|e| io_error(format!("renaming {} to {}", from.display(), to.display()), e))?;
                    1
                }
                None => 0,
            }
        } else {
            0
        };
        let removed = self.remove_files(storage, is_retired)? + spare_changes;
        if removed > 0 {
            storage
                .sync_dir(&self.dir)
                .map_err(|e| io_error(format!("syncing directory {}", self.dir.display()), e))?;
        }
        Ok(removed)
    }
}

/// Wakes the background checkpointer and tells it to stop. Lock order: the commit lock and the
/// checkpoint state come before this lock, never after.
#[derive(Default)]
pub(crate) struct Trigger {
    state: Mutex<TriggerState>,
    wakeup: Condvar,
}

#[derive(Default)]
struct TriggerState {
    stop: bool,
    last_run: Option<Instant>,
}

impl Trigger {
    fn lock(&self) -> MutexGuard<'_, TriggerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by a commit whose log bytes crossed the byte threshold.
    pub fn poke(&self) {
        let _g = self.lock();
        self.wakeup.notify_all();
    }

    fn ran(&self) {
        self.lock().last_run = Some(Instant::now());
    }
}

impl Shared {
    /// Log bytes since the last checkpoint at which the next one is due (`None`: never for this
    /// reason); see [`CheckpointOptions::grow_with_database`].
    pub(crate) fn checkpoint_byte_threshold(&self) -> Option<u64> {
        let triggers = &self.options.checkpoint;
        let floor = triggers.every_log_bytes?;
        Some(if triggers.grow_with_database {
            floor.max(self.last_checkpoint_file_bytes.load(Ordering::Acquire))
        } else {
            floor
        })
    }

    /// Counts the log bytes of newly visible commits toward the triggers, waking the checkpointer when the first bytes after a
    /// checkpoint arrive (its interval starts to matter) or when they cross the byte threshold.
    pub(crate) fn note_logged_bytes(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let before = self.log_bytes_since_checkpoint.fetch_add(bytes, Ordering::AcqRel);
        let triggers = &self.options.checkpoint;
        let starts_interval = before == 0 && triggers.every.is_some();
        let crosses_threshold = self.checkpoint_byte_threshold().is_some_and(|t| before < t && before + bytes >= t);
        if starts_interval || crosses_threshold {
            self.trigger.poke();
        }
    }
}

impl Database {
    /// Takes a checkpoint now (unless nothing was committed since the newest one), pruning
    /// history under the retention policy, keeps the two newest checkpoints, and truncates the
    /// log below what the older of them, durable cursors and `retain_log_records` still need.
    /// Commits and reads continue meanwhile; concurrent calls (and the background checkpointer)
    /// run one at a time.
    pub fn checkpoint(&self) -> Result<CheckpointReport> {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.checkpoint_at_time(now_ms)
    }

    /// [`Database::checkpoint`] with the wall-clock time given (ms since the Unix epoch): the
    /// `RetentionPolicy::KeepFor` window ends there, so a time later than the real one prunes
    /// versions the policy would still keep today.
    pub fn checkpoint_at_time(&self, now_ms: u64) -> Result<CheckpointReport> {
        let shared = &*self.shared;
        shared.check_running()?;
        let started = Instant::now();
        let storage = &*shared.storage;
        let mut state = shared.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        // Read before the snapshot: bytes of commits racing with it stay counted (an earlier
        // next checkpoint) rather than being forgotten.
        let bytes_counted = shared.log_bytes_since_checkpoint.load(Ordering::Acquire);
        let lsn = self.visible_lsn();
        let newest = state.retained.first().map_or(0, |c| c.lsn);
        let mut report = CheckpointReport {
            lsn: newest,
            written: false,
            path: state.retained.first().map(|c| c.path.clone()),
            file_bytes: state.retained.first().map_or(0, |c| c.file_bytes),
            keys: 0,
            versions: 0,
            commits: 0,
            pruned_versions: 0,
            pruned_keys: 0,
            history_horizon_lsn: 0,
            removed_files: 0,
            log_kept_from: 0,
            log_segments_removed: 0,
            index_file_written: false,
            elapsed: Duration::ZERO,
        };
        if lsn > newest {
            // A checkpoint never runs ahead of the durable log: a commit acknowledged with a
            // relaxed policy may be visible but not yet durable, and after a crash the log would
            // hand its LSN to another commit.
            shared.wal.complete(lsn, SyncPolicy::Always)?;
            let floors = shared.counter_floors();
            ensure_dir(storage, &state.dir)?;
            // A leftover `.tmp` of an interrupted run may carry this very name. Older `.ckpt`
            // files stay until the new one is verified.
            report.removed_files += state.remove_leftovers(storage)?;
            // What the retention policy prunes: left out of the file, and removed from the store
            // once the file is verified (until then the store keeps it, so a failed run prunes
            // nothing). The checkpoint mutex keeps the versions at or below `lsn` as planned.
            let rule = shared.options.retention.rule(&shared.store, lsn, now_ms);
            let plan = shared.store.plan_retention(lsn, rule);
            let spare = state.spare(storage, shared.options.checkpoint.reuse_retired_file)?;
            let (file, header) = write(storage, &state.dir, &shared.store, &plan, floors, spare.as_deref())?;
            // Read back before anything older is deleted: the previous checkpoint is kept until
            // this one is known good. A file that fails is removed (best effort; if it survives,
            // open skips it as it would any damaged checkpoint).
            if let Err(e) = read(storage, &file.path, false) {
                let _ = storage.remove(&file.path);
                return Err(e);
            }
            (report.pruned_versions, report.pruned_keys) = shared.store.prune(plan);
            report.lsn = lsn;
            report.written = true;
            report.path = Some(file.path.clone());
            report.file_bytes = file.file_bytes;
            (report.keys, report.versions, report.commits) = (header.key_count, header.version_count, header.commit_count);
            state.retained.insert(0, file);
            shared.last_checkpoint_lsn.store(lsn, Ordering::Release);
            shared.last_checkpoint_file_bytes.store(report.file_bytes, Ordering::Release);

            report.removed_files += state.apply_retention(storage, shared.options.checkpoint.reuse_retired_file)?;
        }
        // The search indexes as of the newest checkpoint, so that open need not rebuild them:
        // written after a new checkpoint, and by the next run when an earlier one failed or was
        // deferred (or the file open found was unusable). Indexes that have not reached the
        // checkpoint defer it; a failure to write it fails the run. Either way the `.ckpt`
        // stays valid, and open rebuilds the indexes while its index file is missing.
        let keep: Vec<Lsn> = state.retained.iter().map(|c| c.lsn).collect();
        if let Some(&newest) = keep.first() {
            report.index_file_written = crate::search::persist::ensure_for_checkpoint(shared, newest, &keep)?;
        }
        report.history_horizon_lsn = shared.store.history_horizon();
        shared.log_bytes_since_checkpoint.fetch_sub(bytes_counted, Ordering::AcqRel);
        shared.trigger.ran();
        // Still under the checkpoint mutex, so that the bound and the retained files agree.
        report.log_kept_from = self.log_truncation_bound(&state);
        report.log_segments_removed = shared.wal.truncate_prefix(report.log_kept_from)?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// LSN of the newest checkpoint written or loaded (`None` before the first).
    pub fn last_checkpoint_lsn(&self) -> Option<Lsn> {
        Some(self.shared.last_checkpoint_lsn.load(Ordering::Acquire)).filter(|l| *l > 0)
    }

    /// How this database was loaded when it was opened.
    pub fn open_report(&self) -> &OpenReport {
        &self.shared.open_report
    }

    /// The oldest LSN the log must keep: open may have to fall back to the older retained
    /// checkpoint (or, with just one, to the start of the log), a durable cursor may still need
    /// records, and the options may ask to keep the newest N records.
    fn log_truncation_bound(&self, state: &CheckpointState) -> Lsn {
        let fallback = match state.retained.get(1) {
            Some(older) => older.lsn + 1,
            None => 1,
        };
        let durable = self.shared.wal.durable_lsn();
        let retention = (durable + 1).saturating_sub(self.shared.options.checkpoint.retain_log_records);
        let cursors = self.cursor_floor().unwrap_or(Lsn::MAX);
        let bound = fallback.min(retention).min(cursors).max(1);
        // Never cut the transaction the bound falls in: a cursor or the fallback checkpoint
        // needs all of it. (An LSN no longer readable has nothing left to cut.) The log may
        // still start inside an older transaction, since whole segments go; nobody needs that
        // one, and the feed starts after it (`Database::oldest_feed_lsn`).
        self.transaction_start(bound).unwrap_or(bound)
    }
}

/// Creates the checkpoint directory, durably, if it does not exist.
pub(crate) fn ensure_dir(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let what = |action: &str, p: &Path| format!("{action} {}", p.display());
    if storage.kind_of(dir).map_err(|e| io_error(what("inspecting", dir), e))?.is_some() {
        return Ok(());
    }
    storage.create_dir_all(dir).map_err(|e| io_error(what("creating", dir), e))?;
    if let Some(parent) = dir.parent() {
        storage
            .sync_dir(parent)
            .map_err(|e| io_error(what("syncing directory", parent), e))?;
    }
    Ok(())
}

/// The background checkpointer of one database, stopped (and joined) when the last `Database`
/// handle that owns it drops.
pub(crate) struct Background {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        self.shared.trigger.lock().stop = true;
        self.shared.trigger.wakeup.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the background checkpointer if the options ask for one.
pub(crate) fn spawn_background(shared: &Arc<Shared>) -> Result<Option<Arc<Background>>> {
    let options = shared.options.checkpoint.clone();
    if options.every_log_bytes.is_none() && options.every.is_none() {
        return Ok(None);
    }
    // The thread's handle does not own the thread, so dropping it never joins from inside.
    let db = Database {
        shared: shared.clone(),
        _background: None,
    };
    let thread = std::thread::Builder::new()
        .name("engram-checkpointer".into())
        .spawn(move || {
            crate::threads::lower_current_thread_priority(db.shared.options.background_thread_nice);
            run_background(db, options)
        })
        .map_err(|e| io_error("starting the checkpoint thread".into(), e))?;
    Ok(Some(Arc::new(Background {
        shared: shared.clone(),
        thread: Some(thread),
    })))
}

fn run_background(db: Database, options: CheckpointOptions) {
    let trigger = &db.shared.trigger;
    let opened = Instant::now();
    let mut retry_at: Option<Instant> = None;
    let mut guard = trigger.lock();
    loop {
        if guard.stop {
            return;
        }
        let now = Instant::now();
        let bytes = db.shared.log_bytes_since_checkpoint.load(Ordering::Acquire);
        // The interval counts from the last checkpoint, or from open before the first one.
        let time_due_at = options.every.map(|every| guard.last_run.unwrap_or(opened) + every);
        let due =
            db.shared.checkpoint_byte_threshold().is_some_and(|t| bytes >= t) || (bytes > 0 && time_due_at.is_some_and(|at| now >= at));
        if due && retry_at.is_none_or(|at| now >= at) {
            drop(guard);
            if db.shared.check_running().is_err() {
                return; // a stopped database takes no more checkpoints
            }
            match db.checkpoint() {
                Ok(report) => {
                    retry_at = None;
                    tracing::debug!(lsn = report.lsn, file_bytes = report.file_bytes, "background checkpoint");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "background checkpoint failed; retrying later");
                    retry_at = Some(Instant::now() + RETRY_AFTER_FAILURE);
                }
            }
            guard = trigger.lock();
            continue;
        }
        // Commits wake the thread when the first bytes after a checkpoint arrive and when they
        // cross the byte threshold; deadlines in between are slept to.
        let wake_at = if due {
            retry_at
        } else if bytes > 0 {
            time_due_at
        } else {
            None
        };
        guard = match wake_at {
            Some(at) => {
                let wait = at.saturating_duration_since(now).max(Duration::from_millis(1));
                trigger.wakeup.wait_timeout(guard, wait).unwrap_or_else(|p| p.into_inner()).0
            }
            None => trigger.wakeup.wait(guard).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvValue, Space};
    use crate::record::{CommitRecord, Op};
    use crate::store::PruneRule;
    use engram_wal::storage::FaultStorage;

    fn kv(i: u64) -> Value {
        Value::Kv(KvValue::Json(serde_json::json!({ "i": i })))
    }

    /// A store with `keys` keys, each written at several LSNs, some deleted.
    /// Applies `op` as the whole commit at `lsn` (transaction `lsn`, committed at `1000 + lsn` ms).
    fn apply_one(store: &Store, lsn: Lsn, op: Op) {
        let record = CommitRecord {
            txn_id: lsn,
            commit_ts_ms: 1000 + lsn,
            ops: vec![op],
        };
        store.apply(lsn, record);
    }

    fn sample_store(commits: u64, keys: u64) -> Store {
        let store = Store::default();
        for lsn in 1..=commits {
            let key = Key::new("ns", Space::Kv, format!("k{:03}", lsn % keys).into_bytes());
            let op = if lsn % 7 == 0 {
                Op::Delete { key, before: kv(0) }
            } else {
                Op::Put {
                    key,
                    before: None,
                    after: kv(lsn),
                }
            };
            apply_one(&store, lsn, op);
        }
        store
    }

    fn setup(store: &Store, lsn: Lsn) -> (FaultStorage, PathBuf, CheckpointFile) {
        setup_pruned(store, lsn, PruneRule::Off).0
    }

    /// Writes the checkpoint at `lsn` that prunes by `rule`; returns the plan too.
    fn setup_pruned(store: &Store, lsn: Lsn, rule: PruneRule) -> ((FaultStorage, PathBuf, CheckpointFile), RetentionPlan) {
        let fs = FaultStorage::new();
        let dir = PathBuf::from("/db/checkpoints");
        ensure_dir(&fs, &dir).unwrap();
        let plan = store.plan_retention(lsn, rule);
        let (file, _) = write(&fs, &dir, store, &plan, (lsn, 1000 + lsn), None).unwrap();
        ((fs, dir, file), plan)
    }

    fn sample_key(k: u64) -> Key {
        Key::new("ns", Space::Kv, format!("k{k:03}").into_bytes())
    }

    #[test]
    fn a_checkpoint_round_trips_every_version_up_to_its_lsn_and_nothing_after() {
        // 200 versions of one key exceed MAX_VERSIONS_PER_ENTRY: the chain spans entries.
        let store = sample_store(400, 2);
        let (fs, _, file) = setup(&store, 300);
        let (header, contents) = read(&fs, &file.path, true).unwrap();
        let contents = contents.unwrap();
        assert_eq!((header.lsn, header.commit_count, header.key_count), (300, 300, 2));
        assert_eq!(header.version_count, 300);
        assert!(header.entry_count > header.key_count);
        assert_eq!(contents.commit_times, store.commit_times_upto(300));
        let rebuilt = Store::from_checkpoint(contents.chains, contents.commit_times);
        for at in [0, 1, 150, 299, 300] {
            for k in 0..2 {
                let key = Key::new("ns", Space::Kv, format!("k{k:03}").into_bytes());
                assert_eq!(rebuilt.history(&key, at), store.history(&key, at), "key {k} at {at}");
            }
        }
        let key = Key::new("ns", Space::Kv, b"k000".to_vec());
        assert_eq!(rebuilt.latest(&key).0, 300, "nothing after the checkpoint LSN");
    }

    #[test]
    fn an_empty_store_makes_a_valid_checkpoint() {
        let store = Store::default();
        let (fs, _, file) = setup(&store, 5);
        let (header, contents) = read(&fs, &file.path, true).unwrap();
        assert_eq!(header.body_bytes, 0);
        assert!(contents.unwrap().chains.is_empty());
        assert_eq!(file.file_bytes, (HEADER_BYTES + TRAILER_BYTES) as u64);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_rejected() {
        let store = sample_store(30, 4);
        let (fs, _, file) = setup(&store, 30);
        let good = fs.read_file(&file.path).unwrap();
        for cut in 0..good.len() {
            fs.overwrite_file(&file.path, good[..cut].to_vec());
            assert!(
                matches!(read(&fs, &file.path, true), Err(CoreError::CorruptCheckpoint { .. })),
                "cut at {cut}"
            );
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            fs.overwrite_file(&file.path, bad);
            assert!(
                matches!(read(&fs, &file.path, true), Err(CoreError::CorruptCheckpoint { .. })),
                "byte {i} flipped"
            );
        }
        fs.overwrite_file(&file.path, good);
        read(&fs, &file.path, true).unwrap();
    }

    #[test]
    fn the_header_is_little_endian_at_documented_offsets() {
        let h = Header {
            version: CHECKPOINT_FORMAT_VERSION,
            lsn: 0x0102,
            txn_id_floor: 3,
            commit_ts_floor_ms: 4,
            commit_count: 5,
            key_count: 6,
            entry_count: 7,
            version_count: 8,
            body_bytes: 9,
            history_horizon_lsn: 10,
        };
        let b = h.encode();
        assert_eq!(b.len(), 88);
        assert_eq!(&b[0..8], b"ENGRMCKP");
        assert_eq!(&b[8..16], &[4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[16..18], &[0x02, 0x01]);
        assert_eq!([b[24], b[32], b[40], b[48], b[56], b[64], b[72], b[80]], [3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(Header::decode(&b).unwrap(), h);
        // Version 1: 80 bytes, no horizon (read as 0).
        let v1 = Header {
            version: 1,
            history_horizon_lsn: 0,
            ..h
        };
        let b = v1.encode();
        assert_eq!(b.len(), 80);
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(Header::decode(&b).unwrap(), v1);
        // A horizon beyond the checkpoint is refused.
        let bad = Header {
            history_horizon_lsn: 0x0103,
            ..h
        };
        assert!(Header::decode(&bad.encode()).is_err());
    }

    #[test]
    fn an_entry_is_encoded_as_documented() {
        // The example in docs/checkpoint-format.md.
        let key = Key::new("ns", Space::Kv, b"k".to_vec());
        let value = Value::Kv(KvValue::Json(serde_json::json!(1)));
        // Version 3's encoding: the value itself (postcard encodes `&T` exactly as `T`).
        let mut entry = entry::EntryOut {
            key: &key,
            created: None,
            versions: vec![entry::VersionOut {
                lsn: 300,
                op_index: 0,
                value: Some(&value),
            }],
        };
        let bytes = postcard::to_stdvec(&entry).unwrap();
        assert_eq!(
            bytes,
            [0x02, 0x6e, 0x73, 0x04, 0x01, 0x6b, 0x00, 0x01, 0xac, 0x02, 0x00, 0x01, 0x04, 0x01, 0x01, 0x31]
        );
        // The same version after pruning, when its incarnation was created at (200, 1).
        entry.created = Some((200, 1));
        let bytes = postcard::to_stdvec(&entry).unwrap();
        assert_eq!(
            bytes,
            [0x02, 0x6e, 0x73, 0x04, 0x01, 0x6b, 0x01, 0xc8, 0x01, 0x01, 0x01, 0xac, 0x02, 0x00, 0x01, 0x04, 0x01, 0x01, 0x31]
        );
    }

    /// A file of `store` at `lsn` in format version 1, 2 or 3, written as older builds did:
    /// in version 3, embeddings inside the postcard encoding (a byte string); before, as f32
    /// sequences; in version 1, no `created` and no history horizon.
    fn write_legacy(fs: &FaultStorage, store: &Store, lsn: Lsn, version: u32) -> PathBuf {
        #[derive(Serialize)]
        struct EntryOutV1<'a> {
            key: &'a Key,
            versions: Vec<entry::VersionOut<legacy::Value>>,
        }
        let mut body = Vec::new();
        let times = store.commit_times_upto(lsn);
        for (l, t) in &times {
            body.extend_from_slice(&l.to_le_bytes());
            body.extend_from_slice(&t.to_le_bytes());
        }
        let chunk = store.export_chunk(None, lsn, usize::MAX, PruneRule::Off);
        let (mut entries, mut versions) = (0, 0);
        for (key, chain) in &chunk.chains {
            for (i, run) in chain.versions.chunks(MAX_VERSIONS_PER_ENTRY).enumerate() {
                let created = if i == 0 { chain.created } else { None };
                let as_legacy = |v: &Value| legacy::Value::from(v.clone());
                let bytes = match version {
                    FORMAT_VERSION_3 => postcard::to_stdvec(&entry::EntryOut::of(key, created, run, |v| v)),
                    FORMAT_VERSION_2 => postcard::to_stdvec(&entry::EntryOut::of(key, created, run, as_legacy)),
                    _ => postcard::to_stdvec(&EntryOutV1 {
                        key,
                        versions: entry::EntryOut::of(key, None, run, as_legacy).versions,
                    }),
                }
                .unwrap();
                body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                body.extend_from_slice(&bytes);
                entries += 1;
                versions += run.len() as u64;
            }
        }
        let header = Header {
            version,
            lsn,
            txn_id_floor: lsn,
            commit_ts_floor_ms: 1000 + lsn,
            commit_count: times.len() as u64,
            key_count: chunk.chains.len() as u64,
            entry_count: entries,
            version_count: versions,
            body_bytes: body.len() as u64,
            history_horizon_lsn: 0,
        };
        let mut file = header.encode();
        file.extend_from_slice(&body);
        let crc = crc32c::crc32c(&file);
        file.extend_from_slice(&crc.to_le_bytes());
        let dir = PathBuf::from("/db/checkpoints");
        ensure_dir(fs, &dir).unwrap();
        let path = dir.join(file_name(lsn));
        fs.open(&path, OpenMode::CreateNew).unwrap().write_all_at(&file, 0).unwrap();
        path
    }

    /// `sample_store(commits, keys)` followed by memories with embeddings (whose encoding
    /// changed in version 3), one commit each.
    fn sample_store_with_memories(commits: u64, keys: u64, memories: u64) -> Store {
        let store = sample_store(commits, keys);
        for m in 0..memories {
            let lsn = commits + 1 + m;
            let memory = crate::model::Memory {
                id: format!("m{m}"),
                text: format!("memory {m}"),
                embedding: Some(vec![m as f32, -0.5, f32::MIN_POSITIVE, 1e30].into()),
                metadata: crate::Metadata::new(),
                created_ms: lsn,
                updated_ms: lsn,
            };
            let op = Op::Put {
                key: Key::new("ns", Space::Memory, format!("m{m}").into_bytes()),
                before: None,
                after: Value::Memory(memory),
            };
            apply_one(&store, lsn, op);
        }
        store
    }

    #[test]
    fn version_1_2_and_3_checkpoints_are_still_read() {
        let store = sample_store_with_memories(200, 3, 5);
        for version in [FORMAT_VERSION_1, FORMAT_VERSION_2, FORMAT_VERSION_3] {
            let fs = FaultStorage::new();
            let path = write_legacy(&fs, &store, 205, version);
            let (header, contents) = read(&fs, &path, true).unwrap();
            let contents = contents.unwrap();
            assert_eq!((header.version, header.lsn, header.history_horizon_lsn), (version, 205, 0));
            assert_eq!(contents.file.history_horizon_lsn, 0);
            assert!(contents.chains.iter().all(|(_, c)| c.created.is_none()));
            let rebuilt = Store::from_checkpoint(contents.chains, contents.commit_times);
            for at in [0, 1, 75, 150, 203, 205] {
                for k in 0..3 {
                    assert_eq!(
                        rebuilt.history(&sample_key(k), at),
                        store.history(&sample_key(k), at),
                        "version {version}: key {k} at {at}"
                    );
                }
                assert_eq!(
                    rebuilt.scan_prefix("ns", Space::Memory, b"", at),
                    store.scan_prefix("ns", Space::Memory, b"", at),
                    "version {version}: memories at {at}"
                );
            }
        }
    }

    /// Whether each embedding of the loaded chains is read in place from the file.
    fn embeddings_mapped(chains: &[(Key, Chain)]) -> Vec<bool> {
        chains
            .iter()
            .flat_map(|(_, chain)| chain.versions.iter())
            .filter_map(|v| match v.value.as_deref() {
                Some(Value::Memory(m)) => m.embedding.as_ref().map(|e| e.is_mapped()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn memories_with_embeddings_round_trip_through_a_checkpoint() {
        let store = sample_store_with_memories(20, 3, 5);
        let (fs, _, file) = setup(&store, 25);
        let (header, contents) = read(&fs, &file.path, true).unwrap();
        assert_eq!(header.version, CHECKPOINT_FORMAT_VERSION);
        let contents = contents.unwrap();
        // Storage that is not the real file system cannot be mapped: the floats are copied.
        assert_eq!(embeddings_mapped(&contents.chains), [false; 5]);
        let rebuilt = Store::from_checkpoint(contents.chains, contents.commit_times);
        let memories = rebuilt.scan_prefix("ns", Space::Memory, b"", 25);
        assert_eq!(memories.len(), 5);
        assert_eq!(memories, store.scan_prefix("ns", Space::Memory, b"", 25));
    }

    #[test]
    fn a_load_from_the_file_system_reads_every_embedding_in_place_and_a_verification_copies_none() {
        let store = sample_store_with_memories(20, 3, 40);
        let tmp = tempfile::tempdir().unwrap();
        let storage = engram_wal::storage::StdStorage;
        let dir = tmp.path().join("checkpoints");
        ensure_dir(&storage, &dir).unwrap();
        let plan = store.plan_retention(60, PruneRule::Off);
        let (file, _) = write(&storage, &dir, &store, &plan, (60, 1060), None).unwrap();
        assert!(!embedding::is_mapped(&file.path), "writing maps nothing");
        assert!(read(&storage, &file.path, false).unwrap().1.is_none());
        assert!(!embedding::is_mapped(&file.path), "a verification maps nothing");
        let contents = read(&storage, &file.path, true).unwrap().1.unwrap();
        assert_eq!(embeddings_mapped(&contents.chains), [true; 40]);
        assert!(embedding::is_mapped(&file.path));
        let rebuilt = Store::from_checkpoint(contents.chains, contents.commit_times);
        assert_eq!(
            rebuilt.scan_prefix("ns", Space::Memory, b"", 60),
            store.scan_prefix("ns", Space::Memory, b"", 60)
        );
        assert_eq!(state_at(&rebuilt, 3, 60), state_at(&store, 3, 60));
        drop(rebuilt);
        assert!(
            embedding::is_mapped(&file.path),
            "the load's own handle (to release pages after the open)"
        );
        drop(contents.mapping);
        assert!(!embedding::is_mapped(&file.path), "the mapping ends with the last embedding in it");
    }

    /// Everything a read at `at` can see of the sample keys: values, creation orders, history.
    fn state_at(store: &Store, keys: u64, at: Lsn) -> String {
        let scan = store.scan_prefix("ns", Space::Kv, b"", at);
        let histories: Vec<_> = (0..keys).map(|k| store.history(&sample_key(k), at)).collect();
        format!("{scan:?} {histories:?} {}", store.lsn_at_time(1000 + at))
    }

    #[test]
    fn a_pruned_checkpoint_holds_exactly_what_the_pruned_store_holds() {
        // Key 0 gets 100 versions below the checkpoint: its chain spans entries before pruning.
        for rule in [
            PruneRule::OlderThanNewest(1),
            PruneRule::OlderThanNewest(3),
            PruneRule::SupersededAt(120),
            PruneRule::SupersededAt(7),
        ] {
            let store = sample_store(400, 3);
            let scan = |s: &Store, at| format!("{:?}", s.scan_prefix("ns", Space::Kv, b"", at));
            let before: Vec<String> = (0..=400).map(|at| scan(&store, at)).collect();
            let ((fs, _, file), plan) = setup_pruned(&store, 300, rule);
            let horizon = plan.horizon;
            assert!(horizon > 0 && horizon <= 300, "{rule:?}: horizon {horizon}");
            let planned = plan.versions_pruned;
            let (header, contents) = read(&fs, &file.path, true).unwrap();
            let contents = contents.unwrap();
            assert_eq!(header.history_horizon_lsn, horizon);
            assert_eq!(header.version_count, 300 - planned, "{rule:?}");
            assert_eq!((store.prune(plan).0, store.history_horizon()), (planned, horizon));
            // The file and the pruned store agree, at and above the horizon, to the checkpoint.
            let rebuilt = Store::from_checkpoint(contents.chains, contents.commit_times);
            rebuilt.restore_history_horizon(contents.file.history_horizon_lsn);
            assert_eq!(rebuilt.commit_times_upto(300), store.commit_times_upto(300), "{rule:?}");
            for at in horizon..=300 {
                assert_eq!(state_at(&rebuilt, 3, at), state_at(&store, 3, at), "{rule:?} at {at}");
            }
            // Reads at or above the horizon are what they were before pruning (histories aside,
            // creation orders included).
            for at in horizon..=400 {
                assert_eq!(before[at as usize], scan(&store, at), "{rule:?} at {at}");
                assert!(store.check_retained(at).is_ok());
            }
            assert!(matches!(
                store.check_retained(horizon - 1),
                Err(CoreError::HistoryNotRetained { lsn, oldest }) if lsn == horizon - 1 && oldest == horizon
            ));
            if let PruneRule::OlderThanNewest(n) = rule {
                for k in 0..3 {
                    let below: Vec<_> = store.history(&sample_key(k), 300);
                    assert!(below.len() <= n, "{rule:?} key {k}");
                }
            }
        }
    }

    #[test]
    fn file_names_carry_the_lsn_in_twenty_digits() {
        assert_eq!(file_name(42), "ckpt-00000000000000000042.ckpt");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name(&tmp_name(42)), None);
        assert_eq!(parse_file_name("ckpt-42.ckpt"), None);
    }
}
