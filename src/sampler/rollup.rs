//! Roll-ups: several rows (e.g. one per partition) share one label set (their parent).
//! Gauges are summed. Counters accumulate each object's increase since the previous sample,
//! so an object that disappears (a detached or dropped partition) freezes its contribution
//! instead of making the counter go down, and a new object adds what it counted so far. An
//! object whose value went down was reset; its current value is counted as new.

use std::collections::HashMap;

use super::store::{QueryResult, Series};
use crate::catalog::MetricKind;

/// Per-query roll-up state, kept by the query's task across samples.
#[derive(Debug, Default, Clone)]
pub struct Rollup {
    /// Per metric: the last value of each object (label set + key).
    last: Vec<HashMap<Vec<String>, f64>>,
    /// Per metric: the accumulated total of each label set.
    totals: Vec<HashMap<Vec<String>, f64>>,
}

impl Rollup {
    /// Replaces the per-object series of `result` (whose last label is the roll-up key) by
    /// one series per label set, keeping at most `max_series`; returns how many were dropped.
    pub fn apply(&mut self, result: &mut QueryResult) -> u64 {
        let n = result.families.len();
        self.last.resize_with(n, HashMap::new);
        self.totals.resize_with(n, HashMap::new);
        let mut order: Vec<Vec<String>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut rolled: Vec<HashMap<Vec<String>, f64>> = vec![HashMap::new(); n];
        for (m, family) in result.families.iter().enumerate() {
            let kind = result.spec.metrics[m].kind;
            let mut current = HashMap::new();
            for Series { labels, value } in family {
                let parent = labels[..labels.len().saturating_sub(1)].to_vec();
                if seen.insert(parent.clone()) {
                    order.push(parent.clone());
                }
                let add = match kind {
                    MetricKind::Gauge => *value,
                    MetricKind::Counter => match self.last[m].get(labels) {
                        Some(prev) if value >= prev => value - prev,
                        _ => *value,
                    },
                };
                *rolled[m].entry(parent).or_insert(0.0) += add;
                current.insert(labels.clone(), *value);
            }
            if kind == MetricKind::Counter {
                let totals = &mut self.totals[m];
                for (parent, add) in &rolled[m] {
                    *totals.entry(parent.clone()).or_insert(0.0) += add;
                }
                // Label sets gone from the result are forgotten, so state stays bounded.
                totals.retain(|k, _| rolled[m].contains_key(k));
                rolled[m] = totals.clone();
            }
            self.last[m] = current;
        }
        let max = result.spec.max_series;
        let mut kept = 0usize;
        let mut dropped = 0u64;
        let mut families = vec![Vec::new(); n];
        for parent in order {
            let series: Vec<(usize, f64)> = (0..n)
                .filter_map(|m| rolled[m].get(&parent).map(|v| (m, *v)))
                .collect();
            if kept + series.len() > max {
                dropped += series.len() as u64;
                continue;
            }
            kept += series.len();
            for (m, value) in series {
                families[m].push(Series {
                    labels: parent.clone(),
                    value,
                });
            }
        }
        result.families = families;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Defaults};
    use std::sync::Arc;
    use std::time::SystemTime;

    fn result(rows: &[(&str, &str, f64, f64)]) -> QueryResult {
        let yaml = "queries:\n  - name: q\n    sql: SELECT 1\n    labels: [parent]\n    rollup_key: part\n    max_series: 4\n    metrics:\n      - {column: scans, name: pg_scans_total, type: counter, help: s}\n      - {column: bytes, name: pg_bytes, type: gauge, help: b}\n";
        let cat = Catalog::parse(yaml, "q.yaml".as_ref(), Defaults::default()).unwrap();
        let spec = cat.queries[0].clone();
        let mut families = vec![Vec::new(), Vec::new()];
        for (parent, part, scans, bytes) in rows {
            let labels = vec![parent.to_string(), part.to_string()];
            families[0].push(Series {
                labels: labels.clone(),
                value: *scans,
            });
            families[1].push(Series {
                labels,
                value: *bytes,
            });
        }
        QueryResult {
            spec: Arc::clone(&spec),
            families,
            histogram: None,
            rows: None,
            at: SystemTime::now(),
        }
    }

    fn values(r: &QueryResult, m: usize) -> Vec<(String, f64)> {
        r.families[m]
            .iter()
            .map(|s| (s.labels[0].clone(), s.value))
            .collect()
    }

    #[test]
    fn gauges_sum_and_counters_never_go_down_when_a_partition_leaves() {
        let mut rollup = Rollup::default();
        let mut r = result(&[
            ("orders", "a", 10.0, 100.0),
            ("orders", "b", 5.0, 50.0),
            ("trades", "c", 1.0, 1.0),
        ]);
        assert_eq!(rollup.apply(&mut r), 0);
        assert_eq!(
            values(&r, 0),
            vec![("orders".into(), 15.0), ("trades".into(), 1.0)]
        );
        assert_eq!(
            values(&r, 1),
            vec![("orders".into(), 150.0), ("trades".into(), 1.0)]
        );
        // Partition a is detached (gone) and b scanned twice more; d is new with 3 scans.
        let mut r = result(&[
            ("orders", "b", 7.0, 50.0),
            ("orders", "d", 3.0, 10.0),
            ("trades", "c", 1.0, 1.0),
        ]);
        rollup.apply(&mut r);
        assert_eq!(
            values(&r, 0),
            vec![("orders".into(), 20.0), ("trades".into(), 1.0)]
        );
        assert_eq!(
            values(&r, 1),
            vec![("orders".into(), 60.0), ("trades".into(), 1.0)]
        );
        // A statistics reset of b counts its new value as new scans.
        let mut r = result(&[("orders", "b", 2.0, 50.0), ("orders", "d", 3.0, 10.0)]);
        rollup.apply(&mut r);
        assert_eq!(values(&r, 0), vec![("orders".into(), 22.0)]);
    }

    #[test]
    fn the_budget_applies_to_rolled_up_series() {
        let mut rollup = Rollup::default();
        let mut r = result(&[
            ("p1", "a", 1.0, 1.0),
            ("p2", "b", 1.0, 1.0),
            ("p3", "c", 1.0, 1.0),
        ]);
        assert_eq!(
            rollup.apply(&mut r),
            2,
            "max_series 4 keeps two parents of two series"
        );
        assert_eq!(r.families[0].len(), 2);
    }
}
