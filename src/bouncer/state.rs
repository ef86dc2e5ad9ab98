//! The last round's families of one PgBouncer, the life of its counters, and their encoding.
//!
//! PgBouncer's `SHOW STATS` totals start again from zero when it restarts. A round in which
//! any total is below its last value in this life (also when its database was absent from
//! rounds in between) begins a new life: `pgbouncer_start_time_seconds`
//! moves to that round's time, so a reset shows as a reset, never as a decrease inside one
//! life. The previous values outlive a failed round, so a restart during an outage is seen
//! at the first round after it. While the console does not answer, only `pgbouncer_up` (0)
//! and the start time are exposed: no stale pool is served as current.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::reading::{Family, Kind};
use crate::snapshot::Liveness;

/// The most counter series whose last value is kept (7 totals of 500 databases, ten times).
const MAX_KEPT: usize = 35_000;

/// A counter series: its family and label values.
type SeriesKey = (&'static str, Vec<String>);

#[derive(Debug, Default)]
struct Inner {
    families: Vec<Family>,
    version: Option<String>,
    /// When the current life of the counters began (unix seconds).
    life_start: Option<f64>,
    last: HashMap<SeriesKey, f64>,
}

/// What a PgBouncer target exposes; shared by its sampler (writer) and its collector.
#[derive(Debug, Clone, Default)]
pub struct State {
    inner: Arc<Mutex<Inner>>,
    /// Whether the last round succeeded (`pgbouncer_up`, `/ready`).
    pub liveness: Arc<Liveness>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Poisoning only means a panic elsewhere while holding plain values.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a successful round read at `now` (unix seconds); returns whether it began a
    /// new life of the counters.
    pub fn record(&self, families: Vec<Family>, version: Option<String>, now: f64) -> bool {
        let mut g = self.lock();
        let mut current = HashMap::new();
        let mut dropped = false;
        for f in families.iter().filter(|f| f.kind == Kind::Counter) {
            for (labels, v) in &f.series {
                let key = (f.name, labels.clone());
                dropped |= g.last.get(&key).is_some_and(|old| v < old);
                current.insert(key, *v);
            }
        }
        let new_life = dropped || g.life_start.is_none();
        if new_life {
            g.life_start = Some(now);
            g.last.clear();
        }
        // The last value of every series of this life, also of one absent now (a database
        // gone from SHOW STATS that comes back lower is a reset too); bounded by forgetting
        // the absent ones when PgBouncer's databases churn.
        if g.last.len() + current.len() > MAX_KEPT {
            g.last.clear();
        }
        g.last.extend(current);
        g.families = families;
        if version.is_some() {
            g.version = version;
        }
        drop(g);
        self.liveness.set_up(true);
        new_life
    }

    /// Records a failed round: the families go, the counters' last values stay.
    pub fn fail(&self) {
        self.lock().families.clear();
        self.liveness.set_up(false);
    }

    /// The collector of this state.
    pub fn collector(&self) -> Box<dyn Collector> {
        Box::new(StateCollector(self.clone()))
    }
}

/// `pgbouncer_up`: (name, help).
pub const UP: (&str, &str) = (
    "pgbouncer_up",
    "Whether the last round of console commands succeeded within its deadline (1) or not (0)",
);
/// `pgbouncer_start_time_seconds`: (name, help).
pub const START: (&str, &str) = (
    "pgbouncer_start_time_seconds",
    "When pgpulse first saw the current life of PgBouncer's totals (a restart begins a new one), unix seconds",
);
/// `pgbouncer_version_info{version}`: (name, help).
pub const VERSION: (&str, &str) = (
    "pgbouncer_version_info",
    "PgBouncer's version (the value is 1)",
);

#[derive(Debug)]
struct StateCollector(State);

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let up = self.0.liveness.is_up();
        let g = self.0.lock();
        let gauge = MetricType::Gauge;
        let mut family = encoder.encode_descriptor(UP.0, UP.1, None, gauge)?;
        family.encode_gauge(&i64::from(up))?;
        if let Some(start) = g.life_start {
            encoder
                .encode_descriptor(START.0, START.1, None, gauge)?
                .encode_gauge(&start)?;
        }
        if let (true, Some(v)) = (up, &g.version) {
            let mut f = encoder.encode_descriptor(VERSION.0, VERSION.1, None, gauge)?;
            f.encode_family(&[("version", v.as_str())])?
                .encode_gauge(&1)?;
        }
        for f in &g.families {
            encode_family(&mut encoder, f)?;
        }
        Ok(())
    }
}

fn encode_family(encoder: &mut DescriptorEncoder, f: &Family) -> std::fmt::Result {
    let (name, ty) = match f.kind {
        Kind::Gauge => (f.name, MetricType::Gauge),
        Kind::Counter => (
            f.name.strip_suffix("_total").unwrap_or(f.name),
            MetricType::Counter,
        ),
    };
    let mut family = encoder.encode_descriptor(name, f.help, None, ty)?;
    if f.labels.is_empty() {
        if let Some((_, v)) = f.series.first() {
            Value(*v, f.kind).encode(family)?;
        }
        return Ok(());
    }
    for (values, v) in &f.series {
        let labels: Vec<(&str, &str)> = f
            .labels
            .iter()
            .copied()
            .zip(values.iter().map(String::as_str))
            .collect();
        Value(*v, f.kind).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

struct Value(f64, Kind);

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl EncodeMetric for Value {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        // Integral values print without a fraction ("42", not "42.0").
        let integral = self.0.fract() == 0.0 && self.0.abs() < 9.0e15;
        match (self.1, integral) {
            (Kind::Gauge, true) => encoder.encode_gauge(&(self.0 as i64)),
            (Kind::Gauge, false) => encoder.encode_gauge(&self.0),
            (Kind::Counter, true) if self.0 >= 0.0 => {
                encoder.encode_counter::<NoLabelSet, u64, f64>(&(self.0 as u64), None)
            }
            (Kind::Counter, _) => encoder.encode_counter::<NoLabelSet, f64, f64>(&self.0, None),
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.1 {
            Kind::Gauge => MetricType::Gauge,
            Kind::Counter => MetricType::Counter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(v: f64) -> Vec<Family> {
        vec![Family {
            name: "pgbouncer_transactions_total",
            help: "t",
            kind: Kind::Counter,
            labels: vec!["database"],
            series: vec![(vec!["trade".to_owned()], v)],
        }]
    }

    #[test]
    fn a_lower_total_begins_a_new_life_also_across_a_failed_round() {
        let s = State::default();
        assert!(
            s.record(totals(10.0), None, 100.0),
            "the first round begins a life"
        );
        assert!(!s.record(totals(12.0), None, 115.0));
        s.fail();
        assert!(!s.liveness.is_up());
        assert!(
            s.record(totals(3.0), None, 145.0),
            "restarted during the outage"
        );
        assert_eq!(s.lock().life_start, Some(145.0));
        assert!(
            !s.record(totals(3.0), None, 160.0),
            "equal is the same life"
        );
    }

    #[test]
    fn a_series_that_comes_back_lower_after_a_round_without_it_begins_a_new_life() {
        let s = State::default();
        s.record(totals(50.0), None, 100.0);
        assert!(
            !s.record(Vec::new(), None, 115.0),
            "gone: nothing to compare"
        );
        assert!(s.record(totals(5.0), None, 130.0), "back lower: a reset");
        assert_eq!(s.lock().life_start, Some(130.0));
    }
}
