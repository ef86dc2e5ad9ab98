//! [`PlanGuard`]: the key-query check of `serve`. It registers the `pg_plan_*` gauges and its
//! own `pgpulse_plan_check_*` metrics in the exporter's registry and runs one loop task that
//! explains every key query on a slow interval (default 10 minutes).
//!
//! Only plain EXPLAIN (nothing is executed), one query at a time on one pooled connection, in
//! a read-only transaction with `SET LOCAL statement_timeout` and `lock_timeout`. A check
//! that fails keeps its last values for three intervals, then its series vanish (complete or
//! absent); failures are counted by kind. A connection whose check failed settles (see
//! [`crate::db::lease`]): it is rolled back and its prepared statement deallocated once the
//! server answered, then it goes back to the pool. While no connection can be had,
//! the next round comes sooner than a whole interval, backing off from 30 seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::GuardConfig;
use super::check::{self, CheckError, FailureKind, Mode, Outcome};
use crate::db::lease::{Budget, Lease};

/// Labels naming a key query.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabel {
    /// The key query's name.
    pub query: String,
}

/// Labels naming a key query and a failure kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanErrorLabels {
    /// The key query's name.
    pub query: String,
    /// `timeout`, `connection`, `sql` or `decode`.
    pub kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The plan guard's metric handles.
#[derive(Debug, Default)]
pub struct PlanMetrics {
    /// `pg_plan_expected_index_used`.
    pub index_used: Family<PlanLabel, Gauge>,
    /// `pg_plan_partitions_scanned`.
    pub partitions_scanned: Family<PlanLabel, Gauge>,
    /// `pg_plan_partitions`.
    pub partitions_total: Family<PlanLabel, Gauge>,
    /// `pg_plan_partitions_expected_max`.
    pub partitions_expected: Family<PlanLabel, Gauge>,
    /// `pg_plan_estimated_cost`.
    pub cost: Family<PlanLabel, FloatGauge>,
    /// `pgpulse_plan_check_errors_total`.
    pub errors: Family<PlanErrorLabels, Counter>,
    /// `pgpulse_plan_check_last_success_timestamp_seconds`.
    pub last_success: Family<PlanLabel, FloatGauge>,
}

impl PlanMetrics {
    /// Creates the handles and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry;
        r.register(
            "pg_plan_expected_index_used",
            "Whether the generic plan of a key query (plans.yaml) uses every index it expects (1) or not (0)",
            m.index_used.clone(),
        );
        r.register(
            "pg_plan_partitions_scanned",
            "Leaf partitions the generic plan of a key query scans after pruning",
            m.partitions_scanned.clone(),
        );
        r.register(
            "pg_plan_partitions",
            "Leaf partitions of the partitioned tables a key query reads",
            m.partitions_total.clone(),
        );
        r.register(
            "pg_plan_partitions_expected_max",
            "The most leaf partitions a key query may scan (max_partitions in plans.yaml)",
            m.partitions_expected.clone(),
        );
        r.register(
            "pg_plan_estimated_cost",
            "Total estimated cost of a key query's generic plan, in planner cost units",
            m.cost.clone(),
        );
        r.register(
            "pgpulse_plan_check_errors",
            "Key-query plan checks that could not run, by kind (timeout, connection, sql, decode)",
            m.errors.clone(),
        );
        r.register(
            "pgpulse_plan_check_last_success_timestamp_seconds",
            "Unix time of the last plan check of a key query that ran to its end",
            m.last_success.clone(),
        );
        m
    }

    fn label(query: &str) -> PlanLabel {
        PlanLabel {
            query: query.to_owned(),
        }
    }

    /// Sets the gauges of one judged plan; removes those that do not apply to it.
    pub fn publish(&self, o: &Outcome) {
        let l = Self::label(&o.spec.name);
        if o.spec.indexes.is_empty() {
            self.index_used.remove(&l);
        } else {
            self.index_used
                .get_or_create(&l)
                .set(i64::from(o.index_ok()));
        }
        match &o.partitions {
            Some(p) => {
                self.partitions_scanned
                    .get_or_create(&l)
                    .set(p.scanned as i64);
                self.partitions_total.get_or_create(&l).set(p.total as i64);
            }
            None => {
                self.partitions_scanned.remove(&l);
                self.partitions_total.remove(&l);
            }
        }
        match o.spec.max_partitions {
            Some(m) => {
                self.partitions_expected.get_or_create(&l).set(i64::from(m));
            }
            None => {
                self.partitions_expected.remove(&l);
            }
        }
        self.cost.get_or_create(&l).set(o.tree.total_cost);
        self.last_success.get_or_create(&l).set(unix_now());
    }

    /// Removes every `pg_plan_*` series of a query (its last good result expired).
    pub fn forget(&self, query: &str) {
        let l = Self::label(query);
        self.index_used.remove(&l);
        self.partitions_scanned.remove(&l);
        self.partitions_total.remove(&l);
        self.partitions_expected.remove(&l);
        self.cost.remove(&l);
    }

    fn count_error(&self, query: &str, kind: FailureKind) {
        self.errors
            .get_or_create(&PlanErrorLabels {
                query: query.to_owned(),
                kind: kind.as_str().to_owned(),
            })
            .inc();
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The running key-query check of `serve`.
#[derive(Debug)]
pub struct PlanGuard {
    budget: Budget,
    config: GuardConfig,
    lock_timeout: Duration,
    metrics: PlanMetrics,
    /// When each query last succeeded (for expiry); one round at a time holds it.
    last_good: Mutex<HashMap<String, Instant>>,
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Queries whose plan passed every check.
    pub passed: Vec<String>,
    /// Queries whose plan failed a check.
    pub failed: Vec<String>,
    /// Queries whose check could not run.
    pub errors: Vec<String>,
    /// No connection could be had at all.
    pub no_connection: bool,
}

impl PlanGuard {
    /// Registers the metrics in `registry`; nothing runs until [`PlanGuard::start`].
    pub fn new(
        registry: &mut Registry,
        budget: Budget,
        config: GuardConfig,
        lock_timeout: Duration,
    ) -> Arc<Self> {
        let metrics = PlanMetrics::register(registry);
        for q in &config.plans.queries {
            // Every query's error counter exists from the start, so increase() sees the first.
            for kind in [
                FailureKind::Timeout,
                FailureKind::Connection,
                FailureKind::Sql,
                FailureKind::Decode,
            ] {
                let _ = metrics.errors.get_or_create(&PlanErrorLabels {
                    query: q.name.clone(),
                    kind: kind.as_str().to_owned(),
                });
            }
        }
        Arc::new(Self {
            budget,
            config,
            lock_timeout,
            metrics,
            last_good: Mutex::new(HashMap::new()),
        })
    }

    /// The metric handles (tests read them).
    pub fn metrics(&self) -> &PlanMetrics {
        &self.metrics
    }

    /// Starts the loop on `tracker` until `stop`; `changed` wakes the renderer after a round.
    pub fn start(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        stop: CancellationToken,
        changed: Arc<Notify>,
    ) {
        let me = self.clone();
        tracker.spawn(async move { me.run(stop, changed).await });
    }

    async fn run(self: Arc<Self>, stop: CancellationToken, changed: Arc<Notify>) {
        // A short random delay so the first round does not coincide with the sampler's.
        let mut pause = Duration::from_millis(500 + rand::random::<u64>() % 1500);
        let mut down_rounds: u32 = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            let round = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.check_once() => r,
            };
            changed.notify_one();
            // Without a connection, retry sooner, backing off: 30s, 1m, 2m, ... up to the interval.
            pause = if round.no_connection {
                down_rounds = down_rounds.saturating_add(1);
                let backoff =
                    Duration::from_secs(30) * 2u32.saturating_pow(down_rounds.min(10) - 1);
                self.config.interval.min(backoff)
            } else {
                down_rounds = 0;
                self.config.interval
            };
        }
    }

    /// One round: every key query once, in file order, with plain EXPLAIN.
    pub async fn check_once(&self) -> Round {
        let mut last_good = self.last_good.lock().await;
        let mut round = Round::default();
        let mut conn: Option<Lease> = None;
        let mut connected_once = false;
        let queries = &self.config.plans.queries;
        for (n, spec) in queries.iter().enumerate() {
            let mut client = match conn.take() {
                Some(c) => c,
                None => match self.budget.lease(None, check::guard(spec.timeout)).await {
                    Ok(c) => {
                        connected_once = true;
                        c
                    }
                    Err(e) => {
                        // No connection now: the rest of the round would wait in vain.
                        for rest in queries.iter().skip(n) {
                            self.fail(
                                &mut round,
                                CheckError {
                                    query: rest.name.clone(),
                                    kind: FailureKind::Connection,
                                    message: e.to_string(),
                                },
                            );
                        }
                        break;
                    }
                },
            };
            client.answer_within(check::guard(spec.timeout));
            let outcome = match client.client() {
                Some(c) => check::run(c, spec, Mode::Plain, self.lock_timeout).await,
                None => continue,
            };
            match outcome {
                Ok(outcome) => {
                    conn = Some(client);
                    self.metrics.publish(&outcome);
                    last_good.insert(spec.name.clone(), Instant::now());
                    if outcome.passed() {
                        round.passed.push(spec.name.clone());
                    } else {
                        tracing::warn!(query = %spec.name, index_ok = outcome.index_ok(), partitions_ok = outcome.partitions_ok(), "key query plan check failed");
                        round.failed.push(spec.name.clone());
                    }
                }
                Err(e) => {
                    // An aborted transaction or the prepared statement may be left: the
                    // connection settles (rolled back, deallocated) before its slot is free.
                    client.reset_with(check::DEALLOCATE);
                    drop(client);
                    self.fail(&mut round, e);
                }
            }
        }
        if let Some(idle) = conn {
            idle.release();
        }
        round.no_connection = !connected_once;
        // Expire the last good values of queries that kept failing for three intervals.
        let expire = self.config.interval * 3;
        last_good.retain(|name, at| {
            let keep = at.elapsed() < expire;
            if !keep {
                self.metrics.forget(name);
            }
            keep
        });
        round
    }

    fn fail(&self, round: &mut Round, e: CheckError) {
        tracing::warn!(query = %e.query, kind = e.kind.as_str(), error = %e.message, "key query plan check could not run");
        self.metrics.count_error(&e.query, e.kind);
        round.errors.push(e.query);
    }
}
