//! The HTTP server's own metrics: open connections, and connections the server closed, by
//! reason. The server writes them; the renderer encodes them with the rest of the registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why the server closed a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Why the server closes connections; every reason is exposed from the start at 0.
pub const CLOSE_REASONS: [&str; 3] = ["deadline", "evicted", "refused"];

/// Handles of the server's metrics; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct HttpMetrics {
    open: Gauge,
    closed: Family<ReasonLabel, Counter>,
}

impl HttpMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "pgpulse_http_open_connections",
            "HTTP connections open now (at most web.max_connections, plus evicted ones closing)",
            m.open.clone(),
        );
        registry.register(
            "pgpulse_http_connections_closed",
            "HTTP connections the server closed: a phase overran web.request_timeout \
             (deadline), an idle one made room at the cap (evicted), or none could (refused)",
            m.closed.clone(),
        );
        for reason in CLOSE_REASONS {
            let _ = m.closed.get_or_create(&ReasonLabel { reason });
        }
        m
    }

    /// Counts a connection closed for `reason` (one of [`CLOSE_REASONS`]).
    pub fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Sets the number of open connections.
    pub fn set_open(&self, n: usize) {
        self.open.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
