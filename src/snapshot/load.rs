//! Accumulated counters (`accumulate: seconds`): a query that samples a current count, e.g.
//! the active sessions of `pg_stat_activity` by wait event every second, becomes counters of
//! session-seconds, so `rate()` gives the average number of active sessions by what they wait
//! on (the "database load" of managed databases' performance insights).
//!
//! Each successful sample adds `value × interval` to its label set's counter. The nominal
//! interval is used, not the time since the previous sample: a skipped tick is unobserved time,
//! not load. A label set missing from a sample adds nothing and keeps its total, so a counter
//! never goes down; a new label set starts from its first sample. The state is bounded by the
//! query's series budget: label sets past it are dropped and counted.

use std::collections::HashMap;
use std::time::Duration;

use super::{QueryResult, Series};

/// Per-query accumulation state, kept in the snapshot across samples and reloads.
#[derive(Debug, Default, Clone)]
pub(crate) struct LoadAccumulator {
    /// Per metric: label set → accumulated total, and the order label sets first appeared.
    totals: Vec<HashMap<Vec<String>, f64>>,
    order: Vec<Vec<Vec<String>>>,
}

impl LoadAccumulator {
    /// Adds one sample (`result`'s values, each held for `interval`) and replaces the series
    /// of `result` by the accumulated totals; returns how many new series the budget dropped.
    pub(crate) fn apply(&mut self, result: &mut QueryResult, interval: Duration) -> u64 {
        let n = result.families.len();
        self.totals.resize_with(n, HashMap::new);
        self.order.resize_with(n, Vec::new);
        let seconds = interval.as_secs_f64();
        let max = result.spec.max_series;
        let mut dropped = 0u64;
        let mut kept: usize = self.order.iter().map(Vec::len).sum();
        let state = self.totals.iter_mut().zip(self.order.iter_mut());
        for (family, (totals, order)) in result.families.iter_mut().zip(state) {
            for Series { labels, value } in family.iter() {
                // A negative or non-finite count is not a count: it adds nothing.
                let add = if value.is_finite() && *value > 0.0 {
                    value * seconds
                } else {
                    0.0
                };
                if let Some(total) = totals.get_mut(labels) {
                    *total += add;
                    continue;
                }
                if kept >= max {
                    dropped += 1;
                    continue;
                }
                kept += 1;
                totals.insert(labels.clone(), add);
                order.push(labels.clone());
            }
            *family = order
                .iter()
                .map(|labels| Series {
                    labels: labels.clone(),
                    value: totals.get(labels).copied().unwrap_or(0.0),
                })
                .collect();
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Defaults};
    use std::sync::Arc;
    use std::time::SystemTime;

    fn sample(rows: &[(&str, f64)]) -> QueryResult {
        let yaml = "queries:\n  - name: load\n    sql: SELECT 1\n    interval: 1s\n    timeout: 500ms\n    accumulate: seconds\n    labels: [wait_event]\n    max_series: 3\n    metrics:\n      - {column: n, name: pg_load_seconds_total, type: counter, help: l}\n";
        let cat = Catalog::parse(yaml, "q.yaml".as_ref(), Defaults::default()).unwrap();
        QueryResult {
            spec: Arc::clone(&cat.queries[0]),
            families: vec![
                rows.iter()
                    .map(|(l, v)| Series {
                        labels: vec![l.to_string()],
                        value: *v,
                    })
                    .collect(),
            ],
            histogram: None,
            rows: None,
            at: SystemTime::now(),
        }
    }

    fn values(r: &QueryResult) -> Vec<(String, f64)> {
        r.families[0]
            .iter()
            .map(|s| (s.labels[0].clone(), s.value))
            .collect()
    }

    #[test]
    fn each_sample_adds_its_count_times_the_interval() {
        let mut acc = LoadAccumulator::default();
        let mut r = sample(&[("CPU", 2.0), ("Lock", 1.0)]);
        assert_eq!(acc.apply(&mut r, Duration::from_secs(1)), 0);
        assert_eq!(values(&r), vec![("CPU".into(), 2.0), ("Lock".into(), 1.0)]);
        let mut r = sample(&[("CPU", 3.0), ("Lock", 1.0)]);
        acc.apply(&mut r, Duration::from_secs(1));
        assert_eq!(values(&r), vec![("CPU".into(), 5.0), ("Lock".into(), 2.0)]);
        // A 2 s interval counts each session twice over.
        let mut r = sample(&[("Lock", 4.0)]);
        acc.apply(&mut r, Duration::from_secs(2));
        assert_eq!(values(&r), vec![("CPU".into(), 5.0), ("Lock".into(), 10.0)]);
    }

    #[test]
    fn counters_never_go_down_when_a_bucket_empties_or_a_value_is_bad() {
        let mut acc = LoadAccumulator::default();
        let mut r = sample(&[("IO", 2.0)]);
        acc.apply(&mut r, Duration::from_secs(1));
        for rows in [vec![], vec![("IO", -1.0)], vec![("IO", f64::NAN)]] {
            let mut r = sample(&rows);
            acc.apply(&mut r, Duration::from_secs(1));
            assert_eq!(values(&r), vec![("IO".into(), 2.0)]);
        }
    }

    #[test]
    fn label_sets_past_the_budget_are_dropped_and_counted() {
        let mut acc = LoadAccumulator::default();
        let mut r = sample(&[("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)]);
        assert_eq!(acc.apply(&mut r, Duration::from_secs(1)), 1);
        assert_eq!(r.families[0].len(), 3);
        // Known label sets keep accumulating; the new one is dropped again.
        let mut r = sample(&[("a", 1.0), ("d", 1.0)]);
        assert_eq!(acc.apply(&mut r, Duration::from_secs(1)), 1);
        assert_eq!(values(&r)[0], ("a".into(), 2.0));
    }
}
