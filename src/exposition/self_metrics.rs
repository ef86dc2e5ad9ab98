//! The exporter's own metrics (`pgpulse_*`, plus `pg_up` and the server version): a struct
//! that registers its handles in its own registry. Handles are lock-free atomics; the sampler
//! updates them and the renderer encodes them with the rest of the snapshot.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
    /// `timeout`, `connection`, `sql` or `decode`.
    pub kind: String,
}

/// Labels of the build info.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: String,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure`.
    pub result: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Every self-metric handle.
#[derive(Debug)]
pub struct SelfMetrics {
    /// `pg_up`.
    pub up: Gauge,
    /// `pg_server_version_num`.
    pub server_version: Gauge,
    /// `pgpulse_query_duration_seconds`.
    pub duration: Family<QueryLabel, Histogram, fn() -> Histogram>,
    /// `pgpulse_query_runs_total`.
    pub runs: Family<QueryLabel, Counter>,
    /// `pgpulse_query_errors_total`.
    pub errors: Family<ErrorLabels, Counter>,
    /// `pgpulse_query_last_success_timestamp_seconds`.
    pub last_success: Family<QueryLabel, FloatGauge>,
    /// `pgpulse_query_series`.
    pub series: Family<QueryLabel, Gauge>,
    /// `pgpulse_query_series_dropped_total`.
    pub dropped: Family<QueryLabel, Counter>,
    /// `pgpulse_query_null_values_total`.
    pub nulls: Family<QueryLabel, Counter>,
    /// `pgpulse_query_skipped_ticks_total`.
    pub skipped: Family<QueryLabel, Counter>,
    /// `pgpulse_query_enabled`.
    pub enabled: Family<QueryLabel, Gauge>,
    /// `pgpulse_config_reloads_total`.
    pub reloads: Family<ResultLabel, Counter>,
    /// `pgpulse_config_last_reload_successful`.
    pub reload_ok: Gauge,
    /// `pgpulse_config_last_reload_success_timestamp_seconds`.
    pub reload_time: FloatGauge,
    /// `pgpulse_reconnects_total`.
    pub connect_failures: Counter,
}

impl SelfMetrics {
    /// Creates the handles and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            up: Gauge::default(),
            server_version: Gauge::default(),
            duration: Family::new_with_constructor(duration_histogram),
            runs: Family::default(),
            errors: Family::default(),
            last_success: Family::default(),
            series: Family::default(),
            dropped: Family::default(),
            nulls: Family::default(),
            skipped: Family::default(),
            enabled: Family::default(),
            reloads: Family::default(),
            reload_ok: Gauge::default(),
            reload_time: FloatGauge::default(),
            connect_failures: Counter::default(),
        };
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        let r = registry;
        r.register(
            "pg_up",
            "Whether the last connection attempt to PostgreSQL succeeded (1) or not (0)",
            m.up.clone(),
        );
        r.register(
            "pg_server_version_num",
            "server_version_num of the PostgreSQL server (0 before the first connection)",
            m.server_version.clone(),
        );
        r.register(
            "pgpulse_build_info",
            "pgpulse build information; always 1",
            build,
        );
        r.register(
            "pgpulse_query_duration_seconds",
            "Wall time of a sampling query run, including waiting for a connection",
            m.duration.clone(),
        );
        r.register("pgpulse_query_runs", "Sampling query runs", m.runs.clone());
        r.register(
            "pgpulse_query_errors",
            "Failed sampling query runs by kind (timeout, connection, sql, decode)",
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
            "pgpulse_query_enabled",
            "Whether a query runs on this server (version, extension and preload gating)",
            m.enabled.clone(),
        );
        r.register(
            "pgpulse_config_reloads",
            "Catalog reloads (SIGHUP) by result",
            m.reloads.clone(),
        );
        r.register(
            "pgpulse_config_last_reload_successful",
            "Whether the last catalog reload succeeded",
            m.reload_ok.clone(),
        );
        r.register(
            "pgpulse_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful catalog load",
            m.reload_time.clone(),
        );
        r.register(
            "pgpulse_connection_failures",
            "Failed attempts to reach the database",
            m.connect_failures.clone(),
        );
        m.reload_ok.set(1);
        m
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
        self.enabled.remove(&q);
        for kind in crate::sampler::ErrorKind::ALL {
            self.errors.remove(&ErrorLabels {
                query: name.to_owned(),
                kind: kind.as_str().to_owned(),
            });
        }
    }

    /// Creates the per-query series of a new query at zero, so rates start from the start.
    pub fn init_query(&self, name: &str) {
        let q = QueryLabel {
            query: name.to_owned(),
        };
        let _ = self.runs.get_or_create(&q);
        let _ = self.dropped.get_or_create(&q);
        let _ = self.nulls.get_or_create(&q);
        let _ = self.skipped.get_or_create(&q);
        let _ = self.series.get_or_create(&q);
        for kind in crate::sampler::ErrorKind::ALL {
            let _ = self.errors.get_or_create(&ErrorLabels {
                query: name.to_owned(),
                kind: kind.as_str().to_owned(),
            });
        }
    }
}
