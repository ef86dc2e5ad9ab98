//! Idling: a query with `idle_without: SIGNAL` sends no statement in a tick when its last
//! result found nothing (every value 0, no row kept) and its server's signalling query (`signals:
//! SIGNAL`, server-wide, through whichever target leads the server) has run lately and seen
//! nothing since that result's run started: the result stands as it is. So the lock
//! queries of a server and of every database at it cost one statement a second while no
//! session waits for a lock. The query runs as usual when the signal is seen or is not fresh (the
//! signalling query failing, overrunning, gated out or not in the catalog), and at least
//! every `expire_after` of its own (a trade table created or dropped shows then): a result
//! never stands longer than a failing query's would.

use std::sync::Arc;
use std::time::Instant;

use super::Sampler;
use crate::catalog::QuerySpec;
use crate::snapshot::QueryResult;

impl Sampler {
    /// Whether `spec` idles in this tick: its last result, of this very spec, stands.
    pub(super) fn idles(&self, spec: &Arc<QuerySpec>) -> bool {
        let Some(signal) = spec.idle_without else {
            return false;
        };
        let Some(last) = self.snapshot.result(&spec.name) else {
            return false;
        };
        Arc::ptr_eq(&last.spec, spec)
            && last.found_nothing()
            && last.started.elapsed() < spec.expire_after
            && self.settings.seat.quiet_since(signal.name(), last.started)
    }

    /// Tells the server what a run of `spec` that started at `started` found, when `spec`
    /// signals something.
    pub(super) fn signal(&self, spec: &QuerySpec, started: Instant, result: &QueryResult) {
        if let Some(signal) = spec.signals {
            let seen = !result.found_nothing();
            self.settings
                .seat
                .signal(signal.name(), started, seen, spec.interval);
        }
    }
}
