//! Every store in the durable-commit workload, each configured so that a commit returns only
//! once it is on disk. `settings()` is printed in the report as the peer's exact configuration.

use crate::workload::{Memory, Variant, DIMENSION};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

pub trait Peer: Sync {
    /// Commits one memory, handed over as an application would hand it (the peer may move its
    /// parts into its own structures); returns once the peer reports it durable.
    fn commit(&self, writer: usize, memory: Memory) -> Result<(), String>;

    /// Waits until work the peer starts at open is done, so it does not compete with the
    /// measured commits (Engram's log zero-fills its spare segments in the background).
    fn settle(&self) {}

    /// Work the peer still owes for the commits it acknowledged, read right after a point:
    /// Engram's search index queue (commits do not wait for the indexer until its queue is
    /// full, so a short point can acknowledge commits whose indexing is still to come).
    fn owed_after_point(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Waits (at most 60 s) until the log in `wal_dir` has its active segment and both spare
/// segments prepared and nothing is being zero-filled. Rotations later in the run, and the
/// preparation they trigger, stay inside the measurement.
fn wait_for_spare_segments(wal_dir: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let names: Vec<String> = std::fs::read_dir(wal_dir)
            .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        let segments = names
            .iter()
            .filter(|n| engram_wal::layout::parse_segment_file_name(n).is_some())
            .count();
        if segments >= 3 && !names.iter().any(|n| n.ends_with(".tmp")) {
            return;
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "warning: {} has no prepared spare segments after 60 s; measuring anyway",
                wal_dir.display()
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    FloorAppend,
    FloorOverwrite,
    WalGroup,
    Engram,
    EngramSustained,
    Sqlite,
    Rocksdb,
    Redb,
    Fjall,
    Postgres,
}

pub const ALL: [PeerKind; 10] = [
    PeerKind::FloorAppend,
    PeerKind::FloorOverwrite,
    PeerKind::WalGroup,
    PeerKind::Engram,
    PeerKind::EngramSustained,
    PeerKind::Sqlite,
    PeerKind::Rocksdb,
    PeerKind::Redb,
    PeerKind::Fjall,
    PeerKind::Postgres,
];

impl PeerKind {
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::FloorAppend => "floor-append",
            PeerKind::FloorOverwrite => "floor-overwrite",
            PeerKind::WalGroup => "engram-wal",
            PeerKind::Engram => "engram",
            PeerKind::EngramSustained => "engram-sustained",
            PeerKind::Sqlite => "sqlite",
            PeerKind::Rocksdb => "rocksdb",
            PeerKind::Redb => "redb",
            PeerKind::Fjall => "fjall",
            PeerKind::Postgres => "postgres",
        }
    }

    pub fn settings(self) -> String {
        match self {
            PeerKind::FloorAppend => "one file opened O_APPEND, growing; each commit takes a mutex, write(2)s the record (as many bytes as Engram's commit record) and fdatasyncs before releasing it: no group commit".into(),
            PeerKind::FloorOverwrite => "one 256 MiB file zero-filled and fsynced first, then overwritten sequentially (pwrite + fdatasync under a mutex, wrapping at the end): the I/O pattern of a preallocated log, no group commit".into(),
            PeerKind::WalGroup => "engram-wal alone: Wal::open with WalOptions::default(), append_with(payload of Engram's record size, SyncPolicy::Always): group commit, no database on top".into(),
            PeerKind::Engram => "engram-core Database::open with DatabaseOptions::default() (durability SyncPolicy::Always: fdatasync before the commit returns; background checkpoints every 64 MiB of log); one memory per transaction (Database::begin, insert_memory, commit; the memory moves in, as from an application: no copy per attempt as Database::run's retry closure needs); allocator mimalloc, as in the engram binary (redb and fjall share it; SQLite and RocksDB allocate with glibc's malloc, M_TOP_PAD 64 MiB)".into(),
            PeerKind::EngramSustained => format!(
                "vector variant only: engram-core as for `engram`, but with DatabaseOptions::index_queue_bound.vector_bytes = {} MiB (about {} memories) instead of 256 MiB (about 175,000): the search indexer's queue fills during the warm-up, so writers are held to the rate the indexer sustains, and the point measures what a stream of vector commits can keep up (for a namespace growing from empty: insertions into a larger graph cost more)",
                SUSTAINED_INDEX_QUEUE_BYTES >> 20,
                SUSTAINED_INDEX_QUEUE_BYTES / (DIMENSION * 4)
            ),
            PeerKind::Sqlite => format!(
                "SQLite {} (Debian's libsqlite3 via rusqlite): journal_mode=WAL, synchronous=FULL, busy_timeout=60000 ms, one connection per writer, BEGIN IMMEDIATE; INSERT; COMMIT",
                rusqlite::version()
            ),
            PeerKind::Rocksdb => "RocksDB (Debian's librocksdb 7.8, linked dynamically, rocksdb crate 0.20.1): Options::default() + create_if_missing, one WriteBatch per commit, WriteOptions sync=true (RocksDB's WAL synced, fdatasync by default, before the write returns; concurrent writers share a write group)".into(),
            PeerKind::Redb => "redb 2: Database::create, one write transaction per commit with Durability::Immediate (redb's default: the commit returns after redb syncs its file); redb allows one writer at a time".into(),
            PeerKind::Fjall => "fjall 2: Config::new(dir).open(), one partition, one Batch per commit with durability(Some(PersistMode::SyncData)) (journal fdatasynced before commit returns)".into(),
            PeerKind::Postgres => "PostgreSQL 15 (Debian), private cluster started by bench/run.sh on 127.0.0.1: fsync=on, synchronous_commit=on, wal_sync_method=fdatasync, full_page_writes=on, commit_delay=0, shared_buffers=256MB, max_connections=200; one connection per writer (postgres crate), one autocommit INSERT per commit, embedding as real[]".into(),
        }
    }
}

pub struct OpenArgs<'a> {
    pub dir: &'a Path,
    pub variant: Variant,
    pub writers: usize,
    /// Bytes of Engram's commit record for this variant (what the floors and engram-wal write).
    pub record_bytes: usize,
    /// libpq-style connection string of the private PostgreSQL cluster.
    pub postgres: Option<&'a str>,
}

/// Opens a fresh instance of `kind` in `args.dir`; `Ok(None)` if the peer is not available in
/// this run (PostgreSQL without a cluster).
pub fn open(kind: PeerKind, args: &OpenArgs) -> Result<Option<Box<dyn Peer>>, String> {
    std::fs::create_dir_all(args.dir).map_err(|e| e.to_string())?;
    Ok(Some(match kind {
        PeerKind::FloorAppend => Box::new(FloorAppend::open(args)?),
        PeerKind::FloorOverwrite => Box::new(FloorOverwrite::open(args)?),
        PeerKind::WalGroup => Box::new(WalGroup::open(args)?),
        PeerKind::Engram => Box::new(Engram::open(args)?),
        PeerKind::EngramSustained => match args.variant {
            Variant::Vector => Box::new(Engram::open_with(args, sustained_options())?),
            // The text variant's indexer keeps up: the row would repeat `engram`'s.
            Variant::Text => return Ok(None),
        },
        PeerKind::Sqlite => Box::new(Sqlite::open(args)?),
        PeerKind::Rocksdb => Box::new(Rocksdb::open(args)?),
        PeerKind::Redb => Box::new(Redb::open(args)?),
        PeerKind::Fjall => Box::new(Fjall::open(args)?),
        PeerKind::Postgres => match args.postgres {
            Some(conn) => Box::new(Postgres::open(conn, args)?),
            None => return Ok(None),
        },
    }))
}

fn text_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn fdatasync(file: &File) -> Result<(), String> {
    file.sync_data().map_err(text_err)
}

struct FloorAppend {
    file: Mutex<File>,
    record: Vec<u8>,
}

impl FloorAppend {
    fn open(args: &OpenArgs) -> Result<Self, String> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(args.dir.join("floor.log"))
            .map_err(text_err)?;
        Ok(FloorAppend {
            file: Mutex::new(file),
            record: vec![0x5a; args.record_bytes],
        })
    }
}

impl Peer for FloorAppend {
    fn commit(&self, _writer: usize, _memory: Memory) -> Result<(), String> {
        use std::io::Write;
        let mut file = self.file.lock().unwrap();
        file.write_all(&self.record).map_err(text_err)?;
        fdatasync(&file)
    }
}

const OVERWRITE_FILE_BYTES: u64 = 256 * 1024 * 1024;

struct FloorOverwrite {
    state: Mutex<(File, u64)>,
    record: Vec<u8>,
}

impl FloorOverwrite {
    fn open(args: &OpenArgs) -> Result<Self, String> {
        use std::io::Write;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(args.dir.join("floor.zeroed"))
            .map_err(text_err)?;
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..OVERWRITE_FILE_BYTES / chunk.len() as u64 {
            file.write_all(&chunk).map_err(text_err)?;
        }
        file.sync_all().map_err(text_err)?;
        Ok(FloorOverwrite {
            state: Mutex::new((file, 0)),
            record: vec![0x5a; args.record_bytes],
        })
    }
}

impl Peer for FloorOverwrite {
    fn commit(&self, _writer: usize, _memory: Memory) -> Result<(), String> {
        let mut state = self.state.lock().unwrap();
        let (file, offset) = &mut *state;
        if *offset + self.record.len() as u64 > OVERWRITE_FILE_BYTES {
            *offset = 0;
        }
        file.write_all_at(&self.record, *offset).map_err(text_err)?;
        *offset += self.record.len() as u64;
        fdatasync(file)
    }
}

struct WalGroup {
    wal: engram_wal::Wal,
    dir: std::path::PathBuf,
    record: Vec<u8>,
}

impl WalGroup {
    fn open(args: &OpenArgs) -> Result<Self, String> {
        let wal = engram_wal::Wal::open(args.dir, engram_wal::WalOptions::default()).map_err(text_err)?;
        Ok(WalGroup {
            wal,
            dir: args.dir.to_path_buf(),
            record: vec![0x5a; args.record_bytes],
        })
    }
}

impl Peer for WalGroup {
    fn commit(&self, _writer: usize, _memory: Memory) -> Result<(), String> {
        self.wal
            .append_with(1, &self.record, engram_wal::SyncPolicy::Always)
            .map(|_| ())
            .map_err(text_err)
    }

    fn settle(&self) {
        wait_for_spare_segments(&self.dir);
    }
}

pub const ENGRAM_NAMESPACE: &str = "bench";

pub struct Engram {
    pub db: engram_core::Database,
}

/// The index queue's bound of `engram-sustained`: small enough to fill during a point's warm-up
/// at 64 writers.
pub const SUSTAINED_INDEX_QUEUE_BYTES: usize = 4 << 20;

fn sustained_options() -> engram_core::DatabaseOptions {
    let mut options = engram_core::DatabaseOptions::default();
    options.index_queue_bound.vector_bytes = SUSTAINED_INDEX_QUEUE_BYTES;
    options
}

impl Engram {
    pub fn open(args: &OpenArgs) -> Result<Self, String> {
        Engram::open_with(args, engram_core::DatabaseOptions::default())
    }

    pub fn open_with(args: &OpenArgs, options: engram_core::DatabaseOptions) -> Result<Self, String> {
        let db = engram_core::Database::open(args.dir, options).map_err(text_err)?;
        if args.variant == Variant::Vector {
            // Declared up front: otherwise the first inserts of 64 writers race to fix it.
            db.run(1, |t| t.declare_dimension(ENGRAM_NAMESPACE, DIMENSION)).map_err(text_err)?;
        }
        Ok(Engram { db })
    }
}

impl Peer for Engram {
    fn commit(&self, _writer: usize, memory: Memory) -> Result<(), String> {
        // One attempt, without `Database::run`: an insert's generated id cannot conflict, so
        // run's retry (which would need a copy of the memory for each attempt) is never needed,
        // and the memory moves into the transaction.
        let mut txn = self.db.begin();
        txn.insert_memory(ENGRAM_NAMESPACE, memory.into_engram()).map_err(text_err)?;
        txn.commit().map(|_| ()).map_err(text_err)
    }

    fn settle(&self) {
        wait_for_spare_segments(&self.db.dir().join(engram_core::WAL_DIR));
    }

    fn owed_after_point(&self) -> Option<serde_json::Value> {
        let index = self.db.index_stats();
        Some(serde_json::json!({
            "index_queued_changes": index.queued_changes,
            "index_vectors": index.vectors,
            "index_throttled_commits": index.throttled_commits,
        }))
    }
}

struct Sqlite {
    connections: Vec<Mutex<rusqlite::Connection>>,
}

impl Sqlite {
    fn open(args: &OpenArgs) -> Result<Self, String> {
        let path = args.dir.join("memories.sqlite");
        let mut connections = Vec::with_capacity(args.writers);
        for i in 0..args.writers {
            let conn = rusqlite::Connection::open(&path).map_err(text_err)?;
            conn.busy_timeout(std::time::Duration::from_secs(60)).map_err(text_err)?;
            let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(text_err)?;
            if mode != "wal" {
                return Err(format!("SQLite refused WAL mode: {mode}"));
            }
            conn.execute_batch("PRAGMA synchronous=FULL;").map_err(text_err)?;
            if i == 0 {
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS memories (id TEXT PRIMARY KEY, text TEXT NOT NULL, metadata TEXT NOT NULL, embedding BLOB)",
                )
                .map_err(text_err)?;
            }
            connections.push(Mutex::new(conn));
        }
        Ok(Sqlite { connections })
    }
}

impl Peer for Sqlite {
    fn commit(&self, writer: usize, memory: Memory) -> Result<(), String> {
        let mut conn = self.connections[writer].lock().unwrap();
        let txn = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(text_err)?;
        let embedding: Option<Vec<u8>> = memory.embedding.as_ref().map(|e| e.iter().flat_map(|x| x.to_le_bytes()).collect());
        txn.execute(
            "INSERT INTO memories (id, text, metadata, embedding) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![memory.id, memory.text, memory.metadata.to_string(), embedding],
        )
        .map_err(text_err)?;
        txn.commit().map_err(text_err)
    }
}

struct Rocksdb {
    db: rocksdb::DB,
    sync: rocksdb::WriteOptions,
}

impl Rocksdb {
    fn open(args: &OpenArgs) -> Result<Self, String> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        let db = rocksdb::DB::open(&options, args.dir).map_err(text_err)?;
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        Ok(Rocksdb { db, sync })
    }
}

impl Peer for Rocksdb {
    fn commit(&self, _writer: usize, memory: Memory) -> Result<(), String> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(memory.id.as_bytes(), memory.encode_value());
        self.db.write_opt(batch, &self.sync).map_err(text_err)
    }
}

const REDB_TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("memories");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(args: &OpenArgs) -> Result<Self, String> {
        let db = redb::Database::create(args.dir.join("memories.redb")).map_err(text_err)?;
        Ok(Redb { db })
    }
}

impl Peer for Redb {
    fn commit(&self, _writer: usize, memory: Memory) -> Result<(), String> {
        let mut txn = self.db.begin_write().map_err(text_err)?;
        txn.set_durability(redb::Durability::Immediate);
        {
            let mut table = txn.open_table(REDB_TABLE).map_err(text_err)?;
            table
                .insert(memory.id.as_str(), memory.encode_value().as_slice())
                .map_err(text_err)?;
        }
        txn.commit().map_err(text_err)
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    partition: fjall::PartitionHandle,
}

impl Fjall {
    fn open(args: &OpenArgs) -> Result<Self, String> {
        let keyspace = fjall::Config::new(args.dir).open().map_err(text_err)?;
        let partition = keyspace
            .open_partition("memories", fjall::PartitionCreateOptions::default())
            .map_err(text_err)?;
        Ok(Fjall { keyspace, partition })
    }
}

impl Peer for Fjall {
    fn commit(&self, _writer: usize, memory: Memory) -> Result<(), String> {
        let mut batch = self.keyspace.batch().durability(Some(fjall::PersistMode::SyncData));
        batch.insert(&self.partition, memory.id.as_bytes(), memory.encode_value());
        batch.commit().map_err(text_err)
    }
}

struct Postgres {
    clients: Vec<Mutex<postgres::Client>>,
}

impl Postgres {
    fn open(conn: &str, args: &OpenArgs) -> Result<Self, String> {
        let mut admin = postgres::Client::connect(conn, postgres::NoTls).map_err(text_err)?;
        admin
            .batch_execute(
                "DROP TABLE IF EXISTS memories;
                 CREATE TABLE memories (id text PRIMARY KEY, text text NOT NULL, metadata jsonb NOT NULL, embedding real[]);
                 CHECKPOINT;",
            )
            .map_err(text_err)?;
        let settings = admin
            .query_one("SELECT current_setting('synchronous_commit'), current_setting('fsync')", &[])
            .map_err(text_err)?;
        let (synchronous_commit, fsync): (String, String) = (settings.get(0), settings.get(1));
        if synchronous_commit != "on" || fsync != "on" {
            return Err(format!(
                "PostgreSQL is not durable: synchronous_commit={synchronous_commit}, fsync={fsync}"
            ));
        }
        let mut clients = Vec::with_capacity(args.writers);
        for _ in 0..args.writers {
            clients.push(Mutex::new(postgres::Client::connect(conn, postgres::NoTls).map_err(text_err)?));
        }
        Ok(Postgres { clients })
    }
}

impl Peer for Postgres {
    fn commit(&self, writer: usize, memory: Memory) -> Result<(), String> {
        let mut client = self.clients[writer].lock().unwrap();
        let metadata = memory.metadata.to_string();
        client
            .execute(
                "INSERT INTO memories (id, text, metadata, embedding) VALUES ($1, $2, $3::text::jsonb, $4)",
                &[&memory.id, &memory.text, &metadata, &memory.embedding],
            )
            .map(|_| ())
            .map_err(text_err)
    }
}
