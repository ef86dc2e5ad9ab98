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
pub use super::PlanLabel;
use super::check::{self, CheckError, FailureKind, Mode, Outcome};
use super::slo::{KeyQuery, KeyQueryIds, SloMetrics};
use crate::db::lease::{Budget, Lease};

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
    /// `pg_plan_check_applicable`.
    pub applicable: Family<PlanLabel, Gauge>,
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
            "pg_plan_check_applicable",
            "Whether a key query applies to the database (1) or not (0: a trade table it reads is missing or of another shape, see trade_tables; it is not checked)",
            m.applicable.clone(),
        );
        r.register(
            "pgpulse_plan_check_last_success_timestamp_seconds",
            "Unix time of the last plan check of a key query that ran to its end",
            m.last_success.clone(),
        );
        m
    }

    /// Sets the gauges of one judged plan; removes those that do not apply to it.
    pub fn publish(&self, o: &Outcome) {
        let l = PlanLabel::of(&o.spec.name);
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
        let l = PlanLabel::of(query);
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
    slo: SloMetrics,
    /// The query identifiers of the key queries with a target, shared with their readers.
    ids: KeyQueryIds,
    /// What outlives a round; one round at a time holds it.
    state: Mutex<GuardState>,
}

/// What the guard remembers between rounds.
#[derive(Debug, Default)]
struct GuardState {
    /// When each query last succeeded (for expiry).
    last_good: HashMap<String, Instant>,
    /// Whether each query applied at its last round (an INFO line when it changes).
    applicable: HashMap<String, bool>,
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
    /// Queries that do not apply to the database (a trade table they read is missing or of
    /// another shape): not checked, not counted as errors.
    pub not_applicable: Vec<String>,
    /// No connection could be had at all.
    pub no_connection: bool,
}

impl PlanGuard {
    /// Registers the metrics in `registry`; nothing runs until [`PlanGuard::start`]. The
    /// identifiers of the key queries are recorded in `ids`.
    pub fn new(
        registry: &mut Registry,
        budget: Budget,
        config: GuardConfig,
        lock_timeout: Duration,
        ids: KeyQueryIds,
    ) -> Arc<Self> {
        let metrics = PlanMetrics::register(registry);
        let slo = SloMetrics::register(registry);
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
            slo,
            ids,
            state: Mutex::new(GuardState::default()),
        })
    }

    /// The metric handles (the trade-table tests read them).
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
                crate::clock::backoff(Duration::from_secs(30), down_rounds, self.config.interval)
            } else {
                down_rounds = 0;
                self.config.interval
            };
        }
    }

    /// One round: which key queries apply (their trade tables exist with their configured
    /// shape), then every applicable one once, in file order, with plain EXPLAIN.
    pub async fn check_once(&self) -> Round {
        let mut state = self.state.lock().await;
        let mut round = Round::default();
        let queries = &self.config.plans.queries;
        let mut conn = self.lease(queries.first(), &mut round, 0).await;
        let applies = match conn.as_mut() {
            Some(c) => self.applicability(c, &mut state.applicable).await,
            None => None,
        };
        if applies.is_none()
            && let Some(mut c) = conn.take()
        {
            c.reset_with(check::DEALLOCATE);
        }
        for (n, spec) in queries.iter().enumerate() {
            if round.no_connection {
                break;
            }
            if applies.as_ref().and_then(|a| a.get(n)) == Some(&false) {
                self.forget(&spec.name);
                state.last_good.remove(&spec.name);
                round.not_applicable.push(spec.name.clone());
                continue;
            }
            let Some(mut client) = (match conn.take() {
                Some(c) => Some(c),
                None => self.lease(Some(spec), &mut round, n).await,
            }) else {
                break;
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
                    self.learn(&outcome);
                    state.last_good.insert(spec.name.clone(), Instant::now());
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
        self.expire(&mut state.last_good);
        round
    }

    /// A connection for the check of `spec`; without one, every query from the `n`-th on
    /// fails as `connection` (the rest of the round would wait in vain).
    async fn lease(
        &self,
        spec: Option<&Arc<super::PlanSpec>>,
        round: &mut Round,
        n: usize,
    ) -> Option<Lease> {
        let timeout = spec.map_or(super::model::DEFAULT_TIMEOUT, |s| s.timeout);
        match self.budget.lease(None, check::guard(timeout)).await {
            Ok(c) => Some(c),
            Err(e) => {
                for rest in self.config.plans.queries.iter().skip(n) {
                    let kind = FailureKind::Connection;
                    let (query, message) = (rest.name.clone(), e.to_string());
                    self.fail(
                        round,
                        CheckError {
                            query,
                            kind,
                            message,
                        },
                    );
                }
                // Only when not one connection could be had this round.
                round.no_connection = n == 0;
                None
            }
        }
    }

    /// Whether each key query applies; sets `pg_plan_check_applicable` and logs one INFO line
    /// for the queries whose applicability changed (all of them at the first round). `None`
    /// when the catalog could not be read: the round then checks every query.
    async fn applicability(
        &self,
        lease: &mut Lease,
        known: &mut HashMap<String, bool>,
    ) -> Option<Vec<bool>> {
        let queries = &self.config.plans.queries;
        let client = lease.client()?;
        let why = match check::applicability(client, queries, self.lock_timeout).await {
            Ok(w) => w,
            Err(e) => {
                let error = crate::db::outcome::describe(&e);
                tracing::warn!(%error, "cannot read which key queries apply");
                return None;
            }
        };
        let (mut now_not, mut now_yes) = (Vec::new(), Vec::new());
        let first = known.is_empty();
        for (spec, why) in queries.iter().zip(&why) {
            let applies = why.is_none();
            let l = PlanLabel::of(&spec.name);
            self.metrics
                .applicable
                .get_or_create(&l)
                .set(i64::from(applies));
            if known.insert(spec.name.clone(), applies) != Some(applies) {
                match why {
                    Some(w) => now_not.push(format!("{} ({w})", spec.name)),
                    None => now_yes.push(spec.name.clone()),
                }
            }
        }
        if !now_not.is_empty() {
            tracing::info!(queries = %now_not.join(", "), "key queries not applicable: a trade table they read is missing or of another shape (trade_tables)");
        }
        if !now_yes.is_empty() && !first {
            tracing::info!(queries = %now_yes.join(", "), "key queries applicable");
        }
        Some(why.iter().map(Option::is_none).collect())
    }

    /// Expires the last good values of queries that kept failing for three intervals.
    fn expire(&self, last_good: &mut HashMap<String, Instant>) {
        let expire = self.config.interval * 3;
        last_good.retain(|name, at| {
            let keep = at.elapsed() < expire;
            if !keep {
                self.forget(name);
            }
            keep
        });
    }

    /// Records the query identifier of a key query with a target (its SLO's series).
    fn learn(&self, o: &Outcome) {
        let (Some(target), Some(query_id)) = (o.spec.target, o.tree.query_id) else {
            return;
        };
        let key = KeyQuery {
            name: o.spec.name.clone(),
            query_id,
            target,
            objective: o.spec.objective,
        };
        let replaced = self.ids.set(key.clone());
        if let Some(old) = replaced {
            tracing::info!(query = %key.name, old, new = query_id, "key query identifier changed (its tables or types changed)");
        }
        self.slo.publish(&key, replaced);
    }

    /// Removes every series of a key query (its last good result expired, or it no longer
    /// applies) and its identifier.
    fn forget(&self, name: &str) {
        self.metrics.forget(name);
        if let Some(key) = self.ids.remove(name) {
            self.slo.forget(&key);
        }
    }

    fn fail(&self, round: &mut Round, e: CheckError) {
        tracing::warn!(query = %e.query, kind = e.kind.as_str(), error = %e.message, "key query plan check could not run");
        self.metrics.count_error(&e.query, e.kind);
        round.errors.push(e.query);
    }
}
