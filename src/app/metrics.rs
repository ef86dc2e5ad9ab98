//! The process's own metrics that belong to no feature: the build and the catalog reloads.
//! The app registers them first (so they lead `/metrics`) and the reloader, their only
//! writer, records through [`AppMetrics::record_reload`].

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of the build info.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// Labels of the reload counter: `success` or `failure`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Build info and reload handles.
#[derive(Debug)]
pub struct AppMetrics {
    reloads: Family<ResultLabel, Counter>,
    reload_ok: Gauge,
    reload_time: Gauge<f64, AtomicU64>,
}

impl AppMetrics {
    /// Creates the handles and registers them in `registry`; the catalog loaded at start
    /// counts as the last successful load.
    pub fn register(registry: &mut Registry) -> Self {
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register(
            "pgpulse_build_info",
            "pgpulse build information; always 1",
            build,
        );
        let m = Self {
            reloads: Family::default(),
            reload_ok: Gauge::default(),
            reload_time: Gauge::default(),
        };
        registry.register(
            "pgpulse_config_reloads",
            "Catalog reloads (SIGHUP) by result",
            m.reloads.clone(),
        );
        registry.register(
            "pgpulse_config_last_reload_successful",
            "Whether the last catalog reload succeeded",
            m.reload_ok.clone(),
        );
        registry.register(
            "pgpulse_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful catalog load",
            m.reload_time.clone(),
        );
        m.reload_ok.set(1);
        m.reload_time.set(crate::clock::unix_now());
        m
    }

    /// Records a catalog reload and its result.
    pub fn record_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
        self.reload_ok.set(i64::from(ok));
        if ok {
            self.reload_time.set(crate::clock::unix_now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_are_counted_by_result() {
        let m = AppMetrics::register(&mut Registry::default());
        m.record_reload(false);
        assert_eq!(m.reload_ok.get(), 0);
        m.record_reload(true);
        assert_eq!(m.reload_ok.get(), 1);
        let ok = ResultLabel { result: "success" };
        assert_eq!(m.reloads.get_or_create(&ok).get(), 1);
    }
}
