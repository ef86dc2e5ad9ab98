//! The probe: keeps `pg_up` truthful and learns what gating needs (server version,
//! extensions, preloaded libraries). While the database is down, only the probe tries to
//! connect, with capped exponential backoff, so an outage costs the database one connection
//! attempt per backoff step however many queries are due.
//!
//! The probe takes its connection from the budget like a query (so the role never holds more
//! server connections than the budget) and waits for its answer at most the probe timeout: a
//! server that accepts TCP but does not answer (a stopped postmaster or backend, a hung host)
//! is down. A probe that finds every connection busy does not call that down unless every
//! busy connection is past the time its answer was due ([`crate::db::lease::Budget::unanswered`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;
use tokio_util::sync::CancellationToken;

use super::Sampler;
use crate::db::lease::Lease;
use crate::db::outcome::{is_pool_busy, pool_error};
use crate::db::session::timeouts_sql;

/// Pause between probes while the database answers: short enough that `pg_up` follows an
/// outage within seconds, long enough to cost nothing.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Reconnect pause after the first failed probe (before jitter, see
/// [`crate::clock::backoff`]); it doubles per failure up to the configured maximum.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(250);

/// What the probe learnt about the server.
#[derive(Debug, Default)]
pub(crate) struct ServerInfo {
    in_recovery: std::sync::atomic::AtomicBool,
    features: std::sync::Mutex<(Vec<String>, Vec<String>)>,
    /// A digest of pg_stat_statements' last reset, from the last probe that could read it.
    statements_epoch: std::sync::atomic::AtomicU64,
    /// Whether the monitoring schema is installed: 0 unknown, 1 no, 2 yes.
    schema: std::sync::atomic::AtomicU8,
    /// Whether pg_stat_statements is preloaded: 0 unknown, 1 no, 2 yes.
    preloaded: std::sync::atomic::AtomicU8,
    /// Why the last connection attempt failed (logged when it changes).
    last_failure: std::sync::Mutex<String>,
}

impl ServerInfo {
    /// Whether the server is a standby (`pg_is_in_recovery()` at the last probe).
    pub(crate) fn in_recovery(&self) -> bool {
        self.in_recovery.load(Ordering::Relaxed)
    }

    /// Whether the last probe found the monitoring schema missing.
    pub(crate) fn schema_missing(&self) -> bool {
        self.schema.load(Ordering::Relaxed) == 1
    }

    /// Installed extensions and preloaded libraries (bare names), from the last probe that
    /// could read them.
    pub(crate) fn features(&self) -> (Vec<String>, Vec<String>) {
        self.features.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

/// The first value of the first row of a simple-query result.
fn first_value(msgs: &[SimpleQueryMessage]) -> Option<&str> {
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0),
        _ => None,
    })
}

/// Splits a comma-separated setting; library entries are normalised to their bare name
/// (`$libdir/pg_stat_statements.so` → `pg_stat_statements`).
pub(crate) fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| {
            let x = x.trim().trim_matches('"');
            let x = x.rsplit('/').next().unwrap_or(x);
            x.strip_suffix(".so").unwrap_or(x).to_owned()
        })
        .filter(|x| !x.is_empty())
        .collect()
}

/// A fixed statement of pgpulse's own, read-only with server-side timeouts, one round trip.
fn guarded(sql: &str, timeout: Duration) -> String {
    format!(
        "BEGIN READ ONLY; {}; {sql}; COMMIT",
        timeouts_sql(timeout, timeout)
    )
}

impl Sampler {
    /// Starts the probe, which keeps running across reloads until the service stops.
    pub fn start_probe(self: &Arc<Self>) {
        let me = self.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move { me.probe_loop(stop).await });
    }

    async fn probe_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let ok = tokio::select! {
                _ = stop.cancelled() => return,
                ok = self.probe_once() => ok,
            };
            self.probed
                .send_if_modified(|probed| !std::mem::replace(probed, true));
            let pause = if ok {
                failures = 0;
                PROBE_INTERVAL
            } else {
                failures = failures.saturating_add(1);
                self.metrics.record_connect_failure();
                crate::clock::backoff(BACKOFF_BASE, failures, self.settings.max_backoff)
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Records why the last connection attempt failed, logging it when it changes.
    fn note_failure(&self, reason: String) {
        if let Ok(mut last) = self.server.last_failure.lock()
            && *last != reason
        {
            tracing::warn!(error = %reason, "cannot connect to the database");
            *last = reason;
        }
    }

    /// One probe, on a connection of the budget like any query: a read-only round trip with
    /// a statement timeout (liveness, version, the statistics reset epoch), then, best effort,
    /// the installed extensions, preloaded libraries and pg_stat_statements' reset for
    /// gating and the epoch. No answer within the probe timeout means down, even when TCP
    /// still connects. When every connection of the budget is busy, work still within its
    /// time says nothing new (the last state stays), while a budget held only by connections
    /// the server has not answered in time means down. A role that may not read
    /// `shared_preload_libraries` keeps the last known features: the database is up all the
    /// same.
    pub async fn probe_once(&self) -> bool {
        let timeout = self.settings.probe_timeout;
        let mut lease = match self.budget.lease(Some(timeout), timeout * 2).await {
            Err(e) if is_pool_busy(&e) && !self.budget.unanswered() => {
                return self.snapshot.is_up();
            }
            Err(e) if is_pool_busy(&e) => {
                self.note_failure(
                    "no answer: every pooled connection waits for the server past its timeout"
                        .to_owned(),
                );
                None
            }
            Err(e) => {
                self.note_failure(pool_error(e).message);
                None
            }
            Ok(c) => Some(c),
        };
        let mut live = None;
        if let Some(client) = lease.as_mut().and_then(Lease::client) {
            live = match liveness(client, timeout).await {
                Ok(l) => l,
                Err(reason) => {
                    self.note_failure(reason);
                    None
                }
            };
        }
        let was_up = self.snapshot.is_up();
        let Some(live) = live else {
            // Dropping the lease lets the connection settle: its slot stays taken until the
            // server answers.
            drop(lease);
            self.settings.seat.sit(None);
            self.snapshot.set_up(false, None);
            if was_up {
                tracing::warn!("database unreachable");
            }
            self.changed.notify_one();
            return false;
        };
        if let Some(lease) = lease {
            self.read_features(lease, timeout).await;
        }
        self.record_up(&live, was_up);
        true
    }

    /// Says once, and again only after it was fixed and broke anew, what the operator must do
    /// before pgpulse can serve everything: install the monitoring schema, preload
    /// pg_stat_statements.
    fn note_setup(&self, schema: bool, preload: Option<Vec<String>>) {
        let was = self.server.schema.swap(schema as u8 + 1, Ordering::Relaxed);
        if !schema && was != 1 {
            tracing::warn!(
                "the monitoring schema is not installed: run `pgpulse migrate`; until then the queries that read it are unavailable"
            );
        }
        let Some(preload) = preload else { return };
        let preloaded = preload.iter().any(|l| l == "pg_stat_statements");
        let was = self
            .server
            .preloaded
            .swap(preloaded as u8 + 1, Ordering::Relaxed);
        if !preloaded && was != 1 {
            tracing::warn!(
                "pg_stat_statements is not preloaded: add shared_preload_libraries = 'pg_stat_statements' to postgresql.conf and restart PostgreSQL; statement metrics stay absent until then"
            );
        }
    }

    /// Records a successful probe.
    fn record_up(&self, live: &Liveness, was_up: bool) {
        if let Ok(mut last) = self.server.last_failure.lock() {
            last.clear();
        }
        self.server
            .in_recovery
            .store(live.in_recovery, Ordering::Relaxed);
        self.snapshot.set_in_recovery(live.in_recovery);
        self.settings.seat.sit(Some(live.server));
        let statements = self.server.statements_epoch.load(Ordering::Relaxed);
        self.snapshot
            .set_reset_epoch(live.epoch ^ statements.rotate_left(1));
        self.snapshot.set_up(true, Some(live.version));
        if !was_up {
            tracing::info!(version = live.version, "database reachable");
            self.changed.notify_one();
        }
    }

    /// Best effort: extensions, preloaded libraries and pg_stat_statements' reset epoch; on
    /// failure the last known stay.
    async fn read_features(&self, mut lease: Lease, timeout: Duration) {
        let outcome = match lease.client() {
            Some(client) => {
                tokio::time::timeout(
                    timeout,
                    client.simple_query(&guarded(FEATURES_SQL, timeout)),
                )
                .await
            }
            None => Ok(Ok(Vec::new())),
        };
        match outcome {
            Ok(Ok(msgs)) => {
                let mut parts = first_value(&msgs).unwrap_or_default().splitn(4, '|');
                let (exts, preload) = (parts.next(), parts.next());
                let (schema, statements) = (parts.next(), parts.next());
                if let (Some(exts), Some(preload)) = (exts, preload)
                    && let Ok(mut f) = self.server.features.lock()
                {
                    *f = (split_list(exts), split_list(preload));
                }
                self.note_setup(schema == Some("true"), preload.map(split_list));
                self.server
                    .statements_epoch
                    .store(digest(statements.unwrap_or_default()), Ordering::Relaxed);
                lease.release();
            }
            // The transaction is left aborted: the lease settles (rolls back) on drop.
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read extensions or preloaded libraries; keeping the last known");
            }
            Err(_) => {}
        }
    }
}

/// What the liveness statement answers.
struct Liveness {
    version: i64,
    in_recovery: bool,
    /// A digest of the postmaster's start time and every `stats_reset` of the cumulative
    /// statistics: it changes when a counter's source really reset.
    epoch: u64,
    /// A digest of the postmaster's start time and port: the server's identity.
    server: u64,
}

/// The liveness statement: version, recovery, the statistics reset epoch (every role may
/// read these views' `stats_reset`) and the server's identity (postmaster start time and
/// port, which every role may read).
const LIVENESS_SQL: &str = "SELECT current_setting('server_version_num') || '|' || pg_is_in_recovery() \
    || '|' || md5(concat_ws(',', pg_postmaster_start_time(), \
    (SELECT string_agg(coalesce(stats_reset::text, '-'), ',' ORDER BY datid) FROM pg_stat_database), \
    (SELECT stats_reset FROM pg_stat_bgwriter), (SELECT stats_reset FROM pg_stat_wal), \
    (SELECT stats_reset FROM pg_stat_archiver), \
    (SELECT string_agg(coalesce(stats_reset::text, '-'), ',' ORDER BY name) FROM pg_stat_slru), \
    (SELECT string_agg(coalesce(stats_reset::text, '-'), ',' ORDER BY slot_name) FROM pg_stat_replication_slots))) \
    || '|' || md5(pg_postmaster_start_time()::text || ':' || current_setting('port'))";

/// Extensions, preloaded libraries, whether the monitoring schema is installed, and when
/// pg_stat_statements was last reset (read only where it is preloaded: its view errors
/// otherwise).
const FEATURES_SQL: &str = "SELECT coalesce((SELECT string_agg(extname, ',') FROM pg_extension), '') || '|' || \
    current_setting('shared_preload_libraries') || '|' || \
    (to_regclass('monitoring.schema_migrations') IS NOT NULL) || '|' || coalesce((SELECT CASE \
    WHEN current_setting('shared_preload_libraries') ~ 'pg_stat_statements' \
     AND to_regclass(format('%I.pg_stat_statements_info', n.nspname)) IS NOT NULL \
    THEN query_to_xml(format('SELECT stats_reset FROM %I.pg_stat_statements_info', n.nspname), false, false, '')::text END \
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'), '')";

/// The first 64 bits of a hex digest, or a hash of any other text.
fn digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    if let Some(hex) = text.get(..16)
        && let Ok(v) = u64::from_str_radix(hex, 16)
    {
        return v;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Runs the liveness statement; `Ok(None)` when its answer is not understood, `Err` with the
/// reason when the server did not answer.
async fn liveness(
    client: &mut tokio_postgres::Client,
    timeout: Duration,
) -> Result<Option<Liveness>, String> {
    match tokio::time::timeout(
        timeout,
        client.simple_query(&guarded(LIVENESS_SQL, timeout)),
    )
    .await
    {
        Ok(Ok(msgs)) => Ok(first_value(&msgs).and_then(|v| {
            let mut parts = v.split('|');
            let version = parts.next()?.parse::<i64>().ok()?;
            let in_recovery = parts.next()? == "true";
            let epoch = digest(parts.next()?);
            let server = digest(parts.next()?);
            Some(Liveness {
                version,
                in_recovery,
                epoch,
                server,
            })
        })),
        Ok(Err(e)) => Err(crate::db::outcome::describe(&e)),
        Err(_) => Err(format!(
            "no answer within the probe timeout ({}ms)",
            timeout.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preloaded_libraries_are_matched_by_their_bare_name() {
        assert_eq!(
            split_list("\"$libdir/pg_stat_statements.so\", auto_explain"),
            vec!["pg_stat_statements", "auto_explain"]
        );
        assert!(split_list("").is_empty());
    }
}
