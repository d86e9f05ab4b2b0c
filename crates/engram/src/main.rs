//! `engram`: the Engram database as a program. See `engram --help` and the README.

mod progress;

use clap::{Parser, Subcommand};
use engram_core::{Database, DatabaseOptions, GraphReads, KvReads, MemoryReads};
use engram_server::{router, serve, shutdown_signal, AppState, Config, Embedder};
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

type Failure = Box<dyn std::error::Error + Send + Sync>;

const EXAMPLES: &str = "Examples:
  engram serve                                   # data in ./engram-data, HTTP on 127.0.0.1:7700
  engram serve --data /var/lib/engram --listen 0.0.0.0:7700 --config engram.toml
  engram mcp --data ./engram-data                # MCP over stdio, for an MCP client's config
  curl -X POST localhost:7700/v1/namespaces/agent-1/memories -H 'content-type: application/json' -d '{\"text\":\"likes tea\"}'
  engram import --namespace agent-1 memory.jsonl  # a reference MCP memory server's file, or an engram export
  engram export --output backup.jsonl
  engram checkpoint
  engram status
  engram wal verify";

#[derive(Parser)]
#[command(name = "engram", version, about = "Engram: a durable memory database for AI agents", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(clap::Args, Clone)]
struct DataArg {
    /// Database directory.
    #[arg(long, default_value = engram_server::config::DEFAULT_DATA_DIR)]
    data: PathBuf,
}

#[derive(Subcommand)]
enum Commands {
    /// Runs the HTTP API until SIGTERM or Ctrl-C (then finishes requests in flight and syncs).
    #[command(
        after_help = "Examples:\n  engram serve\n  engram serve --listen 127.0.0.1:0 --data /tmp/engram\n  ENGRAM_EMBEDDER_URL=http://127.0.0.1:11434/v1 ENGRAM_EMBEDDER_MODEL=nomic-embed-text engram serve"
    )]
    Serve {
        /// Database directory [default: ./engram-data, or `data` in the config file].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:7700, or `listen` in the config file]. A
        /// non-loopback address needs an API key in the config.
        #[arg(long)]
        listen: Option<String>,
        /// TOML configuration: keys, limits, embedder (docs/http-api.md).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Serves MCP (the reference memory server's tools, plus remember/forget/history) on standard
    /// input and output for one client session. Logs go to standard error only.
    #[command(
        after_help = "Example client configuration:\n  {\"mcpServers\":{\"memory\":{\"command\":\"engram\",\"args\":[\"mcp\",\"--data\",\"/path/to/engram-data\"]}}}"
    )]
    Mcp {
        /// Database directory [default: ./engram-data, or `data` in the config file].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Namespace of the reference tools [default: `mcp_namespace` in the config file, or `default`].
        #[arg(long)]
        namespace: Option<String>,
        /// TOML configuration (the embedder, `data`, `mcp_namespace`; docs/http-api.md).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Inspects the write-ahead log (read-only; the server must be stopped).
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// Takes a checkpoint now and truncates the log it covers (the server must be stopped;
    /// while it runs, use POST /v1/admin/checkpoint).
    #[command(after_help = "Example:\n  engram checkpoint --data ./engram-data")]
    Checkpoint {
        #[command(flatten)]
        data: DataArg,
    },
    /// Writes every namespace's memories, graph and key/value state as JSON Lines.
    #[command(after_help = "Examples:\n  engram export > backup.jsonl\n  engram export --output backup.jsonl")]
    Export {
        #[command(flatten)]
        data: DataArg,
        /// Output file [default: standard output].
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Imports JSON Lines (an engram export, or an MCP reference memory server's memory.jsonl):
    /// reads the file once to check every line (a bad line imports nothing and is named), then
    /// again to commit it in batches of 10,000 lines or 16 MiB, so memory use does not grow
    /// with the file.
    #[command(after_help = "Examples:\n  engram import backup.jsonl\n  engram import --namespace agent-1 ~/.mcp/memory.jsonl")]
    Import {
        #[command(flatten)]
        data: DataArg,
        /// Namespace for lines that name none (the reference server's lines).
        #[arg(long, default_value = "default")]
        namespace: String,
        file: PathBuf,
    },
    /// Prints the database's state: LSNs, checkpoint, log, namespaces and their sizes.
    #[command(after_help = "Example:\n  engram status --data ./engram-data")]
    Status {
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(Subcommand)]
enum WalCommand {
    /// Checks every record (nothing is repaired).
    Verify {
        #[command(flatten)]
        data: DataArg,
    },
    /// Prints records: LSN, kind, length, a preview.
    Dump {
        #[command(flatten)]
        data: DataArg,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Prints what recovery finds: segments, records, LSN range.
    Stat {
        #[command(flatten)]
        data: DataArg,
    },
}

/// mimalloc rather than glibc's malloc: a store of many small values read at random pays a
/// cache and TLB miss per value, and mimalloc keeps values of one size together (get-by-id
/// 1.65x glibc's rate, commits ~6 % less CPU: docs/architecture.md, *Allocator*).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the database with the engine's defaults, showing replay progress; returns it and how
/// long opening took.
fn open(dir: &Path) -> Result<(Database, std::time::Duration), Failure> {
    open_configured(dir, &engram_server::config::Config::default())
}

/// [`open`] with the options a configuration file sets (the search index queue's bound).
fn open_configured(dir: &Path, config: &engram_server::config::Config) -> Result<(Database, std::time::Duration), Failure> {
    let started = Instant::now();
    let replay = progress::Replay::start();
    let options = DatabaseOptions {
        on_replay_progress: Some(replay.callback()),
        index_queue_bound: config.index.queue_bound(),
        ..Default::default()
    };
    let db = Database::open(dir, options).map_err(|e| format!("cannot open the database in {}: {e}", dir.display()))?;
    replay.finish();
    let elapsed = started.elapsed();
    let report = db.open_report();
    tracing::info!(
        dir = %dir.display(),
        checkpoint_lsn = report.checkpoint_lsn,
        replayed_records = report.replayed_records,
        log_recovery_ms = report.log_recovery_us / 1000,
        checkpoint_load_ms = report.checkpoint_load_us / 1000,
        index_load_ms = report.index_load_us / 1000,
        replay_ms = report.replay_us / 1000,
        visible_lsn = db.visible_lsn(),
        elapsed_ms = elapsed.as_millis() as u64,
        "database open"
    );
    for rejected in &report.rejected_checkpoints {
        tracing::warn!(path = %rejected.path.display(), reason = %rejected.reason, "checkpoint skipped");
    }
    Ok((db, elapsed))
}

fn run(command: Commands) -> Result<(), Failure> {
    match command {
        Commands::Serve { data, listen, config } => run_serve(data, listen, config),
        Commands::Mcp { data, namespace, config } => run_mcp(data, namespace, config),
        Commands::Wal { command } => run_wal(command),
        Commands::Checkpoint { data } => {
            let (db, _) = open(&data.data)?;
            let r = db.checkpoint()?;
            println!(
                "checkpoint at LSN {} ({}): {} keys, {} versions, {} bytes; log kept from LSN {} ({} segments removed); search index file {} in {:.1?}",
                r.lsn,
                if r.written {
                    "written"
                } else {
                    "unchanged: nothing committed since the last one"
                },
                r.keys,
                r.versions,
                r.file_bytes,
                r.log_kept_from,
                r.log_segments_removed,
                if r.index_file_written {
                    "written"
                } else {
                    "deferred: the indexes have not reached the checkpoint yet"
                },
                r.elapsed
            );
            Ok(())
        }
        Commands::Export { data, output } => {
            let (db, _) = open(&data.data)?;
            let bar = progress::Counter::start("exported", "lines");
            let report = match &output {
                Some(path) => {
                    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
                    let mut out = BufWriter::new(file);
                    let report = engram_server::jsonl::export(&db, &mut out, |n| bar.set(n))?;
                    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                    report
                }
                None => engram_server::jsonl::export(&db, &mut BufWriter::new(std::io::stdout().lock()), |n| bar.set(n))?,
            };
            bar.finish();
            let c = &report.counts;
            tracing::info!(
                lsn = report.lsn,
                namespaces = c.namespaces,
                memories = c.memories,
                entities = c.entities,
                relations = c.relations,
                kv = c.kv,
                "export done"
            );
            Ok(())
        }
        Commands::Import { data, namespace, file } => {
            let size = std::fs::metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?.len();
            let (db, _) = open(&data.data)?;
            let checking = progress::Bytes::start("checking", size);
            let mut committing: Option<progress::Bytes> = None;
            let options = engram_server::jsonl::ImportOptions::default();
            let result = engram_server::jsonl::import_file(&db, &file, &namespace, &options, |phase, n| match phase {
                engram_server::jsonl::ImportPhase::Checking => checking.set(n),
                engram_server::jsonl::ImportPhase::Committing => {
                    committing.get_or_insert_with(|| progress::Bytes::start("importing", size)).set(n)
                }
            });
            checking.finish();
            if let Some(bar) = committing {
                bar.finish();
            }
            let report = result.map_err(|e| format!("{}: {e}", file.display()))?;
            let c = &report.counts;
            println!(
                "imported at LSN {} in {} transactions: {} namespace settings, {} memories, {} entities, {} relations, {} keys",
                report.lsn, report.batches, c.namespaces, c.memories, c.entities, c.relations, c.kv
            );
            Ok(())
        }
        Commands::Status { data } => {
            let (db, elapsed) = open(&data.data)?;
            print_status(&db, elapsed)
        }
    }
}

fn print_status(db: &Database, open_time: std::time::Duration) -> Result<(), Failure> {
    let w = db.wal_stats();
    let mut out = std::io::stdout().lock();
    writeln!(out, "directory:         {}", db.dir().display())?;
    writeln!(out, "visible LSN:       {}", db.visible_lsn())?;
    writeln!(
        out,
        "last checkpoint:   {}",
        db.last_checkpoint_lsn().map_or("none".into(), |l| format!("LSN {l}"))
    )?;
    writeln!(out, "history horizon:   LSN {}", db.history_horizon_lsn())?;
    writeln!(
        out,
        "log:               LSNs {}..={} in {} segments",
        w.first_lsn, w.last_lsn, w.segments
    )?;
    writeln!(
        out,
        "open took:         {open_time:.1?} ({} records replayed)",
        db.open_report().replayed_records
    )?;
    let cursors = db.cursors();
    writeln!(out, "cursors:           {}", cursors.len())?;
    for (name, lsn) in cursors {
        writeln!(out, "  {name}: LSN {lsn}")?;
    }
    let snapshot = db.snapshot();
    for ns in snapshot.namespaces()? {
        let memories = snapshot.list_memories(&ns)?.len();
        let graph = snapshot.read_graph(&ns)?;
        let keys = snapshot.kv_scan_prefix(&ns, b"")?.len();
        let dimension = snapshot.dimension(&ns).map_or("unset".into(), |d| d.to_string());
        writeln!(
            out,
            "namespace {ns}: {memories} memories (dimension {dimension}), {} entities, {} relations, {keys} keys",
            graph.entities.len(),
            graph.relations.len()
        )?;
    }
    Ok(())
}

fn run_wal(command: WalCommand) -> Result<(), Failure> {
    use engram_wal::inspect;
    let wal_dir = |d: &DataArg| d.data.join(engram_core::WAL_DIR);
    match command {
        WalCommand::Verify { data } => {
            let r = inspect::verify(&inspect::open_existing(&wal_dir(&data))?)?;
            println!(
                "ok: {} records ({} payload bytes), LSNs {}..={}, {} segments",
                r.records, r.payload_bytes, r.first_lsn, r.last_lsn, r.segments
            );
        }
        WalCommand::Dump { data, from, limit } => {
            let wal = inspect::open_existing(&wal_dir(&data))?;
            inspect::dump(&wal, from, limit, &mut std::io::stdout().lock())?;
        }
        WalCommand::Stat { data } => {
            let r = inspect::stat(&inspect::open_existing(&wal_dir(&data))?);
            println!("segments:       {}", r.segments);
            println!("records:        {}", r.records);
            println!("LSN range:      {}..={}", r.first_lsn, r.last_lsn);
            println!("bytes scanned:  {}", r.bytes_scanned);
            println!("recovery time:  {:?}", r.recovery_time);
        }
    }
    Ok(())
}

/// The config file (or the defaults), with the embedder from the environment.
fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    let mut config = match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.apply_env();
    Ok(config)
}

fn run_mcp(data: Option<PathBuf>, namespace: Option<String>, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path.as_deref())?;
    let data = data
        .or_else(|| config.data.clone())
        .unwrap_or_else(|| PathBuf::from(engram_server::config::DEFAULT_DATA_DIR));
    let namespace = namespace.unwrap_or_else(|| config.mcp_namespace().to_string());
    engram_core::validate_namespace(&namespace).map_err(|e| format!("--namespace: {e}"))?;
    let embedder = config.embedder.as_ref().map(Embedder::new).transpose()?;
    let (db, _) = open_configured(&data, &config)?;
    let server = match embedder {
        Some(embedder) => {
            tracing::info!(endpoint = embedder.endpoint(), model = embedder.model(), "embedder configured");
            let embedder: Arc<dyn engram_mcp::TextEmbedder> = Arc::new(embedder);
            engram_mcp::EngramMcp::with_embedder(db, namespace.as_str(), embedder)?
        }
        None => engram_mcp::EngramMcp::new(db, namespace.as_str())?,
    };
    tracing::info!(data = %data.display(), namespace, "serving MCP on stdio");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(server.serve_stdio())?;
    tracing::info!("MCP session closed");
    Ok(())
}

fn run_serve(data: Option<PathBuf>, listen: Option<String>, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path.as_deref())?;
    let listen = listen
        .or_else(|| config.listen.clone())
        .unwrap_or_else(|| engram_server::config::DEFAULT_LISTEN.to_string());
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen:?} is not an address like 127.0.0.1:7700: {e}"))?;
    config.check_listen(&addr)?;
    if !addr.ip().is_loopback() && config.mcp_allowed_hosts.is_none() {
        tracing::warn!(
            "/mcp accepts only loopback Host names (localhost, 127.0.0.1, ::1); list the names clients use in mcp_allowed_hosts"
        );
    }
    let data = data
        .or_else(|| config.data.clone())
        .unwrap_or_else(|| PathBuf::from(engram_server::config::DEFAULT_DATA_DIR));
    let embedder = config.embedder.as_ref().map(Embedder::new).transpose()?;
    match &embedder {
        Some(e) => tracing::info!(endpoint = e.endpoint(), model = e.model(), "embedder configured"),
        None => tracing::info!("no embedder configured: text memories are stored without vectors; search over them is keyword-only"),
    }
    if config.keys.is_empty() {
        tracing::info!("no API keys configured: every request is allowed (loopback only)");
    }
    let (db, open_time) = open_configured(&data, &config)?;
    let state = AppState::new(db, config, embedder);
    state.metrics.set_replay_duration(open_time);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = listener.local_addr()?;
        tracing::info!(data = %data.display(), "listening on {bound}");
        let app = router(state.clone());
        serve(listener, state, app, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok::<(), Failure>(())
    })
}
