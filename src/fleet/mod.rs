//! The fleet: the targets a service samples, by name, and what they share. A service that
//! samples one database (`database.url`) holds one target whose body is `/metrics`; in fleet
//! mode (`targets:`, `targets_file:`) it holds one per entry, each served at
//! `/probe?target=NAME`, and `/metrics` has the process's own metrics.
//!
//! - [`target`]: one target (pool, probe, sampler, snapshot, features, body).
//! - [`bouncer`]: a PgBouncer target (console sampler, body).
//! - [`discover`]: the discovery of a server's databases, each a target.
//! - [`metrics`]: the fleet's own metrics.
//!
//! Shared by the targets: the global connection cap ([`Cap`], one permit per socket, taken
//! through each target's pool) and the current catalog. Reloads are diffs by name: a target
//! whose settings did not change keeps its tasks, state and connections; a changed one is
//! rebuilt; a removed one stops and its pool closes; a new one starts.
//!
//! Concurrency: the map of targets is one `std::sync::Mutex`, held to compute and publish a
//! change and never across an `.await`; the HTTP layer reads the published copy
//! ([`crate::http::Targets`]) without locking. A removed target stops on the service's
//! tracker, after it has left the published map.

pub mod bouncer;
mod discover;
mod metrics;
pub mod target;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bouncer::BouncerSettings;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::config::fleet::{FleetConfig, TargetConfig, TargetKind};
use crate::db::pool::PoolError;
use crate::db::server::{Seat, Servers};
use crate::db::slots::Cap;
use crate::http::{TargetView, Targets};
use crate::sampler::Applied;
use metrics::FleetMetrics;
pub use target::Target;

/// What a change of the target list did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetsApplied {
    /// New targets, started.
    pub started: usize,
    /// Targets whose settings changed, restarted.
    pub restarted: usize,
    /// Unchanged targets, left running with their state.
    pub kept: usize,
    /// Targets no longer listed, stopped.
    pub stopped: usize,
}

/// The targets of a service.
#[derive(Debug, Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    /// `None` when the service samples one database.
    fleet: Option<(FleetConfig, Cap, FleetMetrics)>,
    catalog: Mutex<Catalog>,
    /// Which targets reach the same server.
    servers: Servers,
    /// The databases each discovery selected last.
    found: discover::Found,
    targets: Mutex<BTreeMap<String, Arc<Target>>>,
    published: Targets,
    /// Told after each target's render: the process body shows the targets' states.
    rendered: Arc<Notify>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

/// How long a connection may stay idle in its pool while others wait for the fleet's cap.
const IDLE_WHEN_CONTENDED: std::time::Duration = std::time::Duration::from_millis(250);

/// The name of the one target of a service that samples one database.
const SINGLE: &str = "default";

impl Fleet {
    /// The one target of `config.target`; its self-metrics join `registry`, the process's.
    pub fn single(
        config: Config,
        catalog: Catalog,
        registry: Registry,
        stop: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Self, PoolError> {
        let fleet = Self::empty(
            config,
            None,
            catalog,
            (Targets::default(), Arc::new(Notify::new())),
            (stop, tracker),
        );
        let inner = &fleet.inner;
        let parts = target::Parts {
            config: &inner.config,
            pool: inner.config.pool_settings(),
            catalog: fleet.catalog(),
            registry,
            stop: &inner.stop,
            rendered: None,
            seat: Seat::alone(),
        };
        let t = target::Database::build(parts, BTreeMap::new())?;
        fleet.targets().insert(
            SINGLE.to_owned(),
            Arc::new(Target::database(t, String::new())),
        );
        fleet.publish();
        Ok(fleet)
    }

    /// The fleet of `config.fleet` (which must be set); its own metrics join `registry`, the
    /// process's, and `rendered` is told after each target's render.
    pub fn many(
        config: Config,
        fleet: FleetConfig,
        catalog: Catalog,
        registry: &mut Registry,
        rendered: Arc<Notify>,
        stop: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        let cap = Cap::new(fleet.max_connections);
        let published = Targets::default();
        let m = FleetMetrics::register(registry, published.clone(), cap.clone());
        Self::empty(
            config,
            Some((fleet, cap, m)),
            catalog,
            (published, rendered),
            (stop, tracker),
        )
    }

    fn empty(
        config: Config,
        fleet: Option<(FleetConfig, Cap, FleetMetrics)>,
        catalog: Catalog,
        (published, rendered): (Targets, Arc<Notify>),
        (stop, tracker): (CancellationToken, TaskTracker),
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                fleet,
                catalog: Mutex::new(catalog),
                servers: Servers::default(),
                found: discover::Found::default(),
                targets: Mutex::new(BTreeMap::new()),
                published,
                rendered,
                stop,
                tracker,
            }),
        }
    }

    fn targets(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Target>>> {
        // Poisoning only means a panic elsewhere while holding a plain map.
        self.inner.targets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The published map of targets (what `/probe`, `/sd` and `/ready` read).
    pub fn published(&self) -> Targets {
        self.inner.published.clone()
    }

    /// Whether this is a fleet (not one database).
    pub fn is_fleet(&self) -> bool {
        self.inner.fleet.is_some()
    }

    /// The view of the one target of a service that samples one database.
    pub fn single_view(&self) -> Option<TargetView> {
        self.targets().get(SINGLE).map(|t| t.view())
    }

    /// The current catalog.
    pub fn catalog(&self) -> Catalog {
        self.inner
            .catalog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self) {
        let views: BTreeMap<String, TargetView> = self
            .targets()
            .iter()
            .map(|(k, t)| (k.clone(), t.view()))
            .collect();
        self.inner.published.store(Arc::new(views));
        self.inner.rendered.notify_one();
    }

    /// While connection attempts wait for the cap, closes connections idle for longer than
    /// [`IDLE_WHEN_CONTENDED`], every [`IDLE_WHEN_CONTENDED`]: with more targets than the cap
    /// holds connections for, the permits go round instead of staying with idle pools.
    fn share_the_cap(&self, cap: Cap) {
        let (me, stop) = (self.clone(), self.inner.stop.clone());
        self.inner.tracker.spawn(async move {
            let mut tick = tokio::time::interval(IDLE_WHEN_CONTENDED);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if cap.waiting() > 0 {
                    let all: Vec<Arc<Target>> = me.targets().values().cloned().collect();
                    for t in all {
                        t.close_idle(IDLE_WHEN_CONTENDED);
                    }
                }
            }
        });
    }

    /// Starts every target; in fleet mode, reads the targets file first and again every
    /// refresh interval, and starts each discovery of a server's databases.
    pub fn start(&self) {
        if let Some((f, cap, _)) = &self.inner.fleet {
            self.share_the_cap(cap.clone());
            let _ = self.refresh();
            for d in &f.discoveries {
                discover::spawn(self, d.clone(), cap.clone());
            }
            let (me, every, stop) = (self.clone(), f.refresh_interval, self.inner.stop.clone());
            self.inner.tracker.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => { let _ = me.refresh(); }
                    }
                }
            });
        } else {
            for t in self.targets().values() {
                t.start();
            }
        }
    }

    /// Switches every target to `catalog` (a diff per target); returns the sum.
    pub fn apply_catalog(&self, catalog: Catalog) -> Applied {
        *self.inner.catalog.lock().unwrap_or_else(|p| p.into_inner()) = catalog.clone();
        let mut sum = Applied::default();
        for t in self.targets().values() {
            let a = t.apply(catalog.clone());
            sum.started += a.started;
            sum.restarted += a.restarted;
            sum.kept += a.kept;
            sum.stopped += a.stopped;
        }
        sum
    }

    /// Reads the target list again (config file targets, the databases discovered so far and
    /// `targets_file`) and applies it as a diff by name; a list that does not read keeps the
    /// running targets.
    pub fn refresh(&self) -> Result<TargetsApplied, crate::config::ConfigError> {
        let Some((f, cap, m)) = &self.inner.fleet else {
            return Ok(TargetsApplied::default());
        };
        let found = self.inner.found.now();
        let read = f.read_targets(self.inner.config.connect_timeout, &found);
        m.record_refresh(read.is_ok());
        match read {
            Ok(list) => Ok(self.apply_targets(f, cap, list)),
            Err(e) => {
                tracing::error!(error = %e, "target list not read; keeping the running targets");
                Err(e)
            }
        }
    }

    /// Applies a target list as a diff by name: unchanged targets are kept, changed ones
    /// rebuilt, removed ones stopped (after they left the published map), new ones started.
    fn apply_targets(&self, f: &FleetConfig, cap: &Cap, list: Vec<TargetConfig>) -> TargetsApplied {
        let mut a = TargetsApplied::default();
        let mut map = self.targets();
        let wanted: BTreeMap<&str, &TargetConfig> =
            list.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut stopping = Vec::new();
        map.retain(|name, t| {
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|w| w.fingerprint == t.fingerprint);
            if !keep {
                stopping.push((name.clone(), t.clone()));
            }
            keep
        });
        for t in &list {
            if map.contains_key(&t.name) {
                a.kept += 1;
                continue;
            }
            if stopping.iter().any(|(n, _)| *n == t.name) {
                a.restarted += 1;
            } else {
                a.started += 1;
            }
            match self.build(f, cap, t) {
                Ok(built) => {
                    built.start();
                    map.insert(t.name.clone(), Arc::new(built));
                }
                Err(e) => tracing::error!(target = %t.name, error = %e, "target not built"),
            }
        }
        a.stopped = stopping.len() - a.restarted;
        drop(map);
        self.publish();
        for (_, t) in stopping {
            self.inner.tracker.spawn(async move { t.stop().await });
        }
        if a.started + a.restarted + a.stopped > 0 {
            tracing::info!(
                started = a.started,
                restarted = a.restarted,
                kept = a.kept,
                stopped = a.stopped,
                "target list applied"
            );
        }
        a
    }

    /// Builds one target of the fleet: a database with its own pool of `fleet.pool_size`
    /// within the cap, or a PgBouncer with its one console connection within the cap.
    fn build(&self, f: &FleetConfig, cap: &Cap, t: &TargetConfig) -> Result<Target, PoolError> {
        let inner = &self.inner;
        if t.kind == TargetKind::Pgbouncer {
            let settings = BouncerSettings {
                target: t.target.clone(),
                password_file: t.password_file.clone(),
                cap: Some(cap.clone()),
                interval: f.pgbouncer_interval,
                timeout: f.pgbouncer_timeout,
            };
            let rendered = Some(inner.rendered.clone());
            let p = bouncer::Pooler::build(settings, t.labels.clone(), &inner.stop, rendered);
            return Ok(Target::pooler(p, t.fingerprint.clone()));
        }
        let mut pool = inner.config.pool_settings();
        pool.target = t.target.clone();
        pool.size = f.pool_size;
        pool.cap = Some(cap.clone());
        pool.password_file = t.password_file.clone();
        let parts = target::Parts {
            config: &inner.config,
            pool,
            catalog: self.catalog(),
            registry: Registry::default(),
            stop: &inner.stop,
            rendered: Some(inner.rendered.clone()),
            seat: inner.servers.seat(&t.name),
        };
        let d = target::Database::build(parts, t.labels.clone())?;
        Ok(Target::database(d, t.fingerprint.clone()))
    }

    /// Stops every target and waits for them.
    pub async fn stop(&self) {
        let all: Vec<Arc<Target>> = self.targets().values().cloned().collect();
        for t in all {
            t.stop().await;
        }
    }
}
