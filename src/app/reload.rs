//! The reloader: what SIGHUP calls. It reads the catalog and the web configuration again and
//! hands the catalog to the sampler, the owner of the current catalog, as a diff; a bad file
//! keeps the running one.

use std::sync::Arc;

use tokio::sync::Notify;

use super::metrics::AppMetrics;
use crate::catalog::{Catalog, CatalogError, Defaults, Source};
use crate::http::auth::WebSecurity;
use crate::sampler::{Applied, Sampler};

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

/// Reloads the catalog on request (SIGHUP); every clone drives the same sampler.
#[derive(Debug, Clone)]
pub struct Reloader {
    inner: Arc<ReloaderInner>,
}

#[derive(Debug)]
struct ReloaderInner {
    source: Source,
    defaults: Defaults,
    health_query: Option<String>,
    sampler: Arc<Sampler>,
    metrics: AppMetrics,
    changed: Arc<Notify>,
    web: Arc<WebSecurity>,
}

impl Reloader {
    /// A reloader of the catalog at `source` (loaded with `defaults`) into `sampler`; the
    /// health query of the running service cannot change by a reload.
    pub(super) fn new(
        sampler: Arc<Sampler>,
        defaults: Defaults,
        metrics: AppMetrics,
        changed: Arc<Notify>,
        web: Arc<WebSecurity>,
    ) -> Self {
        let catalog = sampler.catalog();
        Self {
            inner: Arc::new(ReloaderInner {
                source: catalog.source,
                defaults,
                health_query: catalog.health_query,
                sampler,
                metrics,
                changed,
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
        let outcome = self.load();
        r.metrics.record_reload(outcome.is_ok());
        let result = match outcome {
            Ok(new) => {
                let queries = new.queries.len();
                let applied = r.sampler.apply(new);
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
        };
        r.changed.notify_one();
        result
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
