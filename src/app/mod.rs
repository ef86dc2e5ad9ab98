//! `App::build` / `App::run_until_stopped`: the one seam used by `main` and by the tests.
//! It wires the flow: catalog → sampler → snapshot → exposition → http.
//!
//! Following mini-redis, the service takes a bound listener and a shutdown future; background
//! tasks (probe, query loops, renderer, plan guard, slow-log reader, SIGHUP) stop through a
//! [`CancellationToken`] and are awaited through a [`TaskTracker`] before
//! `run_until_stopped` returns.
//!
//! - [`metrics`]: the process's own metrics (build, reloads).
//! - [`reload`]: the [`Reloader`], created once in `build`; every clone drives the same
//!   sampler, the owner of the current catalog.

pub mod metrics;
pub(crate) mod reload;

pub use reload::{ReloadError, Reloader};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::exposition::Renderer;
use crate::fleet::Fleet;
use crate::http::auth::WebSecurity;
use crate::http::{AppState, router};
use crate::snapshot::Snapshot;

/// Errors of building and running the service.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The pool could not be built.
    #[error(transparent)]
    Pool(#[from] crate::db::pool::PoolError),
    /// The web configuration file (TLS, basic auth) is wrong.
    #[error(transparent)]
    Web(#[from] crate::http::auth::AuthError),
    /// The SIGHUP handler could not be installed.
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
    /// Serving failed.
    #[error("http server: {0}")]
    Serve(std::io::Error),
}

/// The assembled service, bound and ready to run.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    state: AppState,
    config: Config,
    fleet: Fleet,
    /// Fleet mode: the renderer of `/metrics` (the process's own metrics) and what tells it
    /// a target rendered.
    process: Option<(Arc<Renderer>, Arc<Notify>)>,
    reloader: Reloader,
    stop: CancellationToken,
    tracker: TaskTracker,
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
        let web = Arc::new(config.web_security()?);
        let mut registry = Registry::default();
        let app_metrics = metrics::AppMetrics::register(&mut registry);
        let http_metrics = crate::http::metrics::HttpMetrics::register(&mut registry);
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        let mut state = AppState {
            exposition: Arc::default(),
            snapshot: Arc::new(Snapshot::default()),
            health_query: catalog.health_query.as_deref().map(Arc::from),
            config_summary: Arc::new(summary(&config, &catalog)),
            targets: None,
            listen: config.listen,
        };
        let defaults = config.catalog_defaults();
        let (fleet, process) = match config.fleet.clone() {
            Some(f) => {
                let rendered = Arc::new(Notify::new());
                let fleet = Fleet::many(
                    config.clone(),
                    f,
                    catalog,
                    &mut registry,
                    rendered.clone(),
                    stop.clone(),
                    tracker.clone(),
                );
                let renderer = Arc::new(Renderer::process(registry));
                renderer.render();
                state.exposition = renderer.handle();
                state.targets = Some(fleet.published());
                (fleet, Some((renderer, rendered)))
            }
            None => {
                let fleet = Fleet::single(
                    config.clone(),
                    catalog,
                    registry,
                    stop.clone(),
                    tracker.clone(),
                )?;
                if let Some(view) = fleet.single_view() {
                    state.exposition = view.exposition;
                    state.snapshot = view.snapshot;
                }
                (fleet, None)
            }
        };
        let reloader = Reloader::new(fleet.clone(), defaults, app_metrics, web.clone());
        Ok(Self {
            listener,
            state,
            config,
            fleet,
            process,
            reloader,
            stop,
            tracker,
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

    /// Reloads on every SIGHUP until the service stops (a task on the tracker).
    pub fn reload_on_sighup(&self) -> Result<(), AppError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signal)?;
        let (reloader, stop) = (self.reloader.clone(), self.stop.clone());
        self.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    got = hup.recv() => match got {
                        Some(()) => {
                            let _ = reloader.reload();
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(())
    }

    /// Starts the probe and the catalog's queries and serves HTTP until `shutdown`
    /// completes; then stops every background task and waits for them.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        self.fleet.start();
        if let Some((renderer, rendered)) = &self.process {
            self.tracker.spawn(
                renderer
                    .clone()
                    .render_on_change(rendered.clone(), self.stop.clone()),
            );
        }
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
        self.fleet.stop().await;
        self.tracker.close();
        self.tracker.wait().await;
        tracing::info!("stopped");
        served.map_err(AppError::Serve)
    }
}

/// The landing page's summary of the configuration (no secrets).
fn summary(config: &Config, catalog: &Catalog) -> String {
    let database = match &config.fleet {
        Some(f) => format!(
            "fleet: {} targets in the config file{}{}, at most {} connections, {} per target",
            f.targets.len(),
            match f.discoveries.len() {
                0 => String::new(),
                n => format!(", the databases of {n} servers (discovered)"),
            },
            f.file
                .as_ref()
                .map(|p| format!(" and those of {}", p.display()))
                .unwrap_or_default(),
            f.max_connections,
            f.pool_size
        ),
        None => format!("database: {} ({})", config.target, config.target.tls()),
    };
    format!(
        "{database}\npool_size: {}\ncatalog: {} ({} queries)\n{}",
        config.pool_size,
        catalog.source,
        catalog.queries.len(),
        serde_json::to_string_pretty(&config.settings).unwrap_or_default()
    )
}
