//! Discovery of a server's databases: one task per `discover_databases` entry reads the
//! server's list of databases every interval, on a connection of its own (within the fleet's
//! cap, closed after each read, bounded by the probe's timeouts), selects from it
//! ([`Discovery::select`]) and, when the selection changed, applies the target list again. A
//! read that fails keeps the last good selection: a server that is down keeps its targets
//! (each reports `pg_up` 0) instead of vanishing from Prometheus.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::MissedTickBehavior;

use super::Fleet;
use crate::config::discover::Discovery;
use crate::db::outcome::{ErrorKind, RunError, classify, pool_error};
use crate::db::pool::{self, PoolSettings};
use crate::db::session::{CLIENT_GRACE, begin_read_only, timeouts_sql};
use crate::db::slots::Cap;

/// The databases each discovery selected last, by discovery name.
#[derive(Debug, Clone, Default)]
pub(super) struct Found(Arc<Mutex<BTreeMap<String, Vec<String>>>>);

impl Found {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Vec<String>>> {
        // Poisoning only means a panic elsewhere while holding a plain map.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of every selection.
    pub(super) fn now(&self) -> BTreeMap<String, Vec<String>> {
        self.lock().clone()
    }

    /// Records `databases` as `name`'s selection; whether it changed.
    fn record(&self, name: &str, databases: Vec<String>) -> bool {
        let mut map = self.lock();
        if map.get(name) == Some(&databases) {
            return false;
        }
        map.insert(name.to_owned(), databases);
        true
    }
}

/// Databases a role may connect to, templates and closed ones left out; at most 10,000 rows
/// are read, whatever a tenant creates.
const LIST: &str = "SELECT datname FROM pg_catalog.pg_database \
     WHERE datallowconn AND NOT datistemplate \
     AND pg_catalog.has_database_privilege(oid, 'CONNECT') \
     ORDER BY datname LIMIT 10000";

/// Starts `d`'s task on the fleet's tracker: a read at once, then every `d.interval`.
pub(super) fn spawn(fleet: &Fleet, d: Discovery, cap: Cap) {
    let mut settings = fleet.inner.config.pool_settings();
    settings.target = d.base.target.clone();
    settings.size = 1;
    settings.cap = Some(cap);
    settings.password_file = d.base.password_file.clone();
    let (me, stop) = (fleet.clone(), fleet.inner.stop.clone());
    fleet.inner.tracker.spawn(async move {
        let mut tick = tokio::time::interval(d.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let read = tokio::select! {
                _ = stop.cancelled() => return,
                read = async { tick.tick().await; list(&settings).await } => read,
            };
            me.discovered(&d, read);
        }
    });
}

impl Fleet {
    /// Takes a discovery's read: a new selection is recorded and applied; a failure keeps the
    /// last one. Both are counted.
    fn discovered(&self, d: &Discovery, read: Result<Vec<String>, RunError>) {
        let Some((_, _, metrics)) = &self.inner.fleet else {
            return;
        };
        match read {
            Ok(names) => {
                let selected = d.select(names);
                metrics.record_discovery(d.name(), Some(&selected));
                if self.inner.found.record(d.name(), selected.databases) {
                    let _ = self.refresh();
                }
            }
            Err(e) => {
                tracing::warn!(
                    discovery = d.name(),
                    error = %e,
                    "databases not listed; keeping the last list"
                );
                metrics.record_discovery(d.name(), None);
            }
        }
    }
}

/// Reads the server's database names on a connection of its own, closed afterwards; the
/// whole read, connecting included, is bounded on the client too.
async fn list(settings: &PoolSettings) -> Result<Vec<String>, RunError> {
    let deadline = settings.connect_timeout + settings.statement_timeout + CLIENT_GRACE;
    let read = async {
        let pool = pool::build(settings)
            .map_err(|e| RunError::new(ErrorKind::Connection, e.to_string()))?;
        let mut client = pool.get().await.map_err(pool_error)?;
        let sql = timeouts_sql(settings.statement_timeout, settings.lock_timeout);
        let txn = begin_read_only(&mut client, &sql).await?;
        let rows = txn.query(LIST, &[]).await.map_err(|e| classify(&e))?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RunError::new(ErrorKind::Decode, e.to_string()))
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or_else(|_| {
            Err(RunError::new(
                ErrorKind::Timeout,
                "the server did not answer the list of databases in time",
            ))
        })
}
