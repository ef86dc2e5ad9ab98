//! The snapshot's families as OpenMetrics text: the probe's gauges at every render, and each
//! query's families encoded once per published result. A result is immutable once published,
//! so its text is kept ([`Encoded`]) and reused by every render until the query publishes the
//! next one: a render encodes what changed, plus the self-metrics, instead of every family.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::catalog::MetricKind;
use crate::snapshot::histogram::HistogramSnapshot;
use crate::snapshot::{QueryResult, Snapshot};

/// The end of an OpenMetrics exposition.
pub(super) const EOF: &str = "# EOF\n";

/// Removes the `# EOF` line the encoder ends a text with.
pub(super) fn strip_eof(text: &mut String) {
    if text.ends_with(EOF) {
        text.truncate(text.len() - EOF.len());
    }
}

/// `collector`'s families alone, as OpenMetrics text without `# EOF`.
fn encode_alone(collector: Box<dyn Collector>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(collector);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    strip_eof(&mut text);
    Ok(text)
}

/// By query name, the result last encoded and its text.
type Texts = HashMap<String, (Arc<QueryResult>, Arc<str>)>;

/// The text of each query's current result, by query name.
#[derive(Debug, Default)]
pub(super) struct Encoded(Mutex<Texts>);

impl Encoded {
    /// Appends the snapshot's families to `out`: the probe's gauges, then every result in
    /// catalog order, encoding only the results published since the last render.
    pub(super) fn append(&self, snapshot: &Arc<Snapshot>, out: &mut String) -> std::fmt::Result {
        out.push_str(&encode_alone(Box::new(ProbeCollector(snapshot.clone())))?);
        // Poisoning only means a panic elsewhere while holding a plain map.
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = HashMap::with_capacity(kept.len());
        for result in snapshot.results() {
            let name = result.spec.name.clone();
            let text = match kept.remove(&name) {
                Some((r, text)) if Arc::ptr_eq(&r, &result) => text,
                _ => Arc::from(encode_alone(Box::new(ResultCollector(result.clone())))?),
            };
            out.push_str(&text);
            now.insert(name, (result, text));
        }
        *kept = now;
        Ok(())
    }
}

/// Encodes the probe's gauges.
#[derive(Debug)]
struct ProbeCollector(Arc<Snapshot>);

/// Encodes one published result's families.
#[derive(Debug)]
struct ResultCollector(Arc<QueryResult>);

struct Value(f64, MetricKind);

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `pg_up`, `pg_server_version_num` and `pg_server_in_recovery`, from the probe's verdict in
/// the snapshot. A standby's role is this gauge, never a label: a promotion changes no
/// series' identity. The role is absent until a probe has reached the server (a standby
/// must not pass for a primary meanwhile).
fn encode_probe(snapshot: &Snapshot, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    let version = snapshot.server_version();
    let facts = [
        (
            "pg_up",
            "Whether the last connection attempt to PostgreSQL succeeded (1) or not (0)",
            Some(i64::from(snapshot.is_up())),
        ),
        (
            "pg_server_version_num",
            "server_version_num of the PostgreSQL server (0 before the first connection)",
            Some(version),
        ),
        (
            "pg_server_in_recovery",
            "1 on a standby (in recovery), 0 on a primary, at the last probe that reached the server",
            (version > 0).then(|| i64::from(snapshot.in_recovery())),
        ),
    ];
    for (name, help, value) in facts {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        if let Some(v) = value {
            family.encode_gauge(&v)?;
        }
    }
    Ok(())
}

impl Collector for ProbeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_probe(&self.0, &mut encoder)
    }
}

impl Collector for ResultCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let result = &self.0;
        if let (Some(spec), Some(h)) = (&result.spec.histogram, &result.histogram) {
            let family =
                encoder.encode_descriptor(&spec.name, &spec.help, None, MetricType::Histogram)?;
            encode_histogram(family, h)?;
        }
        for (spec, series) in result.spec.metrics.iter().zip(&result.families) {
            let ty = match spec.kind {
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Counter => MetricType::Counter,
            };
            let mut family = encoder.encode_descriptor(spec.family(), &spec.help, None, ty)?;
            if result.spec.labels.is_empty() {
                // No labels: at most one series (duplicates are dropped when sampling).
                if let Some(s) = series.first() {
                    Value(s.value, spec.kind).encode(family)?;
                }
                continue;
            }
            for s in series {
                let labels: Vec<(&str, &str)> = result
                    .spec
                    .labels
                    .iter()
                    .map(String::as_str)
                    .zip(s.labels.iter().map(String::as_str))
                    .collect();
                Value(s.value, spec.kind).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn encode_histogram(
    mut encoder: prometheus_client::encoding::MetricEncoder,
    h: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    encoder.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}

impl EncodeMetric for Value {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        // Integral values print without a fraction ("42", not "42.0").
        let integral = self.0.fract() == 0.0 && self.0.abs() < 9.0e15;
        match (self.1, integral) {
            (MetricKind::Gauge, true) => encoder.encode_gauge(&(self.0 as i64)),
            (MetricKind::Gauge, false) => encoder.encode_gauge(&self.0),
            (MetricKind::Counter, true) if self.0 >= 0.0 => {
                encoder.encode_counter::<NoLabelSet, u64, f64>(&(self.0 as u64), None)
            }
            (MetricKind::Counter, _) => {
                encoder.encode_counter::<NoLabelSet, f64, f64>(&self.0, None)
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.1 {
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Counter => MetricType::Counter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Defaults};
    use crate::snapshot::Series;

    fn result(spec: &Arc<crate::catalog::QuerySpec>, v: f64) -> QueryResult {
        let mut r = QueryResult::empty(spec);
        r.families = vec![vec![Series {
            labels: vec![],
            value: v,
        }]];
        r
    }

    /// The text of an unchanged result is the one encoded when it was published; a new
    /// result of its query is encoded anew; the body is the same as encoding everything.
    #[test]
    fn a_result_is_encoded_once_and_its_text_reused_until_its_query_publishes_again() {
        let yaml = "queries:
  - {name: a, sql: SELECT 1 AS v, metrics: [{column: v, name: pg_a, type: gauge, help: A.}]}
  - {name: b, sql: SELECT 1 AS v, metrics: [{column: v, name: pg_b_total, type: counter, help: B.}]}
";
        let specs = Catalog::parse(yaml, "q.yaml".as_ref(), Defaults::default())
            .unwrap()
            .queries;
        let snap = Arc::new(Snapshot::default());
        snap.install(&specs);
        snap.publish(result(&specs[0], 1.0), &[]);
        snap.publish(result(&specs[1], 5.0), &[]);
        let encoded = Encoded::default();
        let text_of = |name: &str| encoded.0.lock().unwrap()[name].1.clone();
        let mut first = String::new();
        encoded.append(&snap, &mut first).unwrap();
        let (a, b) = (text_of("a"), text_of("b"));
        snap.publish(result(&specs[1], 7.0), &[]);
        let mut second = String::new();
        encoded.append(&snap, &mut second).unwrap();
        assert!(Arc::ptr_eq(&a, &text_of("a")), "a's text is reused");
        assert!(!Arc::ptr_eq(&b, &text_of("b")), "b's new result is encoded");
        assert!(
            second.contains("pg_a 1\n") && second.contains("pg_b_total 7\n"),
            "{second}"
        );
        let mut whole = String::new();
        for r in snap.results() {
            whole.push_str(&encode_alone(Box::new(ResultCollector(r))).unwrap());
        }
        assert!(second.ends_with(&whole), "{second}");
    }
}
