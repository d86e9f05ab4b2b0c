//! Long runs of the process-kill campaign (docs/reliability.md).
//!
//! engram-crashtest kill --kills 10000 --seed 7 --dir /tmp/engram-kill [--mix memory=4,graph=4,...]

use clap::{Parser, Subcommand};
use engram_crashtest::kill::{run_campaign, KillConfig};
use engram_crashtest::workload::Mix;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Engram durability campaigns")]
struct Cli {
    #[command(subcommand)]
    command: Campaign,
}

#[derive(Subcommand)]
enum Campaign {
    /// SIGKILL the workload process at random moments and check every recovery.
    Kill {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 1000)]
        kills: u64,
        /// Weights: memory=4,graph=4,kv=4,event=2,checkpoint=1,big=1
        #[arg(long, default_value_t = Mix::default())]
        mix: Mix,
        /// A new or empty directory (the database lives there across kills).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 150)]
        max_delay_ms: u64,
        /// The workload binary (default: crash-workload next to this one).
        #[arg(long)]
        workload: Option<PathBuf>,
    },
    /// Write seed inputs for the fuzz targets (from a real database) into <out>/<target>/.
    SeedCorpus {
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let (seed, kills, mix, dir, max_delay_ms, workload) = match Cli::parse().command {
        Campaign::Kill {
            seed,
            kills,
            mix,
            dir,
            max_delay_ms,
            workload,
        } => (seed, kills, mix, dir, max_delay_ms, workload),
        Campaign::SeedCorpus { out } => return seed_corpus(&out),
    };
    let workload_bin = workload.unwrap_or_else(|| {
        let me = std::env::current_exe().unwrap_or_default();
        me.with_file_name("crash-workload")
    });
    let config = KillConfig {
        seed,
        kills,
        mix,
        dir,
        workload_bin,
        max_delay_ms,
        progress_every: 100,
    };
    match run_campaign(&config) {
        Ok(stats) => {
            println!("kill campaign seed {seed} mix {}: {stats}; 0 violations", config.mix);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("VIOLATION: {e}");
            ExitCode::FAILURE
        }
    }
}

fn seed_corpus(out: &std::path::Path) -> ExitCode {
    for (i, (target, bytes)) in engram_crashtest::fuzzing::seed_inputs().into_iter().enumerate() {
        let dir = out.join(target);
        let written = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(dir.join(format!("seed-{i:03}")), bytes));
        if let Err(e) = written {
            eprintln!("writing {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
