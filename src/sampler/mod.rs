//! Sampling: one task per query on its own interval (with jitter), a probe that keeps
//! `pg_up` truthful and reconnects with capped exponential backoff, and the hand-over of each
//! complete result to the [`Store`] and the renderer.
//!
//! Concurrency: each query is a loop in its own task, so a slow query delays only itself; a
//! run still in flight when its next tick comes skips that tick (`MissedTickBehavior::Skip`).
//! All tasks share the pool, whose size is the hard connection budget. While the probe says
//! the database is down, queries do not try to connect (the probe alone reconnects, with
//! backoff), so an outage costs the database one connection attempt per backoff step.
//! Tasks stop through a [`CancellationToken`]; a reload cancels the old generation's query
//! tasks and starts new ones.

pub mod latency;
pub mod load;
pub mod rollup;
pub mod run;
pub mod store;

pub use run::{ErrorKind, RunError, sample_once};
pub use store::Store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, QuerySpec};
use crate::exposition::SelfMetrics;
use crate::exposition::self_metrics::{ErrorLabels, QueryLabel};

/// What the probe learnt about the server.
#[derive(Debug, Default)]
pub struct ServerInfo {
    /// `server_version_num`, 0 before the first connection.
    pub version_num: AtomicI64,
    /// Whether the last probe reached the database.
    pub up: AtomicBool,
    /// Whether the server is a standby (`pg_is_in_recovery()` at the last probe).
    pub in_recovery: AtomicBool,
    /// Installed extensions and preloaded libraries (from the last probe).
    pub features: std::sync::Mutex<(Vec<String>, Vec<String>)>,
}

/// Shared state of the sampler.
#[derive(Debug)]
pub struct Sampler {
    pool: Pool,
    store: Arc<Store>,
    metrics: Arc<SelfMetrics>,
    server: Arc<ServerInfo>,
    changed: Arc<Notify>,
    lock_timeout: Duration,
    max_backoff: Duration,
}

/// The first value of the first row of a simple-query result.
fn first_value(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Option<&str> {
    msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
        _ => None,
    })
}

/// Splits a comma-separated setting; library entries are normalised to their bare name
/// (`$libdir/pg_stat_statements.so` → `pg_stat_statements`).
fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| {
            let x = x.trim().trim_matches('"');
            let x = x.rsplit('/').next().unwrap_or(x);
            x.strip_suffix(".so").unwrap_or(x).to_owned()
        })
        .filter(|x| !x.is_empty())
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Sampler {
    /// Creates a sampler; nothing runs until [`Sampler::start`].
    pub fn new(
        pool: Pool,
        store: Arc<Store>,
        metrics: Arc<SelfMetrics>,
        changed: Arc<Notify>,
        lock_timeout: Duration,
        max_backoff: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            store,
            metrics,
            server: Arc::new(ServerInfo::default()),
            changed,
            lock_timeout,
            max_backoff,
        })
    }

    /// What the probe knows about the server.
    pub fn server(&self) -> &ServerInfo {
        &self.server
    }

    /// Whether the last probe reached the database.
    pub fn is_up(&self) -> bool {
        self.server.up.load(Ordering::Relaxed)
    }

    /// Starts the probe (until `stop`), which then keeps running across reloads.
    pub fn start_probe(self: &Arc<Self>, tracker: &TaskTracker, stop: CancellationToken) {
        let me = self.clone();
        tracker.spawn(async move { me.probe_loop(stop).await });
    }

    /// Starts one task per query of `catalog`, stopped by `generation`.
    pub fn start(
        self: &Arc<Self>,
        catalog: &Catalog,
        tracker: &TaskTracker,
        generation: CancellationToken,
    ) {
        self.store.set_catalog(&catalog.queries);
        for q in &catalog.queries {
            self.metrics.init_query(&q.name);
            let me = self.clone();
            let spec = q.clone();
            let stop = generation.clone();
            tracker.spawn(async move { me.query_loop(spec, stop).await });
        }
        self.changed.notify_one();
    }

    /// Forgets the self-metrics of queries that left the catalog.
    pub fn forget(&self, old: &Catalog, new: &Catalog) {
        for q in &old.queries {
            if !new.queries.iter().any(|n| n.name == q.name) {
                self.metrics.forget_query(&q.name);
            }
        }
    }

    async fn probe_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let ok = tokio::select! {
                _ = stop.cancelled() => return,
                ok = self.probe_once() => ok,
            };
            let pause = if ok {
                failures = 0;
                Duration::from_secs(5)
            } else {
                failures = failures.saturating_add(1);
                self.metrics.connect_failures.inc();
                let base = Duration::from_millis(250) * 2u32.saturating_pow(failures.min(16));
                base.min(self.max_backoff)
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One probe: a read-only round trip with a statement timeout (liveness and version),
    /// then, best effort, the installed extensions and preloaded libraries for gating. A
    /// role that may not read `shared_preload_libraries` keeps the last known features: the
    /// database is up all the same.
    pub async fn probe_once(&self) -> bool {
        let timeout = Duration::from_secs(5);
        let checkout = match self.pool.get().await {
            // Every connection is busy: the database answers, the budget is just in use.
            Err(e) if run::is_pool_busy(&e) => return self.is_up(),
            Err(_) => None,
            Ok(c) => Some(c),
        };
        let live = async {
            let client = checkout.as_ref()?;
            let batch = run::read_only_batch(
                "SELECT current_setting('server_version_num') || '|' || pg_is_in_recovery()",
                timeout,
                timeout,
            );
            let msgs = tokio::time::timeout(timeout * 2, client.simple_query(&batch))
                .await
                .ok()?
                .ok()?;
            let (version, recovery) = first_value(&msgs)?.split_once('|')?;
            Some((version.parse::<i64>().ok()?, recovery == "true"))
        }
        .await;
        let was_up = self.is_up();
        let Some((version, in_recovery)) = live else {
            if let Some(c) = checkout {
                // Its state is unknown after a failure: do not hand it to a query.
                let _ = deadpool_postgres::Object::take(c);
            }
            self.server.up.store(false, Ordering::Relaxed);
            self.metrics.up.set(0);
            if was_up {
                tracing::warn!("database unreachable");
            }
            self.changed.notify_one();
            return false;
        };
        if let Some(client) = &checkout {
            let sql = "SELECT coalesce((SELECT string_agg(extname, ',') FROM pg_extension), '') || '|' || \
                       current_setting('shared_preload_libraries')";
            let batch = run::read_only_batch(sql, timeout, timeout);
            match tokio::time::timeout(timeout * 2, client.simple_query(&batch)).await {
                Ok(Ok(msgs)) => {
                    if let Some((exts, preload)) =
                        first_value(&msgs).and_then(|v| v.split_once('|'))
                        && let Ok(mut f) = self.server.features.lock()
                    {
                        *f = (split_list(exts), split_list(preload));
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot read extensions or preloaded libraries; keeping the last known");
                    if client.batch_execute("ROLLBACK").await.is_err()
                        && let Some(c) = checkout
                    {
                        let _ = deadpool_postgres::Object::take(c);
                    }
                }
                Err(_) => {
                    if let Some(c) = checkout {
                        let _ = deadpool_postgres::Object::take(c);
                    }
                }
            }
        }
        self.server.version_num.store(version, Ordering::Relaxed);
        self.server
            .in_recovery
            .store(in_recovery, Ordering::Relaxed);
        self.server.up.store(true, Ordering::Relaxed);
        self.metrics.up.set(1);
        self.metrics.server_version.set(version);
        if !was_up {
            tracing::info!(version, "database reachable");
            self.changed.notify_one();
        }
        true
    }

    /// Why `spec` cannot run on this server, if it cannot.
    fn gate(&self, spec: &QuerySpec) -> Option<String> {
        let v = self.server.version_num.load(Ordering::Relaxed) as i32;
        if let Some(min) = spec.min_server_version
            && v < min
        {
            return Some(format!("server version {v} is below {min}"));
        }
        if let Some(max) = spec.max_server_version
            && v > max
        {
            return Some(format!("server version {v} is above {max}"));
        }
        let standby = self.server.in_recovery.load(Ordering::Relaxed);
        match (spec.role, standby) {
            (crate::catalog::Role::Primary, true) => return Some("the server is a standby".into()),
            (crate::catalog::Role::Replica, false) => {
                return Some("the server is a primary".into());
            }
            _ => {}
        }
        let (exts, preload) = self
            .server
            .features
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        if let Some(e) = &spec.requires_extension
            && !exts.contains(e)
        {
            return Some(format!(
                "extension {e} is not installed (CREATE EXTENSION {e})"
            ));
        }
        if let Some(p) = &spec.requires_preload
            && !preload.iter().any(|l| l == p)
        {
            return Some(format!(
                "{p} is not in shared_preload_libraries (add it and restart PostgreSQL)"
            ));
        }
        None
    }

    async fn query_loop(self: Arc<Self>, spec: Arc<QuerySpec>, stop: CancellationToken) {
        // Spread the first runs over a fraction of the interval so queries do not align.
        let jitter = spec.interval.mul_f64(rand::random::<f64>() * 0.1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(jitter.min(Duration::from_millis(500))) => {}
        }
        let mut histogram = spec
            .histogram
            .as_ref()
            .map(|h| latency::LatencyHistogram::new(&h.buckets));
        let mut rollup = spec.rollup_key.as_ref().map(|_| rollup::Rollup::default());
        let mut load = spec.accumulate.map(|_| load::LoadAccumulator::default());
        let mut ticker = tokio::time::interval(spec.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.tick(&spec, histogram.as_mut(), rollup.as_mut(), load.as_mut()) => {}
            }
        }
    }

    /// One tick of a query: gate, run, publish or record the failure, wake the renderer.
    pub async fn tick(
        &self,
        spec: &Arc<QuerySpec>,
        histogram: Option<&mut latency::LatencyHistogram>,
        rollup: Option<&mut rollup::Rollup>,
        load: Option<&mut load::LoadAccumulator>,
    ) {
        let label = QueryLabel {
            query: spec.name.clone(),
        };
        if !self.store.is_current(spec) {
            return;
        }
        if !self.is_up() {
            self.metrics.skipped.get_or_create(&label).inc();
            self.store.fail(
                spec,
                "database unreachable".to_owned(),
                SystemTime::now(),
                false,
            );
            self.after_failure(spec, &label);
            return;
        }
        if let Some(reason) = self.gate(spec) {
            self.metrics.enabled.get_or_create(&label).set(0);
            self.store.set_enabled(&spec.name, false, Some(reason));
            self.metrics.series.get_or_create(&label).set(0);
            self.changed.notify_one();
            return;
        }
        self.metrics.enabled.get_or_create(&label).set(1);
        self.store.set_enabled(&spec.name, true, None);
        let started = tokio::time::Instant::now();
        let outcome = sample_once(&self.pool, spec, self.lock_timeout).await;
        if !self.store.is_current(spec) {
            // A reload replaced this query while it ran: its result and counts are stale.
            return;
        }
        let elapsed = started.elapsed();
        self.metrics
            .duration
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
        // A run longer than the interval makes the ticker skip the ticks it overran.
        let overran = (elapsed.as_secs_f64() / spec.interval.as_secs_f64()).floor() as u64;
        if overran > 0 {
            self.metrics.skipped.get_or_create(&label).inc_by(overran);
        }
        self.metrics.runs.get_or_create(&label).inc();
        match outcome {
            Ok((mut result, mut stats)) => {
                if let Some(r) = rollup {
                    stats.dropped += r.apply(&mut result);
                }
                if let Some(l) = load {
                    stats.dropped += l.apply(&mut result, spec.interval);
                }
                if let Some(h) = histogram {
                    h.update(&stats.statements);
                    result.histogram = Some(h.snapshot());
                }
                self.metrics.nulls.get_or_create(&label).inc_by(stats.nulls);
                self.metrics
                    .dropped
                    .get_or_create(&label)
                    .inc_by(stats.dropped);
                if stats.dropped > 0 {
                    tracing::warn!(query = %spec.name, dropped = stats.dropped, budget = spec.max_series, "series over budget dropped");
                }
                self.metrics
                    .series
                    .get_or_create(&label)
                    .set(result.series_count() as i64);
                self.metrics
                    .last_success
                    .get_or_create(&label)
                    .set(unix_now());
                self.store.publish(Arc::new(result));
            }
            Err(e) => {
                tracing::warn!(query = %spec.name, kind = e.kind.as_str(), error = %e.message, "query failed");
                self.metrics
                    .errors
                    .get_or_create(&ErrorLabels {
                        query: spec.name.clone(),
                        kind: e.kind.as_str().to_owned(),
                    })
                    .inc();
                self.store
                    .fail(spec, e.to_string(), SystemTime::now(), true);
                if e.maybe_down {
                    // Let the probe confirm and take over reconnecting.
                    self.probe_once().await;
                }
                self.after_failure(spec, &label);
                return;
            }
        }
        self.changed.notify_one();
    }

    fn after_failure(&self, spec: &QuerySpec, label: &QueryLabel) {
        let still = self
            .store
            .result(&spec.name)
            .map(|r| r.series_count())
            .unwrap_or(0);
        self.metrics.series.get_or_create(label).set(still as i64);
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::split_list;

    #[test]
    fn preloaded_libraries_are_matched_by_their_bare_name() {
        assert_eq!(
            split_list("\"$libdir/pg_stat_statements.so\", auto_explain"),
            vec!["pg_stat_statements", "auto_explain"]
        );
        assert!(split_list("").is_empty());
    }
}
