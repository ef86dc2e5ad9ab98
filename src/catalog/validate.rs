//! Semantic checks of a parsed catalog: names, label grammar, collisions, timing.

use std::collections::HashSet;
use std::time::Duration;

use serde_saphyr::Location;

use super::Defaults;
use super::model::{HistogramSpec, MetricKind, MetricSpec, QuerySpec, RawCatalog};

/// Line and column (1-based).
pub type Loc = (u64, u64);

fn at(l: &Location) -> Loc {
    (l.line(), l.column())
}

/// Prometheus metric name grammar: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// Prometheus label name grammar: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`.
pub fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !s.starts_with("__")
}

/// What is wrong with a catalog entry; each variant names the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The query name is not a valid identifier.
    #[error("name must match [a-zA-Z_][a-zA-Z0-9_]*")]
    BadQueryName,
    /// Two queries share a name.
    #[error("duplicate query name")]
    DuplicateQuery,
    /// The SQL is blank.
    #[error("sql is empty")]
    EmptySql,
    /// Neither or both of `sql` and `derive`.
    #[error("a query has exactly one of sql and derive")]
    SqlOrDerive,
    /// `derive` with a histogram, published rows or accumulation.
    #[error("derive cannot be combined with histogram, publish_rows or accumulate")]
    DeriveCombined,
    /// A label, value or roll-up key that the derived family does not produce.
    #[error("column \"{column}\" is not produced by derive: {derive} (it produces {columns})")]
    NotDerived {
        /// The column.
        column: String,
        /// The family.
        derive: String,
        /// What it produces.
        columns: String,
    },
    /// The interval is below one second.
    #[error("interval must be at least 1s")]
    IntervalTooShort,
    /// The timeout is zero or not below the interval.
    #[error("timeout ({timeout}) must be above zero and below the interval ({interval})")]
    Timeout {
        /// The timeout as written.
        timeout: String,
        /// The interval.
        interval: String,
    },
    /// `expire_after` is below the interval.
    #[error("expire_after must be at least the interval")]
    ExpireTooShort,
    /// A label name is invalid or reserved.
    #[error("label \"{0}\" is not a valid label name (or is reserved: le, quantile)")]
    BadLabel(String),
    /// A label is listed twice.
    #[error("label \"{0}\" is listed twice")]
    DuplicateLabel(String),
    /// Neither metrics nor a histogram.
    #[error("metrics is empty")]
    NoMetrics,
    /// The histogram's name breaks the naming rules.
    #[error("histogram name \"{0}\" must be a pg_ name ending in _seconds")]
    BadHistogramName(String),
    /// A metric name is used twice in the catalog.
    #[error(
        "metric name \"{0}\" is used twice in the catalog (allowed only for disjoint server versions)"
    )]
    DuplicateMetric(String),
    /// The histogram's buckets are not positive, finite and increasing.
    #[error("histogram buckets must be positive, finite and increasing")]
    BadBuckets,
    /// A metric name is not a Prometheus name.
    #[error("metric name \"{0}\" is not a valid Prometheus name")]
    BadMetricName(String),
    /// A metric name lacks the `pg_` prefix or is the exporter's own.
    #[error("metric name \"{0}\" must start with pg_ and not be one of {RESERVED:?}")]
    ReservedMetricName(String),
    /// A metric name ends in a suffix of histograms, summaries or info metrics.
    #[error(
        "metric name \"{0}\" ends in a suffix reserved for histograms, summaries and info metrics"
    )]
    ReservedSuffix(String),
    /// A counter's name does not end in `_total`.
    #[error("counter \"{0}\" must end in _total")]
    CounterWithoutTotal(String),
    /// A gauge's name ends in `_total`.
    #[error("gauge \"{0}\" must not end in _total")]
    GaugeWithTotal(String),
    /// A help text spans lines or holds backslashes.
    #[error("metric \"{0}\" help must be one line without backslashes")]
    BadHelp(String),
    /// A gauge and a counter would expose the same family.
    #[error("metric \"{metric}\" and \"{other}\" would expose the same family")]
    FamilyClash {
        /// The metric.
        metric: String,
        /// The other metric.
        other: String,
    },
    /// A metric has no help.
    #[error("metric \"{0}\" has no help")]
    NoHelp(String),
    /// A metric's unit is not in its name.
    #[error("metric \"{metric}\" has unit {unit} but its name does not say so")]
    UnitNotInName {
        /// The metric.
        metric: String,
        /// The unit.
        unit: String,
    },
    /// A value column is not a plain column name.
    #[error("column \"{0}\" is not a plain column name")]
    BadColumn(String),
    /// A column is used twice.
    #[error("column \"{0}\" is used twice (as label or value)")]
    DuplicateColumn(String),
    /// The roll-up key is not a free plain column.
    #[error("rollup_key \"{0}\" must be a plain column not used as label or value")]
    BadRollupKey(String),
    /// `accumulate` with a histogram or a roll-up key.
    #[error("accumulate cannot be combined with histogram or rollup_key")]
    AccumulateCombined,
    /// `accumulate: seconds` on a gauge.
    #[error("accumulate: seconds makes counters; metric \"{0}\" must be type counter")]
    AccumulateNeedsCounter(String),
    /// The series budget is zero.
    #[error("max_series must be at least 1")]
    ZeroBudget,
    /// `health_query` names no query of the catalog.
    #[error("health_query \"{0}\" is not a query of this catalog")]
    UnknownHealthQuery(String),
}

/// A validation failure: where, which query, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Line and column.
    pub at: Loc,
    /// The query, when the problem is inside one.
    pub query: Option<String>,
    /// What is wrong.
    pub problem: Problem,
}

/// A validated catalog's parts.
#[derive(Debug)]
pub(crate) struct Validated {
    pub queries: Vec<QuerySpec>,
    pub health_query: Option<String>,
}

/// Names the exporter itself exposes; a catalog may not reuse them.
const RESERVED: &[&str] = &["pg_up", "pg_server_version_num"];

/// Default series budget of a query.
pub const DEFAULT_MAX_SERIES: usize = 1000;

pub(crate) fn validate(raw: RawCatalog, d: Defaults) -> Result<Validated, Invalid> {
    let mut query_names = HashSet::new();
    let mut metric_names = HashSet::new();
    // The server versions of the query that first exposed each metric name: a name may be
    // exposed again only by a query for disjoint versions (PG 17 moved the checkpoint counters
    // to pg_stat_checkpointer: two queries, one family on any one server).
    let mut versions: std::collections::HashMap<String, (i32, i32)> = Default::default();
    let mut out = Vec::new();
    for q in raw.queries {
        let qloc = at(&q.referenced);
        let q = q.value;
        let name = q.name.value.clone();
        let err = |at: Loc, problem: Problem| {
            Err(Invalid {
                at,
                query: Some(name.clone()),
                problem,
            })
        };
        if !is_label_name(&name) {
            return err(at(&q.name.referenced), Problem::BadQueryName);
        }
        if !query_names.insert(name.clone()) {
            return err(at(&q.name.referenced), Problem::DuplicateQuery);
        }
        let (sql, derive) = match (q.sql, q.derive) {
            (Some(s), None) if s.value.trim().is_empty() => {
                return err(at(&s.referenced), Problem::EmptySql);
            }
            (Some(s), None) => (s.value, None),
            (None, Some(d)) => {
                if q.histogram.is_some() || q.publish_rows || q.accumulate.is_some() {
                    return err(at(&d.referenced), Problem::DeriveCombined);
                }
                (super::derive::FACTS_SQL.to_owned(), Some(d.value))
            }
            (Some(s), Some(_)) => return err(at(&s.referenced), Problem::SqlOrDerive),
            (None, None) => return err(qloc, Problem::SqlOrDerive),
        };
        let interval = q.interval.as_ref().map(|s| s.value).unwrap_or(d.interval);
        let timeout = q.timeout.as_ref().map(|s| s.value).unwrap_or(d.timeout);
        let tloc = q
            .timeout
            .as_ref()
            .map(|s| at(&s.referenced))
            .unwrap_or(qloc);
        if interval < Duration::from_secs(1) {
            let l = q
                .interval
                .as_ref()
                .map(|s| at(&s.referenced))
                .unwrap_or(qloc);
            return err(l, Problem::IntervalTooShort);
        }
        if timeout.is_zero() || timeout >= interval {
            return err(
                tloc,
                Problem::Timeout {
                    timeout: humantime::format_duration(timeout).to_string(),
                    interval: humantime::format_duration(interval).to_string(),
                },
            );
        }
        let expire_after = q
            .expire_after
            .as_ref()
            .map(|s| s.value)
            .unwrap_or(interval * 3);
        if expire_after < interval {
            let l = q
                .expire_after
                .as_ref()
                .map(|s| at(&s.referenced))
                .unwrap_or(qloc);
            return err(l, Problem::ExpireTooShort);
        }
        let mut labels = Vec::new();
        for l in &q.labels {
            if !is_label_name(&l.value) || l.value == "le" || l.value == "quantile" {
                return err(at(&l.referenced), Problem::BadLabel(l.value.clone()));
            }
            if labels.contains(&l.value) {
                return err(at(&l.referenced), Problem::DuplicateLabel(l.value.clone()));
            }
            labels.push(l.value.clone());
        }
        if q.metrics.is_empty() && q.histogram.is_none() {
            return err(qloc, Problem::NoMetrics);
        }
        let histogram = match q.histogram {
            None => None,
            Some(h) => {
                let hloc = at(&h.referenced);
                let h = h.value;
                let n = &h.name.value;
                if !is_metric_name(n) || !n.starts_with("pg_") || !n.ends_with("_seconds") {
                    return err(at(&h.name.referenced), Problem::BadHistogramName(n.clone()));
                }
                if !metric_names.insert(n.clone()) {
                    return err(at(&h.name.referenced), Problem::DuplicateMetric(n.clone()));
                }
                let increasing = h
                    .buckets
                    .iter()
                    .zip(h.buckets.iter().skip(1))
                    .all(|(a, b)| a < b);
                if h.buckets.is_empty()
                    || !increasing
                    || h.buckets.iter().any(|b| !b.is_finite() || *b <= 0.0)
                {
                    return err(hloc, Problem::BadBuckets);
                }
                Some(HistogramSpec {
                    name: n.clone(),
                    help: h.help,
                    key_column: h.key_column,
                    calls_column: h.calls_column,
                    time_ms_column: h.time_ms_column,
                    buckets: h.buckets,
                })
            }
        };
        let mut metrics = Vec::new();
        let mut columns: HashSet<String> = labels.iter().cloned().collect();
        for m in q.metrics {
            let mloc = at(&m.referenced);
            let m = m.value;
            let n = &m.name.value;
            let nloc = at(&m.name.referenced);
            if !is_metric_name(n) {
                return err(nloc, Problem::BadMetricName(n.clone()));
            }
            if !n.starts_with("pg_") || n.starts_with("pgpulse_") || RESERVED.contains(&n.as_str())
            {
                return err(nloc, Problem::ReservedMetricName(n.clone()));
            }
            if ["_count", "_sum", "_bucket", "_info"]
                .iter()
                .any(|s| n.ends_with(s))
            {
                return err(nloc, Problem::ReservedSuffix(n.clone()));
            }
            match m.kind {
                MetricKind::Counter if !n.ends_with("_total") => {
                    return err(nloc, Problem::CounterWithoutTotal(n.clone()));
                }
                MetricKind::Gauge if n.ends_with("_total") => {
                    return err(nloc, Problem::GaugeWithTotal(n.clone()));
                }
                _ => {}
            }
            let range = (
                q.min_server_version.unwrap_or(i32::MIN),
                q.max_server_version.unwrap_or(i32::MAX),
            );
            let disjoint = |(lo, hi): (i32, i32)| hi < range.0 || range.1 < lo;
            if !metric_names.insert(n.clone()) && !versions.get(n).copied().is_some_and(disjoint) {
                return err(nloc, Problem::DuplicateMetric(n.clone()));
            }
            versions.insert(n.clone(), range);
            if m.help.contains(['\n', '\r', '\\']) {
                return err(mloc, Problem::BadHelp(n.clone()));
            }
            let family = n.strip_suffix("_total").unwrap_or(n);
            let other = if m.kind == MetricKind::Counter {
                family.to_owned()
            } else {
                format!("{n}_total")
            };
            if metric_names.contains(&other) {
                return err(
                    nloc,
                    Problem::FamilyClash {
                        metric: n.clone(),
                        other: other.clone(),
                    },
                );
            }
            if m.help.trim().is_empty() {
                return err(mloc, Problem::NoHelp(n.clone()));
            }
            if let Some(u) = &m.unit
                && !n.contains(&format!("_{u}"))
            {
                return err(
                    mloc,
                    Problem::UnitNotInName {
                        metric: n.clone(),
                        unit: u.clone(),
                    },
                );
            }
            if !is_label_name(&m.column.value) {
                return err(
                    at(&m.column.referenced),
                    Problem::BadColumn(m.column.value.clone()),
                );
            }
            if !columns.insert(m.column.value.clone()) {
                return err(
                    at(&m.column.referenced),
                    Problem::DuplicateColumn(m.column.value.clone()),
                );
            }
            metrics.push(MetricSpec {
                column: m.column.value,
                name: n.clone(),
                kind: m.kind,
                help: m.help,
                unit: m.unit,
            });
        }
        if let Some(k) = &q.rollup_key
            && (!is_label_name(&k.value) || !columns.insert(k.value.clone()))
        {
            return err(at(&k.referenced), Problem::BadRollupKey(k.value.clone()));
        }
        if let Some(a) = &q.accumulate {
            let aloc = at(&a.referenced);
            if histogram.is_some() || q.rollup_key.is_some() {
                return err(aloc, Problem::AccumulateCombined);
            }
            if let Some(m) = metrics.iter().find(|m| m.kind != MetricKind::Counter) {
                return err(aloc, Problem::AccumulateNeedsCounter(m.name.clone()));
            }
        }
        if let Some(d) = derive {
            let produced = d.columns();
            let wanted = labels
                .iter()
                .chain(metrics.iter().map(|m| &m.column))
                .chain(q.rollup_key.as_ref().map(|k| &k.value));
            for column in wanted {
                if !produced.contains(&column.as_str()) {
                    return err(
                        qloc,
                        Problem::NotDerived {
                            column: column.clone(),
                            derive: d.name().to_owned(),
                            columns: produced.join(", "),
                        },
                    );
                }
            }
        }
        let max_series = q.max_series.unwrap_or(DEFAULT_MAX_SERIES);
        if max_series == 0 {
            return err(qloc, Problem::ZeroBudget);
        }
        out.push(QuerySpec {
            help: q.help.unwrap_or_default(),
            sql,
            derive,
            interval,
            timeout,
            expire_after,
            labels,
            metrics,
            histogram,
            publish_rows: q.publish_rows,
            rollup_key: q.rollup_key.map(|k| k.value),
            max_series,
            min_server_version: q.min_server_version,
            max_server_version: q.max_server_version,
            requires_extension: q.requires_extension,
            requires_preload: q.requires_preload,
            role: q.role,
            accumulate: q.accumulate.map(|a| a.value),
            location: super::model::Location(qloc.0, qloc.1),
            name,
        });
    }
    let health_query = match raw.health_query {
        None => None,
        Some(h) => {
            let Some(q) = out.iter_mut().find(|q| q.name == h.value) else {
                return Err(Invalid {
                    at: at(&h.referenced),
                    query: None,
                    problem: Problem::UnknownHealthQuery(h.value),
                });
            };
            // The endpoint serves the query's rows.
            q.publish_rows = true;
            Some(h.value)
        }
    };
    Ok(Validated {
        queries: out,
        health_query,
    })
}
