//! Progress display: indicatif bars when standard error is a terminal, plain log lines
//! otherwise (so logs collected by a service manager stay readable).

use engram_core::ReplayProgress;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Log replay while the database opens.
pub struct Replay {
    bar: Option<ProgressBar>,
}

impl Replay {
    pub fn start() -> Replay {
        let bar = on_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} replaying the log: {msg} [{elapsed}]").expect("valid template"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Replay { bar }
    }

    pub fn callback(&self) -> ReplayProgress {
        let bar = self.bar.clone();
        Arc::new(move |records, last_lsn| match &bar {
            Some(bar) => bar.set_message(format!("{records} records (log ends at LSN {last_lsn})")),
            None => tracing::info!(records, last_lsn, "replaying the log"),
        })
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A count of items (export lines).
pub struct Counter {
    bar: Option<ProgressBar>,
    what: &'static str,
    unit: &'static str,
}

impl Counter {
    pub fn start(what: &'static str, unit: &'static str) -> Counter {
        let bar = on_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Counter { bar, what, unit }
    }

    pub fn set(&self, n: u64) {
        match &self.bar {
            Some(bar) => bar.set_message(format!("{} {n} {}", self.what, self.unit)),
            None if n.is_multiple_of(100_000) && n > 0 => tracing::info!("{} {n} {}", self.what, self.unit),
            None => {}
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Bytes of a file read (import).
pub struct Bytes {
    bar: Option<ProgressBar>,
    total: u64,
}

impl Bytes {
    pub fn start(what: &str, total: u64) -> Bytes {
        let bar = on_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(what.to_string());
            bar
        });
        Bytes { bar, total }
    }

    pub fn set(&self, n: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(n),
            None if n == self.total => tracing::info!(bytes = n, "input read"),
            None => {}
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
