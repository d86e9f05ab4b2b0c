//! The process-kill campaign: run the workload process (`crash-workload`) on a real directory,
//! SIGKILL it at a random moment, reopen the directory and check it against the commits the
//! process acknowledged; repeat on the same directory, so that every run also starts from a
//! recovered database.

use crate::rng::{sub_seed, Rng};
use crate::state::{read_feed, read_state, Effects, Flat};
use crate::workload::{database_options, Mix};
use engram_core::{Database, Lsn};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct KillConfig {
    pub seed: u64,
    pub kills: u64,
    pub mix: Mix,
    pub dir: PathBuf,
    pub workload_bin: PathBuf,
    /// Each run is killed after a delay drawn uniformly from 0 to this (its open included).
    pub max_delay_ms: u64,
    /// Print a progress line to stderr every this many kills (0: never).
    pub progress_every: u64,
}

#[derive(Debug, Clone, Default)]
pub struct KillStats {
    pub kills: u64,
    pub acknowledged: u64,
    /// The commit in flight at the kill was found whole / was found absent / had no visible
    /// effect (either is correct and they cannot be told apart).
    pub in_flight_present: u64,
    pub in_flight_absent: u64,
    pub in_flight_no_effect: u64,
    /// Kills that landed before the process had opened the database (inside recovery).
    pub killed_during_open: u64,
    pub checkpoints: u64,
    pub feed_transactions_checked: u64,
    pub last_lsn: Lsn,
    pub elapsed: Duration,
}

impl std::fmt::Display for KillStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kills, {} acknowledged commits verified, in-flight commit present {} / absent {} / no visible effect {}, \
             {} kills during open, {} checkpoints, {} feed transactions checked, last LSN {}, {:.1} s",
            self.kills,
            self.acknowledged,
            self.in_flight_present,
            self.in_flight_absent,
            self.in_flight_no_effect,
            self.killed_during_open,
            self.checkpoints,
            self.feed_transactions_checked,
            self.last_lsn,
            self.elapsed.as_secs_f64()
        )
    }
}

/// What one run of a workload reported before it died (or crashed).
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub ready: bool,
    pub checkpoints: u64,
    /// (seq, effects) announced before each commit.
    pub tries: Vec<(u64, Effects)>,
    /// (seq, txn id, LSN, digest) of each acknowledged commit.
    pub acks: Vec<(u64, u64, Lsn, u64)>,
}

fn parse_report(bytes: &[u8]) -> Result<Report, String> {
    let text = String::from_utf8_lossy(bytes);
    // A last line without its newline was being written at the kill: never complete, ignored.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    let mut report = Report::default();
    for line in complete.lines() {
        let mut parts = line.splitn(3, ' ');
        let bad = || format!("unreadable line from the workload: {line:?}");
        match parts.next() {
            Some("READY") => report.ready = true,
            Some("CHECKPOINT") => report.checkpoints += 1,
            Some("TRY") => {
                let seq = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                let json: serde_json::Value = parts.next().and_then(|s| serde_json::from_str(s).ok()).ok_or_else(bad)?;
                report.tries.push((seq, Effects::from_json(&json).ok_or_else(bad)?));
            }
            Some("NACK") => {
                // Refused with a typed error that guarantees nothing changed: never happened.
                let seq: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                if report.tries.last().map(|t| t.0) != Some(seq) {
                    return Err(bad());
                }
                report.tries.pop();
            }
            Some("ACK") => {
                let fields: Vec<&str> = line.split(' ').collect();
                let [_, seq, txn, lsn, digest] = fields.as_slice() else {
                    return Err(bad());
                };
                let parsed = (
                    seq.parse().ok(),
                    txn.parse().ok(),
                    lsn.parse().ok(),
                    u64::from_str_radix(digest, 16).ok(),
                );
                let (Some(seq), Some(txn), Some(lsn), Some(digest)) = parsed else {
                    return Err(bad());
                };
                report.acks.push((seq, txn, lsn, digest));
            }
            _ => return Err(bad()),
        }
    }
    Ok(report)
}

/// The harness's knowledge: the state after everything verified so far, and every logged
/// transaction the change feed may still return, by LSN (txn id, digest of its effect).
#[derive(Debug, Default, Clone)]
pub struct Verifier {
    state: Flat,
    known: BTreeMap<Lsn, (u64, u64)>,
    last_lsn: Lsn,
}

impl Verifier {
    /// Checks the reopened database against one run's report; on success the verifier moves to
    /// the recovered state.
    pub fn check(&mut self, db: &Database, report: &Report, stats: &mut KillStats) -> Result<(), String> {
        let mut acked_state = self.state.clone();
        let mut tries = report.tries.iter().peekable();
        for &(seq, txn, lsn, digest) in &report.acks {
            let effects = match tries.next() {
                Some((s, e)) if *s == seq => e,
                Some((s, _)) => {
                    return Err(format!(
                        "commit {s} was announced but neither acknowledged nor refused before {seq}"
                    ))
                }
                None => return Err(format!("acknowledgement {seq} without its announcement")),
            };
            if effects.digest() != digest {
                return Err(format!(
                    "acknowledgement {seq} carries digest {digest:016x}, its announcement {:016x}",
                    effects.digest()
                ));
            }
            if txn == 0 {
                // Nothing was logged (every step was refused): there must be no effect.
                if !effects.changes.is_empty() || !effects.events.is_empty() {
                    return Err(format!("commit {seq} changed things but was not logged"));
                }
                continue;
            }
            if lsn <= self.last_lsn {
                return Err(format!("commit {seq} acknowledged at LSN {lsn}, not after LSN {}", self.last_lsn));
            }
            effects.apply_to(&mut acked_state);
            self.known.insert(lsn, (txn, digest));
            self.last_lsn = lsn;
            stats.acknowledged += 1;
        }
        let in_flight = tries.next().map(|(_, e)| e);
        if let Some((seq, _)) = tries.next() {
            return Err(format!("announcement {seq} after an unacknowledged commit"));
        }

        let recovered = read_state(&db.snapshot()).map_err(|e| format!("reading the reopened database: {e}"))?;
        if db.visible_lsn() < self.last_lsn {
            return Err(format!(
                "reopened at LSN {} below the last acknowledged LSN {}",
                db.visible_lsn(),
                self.last_lsn
            ));
        }
        let in_flight_state = in_flight.map(|e| {
            let mut s = acked_state.clone();
            e.apply_to(&mut s);
            s
        });
        let in_flight_present = match (&in_flight_state, recovered == acked_state) {
            (Some(s), true) if *s == recovered => None,
            (_, true) => Some(false),
            (Some(s), false) if *s == recovered => Some(true),
            _ => return Err(describe_mismatch(&acked_state, in_flight_state.as_ref(), &recovered)),
        };

        let (from, fed) = read_feed(db)?;
        let mut in_flight_lsn = None;
        for t in &fed {
            match self.known.get(&t.lsn) {
                Some(&(txn, digest)) => {
                    if txn != t.txn_id || digest != t.effects.digest() {
                        return Err(format!(
                            "the feed's transaction at LSN {} (txn {}) differs from the acknowledged one (txn {txn}): {}",
                            t.lsn,
                            t.txn_id,
                            t.effects.to_json()
                        ));
                    }
                }
                None if t.lsn > self.last_lsn && in_flight_lsn.is_none() && in_flight.is_some_and(|e| e.digest() == t.effects.digest()) => {
                    in_flight_lsn = Some((t.lsn, t.txn_id, t.effects.digest()));
                }
                None => {
                    return Err(format!(
                        "the feed has a transaction nobody committed at LSN {}: {}",
                        t.lsn,
                        t.effects.to_json()
                    ))
                }
            }
            stats.feed_transactions_checked += 1;
        }
        match (in_flight_present, in_flight_lsn) {
            (Some(true), None) => return Err("the in-flight commit is in the state but not in the change feed".into()),
            (Some(false), Some((lsn, ..))) => return Err(format!("the in-flight commit is in the feed at LSN {lsn} but not in the state")),
            _ => {}
        }
        if let Some((lsn, txn, digest)) = in_flight_lsn {
            self.known.insert(lsn, (txn, digest));
            self.last_lsn = lsn;
        }
        let fed_lsns: std::collections::BTreeSet<Lsn> = fed.iter().map(|t| t.lsn).collect();
        if let Some((lsn, _)) = self.known.range(from..).find(|(lsn, _)| !fed_lsns.contains(lsn)) {
            return Err(format!(
                "acknowledged commit at LSN {lsn} is missing from the change feed (which starts at {from})"
            ));
        }
        self.known = self.known.split_off(&from);

        match in_flight_present {
            Some(true) => stats.in_flight_present += 1,
            Some(false) if in_flight.is_some() => stats.in_flight_absent += 1,
            None => stats.in_flight_no_effect += 1,
            Some(false) => {}
        }
        self.state = recovered;
        stats.last_lsn = self.last_lsn;
        Ok(())
    }
}

fn describe_mismatch(acked: &Flat, in_flight: Option<&Flat>, recovered: &Flat) -> String {
    let mut out = String::from("the reopened state is neither the acknowledged state nor that plus the in-flight commit:");
    for (name, expected) in [("acknowledged", Some(acked)), ("with in-flight", in_flight)] {
        let Some(expected) = expected else { continue };
        let differing: Vec<&String> = expected
            .keys()
            .chain(recovered.keys())
            .filter(|k| expected.get(*k) != recovered.get(*k))
            .take(5)
            .collect();
        out.push_str(&format!(" [{name}: differs at {differing:?}]"));
    }
    out
}

/// Runs the campaign; the first violation ends it with a message naming the kill and its seed.
pub fn run_campaign(config: &KillConfig) -> Result<KillStats, String> {
    let started = Instant::now();
    let mut rng = Rng::new(config.seed);
    let mut verifier = Verifier::default();
    let mut stats = KillStats::default();
    std::fs::create_dir_all(&config.dir).map_err(|e| format!("creating {}: {e}", config.dir.display()))?;
    for kill in 0..config.kills {
        let run_seed = sub_seed(config.seed, kill);
        let context = |e: String| format!("kill {kill} (campaign seed {}, run seed {run_seed}): {e}", config.seed);
        let mut child = Command::new(&config.workload_bin)
            .arg(&config.dir)
            .arg(run_seed.to_string())
            .arg(config.mix.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| context(format!("spawning {}: {e}", config.workload_bin.display())))?;
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stdout.read_to_end(&mut bytes);
            bytes
        });
        std::thread::sleep(Duration::from_millis(rng.below(config.max_delay_ms + 1)));
        // SIGKILL on Unix: no destructor, no flush, no exit handler runs.
        let _ = child.kill();
        let status = child.wait().map_err(|e| context(format!("waiting for the workload: {e}")))?;
        let bytes = reader.join().map_err(|_| context("the reader thread panicked".into()))?;
        if status.success() || status.code().is_some() {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            return Err(context(format!("the workload exited by itself ({status}): {err}")));
        }
        let report = parse_report(&bytes).map_err(context)?;
        stats.kills += 1;
        stats.checkpoints += report.checkpoints;
        if !report.ready {
            stats.killed_during_open += 1;
        }
        let db = Database::open(&config.dir, database_options(false)).map_err(|e| context(format!("reopen failed: {e}")))?;
        verifier.check(&db, &report, &mut stats).map_err(context)?;
        drop(db);
        if config.progress_every > 0 && (kill + 1) % config.progress_every == 0 {
            stats.elapsed = started.elapsed();
            eprintln!("[kill campaign] {stats}");
        }
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}
