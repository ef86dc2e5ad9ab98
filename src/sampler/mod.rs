//! Sampling: one task per query on its own interval, a probe that keeps `pg_up` truthful,
//! and the hand-over of each complete result to the [`Snapshot`].
//!
//! - [`probe`]: liveness, server facts, reconnect backoff.
//! - [`gate`]: whether a query runs on this server.
//! - [`idle`]: whether a query may let its last result stand, from its server's signal.
//! - [`schedule`]: the per-query loop and one tick.
//! - [`run`]: one run of one query in a read-only transaction; [`decode`] and [`cell`]: rows
//!   → series within the budget.
//! - [`relations`]: the relation pass shared by the derived families (`derive:`).
//! - [`metrics`]: the sampler's own metrics.
//!
//! Concurrency: each query is a loop in its own task, so a slow query delays only itself; a
//! run still in flight when its next tick comes skips that tick. All tasks, the probe
//! included, share the pool through its [`Budget`], whose size is the hard connection budget
//! on the server's side too: a connection abandoned mid-run keeps its slot until its session
//! has answered. The roster (which spec of each query is
//! current) is one mutex: a run records its outcome (self-metrics and snapshot) while holding
//! it and only if its spec is still current, and [`Sampler::apply`] forgets removed queries
//! while holding it, so nothing of a removed or replaced query can come back.

pub mod cell;
pub(crate) mod decode;
pub(crate) mod gate;
pub(crate) mod idle;
pub mod metrics;
pub(crate) mod probe;
pub mod relations;
pub(crate) mod run;
pub(crate) mod schedule;

pub use metrics::SamplerMetrics;
pub use run::sample_once;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, QuerySpec};
use crate::db::lease::Budget;
use crate::snapshot::Snapshot;
use probe::ServerInfo;

/// First runs are spread evenly, in catalog order, over this span (or the query's interval
/// when shorter), so that no two queries start together and compete for the pool.
pub const FIRST_ROUND_SPREAD: Duration = Duration::from_secs(10);

/// Settings of the sampler.
#[derive(Debug, Clone)]
pub struct SamplerSettings {
    /// `lock_timeout` of every sampling query.
    pub lock_timeout: Duration,
    /// Longest pause between reconnect attempts.
    pub max_backoff: Duration,
    /// The probe's wait for a connection, and for the server's answer: no answer within it
    /// means the database is down.
    pub probe_timeout: Duration,
    /// The trade tables, bound to the queries that ask for them (`binds: trade_tables`).
    pub trade_tables: crate::db::trade_tables::TradeTables,
    /// How many root blockers are named, bound to the queries that ask (`binds: lock_roots`).
    pub lock_roots_named: i32,
    /// The key queries' identifiers (the plan guard records them), bound to the queries that
    /// ask (`binds: key_queries`).
    pub key_queries: crate::plans::slo::KeyQueryIds,
    /// This target's place at its server: whether it samples the server-wide queries.
    pub seat: crate::db::server::Seat,
}

/// The current catalog and the stop handle of each of its running query tasks: the one home
/// of "which spec of each query is current".
#[derive(Debug)]
struct Roster {
    catalog: Catalog,
    tasks: HashMap<String, CancellationToken>,
}

impl Roster {
    fn spec(&self, name: &str) -> Option<&Arc<QuerySpec>> {
        self.catalog.queries.iter().find(|q| q.name == name)
    }
}

/// What [`Sampler::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Queries new to the catalog, started.
    pub started: usize,
    /// Queries whose spec changed, restarted.
    pub restarted: usize,
    /// Queries unchanged, left running with their state.
    pub kept: usize,
    /// Queries that left the catalog, stopped and forgotten.
    pub stopped: usize,
}

/// The sampler: shared by its tasks, the reloader and the service.
#[derive(Debug)]
pub struct Sampler {
    budget: Budget,
    snapshot: Arc<Snapshot>,
    metrics: Arc<SamplerMetrics>,
    server: ServerInfo,
    changed: Arc<Notify>,
    settings: SamplerSettings,
    roster: Mutex<Roster>,
    relations: relations::RelationSource,
    /// True once the probe has given its first verdict (up or down): until then the first
    /// runs wait, instead of being skipped as if the database were down.
    probed: tokio::sync::watch::Sender<bool>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Sampler {
    /// Creates a sampler holding `catalog` as its current one; nothing runs until
    /// [`Sampler::start_probe`] and [`Sampler::start`]. Tasks are spawned on `tracker` and
    /// stop with `stop`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        catalog: Catalog,
        budget: Budget,
        snapshot: Arc<Snapshot>,
        metrics: Arc<SamplerMetrics>,
        changed: Arc<Notify>,
        settings: SamplerSettings,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            budget,
            snapshot,
            metrics,
            server: ServerInfo::default(),
            changed,
            settings,
            roster: Mutex::new(Roster {
                catalog,
                tasks: HashMap::new(),
            }),
            relations: relations::RelationSource::default(),
            probed: tokio::sync::watch::Sender::new(false),
            tracker,
            stop,
        })
    }

    fn roster(&self) -> MutexGuard<'_, Roster> {
        // Poisoning only means a panic elsewhere while holding a plain map.
        self.roster.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` while holding the roster, only if `spec` is still its query's current spec.
    /// A render sees all of `f`'s changes or none.
    fn commit<R>(&self, spec: &Arc<QuerySpec>, f: impl FnOnce() -> R) -> Option<R> {
        let _whole = self.snapshot.consistency.hold();
        let roster = self.roster();
        let current = roster.tasks.contains_key(&spec.name)
            && roster
                .spec(&spec.name)
                .is_some_and(|s| Arc::ptr_eq(s, spec));
        let out = current.then(f);
        drop(roster);
        out
    }

    /// The current catalog (the one [`Sampler::apply`] last switched to, or the one it was
    /// created with).
    pub fn catalog(&self) -> Catalog {
        self.roster().catalog.clone()
    }

    /// Starts the current catalog's queries.
    pub fn start(self: &Arc<Self>) -> Applied {
        let catalog = self.catalog();
        self.apply(catalog)
    }

    /// Switches to `catalog` as a diff: unchanged queries keep running with their state,
    /// changed ones restart, removed ones stop and their series and self-metrics are
    /// forgotten, new ones start. First runs of started queries are spread over
    /// [`FIRST_ROUND_SPREAD`].
    pub fn apply(self: &Arc<Self>, mut catalog: Catalog) -> Applied {
        let mut applied = Applied::default();
        let mut roster = self.roster();
        let Roster {
            catalog: old,
            tasks,
        } = &mut *roster;
        tasks.retain(|name, stop| {
            let keep = catalog.queries.iter().any(|q| &q.name == name);
            if !keep {
                stop.cancel();
                self.metrics.forget_query(name);
                applied.stopped += 1;
            }
            keep
        });
        let mut start = Vec::new();
        for spec in &mut catalog.queries {
            let running = old.queries.iter().find(|q| q.name == spec.name);
            match (tasks.get(&spec.name), running) {
                (Some(_), Some(cur)) if **cur == **spec => {
                    applied.kept += 1;
                    *spec = cur.clone();
                    continue;
                }
                (Some(stop), _) => {
                    stop.cancel();
                    applied.restarted += 1;
                }
                (None, _) => {
                    self.metrics.init_query(spec);
                    applied.started += 1;
                }
            }
            let stop = self.stop.child_token();
            tasks.insert(spec.name.clone(), stop.clone());
            start.push((spec.clone(), stop));
        }
        self.snapshot.install(&catalog.queries);
        *old = catalog;
        drop(roster);
        self.spawn_started(start);
        self.changed.notify_one();
        applied
    }

    /// Spawns the loops of started queries, their first runs spread over
    /// [`FIRST_ROUND_SPREAD`] in catalog order.
    fn spawn_started(self: &Arc<Self>, start: Vec<(Arc<QuerySpec>, CancellationToken)>) {
        let n = start.len().max(1) as u32;
        for (i, (spec, stop)) in start.into_iter().enumerate() {
            let offset = spec.interval.min(FIRST_ROUND_SPREAD) * (i as u32) / n;
            let me = self.clone();
            self.tracker
                .spawn(async move { me.query_loop(spec, offset, stop).await });
        }
    }
}
