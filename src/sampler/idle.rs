//! Idling: a query with `idle_without: SIGNAL` sends no statement in a tick when its last
//! run found nothing (every value 0, no row kept) and its server's signalling query (`signals:
//! SIGNAL`, server-wide, through whichever target leads the server) has run lately and seen
//! nothing since that run started: the result stands as it is (an accumulated counter adds
//! nothing, as its run would have). So the lock queries of a server and of every database
//! at it send no statement while no session waits for a lock: `database_load`, which runs
//! every second anyway, tells them. The query runs as usual when the signal is seen or is not fresh (the
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
            && last.found_nothing
            && last.started.elapsed() < spec.expire_after
            && self.settings.seat.quiet_since(signal.name(), last.started)
    }

    /// Tells the server what a run of `spec` that started at `started` found, when `spec`
    /// signals something.
    pub(super) fn signal(&self, spec: &QuerySpec, started: Instant, result: &QueryResult) {
        if let Some(signal) = spec.signals {
            let seen = lock_wait_seen(result);
            self.settings
                .seat
                .signal(signal.name(), started, seen, spec.interval);
        }
    }
}

/// Whether a signalling run saw a lock wait (`lock_waits`, the one signal): in a result
/// labelled by `wait_event_type` (`database_load`), a series of the `Lock` wait event with
/// a value other than 0; in any other, anything found (a value other than 0, a row kept).
fn lock_wait_seen(result: &QueryResult) -> bool {
    let by_wait = result
        .spec
        .labels
        .iter()
        .position(|l| l == "wait_event_type");
    match by_wait {
        Some(i) => result
            .families
            .iter()
            .flatten()
            .any(|s| s.value != 0.0 && s.labels.get(i).is_some_and(|w| w == "Lock")),
        None => !result.found_nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Defaults};
    use crate::snapshot::Series;

    /// A result of a query labelled `labels` with one series per `(labels, value)`.
    fn result(labels: &str, series: &[(&[&str], f64)]) -> QueryResult {
        let yaml = format!(
            "queries:\n  - name: q\n    sql: SELECT 1\n    labels: [{labels}]\n    metrics:\n      - {{column: n, name: pg_n, type: gauge, help: n}}\n"
        );
        let cat = Catalog::parse(&yaml, "q.yaml".as_ref(), Defaults::default()).unwrap();
        let mut r = QueryResult::empty(&cat.queries[0]);
        for (l, v) in series {
            r.families[0].push(Series {
                labels: l.iter().map(|s| (*s).to_owned()).collect(),
                value: *v,
            });
        }
        r.note_found();
        r
    }

    #[test]
    fn a_lock_wait_is_a_series_of_the_lock_wait_event_or_anything_found_without_that_label() {
        let load = "state, wait_event_type, wait_event";
        let cpu: &[&str] = &["active", "CPU", "CPU"];
        let lock: &[&str] = &["active", "Lock", "relation"];
        assert!(!lock_wait_seen(&result(load, &[(cpu, 4.0)])));
        assert!(!lock_wait_seen(&result(load, &[(cpu, 4.0), (lock, 0.0)])));
        assert!(lock_wait_seen(&result(load, &[(cpu, 4.0), (lock, 2.0)])));
        // A label named like the wait event type, but not the Lock wait: no wait.
        let io: &[&str] = &["active", "IO", "DataFileRead"];
        assert!(!lock_wait_seen(&result(load, &[(io, 1.0)])));
        // Without that label (lock_root_load's shape): anything found.
        let roots = "datname";
        assert!(!lock_wait_seen(&result(roots, &[])));
        assert!(!lock_wait_seen(&result(roots, &[(&["trade"], 0.0)])));
        assert!(lock_wait_seen(&result(roots, &[(&["trade"], 1.0)])));
    }
}
