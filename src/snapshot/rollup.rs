//! Roll-ups: several rows (e.g. one per partition) share one label set (their parent). The
//! decoder hands them over as [`Objects`]; the roll-up turns them into one series per parent.
//!
//! Gauges are summed. Counters never go down unless their source really reset: each object
//! (a partition: its parent's labels plus the roll-up key) contributes its increase since
//! its previous sample. The first sample of an object only sets its baseline, so a new
//! partition, a partition detached into a table of its own, or pgpulse's own start never
//! makes a series jump; a rolled-up counter therefore counts from when pgpulse first saw the
//! object (use `rate()`/`increase()`, as with any counter). An object that disappears (a
//! detached or dropped partition) freezes its contribution. An object whose value went down
//! was reset (`pg_stat_reset`): its current value is counted as new.
//!
//! State of objects and parents absent from a result (a parent that left the top N for a
//! while) is kept for [`RETENTION`], so they continue where they stopped when they come
//! back; the state stays bounded by what was seen within that time.

use std::collections::HashMap;
use std::time::Duration;

use super::{QueryResult, Series};
use crate::catalog::MetricKind;

/// How long the state of an object or parent absent from the results is kept.
pub(crate) const RETENTION: Duration = Duration::from_secs(3600);

/// A value and when it was seen (Unix seconds: 24 bytes per object and metric with its key,
/// where a `SystemTime` made it 48, about 0.8 MB more at 10,000 partitions).
#[derive(Debug, Clone, Copy)]
struct Seen {
    value: f64,
    at: u32,
}

/// Whether `s` is within [`RETENTION`] of `now` (also when the clock went back).
fn fresh(now: u32, s: &Seen) -> bool {
    u64::from(now.saturating_sub(s.at)) <= RETENTION.as_secs()
}

/// An object's identity: the [`label_digest`](super::label_digest) of its label set (the
/// roll-up key last), so the state of 10,000 partitions costs 8 bytes per object instead of
/// a copy of its labels.
pub(crate) type ObjectKey = u64;

/// One value of one object of a roll-up query, before the roll-up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ObjectSample {
    /// The object ([`label_digest`](super::label_digest) of its labels).
    pub(crate) key: ObjectKey,
    /// Its parent's position in [`Objects::parents`].
    pub(crate) parent: u32,
    /// The value.
    pub(crate) value: f64,
}

/// A roll-up query's rows as the decoder hands them to the roll-up: each parent label set
/// once, and per object and metric 24 bytes (its digest, its parent, its value), where a
/// series with a copy of its labels took about 200 (11 MB at 30,000 partition indexes).
#[derive(Debug, Clone, Default)]
pub(crate) struct Objects {
    /// Parent label sets, in order of first appearance.
    pub(crate) parents: Vec<Vec<String>>,
    /// Per metric of the spec (same order), the values of its objects.
    pub(crate) samples: Vec<Vec<ObjectSample>>,
    /// Position of each parent in `parents`.
    position: HashMap<Vec<String>, u32>,
}

impl Objects {
    /// No object yet, for a query of `metrics` metrics.
    pub(crate) fn new(metrics: usize) -> Self {
        Self {
            samples: vec![Vec::new(); metrics],
            ..Self::default()
        }
    }

    /// Adds the object `key` whose labels without the roll-up key are `parent`, with its
    /// `values` by metric position.
    pub(crate) fn push(&mut self, key: ObjectKey, parent: Vec<String>, values: &[(usize, f64)]) {
        let parent = match self.position.get(&parent) {
            Some(&p) => p,
            None => {
                let p = self.parents.len() as u32;
                self.parents.push(parent.clone());
                self.position.insert(parent, p);
                p
            }
        };
        for &(m, value) in values {
            if let Some(samples) = self.samples.get_mut(m) {
                samples.push(ObjectSample { key, parent, value });
            }
        }
    }

    /// Whether every value is 0 (or there is none).
    pub(crate) fn all_zero(&self) -> bool {
        self.samples.iter().flatten().all(|s| s.value == 0.0)
    }
}

/// Per-query roll-up state, kept in the snapshot across samples and reloads.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rollup {
    /// Per metric: the last value of each object (by the digest of its label set + key).
    objects: Vec<HashMap<ObjectKey, Seen>>,
    /// Per metric: the accumulated total of each parent label set.
    totals: Vec<HashMap<Vec<String>, Seen>>,
}

impl Rollup {
    /// Replaces the objects of `result` by one series per parent label set, keeping at
    /// most `max_series`; returns how many were dropped.
    pub(crate) fn apply(&mut self, result: &mut QueryResult) -> u64 {
        let Some(objects) = result.objects.take() else {
            return 0;
        };
        let n = objects.samples.len();
        self.objects.resize_with(n, HashMap::new);
        self.totals.resize_with(n, HashMap::new);
        // Whole Unix seconds (the cast saturates: 0 before 1970, u32::MAX after 2106).
        let now = crate::clock::unix_seconds(result.at) as u32;
        // Per metric, the value of each parent (by its position in `objects.parents`).
        let mut rolled: Vec<Vec<Option<f64>>> = vec![vec![None; objects.parents.len()]; n];
        let state = self.objects.iter_mut().zip(self.totals.iter_mut());
        for (m, ((samples, out), (seen, totals))) in objects
            .samples
            .iter()
            .zip(rolled.iter_mut())
            .zip(state)
            .enumerate()
        {
            let kind = result
                .spec
                .metrics
                .get(m)
                .map_or(MetricKind::Gauge, |s| s.kind);
            for s in samples {
                let p = s.parent as usize;
                let (Some(slot), Some(parent)) = (out.get_mut(p), objects.parents.get(p)) else {
                    continue;
                };
                match kind {
                    MetricKind::Gauge => *slot.get_or_insert(0.0) += s.value,
                    MetricKind::Counter => *slot = Some(accumulate(seen, totals, s, parent, now)),
                }
            }
            seen.retain(|_, s| fresh(now, s));
            totals.retain(|_, s| fresh(now, s));
        }
        let (families, dropped) = within_budget(&objects.parents, &rolled, result.spec.max_series);
        result.families = families;
        dropped
    }
}

/// Adds an object's counter increase since its last sample (all of it after a reset, none
/// on its first sample) to its parent's total, and returns the total.
fn accumulate(
    objects: &mut HashMap<ObjectKey, Seen>,
    totals: &mut HashMap<Vec<String>, Seen>,
    sample: &ObjectSample,
    parent: &[String],
    now: u32,
) -> f64 {
    let (key, value) = (sample.key, sample.value);
    let delta = match objects.get(&key) {
        Some(prev) if value >= prev.value => value - prev.value,
        Some(_) => value,
        None => 0.0,
    };
    objects.insert(key, Seen { value, at: now });
    // Look up before inserting: the parent's labels are copied once, not per object.
    if !totals.contains_key(parent) {
        totals.insert(
            parent.to_vec(),
            Seen {
                value: 0.0,
                at: now,
            },
        );
    }
    totals.get_mut(parent).map_or(delta, |total| {
        total.value += delta;
        total.at = now;
        total.value
    })
}

/// The rolled-up series, parents in order of first appearance, at most `max` series (a
/// parent's series are kept or dropped together); and how many were dropped.
fn within_budget(
    order: &[Vec<String>],
    rolled: &[Vec<Option<f64>>],
    max: usize,
) -> (Vec<Vec<Series>>, u64) {
    let mut kept = 0usize;
    let mut dropped = 0u64;
    let mut families = vec![Vec::new(); rolled.len()];
    for (p, parent) in order.iter().enumerate() {
        let series: Vec<(usize, f64)> = rolled
            .iter()
            .enumerate()
            .filter_map(|(m, r)| r.get(p).copied().flatten().map(|v| (m, v)))
            .collect();
        if kept + series.len() > max {
            dropped += series.len() as u64;
            continue;
        }
        kept += series.len();
        for (m, value) in series {
            if let Some(f) = families.get_mut(m) {
                f.push(Series {
                    labels: parent.to_vec(),
                    value,
                });
            }
        }
    }
    (families, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Defaults};
    use crate::snapshot::label_digest;
    use std::time::SystemTime;

    fn result_at(at: SystemTime, rows: &[(&str, &str, f64, f64)]) -> QueryResult {
        let yaml = "queries:\n  - name: q\n    sql: SELECT 1\n    labels: [parent]\n    rollup_key: part\n    max_series: 4\n    metrics:\n      - {column: scans, name: pg_scans_total, type: counter, help: s}\n      - {column: bytes, name: pg_bytes, type: gauge, help: b}\n";
        let cat = Catalog::parse(yaml, "q.yaml".as_ref(), Defaults::default()).unwrap();
        let mut r = QueryResult::empty(&cat.queries[0]);
        let objects = r.objects.as_mut().unwrap();
        for (parent, part, scans, bytes) in rows {
            let key = label_digest(&[parent.to_string(), part.to_string()]);
            objects.push(key, vec![parent.to_string()], &[(0, *scans), (1, *bytes)]);
        }
        r.at = at;
        r
    }

    fn result(rows: &[(&str, &str, f64, f64)]) -> QueryResult {
        result_at(SystemTime::now(), rows)
    }

    fn values(r: &QueryResult, m: usize) -> Vec<(String, f64)> {
        r.families[m]
            .iter()
            .map(|s| (s.labels[0].clone(), s.value))
            .collect()
    }

    #[test]
    fn gauges_sum_and_counters_start_at_their_baseline_and_never_go_down() {
        let mut rollup = Rollup::default();
        let mut r = result(&[
            ("orders", "a", 10.0, 100.0),
            ("orders", "b", 5.0, 50.0),
            ("trades", "c", 1.0, 1.0),
        ]);
        assert_eq!(rollup.apply(&mut r), 0);
        // The first sample is the baseline: counters start at 0, gauges are summed.
        assert_eq!(
            values(&r, 0),
            vec![("orders".into(), 0.0), ("trades".into(), 0.0)]
        );
        assert_eq!(
            values(&r, 1),
            vec![("orders".into(), 150.0), ("trades".into(), 1.0)]
        );
        // a is detached (gone), b scanned twice more; d is new with 3 scans (baseline).
        let mut r = result(&[
            ("orders", "b", 7.0, 50.0),
            ("orders", "d", 3.0, 10.0),
            ("trades", "c", 1.0, 1.0),
        ]);
        rollup.apply(&mut r);
        assert_eq!(
            values(&r, 0),
            vec![("orders".into(), 2.0), ("trades".into(), 0.0)]
        );
        assert_eq!(
            values(&r, 1),
            vec![("orders".into(), 60.0), ("trades".into(), 1.0)]
        );
        // d scanned once; a statistics reset of b counts its new value as new scans.
        let mut r = result(&[("orders", "b", 2.0, 50.0), ("orders", "d", 4.0, 10.0)]);
        rollup.apply(&mut r);
        assert_eq!(values(&r, 0), vec![("orders".into(), 5.0)]);
    }

    #[test]
    fn a_parent_absent_for_a_while_continues_where_it_stopped() {
        let mut rollup = Rollup::default();
        let t0 = SystemTime::now();
        rollup.apply(&mut result_at(t0, &[("p", "a", 10.0, 0.0)]));
        let mut r = result_at(t0 + Duration::from_secs(60), &[("p", "a", 12.0, 0.0)]);
        rollup.apply(&mut r);
        assert_eq!(values(&r, 0), vec![("p".into(), 2.0)]);
        // p leaves the top N for ten minutes, then comes back after 5 more scans.
        rollup.apply(&mut result_at(
            t0 + Duration::from_secs(120),
            &[("q", "b", 1.0, 0.0)],
        ));
        let mut r = result_at(t0 + Duration::from_secs(720), &[("p", "a", 17.0, 0.0)]);
        rollup.apply(&mut r);
        assert_eq!(values(&r, 0), vec![("p".into(), 7.0)]);
        // After the retention, the state is forgotten: a new baseline.
        let later = t0 + Duration::from_secs(720) + RETENTION + Duration::from_secs(60);
        rollup.apply(&mut result_at(later, &[("q", "b", 2.0, 0.0)]));
        let mut r = result_at(later + Duration::from_secs(60), &[("p", "a", 30.0, 0.0)]);
        rollup.apply(&mut r);
        assert_eq!(values(&r, 0), vec![("p".into(), 0.0)]);
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
