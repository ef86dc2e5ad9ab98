//! A PgBouncer target: its console sampler ([`Bouncer`]), its registry (the sampler's own
//! metrics and its families) and its rendered body, with tasks of its own. `up` and readiness
//! of its body follow the console's last round.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bouncer::{Bouncer, BouncerSettings};
use crate::exposition::Renderer;
use crate::http::TargetView;
use crate::snapshot::Snapshot;

/// One sampled PgBouncer.
#[derive(Debug)]
pub struct Pooler {
    bouncer: Arc<Bouncer>,
    renderer: Arc<Renderer>,
    /// Empty: what `/health/db` and `/debug/locks` read of a target (a PgBouncer has none).
    snapshot: Arc<Snapshot>,
    changed: Arc<Notify>,
    stop: CancellationToken,
    tracker: TaskTracker,
    labels: Arc<BTreeMap<String, String>>,
}

impl Pooler {
    /// Builds it; nothing connects before [`Pooler::start`]. `rendered` is told after each
    /// render of its body.
    pub fn build(
        settings: BouncerSettings,
        labels: BTreeMap<String, String>,
        stop: &CancellationToken,
        rendered: Option<Arc<Notify>>,
    ) -> Self {
        let mut registry = Registry::default();
        let bouncer = Bouncer::new(settings, &mut registry);
        let mut renderer = Renderer::watching(registry, bouncer.state().liveness.clone());
        if let Some(n) = rendered {
            renderer = renderer.notifying(n);
        }
        renderer.render();
        Self {
            bouncer,
            renderer: Arc::new(renderer),
            snapshot: Arc::new(Snapshot::default()),
            changed: Arc::new(Notify::new()),
            stop: stop.child_token(),
            tracker: TaskTracker::new(),
            labels: Arc::new(labels),
        }
    }

    /// Starts the rounds and the render loop.
    pub fn start(&self) {
        self.bouncer
            .start(&self.tracker, self.stop.clone(), self.changed.clone());
        self.tracker.spawn(
            self.renderer
                .clone()
                .render_on_change(self.changed.clone(), self.stop.clone()),
        );
    }

    /// Stops its tasks and waits for them; the console connection closes with them.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// What HTTP serves of it.
    pub fn view(&self) -> TargetView {
        TargetView {
            exposition: self.renderer.handle(),
            snapshot: self.snapshot.clone(),
            labels: self.labels.clone(),
        }
    }
}
