//! The slow-statement log reader: the exact count of statement executions at or over
//! `log_min_duration_statement`, read from the server's `jsonlog` over SQL (issue 15; see
//! docs/statement-latency.md).
//!
//! `pg_statement_latency_seconds` observes each statement at its mean between two samples, so
//! a tail inside one statement is invisible to it. The slow-statement log is not sampled:
//! every execution at or over the threshold is a line. This module follows that log and
//! counts the lines, by database and user. The lines are parsed on the server by the V012
//! helper `monitoring.log_tally`, which returns counts: statement text, literals and
//! parameters never reach pgpulse (nor its sampling role).
//!
//! - [`files`]: offsets per file, rotations, gaps (pure state; no log bytes).
//! - [`poll`]: one poll over SQL through the V012 helpers (`monitoring.log_tally` …).
//! - [`metrics`]: the counter, the threshold, pgpulse's role, the reader's health.
//! - [`keys`]: the key queries' SLO misses, counted in the same pass by `query_id`.
//!
//! Concurrency: one task polls on its own interval, one poll at a time, on the sampling pool
//! (so it shares the hard connection budget and TLS). It starts with the service and is not
//! touched by a reload, so the counter keeps its state across SIGHUP. At start, and whenever
//! the prerequisites come back after being missing, it starts at the end of every log file:
//! nothing logged before is counted, so a restart of pgpulse never counts a line twice
//! (what is logged while pgpulse is down is not counted either).

pub mod files;
pub mod keys;
pub mod metrics;
pub mod poll;

use std::sync::Arc;
use std::time::Duration;

use crate::db::lease::Budget;
use crate::plans::slo::KeyQueryIds;
use crate::snapshot::Consistency;
use prometheus_client::registry::Registry;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use files::Tracker;
use keys::KeyMisses;
use metrics::SlowLogMetrics;
use poll::Polled;

/// Settings of the reader.
#[derive(Debug, Clone, Copy)]
pub struct ReaderSettings {
    /// Time between two polls.
    pub interval: Duration,
    /// `statement_timeout` of every statement of a poll (and the pool wait).
    pub timeout: Duration,
    /// `lock_timeout` of every statement of a poll.
    pub lock_timeout: Duration,
    /// The first window of each `monitoring.log_tally` call (at most 1 MiB); a window grows
    /// only to hold a longer line whole.
    pub chunk_bytes: u32,
    /// The most (database, user) pairs exposed.
    pub max_series: usize,
}

/// The state between polls.
#[derive(Debug, Default)]
struct State {
    tracker: Tracker,
    /// Whether the last poll found the prerequisites (None before the first poll).
    ready: Option<bool>,
    /// Whether the last poll failed.
    failing: bool,
    /// Ticks skipped since the reader was found off.
    skipped: u32,
}

/// While the reader is off (the server's settings missing), its setup is checked again at
/// every this many ticks, not at each: once a minute at the default 15 s, so a server that
/// never turns the log on costs a quarter of the checks.
const OFF_EVERY: u32 = 4;

/// The running reader.
#[derive(Debug)]
pub struct SlowLogReader {
    /// Held while a poll's counts are recorded, so a render shows all of them or none.
    consistency: Consistency,
    budget: Budget,
    settings: ReaderSettings,
    metrics: SlowLogMetrics,
    /// The key queries whose misses are counted (the plan guard records them).
    ids: KeyQueryIds,
    keys: KeyMisses,
    state: Mutex<State>,
    /// The log is the server's: in a fleet, only the target that samples its server's
    /// server-wide queries reads it, so each slow execution is counted once.
    seat: crate::db::server::Seat,
}

impl SlowLogReader {
    /// Registers the metrics in `registry`; nothing runs until [`SlowLogReader::start`].
    /// The key queries of `ids` have their misses counted.
    pub fn new(
        registry: &mut Registry,
        budget: Budget,
        settings: ReaderSettings,
        ids: KeyQueryIds,
        consistency: Consistency,
        seat: crate::db::server::Seat,
    ) -> Arc<Self> {
        Arc::new(Self {
            seat,
            consistency,
            budget,
            settings,
            metrics: SlowLogMetrics::register(registry),
            ids,
            keys: KeyMisses::register(registry),
            state: Mutex::new(State::default()),
        })
    }

    /// Starts the loop on `tracker` until `stop`; `changed` wakes the renderer after a poll.
    pub fn start(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        stop: CancellationToken,
        changed: Arc<Notify>,
    ) {
        let me = self.clone();
        tracker.spawn(async move {
            crate::clock::every(me.settings.interval, &stop, || async {
                me.poll().await;
                changed.notify_one();
            })
            .await;
        });
    }

    /// One poll: read what was logged since the last one and count it. Logs one line when
    /// the reader turns off (naming what to set), on, or starts failing. While off, only
    /// every [`OFF_EVERY`]th tick checks the setup again.
    pub async fn poll(&self) {
        if !self.seat.leads() {
            return;
        }
        let mut st = self.state.lock().await;
        let State {
            tracker,
            ready,
            failing,
            skipped,
        } = &mut *st;
        if *ready == Some(false) && *skipped + 1 < OFF_EVERY {
            *skipped += 1;
            return;
        }
        *skipped = 0;
        let keys = self.ids.current();
        let polled = poll::poll_once(&self.budget, &self.settings, tracker, &keys).await;
        let _whole = self.consistency.hold();
        match polled {
            Ok(Polled::Off(setup)) => {
                if *ready != Some(false) {
                    tracing::warn!(
                        missing = %setup.missing().join("; "),
                        wanted = crate::db::log_access::SETTINGS_LINE,
                        "slow-statement log reader off: the exact count of slow statements needs these settings"
                    );
                }
                *ready = Some(false);
                *failing = false;
                tracker.restart();
                self.metrics.record_off(&setup.session_user);
                self.keys.off();
            }
            Ok(Polled::Read(out)) => {
                if *ready != Some(true) {
                    tracing::info!(
                        threshold_ms = out.threshold_s * 1000.0,
                        "slow-statement log reader on; counting from the end of the current log"
                    );
                }
                *ready = Some(true);
                *failing = false;
                if out.gap > 0 {
                    tracing::warn!(
                        bytes = out.gap,
                        "slow-statement log files removed before they were read"
                    );
                }
                self.metrics.record_poll(
                    out.threshold_s,
                    &out.user,
                    out.lag,
                    out.gap,
                    out.read,
                    out.statements,
                );
                self.metrics.record_unparsed(out.unparsed);
                match &out.key_misses {
                    Some(misses) => self.keys.count(&keys, misses, out.threshold_s),
                    None => self.keys.off(),
                }
                self.metrics.count(out.tally, self.settings.max_series);
                self.metrics.expose(out.sessions, self.settings.max_series);
            }
            Err(e) => {
                if !*failing {
                    tracing::warn!(kind = e.kind.as_str(), "slow-statement log poll failed");
                }
                tracing::debug!(error = %e.message, "slow-statement log poll failure detail");
                *failing = true;
                self.metrics.record_error();
            }
        }
    }
}
