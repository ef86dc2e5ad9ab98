//! `App::build` / `App::run_until_stopped`: the one seam used by `main` and by the tests.
//!
//! Following mini-redis, the service takes a bound listener and a shutdown future; background
//! tasks (probe, query loops, renderer) stop through a [`CancellationToken`] and are awaited
//! through a [`TaskTracker`] before `run_until_stopped` returns.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Catalog, Defaults};
use crate::config::Config;
use crate::exposition::self_metrics::ResultLabel;
use crate::exposition::{Renderer, SelfMetrics};
use crate::http::auth::WebSecurity;
use crate::http::{AppState, router};
use crate::sampler::{Sampler, Store};

/// Errors of building the service.
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

/// Reloads the catalog on request (SIGHUP): a bad file keeps the running catalog.
#[derive(Debug, Clone)]
pub struct Reloader {
    inner: Arc<ReloaderInner>,
}

#[derive(Debug)]
struct ReloaderInner {
    path: PathBuf,
    defaults: Defaults,
    current: Mutex<(Catalog, CancellationToken)>,
    sampler: Arc<Sampler>,
    metrics: Arc<SelfMetrics>,
    tracker: TaskTracker,
    stop: CancellationToken,
    changed: Arc<Notify>,
    web: Arc<WebSecurity>,
}

impl Reloader {
    /// Reads the catalog file again; on success switches to it, on failure keeps the old one.
    /// Returns the error message when the new file was refused.
    pub fn reload(&self) -> Result<usize, String> {
        let r = &self.inner;
        match r.web.reload() {
            Ok(true) => tracing::info!("web configuration reloaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "web configuration reload failed; keeping the running one")
            }
        }
        match Catalog::load(&r.path, r.defaults) {
            Ok(new) => {
                let count = new.queries.len();
                let mut cur = r.current.lock().unwrap_or_else(|p| p.into_inner());
                cur.1.cancel();
                let token = r.stop.child_token();
                r.sampler.forget(&cur.0, &new);
                r.sampler.start(&new, &r.tracker, token.clone());
                *cur = (new, token);
                r.metrics
                    .reloads
                    .get_or_create(&ResultLabel {
                        result: "success".into(),
                    })
                    .inc();
                r.metrics.reload_ok.set(1);
                r.metrics.reload_time.set(now());
                tracing::info!(queries = count, file = %r.path.display(), "catalog reloaded");
                r.changed.notify_one();
                Ok(count)
            }
            Err(e) => {
                r.metrics
                    .reloads
                    .get_or_create(&ResultLabel {
                        result: "failure".into(),
                    })
                    .inc();
                r.metrics.reload_ok.set(0);
                tracing::error!(error = %e, "catalog reload failed; keeping the running catalog");
                r.changed.notify_one();
                Err(e.to_string())
            }
        }
    }

    /// Names of the queries of the running catalog.
    pub fn query_names(&self) -> Vec<String> {
        let cur = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.0.queries.iter().map(|q| q.name.clone()).collect()
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The assembled service, bound and ready to run.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    state: AppState,
    config: Config,
    catalog: Catalog,
    renderer: Arc<Renderer>,
    sampler: Arc<Sampler>,
    metrics: Arc<SelfMetrics>,
    changed: Arc<Notify>,
    stop: CancellationToken,
    tracker: TaskTracker,
    web: Arc<WebSecurity>,
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
        let w = &config.settings.web;
        let web = Arc::new(WebSecurity::load(
            w.config_file.clone(),
            w.open_health,
            w.landing_page,
        )?);
        let pool = crate::db::pool::build(&config)?;
        let mut registry = Registry::default();
        let metrics = Arc::new(SelfMetrics::register(&mut registry));
        metrics.reload_time.set(now());
        let store = Arc::new(Store::default());
        let renderer = Arc::new(Renderer::new(registry, store.clone()));
        let changed = Arc::new(Notify::new());
        let sampler = Sampler::new(
            pool,
            store.clone(),
            metrics.clone(),
            changed.clone(),
            config.lock_timeout,
            config.reconnect_max_backoff,
        );
        let summary = format!(
            "database: {} ({})\npool_size: {}\nqueries_file: {} ({} queries)\n{}",
            config.target,
            config.target.tls(),
            config.pool_size,
            config.queries_file.display(),
            catalog.queries.len(),
            serde_json::to_string_pretty(&config.settings).unwrap_or_default()
        );
        let state = AppState {
            exposition: renderer.handle(),
            sampler: sampler.clone(),
            store,
            config_summary: Arc::new(summary),
        };
        renderer.render();
        Ok(Self {
            listener,
            state,
            config,
            catalog,
            renderer,
            sampler,
            metrics,
            changed,
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            web,
        })
    }

    /// The address the listener is bound to (read it back after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The handle that reloads the catalog (what SIGHUP calls).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            inner: Arc::new(ReloaderInner {
                path: self.catalog.source.clone(),
                defaults: Defaults {
                    interval: self.config.default_interval,
                    timeout: self.config.default_timeout,
                },
                current: Mutex::new((self.catalog.clone(), self.stop.child_token())),
                sampler: self.sampler.clone(),
                metrics: self.metrics.clone(),
                tracker: self.tracker.clone(),
                stop: self.stop.clone(),
                changed: self.changed.clone(),
                web: self.web.clone(),
            }),
        }
    }

    /// The state the router serves (for tests that drive the router without a socket).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Starts sampling with `reloader`'s catalog and serves HTTP until `shutdown` completes;
    /// then stops every background task and waits for them.
    pub async fn run_until_stopped(
        self,
        reloader: Reloader,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        self.sampler.start_probe(&self.tracker, self.stop.clone());
        {
            let cur = reloader
                .inner
                .current
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.sampler.start(&cur.0, &self.tracker, cur.1.clone());
        }
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
        let served = crate::http::auth::serve(self.listener, app, tls, async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop.cancelled() => {}
            }
        })
        .await;
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        tracing::info!("stopped");
        served.map_err(AppError::Serve)
    }
}
