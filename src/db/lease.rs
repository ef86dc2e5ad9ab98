//! The connection budget, held on the server's side too: a [`Budget`] hands out pooled
//! connections as [`Lease`]s, and a connection whose server session may still be busy never
//! leaves the budget.
//!
//! A lease that is dropped without [`Lease::release`] (its run was cancelled by a reload or a
//! shutdown, or the server did not answer in time) leaves its connection in an unknown state:
//! a statement may still run on the server, or the backend may be stopped. Dropping such a
//! connection would close its socket and free its pool slot at once, while its backend lives
//! on until it has finished what was sent (a backend notices a closed socket only when it next
//! reads or writes), so the next checkout would open one server connection more than the
//! budget. So the connection *settles* instead: a task
//! keeps it, and with it its slot, queues a `ROLLBACK` behind whatever is in flight, and hands
//! the connection back to the pool only once the server has answered all of it, or once the
//! connection is closed (the pool's recycle check then discards it). A backend that never
//! answers keeps its slot: pgpulse then has fewer connections, never more.
//!
//! The [`Budget`] also knows, per lease, by when the server should have answered; the probe
//! uses that to tell a budget busy with work in progress from a budget held by connections
//! the server no longer answers ([`Budget::unanswered`]).
//!
//! Concurrency: the ledger is one `std::sync::Mutex` around a small map (at most one entry
//! per pooled connection), held for a map operation and never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool, PoolError, Timeouts};

/// The pool with its ledger of leases; cheap to clone (clones share both).
#[derive(Debug, Clone)]
pub struct Budget {
    pool: Pool,
    ledger: Arc<Ledger>,
}

/// When each lease out should have had its answer (settling ones keep their work's time).
#[derive(Debug, Default)]
struct Ledger {
    next: AtomicU64,
    due: Mutex<HashMap<u64, Instant>>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Instant>> {
        // Poisoning only means a panic elsewhere while holding a plain map.
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self, due: Instant) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, due);
        id
    }

    fn set(&self, id: u64, due: Instant) {
        if let Some(d) = self.lock().get_mut(&id) {
            *d = due;
        }
    }

    fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn unanswered(&self, now: Instant) -> bool {
        let due = self.lock();
        !due.is_empty() && due.values().all(|d| *d <= now)
    }
}

impl Budget {
    /// Wraps the pool; its `max_size` is the budget.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            ledger: Arc::new(Ledger::default()),
        }
    }

    /// Takes a connection, waiting at most `wait` (the pool's wait timeout when `None`) for a
    /// free slot, and the pool's connect timeout for a new connection. `answer_within` is how
    /// long the holder's work may go without the server's answer before the connection counts
    /// as unanswered.
    pub async fn lease(
        &self,
        wait: Option<Duration>,
        answer_within: Duration,
    ) -> Result<Lease, PoolError> {
        let defaults = self.pool.timeouts();
        let timeouts = Timeouts {
            wait: wait.or(defaults.wait),
            ..defaults
        };
        let obj = self.pool.timeout_get(&timeouts).await?;
        let id = self.ledger.open(Instant::now() + answer_within);
        Ok(Lease {
            obj: Some(obj),
            id,
            ledger: self.ledger.clone(),
            reset: None,
        })
    }

    /// Closes the pooled connections idle for longer than `idle`; returns how many.
    pub fn close_idle(&self, idle: Duration) -> usize {
        self.pool.retain(|_, m| m.last_used() <= idle).removed.len()
    }

    /// Closes the pool: idle connections close now, leased ones when they come back (a removed
    /// fleet target's connections are gone once its tasks have stopped).
    pub fn close(&self) {
        self.pool.close();
    }

    /// Whether the budget is held by connections the server does not answer: at least one
    /// lease is out and every lease out is past the time its answer was due (settling ones
    /// included: they keep the time of the work they abandoned). A budget busy with work still
    /// within its time is not unanswered.
    pub fn unanswered(&self) -> bool {
        self.ledger.unanswered(Instant::now())
    }
}

/// A pooled connection in use. [`Lease::release`] hands it back; dropping it otherwise lets
/// it settle (module docs) before its slot is free again.
#[derive(Debug)]
pub struct Lease {
    obj: Option<Object>,
    id: u64,
    ledger: Arc<Ledger>,
    reset: Option<&'static str>,
}

impl Lease {
    /// The connection (present until released or dropped).
    pub fn client(&mut self) -> Option<&mut Object> {
        self.obj.as_mut()
    }

    /// Sets when the server's answer to the holder's next work is due (for a lease kept across
    /// several pieces of work).
    pub fn answer_within(&mut self, d: Duration) {
        self.ledger.set(self.id, Instant::now() + d);
    }

    /// A statement the connection runs after its `ROLLBACK` when it settles, for session
    /// state a rollback keeps (a prepared statement); its error is ignored.
    pub fn reset_with(&mut self, sql: &'static str) {
        self.reset = Some(sql);
    }

    /// Hands the connection back to the pool: its session is idle, outside a transaction.
    pub fn release(mut self) {
        drop(self.obj.take());
        self.ledger.close(self.id);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(obj) = self.obj.take() else {
            return;
        };
        // The answer stays due when the abandoned work's was: a run cancelled by a reload is
        // still within its time, one that got no answer in time is already past it.
        let (id, ledger, reset) = (self.id, self.ledger.clone(), self.reset);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(settle(obj, id, ledger, reset));
            }
            // No runtime left (the process is ending): the connection goes with it.
            Err(_) => {
                drop(Object::take(obj));
                ledger.close(id);
            }
        }
    }
}

/// Keeps `obj` (and its slot) until its server session has answered everything sent on it,
/// then hands it back to the pool.
async fn settle(obj: Object, id: u64, ledger: Arc<Ledger>, reset: Option<&'static str>) {
    if !obj.is_closed() {
        // Queued behind whatever the abandoned work left in flight, so it completes only once
        // the server answered all of that; it also ends a transaction left open. The session's
        // own statement_timeout and lock_timeout (pool options) bound it on the server.
        match obj.simple_query("ROLLBACK").await {
            Ok(_) => {
                if let Some(sql) = reset {
                    let _ = obj.simple_query(sql).await;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "a settling connection failed; the pool discards it")
            }
        }
    }
    // Back to the pool, whose recycle check discards it when it is closed.
    drop(obj);
    ledger.close(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_unanswered_only_when_every_lease_out_is_overdue() {
        let ledger = Ledger::default();
        let now = Instant::now();
        assert!(!ledger.unanswered(now), "nothing out: nothing unanswered");
        let late = ledger.open(now);
        let busy = ledger.open(now + Duration::from_secs(5));
        assert!(
            !ledger.unanswered(now),
            "one lease is still within its time"
        );
        ledger.set(busy, now);
        assert!(ledger.unanswered(now));
        ledger.close(late);
        ledger.close(busy);
        assert!(!ledger.unanswered(now));
        assert!(
            ledger.lock().is_empty(),
            "closed leases leave nothing behind"
        );
    }
}
