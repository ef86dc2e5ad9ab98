//! Accumulated counters (`accumulate: seconds`): a query that samples a current count, e.g.
//! the active sessions of `pg_stat_activity` by wait event every second, becomes counters of
//! session-seconds, so `rate()` gives the average number of active sessions by what they wait
//! on (the "database load" of managed databases' performance insights).
//!
//! Each successful sample adds `value × interval` to its label set's counter. The nominal
//! interval is used, not the time since the previous sample: a skipped tick is unobserved time,
//! not load. A label set missing from a sample adds nothing and keeps its total, so a counter
//! never goes down; a new label set starts from its first sample. The state is bounded by the
//! query's series budget. When it is full, a new label set takes the place of the one that has
//! not grown for the longest time, if that is at least [`IDLE_EVICT`] (longer than Prometheus'
//! five-minute staleness: the evicted series ends, and one that comes back later is a new
//! series starting from its first sample, which `rate()` reads as a reset); otherwise the new
//! label set is dropped and counted. So the root blockers of last week never crowd out today's.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::{QueryResult, Series};

/// How long a label set must not have grown before a new one may take its place.
pub(crate) const IDLE_EVICT: Duration = Duration::from_secs(15 * 60);

/// One label set's total and when it last grew.
#[derive(Debug, Clone, Copy)]
struct Total {
    value: f64,
    grew: SystemTime,
}

/// Per-query accumulation state, kept in the snapshot across samples and reloads.
#[derive(Debug, Default, Clone)]
pub(crate) struct LoadAccumulator {
    /// Per metric: label set → accumulated total, and the order label sets first appeared.
    totals: Vec<HashMap<Vec<String>, Total>>,
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
        let (max, now) = (result.spec.max_series, result.at);
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
                    total.value += add;
                    if add > 0.0 {
                        total.grew = now;
                    }
                    continue;
                }
                if kept < max {
                    kept += 1;
                } else if !evict_idle(totals, order, now) {
                    dropped += 1;
                    continue;
                }
                let total = Total {
                    value: add,
                    grew: now,
                };
                totals.insert(labels.clone(), total);
                order.push(labels.clone());
            }
            *family = order
                .iter()
                .map(|labels| Series {
                    labels: labels.clone(),
                    value: totals.get(labels).map_or(0.0, |t| t.value),
                })
                .collect();
        }
        dropped
    }
}

/// Removes the label set of `totals` that has not grown for the longest time (the first
/// in `order` of equals), if that is at least [`IDLE_EVICT`] before `now`; whether one was.
fn evict_idle(
    totals: &mut HashMap<Vec<String>, Total>,
    order: &mut Vec<Vec<String>>,
    now: SystemTime,
) -> bool {
    let idle = |l: &Vec<String>| {
        totals.get(l).map_or(Duration::ZERO, |t| {
            now.duration_since(t.grew).unwrap_or_default()
        })
    };
    let mut oldest: Option<(usize, Duration)> = None;
    for (i, l) in order.iter().enumerate() {
        let d = idle(l);
        if d >= IDLE_EVICT && oldest.is_none_or(|(_, o)| d > o) {
            oldest = Some((i, d));
        }
    }
    let Some((i, _)) = oldest else {
        return false;
    };
    let labels = order.remove(i);
    totals.remove(&labels);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Defaults};
    use std::sync::Arc;
    use std::time::SystemTime;

    fn sample(rows: &[(&str, f64)]) -> QueryResult {
        sample_at(SystemTime::now(), rows)
    }

    fn sample_at(at: SystemTime, rows: &[(&str, f64)]) -> QueryResult {
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
            objects: None,
            histogram: None,
            rows: None,
            at,
            started: std::time::Instant::now(),
            found_nothing: false,
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

    #[test]
    fn a_full_budget_makes_room_by_the_longest_idle_label_set_after_fifteen_minutes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |min: u64| t0 + Duration::from_secs(min * 60);
        let mut acc = LoadAccumulator::default();
        let one = Duration::from_secs(1);
        acc.apply(
            &mut sample_at(at(0), &[("a", 1.0), ("b", 1.0), ("c", 1.0)]),
            one,
        );
        acc.apply(&mut sample_at(at(5), &[("c", 1.0)]), one);
        // Ten minutes idle is not enough: the newcomer is dropped.
        assert_eq!(acc.apply(&mut sample_at(at(10), &[("d", 1.0)]), one), 1);
        // At 16 minutes a and b (idle since 0) may go; a, the first of the two, goes.
        let mut r = sample_at(at(16), &[("d", 2.0)]);
        assert_eq!(acc.apply(&mut r, one), 0);
        assert_eq!(
            values(&r),
            vec![("b".into(), 1.0), ("c".into(), 2.0), ("d".into(), 2.0)]
        );
        // A label set that grows is never idle; c grew at 5, b did not: b goes next.
        let mut r = sample_at(at(21), &[("e", 1.0), ("c", 1.0)]);
        assert_eq!(acc.apply(&mut r, one), 0);
        assert_eq!(
            values(&r),
            vec![("c".into(), 3.0), ("d".into(), 2.0), ("e".into(), 1.0)]
        );
        // Every label set grew within 15 minutes: nothing is evicted.
        assert_eq!(acc.apply(&mut sample_at(at(22), &[("f", 1.0)]), one), 1);
    }
}
