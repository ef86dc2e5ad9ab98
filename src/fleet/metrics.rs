//! The fleet's own metrics on `/metrics`: the targets and their states (labelled by target
//! name, so bounded by the target list), the connection cap and its use, the target-list
//! refreshes. Encoded from the published target map at render time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::discover::Selected;
use crate::db::slots::Cap;
use crate::http::Targets;

/// Reads one state of a target from its current body.
type StateOf = fn(&crate::exposition::Exposition) -> bool;

/// Encodes the targets' states and the cap.
#[derive(Debug)]
struct FleetCollector {
    targets: Targets,
    cap: Cap,
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let targets = self.targets.load();
        let totals = [
            (
                "pgpulse_fleet_targets",
                "Targets in the fleet",
                targets.len(),
            ),
            (
                "pgpulse_fleet_connections",
                "Connections (and connection attempts) open now over every target",
                self.cap.in_use(),
            ),
            (
                "pgpulse_fleet_max_connections",
                "The fleet's connection cap (fleet.max_connections)",
                self.cap.max(),
            ),
        ];
        for (name, help, value) in totals {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            family.encode_gauge(&(value as i64))?;
        }
        let states: [(&str, &str, StateOf); 2] = [
            (
                "pgpulse_target_up",
                "Whether the target's last connection attempt succeeded (its pg_up)",
                |e| e.up,
            ),
            (
                "pgpulse_target_ready",
                "Whether the target answers and every enabled query of it has succeeded once",
                |e| e.ready,
            ),
        ];
        for (name, help, state) in states {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (target, view) in targets.iter() {
                let value = i64::from(state(&view.exposition.load()));
                family
                    .encode_family(&[("target", target.as_str())])?
                    .encode_gauge(&value)?;
            }
        }
        Ok(())
    }
}

/// Labels of the refresh counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Labels of a discovery's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DiscoveryLabel {
    discovery: String,
}

/// Labels of a discovery's read counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DiscoveryResult {
    discovery: String,
    result: &'static str,
}

/// The handles the fleet writes.
#[derive(Debug, Clone)]
pub(super) struct FleetMetrics {
    refreshes: Family<ResultLabel, Counter>,
    refresh_ok: Gauge,
    discoveries: Family<DiscoveryResult, Counter>,
    discovery_ok: Family<DiscoveryLabel, Gauge>,
    discovered: Family<DiscoveryLabel, Gauge>,
    skipped: Family<DiscoveryLabel, Gauge>,
}

impl FleetMetrics {
    /// Registers the collector and the refresh metrics in `registry`.
    pub(super) fn register(registry: &mut Registry, targets: Targets, cap: Cap) -> Self {
        registry.register_collector(Box::new(FleetCollector { targets, cap }));
        let m = Self {
            refreshes: Family::default(),
            refresh_ok: Gauge::default(),
            discoveries: Family::default(),
            discovery_ok: Family::default(),
            discovered: Family::default(),
            skipped: Family::default(),
        };
        registry.register(
            "pgpulse_fleet_refreshes",
            "Reads of the target list (targets_file) by result",
            m.refreshes.clone(),
        );
        registry.register(
            "pgpulse_fleet_last_refresh_successful",
            "Whether the last read of the target list succeeded",
            m.refresh_ok.clone(),
        );
        m.refresh_ok.set(1);
        m.register_discovery(registry);
        m
    }

    fn register_discovery(&self, registry: &mut Registry) {
        registry.register(
            "pgpulse_fleet_discoveries",
            "Reads of a server's list of databases (discover_databases) by result",
            self.discoveries.clone(),
        );
        registry.register(
            "pgpulse_fleet_last_discovery_successful",
            "Whether the last read of a server's list of databases succeeded",
            self.discovery_ok.clone(),
        );
        registry.register(
            "pgpulse_fleet_discovered_databases",
            "Databases a discovery selected (each a target), from its last good read",
            self.discovered.clone(),
        );
        registry.register(
            "pgpulse_fleet_discovery_skipped_databases",
            "Databases a discovery matched but did not take: a name that is no valid target \
             name, or past discover_databases.max_databases",
            self.skipped.clone(),
        );
    }

    /// Records a read of a server's list of databases (`None`: it failed).
    pub(super) fn record_discovery(&self, name: &str, read: Option<&Selected>) {
        let discovery = name.to_owned();
        let result = if read.is_some() { "success" } else { "failure" };
        self.discoveries
            .get_or_create(&DiscoveryResult {
                discovery: discovery.clone(),
                result,
            })
            .inc();
        let label = DiscoveryLabel { discovery };
        self.discovery_ok
            .get_or_create(&label)
            .set(i64::from(read.is_some()));
        if let Some(s) = read {
            self.discovered
                .get_or_create(&label)
                .set(s.databases.len() as i64);
            self.skipped.get_or_create(&label).set(s.skipped as i64);
        }
    }

    /// Records a read of the target list.
    pub(super) fn record_refresh(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.refreshes.get_or_create(&ResultLabel { result }).inc();
        self.refresh_ok.set(i64::from(ok));
    }
}
