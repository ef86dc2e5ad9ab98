//! Exposition: the whole `/metrics` body, rendered on snapshot changes (at most once per
//! [`MIN_GAP`]) and kept behind an [`ArcSwap`]. A scrape loads the current [`Exposition`] and
//! clones a reference-counted buffer: its cost does not depend on the database or on the number of scrapers. The body is
//! encoded in OpenMetrics text; each render also makes the other forms (Prometheus text, gzip)
//! that scrapers have asked for, so a scrape is a copy of pre-rendered bytes and a form nobody
//! asks for costs no conversion nor compression. Only the first request for a form makes it
//! itself, once.
//!
//! Rendering uses prometheus-client's encoder (OpenMetrics text) over a registry that holds
//! the sampler's self-metrics and a collector of the [`Snapshot`]; the Prometheus 0.0.4 text
//! form is derived from it (counter families named with `_total`, no `# UNIT`/`# EOF`).

use std::io::Write;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use prometheus_client::registry::Registry;

use crate::snapshot::{Liveness, Snapshot};

mod families;

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The least time between two renders of one body. Queries publish at their own moments
/// (a target with 1 s queries changes several times a second); every render encodes the
/// self-metrics and compresses the forms scrapers ask for, so renders are coalesced: a body
/// is at most this much older than the snapshot, far below any scrape interval.
pub const MIN_GAP: std::time::Duration = std::time::Duration::from_millis(1000);

/// The least time between two renders while nobody read the current body: a scraper every
/// 15 s reads one body in fifteen at [`MIN_GAP`], and each render encodes every self-metric
/// and compresses the whole body (a quarter of pgpulse's CPU at 40,000 relations). A body
/// nobody read is replaced at most this often, so a scrape gets a body at most this much
/// older than the snapshot; once a body is read, or when `up` or readiness changes, the next
/// render comes after [`MIN_GAP`] again.
pub const IDLE_GAP: std::time::Duration = std::time::Duration::from_secs(5);

/// What scrapers did, shared by every body of one renderer: which forms they asked for
/// (Prometheus text, its gzip, OpenMetrics gzip), which a render makes; and a notice when a
/// body is first read, which a pending render waits for.
#[derive(Debug, Default)]
struct Wanted {
    forms: [std::sync::atomic::AtomicBool; 3],
    read: tokio::sync::Notify,
}

/// One pre-rendered body: OpenMetrics text, and the other forms scrapers ask for.
#[derive(Debug, Default)]
pub struct Exposition {
    wanted: Arc<Wanted>,
    /// OpenMetrics text format.
    pub openmetrics: Bytes,
    /// Prometheus text format, made from `openmetrics` by the render once asked for.
    text: OnceLock<Bytes>,
    /// Prometheus text format, gzip.
    text_gzip: OnceLock<Bytes>,
    /// OpenMetrics text format, gzip.
    openmetrics_gzip: OnceLock<Bytes>,
    /// Whether the database answered and every enabled query had succeeded at least once
    /// when this body was rendered: readiness follows the body, so a ready service never
    /// serves a body without every query's first result.
    pub ready: bool,
    /// The enabled queries without a successful run yet, when this body was rendered (empty
    /// once readiness is reached).
    pub pending: Vec<String>,
    /// Whether the database answered when this body was rendered.
    pub up: bool,
    /// Whether a scrape read this body ([`Exposition::body`]).
    read: std::sync::atomic::AtomicBool,
}

impl Exposition {
    /// The body in OpenMetrics or Prometheus text, gzip-compressed when `gzip`; renders from
    /// now on make that form too.
    pub fn body(&self, openmetrics: bool, gzip: bool) -> Bytes {
        let form = match (openmetrics, gzip) {
            (true, false) => None,
            (false, false) => Some(0),
            (false, true) => Some(1),
            (true, true) => Some(2),
        };
        // Each flag is written once: later scrapes only read it, so concurrent scrapes do not
        // contend for the cache line.
        let first = |flag: &std::sync::atomic::AtomicBool| {
            !flag.load(std::sync::atomic::Ordering::Relaxed)
                && !flag.swap(true, std::sync::atomic::Ordering::Relaxed)
        };
        if let Some(w) = form.and_then(|i| self.wanted.forms.get(i)) {
            first(w);
        }
        if first(&self.read) {
            self.wanted.read.notify_one();
        }
        self.make(openmetrics, gzip)
    }

    /// The body in a form, made now unless it was already.
    fn make(&self, openmetrics: bool, gzip: bool) -> Bytes {
        match (openmetrics, gzip) {
            (true, false) => self.openmetrics.clone(),
            (true, true) => self
                .openmetrics_gzip
                .get_or_init(|| compress(&self.openmetrics))
                .clone(),
            (false, false) => self.text(),
            (false, true) => self
                .text_gzip
                .get_or_init(|| compress(&self.text()))
                .clone(),
        }
    }

    /// Makes the forms asked for so far, before the body is published.
    fn make_wanted(&self) {
        let asked = |i: usize| {
            self.wanted
                .forms
                .get(i)
                .is_some_and(|w| w.load(std::sync::atomic::Ordering::Relaxed))
        };
        for (i, openmetrics, gzip) in [(0, false, false), (1, false, true), (2, true, true)] {
            if asked(i) {
                self.make(openmetrics, gzip);
            }
        }
    }

    fn text(&self) -> Bytes {
        self.text
            .get_or_init(|| {
                // The renderer writes UTF-8 only; an empty body is the default exposition's.
                let om = std::str::from_utf8(&self.openmetrics).unwrap_or_default();
                Bytes::from(to_prometheus_text(om))
            })
            .clone()
    }
}

/// Renders snapshots and publishes them for scrapes.
#[derive(Debug)]
pub struct Renderer {
    /// The self-metrics.
    registry: Registry,
    /// `None` for the process body of a fleet (its self-metrics only) and for a PgBouncer
    /// target (its collector is in the registry).
    snapshot: Option<Arc<Snapshot>>,
    /// What `up` and readiness follow without a snapshot (a PgBouncer target); neither a
    /// snapshot nor this: always up (the process body).
    liveness: Option<Arc<Liveness>>,
    /// The snapshot's results as encoded by the last render.
    encoded: families::Encoded,
    current: Arc<ArcSwap<Exposition>>,
    /// Told after every render (a fleet's process body shows its targets' states).
    then: Option<Arc<tokio::sync::Notify>>,
}

impl Renderer {
    /// Creates a renderer over a registry (holding the self-metrics) and the snapshot.
    pub fn new(registry: Registry, snapshot: Arc<Snapshot>) -> Self {
        Self {
            registry,
            encoded: families::Encoded::default(),
            snapshot: Some(snapshot),
            liveness: None,
            current: Arc::new(ArcSwap::from_pointee(Exposition::default())),
            then: None,
        }
    }

    /// A renderer of a registry alone: a fleet's `/metrics`, the process's own metrics.
    pub fn process(registry: Registry) -> Self {
        Self {
            registry,
            encoded: families::Encoded::default(),
            snapshot: None,
            liveness: None,
            current: Arc::new(ArcSwap::from_pointee(Exposition::default())),
            then: None,
        }
    }

    /// A body of `registry` alone whose `up` and readiness follow `liveness` (a PgBouncer
    /// target's).
    pub fn watching(registry: Registry, liveness: Arc<Liveness>) -> Self {
        let mut r = Self::process(registry);
        r.liveness = Some(liveness);
        r
    }

    /// Tells `then` after every render.
    pub fn notifying(mut self, then: Arc<tokio::sync::Notify>) -> Self {
        self.then = Some(then);
        self
    }

    /// The handle scrapes read from.
    pub fn handle(&self) -> Arc<ArcSwap<Exposition>> {
        self.current.clone()
    }

    /// Renders on change notices until `stop` is cancelled, at most once per [`MIN_GAP`], and
    /// at most once per [`IDLE_GAP`] while the current body is unread and its `up` and
    /// readiness still hold: notices that arrive during a render or the gap after it are
    /// shown by one render then.
    pub async fn render_on_change(
        self: Arc<Self>,
        changed: Arc<tokio::sync::Notify>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed.notified() => {}
            }
            // A change is pending: looked at again when the current body is read, when
            // another change comes (`up` or readiness may differ) and when its gap ends.
            loop {
                let urgent = self.current_read() || self.state_changed();
                let due = last + if urgent { MIN_GAP } else { IDLE_GAP };
                if tokio::time::Instant::now() >= due {
                    break;
                }
                let read = self.current.load().wanted.clone();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(due) => {}
                    _ = read.read.notified() => {}
                    _ = changed.notified() => {}
                }
            }
            self.render();
            last = tokio::time::Instant::now();
        }
    }

    /// Whether a scrape read the current body.
    fn current_read(&self) -> bool {
        self.current
            .load()
            .read
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `up` or readiness differ from the current body's.
    fn state_changed(&self) -> bool {
        let (up, (succeeded, _)) = self.state();
        let current = self.current.load();
        current.up != up || current.ready != (up && succeeded)
    }

    /// `up`, and whether every enabled query succeeded at least once with those still
    /// pending, from the snapshot (or the liveness without one).
    fn state(&self) -> (bool, (bool, Vec<String>)) {
        match (&self.snapshot, &self.liveness) {
            (Some(s), _) => (s.is_up(), s.readiness()),
            (None, Some(l)) => (l.is_up(), (l.answered(), Vec::new())),
            (None, None) => (true, (true, Vec::new())),
        }
    }

    /// The self-metrics, then the snapshot's families (each result encoded once, when it is
    /// published, and its text reused by later renders), then `# EOF`.
    fn encode(&self, om: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::text::encode(om, &self.registry)?;
        if let Some(snapshot) = &self.snapshot {
            families::strip_eof(om);
            self.encoded.append(snapshot, om)?;
            om.push_str(families::EOF);
        }
        Ok(())
    }

    /// Renders the current snapshot and swaps it in.
    pub fn render(&self) {
        // Read before encoding: a state reached during the encoding shows in the next render.
        let (up, (succeeded, pending)) = self.state();
        let ready = up && succeeded;
        let mut om = String::with_capacity(64 * 1024);
        let whole = self.snapshot.as_ref().map(|s| s.consistency.hold());
        let encoded = self.encode(&mut om);
        drop(whole);
        if let Err(e) = encoded {
            // Only a formatting error of a value can get here; keep serving the last body.
            tracing::error!(error = %e, "render of the exposition failed");
            return;
        }
        let exposition = Exposition {
            wanted: self.current.load().wanted.clone(),
            openmetrics: Bytes::from(om),
            ready,
            pending,
            up,
            ..Exposition::default()
        };
        exposition.make_wanted();
        self.current.store(Arc::new(exposition));
        if let Some(then) = &self.then {
            then.notify_one();
        }
    }
}

fn compress(data: &[u8]) -> Bytes {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// Converts OpenMetrics text into the Prometheus 0.0.4 text format.
pub fn to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut counters = std::collections::HashSet::new();
    // First pass: names of counter families.
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name);
        }
    }
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_with_total_in_the_prometheus_text_format() {
        let om = "# HELP req Requests.\n# TYPE req counter\nreq_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# UNIT g seconds\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP req_total Requests.\n# TYPE req_total counter\nreq_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    /// Every form is made from the rendered OpenMetrics text, on first request, and kept.
    #[test]
    fn each_form_is_made_from_the_openmetrics_body_once() {
        let om = "# TYPE req counter\nreq_total 3\n# EOF\n";
        let e = Exposition {
            openmetrics: Bytes::from(om),
            ..Exposition::default()
        };
        let unzip = |b: Bytes| {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&b[..]), &mut out)
                .unwrap();
            out
        };
        assert_eq!(e.body(true, false), om.as_bytes());
        assert_eq!(unzip(e.body(true, true)), om.as_bytes());
        let text = to_prometheus_text(om);
        assert_eq!(e.body(false, false), text.as_bytes());
        assert_eq!(unzip(e.body(false, true)), text.as_bytes());
        // Kept: the same buffer again, not a new compression.
        assert_eq!(e.body(false, true).as_ptr(), e.body(false, true).as_ptr());
    }

    /// A scrape copies bytes made by the render: after a form was asked for once, every
    /// later render makes it before it publishes the body; a form never asked for is not made.
    #[test]
    fn renders_make_the_forms_scrapers_asked_for_and_no_other() {
        let r = Renderer::new(Registry::default(), Arc::new(Snapshot::default()));
        r.render();
        let first = r.handle().load_full();
        assert!(first.text_gzip.get().is_none() && first.openmetrics_gzip.get().is_none());
        let asked = first.body(false, true);
        r.render();
        let next = r.handle().load_full();
        assert!(!Arc::ptr_eq(&first, &next));
        let made = next.text_gzip.get().expect("made by the render").clone();
        assert_eq!(
            next.body(false, true).as_ptr(),
            made.as_ptr(),
            "a copy, not a compression"
        );
        assert_eq!(made, asked);
        assert!(next.openmetrics_gzip.get().is_none(), "never asked for");
    }

    /// A render every MIN_GAP while scrapes read each body; one per IDLE_GAP while nobody
    /// reads them; the first body at once when `up` changes.
    #[tokio::test(start_paused = true)]
    async fn an_unread_body_is_rendered_again_only_after_the_idle_gap() {
        let renderer = Arc::new(Renderer::process(Registry::default()));
        let handle = renderer.handle();
        let (changed, stop) = (
            Arc::new(tokio::sync::Notify::new()),
            tokio_util::sync::CancellationToken::new(),
        );
        let task = tokio::spawn(renderer.render_on_change(changed.clone(), stop.clone()));
        let sec = |s: f64| tokio::time::sleep(std::time::Duration::from_secs_f64(s));
        let body = || handle.load_full();
        let start = body();
        changed.notify_one();
        sec(1.1).await;
        let first = body();
        assert!(
            !Arc::ptr_eq(&start, &first),
            "up changed: rendered after MIN_GAP"
        );
        assert!(first.up);
        changed.notify_one();
        sec(3.5).await;
        assert!(
            Arc::ptr_eq(&first, &body()),
            "unread: no render before IDLE_GAP"
        );
        sec(1.6).await;
        let second = body();
        assert!(!Arc::ptr_eq(&first, &second), "rendered at IDLE_GAP");
        changed.notify_one();
        sec(0.4).await;
        assert!(Arc::ptr_eq(&second, &body()), "unread");
        second.body(true, false);
        sec(0.6).await;
        assert!(
            !Arc::ptr_eq(&second, &body()),
            "read while a change waited: rendered MIN_GAP after the last render"
        );
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn gzip_round_trips() {
        let body = b"pg_up 1\n".repeat(100);
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&compress(&body)[..]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, body);
    }
}
