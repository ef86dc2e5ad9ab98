//! `App::build` / `App::run_until_stopped`: the one seam used by `main` and by the tests.
//! It wires the flow: catalog → sampler → snapshot → exposition → http.
//!
//! Following mini-redis, the service takes a bound listener and a shutdown future; background
//! tasks (probe, query loops, renderer) stop through a [`CancellationToken`] and are awaited
//! through a [`TaskTracker`] before `run_until_stopped` returns. The [`Reloader`] is created
//! once, in `build`; every clone of it drives the same sampler.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, CatalogError, Defaults, Source};
use crate::config::Config;
use crate::exposition::Renderer;
use crate::http::auth::WebSecurity;
use crate::http::{AppState, router};
use crate::sampler::{Applied, Sampler, SamplerMetrics, SamplerSettings};
use crate::snapshot::Snapshot;

/// Errors of building and running the service.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The pool could not be built.
    #[error(transparent)]
    Pool(#[from] crate::db::pool::PoolError),
    /// The web configuration file (TLS, basic auth) is wrong.
    #[error(transparent)]
    Web(#[from] crate::http::auth::AuthError),
    /// Serving failed.
    #[error("http server: {0}")]
    Serve(std::io::Error),
}

/// Why a reload was refused (the running catalog stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new catalog does not load.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The new catalog names another health query than the running service serves.
    #[error(
        "health_query changed from {running:?} to {new:?}; /health/db keeps its query until a restart"
    )]
    HealthQueryChanged {
        /// The running service's health query.
        running: Option<String>,
        /// The new catalog's.
        new: Option<String>,
    },
}

/// Reloads the catalog on request (SIGHUP): a bad file keeps the running catalog.
#[derive(Debug, Clone)]
pub struct Reloader {
    inner: Arc<ReloaderInner>,
}

#[derive(Debug)]
struct ReloaderInner {
    source: Source,
    defaults: Defaults,
    health_query: Option<String>,
    current: Mutex<Catalog>,
    sampler: Arc<Sampler>,
    metrics: Arc<SamplerMetrics>,
    changed: Arc<Notify>,
    web: Arc<WebSecurity>,
}

impl Reloader {
    /// Reads the catalog again and applies it as a diff; on failure keeps the running one.
    pub fn reload(&self) -> Result<Applied, ReloadError> {
        let r = &self.inner;
        match r.web.reload() {
            Ok(true) => tracing::info!("web configuration reloaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "web configuration reload failed; keeping the running one")
            }
        }
        let outcome = Catalog::from_source(&r.source, r.defaults)
            .map_err(ReloadError::from)
            .and_then(|new| {
                if new.health_query == r.health_query {
                    Ok(new)
                } else {
                    Err(ReloadError::HealthQueryChanged {
                        running: r.health_query.clone(),
                        new: new.health_query,
                    })
                }
            });
        match outcome {
            Ok(new) => {
                let mut cur = r.current.lock().unwrap_or_else(|p| p.into_inner());
                let applied = r.sampler.apply(&new);
                *cur = new;
                r.metrics.record_reload(true);
                tracing::info!(
                    queries = cur.queries.len(),
                    started = applied.started,
                    restarted = applied.restarted,
                    kept = applied.kept,
                    stopped = applied.stopped,
                    source = %r.source,
                    "catalog reloaded"
                );
                r.changed.notify_one();
                Ok(applied)
            }
            Err(e) => {
                r.metrics.record_reload(false);
                tracing::error!(error = %e, "catalog reload failed; keeping the running catalog");
                r.changed.notify_one();
                Err(e)
            }
        }
    }

    /// Names of the queries of the running catalog.
    pub fn query_names(&self) -> Vec<String> {
        let cur = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.queries.iter().map(|q| q.name.clone()).collect()
    }

    fn current(&self) -> Catalog {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The assembled service, bound and ready to run.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    state: AppState,
    config: Config,
    renderer: Arc<Renderer>,
    sampler: Arc<Sampler>,
    reloader: Reloader,
    changed: Arc<Notify>,
    stop: CancellationToken,
    tracker: TaskTracker,
    plan_guard: Option<Arc<crate::plans::guard::PlanGuard>>,
    slow_log: Option<Arc<crate::slowlog::SlowLogReader>>,
    web: Arc<WebSecurity>,
    http_metrics: crate::http::metrics::HttpMetrics,
}

impl App {
    /// Builds the service and binds its listener; no database connection is made yet.
    pub async fn build(config: Config, catalog: Catalog) -> Result<Self, AppError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.listen,
                source,
            })?;
        Self::build_on(listener, config, catalog).await
    }

    /// Builds the service on a listener bound beforehand (the demo binds its port before it
    /// spends time on a cluster); `config.listen` is not bound again.
    pub async fn build_on(
        listener: TcpListener,
        config: Config,
        catalog: Catalog,
    ) -> Result<Self, AppError> {
        let w = &config.settings.web;
        let web = Arc::new(WebSecurity::load(
            w.config_file.clone(),
            w.open_health,
            w.landing_page,
        )?);
        let budget =
            crate::db::lease::Budget::new(crate::db::pool::build(&config.pool_settings())?);
        let mut registry = Registry::default();
        let metrics = Arc::new(SamplerMetrics::register(&mut registry));
        let http_metrics = crate::http::metrics::HttpMetrics::register(&mut registry);
        let plan_guard = config.plans.clone().map(|g| {
            crate::plans::guard::PlanGuard::new(
                &mut registry,
                budget.clone(),
                g,
                config.lock_timeout,
            )
        });
        let slow_log = config.slow_log.as_ref().map(|s| {
            crate::slowlog::SlowLogReader::new(
                &mut registry,
                budget.clone(),
                crate::slowlog::ReaderSettings {
                    interval: s.interval,
                    timeout: s.timeout,
                    lock_timeout: config.lock_timeout,
                    chunk_bytes: s.chunk_bytes,
                    max_series: s.max_series,
                },
            )
        });
        let snapshot = Arc::new(Snapshot::default());
        let renderer = Arc::new(Renderer::new(registry, snapshot.clone()));
        let changed = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let sampler = Sampler::new(
            budget,
            snapshot.clone(),
            metrics.clone(),
            changed.clone(),
            SamplerSettings {
                lock_timeout: config.lock_timeout,
                max_backoff: config.reconnect_max_backoff,
                probe_timeout: config.probe_timeout,
            },
            tracker.clone(),
            stop.clone(),
        );
        let summary = format!(
            "database: {} ({})\npool_size: {}\ncatalog: {} ({} queries)\n{}",
            config.target,
            config.target.tls(),
            config.pool_size,
            catalog.source,
            catalog.queries.len(),
            serde_json::to_string_pretty(&config.settings).unwrap_or_default()
        );
        let state = AppState {
            exposition: renderer.handle(),
            snapshot,
            health_query: catalog.health_query.as_deref().map(Arc::from),
            config_summary: Arc::new(summary),
        };
        let reloader = Reloader {
            inner: Arc::new(ReloaderInner {
                source: catalog.source.clone(),
                defaults: config.catalog_defaults(),
                health_query: catalog.health_query.clone(),
                current: Mutex::new(catalog),
                sampler: sampler.clone(),
                metrics,
                changed: changed.clone(),
                web: web.clone(),
            }),
        };
        renderer.render();
        Ok(Self {
            listener,
            state,
            config,
            renderer,
            sampler,
            reloader,
            changed,
            stop,
            tracker,
            plan_guard,
            slow_log,
            web,
            http_metrics,
        })
    }

    /// The address the listener is bound to (read it back after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The handle that reloads the catalog (what SIGHUP calls); always the same reloader.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The state the router serves (for tests that drive the router without a socket).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The slow-statement log reader, when configured (tests read its counter).
    pub fn slow_log(&self) -> Option<Arc<crate::slowlog::SlowLogReader>> {
        self.slow_log.clone()
    }

    /// The sampler (for tests that drive ticks directly).
    pub fn sampler(&self) -> Arc<Sampler> {
        self.sampler.clone()
    }

    /// Starts the probe and the catalog's queries and serves HTTP until `shutdown`
    /// completes; then stops every background task and waits for them.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        self.sampler.start_probe();
        if let Some(g) = &self.plan_guard {
            g.start(&self.tracker, self.stop.clone(), self.changed.clone());
        }
        if let Some(r) = &self.slow_log {
            r.start(&self.tracker, self.stop.clone(), self.changed.clone());
        }
        self.sampler.apply(&self.reloader.current());
        let renderer = self.renderer.clone();
        let changed = self.changed.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = changed.notified() => renderer.render(),
                }
            }
        });
        let tls = self.web.tls();
        tracing::info!(address = %self.local_addr(), https = tls.is_some(), "serving /metrics");
        let app = router(self.state.clone(), self.config.request_timeout);
        let app = crate::http::auth::protect(app, self.web.clone());
        let stop = self.stop.clone();
        let limits = crate::http::server::Limits {
            phase_timeout: self.config.request_timeout,
            max_connections: self.config.max_http_connections,
        };
        let served = crate::http::server::serve(
            self.listener,
            app,
            tls,
            limits,
            self.http_metrics.clone(),
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = stop.cancelled() => {}
                }
            },
        )
        .await;
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        tracing::info!("stopped");
        served.map_err(AppError::Serve)
    }
}
