//! The sampler's own metrics (`pgpulse_query_*`, `pgpulse_connection_failures_total`): a
//! struct that registers its handles in the service's registry and offers domain methods
//! (`record_run`, `record_skip`, a drop-guard [`RunTimer`]) so that callers
//! never touch a metric family directly. Handles are lock-free atomics; the renderer encodes
//! them with the rest of the snapshot.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::catalog::QuerySpec;
use crate::db::outcome::ErrorKind;

/// Labels naming a query.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabel {
    /// The query name.
    pub query: String,
}

/// Labels naming a query and an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The query name.
    pub query: String,
    /// One of [`ErrorKind::as_str`].
    pub kind: String,
}

/// Labels naming a query and why a counter sample was dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorReason {
    /// The query name.
    pub query: String,
    /// One of [`crate::snapshot::monotonic::Dropped::as_str`].
    pub reason: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Upper bounds (seconds) of the query duration histogram: from 1 ms, the cost of a catalog
/// lookup, to 10 s, above every default statement timeout.
const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// How a run ended, as far as the self-metrics care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The result was published.
    Published {
        /// Series exposed now.
        series: usize,
        /// Series dropped over the budget.
        dropped: u64,
        /// NULL values met.
        nulls: u64,
        /// Counter samples dropped, by reason.
        counter_drops: crate::snapshot::monotonic::DropCounts,
    },
    /// The run failed; `series` are still exposed (the last good result until it expires).
    Failed {
        /// What kind of failure.
        kind: ErrorKind,
        /// Series still exposed.
        series: usize,
    },
}

/// Every self-metric handle.
#[derive(Debug)]
pub struct SamplerMetrics {
    duration: Family<QueryLabel, Histogram, fn() -> Histogram>,
    runs: Family<QueryLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    last_success: Family<QueryLabel, FloatGauge>,
    series: Family<QueryLabel, Gauge>,
    dropped: Family<QueryLabel, Counter>,
    nulls: Family<QueryLabel, Counter>,
    counter_drops: Family<ErrorReason, Counter>,
    skipped: Family<QueryLabel, Counter>,
    idle: Family<QueryLabel, Counter>,
    enabled: Family<QueryLabel, Gauge>,
    connect_failures: Counter,
}

fn label(spec: &QuerySpec) -> QueryLabel {
    QueryLabel {
        query: spec.name.clone(),
    }
}

/// Times one run; observes the duration when dropped (also when the run is cancelled).
/// The histogram handle is taken at start, so a run that outlives its query's removal
/// observes into a detached handle and cannot bring the series back.
#[derive(Debug)]
pub struct RunTimer {
    histogram: Histogram,
    started: Instant,
}

impl RunTimer {
    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for RunTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

impl SamplerMetrics {
    /// Creates the handles and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            duration: Family::new_with_constructor(duration_histogram),
            runs: Family::default(),
            errors: Family::default(),
            last_success: Family::default(),
            series: Family::default(),
            dropped: Family::default(),
            nulls: Family::default(),
            counter_drops: Family::default(),
            skipped: Family::default(),
            idle: Family::default(),
            enabled: Family::default(),
            connect_failures: Counter::default(),
        };
        let r = registry;
        r.register(
            "pgpulse_query_duration_seconds",
            "Wall time of a sampling query run, including waiting for a connection",
            m.duration.clone(),
        );
        r.register("pgpulse_query_runs", "Sampling query runs", m.runs.clone());
        r.register(
            "pgpulse_query_errors",
            "Failed sampling query runs by kind (timeout, pool, connection, unavailable, sql, decode)",
            m.errors.clone(),
        );
        r.register(
            "pgpulse_query_last_success_timestamp_seconds",
            "Unix time of the last successful run of a query",
            m.last_success.clone(),
        );
        r.register(
            "pgpulse_query_series",
            "Series currently exposed by a query",
            m.series.clone(),
        );
        r.register(
            "pgpulse_query_series_dropped",
            "Series dropped because a query exceeded its max_series budget or repeated a label set",
            m.dropped.clone(),
        );
        r.register(
            "pgpulse_query_samples_rejected",
            "Counter samples dropped instead of served: negative, not finite, or lower than the \
             value served before while the source did not reset (the last value is held)",
            m.counter_drops.clone(),
        );
        r.register(
            "pgpulse_query_null_values",
            "NULL values returned in value columns (the series is omitted)",
            m.nulls.clone(),
        );
        r.register(
            "pgpulse_query_skipped_ticks",
            "Ticks skipped: the database was unreachable, or the previous run of the query was still in flight",
            m.skipped.clone(),
        );
        r.register(
            "pgpulse_query_idle_ticks",
            "Ticks a query with idle_without sent no statement: its server's signalling query saw nothing since the query's last run found nothing, so that result stands",
            m.idle.clone(),
        );
        r.register(
            "pgpulse_query_enabled",
            "Whether a query runs on this server (version, extension and preload gating)",
            m.enabled.clone(),
        );
        r.register(
            "pgpulse_connection_failures",
            "Failed attempts to reach the database",
            m.connect_failures.clone(),
        );
        m
    }

    /// Creates the per-query series of a new query at zero, so rates start from the start.
    pub fn init_query(&self, spec: &QuerySpec) {
        let q = label(spec);
        let _ = self.runs.get_or_create(&q);
        let _ = self.dropped.get_or_create(&q);
        let _ = self.nulls.get_or_create(&q);
        let _ = self.skipped.get_or_create(&q);
        let _ = self.series.get_or_create(&q);
        if spec.idle_without.is_some() {
            let _ = self.idle.get_or_create(&q);
        }
        for kind in ErrorKind::ALL {
            let _ = self.errors.get_or_create(&ErrorLabels {
                query: spec.name.clone(),
                kind: kind.as_str().to_owned(),
            });
        }
    }

    /// Removes the per-query series of a query that left the catalog.
    pub fn forget_query(&self, name: &str) {
        let q = QueryLabel {
            query: name.to_owned(),
        };
        self.duration.remove(&q);
        self.runs.remove(&q);
        self.last_success.remove(&q);
        self.series.remove(&q);
        self.dropped.remove(&q);
        self.nulls.remove(&q);
        self.skipped.remove(&q);
        self.idle.remove(&q);
        self.enabled.remove(&q);
        for kind in ErrorKind::ALL {
            self.errors.remove(&ErrorLabels {
                query: name.to_owned(),
                kind: kind.as_str().to_owned(),
            });
        }
    }

    /// Starts timing a run of `spec`.
    pub fn start_run(&self, spec: &QuerySpec) -> RunTimer {
        RunTimer {
            histogram: self.duration.get_or_create(&label(spec)).clone(),
            started: Instant::now(),
        }
    }

    /// Records a finished run: `overran` ticks it made the scheduler skip, and its outcome.
    pub fn record_run(&self, spec: &QuerySpec, overran: u64, outcome: &RunOutcome) {
        let q = label(spec);
        if overran > 0 {
            self.skipped.get_or_create(&q).inc_by(overran);
        }
        self.runs.get_or_create(&q).inc();
        match *outcome {
            RunOutcome::Published {
                series,
                dropped,
                nulls,
                counter_drops,
            } => {
                self.nulls.get_or_create(&q).inc_by(nulls);
                self.record_counter_drops(spec, &counter_drops);
                self.dropped.get_or_create(&q).inc_by(dropped);
                self.series.get_or_create(&q).set(gauge_value(series));
                self.last_success
                    .get_or_create(&q)
                    .set(crate::clock::unix_now());
            }
            RunOutcome::Failed { kind, series } => {
                self.errors
                    .get_or_create(&ErrorLabels {
                        query: spec.name.clone(),
                        kind: kind.as_str().to_owned(),
                    })
                    .inc();
                self.series.get_or_create(&q).set(gauge_value(series));
            }
        }
    }

    /// Counts dropped counter samples; every reason of a query with counters starts at 0.
    fn record_counter_drops(
        &self,
        spec: &QuerySpec,
        drops: &crate::snapshot::monotonic::DropCounts,
    ) {
        let counts = spec.accumulate.is_some()
            || spec
                .metrics
                .iter()
                .any(|m| m.kind == crate::catalog::MetricKind::Counter);
        if !counts {
            return;
        }
        for (why, n) in crate::snapshot::monotonic::Dropped::ALL.iter().zip(drops) {
            let labels = ErrorReason {
                query: spec.name.clone(),
                reason: why.as_str(),
            };
            self.counter_drops.get_or_create(&labels).inc_by(*n);
        }
    }

    /// Records a tick skipped because the database is unreachable; `series` are still exposed.
    pub fn record_skip(&self, spec: &QuerySpec, series: usize) {
        let q = label(spec);
        self.skipped.get_or_create(&q).inc();
        self.series.get_or_create(&q).set(gauge_value(series));
    }

    /// Records a tick in which `spec` idled (its last result stands).
    pub fn record_idle(&self, spec: &QuerySpec) {
        self.idle.get_or_create(&label(spec)).inc();
    }

    /// Records whether gating lets `spec` run; a disabled query exposes no series.
    pub fn record_gate(&self, spec: &QuerySpec, enabled: bool) {
        let q = label(spec);
        self.enabled.get_or_create(&q).set(i64::from(enabled));
        if !enabled {
            self.series.get_or_create(&q).set(0);
        }
    }

    /// Records a failed attempt to reach the database.
    pub fn record_connect_failure(&self) {
        self.connect_failures.inc();
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Defaults};

    fn spec() -> std::sync::Arc<QuerySpec> {
        let yaml = "queries:\n  - name: q\n    sql: SELECT 1 AS v\n    metrics:\n      - {column: v, name: pg_v, type: gauge, help: v}\n";
        Catalog::parse(yaml, "q.yaml".as_ref(), Defaults::default())
            .map(|c| c.queries[0].clone())
            .unwrap()
    }

    #[test]
    fn a_published_run_counts_and_sets_series_and_last_success() {
        let m = SamplerMetrics::register(&mut Registry::default());
        let s = spec();
        m.init_query(&s);
        let outcome = RunOutcome::Published {
            series: 3,
            dropped: 2,
            nulls: 1,
            counter_drops: [0, 0, 0],
        };
        m.record_run(&s, 1, &outcome);
        let q = label(&s);
        assert_eq!(m.runs.get_or_create(&q).get(), 1);
        assert_eq!(m.dropped.get_or_create(&q).get(), 2);
        assert_eq!(m.nulls.get_or_create(&q).get(), 1);
        assert_eq!(m.skipped.get_or_create(&q).get(), 1);
        assert_eq!(m.series.get_or_create(&q).get(), 3);
        assert!(m.last_success.get_or_create(&q).get() > 0.0);
    }

    #[test]
    fn a_failed_run_counts_its_kind_and_keeps_the_remaining_series() {
        let m = SamplerMetrics::register(&mut Registry::default());
        let s = spec();
        m.init_query(&s);
        let outcome = RunOutcome::Failed {
            kind: ErrorKind::Timeout,
            series: 4,
        };
        m.record_run(&s, 0, &outcome);
        let e = ErrorLabels {
            query: "q".into(),
            kind: "timeout".into(),
        };
        assert_eq!(m.errors.get_or_create(&e).get(), 1);
        assert_eq!(m.series.get_or_create(&label(&s)).get(), 4);
    }

    #[test]
    fn the_timer_observes_on_drop_and_a_forgotten_query_stays_forgotten() {
        let m = SamplerMetrics::register(&mut Registry::default());
        let s = spec();
        m.init_query(&s);
        let timer = m.start_run(&s);
        m.forget_query(&s.name);
        drop(timer);
        // The family holds no series of the forgotten query: the late observation went to
        // the detached handle.
        assert!(!m.duration.remove(&label(&s)));
        assert!(!m.runs.remove(&label(&s)));
    }
}
