//! Alert rules, Alertmanager routing and Grafana dashboards, checked with the real tools:
//! `promtool` (rule checks, rule unit tests, the PromQL parser), `amtool`, a real Alertmanager,
//! our own dashboard lint (the checks of Grafana's dashboard-linter), the metric contract, and
//! end to end a real Prometheus and Alertmanager watching a pgpulse whose database was made to
//! bloat and to miss its cache.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::harness::{TestDb, eventually, own_cluster};
use crate::service::start;
use pgpulse::demo::ClusterOptions;

/// Every metric pgpulse promises (the metric contract), plus Prometheus' own `up`.
const CONTRACT: &[&str] = &[
    "up",
    "pg_up",
    "pg_server_version_num",
    "pgpulse_build_info",
    "pgpulse_query_errors_total",
    "pgpulse_query_runs_total",
    "pgpulse_query_duration_seconds_bucket",
    "pgpulse_query_duration_seconds_sum",
    "pgpulse_query_duration_seconds_count",
    "pgpulse_query_last_success_timestamp_seconds",
    "pgpulse_query_series",
    "pgpulse_query_series_dropped_total",
    "pgpulse_config_last_reload_successful",
    "pg_database_blocks_hit_total",
    "pg_database_blocks_read_total",
    "pg_database_cache_hit_ratio",
    "pg_cache_hit_ratio",
    "pg_cache_blocks_hit_total",
    "pg_cache_blocks_read_total",
    "pg_table_live_tuples",
    "pg_table_dead_tuples",
    "pg_table_dead_tuple_ratio",
    "pg_table_size_bytes",
    "pg_table_seq_scans_total",
    "pg_table_index_scans_total",
    "pg_table_index_usage_ratio",
    "pg_table_last_vacuum_age_seconds",
    "pg_table_last_analyze_age_seconds",
    "pg_index_scans_total",
    "pg_index_size_bytes",
    "pg_unused_indexes",
    "pg_unused_indexes_size_bytes",
    "pg_connections",
    "pg_settings_max_connections",
    "pg_settings_superuser_reserved_connections",
    "pg_connections_usage_ratio",
    "pg_oldest_transaction_age_seconds",
    "pg_longest_idle_in_transaction_seconds",
    "pg_blocked_sessions",
    "pg_lock_wait_longest_seconds",
    "pg_lock_blocking_pair_wait_seconds",
    "pg_partition_count",
    "pg_partition_size_bytes",
    "pg_partition_rows",
    "pg_partition_default_rows",
    "pg_partition_runway_seconds",
    "pg_stat_statements_available",
    "pg_statement_calls_total",
    "pg_statement_exec_seconds_total",
    "pg_slow_statements",
    "pg_statement_latency_seconds_bucket",
    "pg_statement_latency_seconds_sum",
    "pg_statement_latency_seconds_count",
    "pg_health_check_status",
];

/// Dashboard queries that may return nothing on a healthy test database, and why. The end-to-end
/// test induces a lock conflict, a failing query, statements, a vacuum and an analyze, so that
/// every other query has data.
const MAY_BE_EMPTY: &[(&str, &str, &str)] = &[];

/// Panel types of current Grafana (no deprecated `graph`, `singlestat`, `table-old`).
const PANEL_TYPES: &[&str] = &[
    "timeseries",
    "stat",
    "table",
    "heatmap",
    "gauge",
    "bargauge",
];

const RUNBOOKS: &str = "https://github.com/pgpulse/pgpulse/blob/main/docs/runbooks.md#";

/// The cache alert's traffic guard, lowered in the end-to-end copy of the rules: Prometheus there
/// has only seconds of data, and rate() over 10 minutes divides by the whole window.
const CACHE_GUARD: &str = ">= 100 # traffic guard: block requests per second";

// ------------------------------------------------------------------------------------------
// Reading the files
// ------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    alert: Option<String>,
    expr: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn alerts() -> Vec<Rule> {
    let file: RuleFile =
        serde_saphyr::from_str(&read("alerts/pgpulse.rules.yml")).expect("rules parse as YAML");
    file.groups
        .into_iter()
        .flat_map(|g| g.rules)
        .filter(|r| r.alert.is_some())
        .collect()
}

/// Files of `dir` (relative to the repository) ending in `ext`, sorted.
fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap_or_else(|e| panic!("list {dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    v.sort();
    v
}

/// (uid, dashboard JSON) of every dashboard.
fn dashboards() -> Vec<(String, Value)> {
    files("dashboards", ".json")
        .into_iter()
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (v["uid"].as_str().unwrap_or_default().to_owned(), v)
        })
        .collect()
}

/// Every panel of a dashboard, also those nested in rows.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// One query of a dashboard panel.
struct Target {
    /// `uid / panel title / refId`, for messages.
    at: String,
    uid: String,
    panel: String,
    expr: String,
}

fn targets() -> Vec<Target> {
    let mut out = Vec::new();
    for (uid, d) in dashboards() {
        for p in panels(&d) {
            let panel = p["title"].as_str().unwrap_or_default().to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(Target {
                    at: format!("{uid} / {panel} / {}", t["refId"].as_str().unwrap_or("?")),
                    uid: uid.clone(),
                    panel: panel.clone(),
                    expr: t["expr"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    out
}

/// A dashboard expression with Grafana's variables replaced, as Grafana would send it.
fn substitute(expr: &str, instance: &str, datname: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$job", "pgpulse")
        .replace("$instance", instance)
        .replace("$datname", datname)
}

/// Runs a tool; Ok(output) when it exits 0, else Err(output).
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap_or_else(|e| panic!("{program} not runnable ({e}); install the Debian packages prometheus and prometheus-alertmanager"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

// ------------------------------------------------------------------------------------------
// A small PromQL scanner: finds the metric selectors of an expression, their matchers, their
// range and the functions around them. Enough for our expressions; promtool does the parsing.
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Selector {
    name: String,
    /// Matchers with spaces removed, e.g. `job="$job"`.
    matchers: Vec<String>,
    /// The text between `[` and `]` right after the selector, if any.
    range: Option<String>,
    /// Enclosing function and aggregation names, outermost first.
    functions: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "inf", "nan", "offset"];
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn selectors(expr: &str) -> Vec<Selector> {
    let c: Vec<char> = expr.chars().collect();
    let (mut i, mut out) = (0, Vec::new());
    let mut stack: Vec<String> = Vec::new(); // what each open `(` belongs to
    let mut pending: Vec<String> = Vec::new(); // what the next `(`s belong to
    let skip_ws = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // The index of the `shut` that ends the bracket opened at `j` (no nesting in PromQL's
    // `{...}` and `[...]`; quotes may contain anything).
    let close = |j: usize, shut: char| {
        let (mut k, mut quote) = (j + 1, None);
        while k < c.len() {
            match (quote, c[k]) {
                (Some(_), '\\') => k += 1,
                (Some(q), ch) if ch == q => quote = None,
                (None, '"' | '\'' | '`') => quote = Some(c[k]),
                (None, ch) if ch == shut => return k,
                _ => {}
            }
            k += 1;
        }
        panic!("unbalanced {shut} in {expr}")
    };
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if matches!(ch, '"' | '\'' | '`') {
            let mut k = i + 1;
            while k < c.len() && c[k] != ch {
                k += if c[k] == '\\' { 2 } else { 1 };
            }
            i = k + 1;
        } else if ch == '[' || ch == '{' {
            i = close(i, if ch == '[' { ']' } else { '}' }) + 1;
        } else if ch == '(' {
            stack.push(if pending.is_empty() {
                String::new()
            } else {
                pending.remove(0)
            });
            i += 1;
        } else if ch == ')' {
            stack.pop();
            i += 1;
        } else if ch.is_ascii_digit() || ch == '.' {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_ws(i);
            if stack.last().is_some_and(|s| s == "#labels") || KEYWORDS.contains(&word.as_str()) {
                continue;
            }
            if LABEL_LISTS.contains(&word.as_str()) {
                if c.get(next) == Some(&'(') {
                    pending.insert(0, "#labels".into());
                }
            } else if AGGREGATIONS.contains(&word.as_str()) || c.get(next) == Some(&'(') {
                pending = vec![word];
            } else {
                let mut sel = Selector {
                    name: word,
                    matchers: vec![],
                    range: None,
                    functions: vec![],
                };
                if c.get(next) == Some(&'{') {
                    let end = close(next, '}');
                    let body: String = c[next + 1..end]
                        .iter()
                        .filter(|ch| !ch.is_whitespace())
                        .collect();
                    sel.matchers = body
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect();
                    i = end + 1;
                }
                let after = skip_ws(i);
                if c.get(after) == Some(&'[') {
                    let end = close(after, ']');
                    sel.range = Some(
                        c[after + 1..end]
                            .iter()
                            .collect::<String>()
                            .trim()
                            .to_owned(),
                    );
                    i = end + 1;
                }
                sel.functions = stack
                    .iter()
                    .filter(|s| !s.is_empty() && *s != "#labels")
                    .cloned()
                    .collect();
                out.push(sel);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Names ending like a counter or a histogram's parts: only meaningful inside a rate.
fn is_counter(name: &str) -> bool {
    ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// Every expression of the rules and dashboards, labelled for messages.
fn all_exprs() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = alerts()
        .into_iter()
        .map(|r| (r.alert.unwrap(), r.expr))
        .collect();
    v.extend(targets().into_iter().map(|t| (t.at, t.expr)));
    v
}

#[test]
fn the_scanner_finds_selectors_matchers_ranges_and_enclosing_functions() {
    let s = selectors(
        r#"histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{job="x", le!="1"}[5m]))) > 0.1
           and on (job) b{instance=~"$instance"} # a comment mentioning c
           / ignoring (kind) sum(c) by (d) offset 5m"#,
    );
    let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a_bucket", "b", "c"]);
    assert_eq!(s[0].matchers, [r#"job="x""#, r#"le!="1""#]);
    assert_eq!(s[0].range.as_deref(), Some("5m"));
    assert_eq!(s[0].functions, ["histogram_quantile", "sum", "rate"]);
    assert_eq!(s[1].matchers, [r#"instance=~"$instance""#]);
    assert!(s[1].functions.is_empty() && s[2].functions == ["sum"]);
}

// ------------------------------------------------------------------------------------------
// Rules and Alertmanager
// ------------------------------------------------------------------------------------------

/// promtool accepts the rules (also its duplicate-rule lint) and every unit test passes.
#[test]
fn promtool_finds_the_rules_clean_and_their_unit_tests_pass() {
    let check = run(
        "promtool",
        &[
            "check",
            "rules",
            "--lint=all",
            "--lint-fatal",
            "alerts/pgpulse.rules.yml",
        ],
    );
    assert!(
        check.as_ref().is_ok_and(|o| o.contains("SUCCESS")),
        "promtool check rules:\n{check:?}"
    );
    let tests: Vec<String> = files("alerts/tests", ".yml")
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(!tests.is_empty(), "no unit tests in alerts/tests");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let out = run("promtool", &args).unwrap_or_else(|o| panic!("promtool test rules failed:\n{o}"));
    assert_eq!(out.matches("SUCCESS").count(), tests.len(), "{out}");
}

/// Every alert is unit-tested both firing (with its labels and annotations) and silent.
#[test]
fn every_alert_has_unit_tests_that_see_it_fire_and_stay_silent() {
    let tests: String = files("alerts/tests", ".yml")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for rule in alerts() {
        let name = rule.alert.unwrap();
        let cases: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            .filter(|c| c.starts_with(&format!("{name}\n")))
            .collect();
        let firing = cases
            .iter()
            .filter(|c| c.contains("exp_annotations:"))
            .count();
        let silent = cases
            .iter()
            .filter(|c| {
                c.lines()
                    .nth(1)
                    .is_some_and(|l| l.trim() == "exp_alerts: []")
            })
            .count();
        assert!(
            firing >= 1 && silent >= 1,
            "{name}: {firing} firing and {silent} silent unit test cases"
        );
    }
}

/// Each alert: a severity, a summary, a description quoting its value and labels, and a runbook
/// link whose anchor is a heading of docs/runbooks.md.
#[test]
fn every_alert_has_a_severity_annotations_with_its_values_and_a_runbook_section() {
    let runbooks = read("docs/runbooks.md");
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase().replace(' ', "-"))
        .collect();
    let all = alerts();
    assert!(
        all.len() >= 12,
        "expected the documented alerts, got {}",
        all.len()
    );
    let mut names = BTreeSet::new();
    for r in &all {
        let name = r.alert.as_deref().unwrap();
        assert!(names.insert(name), "{name} is defined twice");
        let severity = r.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        let description = r
            .annotations
            .get("description")
            .map(String::as_str)
            .unwrap_or("");
        assert!(
            !r.annotations.get("summary").is_none_or(|s| s.is_empty()),
            "{name}: no summary"
        );
        if !r.expr.trim_start().starts_with("absent(") {
            assert!(
                description.contains("$value") && description.contains("$labels."),
                "{name}: description without values: {description}"
            );
        }
        let url = r
            .annotations
            .get("runbook_url")
            .map(String::as_str)
            .unwrap_or("");
        let anchor = url
            .strip_prefix(RUNBOOKS)
            .unwrap_or_else(|| panic!("{name}: runbook_url {url}"));
        assert_eq!(anchor, name.to_lowercase(), "{name}: runbook anchor");
        assert!(
            anchors.contains(anchor),
            "{name}: docs/runbooks.md has no `## {name}` section"
        );
    }
}

/// amtool accepts the example and routes by severity: critical pages, warning goes to chat.
#[test]
fn amtool_accepts_the_alertmanager_example_and_routes_critical_to_the_pager_and_warnings_to_chat() {
    run("amtool", &["check-config", "alerts/alertmanager.yml"])
        .unwrap_or_else(|o| panic!("amtool check-config:\n{o}"));
    for (severity, receiver) in [("critical", "pager"), ("warning", "chat")] {
        let verify = format!("--verify.receivers={receiver}");
        let label = format!("severity={severity}");
        let args = [
            "config",
            "routes",
            "test",
            "--config.file=alerts/alertmanager.yml",
            &verify,
            "alertname=PgDown",
            "instance=db1:9864",
            &label,
        ];
        let out = run("amtool", &args)
            .unwrap_or_else(|o| panic!("severity={severity} is not routed to {receiver}:\n{o}"));
        assert_eq!(
            out.lines()
                .find(|l| !l.starts_with("Warning"))
                .map(str::trim),
            Some(receiver),
            "{out}"
        );
    }
}

/// A spawned server process, killed and reaped when dropped (also when the test panics).
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(program: &str, args: &[String], log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("{program} not runnable ({e}); install the Debian package"));
        Self { child, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    pgpulse::demo::cluster::free_port().expect("a free port")
}

/// Waits until `http://addr/-/ready` answers 200.
async fn ready(server: &Server, addr: &str) {
    let url = format!("http://{addr}/-/ready");
    let ok = eventually(Duration::from_secs(30), || async {
        let r = reqwest::get(&url).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ok.is_some(), "{addr} not ready:\n{}", server.log_tail());
}

/// Starts Alertmanager with `config` in `dir` (clustering off).
async fn alertmanager(dir: &Path, config: &str) -> (Server, String) {
    std::fs::write(dir.join("alertmanager.yml"), config).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let args = vec![
        format!("--config.file={}", dir.join("alertmanager.yml").display()),
        format!("--storage.path={}", dir.join("am-data").display()),
        format!("--web.listen-address={addr}"),
        "--cluster.listen-address=".into(),
    ];
    let server = Server::spawn(
        "/usr/bin/prometheus-alertmanager",
        &args,
        dir.join("alertmanager.log"),
    );
    ready(&server, &addr).await;
    (server, addr)
}

/// A real Alertmanager with our example config: PgDown silences its instance's other alerts,
/// PgpulseDown silences PgDown, the critical runway silences the warning of the same parent;
/// other instances and parents stay active.
#[tokio::test]
async fn a_real_alertmanager_inhibits_the_alerts_of_an_instance_whose_database_or_exporter_is_down()
{
    let dir = tempfile::tempdir().unwrap();
    // Our config, with the example receivers' URLs pointed at a closed local port.
    let config = read("alerts/alertmanager.yml")
        .replace("https://pager.example.com", "http://127.0.0.1:9")
        .replace("https://chat.example.com", "http://127.0.0.1:9");
    let (am, addr) = alertmanager(dir.path(), &config).await;
    let alert = |name: &str, instance: &str, extra: &[(&str, &str)]| {
        let mut labels = json!({"alertname": name, "instance": instance, "job": "pgpulse", "severity": "warning"});
        for (k, v) in extra {
            labels[*k] = json!(v);
        }
        json!({"labels": labels})
    };
    let posted = vec![
        alert("PgDown", "db1:9864", &[]),
        alert("PgCacheHitRatioLow", "db1:9864", &[("datname", "trade")]),
        alert("PgpulseQueryFailing", "db1:9864", &[("query", "tables")]),
        alert("PgCacheHitRatioLow", "db2:9864", &[("datname", "trade")]),
        alert("PgpulseDown", "db3:9864", &[]),
        alert("PgDown", "db3:9864", &[]),
        alert(
            "PgPartitionRunwayCritical",
            "db2:9864",
            &[("parent", "public.trades")],
        ),
        alert(
            "PgPartitionRunwayLow",
            "db2:9864",
            &[("parent", "public.trades")],
        ),
        alert(
            "PgPartitionRunwayLow",
            "db2:9864",
            &[("parent", "public.orders")],
        ),
    ];
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{addr}/api/v2/alerts"))
        .header("content-type", "application/json")
        .body(Value::Array(posted).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "post alerts: {}", r.status());
    let expected: BTreeSet<(String, String, String, String)> = [
        ("PgDown", "db1:9864", "", "active"),
        ("PgCacheHitRatioLow", "db1:9864", "", "suppressed"),
        ("PgpulseQueryFailing", "db1:9864", "", "suppressed"),
        ("PgCacheHitRatioLow", "db2:9864", "", "active"),
        ("PgpulseDown", "db3:9864", "", "active"),
        ("PgDown", "db3:9864", "", "suppressed"),
        (
            "PgPartitionRunwayCritical",
            "db2:9864",
            "public.trades",
            "active",
        ),
        (
            "PgPartitionRunwayLow",
            "db2:9864",
            "public.trades",
            "suppressed",
        ),
        (
            "PgPartitionRunwayLow",
            "db2:9864",
            "public.orders",
            "active",
        ),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let body: Value = serde_json::from_str(
            &reqwest::get(format!("http://{addr}/api/v2/alerts"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
        .unwrap();
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let got: BTreeSet<_> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    text(&a["labels"]["alertname"]),
                    text(&a["labels"]["instance"]),
                    text(&a["labels"]["parent"]),
                    text(&a["status"]["state"]),
                )
            })
            .collect();
        if got == expected || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(got, expected, "inhibition\n{}", am.log_tail());
}

// ------------------------------------------------------------------------------------------
// PromQL and dashboards
// ------------------------------------------------------------------------------------------

/// promtool 2.42 has no `promql` command: every expression (rules, dashboard targets with
/// Grafana's variables substituted, the selectors of the variables' label_values queries) goes
/// into a temporary rule file as a recording rule, and `promtool check rules` parses them all.
#[test]
fn every_promql_expression_of_the_dashboards_and_rules_parses() {
    let mut exprs: Vec<(String, String)> = alerts()
        .into_iter()
        .map(|r| (r.alert.unwrap(), r.expr))
        .collect();
    exprs.extend(
        targets()
            .into_iter()
            .map(|t| (t.at, substitute(&t.expr, "127.0.0.1:9864", "trade"))),
    );
    for (uid, d) in dashboards() {
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(q) = v["query"]["query"].as_str().or(v["query"].as_str())
                && let Some(inner) = q.strip_prefix("label_values(")
            {
                let selector = inner
                    .rsplit_once(',')
                    .map(|(s, _)| s)
                    .unwrap_or(inner.trim_end_matches(')'));
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
            Value::String(e.clone())
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parse.yml");
    std::fs::write(&path, &file).unwrap();
    if let Err(out) = run("promtool", &["check", "rules", &path.to_string_lossy()]) {
        let named: Vec<String> = exprs
            .iter()
            .enumerate()
            .filter(|(i, _)| out.contains(&format!("parse:expr_{i}\"")))
            .map(|(_, (at, e))| format!("{at}: {e}"))
            .collect();
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
    assert_eq!(
        uids,
        BTreeSet::from(["pgpulse-overview", "pgpulse-statements", "pgpulse-tables"]),
        "uids must be fixed and unique"
    );
    for (uid, d) in &all {
        assert_eq!(d["schemaVersion"], 39, "{uid}");
        assert!(
            d["id"].is_null(),
            "{uid}: id must be null (Grafana assigns it)"
        );
        assert!(
            !d.to_string().contains("${DS_") && d.get("__inputs").is_none(),
            "{uid}: exported data source inputs"
        );
        let vars = d["templating"]["list"].as_array().expect("templating");
        let var = |name: &str| vars.iter().find(|v| v["name"] == name);
        let dsv = var("datasource").unwrap_or_else(|| panic!("{uid}: no datasource variable"));
        assert_eq!(
            (dsv["type"].as_str(), dsv["query"].as_str()),
            (Some("datasource"), Some("prometheus")),
            "{uid}"
        );
        let mut needed = vec!["job", "instance"];
        if d.to_string().contains("$datname") {
            needed.push("datname");
        }
        for name in needed {
            let v = var(name).unwrap_or_else(|| panic!("{uid}: no {name} variable"));
            assert_eq!(v["type"], "query", "{uid}: {name}");
            assert_eq!(v["datasource"], ds, "{uid}: variable {name} data source");
            assert!(
                v["query"]["query"]
                    .as_str()
                    .is_some_and(|q| q.starts_with("label_values(")),
                "{uid}: {name} query"
            );
        }
        for p in panels(d) {
            assert_eq!(
                p["datasource"], ds,
                "{uid} / {}: panel data source",
                p["title"]
            );
            for t in p["targets"].as_array().into_iter().flatten() {
                assert_eq!(
                    t["datasource"], ds,
                    "{uid} / {}: target data source",
                    p["title"]
                );
            }
        }
    }
}

/// Every panel: a current panel type, a title, a description, a unit, at least one query.
#[test]
fn every_dashboard_panel_has_a_current_type_a_title_a_description_and_a_unit() {
    for (uid, d) in dashboards() {
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or_default();
            let at = format!("{uid} / {title}");
            assert!(!title.is_empty(), "{uid}: a panel without title");
            assert!(
                PANEL_TYPES.contains(&p["type"].as_str().unwrap_or_default()),
                "{at}: panel type {}",
                p["type"]
            );
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{at}: no description"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{at}: no unit"
            );
            let targets = p["targets"].as_array().map(Vec::len).unwrap_or(0);
            assert!(targets > 0, "{at}: no query");
        }
    }
}

/// Every selector of every dashboard query has job="$job" and instance=~"$instance", and every
/// range is `$__rate_interval` (so rates work at any scrape interval).
#[test]
fn every_dashboard_query_selects_job_and_instance_and_rates_over_rate_interval() {
    let mut problems = Vec::new();
    for t in targets() {
        let found = selectors(&t.expr);
        if found.is_empty() {
            problems.push(format!("{}: no metric selector in {}", t.at, t.expr));
        }
        for s in found {
            let has = |m: &str| s.matchers.iter().any(|x| x == m);
            if !has(r#"job="$job""#)
                || !(has(r#"instance=~"$instance""#) || has(r#"instance="$instance""#))
            {
                problems.push(format!(
                    "{}: {} lacks job/instance matchers {:?}",
                    t.at, s.name, s.matchers
                ));
            }
            if s.range.as_ref().is_some_and(|r| r != "$__rate_interval") {
                problems.push(format!(
                    "{}: {}[{}] instead of [$__rate_interval]",
                    t.at,
                    s.name,
                    s.range.unwrap()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Counters and histogram parts make sense only as rates: they appear only as the range-vector
/// argument of rate/increase/irate (histogram_quantile takes the rate of the buckets).
#[test]
fn counters_appear_only_inside_rate_increase_or_irate() {
    let mut problems = Vec::new();
    for (at, expr) in all_exprs() {
        for s in selectors(&expr).into_iter().filter(|s| is_counter(&s.name)) {
            let inner = s.functions.last().map(String::as_str);
            if s.range.is_none() || !matches!(inner, Some("rate" | "increase" | "irate")) {
                problems.push(format!(
                    "{at}: counter {} used as {:?} {:?}",
                    s.name, s.functions, s.range
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A panel showing an alerted quantity carries the alert's threshold as a step.
#[test]
fn dashboard_thresholds_equal_the_alert_thresholds() {
    let rules: String = alerts().iter().map(|r| r.expr.clone()).collect();
    // (what the panel's queries contain, the thresholds its steps must include)
    let cases: &[(&str, &[f64])] = &[
        ("pg_database_blocks_hit_total", &[0.95]),
        ("pg_cache_hit_ratio", &[0.95]),
        ("pg_connections_usage_ratio", &[0.8]),
        (
            "histogram_quantile(0.99, sum by (instance, le) (rate(pg_statement_latency",
            &[0.1],
        ),
        ("pg_table_dead_tuple_ratio", &[0.3]),
        (
            "pg_partition_runway_seconds",
            &[2.0 * 86400.0, 7.0 * 86400.0],
        ),
        ("pg_lock_wait_longest_seconds", &[60.0]),
    ];
    for needle in [
        "< 0.95",
        "> 0.8",
        "> 0.1",
        "> 0.3",
        "< 7 * 86400",
        "< 2 * 86400",
        "> 60",
    ] {
        assert!(
            rules.contains(needle),
            "the rules no longer say {needle}: update this test and the dashboards"
        );
    }
    let mut seen = BTreeMap::new();
    for (uid, d) in dashboards() {
        for p in panels(&d) {
            let exprs: String = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["expr"].as_str())
                .collect();
            let steps: Vec<f64> = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["value"].as_f64())
                .collect();
            for (needle, wanted) in cases {
                if exprs.contains(needle) {
                    *seen.entry(*needle).or_insert(0) += 1;
                    for w in *wanted {
                        assert!(
                            steps.iter().any(|s| (s - w).abs() < 1e-9),
                            "{uid} / {}: threshold steps {steps:?} lack {w}",
                            p["title"]
                        );
                    }
                }
            }
        }
    }
    for (needle, _) in cases {
        assert!(seen.contains_key(needle), "no panel shows {needle}");
    }
}

/// Grafana provisioning: a Prometheus data source, and a file provider reading
/// /var/lib/grafana/dashboards.
#[test]
fn grafana_provisioning_points_at_prometheus_and_the_dashboards_directory() {
    let ds: Value =
        serde_saphyr::from_str(&read("dashboards/provisioning/datasources/prometheus.yml"))
            .unwrap();
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    let p: Value =
        serde_saphyr::from_str(&read("dashboards/provisioning/dashboards/pgpulse.yml")).unwrap();
    assert_eq!(p["providers"][0]["type"], "file");
    assert_eq!(
        p["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
}

// ------------------------------------------------------------------------------------------
// The metric contract
// ------------------------------------------------------------------------------------------

/// Metric names used by the rules and the dashboards.
fn used_metrics() -> BTreeSet<String> {
    all_exprs()
        .iter()
        .flat_map(|(_, e)| selectors(e))
        .map(|s| s.name)
        .collect()
}

/// Nothing in a rule or dashboard refers to a metric pgpulse does not promise.
#[test]
fn every_metric_used_by_dashboards_and_alerts_is_in_the_contract() {
    let unknown: Vec<String> = used_metrics()
        .into_iter()
        .filter(|m| !CONTRACT.contains(&m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "not in the metric contract: {unknown:?}"
    );
}

/// queries.yaml with every interval 2s (timeout 1500ms, expire_after 30s), plus a query that
/// always fails so that pgpulse_query_errors_total has a series: tests see data in seconds.
fn test_catalog() -> String {
    let mut out = String::new();
    let mut indent = None;
    for line in read("queries.yaml").lines() {
        let t = line.trim_start();
        let pad = &line[..line.len() - t.len()];
        if t.starts_with("- name:") {
            indent.get_or_insert_with(|| pad.to_owned());
        }
        let line = match t.split(':').next() {
            Some("interval") => format!("{pad}interval: 2s"),
            Some("timeout") => format!("{pad}timeout: 1500ms"),
            Some("expire_after") => format!("{pad}expire_after: 30s"),
            _ => line.to_owned(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    let p = indent.unwrap_or_else(|| "  ".into());
    out.push_str(&format!(
        "{p}- name: alerts_test_failing\n{p}  help: Always fails (division by zero).\n{p}  interval: 2s\n\
         {p}  timeout: 1500ms\n{p}  sql: SELECT 1 / 0 AS x\n{p}  metrics:\n{p}    - column: x\n\
         {p}      name: pg_alerts_test_failing\n{p}      type: gauge\n{p}      help: Never set.\n"
    ));
    out
}

fn fast(cfg: &mut pgpulse::config::Config) {
    cfg.default_interval = Duration::from_secs(2);
    cfg.default_timeout = Duration::from_millis(1500);
}

/// Work that makes every metric have series: a vacuum and an analyze (vacuum/analyze ages) and a
/// session blocked on a row lock of a table the workload never touches (blocking metrics; it
/// lasts as long as the returned holder connection). Returns a client for the workload.
async fn induce_activity(db: &TestDb) -> (Client, Client) {
    let c = db.client().await;
    c.batch_execute("VACUUM (ANALYZE) candles")
        .await
        .expect("vacuum");
    c.batch_execute(
        "CREATE TABLE lock_demo (id int PRIMARY KEY); INSERT INTO lock_demo VALUES (1)",
    )
    .await
    .expect("lock_demo");
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; SELECT * FROM lock_demo FOR UPDATE")
        .await
        .expect("row lock");
    let waiter = db.client().await;
    tokio::spawn(async move {
        let _ = waiter.batch_execute("UPDATE lock_demo SET id = id").await;
    });
    (c, holder)
}

/// Runs workload rounds until `stop`.
fn spawn_workload(
    client: Client,
    stop: Arc<AtomicBool>,
    extra_sql: Option<&'static str>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stats = pgpulse::demo::workload::WorkloadStats::default();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            pgpulse::demo::workload::round(&client, i, &stats).await;
            if let Some(sql) = extra_sql {
                let _ = client.batch_execute(sql).await;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Whether the exposition has a sample of `name`.
fn has_sample(body: &str, name: &str) -> bool {
    body.lines().any(|l| {
        !l.starts_with('#')
            && (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
    })
}

/// Against a live pgpulse on the trade database (with the repository's queries.yaml), every
/// metric the rules and dashboards use has samples. Fails while queries.yaml lacks a metric.
#[tokio::test(flavor = "multi_thread")]
async fn every_metric_used_by_dashboards_and_alerts_is_emitted_by_a_live_pgpulse() {
    let db = TestDb::trade_migrated().await;
    let (client, _holder) = induce_activity(&db).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_workload(client, stop.clone(), None);
    let svc = start(&db.url, &test_catalog(), fast).await;
    let wanted: Vec<String> = used_metrics().into_iter().filter(|m| m != "up").collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let body = svc.metrics().await;
        let missing: Vec<&String> = wanted.iter().filter(|m| !has_sample(&body, m)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    svc.stop().await;
    assert!(
        missing.is_empty(),
        "used by dashboards or alerts but not emitted by pgpulse with queries.yaml: {missing:?}"
    );
}

// ------------------------------------------------------------------------------------------
// End to end: pgpulse → Prometheus (our rules) → Alertmanager → a webhook of the test
// ------------------------------------------------------------------------------------------

/// The POST bodies a webhook receiver got.
#[derive(Clone, Default)]
struct Webhook(Arc<Mutex<Vec<String>>>);

impl Webhook {
    /// Serves the receiver on 127.0.0.1:0; returns its URL.
    async fn serve(&self) -> (String, tokio::task::JoinHandle<()>) {
        async fn receive(
            axum::extract::State(h): axum::extract::State<Webhook>,
            body: String,
        ) -> &'static str {
            h.0.lock().unwrap().push(body);
            "ok"
        }
        let app = axum::Router::new()
            .route("/", axum::routing::post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        (
            url,
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
        )
    }

    fn received(&self, alertname: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.contains(&format!("\"alertname\":\"{alertname}\"")))
    }
}

/// Our rules with every `for:` shortened to 1s and the cache traffic guard lowered.
fn fast_rules() -> String {
    let text = read("alerts/pgpulse.rules.yml");
    assert!(
        text.contains(CACHE_GUARD),
        "the cache alert's traffic guard changed; update CACHE_GUARD"
    );
    let text = text.replace(CACHE_GUARD, ">= 1 # traffic guard (lowered for the test)");
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("for:") {
                format!("{}for: 1s", &l[..l.len() - t.len()])
            } else {
                l.to_owned()
            }
        })
        .collect();
    lines.join("\n")
}

/// One Prometheus instant query: Ok(number of series) or Err(message).
async fn query(prometheus: &str, expr: &str) -> Result<usize, String> {
    let r = reqwest::Client::new()
        .post(format!("http://{prometheus}/api/v1/query"))
        .form(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_str(&r.text().await.map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    match (body["status"].as_str(), body["data"]["resultType"].as_str()) {
        (Some("success"), Some("scalar" | "string")) => Ok(1),
        (Some("success"), _) => Ok(body["data"]["result"].as_array().map(Vec::len).unwrap_or(0)),
        _ => Err(body["error"].to_string()),
    }
}

/// Induces a dead-tuple ratio of 50% on a 27 MB table and a cache hit ratio near 0 (sequential
/// scans of another 27 MB table through 128 kB of shared_buffers), then asserts that our rules,
/// evaluated by a real Prometheus, deliver PgTableBloatHigh and PgCacheHitRatioLow through a real
/// Alertmanager to the test's webhook, and that every dashboard query returns data.
#[tokio::test(flavor = "multi_thread")]
async fn alerts_reach_alertmanager_and_dashboard_queries_return_data_end_to_end() {
    let cluster = own_cluster(ClusterOptions {
        shared_buffers: "128kB".into(),
        ..Default::default()
    });
    let db = TestDb::on(&cluster.url("postgres")).await;
    let c = db.client().await;
    pgpulse::demo::schema::install(&c)
        .await
        .expect("trade-engine schema");
    db.migrate().await;
    // Bloat: never read again after the DELETE, so no scan prunes the dead tuples away.
    // One transaction per statement; the stats flush when the session goes idle after the last.
    for sql in [
        "CREATE TABLE bloat_demo (id int, pad text) WITH (autovacuum_enabled = false)",
        "INSERT INTO bloat_demo SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g",
        "CREATE TABLE cache_demo (id int, pad text) WITH (autovacuum_enabled = false)",
        "INSERT INTO cache_demo SELECT g, repeat('y', 100) FROM generate_series(1, 200000) g",
        "DELETE FROM bloat_demo WHERE id % 2 = 0",
        "SELECT pg_stat_force_next_flush()",
    ] {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let (client, _holder) = induce_activity(&db).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_workload(
        client,
        stop.clone(),
        Some("SELECT count(*) FROM cache_demo"),
    );
    let svc = start(&db.url, &test_catalog(), fast).await;

    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::default();
    let (hook_url, hook_task) = hook.serve().await;
    let am_config = format!(
        "route: {{receiver: hook, group_by: [alertname, instance], group_wait: 1s, group_interval: 1s, repeat_interval: 1h}}\n\
         receivers: [{{name: hook, webhook_configs: [{{url: '{hook_url}', send_resolved: false}}]}}]\n"
    );
    let (am, am_addr) = alertmanager(dir.path(), &am_config).await;
    std::fs::write(dir.path().join("rules.yml"), fast_rules()).unwrap();
    let prom_addr = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}\nrule_files: [rules.yml]\n\
             alerting: {{alertmanagers: [{{static_configs: [{{targets: ['{am_addr}']}}]}}]}}\n\
             scrape_configs: [{{job_name: pgpulse, static_configs: [{{targets: ['{}']}}]}}]\n",
            svc.addr
        ),
    )
    .unwrap();
    let prom = Server::spawn(
        "/usr/bin/prometheus",
        &[
            format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            format!("--web.listen-address={prom_addr}"),
        ],
        dir.path().join("prometheus.log"),
    );
    ready(&prom, &prom_addr).await;

    let mut problems = Vec::new();
    let wanted = ["PgTableBloatHigh", "PgCacheHitRatioLow"];
    let delivered = eventually(Duration::from_secs(180), || async {
        wanted.iter().all(|a| hook.received(a)).then_some(())
    })
    .await;
    if delivered.is_none() {
        let body = svc.metrics().await;
        let missing: Vec<&str> = [
            "pg_table_dead_tuple_ratio",
            "pg_table_size_bytes",
            "pg_database_blocks_hit_total",
            "pg_database_blocks_read_total",
        ]
        .into_iter()
        .filter(|m| !has_sample(&body, m))
        .collect();
        let firing = reqwest::get(format!("http://{prom_addr}/api/v1/alerts"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for a in wanted.iter().filter(|a| !hook.received(a)) {
            problems.push(format!("{a} was not delivered (metrics pgpulse lacks: {missing:?}); Prometheus alerts: {firing}"));
        }
    }
    let instance = svc.addr.to_string();
    for t in targets() {
        if MAY_BE_EMPTY
            .iter()
            .any(|(uid, panel, _)| *uid == t.uid && *panel == t.panel)
        {
            continue;
        }
        match query(&prom_addr, &substitute(&t.expr, &instance, &db.name)).await {
            Ok(0) => problems.push(format!("{}: no data", t.at)),
            Ok(_) => {}
            Err(e) => problems.push(format!("{}: {e}", t.at)),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    hook_task.abort();
    svc.stop().await;
    assert!(
        problems.is_empty(),
        "{}\n--- prometheus log:\n{}\n--- alertmanager log:\n{}",
        problems.join("\n"),
        prom.log_tail(),
        am.log_tail()
    );
}
