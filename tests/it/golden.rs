//! Deliberate names: a golden list of every metric name, type and label set, and the
//! generated metrics reference, both checked against the catalog and a rendered exposition.
//! To change a name on purpose, regenerate: `PGPULSE_BLESS=1 cargo test golden`.

use pgpulse::catalog::{Catalog, MetricKind};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn catalog() -> Catalog {
    Catalog::load(format!("{ROOT}/queries.yaml").as_ref(), Default::default())
        .expect("shipped catalog")
}

/// Compares `actual` with the file, or rewrites the file when PGPULSE_BLESS is set.
fn golden(path: &str, actual: &str, how: &str) {
    let full = format!("{ROOT}/{path}");
    if std::env::var_os("PGPULSE_BLESS").is_some() {
        std::fs::write(&full, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&full).unwrap_or_default();
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .filter(|l| !actual.lines().any(|a| a == *l))
            .map(|l| format!("- {l}"))
            .chain(
                actual
                    .lines()
                    .filter(|l| !expected.lines().any(|e| e == *l))
                    .map(|l| format!("+ {l}")),
            )
            .collect();
        panic!("{path} is stale; {how}\n{}", diff.join("\n"));
    }
}

/// Self-metric families as rendered, every per-query series touched once.
fn self_metric_families() -> Vec<String> {
    use pgpulse::sampler::metrics::RunOutcome;
    let mut registry = prometheus_client::registry::Registry::default();
    pgpulse::app::metrics::AppMetrics::register(&mut registry).record_reload(true);
    let m = pgpulse::sampler::SamplerMetrics::register(&mut registry);
    pgpulse::http::metrics::HttpMetrics::register(&mut registry).set_open(0);
    let yaml = "queries:\n  - name: q\n    sql: SELECT 1 AS v\n    idle_without: lock_waits\n    metrics:\n      - {column: v, name: pg_v_total, type: counter, help: v}\n";
    let spec = Catalog::parse(yaml, "q.yaml".as_ref(), Default::default())
        .unwrap()
        .queries[0]
        .clone();
    m.init_query(&spec);
    drop(m.start_run(&spec));
    let outcome = RunOutcome::Published {
        series: 1,
        dropped: 0,
        nulls: 0,
        counter_drops: [0, 0, 0],
    };
    m.record_run(&spec, 0, &outcome);
    m.record_gate(&spec, true);
    // The renderer adds the snapshot's families (pg_up, pg_server_version_num).
    let snapshot = std::sync::Arc::new(pgpulse::snapshot::Snapshot::default());
    let renderer = pgpulse::exposition::Renderer::new(registry, snapshot);
    renderer.render();
    let om = String::from_utf8_lossy(&renderer.handle().load().openmetrics).into_owned();
    families(&om, "pgpulse")
}

/// The plan guard's families (`pg_plan_*`, `pgpulse_plan_check_*`), every series touched once.
fn plan_guard_families() -> Vec<String> {
    use pgpulse::plans::guard::{PlanErrorLabels, PlanLabel, PlanMetrics};
    let mut registry = prometheus_client::registry::Registry::default();
    let m = PlanMetrics::register(&mut registry);
    let q = PlanLabel { query: "q".into() };
    m.index_used.get_or_create(&q).set(1);
    m.partitions_scanned.get_or_create(&q).set(1);
    m.partitions_total.get_or_create(&q).set(1);
    m.partitions_expected.get_or_create(&q).set(1);
    m.cost.get_or_create(&q).set(1.0);
    m.last_success.get_or_create(&q).set(1.0);
    m.applicable.get_or_create(&q).set(1);
    m.errors
        .get_or_create(&PlanErrorLabels {
            query: "q".into(),
            kind: "sql".into(),
        })
        .inc();
    rendered_families(&registry, "plans")
}

/// The slow-statement log reader's families, every series touched once.
fn slow_log_families() -> Vec<String> {
    use pgpulse::slowlog::metrics::{SlowLogMetrics, Tally};
    let mut registry = prometheus_client::registry::Registry::default();
    let m = SlowLogMetrics::register(&mut registry);
    m.record_poll(0.1, "pgpulse", 0, 0, 1, 1);
    let mut t = Tally::default();
    t.add("trade".into(), "app".into(), 1);
    m.count(t, 10);
    m.record_unparsed(1);
    m.record_error();
    rendered_families(&registry, "slowlog")
}

/// `name type {labels} (source)` of every family `registry` renders.
fn rendered_families(
    registry: &prometheus_client::registry::Registry,
    source: &str,
) -> Vec<String> {
    let mut om = String::new();
    prometheus_client::encoding::text::encode(&mut om, registry).unwrap();
    families(&om, source)
}

/// `name type {labels} (source)` of every family of an OpenMetrics body.
fn families(om: &str, source: &str) -> Vec<String> {
    let body = pgpulse::exposition::to_prometheus_text(om);
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut it = l.split(' ');
            let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            let labels: Vec<&str> = body
                .lines()
                .find(|s| s.starts_with(name) && !s.starts_with('#') && s.contains('{'))
                .map(|s| {
                    s[s.find('{').unwrap() + 1..s.find('}').unwrap()]
                        .split(',')
                        .filter_map(|kv| kv.split('=').next())
                        .collect()
                })
                .unwrap_or_default();
            format!("{name} {kind} {{{}}} ({source})", labels.join(","))
        })
        .collect()
}

#[test]
fn metric_names_and_label_sets_match_the_golden_list() {
    let mut lines = self_metric_families();
    lines.extend(plan_guard_families());
    lines.extend(slow_log_families());
    for q in &catalog().queries {
        for m in &q.metrics {
            let kind = match m.kind {
                MetricKind::Gauge => "gauge",
                MetricKind::Counter => "counter",
            };
            lines.push(format!(
                "{} {kind} {{{}}} ({})",
                m.name,
                q.labels.join(","),
                q.name
            ));
        }
        if let Some(h) = &q.histogram {
            lines.push(format!("{} histogram {{le}} ({})", h.name, q.name));
        }
    }
    lines.sort();
    golden(
        "tests/golden/metrics.txt",
        &(lines.join("\n") + "\n"),
        "rename deliberately and run `PGPULSE_BLESS=1 cargo test golden`",
    );
}

#[test]
fn docs_metrics_md_is_generated_from_queries_yaml() {
    golden(
        "docs/metrics.md",
        &format!(
            "{}\n{}",
            pgpulse::catalog::markdown(&catalog()),
            pgpulse::bouncer::markdown()
        ),
        "run `cargo run -- catalog --markdown > docs/metrics.md`",
    );
}
