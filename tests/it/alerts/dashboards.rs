//! The Grafana dashboards: every PromQL expression of the dashboards and rules parses
//! (promtool), our dashboard lint (the checks of Grafana's dashboard-linter), dashboard
//! thresholds equal to the alert thresholds, and Grafana's provisioning files.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::promql::selectors;
use super::{
    alerts, all_exprs, assert_none, dashboards, items, panels, read, substitute, targets, text,
    tool,
};

/// Panel types of current Grafana (no deprecated `graph`, `singlestat`, `table-old`).
const PANEL_TYPES: &[&str] = &[
    "timeseries",
    "stat",
    "table",
    "heatmap",
    "gauge",
    "bargauge",
];

/// promtool 2.42 has no `promql` command: every expression (rules, dashboard targets with
/// Grafana's variables substituted, the selectors of the variables' label_values queries) goes
/// into a temporary rule file as a recording rule, and `promtool check rules` parses them all.
#[test]
fn every_promql_expression_of_the_dashboards_and_rules_parses() {
    let mut exprs: Vec<(String, String)> = all_exprs();
    for (at, e) in exprs.iter_mut() {
        if at.contains(" / ") {
            *e = substitute(e, "127.0.0.1:9864", "trade");
        }
    }
    for (uid, d) in dashboards() {
        for v in items(&d["templating"]["list"]) {
            if let Some(inner) = text(&v["query"]["query"]).strip_prefix("label_values(") {
                let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s);
                exprs.push((
                    format!("{uid} / variable {}", v["name"]),
                    substitute(selector, "127.0.0.1:9864", "trade"),
                ));
            }
        }
    }
    let mut file = String::from("groups:\n  - name: parse\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        file.push_str(&format!(
            "      - record: parse:expr_{i}\n        expr: {}\n",
            json!(e)
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parse.yml");
    std::fs::write(&path, &file).unwrap();
    if let Err(out) = tool(&format!("promtool check rules {}", path.display())) {
        let failed = exprs
            .iter()
            .enumerate()
            .filter(|(i, _)| out.contains(&format!("parse:expr_{i}\"")));
        let named: Vec<String> = failed.map(|(_, (at, e))| format!("{at}: {e}")).collect();
        panic!("promtool cannot parse:\n{}\n{out}", named.join("\n"));
    }
}

/// Portable dashboards: fixed unique uids, schemaVersion 39, a `datasource` variable (type
/// datasource, Prometheus) used by every panel and target, job/instance(/datname) variables
/// querying through it, and no exported `${DS_...}` inputs.
#[test]
fn dashboards_have_fixed_unique_uids_and_pick_prometheus_through_the_datasource_variable() {
    let ds = json!({"type": "prometheus", "uid": "${datasource}"});
    let all = dashboards();
    let uids: BTreeSet<&str> = all.iter().map(|(u, _)| u.as_str()).collect();
    let fixed = BTreeSet::from([
        "pgpulse-fleet",
        "pgpulse-overview",
        "pgpulse-pgbouncer",
        "pgpulse-server",
        "pgpulse-statements",
        "pgpulse-tables",
        "pgpulse-trading",
    ]);
    assert_eq!(uids, fixed, "uids must be fixed and unique");
    let mut problems = Vec::new();
    for (uid, d) in &all {
        let mut check = |ok: bool, what: String| {
            if !ok {
                problems.push(format!("{uid}: {what}"));
            }
        };
        check(d["schemaVersion"] == 39, "schemaVersion is not 39".into());
        check(
            d["id"].is_null(),
            "id must be null (Grafana assigns it)".into(),
        );
        check(
            !d.to_string().contains("${DS_") && d.get("__inputs").is_none(),
            "exported inputs".into(),
        );
        let vars: Vec<&Value> = items(&d["templating"]["list"]).collect();
        let var = |name: &str| {
            vars.iter()
                .find(|v| v["name"] == name)
                .copied()
                .unwrap_or(&Value::Null)
        };
        let dsv = var("datasource");
        check(
            dsv["type"] == "datasource" && dsv["query"] == "prometheus",
            "no prometheus datasource variable".into(),
        );
        let mut needed = vec!["job", "cluster", "instance"];
        if d.to_string().contains("$datname") {
            needed.push("datname");
        }
        for name in needed {
            let v = var(name);
            let label_values = text(&v["query"]["query"]).starts_with("label_values(");
            check(
                v["type"] == "query" && v["datasource"] == ds && label_values,
                format!("variable {name}"),
            );
        }
        for p in panels(d) {
            let all_ds =
                p["datasource"] == ds && items(&p["targets"]).all(|t| t["datasource"] == ds);
            check(
                all_ds,
                format!("{}: panel or target not on ${{datasource}}", p["title"]),
            );
        }
    }
    assert_none(problems);
}

/// Every panel: a current panel type, a title, a description, a unit, at least one query.
#[test]
fn every_dashboard_panel_has_a_current_type_a_title_a_description_and_a_unit() {
    let mut problems = Vec::new();
    for (uid, d) in dashboards() {
        for p in panels(&d) {
            let at = format!("{uid} / {}", p["title"]);
            let set = |v: &Value| !text(v).is_empty();
            if !PANEL_TYPES.contains(&text(&p["type"])) {
                problems.push(format!("{at}: panel type {}", p["type"]));
            }
            for (ok, what) in [
                (set(&p["title"]), "title"),
                (set(&p["description"]), "description"),
                (set(&p["fieldConfig"]["defaults"]["unit"]), "unit"),
                (items(&p["targets"]).count() > 0, "query"),
            ] {
                if !ok {
                    problems.push(format!("{at}: no {what}"));
                }
            }
        }
    }
    assert_none(problems);
}

/// Every selector of every dashboard query has job="$job", cluster=~"$cluster" and
/// instance=~"$instance", and every
/// range is `$__rate_interval` (so rates work at any scrape interval), or `$__range` (a total
/// over the dashboard's time range, such as an error budget left).
#[test]
fn every_dashboard_query_selects_job_and_instance_and_rates_over_rate_interval() {
    let mut problems = Vec::new();
    for t in targets() {
        let found = selectors(&t.expr);
        if found.is_empty() {
            problems.push(format!("{}: no metric in {}", t.at, t.expr));
        }
        for s in found {
            let has = |m: &str| s.matchers.iter().any(|x| x == m);
            let instance = has(r#"instance=~"$instance""#) || has(r#"instance="$instance""#);
            if !has(r#"job="$job""#) || !has(r#"cluster=~"$cluster""#) || !instance {
                problems.push(format!(
                    "{}: {} lacks job/cluster/instance matchers {:?}",
                    t.at, s.name, s.matchers
                ));
            }
            if let Some(range) = s
                .range
                .filter(|r| r != "$__rate_interval" && r != "$__range")
            {
                problems.push(format!(
                    "{}: {}[{range}] instead of [$__rate_interval]",
                    t.at, s.name
                ));
            }
        }
    }
    assert_none(problems);
}

/// Counters and histogram parts make sense only as rates: in rules and dashboards they appear
/// only as the range argument of rate/increase/irate (histogram_quantile over such a rate).
#[test]
fn counters_appear_only_inside_rate_increase_or_irate() {
    let is_counter = |n: &str| {
        ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .any(|s| n.ends_with(s))
    };
    let mut problems = Vec::new();
    for (at, expr) in all_exprs() {
        for s in selectors(&expr).into_iter().filter(|s| is_counter(&s.name)) {
            let inner = s.functions.last().map(String::as_str);
            if s.range.is_none() || !matches!(inner, Some("rate" | "increase" | "irate")) {
                problems.push(format!(
                    "{at}: counter {} in {:?} range {:?}",
                    s.name, s.functions, s.range
                ));
            }
        }
    }
    assert_none(problems);
}

/// A panel showing an alerted quantity carries the alert's threshold as a threshold step.
#[test]
fn dashboard_thresholds_equal_the_alert_thresholds() {
    // (what a panel's queries contain, the step values it must have, what the rules say)
    let cases: &[(&str, &[f64], &str)] = &[
        ("pg_database_blocks_hit_total", &[0.95], "< 0.95"),
        ("pg_cache_hit_ratio", &[0.95], "< 0.95"),
        ("pg_connections_usage_ratio", &[0.8], "> 0.8"),
        (
            "histogram_quantile(0.99, sum by (instance, le) (rate(pg_statement",
            &[0.1],
            "> 0.1",
        ),
        ("pg_table_dead_tuple_ratio", &[0.3], "> 0.3"),
        (
            "pg_partition_runway_seconds",
            &[172800.0, 604800.0],
            "< 2 * 86400",
        ),
        ("pg_lock_wait_longest_seconds", &[60.0], "> 60"),
        ("pg_lock_table_usage_ratio", &[0.2], "> 0.2"),
        ("pg_sequence_used_ratio", &[0.75], "> 0.75"),
        ("pg_replication_replay_lag_seconds", &[60.0], "> 60"),
        (
            "pg_database_xid_age_xids{job=\"$job\", cluster=~\"$cluster\", instance=~\"$instance\"} / 2147483648",
            &[0.5, 0.75],
            "/ 2147483648 > 0.75",
        ),
        // PgBouncer (the pgpulse-pgbouncer dashboard). Waiting clients are counts: `> 0` is a
        // step at 1; up, paused and disabled are 0/1 gauges with their step at 1.
        ("pgbouncer_up", &[1.0], "pgbouncer_up == 0"),
        (
            "state=\"waiting\"",
            &[1.0],
            "pgbouncer_pool_clients{state=\"waiting\", database=~\"trad.*|order.*|market.*\"}\n) > 0",
        ),
        (
            "pgbouncer_pool_max_wait_seconds",
            &[1.0],
            "pgbouncer_pool_max_wait_seconds > 1",
        ),
        (
            "/ pgbouncer_max_client_connections",
            &[0.9],
            "/ (pgbouncer_max_client_connections > 0) > 0.9",
        ),
        (
            "pgbouncer_database_paused",
            &[1.0],
            "pgbouncer_database_paused == 1",
        ),
        (
            "pgbouncer_database_disabled",
            &[1.0],
            "pgbouncer_database_disabled == 1",
        ),
    ];
    let rules: String = alerts().iter().map(|r| r.expr.clone()).collect();
    let mut problems = Vec::new();
    let mut shown = BTreeSet::new();
    for (uid, d) in dashboards() {
        for p in panels(&d) {
            for (needle, wanted, _) in cases {
                let Some(steps) = threshold_steps(p, needle) else {
                    continue;
                };
                shown.insert(*needle);
                if !wanted
                    .iter()
                    .all(|w| steps.iter().any(|s| (s - w).abs() < 1e-9))
                {
                    problems.push(format!(
                        "{uid} / {}: steps {steps:?}, want {wanted:?}",
                        p["title"]
                    ));
                }
            }
        }
    }
    for (needle, _, rule) in cases {
        if !rules.contains(rule) {
            problems.push(format!(
                "the rules no longer say `{rule}`: update the dashboards and this test"
            ));
        }
        if !shown.contains(needle) {
            problems.push(format!("no panel shows {needle}"));
        }
    }
    assert_none(problems);
}

/// The threshold steps that apply to the panel's query containing `needle`, if one does: the
/// panel's, or, in a table that renames each query's value column (`Value #A` → a name), the
/// override of that column's name.
fn threshold_steps(p: &Value, needle: &str) -> Option<Vec<f64>> {
    let t = items(&p["targets"]).find(|t| text(&t["expr"]).contains(needle))?;
    let values =
        |steps: &Value| -> Vec<f64> { items(steps).filter_map(|s| s["value"].as_f64()).collect() };
    let column = format!("Value #{}", text(&t["refId"]));
    let renamed = items(&p["transformations"]).find_map(|x| {
        x["options"]["renameByName"][&column]
            .as_str()
            .map(str::to_owned)
    });
    let overridden = renamed.and_then(|name| {
        items(&p["fieldConfig"]["overrides"])
            .filter(|o| o["matcher"]["options"] == name.as_str())
            .flat_map(|o| items(&o["properties"]))
            .find(|prop| prop["id"] == "thresholds")
            .map(|prop| values(&prop["value"]["steps"]))
    });
    Some(overridden.unwrap_or_else(|| values(&p["fieldConfig"]["defaults"]["thresholds"]["steps"])))
}

/// Grafana provisioning: a Prometheus data source, and a file provider reading
/// /var/lib/grafana/dashboards.
#[test]
fn grafana_provisioning_points_at_prometheus_and_the_dashboards_directory() {
    let yaml = |rel: &str| -> Value { serde_saphyr::from_str(&read(rel)).unwrap() };
    let ds = yaml("dashboards/provisioning/datasources/prometheus.yml");
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    let provider = &yaml("dashboards/provisioning/dashboards/pgpulse.yml")["providers"][0];
    assert_eq!(provider["type"], "file");
    assert_eq!(provider["options"]["path"], "/var/lib/grafana/dashboards");
}
