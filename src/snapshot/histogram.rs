//! The statement latency histogram: pg_stat_statements keeps only cumulative calls and
//! execution time per statement, so between two samples each statement's added calls are
//! observed at the mean latency of those calls (added time / added calls), weighted by the
//! number of calls. The result is a cumulative counter histogram, correct under `rate()`.
//!
//! Resets: a statement whose calls went down was reset (pg_stat_statements_reset, or evicted
//! and re-admitted): its current values are taken as what happened since. A statement not
//! seen before is new: all its calls are observed. The first sample only sets the baseline.
//! Limits (see docs/statement-latency.md): calls of one statement within one interval are
//! observed at their mean, so a mixture of fast and slow executions of the same statement
//! is smoothed; a reset followed, within one interval, by more calls than before is taken as
//! growth.

use std::collections::HashMap;

/// One statement's cumulative counters from one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementSample {
    /// Identity: queryid, user and database.
    pub key: String,
    /// Cumulative calls.
    pub calls: f64,
    /// Cumulative execution time in milliseconds.
    pub total_ms: f64,
}

/// The exposed state of a histogram: per-bucket counts (not cumulative), +Inf last.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, count in that bucket); the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of observed seconds.
    pub sum: f64,
    /// Number of observed calls.
    pub count: u64,
}

/// Accumulates observations across samples.
#[derive(Debug, Clone)]
pub(crate) struct LatencyHistogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    prev: Option<HashMap<String, (f64, f64)>>,
}

impl LatencyHistogram {
    /// A histogram with `bounds` (seconds, increasing); +Inf is added.
    pub(crate) fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
            prev: None,
        }
    }

    /// Observes `calls` calls of `seconds` mean latency each.
    pub(crate) fn observe(&mut self, seconds: f64, calls: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += calls;
        }
        self.count += calls;
        self.sum += seconds * calls as f64;
    }

    /// Takes one sample of every statement's cumulative counters.
    pub(crate) fn update(&mut self, samples: &[StatementSample]) {
        let current: HashMap<String, (f64, f64)> = samples
            .iter()
            .map(|s| (s.key.clone(), (s.calls, s.total_ms)))
            .collect();
        if let Some(prev) = &self.prev {
            let mut observations = Vec::new();
            for (key, &(calls, total)) in &current {
                let (dcalls, dtime) = match prev.get(key) {
                    Some(&(pc, pt)) if calls >= pc && total >= pt => (calls - pc, total - pt),
                    // Reset or evicted and re-admitted: everything since is new.
                    Some(_) => (calls, total),
                    // New statement since the last sample.
                    None => (calls, total),
                };
                if dcalls >= 1.0 {
                    observations.push((dtime / dcalls / 1000.0, dcalls as u64));
                }
            }
            for (seconds, calls) in observations {
                self.observe(seconds, calls);
            }
        }
        self.prev = Some(current);
    }

    /// The current state.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .zip(self.counts.iter().copied())
            .collect();
        let overflow = self.counts.last().copied().unwrap_or(0);
        buckets.push((f64::INFINITY, overflow));
        HistogramSnapshot {
            buckets,
            sum: self.sum,
            count: self.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(key: &str, calls: f64, total_ms: f64) -> StatementSample {
        StatementSample {
            key: key.into(),
            calls,
            total_ms,
        }
    }

    #[test]
    fn the_first_sample_only_sets_the_baseline() {
        let mut h = LatencyHistogram::new(&[0.01, 0.1, 1.0]);
        h.update(&[s("a", 100.0, 5000.0)]);
        assert_eq!(h.snapshot().count, 0);
    }

    #[test]
    fn added_calls_are_observed_at_their_mean_weighted_by_calls() {
        let mut h = LatencyHistogram::new(&[0.01, 0.1, 1.0]);
        h.update(&[s("a", 10.0, 10.0), s("b", 1.0, 500.0)]);
        // a: 5 calls taking 25 ms → 5 ms each; b: 2 calls taking 400 ms → 200 ms each.
        h.update(&[s("a", 15.0, 35.0), s("b", 3.0, 900.0)]);
        let snap = h.snapshot();
        assert_eq!(
            snap.buckets,
            vec![(0.01, 5), (0.1, 0), (1.0, 2), (f64::INFINITY, 0)]
        );
        assert_eq!(snap.count, 7);
        assert!((snap.sum - 0.425).abs() < 1e-9);
    }

    #[test]
    fn resets_and_new_statements_count_what_happened_since() {
        let mut h = LatencyHistogram::new(&[0.01, 0.1]);
        h.update(&[s("a", 100.0, 100.0)]);
        h.update(&[s("a", 4.0, 200.0), s("c", 2.0, 10.0)]);
        let snap = h.snapshot();
        // a was reset: 4 calls at 50 ms; c is new: 2 calls at 5 ms.
        assert_eq!(snap.buckets, vec![(0.01, 2), (0.1, 4), (f64::INFINITY, 0)]);
        // Evicted statements simply stop contributing.
        h.update(&[s("c", 2.0, 10.0)]);
        assert_eq!(h.snapshot().count, 6);
    }
}
