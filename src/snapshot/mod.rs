//! The snapshot: the latest complete result of every query, each query's status, whether the
//! database answers, and the state that must outlive a reload (counter roll-ups, histogram
//! accumulators).
//!
//! The sampler writes it, the exposition and the HTTP layer read it; neither of those imports
//! the other, this module is their whole contract. Scrapes never read it (they copy bytes the
//! exposition pre-rendered from it).
//!
//! Concurrency: one `std::sync::Mutex` around plain maps, held for a few map operations and
//! never across an `.await`. Counter state is keyed by query name and kept as long as the
//! query's SQL and exposed shape stay the same, so a reload that changes only an interval or
//! a timeout never makes a counter go back.

pub(crate) mod histogram;
pub(crate) mod load;
pub(crate) mod monotonic;
pub(crate) mod rollup;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use crate::catalog::QuerySpec;
use histogram::{HistogramSnapshot, LatencyHistogram, StatementSample};
use load::LoadAccumulator;
use rollup::Rollup;

/// One exposed series: label values (in the query's label order) and a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Label values, in the order of [`QuerySpec::labels`] (plus the roll-up key, last,
    /// until the roll-up).
    pub labels: Vec<String>,
    /// The sample value.
    pub value: f64,
}

/// A 64-bit SipHash digest of a label set: how the decoder spots a repeated one and how a
/// roll-up knows its objects. The hash keys are drawn once per process, so a tenant cannot
/// name two of its objects to share a digest; two of `n` label sets share one with a
/// probability of about n²/2⁶⁵ (4·10⁻¹¹ at 40,000).
pub(crate) fn label_digest(labels: &[String]) -> u64 {
    static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    std::hash::BuildHasher::hash_one(KEYS.get_or_init(std::hash::RandomState::new), labels)
}

/// One row kept as column name → text value (`None` for NULL).
pub type Row = Vec<(String, Option<String>)>;

/// The complete result of one successful run of a query; immutable once published.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// The query that produced it.
    pub spec: Arc<QuerySpec>,
    /// Per metric of the spec (same order), its series.
    pub families: Vec<Vec<Series>>,
    /// A roll-up query's objects, from the decoder until the roll-up turns them into
    /// `families` at publication.
    pub(crate) objects: Option<rollup::Objects>,
    /// The latency histogram the query feeds, if it declares one.
    pub histogram: Option<HistogramSnapshot>,
    /// Every row as column → text (NULL as `None`), when the spec asks for it.
    pub rows: Option<Vec<Row>>,
    /// When it was produced.
    pub at: SystemTime,
    /// When the run that produced it started: what the server saw since is compared with
    /// this (see [`crate::sampler::idle`]).
    pub started: Instant,
    /// Whether the run's own rows found nothing (every value 0 or no series, no row kept),
    /// noted before any accumulation or roll-up ([`QueryResult::note_found`]).
    pub found_nothing: bool,
}

impl QueryResult {
    /// An empty result of `spec`, produced now.
    pub fn empty(spec: &Arc<QuerySpec>) -> Self {
        Self {
            spec: spec.clone(),
            families: vec![Vec::new(); spec.metrics.len()],
            objects: spec
                .rollup_key
                .as_ref()
                .map(|_| rollup::Objects::new(spec.metrics.len())),
            histogram: None,
            rows: spec.publish_rows.then(Vec::new),
            at: SystemTime::now(),
            started: Instant::now(),
            found_nothing: true,
        }
    }

    /// Notes whether the run's own rows found nothing: every value is 0 (or there is no
    /// series), and no row is kept.
    pub fn note_found(&mut self) {
        self.found_nothing = self.families.iter().flatten().all(|s| s.value == 0.0)
            && self.objects.as_ref().is_none_or(rollup::Objects::all_zero)
            && self.rows.as_ref().is_none_or(Vec::is_empty);
    }

    /// Total number of series across its metrics.
    pub fn series_count(&self) -> usize {
        self.families.iter().map(Vec::len).sum::<usize>() + usize::from(self.histogram.is_some())
    }
}

/// What the landing page and readiness know of a query.
#[derive(Debug, Clone, Default)]
pub struct QueryStatus {
    /// When it last succeeded.
    pub last_success: Option<SystemTime>,
    /// The last error and when it happened.
    pub last_error: Option<(SystemTime, String)>,
    /// Whether it ran at least once (success or failure) with the database answering, since
    /// start or reload.
    pub attempted: bool,
    /// Whether gating (version, extension, preload) lets it run.
    pub enabled: bool,
    /// Why it is disabled, when it is.
    pub disabled_reason: Option<String>,
}

/// What publishing a result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Series now exposed by the query.
    pub series: usize,
    /// Series dropped by the roll-up's budget.
    pub dropped: u64,
    /// Counter samples dropped, by reason ([`monotonic::Dropped::ALL`]).
    pub counter_drops: monotonic::DropCounts,
}

/// State of one query that outlives its runs and reloads.
#[derive(Debug)]
struct Carried {
    spec: Arc<QuerySpec>,
    rollup: Option<Rollup>,
    load: Option<LoadAccumulator>,
    histogram: Option<LatencyHistogram>,
    /// The server's reset epoch when the query's last result was published.
    epoch: Option<u64>,
}

impl Carried {
    fn new(spec: &Arc<QuerySpec>) -> Self {
        Self {
            spec: spec.clone(),
            rollup: spec.rollup_key.as_ref().map(|_| Rollup::default()),
            load: spec.accumulate.map(|_| LoadAccumulator::default()),
            histogram: spec
                .histogram
                .as_ref()
                .map(|h| LatencyHistogram::new(&h.buckets)),
            epoch: None,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Whether a catalog was installed (readiness waits for one).
    installed: bool,
    order: Vec<String>,
    results: HashMap<String, Arc<QueryResult>>,
    status: HashMap<String, QueryStatus>,
    carried: HashMap<String, Carried>,
}

/// What one render shows together. A writer holds it while it changes a result and the
/// self-metrics that count it, a render while it encodes: a body never shows half of a
/// change (a run counted without its result, a sample rejected but not yet counted).
#[derive(Debug, Clone, Default)]
pub struct Consistency(Arc<std::sync::Mutex<()>>);

impl Consistency {
    /// Holds it until the guard drops. Never held across an await.
    pub fn hold(&self) -> MutexGuard<'_, ()> {
        // Poisoning only means a panic elsewhere while holding it; the unit inside is intact.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Latest results, statuses and carried state, keyed by query name.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Held by the sampler's commits and by renders.
    pub consistency: Consistency,
    inner: Mutex<Inner>,
    /// Whether the database answered the last probe: the one home of `pg_up`.
    up: AtomicBool,
    /// Whether the server was in recovery at the last probe that reached it.
    in_recovery: AtomicBool,
    /// `server_version_num` from the last probe that reached the server, 0 before.
    server_version: AtomicI64,
    /// The server's statistics reset epoch as the probe last read it (0: not read yet).
    reset_epoch: AtomicU64,
    /// Latched once every enabled query has succeeded (see [`Snapshot::readiness`]).
    ready: AtomicBool,
}

impl Snapshot {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a writer panicked mid-update of plain maps; the data
        // is still consistent enough to serve, so recover instead of propagating the panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs a catalog: its query order and specs. Results of queries that left it, or
    /// whose exposed shape changed, are dropped at once (two queries never expose the same
    /// family); counter state is kept only where the SQL and the shape are unchanged.
    pub fn install(&self, specs: &[Arc<QuerySpec>]) {
        let mut g = self.lock();
        g.installed = true;
        g.order = specs.iter().map(|q| q.name.clone()).collect();
        let specs: HashMap<&str, &Arc<QuerySpec>> =
            specs.iter().map(|q| (q.name.as_str(), q)).collect();
        let Inner {
            results,
            status,
            carried,
            ..
        } = &mut *g;
        results.retain(|k, r| {
            specs
                .get(k.as_str())
                .is_some_and(|new| same_shape(&r.spec, new))
        });
        status.retain(|k, _| specs.contains_key(k.as_str()));
        carried.retain(|k, c| {
            specs
                .get(k.as_str())
                .is_some_and(|new| same_state(&c.spec, new))
        });
        for (name, spec) in specs {
            status.entry(name.to_owned()).or_default();
            if let Some(c) = carried.get_mut(name) {
                c.spec = Arc::clone(spec);
            }
        }
    }

    /// Publishes a successful run, replacing that query's series wholesale: per-object
    /// series are rolled up and statement samples accumulated into the query's histogram
    /// first. A result of a query that is not in the installed catalog is discarded and
    /// `None` returned; whether a spec is still its query's current one is the sampler's
    /// roster to say (it publishes only while holding it).
    pub fn publish(
        &self,
        mut result: QueryResult,
        statements: &[StatementSample],
    ) -> Option<Published> {
        let mut g = self.lock();
        let name = result.spec.name.clone();
        if !g.status.contains_key(&name) {
            return None;
        }
        let epoch = self.reset_epoch.load(Ordering::Relaxed);
        let Inner {
            carried, results, ..
        } = &mut *g;
        let carried = carried
            .entry(name.clone())
            .or_insert_with(|| Carried::new(&result.spec));
        let mut counter_drops = monotonic::DropCounts::default();
        let accumulated = carried.load.is_some();
        monotonic::drop_invalid(&mut result, accumulated, &mut counter_drops);
        let mut dropped = 0;
        if let Some(r) = carried.rollup.as_mut() {
            dropped = r.apply(&mut result);
        }
        if let Some(l) = carried.load.as_mut() {
            let interval = result.spec.interval;
            dropped += l.apply(&mut result, interval);
        }
        if carried.rollup.is_none() && !accumulated {
            let reset = carried.epoch.is_some_and(|e| e != epoch);
            let previous = results.get(&name).map(|r| &**r);
            monotonic::hold_decreases(&mut result, previous, reset, &mut counter_drops);
        }
        carried.epoch = Some(epoch);
        if let Some(h) = carried.histogram.as_mut() {
            h.update(statements);
            result.histogram = Some(h.snapshot());
        }
        let st = g.status.entry(name.clone()).or_default();
        st.last_success = Some(result.at);
        st.attempted = true;
        let series = result.series_count();
        g.results.insert(name, Arc::new(result));
        Some(Published {
            series,
            dropped,
            counter_drops,
        })
    }

    /// Records a failure; the last good series stay until `expire_after`, then go. `ran`
    /// says whether the query reached the database (a tick skipped while the database is
    /// unreachable does not count towards readiness). Returns the series still exposed.
    pub fn fail(&self, spec: &QuerySpec, error: String, now: SystemTime, ran: bool) -> usize {
        let mut g = self.lock();
        let st = g.status.entry(spec.name.clone()).or_default();
        st.last_error = Some((now, error));
        st.attempted |= ran;
        let expired = g.results.get(&spec.name).is_some_and(|r| {
            now.duration_since(r.at)
                .is_ok_and(|age| age > spec.expire_after)
        });
        if expired {
            g.results.remove(&spec.name);
        }
        g.results
            .get(&spec.name)
            .map(|r| r.series_count())
            .unwrap_or(0)
    }

    /// Removes a query's series at once (the object it reads is gone or not readable).
    pub fn clear(&self, name: &str) {
        self.lock().results.remove(name);
    }

    /// Marks a query enabled or disabled by gating; a disabled query's series go at once.
    pub fn set_enabled(&self, name: &str, enabled: bool, reason: Option<String>) {
        let mut g = self.lock();
        let st = g.status.entry(name.to_owned()).or_default();
        st.enabled = enabled;
        st.disabled_reason = reason;
        if !enabled {
            st.attempted = true;
            g.results.remove(name);
        }
    }

    /// Records the probe's verdict and, when it reached the server, the server's version.
    pub fn set_up(&self, up: bool, version: Option<i64>) {
        if let Some(v) = version {
            self.server_version.store(v, Ordering::Relaxed);
        }
        self.up.store(up, Ordering::Relaxed);
    }

    /// Records whether the server is in recovery (a standby), from the last probe that
    /// reached it.
    pub fn set_in_recovery(&self, in_recovery: bool) {
        self.in_recovery.store(in_recovery, Ordering::Relaxed);
    }

    /// Whether the server was in recovery at the last probe that reached it.
    pub fn in_recovery(&self) -> bool {
        self.in_recovery.load(Ordering::Relaxed)
    }

    /// `server_version_num` from the last probe that reached the server, 0 before.
    pub fn server_version(&self) -> i64 {
        self.server_version.load(Ordering::Relaxed)
    }

    /// Records the server's statistics reset epoch (a digest the probe reads; it changes when
    /// the server restarts or a cumulative statistic is reset).
    pub fn set_reset_epoch(&self, epoch: u64) {
        self.reset_epoch.store(epoch, Ordering::Relaxed);
    }

    /// Whether the database answered the last probe.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The current results in catalog order.
    pub fn results(&self) -> Vec<Arc<QueryResult>> {
        let g = self.lock();
        g.order
            .iter()
            .filter_map(|n| g.results.get(n).cloned())
            .collect()
    }

    /// The latest result of the query named `name`.
    pub fn result(&self, name: &str) -> Option<Arc<QueryResult>> {
        self.lock().results.get(name).cloned()
    }

    /// Statuses in catalog order.
    pub fn statuses(&self) -> Vec<(String, QueryStatus)> {
        let g = self.lock();
        g.order
            .iter()
            .map(|n| (n.clone(), g.status.get(n).cloned().unwrap_or_default()))
            .collect()
    }

    /// Readiness: whether every enabled query has succeeded at least once since start, and
    /// the queries still waiting for their first success (catalog order); never before a
    /// catalog is installed. Queries gated out
    /// (server version, role, missing extension or preload) are not waited for; a query that
    /// has not ticked yet is. Once reached, readiness is latched for the life of the process:
    /// a query added by a reload does not revoke it (whether the database answers is the
    /// other half of `/ready`, kept apart in [`Snapshot::is_up`]).
    pub fn readiness(&self) -> (bool, Vec<String>) {
        if self.ready.load(Ordering::Relaxed) {
            return (true, Vec::new());
        }
        let g = self.lock();
        let pending: Vec<String> = g
            .order
            .iter()
            .filter(|n| {
                g.status.get(*n).is_none_or(|s| {
                    let gated_out = !s.enabled && s.disabled_reason.is_some();
                    s.last_success.is_none() && !gated_out
                })
            })
            .cloned()
            .collect();
        let ready = g.installed && pending.is_empty();
        drop(g);
        if ready {
            self.ready.store(true, Ordering::Relaxed);
        }
        (ready, pending)
    }
}

/// Whether a target without a snapshot (a PgBouncer console) answers: its body's `up` and
/// readiness follow it as a database target's follow [`Snapshot::is_up`] and
/// [`Snapshot::readiness`].
#[derive(Debug, Default)]
pub struct Liveness {
    up: AtomicBool,
    /// Latched at the first successful round.
    answered: AtomicBool,
}

impl Liveness {
    /// Records the verdict of the last round.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        if up {
            self.answered.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the last round succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether a round ever succeeded (readiness, latched as a snapshot's is).
    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }
}

/// Whether two specs expose the same families with the same labels.
fn same_shape(a: &QuerySpec, b: &QuerySpec) -> bool {
    a.labels == b.labels
        && a.metrics.len() == b.metrics.len()
        && a.metrics
            .iter()
            .zip(&b.metrics)
            .all(|(x, y)| x.name == y.name && x.kind == y.kind)
        && a.histogram.as_ref().map(|h| (&h.name, &h.buckets))
            == b.histogram.as_ref().map(|h| (&h.name, &h.buckets))
}

/// Whether counter state built from `a`'s rows is valid for `b`: same SQL, same shape,
/// same roll-up key, accumulation and value columns. (An accumulated counter keeps its
/// state across an interval change: each sample adds its own interval.)
fn same_state(a: &QuerySpec, b: &QuerySpec) -> bool {
    same_shape(a, b)
        && a.sql == b.sql
        && a.rollup_key == b.rollup_key
        && a.accumulate == b.accumulate
        && a.metrics
            .iter()
            .zip(&b.metrics)
            .all(|(x, y)| x.column == y.column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Defaults};

    fn specs() -> Vec<Arc<QuerySpec>> {
        let yaml = "queries:
  - {name: a, sql: SELECT 1 AS v, metrics: [{column: v, name: pg_a, type: gauge, help: A.}]}
  - {name: b, sql: SELECT 1 AS v, metrics: [{column: v, name: pg_b, type: gauge, help: B.}]}
  - {name: c, sql: SELECT 1 AS v, metrics: [{column: v, name: pg_c, type: gauge, help: C.}]}
";
        Catalog::parse(yaml, "q.yaml".as_ref(), Defaults::default())
            .unwrap()
            .queries
    }

    #[test]
    fn readiness_waits_for_a_success_of_every_enabled_query_and_then_stays() {
        let specs = specs();
        let snap = Snapshot::default();
        assert_eq!(snap.readiness(), (false, vec![]), "no catalog yet");
        snap.install(&specs);
        assert_eq!(
            snap.readiness(),
            (false, vec!["a".into(), "b".into(), "c".into()])
        );
        snap.set_enabled("a", true, None);
        snap.fail(&specs[0], "sql".into(), SystemTime::now(), true);
        snap.set_enabled("b", false, Some("needs PostgreSQL 16".into()));
        snap.publish(QueryResult::empty(&specs[2]), &[]);
        assert_eq!(
            snap.readiness(),
            (false, vec!["a".into()]),
            "a failed run does not count; a gated-out query is not waited for"
        );
        snap.publish(QueryResult::empty(&specs[0]), &[]);
        assert_eq!(snap.readiness(), (true, vec![]));
        let mut more = specs.clone();
        more.extend(
            Catalog::parse(
                "queries:\n  - {name: d, sql: SELECT 1 AS v, metrics: [{column: v, name: pg_d, type: gauge, help: D.}]}\n",
                "q.yaml".as_ref(),
                Defaults::default(),
            )
            .unwrap()
            .queries,
        );
        snap.install(&more);
        assert_eq!(
            snap.readiness(),
            (true, vec![]),
            "a query added by a reload does not revoke readiness"
        );
    }
}
