//! Key-query SLOs (issue 28, item 4): which `query_id` each key query with a latency target
//! has, and the gauges that describe its SLO.
//!
//! The plan guard reads the `Query Identifier` of every key query from its VERBOSE plan (the
//! server computes it; the same number is pg_stat_statements' `queryid` and the jsonlog's
//! `query_id`) and records it in [`KeyQueryIds`], the one home of that mapping. The sampler
//! binds it to the `key_queries` query (calls and execution time from pg_stat_statements,
//! `binds: key_queries`); the slow-statement log reader passes it to `monitoring.log_tally`,
//! which counts each key query's executions at or over its target. A query appears in the
//! mapping once its plan was read and leaves it when its check expires or stops applying.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::PlanLabel;

/// A key query with a latency SLO, as the server identifies it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyQuery {
    /// The key query's name (the `query` label).
    pub name: String,
    /// The server's query identifier of its statement.
    pub query_id: i64,
    /// Executions that take this long or longer miss the SLO.
    pub target: Duration,
    /// The share of executions that must meet the target.
    pub objective: f64,
}

/// The key queries whose identifier is known, by name; cloned handles share one map.
#[derive(Debug, Clone, Default)]
pub struct KeyQueryIds(Arc<RwLock<BTreeMap<String, KeyQuery>>>);

impl KeyQueryIds {
    /// Records `key`; returns the identifier it replaced, if another.
    pub fn set(&self, key: KeyQuery) -> Option<i64> {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let old = map.insert(key.name.clone(), key.clone());
        old.map(|o| o.query_id).filter(|id| *id != key.query_id)
    }

    /// Forgets `name`; returns what was known of it.
    pub fn remove(&self, name: &str) -> Option<KeyQuery> {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.remove(name)
    }

    /// The known key queries, by name.
    pub fn current(&self) -> Vec<KeyQuery> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.values().cloned().collect()
    }
}

/// Labels of `pg_key_query_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyQueryInfo {
    /// The key query's name.
    pub query: String,
    /// Its query identifier (one per key query: bounded).
    pub query_id: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The SLO gauges of the key queries whose identifier is known.
#[derive(Debug, Default)]
pub struct SloMetrics {
    info: Family<KeyQueryInfo, Gauge>,
    target: Family<PlanLabel, FloatGauge>,
    objective: Family<PlanLabel, FloatGauge>,
}

impl SloMetrics {
    /// Creates the handles and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "pg_key_query_info",
            "A key query of plans.yaml with a latency target and the query_id the server computes for it (pg_stat_statements queryid, jsonlog query_id); always 1",
            m.info.clone(),
        );
        registry.register(
            "pg_key_query_slo_target_seconds",
            "The latency target of a key query: executions this long or longer miss its SLO",
            m.target.clone(),
        );
        registry.register(
            "pg_key_query_slo_objective_ratio",
            "The share of a key query's executions that must meet its latency target (plans.yaml objective, default 0.99)",
            m.objective.clone(),
        );
        m
    }

    /// Publishes `key`, replacing the info series of a previous identifier.
    pub fn publish(&self, key: &KeyQuery, replaced: Option<i64>) {
        if let Some(old) = replaced {
            self.info.remove(&info(&key.name, old));
        }
        self.info
            .get_or_create(&info(&key.name, key.query_id))
            .set(1);
        let l = PlanLabel::of(&key.name);
        self.target.get_or_create(&l).set(key.target.as_secs_f64());
        self.objective.get_or_create(&l).set(key.objective);
    }

    /// Removes the series of `key`.
    pub fn forget(&self, key: &KeyQuery) {
        self.info.remove(&info(&key.name, key.query_id));
        let l = PlanLabel::of(&key.name);
        self.target.remove(&l);
        self.objective.remove(&l);
    }
}

fn info(query: &str, query_id: i64) -> KeyQueryInfo {
    KeyQueryInfo {
        query: query.to_owned(),
        query_id: query_id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: i64) -> KeyQuery {
        KeyQuery {
            name: "orders_by_user".into(),
            query_id: id,
            target: Duration::from_millis(50),
            objective: 0.99,
        }
    }

    #[test]
    fn a_new_identifier_reports_the_one_it_replaces() {
        let ids = KeyQueryIds::default();
        assert_eq!(ids.set(key(7)), None);
        assert_eq!(
            ids.set(key(7)),
            None,
            "the same identifier replaces nothing"
        );
        assert_eq!(ids.set(key(-9)), Some(7));
        assert_eq!(ids.current(), vec![key(-9)]);
        assert_eq!(ids.remove("orders_by_user"), Some(key(-9)));
        assert!(ids.current().is_empty());
    }
}
