//! The reloader: what SIGHUP calls. It reads the catalog and the web configuration again and
//! hands the catalog to every target's sampler as a diff; a bad file keeps the running one. In
//! fleet mode it also reads the target list again (a diff by target name).

use std::sync::Arc;

use super::metrics::AppMetrics;
use crate::catalog::{Catalog, CatalogError, Defaults, Source};
use crate::fleet::Fleet;
use crate::http::auth::WebSecurity;
use crate::sampler::Applied;

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

/// Reloads the catalog on request (SIGHUP); every clone drives the same fleet.
#[derive(Debug, Clone)]
pub struct Reloader {
    inner: Arc<ReloaderInner>,
}

#[derive(Debug)]
struct ReloaderInner {
    source: Source,
    defaults: Defaults,
    health_query: Option<String>,
    fleet: Fleet,
    metrics: AppMetrics,
    web: Arc<WebSecurity>,
}

impl Reloader {
    /// A reloader of the fleet's catalog (loaded with `defaults`) and target list; the
    /// health query of the running service cannot change by a reload.
    pub(super) fn new(
        fleet: Fleet,
        defaults: Defaults,
        metrics: AppMetrics,
        web: Arc<WebSecurity>,
    ) -> Self {
        let catalog = fleet.catalog();
        Self {
            inner: Arc::new(ReloaderInner {
                source: catalog.source,
                defaults,
                health_query: catalog.health_query,
                fleet,
                metrics,
                web,
            }),
        }
    }

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
        // A target list that does not read is logged and counted by the fleet.
        let _ = r.fleet.refresh();
        let outcome = self.load();
        r.metrics.record_reload(outcome.is_ok());
        match outcome {
            Ok(new) => {
                let queries = new.queries.len();
                let applied = r.fleet.apply_catalog(new);
                tracing::info!(
                    queries,
                    started = applied.started,
                    restarted = applied.restarted,
                    kept = applied.kept,
                    stopped = applied.stopped,
                    source = %r.source,
                    "catalog reloaded"
                );
                Ok(applied)
            }
            Err(e) => {
                tracing::error!(error = %e, "catalog reload failed; keeping the running catalog");
                Err(e)
            }
        }
    }

    /// The new catalog, if it loads and keeps the running health query.
    fn load(&self) -> Result<Catalog, ReloadError> {
        let r = &self.inner;
        let new = Catalog::from_source(&r.source, r.defaults)?;
        if new.health_query == r.health_query {
            Ok(new)
        } else {
            Err(ReloadError::HealthQueryChanged {
                running: r.health_query.clone(),
                new: new.health_query,
            })
        }
    }
}
