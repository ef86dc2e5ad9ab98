//! The key queries' SLO misses from the jsonlog (issue 28, item 4): per key query of
//! plans.yaml with a target, the executions at or over that target, counted exactly by the
//! server's `monitoring.log_tally` from the `query_id` of the duration lines, and the duration
//! from which they are counted (the target, or `log_min_duration_statement` when that is
//! higher: the server logs nothing shorter).
//!
//! A key query's counter appears at 0 at the first poll that knows its identifier; misses a
//! poll finds for a counter it has just created are added at the next poll, so `increase()`
//! sees them (as the slow-statement counter, see [`super::metrics`]). The labels are the key
//! queries' names: bounded by plans.yaml.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::plans::PlanLabel;
use crate::plans::slo::KeyQuery;

type FloatGauge = Gauge<f64, AtomicU64>;

/// The handles and what the counters hold back.
#[derive(Debug, Default)]
pub struct KeyMisses {
    misses: Family<PlanLabel, Counter>,
    from: Family<PlanLabel, FloatGauge>,
    state: Mutex<Held>,
}

/// The key queries whose counter exists, and the misses held for the next poll.
#[derive(Debug, Default)]
struct Held {
    known: HashSet<String>,
    held: HashMap<String, u64>,
}

impl KeyMisses {
    /// Creates the handles and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "pg_key_query_slo_misses",
            "Executions of a key query that took its latency target or longer (pg_key_query_slo_miss_threshold_seconds), counted exactly from the jsonlog by query_id",
            m.misses.clone(),
        );
        registry.register(
            "pg_key_query_slo_miss_threshold_seconds",
            "The duration from which a key query's execution counts as a miss: its target, or log_min_duration_statement when that is higher (the misses between the two are not seen)",
            m.from.clone(),
        );
        m
    }

    /// Adds one poll's `misses` of `keys` (same order); `threshold_s` is the log threshold.
    pub fn count(&self, keys: &[KeyQuery], misses: &[u64], threshold_s: f64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (name, n) in std::mem::take(&mut st.held) {
            self.misses.get_or_create(&PlanLabel::of(&name)).inc_by(n);
        }
        for (key, n) in keys.iter().zip(misses) {
            let l = PlanLabel::of(&key.name);
            let from = key.target.as_secs_f64().max(threshold_s);
            self.from.get_or_create(&l).set(from);
            if st.known.contains(&key.name) {
                self.misses.get_or_create(&l).inc_by(*n);
            } else {
                let _ = self.misses.get_or_create(&l);
                st.known.insert(key.name.clone());
                st.held.insert(key.name.clone(), *n);
            }
        }
    }

    /// The reader is off, or its helper counts no key query: the thresholds no longer hold
    /// (the counters stay: they are totals).
    pub fn off(&self) {
        self.from.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use std::time::Duration;

    fn key(name: &str, ms: u64) -> KeyQuery {
        KeyQuery {
            name: name.into(),
            query_id: 1,
            target: Duration::from_millis(ms),
            objective: 0.99,
        }
    }

    fn render(r: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, r).expect("encode");
        out
    }

    #[test]
    fn a_new_counter_starts_at_zero_and_gets_its_first_misses_one_poll_later() {
        let mut r = Registry::default();
        let m = KeyMisses::register(&mut r);
        let keys = [key("a", 50), key("b", 5)];
        m.count(&keys, &[3, 0], 0.010);
        let first = render(&r);
        assert!(
            first.contains("pg_key_query_slo_misses_total{query=\"a\"} 0"),
            "{first}"
        );
        assert!(first.contains("pg_key_query_slo_miss_threshold_seconds{query=\"a\"} 0.05"));
        assert!(first.contains("pg_key_query_slo_miss_threshold_seconds{query=\"b\"} 0.01"));
        m.count(&keys, &[2, 1], 0.010);
        let second = render(&r);
        assert!(
            second.contains("pg_key_query_slo_misses_total{query=\"a\"} 5"),
            "{second}"
        );
        assert!(second.contains("pg_key_query_slo_misses_total{query=\"b\"} 1"));
        m.off();
        assert!(!render(&r).contains("miss_threshold_seconds{"));
    }
}
