//! The latest result and status of every query: written by the sampler tasks, read by the
//! renderer and the landing page. Scrapes never read it (they copy pre-rendered bytes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::catalog::QuerySpec;

/// One exposed series: label values (in the query's label order) and a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Label values, in the order of [`QuerySpec::labels`].
    pub labels: Vec<String>,
    /// The sample value.
    pub value: f64,
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
    /// The latency histogram the query feeds, if it declares one.
    pub histogram: Option<crate::sampler::latency::HistogramSnapshot>,
    /// Every row as column → text (NULL as `None`), when the spec asks for it.
    pub rows: Option<Vec<Row>>,
    /// When it was produced.
    pub at: SystemTime,
}

impl QueryResult {
    /// Total number of series across its metrics.
    pub fn series_count(&self) -> usize {
        self.families.iter().map(Vec::len).sum::<usize>() + usize::from(self.histogram.is_some())
    }
}

/// What the landing page shows of a query.
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

#[derive(Debug, Default)]
struct Inner {
    order: Vec<String>,
    specs: HashMap<String, Arc<QuerySpec>>,
    results: HashMap<String, Arc<QueryResult>>,
    status: HashMap<String, QueryStatus>,
}

/// Latest results and statuses, keyed by query name.
#[derive(Debug, Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a writer panicked mid-update of plain maps; the data
        // is still consistent enough to serve, so recover instead of propagating the panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs a catalog: its query order and specs. Results of queries that left it, or
    /// whose exposed shape (metric names, types, labels) changed, are dropped at once, so
    /// two queries never expose the same family; the others stay until their next run.
    pub fn set_catalog(&self, specs: &[Arc<QuerySpec>]) {
        let mut g = self.lock();
        g.order = specs.iter().map(|q| q.name.clone()).collect();
        g.specs = specs.iter().map(|q| (q.name.clone(), q.clone())).collect();
        let Inner {
            specs,
            results,
            status,
            ..
        } = &mut *g;
        results.retain(|k, r| specs.get(k).is_some_and(|new| same_shape(&r.spec, new)));
        status.retain(|k, _| specs.contains_key(k));
        for n in specs.keys() {
            status.entry(n.clone()).or_default();
        }
    }

    /// Publishes a successful result, replacing that query's series wholesale. A result of
    /// a spec that is no longer current (a run that finished after a reload) is discarded.
    pub fn publish(&self, result: Arc<QueryResult>) {
        let mut g = self.lock();
        let name = result.spec.name.clone();
        if !g
            .specs
            .get(&name)
            .is_some_and(|s| Arc::ptr_eq(s, &result.spec))
        {
            return;
        }
        let st = g.status.entry(name.clone()).or_default();
        st.last_success = Some(result.at);
        st.attempted = true;
        g.results.insert(name, result);
    }

    /// Records a failure; the last good series stay until `expire_after`, then go.
    /// `ran` says whether the query reached the database (a tick skipped while the database
    /// is unreachable does not count towards readiness). Returns true when the series were
    /// removed by this call.
    pub fn fail(&self, spec: &QuerySpec, error: String, now: SystemTime, ran: bool) -> bool {
        let mut g = self.lock();
        let st = g.status.entry(spec.name.clone()).or_default();
        st.last_error = Some((now, error));
        st.attempted |= ran;
        let expired = match g.results.get(&spec.name) {
            Some(r) => now
                .duration_since(r.at)
                .map(|age| age > spec.expire_after)
                .unwrap_or(false),
            None => false,
        };
        if expired {
            g.results.remove(&spec.name);
        }
        expired
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

    /// Whether `spec` is the current spec of its query (not one replaced by a reload).
    pub fn is_current(&self, spec: &Arc<QuerySpec>) -> bool {
        self.lock()
            .specs
            .get(&spec.name)
            .is_some_and(|s| Arc::ptr_eq(s, spec))
    }

    /// Statuses in catalog order.
    pub fn statuses(&self) -> Vec<(String, QueryStatus)> {
        let g = self.lock();
        g.order
            .iter()
            .map(|n| (n.clone(), g.status.get(n).cloned().unwrap_or_default()))
            .collect()
    }

    /// Whether every query has been attempted (or is disabled) since start or reload.
    pub fn first_round_done(&self) -> bool {
        let g = self.lock();
        g.order
            .iter()
            .all(|n| g.status.get(n).is_some_and(|s| s.attempted))
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
        && a.histogram.as_ref().map(|h| &h.name) == b.histogram.as_ref().map(|h| &h.name)
}
