//! Semantic checks of a parsed catalog: names, label grammar, collisions, timing.

use std::collections::HashSet;
use std::time::Duration;

use serde_saphyr::Location;

use super::Defaults;
use super::model::Accumulate;
use super::model::{HistogramSpec, MetricKind, MetricSpec, QuerySpec, RawCatalog};

type Loc = (u64, u64);

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

/// Whether `sql` holds a `;` before its end, outside quotes and comments.
fn has_inner_semicolon(sql: &str) -> bool {
    let body = sql.trim().trim_end_matches(';');
    let (mut quote, mut chars) = (None::<char>, body.chars().peekable());
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '-') if chars.peek() == Some(&'-') => {
                // A line comment runs to the end of the line.
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            (None, ';') => return true,
            _ => {}
        }
    }
    false
}

/// Names the exporter itself exposes; a catalog may not reuse them.
const RESERVED: &[&str] = &["pg_up", "pg_server_version_num"];

/// Default series budget of a query.
pub const DEFAULT_MAX_SERIES: usize = 1000;

pub(crate) fn validate(raw: RawCatalog, d: Defaults) -> Result<Vec<QuerySpec>, (Loc, String)> {
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
        let err = |loc: Loc, msg: String| Err((loc, format!("query \"{name}\": {msg}")));
        if !is_label_name(&name) {
            return err(
                at(&q.name.referenced),
                "name must match [a-zA-Z_][a-zA-Z0-9_]*".into(),
            );
        }
        if !query_names.insert(name.clone()) {
            return err(at(&q.name.referenced), "duplicate query name".into());
        }
        if q.sql.value.trim().is_empty() {
            return err(at(&q.sql.referenced), "sql is empty".into());
        }
        if has_inner_semicolon(&q.sql.value) {
            return err(
                at(&q.sql.referenced),
                "sql must be a single statement (it runs inside pgpulse's read-only transaction)"
                    .into(),
            );
        }
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
            return err(l, "interval must be at least 1s".into());
        }
        if timeout.is_zero() || timeout >= interval {
            return err(
                tloc,
                format!(
                    "timeout ({}) must be above zero and below the interval ({})",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
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
            return err(l, "expire_after must be at least the interval".into());
        }
        let mut labels = Vec::new();
        for l in &q.labels {
            if !is_label_name(&l.value) || l.value == "le" || l.value == "quantile" {
                return err(
                    at(&l.referenced),
                    format!(
                        "label \"{}\" is not a valid label name (or is reserved: le, quantile)",
                        l.value
                    ),
                );
            }
            if labels.contains(&l.value) {
                return err(
                    at(&l.referenced),
                    format!("label \"{}\" is listed twice", l.value),
                );
            }
            labels.push(l.value.clone());
        }
        if q.metrics.is_empty() && q.histogram.is_none() {
            return err(qloc, "metrics is empty".into());
        }
        let histogram = match q.histogram {
            None => None,
            Some(h) => {
                let hloc = at(&h.referenced);
                let h = h.value;
                let n = &h.name.value;
                if !is_metric_name(n) || !n.starts_with("pg_") || !n.ends_with("_seconds") {
                    return err(
                        at(&h.name.referenced),
                        format!("histogram name \"{n}\" must be a pg_ name ending in _seconds"),
                    );
                }
                if !metric_names.insert(n.clone()) {
                    return err(
                        at(&h.name.referenced),
                        format!("metric name \"{n}\" is used twice in the catalog"),
                    );
                }
                let increasing = h.buckets.windows(2).all(|w| w[0] < w[1]);
                if h.buckets.is_empty()
                    || !increasing
                    || h.buckets.iter().any(|b| !b.is_finite() || *b <= 0.0)
                {
                    return err(
                        hloc,
                        "histogram buckets must be positive, finite and increasing".into(),
                    );
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
                return err(
                    nloc,
                    format!("metric name \"{n}\" is not a valid Prometheus name"),
                );
            }
            if !n.starts_with("pg_") || n.starts_with("pgpulse_") || RESERVED.contains(&n.as_str())
            {
                return err(
                    nloc,
                    format!(
                        "metric name \"{n}\" must start with pg_ and not be one of {RESERVED:?}"
                    ),
                );
            }
            if ["_count", "_sum", "_bucket", "_info"]
                .iter()
                .any(|s| n.ends_with(s))
            {
                return err(
                    nloc,
                    format!(
                        "metric name \"{n}\" ends in a suffix reserved for histograms, summaries and info metrics"
                    ),
                );
            }
            match m.kind {
                MetricKind::Counter if !n.ends_with("_total") => {
                    return err(nloc, format!("counter \"{n}\" must end in _total"));
                }
                MetricKind::Gauge if n.ends_with("_total") => {
                    return err(nloc, format!("gauge \"{n}\" must not end in _total"));
                }
                _ => {}
            }
            let range = (
                q.min_server_version.unwrap_or(i32::MIN),
                q.max_server_version.unwrap_or(i32::MAX),
            );
            let disjoint = |(lo, hi): (i32, i32)| hi < range.0 || range.1 < lo;
            if !metric_names.insert(n.clone()) && !versions.get(n).copied().is_some_and(disjoint) {
                return err(
                    nloc,
                    format!(
                        "metric name \"{n}\" is used twice in the catalog (allowed only for disjoint server versions)"
                    ),
                );
            }
            versions.insert(n.clone(), range);
            if m.help.contains(['\n', '\r', '\\']) {
                return err(
                    mloc,
                    format!("metric \"{n}\" help must be one line without backslashes"),
                );
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
                    format!("metric \"{n}\" and \"{other}\" would expose the same family"),
                );
            }
            if m.help.trim().is_empty() {
                return err(mloc, format!("metric \"{n}\" has no help"));
            }
            if let Some(u) = &m.unit
                && !n.contains(&format!("_{u}"))
            {
                return err(
                    mloc,
                    format!("metric \"{n}\" has unit {u} but its name does not say so"),
                );
            }
            if !is_label_name(&m.column.value) {
                return err(
                    at(&m.column.referenced),
                    format!("column \"{}\" is not a plain column name", m.column.value),
                );
            }
            if !columns.insert(m.column.value.clone()) {
                return err(
                    at(&m.column.referenced),
                    format!(
                        "column \"{}\" is used twice (as label or value)",
                        m.column.value
                    ),
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
            return err(
                at(&k.referenced),
                format!(
                    "rollup_key \"{}\" must be a plain column not used as label or value",
                    k.value
                ),
            );
        }
        if let Some(a) = &q.accumulate {
            let aloc = at(&a.referenced);
            if histogram.is_some() || q.rollup_key.is_some() {
                return err(
                    aloc,
                    "accumulate cannot be combined with histogram or rollup_key".into(),
                );
            }
            if let Some(m) = metrics.iter().find(|m| m.kind != MetricKind::Counter) {
                return err(
                    aloc,
                    format!(
                        "accumulate: {} makes counters; metric \"{}\" must be type counter",
                        match a.value {
                            Accumulate::Seconds => "seconds",
                        },
                        m.name
                    ),
                );
            }
        }
        let max_series = q.max_series.unwrap_or(DEFAULT_MAX_SERIES);
        if max_series == 0 {
            return err(qloc, "max_series must be at least 1".into());
        }
        out.push(QuerySpec {
            help: q.help.unwrap_or_default(),
            sql: q.sql.value,
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
            location: qloc,
            name,
        });
    }
    Ok(out)
}
