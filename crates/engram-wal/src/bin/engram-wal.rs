//! `engram-wal`: a small tool to try and inspect an Engram write-ahead log.

use clap::{Parser, Subcommand};
use engram_wal::{SyncPolicy, Wal, WalOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "engram-wal",
    about = "Try and inspect an Engram write-ahead log",
    after_help = "Examples:\n  engram-wal demo                       # append from 8 threads to ./engram-data/wal, reopen, read back\n  engram-wal verify ./engram-data/wal   # check every record without repairing anything\n  engram-wal dump ./engram-data/wal --from 10 --limit 5\n  engram-wal stat ./engram-data/wal"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Appends durable records from several threads, reopens the log and reads them back.
    Demo {
        #[arg(long, default_value = "./engram-data/wal")]
        dir: PathBuf,
        #[arg(long, default_value_t = 8)]
        threads: usize,
        #[arg(long, default_value_t = 1000)]
        records_per_thread: usize,
    },
    /// Checks every segment and record (Absolute recovery: nothing is repaired or changed).
    Verify { dir: PathBuf },
    /// Prints records: LSN, kind, length and a preview of the payload.
    Dump {
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Prints what recovery finds: segments, records, LSN range.
    Stat { dir: PathBuf },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match command {
        Command::Demo {
            dir,
            threads,
            records_per_thread,
        } => {
            let wal = Wal::open(&dir, WalOptions::default())?;
            let report = wal.recovery_report().clone();
            println!(
                "opened {} (recovered {} records in {} segments, {:?})",
                dir.display(),
                report.records,
                report.segments,
                report.elapsed
            );
            let started = Instant::now();
            std::thread::scope(|s| -> Result<(), engram_wal::Error> {
                let workers: Vec<_> = (0..threads)
                    .map(|t| {
                        let wal = &wal;
                        s.spawn(move || -> Result<(), engram_wal::Error> {
                            for i in 0..records_per_thread {
                                wal.append_with(1, format!("thread {t} record {i}").as_bytes(), SyncPolicy::Always)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                workers.into_iter().try_for_each(|w| w.join().expect("worker thread"))
            })?;
            let elapsed = started.elapsed();
            let stats = wal.stats();
            let appended = threads * records_per_thread;
            println!(
                "{appended} durable appends from {threads} threads in {elapsed:.2?}: {:.0} appends/s, {} fdatasyncs ({:.1} records per sync, p50 sync {:.0} us)",
                appended as f64 / elapsed.as_secs_f64(),
                stats.syncs,
                stats.records_per_sync,
                stats.sync_latency_p50_us
            );
            let last = wal.last_lsn();
            wal.close()?;
            let wal = Wal::open(&dir, WalOptions::default())?;
            let read = wal.reader(wal.first_lsn())?.count();
            println!("reopened: {read} records readable, LSNs {}..={last}", wal.first_lsn());
        }
        Command::Verify { dir } => {
            let r = engram_wal::inspect::verify(&engram_wal::inspect::open_existing(&dir)?)?;
            println!(
                "ok: {} records ({} payload bytes), LSNs {}..={}, {} segments",
                r.records, r.payload_bytes, r.first_lsn, r.last_lsn, r.segments
            );
        }
        Command::Dump { dir, from, limit } => {
            let wal = engram_wal::inspect::open_existing(&dir)?;
            engram_wal::inspect::dump(&wal, from, limit, &mut std::io::stdout().lock())?;
        }
        Command::Stat { dir } => {
            let r = engram_wal::inspect::stat(&engram_wal::inspect::open_existing(&dir)?);
            println!("segments:       {}", r.segments);
            println!("records:        {}", r.records);
            println!("LSN range:      {}..={}", r.first_lsn, r.last_lsn);
            println!("bytes scanned:  {}", r.bytes_scanned);
            println!("recovery time:  {:?}", r.recovery_time);
        }
    }
    Ok(())
}
