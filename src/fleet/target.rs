//! One target: a PostgreSQL database ([`Database`]: its pool, probe, sampler, snapshot,
//! optional features (the plan guard, the slow-statement log reader) and rendered body) or a
//! PgBouncer ([`super::bouncer::Pooler`]), with tasks of its own. Nothing of one target is
//! shared with another but the fleet's connection cap, taken through its connections.
//!
//! A target's tasks run on its own [`TaskTracker`] under a child of the service's stop token,
//! so a target removed by a reload stops alone: [`Target::stop`] cancels its tasks, waits for
//! them, and closes its connections.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::db::lease::Budget;
use crate::db::pool::{PoolError, PoolSettings};
use crate::db::server::Seat;
use crate::exposition::Renderer;
use crate::http::TargetView;
use crate::plans::guard::PlanGuard;
use crate::plans::slo::KeyQueryIds;
use crate::sampler::{Applied, Sampler, SamplerMetrics};
use crate::slowlog::SlowLogReader;
use crate::snapshot::{Consistency, Snapshot};

/// The optional background features of a target.
#[derive(Debug, Default)]
struct Features {
    plan_guard: Option<Arc<PlanGuard>>,
    slow_log: Option<Arc<SlowLogReader>>,
}

impl Features {
    /// Builds the features `config` turns on, registering their metrics; the plan guard
    /// records the key queries' identifiers in `ids`, the slow-log reader reads them there.
    fn build(
        config: &Config,
        registry: &mut Registry,
        budget: &Budget,
        ids: &KeyQueryIds,
        consistency: &Consistency,
        seat: &Seat,
    ) -> Self {
        let guard = |g| {
            PlanGuard::new(
                registry,
                budget.clone(),
                g,
                config.lock_timeout,
                ids.clone(),
            )
        };
        Self {
            plan_guard: config.plans.clone().map(guard),
            slow_log: config.slow_log.map(|s| {
                SlowLogReader::new(
                    registry,
                    budget.clone(),
                    s,
                    ids.clone(),
                    consistency.clone(),
                    seat.clone(),
                )
            }),
        }
    }

    fn start(&self, tracker: &TaskTracker, stop: &CancellationToken, changed: &Arc<Notify>) {
        if let Some(g) = &self.plan_guard {
            g.start(tracker, stop.clone(), changed.clone());
        }
        if let Some(r) = &self.slow_log {
            r.start(tracker, stop.clone(), changed.clone());
        }
    }
}

/// What a target is built from.
#[derive(Debug)]
pub struct Parts<'a> {
    /// The service's configuration (sampling and feature settings).
    pub config: &'a Config,
    /// Its pool: where, how large, within which cap.
    pub pool: PoolSettings,
    /// The catalog it samples.
    pub catalog: Catalog,
    /// The registry its self-metrics join (the process's own, for the one target of a
    /// service that samples one database).
    pub registry: Registry,
    /// The service's stop token; the target's tasks stop with a child of it.
    pub stop: &'a CancellationToken,
    /// Told after each render of its body (the fleet's `/metrics` shows its state).
    pub rendered: Option<Arc<Notify>>,
    /// Its place at its server (whether it samples the server-wide queries).
    pub seat: Seat,
}

/// One target of the fleet, of either kind.
#[derive(Debug)]
pub struct Target {
    kind: Kind,
    /// What the target was made of: a reload keeps it while this is unchanged.
    pub fingerprint: String,
}

#[derive(Debug)]
enum Kind {
    Database(Database),
    Pooler(super::bouncer::Pooler),
}

impl Target {
    /// A database target.
    pub fn database(d: Database, fingerprint: String) -> Self {
        Self {
            kind: Kind::Database(d),
            fingerprint,
        }
    }

    /// A PgBouncer target.
    pub fn pooler(p: super::bouncer::Pooler, fingerprint: String) -> Self {
        Self {
            kind: Kind::Pooler(p),
            fingerprint,
        }
    }

    /// Starts its tasks.
    pub fn start(&self) {
        match &self.kind {
            Kind::Database(d) => d.start(),
            Kind::Pooler(p) => p.start(),
        }
    }

    /// Stops its tasks, waits for them, closes its connections.
    pub async fn stop(&self) {
        match &self.kind {
            Kind::Database(d) => d.stop().await,
            Kind::Pooler(p) => p.stop().await,
        }
    }

    /// Closes its pooled connections idle for longer than `idle` (a PgBouncer target holds
    /// one console connection, used every round).
    pub(crate) fn close_idle(&self, idle: std::time::Duration) -> usize {
        match &self.kind {
            Kind::Database(d) => d.close_idle(idle),
            Kind::Pooler(_) => 0,
        }
    }

    /// Switches a database target to `catalog` (a PgBouncer target has none).
    pub fn apply(&self, catalog: Catalog) -> Applied {
        match &self.kind {
            Kind::Database(d) => d.apply(catalog),
            Kind::Pooler(_) => Applied::default(),
        }
    }

    /// What HTTP serves of it.
    pub fn view(&self) -> TargetView {
        match &self.kind {
            Kind::Database(d) => d.view(),
            Kind::Pooler(p) => p.view(),
        }
    }
}

/// One sampled database.
#[derive(Debug)]
pub struct Database {
    renderer: Arc<Renderer>,
    snapshot: Arc<Snapshot>,
    sampler: Arc<Sampler>,
    budget: Budget,
    features: Features,
    changed: Arc<Notify>,
    stop: CancellationToken,
    tracker: TaskTracker,
    seat: Seat,
    labels: Arc<BTreeMap<String, String>>,
}

impl Database {
    /// Builds a database target; no connection is made until [`Database::start`].
    pub fn build(parts: Parts<'_>, labels: BTreeMap<String, String>) -> Result<Self, PoolError> {
        let Parts {
            config,
            pool,
            catalog,
            mut registry,
            stop,
            rendered,
            seat,
        } = parts;
        let budget = Budget::new(crate::db::pool::build(&pool)?);
        let sampler_metrics = Arc::new(SamplerMetrics::register(&mut registry));
        let key_queries = KeyQueryIds::default();
        let snapshot = Arc::new(Snapshot::default());
        let features = Features::build(
            config,
            &mut registry,
            &budget,
            &key_queries,
            &snapshot.consistency,
            &seat,
        );
        let mut renderer = Renderer::new(registry, snapshot.clone());
        if let Some(n) = rendered {
            renderer = renderer.notifying(n);
        }
        let (changed, stop, tracker) = (
            Arc::new(Notify::new()),
            stop.child_token(),
            TaskTracker::new(),
        );
        let mut settings = config.sampler_settings(key_queries);
        settings.seat = seat.clone();
        let sampler = Sampler::new(
            catalog,
            budget.clone(),
            snapshot.clone(),
            sampler_metrics,
            changed.clone(),
            settings,
            tracker.clone(),
            stop.clone(),
        );
        renderer.render();
        Ok(Self {
            renderer: Arc::new(renderer),
            snapshot,
            sampler,
            budget,
            features,
            changed,
            stop,
            tracker,
            seat,
            labels: Arc::new(labels),
        })
    }

    /// Starts the probe, the features, the catalog's queries and the render loop.
    pub fn start(&self) {
        self.sampler.start_probe();
        self.features
            .start(&self.tracker, &self.stop, &self.changed);
        self.sampler.start();
        self.tracker.spawn(
            self.renderer
                .clone()
                .render_on_change(self.changed.clone(), self.stop.clone()),
        );
    }

    /// Stops every task of the target, waits for them, and closes its pool; it leaves its
    /// server, so another target of that server samples the server-wide queries.
    pub async fn stop(&self) {
        self.seat.leave();
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.budget.close();
    }

    /// Closes its pooled connections idle for longer than `idle`.
    pub(crate) fn close_idle(&self, idle: std::time::Duration) -> usize {
        self.budget.close_idle(idle)
    }

    /// Switches to `catalog` as a diff (see [`Sampler::apply`]).
    pub fn apply(&self, catalog: Catalog) -> Applied {
        let applied = self.sampler.apply(catalog);
        self.changed.notify_one();
        applied
    }

    /// What HTTP serves of it.
    pub fn view(&self) -> TargetView {
        TargetView {
            exposition: self.renderer.handle(),
            snapshot: self.snapshot.clone(),
            labels: self.labels.clone(),
        }
    }
}
