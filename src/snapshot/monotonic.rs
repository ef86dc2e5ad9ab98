//! Counters stay counters: the check every counter sample passes before it is served.
//!
//! A counter sample that is negative, not finite (NaN, ±Inf), or lower than the value the
//! same series served last time while its source did not reset, is dropped and counted by
//! reason. The series keeps its last served value in its place (a counter that has not moved,
//! which is what Prometheus' `rate()` can use), or is left out when it has none. A custom
//! catalog whose "counter" column goes down is thereby caught at the source, never served as a
//! phantom reset that `increase()` would count as a jump.
//!
//! Whether the source reset is the server's word, not a guess from the values: the probe
//! reads a reset epoch (the postmaster's start time, every `stats_reset` of the cumulative
//! statistics, `pg_stat_statements_info`), and a query whose last served sample predates a
//! change of that epoch takes its next values as they are, lower or not.

use std::collections::HashMap;

use super::QueryResult;
use crate::catalog::MetricKind;

/// Why a counter sample was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dropped {
    /// Below zero.
    Negative,
    /// NaN or infinite.
    NotFinite,
    /// Lower than the last served value, with no reset of the source.
    Decrease,
}

impl Dropped {
    /// Every reason, in the order of [`Dropped::as_str`].
    pub(crate) const ALL: [Dropped; 3] = [Dropped::Negative, Dropped::NotFinite, Dropped::Decrease];

    /// The `reason` label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dropped::Negative => "negative",
            Dropped::NotFinite => "not_finite",
            Dropped::Decrease => "decrease",
        }
    }
}

/// Counts of dropped counter samples of one run, by reason (indexed as [`Dropped::ALL`]).
pub(crate) type DropCounts = [u64; 3];

fn count(drops: &mut DropCounts, why: Dropped) {
    if let Some(n) = drops.get_mut(why as usize) {
        *n += 1;
    }
}

/// Drops the negative and non-finite samples of every counter of `result`, series and
/// roll-up objects (before roll-ups and accumulation, which would turn them into a
/// decrease); `accumulated` checks every metric (its values all become counters).
pub(crate) fn drop_invalid(result: &mut QueryResult, accumulated: bool, drops: &mut DropCounts) {
    let spec = result.spec.clone();
    for (family, metric) in result.families.iter_mut().zip(&spec.metrics) {
        if metric.kind != MetricKind::Counter && !accumulated {
            continue;
        }
        family.retain(|s| valid(s.value, drops));
    }
    let Some(objects) = result.objects.as_mut() else {
        return;
    };
    for (samples, metric) in objects.samples.iter_mut().zip(&spec.metrics) {
        if metric.kind == MetricKind::Counter || accumulated {
            samples.retain(|s| valid(s.value, drops));
        }
    }
}

/// Whether a counter sample is a count (finite, not negative); counts it by reason if not.
fn valid(value: f64, drops: &mut DropCounts) -> bool {
    let why = if !value.is_finite() {
        Dropped::NotFinite
    } else if value < 0.0 {
        Dropped::Negative
    } else {
        return true;
    };
    count(drops, why);
    false
}

/// Replaces every counter sample of `result` that is lower than what `previous` served for the
/// same series by that served value, unless the source reset since (`reset`).
pub(crate) fn hold_decreases(
    result: &mut QueryResult,
    previous: Option<&QueryResult>,
    reset: bool,
    drops: &mut DropCounts,
) {
    let Some(previous) = previous.filter(|_| !reset) else {
        return;
    };
    let spec = result.spec.clone();
    for (m, metric) in spec.metrics.iter().enumerate() {
        if metric.kind != MetricKind::Counter {
            continue;
        }
        let (Some(family), Some(before)) = (result.families.get_mut(m), previous.families.get(m))
        else {
            continue;
        };
        if before.is_empty() {
            continue;
        }
        let served: HashMap<&[String], f64> = before
            .iter()
            .map(|s| (s.labels.as_slice(), s.value))
            .collect();
        for s in family.iter_mut() {
            if let Some(&last) = served.get(s.labels.as_slice())
                && s.value < last
            {
                s.value = last;
                count(drops, Dropped::Decrease);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Series;

    fn result(values: &[(&str, f64)]) -> QueryResult {
        let yaml = "queries:\n  - name: q\n    sql: SELECT 1\n    labels: [k]\n    metrics:\n      - {column: c, name: pg_c_total, type: counter, help: c}\n      - {column: g, name: pg_g, type: gauge, help: g}\n";
        let catalog =
            crate::catalog::Catalog::parse(yaml, "q.yaml".as_ref(), Default::default()).unwrap();
        let spec = catalog.queries[0].clone();
        let mut r = QueryResult::empty(&spec);
        for (k, v) in values {
            let s = Series {
                labels: vec![(*k).to_owned()],
                value: *v,
            };
            r.families[0].push(s.clone());
            r.families[1].push(s);
        }
        r
    }

    fn values(r: &QueryResult, m: usize) -> Vec<f64> {
        r.families[m].iter().map(|s| s.value).collect()
    }

    #[test]
    fn negative_and_non_finite_counter_samples_are_dropped_and_gauges_kept() {
        let mut r = result(&[
            ("a", -1.0),
            ("b", f64::NAN),
            ("c", f64::INFINITY),
            ("d", 2.0),
        ]);
        let mut drops = DropCounts::default();
        drop_invalid(&mut r, false, &mut drops);
        assert_eq!(values(&r, 0), vec![2.0]);
        assert_eq!(r.families[1].len(), 4);
        assert_eq!(drops, [1, 2, 0]);
    }

    #[test]
    fn a_decrease_holds_the_served_value_unless_the_source_reset() {
        let before = result(&[("a", 10.0), ("b", 5.0)]);
        let mut now = result(&[("a", 7.0), ("b", 6.0), ("new", 1.0)]);
        let mut drops = DropCounts::default();
        hold_decreases(&mut now, Some(&before), false, &mut drops);
        assert_eq!(values(&now, 0), vec![10.0, 6.0, 1.0]);
        assert_eq!(values(&now, 1), vec![7.0, 6.0, 1.0], "gauges go down");
        assert_eq!(drops, [0, 0, 1]);
        let mut reset = result(&[("a", 7.0)]);
        let mut drops = DropCounts::default();
        hold_decreases(&mut reset, Some(&before), true, &mut drops);
        assert_eq!(values(&reset, 0), vec![7.0]);
        assert_eq!(drops, [0, 0, 0]);
    }
}
