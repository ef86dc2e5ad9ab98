//! Scheduling: the loop of one query (first run at its offset once the probe has given its
//! first verdict, then every interval; a run still in flight when the next tick comes skips
//! that tick) and what one tick does: skip while the database is down, gate, idle (see
//! [`super::idle`]), run, then record the outcome under the roster's generation check.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::metrics::RunOutcome;
use super::{Sampler, gate, run};
use crate::catalog::QuerySpec;
use crate::db::outcome::{ErrorKind, RunError};

impl Sampler {
    pub(super) async fn query_loop(
        self: Arc<Self>,
        spec: Arc<QuerySpec>,
        offset: Duration,
        stop: CancellationToken,
    ) {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(offset) => {}
        }
        // Before the probe's first verdict the database is neither up nor down: a first run
        // skipped then would wait a whole interval (a minute for some) for its next chance.
        let mut probed = self.probed.subscribe();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = probed.wait_for(|probed| *probed) => {}
        }
        crate::clock::every(spec.interval, &stop, || self.tick(&spec)).await;
    }

    /// One tick of a query: gate, run, publish or record the failure, wake the renderer.
    pub async fn tick(&self, spec: &Arc<QuerySpec>) {
        if !self.snapshot.is_up() {
            self.commit(spec, || {
                let series = self.snapshot.fail(
                    spec,
                    "database unreachable".to_owned(),
                    SystemTime::now(),
                    false,
                );
                self.metrics.record_skip(spec, series);
            });
            self.changed.notify_one();
            return;
        }
        if !self.gate(spec) {
            self.changed.notify_one();
            return;
        }
        if self.idles(spec) {
            // Only a self-metric counts it: no render for that alone.
            self.commit(spec, || self.metrics.record_idle(spec));
            return;
        }
        let (timer, started) = (self.metrics.start_run(spec), Instant::now());
        let lock_timeout = self.settings.lock_timeout;
        let outcome = match spec.derive {
            Some(family) => {
                self.relations
                    .sample(&self.budget, spec, family, lock_timeout)
                    .await
            }
            None => {
                let binds = run::Bound::of(spec, &self.settings);
                run::sample_once(&self.budget, spec, lock_timeout, &binds).await
            }
        };
        // A run longer than the interval makes the ticker skip the ticks it overran.
        let overran = (timer.elapsed().as_secs_f64() / spec.interval.as_secs_f64()).floor() as u64;
        let maybe_down = self
            .commit(spec, || match outcome {
                Ok(mut sampled) => {
                    sampled.result.started = started;
                    self.signal(spec, started, &sampled.result);
                    self.record_published(spec, sampled, overran);
                    false
                }
                Err(e) => self.record_failed(spec, &e, overran),
            })
            .unwrap_or(false);
        drop(timer);
        if maybe_down {
            // Let the probe confirm and take over reconnecting.
            self.probe_once().await;
        }
        self.changed.notify_one();
    }

    /// Whether gating lets `spec` run on this server; records the verdict.
    fn gate(&self, spec: &Arc<QuerySpec>) -> bool {
        let reason = gate::check(
            spec,
            self.snapshot.server_version(),
            &self.server,
            &self.settings.seat,
        );
        let enabled = reason.is_none();
        self.commit(spec, || {
            self.metrics.record_gate(spec, enabled);
            self.snapshot.set_enabled(&spec.name, enabled, reason);
        });
        enabled
    }

    /// Publishes a successful run and records it (called under the roster).
    fn record_published(&self, spec: &QuerySpec, sampled: run::Sampled, overran: u64) {
        let (nulls, dropped) = (sampled.stats.nulls, sampled.stats.dropped);
        let published = self
            .snapshot
            .publish(sampled.result, &sampled.stats.statements);
        let (series, rolled_dropped, counter_drops) = published
            .map(|p| (p.series, p.dropped, p.counter_drops))
            .unwrap_or_default();
        let dropped = dropped + rolled_dropped;
        if dropped > 0 {
            tracing::warn!(query = %spec.name, dropped, budget = spec.max_series, "series over budget dropped");
        }
        let outcome = RunOutcome::Published {
            series,
            dropped,
            nulls,
            counter_drops,
        };
        self.metrics.record_run(spec, overran, &outcome);
    }

    /// Records a failed run (called under the roster); whether the failure may mean the
    /// database is down.
    fn record_failed(&self, spec: &QuerySpec, e: &RunError, overran: u64) -> bool {
        // The server's message may quote column values: details at debug level only.
        // Without the monitoring schema the probe has said once what to do.
        if e.kind == ErrorKind::Unavailable && self.server.schema_missing() {
            tracing::debug!(query = %spec.name, kind = e.kind.as_str(), "query failed");
        } else {
            tracing::warn!(query = %spec.name, kind = e.kind.as_str(), "query failed");
        }
        tracing::debug!(query = %spec.name, kind = e.kind.as_str(), error = %e.message, "query failure detail");
        if e.kind == ErrorKind::Unavailable {
            self.snapshot.clear(&spec.name);
        }
        let series = self
            .snapshot
            .fail(spec, e.kind.summary().to_owned(), SystemTime::now(), true);
        let outcome = RunOutcome::Failed {
            kind: e.kind,
            series,
        };
        self.metrics.record_run(spec, overran, &outcome);
        e.maybe_down()
    }
}
