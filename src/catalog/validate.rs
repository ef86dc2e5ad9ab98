//! Semantic checks of a parsed catalog: names, label grammar, collisions, timing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::Defaults;
use super::derive::Derive;
use super::model::{
    HistogramSpec, MetricKind, MetricSpec, QuerySpec, RawCatalog, RawHistogram, RawMetric, RawQuery,
};

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
    /// `derive` with a histogram or accumulation.
    #[error("derive cannot be combined with histogram or accumulate")]
    DeriveCombined,
    /// A label, value or roll-up key that the derived family does not produce.
    #[error("column \"{column}\" is not produced by derive: {derive} (it produces {columns})")]
    NotDerived {
        /// The column the query reads.
        column: String,
        /// The derived family's name.
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
        /// The query's interval, as written.
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
    /// Neither metrics nor a histogram, and no rows published.
    #[error("metrics is empty (a query without metrics must publish_rows)")]
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
        /// The metric's name.
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
        /// The metric's name.
        metric: String,
        /// The declared unit.
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
    /// `signals` on a query that does not read the whole server.
    #[error("signals needs scope: server (the signal stands for every database of the server)")]
    SignalNeedsServerScope,
    /// `idle_without` with a key that changes a result between runs or feeds other queries.
    #[error(
        "idle_without cannot be combined with derive, histogram, rollup_key or signals (its last result must stand as it is)"
    )]
    IdleCombined,
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
pub(super) const DEFAULT_MAX_SERIES: usize = 1000;

/// A problem and where it is, before the query's name is attached.
type Found<T> = Result<T, (Loc, Problem)>;

/// Names met so far in the file.
#[derive(Default)]
struct Seen {
    queries: HashSet<String>,
    metrics: HashSet<String>,
    /// The server versions of the query that first exposed each metric name: a name may be
    /// exposed again only by a query for disjoint versions (PG 17 moved the checkpoint
    /// counters to pg_stat_checkpointer: two queries, one family on any one server).
    versions: HashMap<String, (i32, i32)>,
}

pub(crate) fn validate(raw: RawCatalog, d: Defaults) -> Result<Validated, Invalid> {
    let mut seen = Seen::default();
    let mut out = Vec::new();
    for q in raw.queries {
        let qloc = at(&q.referenced);
        let name = q.value.name.value.clone();
        let spec = query(q.value, qloc, d, &mut seen).map_err(|(at, problem)| Invalid {
            at,
            query: Some(name),
            problem,
        })?;
        out.push(spec);
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

/// One query, checked concern by concern in the order of the file's keys.
fn query(q: RawQuery, qloc: Loc, d: Defaults, seen: &mut Seen) -> Found<QuerySpec> {
    let name = q.name.value.clone();
    if !is_label_name(&name) {
        return Err((at(&q.name.referenced), Problem::BadQueryName));
    }
    if !seen.queries.insert(name.clone()) {
        return Err((at(&q.name.referenced), Problem::DuplicateQuery));
    }
    let (sql, derive) = source(&q, qloc)?;
    let (interval, timeout, expire_after) = timing(&q, qloc, d)?;
    let labels = labels(&q.labels)?;
    signalling(&q, derive.is_some())?;
    if q.metrics.is_empty() && q.histogram.is_none() && !q.publish_rows {
        return Err((qloc, Problem::NoMetrics));
    }
    let histogram = q.histogram.map(|h| histogram(h, seen)).transpose()?;
    let range = (
        q.min_server_version.unwrap_or(i32::MIN),
        q.max_server_version.unwrap_or(i32::MAX),
    );
    let mut columns: HashSet<String> = labels.iter().cloned().collect();
    let metrics = q
        .metrics
        .into_iter()
        .map(|m| metric(m, range, seen, &mut columns))
        .collect::<Found<Vec<_>>>()?;
    if let Some(k) = &q.rollup_key
        && (!is_label_name(&k.value) || !columns.insert(k.value.clone()))
    {
        return Err((at(&k.referenced), Problem::BadRollupKey(k.value.clone())));
    }
    if let Some(a) = &q.accumulate {
        accumulate(
            at(&a.referenced),
            histogram.is_some() || q.rollup_key.is_some(),
            &metrics,
        )?;
    }
    let rollup_key = q.rollup_key.map(|k| k.value);
    if let Some(d) = derive {
        derived_columns(d, qloc, &labels, &metrics, rollup_key.as_ref())?;
    }
    let max_series = q.max_series.unwrap_or(DEFAULT_MAX_SERIES);
    if max_series == 0 {
        return Err((qloc, Problem::ZeroBudget));
    }
    Ok(QuerySpec {
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
        rollup_key,
        max_series,
        min_server_version: q.min_server_version,
        max_server_version: q.max_server_version,
        requires_extension: q.requires_extension,
        requires_preload: q.requires_preload,
        role: q.role,
        scope: q.scope,
        accumulate: q.accumulate.map(|a| a.value),
        binds: q.binds,
        signals: q.signals.map(|s| s.value),
        idle_without: q.idle_without.map(|s| s.value),
        location: super::model::Location(qloc.0, qloc.1),
        name,
    })
}

/// `signals` only on a server-wide query; `idle_without` only on a query whose last result
/// can stand unchanged (nothing rolled up or kept beside it; an accumulated counter adds
/// nothing while nothing is found) and that signals nothing itself.
fn signalling(q: &RawQuery, derived: bool) -> Found<()> {
    if let Some(s) = &q.signals
        && q.scope != super::Scope::Server
    {
        return Err((at(&s.referenced), Problem::SignalNeedsServerScope));
    }
    if let Some(i) = &q.idle_without
        && (derived || q.histogram.is_some() || q.rollup_key.is_some() || q.signals.is_some())
    {
        return Err((at(&i.referenced), Problem::IdleCombined));
    }
    Ok(())
}

/// The statement: SQL of its own, or the relation pass's for a derived family (which then
/// takes no histogram or accumulation).
fn source(q: &RawQuery, qloc: Loc) -> Found<(String, Option<Derive>)> {
    match (&q.sql, &q.derive) {
        (Some(s), None) if s.value.trim().is_empty() => Err((at(&s.referenced), Problem::EmptySql)),
        (Some(s), None) => Ok((s.value.clone(), None)),
        (None, Some(d)) => {
            if q.histogram.is_some() || q.accumulate.is_some() {
                return Err((at(&d.referenced), Problem::DeriveCombined));
            }
            Ok((super::derive::FACTS_SQL.to_owned(), Some(d.value)))
        }
        (Some(s), Some(_)) => Err((at(&s.referenced), Problem::SqlOrDerive)),
        (None, None) => Err((qloc, Problem::SqlOrDerive)),
    }
}

/// Interval (at least 1 s), timeout (shorter than the interval) and expiry (at least the
/// interval; three intervals by default).
fn timing(q: &RawQuery, qloc: Loc, d: Defaults) -> Found<(Duration, Duration, Duration)> {
    let loc = |v: &Option<Spanned<Duration>>| v.as_ref().map_or(qloc, |s| at(&s.referenced));
    let interval = q.interval.as_ref().map_or(d.interval, |s| s.value);
    let timeout = q.timeout.as_ref().map_or(d.timeout, |s| s.value);
    if interval < Duration::from_secs(1) {
        return Err((loc(&q.interval), Problem::IntervalTooShort));
    }
    if timeout.is_zero() || timeout >= interval {
        let problem = Problem::Timeout {
            timeout: humantime::format_duration(timeout).to_string(),
            interval: humantime::format_duration(interval).to_string(),
        };
        return Err((loc(&q.timeout), problem));
    }
    let expire_after = q.expire_after.as_ref().map_or(interval * 3, |s| s.value);
    if expire_after < interval {
        return Err((loc(&q.expire_after), Problem::ExpireTooShort));
    }
    Ok((interval, timeout, expire_after))
}

/// Label names: the grammar, not `le`/`quantile`, no repeats.
fn labels(raw: &[Spanned<String>]) -> Found<Vec<String>> {
    let mut labels = Vec::new();
    for l in raw {
        if !is_label_name(&l.value) || l.value == "le" || l.value == "quantile" {
            return Err((at(&l.referenced), Problem::BadLabel(l.value.clone())));
        }
        if labels.contains(&l.value) {
            return Err((at(&l.referenced), Problem::DuplicateLabel(l.value.clone())));
        }
        labels.push(l.value.clone());
    }
    Ok(labels)
}

/// A statement-latency histogram: a `pg_*_seconds` name of its own and increasing, finite,
/// positive bucket bounds.
fn histogram(h: Spanned<RawHistogram>, seen: &mut Seen) -> Found<HistogramSpec> {
    let hloc = at(&h.referenced);
    let h = h.value;
    let n = &h.name.value;
    if !is_metric_name(n) || !n.starts_with("pg_") || !n.ends_with("_seconds") {
        return Err((at(&h.name.referenced), Problem::BadHistogramName(n.clone())));
    }
    if !seen.metrics.insert(n.clone()) {
        return Err((at(&h.name.referenced), Problem::DuplicateMetric(n.clone())));
    }
    let increasing = h
        .buckets
        .iter()
        .zip(h.buckets.iter().skip(1))
        .all(|(a, b)| a < b);
    if h.buckets.is_empty() || !increasing || h.buckets.iter().any(|b| !b.is_finite() || *b <= 0.0)
    {
        return Err((hloc, Problem::BadBuckets));
    }
    Ok(HistogramSpec {
        name: n.clone(),
        help: h.help,
        key_column: h.key_column,
        calls_column: h.calls_column,
        time_ms_column: h.time_ms_column,
        buckets: h.buckets,
    })
}

/// One metric: its name (grammar, prefix, suffixes, kind, collisions), help, unit and column.
fn metric(
    m: Spanned<RawMetric>,
    range: (i32, i32),
    seen: &mut Seen,
    columns: &mut HashSet<String>,
) -> Found<MetricSpec> {
    let mloc = at(&m.referenced);
    let m = m.value;
    let nloc = at(&m.name.referenced);
    let n = &m.name.value;
    metric_name(n, m.kind).map_err(|p| (nloc, p))?;
    let disjoint = |(lo, hi): (i32, i32)| hi < range.0 || range.1 < lo;
    if !seen.metrics.insert(n.clone()) && !seen.versions.get(n).copied().is_some_and(disjoint) {
        return Err((nloc, Problem::DuplicateMetric(n.clone())));
    }
    seen.versions.insert(n.clone(), range);
    if m.help.contains(['\n', '\r', '\\']) {
        return Err((mloc, Problem::BadHelp(n.clone())));
    }
    let other = match m.kind {
        MetricKind::Counter => n.strip_suffix("_total").unwrap_or(n).to_owned(),
        MetricKind::Gauge => format!("{n}_total"),
    };
    if seen.metrics.contains(&other) {
        return Err((
            nloc,
            Problem::FamilyClash {
                metric: n.clone(),
                other,
            },
        ));
    }
    if m.help.trim().is_empty() {
        return Err((mloc, Problem::NoHelp(n.clone())));
    }
    if let Some(u) = &m.unit
        && !n.contains(&format!("_{u}"))
    {
        let problem = Problem::UnitNotInName {
            metric: n.clone(),
            unit: u.clone(),
        };
        return Err((mloc, problem));
    }
    let (column, cloc) = (&m.column.value, at(&m.column.referenced));
    if !is_label_name(column) {
        return Err((cloc, Problem::BadColumn(column.clone())));
    }
    if !columns.insert(column.clone()) {
        return Err((cloc, Problem::DuplicateColumn(column.clone())));
    }
    Ok(MetricSpec {
        column: m.column.value,
        name: m.name.value,
        kind: m.kind,
        help: m.help,
        unit: m.unit,
    })
}

/// The grammar of a catalog metric's own name: `pg_*`, not reserved, no suffix of another
/// type's samples, `_total` exactly for counters.
fn metric_name(n: &str, kind: MetricKind) -> Result<(), Problem> {
    if !is_metric_name(n) {
        return Err(Problem::BadMetricName(n.to_owned()));
    }
    if !n.starts_with("pg_") || n.starts_with("pgpulse_") || RESERVED.contains(&n) {
        return Err(Problem::ReservedMetricName(n.to_owned()));
    }
    if ["_count", "_sum", "_bucket", "_info"]
        .iter()
        .any(|s| n.ends_with(s))
    {
        return Err(Problem::ReservedSuffix(n.to_owned()));
    }
    match kind {
        MetricKind::Counter if !n.ends_with("_total") => {
            Err(Problem::CounterWithoutTotal(n.to_owned()))
        }
        MetricKind::Gauge if n.ends_with("_total") => Err(Problem::GaugeWithTotal(n.to_owned())),
        _ => Ok(()),
    }
}

/// Accumulation: counters only, without a histogram or a roll-up.
fn accumulate(aloc: Loc, combined: bool, metrics: &[MetricSpec]) -> Found<()> {
    if combined {
        return Err((aloc, Problem::AccumulateCombined));
    }
    match metrics.iter().find(|m| m.kind != MetricKind::Counter) {
        Some(m) => Err((aloc, Problem::AccumulateNeedsCounter(m.name.clone()))),
        None => Ok(()),
    }
}

/// A derived family reads only columns its derivation produces.
fn derived_columns(
    d: Derive,
    qloc: Loc,
    labels: &[String],
    metrics: &[MetricSpec],
    rollup_key: Option<&String>,
) -> Found<()> {
    let produced = d.columns();
    let wanted = labels
        .iter()
        .chain(metrics.iter().map(|m| &m.column))
        .chain(rollup_key);
    for column in wanted {
        if !produced.contains(&column.as_str()) {
            let problem = Problem::NotDerived {
                column: column.clone(),
                derive: d.name().to_owned(),
                columns: produced.join(", "),
            };
            return Err((qloc, problem));
        }
    }
    Ok(())
}
