//! The shapes of `queries.yaml` as written ([`RawCatalog`]) and as used ([`QuerySpec`]).

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The file: a list of queries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCatalog {
    pub queries: Vec<Spanned<RawQuery>>,
    /// The query whose rows `/health/db` serves.
    pub health_query: Option<Spanned<String>>,
}

/// One query as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuery {
    pub name: Spanned<String>,
    pub help: Option<String>,
    pub sql: Option<Spanned<String>>,
    pub derive: Option<Spanned<super::derive::Derive>>,
    #[serde(default, with = "opt_duration")]
    pub interval: Option<Spanned<Duration>>,
    #[serde(default, with = "opt_duration")]
    pub timeout: Option<Spanned<Duration>>,
    #[serde(default, with = "opt_duration")]
    pub expire_after: Option<Spanned<Duration>>,
    #[serde(default)]
    pub labels: Vec<Spanned<String>>,
    #[serde(default)]
    pub metrics: Vec<Spanned<RawMetric>>,
    pub histogram: Option<Spanned<RawHistogram>>,
    #[serde(default)]
    pub publish_rows: bool,
    pub rollup_key: Option<Spanned<String>>,
    pub max_series: Option<usize>,
    pub min_server_version: Option<i32>,
    pub max_server_version: Option<i32>,
    pub requires_extension: Option<String>,
    pub requires_preload: Option<String>,
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub scope: Scope,
    pub accumulate: Option<Spanned<Accumulate>>,
    pub binds: Option<Binds>,
    pub signals: Option<Spanned<Signal>>,
    pub idle_without: Option<Spanned<Signal>>,
}

/// A statement-latency histogram as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHistogram {
    pub name: Spanned<String>,
    pub help: String,
    pub key_column: String,
    pub calls_column: String,
    pub time_ms_column: String,
    pub buckets: Vec<f64>,
}

/// One metric as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetric {
    pub column: Spanned<String>,
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: MetricKind,
    pub help: String,
    pub unit: Option<String>,
}

mod opt_duration {
    use super::*;
    use serde::Deserializer;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Spanned<Duration>>, D::Error> {
        let s: Option<Spanned<String>> = Option::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s.value)
                .map(|v| Spanned::new(v, s.referenced, s.defined))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "line {} column {}: invalid duration `{}`: {e} (write e.g. 15s, 2m)",
                        s.referenced.line(),
                        s.referenced.column(),
                        s.value
                    ))
                })
        })
        .transpose()
    }
}

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A monotonically increasing total; its name ends in `_total`.
    Counter,
}

/// Which servers a query runs on: a primary, a standby (in recovery), or any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Only on a server not in recovery.
    Primary,
    /// Only on a standby (`pg_is_in_recovery()`).
    Replica,
    /// Everywhere (the default).
    #[default]
    Any,
}

/// What a query reads: its own database (the default), or the whole server (sessions, WAL,
/// checkpoints, replication, locks, every database's statistics): a fleet samples a
/// server-wide query through one target of each server only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The database the target names.
    #[default]
    Database,
    /// The whole server.
    Server,
}

/// How a query's values become counters inside pgpulse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accumulate {
    /// Each sample adds value × interval (in seconds) to its series' counter: a count of
    /// sessions sampled every second becomes session-seconds (see `sampler::load`).
    Seconds,
}

/// Values pgpulse binds to a query's parameters from its configuration. The values travel as
/// bound parameters, never as SQL text, so a quote in a configured name is just a character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binds {
    /// The configured trade tables (`trade_tables:`), in role order: `$1` the role keys
    /// (`orders`, `trades`, ...), `$2` their schemas, `$3` their names, each a `text[]`.
    TradeTables,
    /// How many root blockers to name (`sampling.lock_roots_named`): `$1`, an `int4`.
    LockRoots,
    /// The key queries of plans.yaml with a latency target whose query identifier the plan
    /// guard has read: `$1` their names (`text[]`), `$2` their identifiers (`int8[]`). Empty
    /// until the first plan check, and without the plan guard.
    KeyQueries,
}

/// What a server-wide query's result tells the queries of every database at its server
/// (`signals:` on the query that reads it, `idle_without:` on those that wait for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Some session waits for a lock: the signalling query's result has a series of the
    /// `Lock` wait event (its `wait_event_type` label) other than 0, or, without that label,
    /// any value other than 0.
    LockWaits,
}

impl Signal {
    /// Its name in the catalog.
    pub fn name(self) -> &'static str {
        match self {
            Signal::LockWaits => "lock_waits",
        }
    }
}

/// One metric of a query: a value column and how it is exposed.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSpec {
    /// The result column holding the value.
    pub column: String,
    /// The full exposed name (counters end in `_total`).
    pub name: String,
    /// Gauge or counter.
    pub kind: MetricKind,
    /// Help text.
    pub help: String,
    /// The base unit, for documentation (`seconds`, `bytes`, `ratio`).
    pub unit: Option<String>,
}

impl MetricSpec {
    /// The family's name as an OpenMetrics encoder takes it: a counter's name without its
    /// `_total` (the encoder adds it to the samples, and the Prometheus text form to the
    /// family, in [`crate::exposition`]), a gauge's name as it is.
    pub fn family(&self) -> &str {
        match self.kind {
            MetricKind::Counter => self.name.strip_suffix("_total").unwrap_or(&self.name),
            MetricKind::Gauge => &self.name,
        }
    }
}

/// A latency histogram built from cumulative (calls, total time) pairs per statement:
/// between two samples, each statement's added calls are observed at their mean latency.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSpec {
    /// Exposed name (ends in `_seconds`).
    pub name: String,
    /// Help text.
    pub help: String,
    /// Column identifying a statement (queryid, user, database).
    pub key_column: String,
    /// Column of cumulative calls.
    pub calls_column: String,
    /// Column of cumulative execution time in milliseconds.
    pub time_ms_column: String,
    /// Upper bounds in seconds, increasing (+Inf is implied).
    pub buckets: Vec<f64>,
}

/// One validated query of the catalog. Equality is the definition's: every field but the
/// [`Location`] (reload compares specs with it, so a new field cannot be forgotten there).
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySpec {
    /// Unique name (used in self-metrics labels).
    pub name: String,
    /// What it samples.
    pub help: String,
    /// The SQL text (for a derived family: the relation pass's facts statement).
    pub sql: String,
    /// Computed by pgpulse from the relation pass instead of running `sql` on its own.
    pub derive: Option<super::derive::Derive>,
    /// Sampling interval.
    pub interval: Duration,
    /// Server-side statement timeout.
    pub timeout: Duration,
    /// How long its last good series stay after failures.
    pub expire_after: Duration,
    /// Label columns, in order.
    pub labels: Vec<String>,
    /// Value columns and their metrics.
    pub metrics: Vec<MetricSpec>,
    /// A latency histogram the query feeds, if any.
    pub histogram: Option<HistogramSpec>,
    /// A column identifying the object behind each row (e.g. a partition) when several rows
    /// share one label set: gauges are summed, counters accumulate each object's increase,
    /// so a detached partition does not make a counter go down.
    pub rollup_key: Option<String>,
    /// Keep every row (all columns, as text) with the result, for JSON endpoints
    /// (`database_health` feeds `/health/db`).
    pub publish_rows: bool,
    /// Series budget across all its metrics.
    pub max_series: usize,
    /// Runs only on servers at or above this `server_version_num`.
    pub min_server_version: Option<i32>,
    /// Runs only on servers at or below this `server_version_num`.
    pub max_server_version: Option<i32>,
    /// Runs only when this extension is installed in the database.
    pub requires_extension: Option<String>,
    /// Runs only when this library is in `shared_preload_libraries`.
    pub requires_preload: Option<String>,
    /// Which servers it runs on (primary, replica, any).
    pub role: Role,
    /// What it reads: its database, or the whole server (run once per server in a fleet).
    pub scope: Scope,
    /// Values accumulated into counters by pgpulse (every metric is then a counter).
    pub accumulate: Option<Accumulate>,
    /// Configuration values bound to the query's parameters.
    pub binds: Option<Binds>,
    /// What each of its results tells the other queries at its server (see
    /// [`crate::db::server::Seat::signal`]).
    pub signals: Option<Signal>,
    /// The signal without which the query idles: while its server's signalling query has
    /// seen nothing since this query's last run found nothing either (every value 0), its
    /// last result stands and it sends no statement (see [`crate::sampler::idle`]).
    pub idle_without: Option<Signal>,
    /// Line and column of the query in its file, for messages.
    pub location: Location,
}

/// Where a query stands in its file (line, column), for messages. It is not part of the
/// query's definition: two specs that differ only in their place compare equal, so a reload
/// that moves a query in the file keeps it running.
#[derive(Debug, Clone, Copy, Default)]
pub struct Location(pub u64, pub u64);

impl PartialEq for Location {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
