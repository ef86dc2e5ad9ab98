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
const CONTRACT: &str = "up pg_up pg_server_version_num pgpulse_build_info
    pgpulse_query_errors_total pgpulse_query_runs_total pgpulse_query_duration_seconds_bucket
    pgpulse_query_duration_seconds_sum pgpulse_query_duration_seconds_count
    pgpulse_query_last_success_timestamp_seconds pgpulse_query_series
    pgpulse_query_series_dropped_total pgpulse_config_last_reload_successful
    pg_database_blocks_hit_total pg_database_blocks_read_total pg_database_cache_hit_ratio
    pg_cache_hit_ratio pg_cache_blocks_hit_total pg_cache_blocks_read_total
    pg_table_live_tuples pg_table_dead_tuples pg_table_dead_tuple_ratio pg_table_size_bytes
    pg_table_seq_scans_total pg_table_index_scans_total pg_table_index_usage_ratio
    pg_table_last_vacuum_age_seconds pg_table_last_analyze_age_seconds
    pg_index_scans_total pg_index_size_bytes pg_unused_indexes pg_unused_indexes_size_bytes
    pg_connections pg_settings_max_connections pg_settings_superuser_reserved_connections
    pg_connections_usage_ratio pg_oldest_transaction_age_seconds
    pg_longest_idle_in_transaction_seconds
    pg_blocked_sessions pg_lock_wait_longest_seconds pg_lock_blocking_pair_wait_seconds
    pg_partition_count pg_partition_size_bytes pg_partition_rows pg_partition_default_rows
    pg_partition_runway_seconds
    pg_stat_statements_available pg_statement_calls_total pg_statement_exec_seconds_total
    pg_slow_statements pg_statement_latency_seconds_bucket pg_statement_latency_seconds_sum
    pg_statement_latency_seconds_count pg_health_check_status";

/// Dashboard panels (uid, title) whose queries may return nothing on a healthy test database,
/// with the reason. Empty: the end-to-end test induces a lock conflict (blocking pairs), a
/// failing query (query errors), statements, a vacuum and an analyze, so every query has data.
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
/// has seconds of data, and rate() over 10 minutes divides by the whole window.
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

impl Rule {
    fn name(&self) -> &str {
        self.alert.as_deref().unwrap_or_default()
    }

    fn annotation(&self, key: &str) -> &str {
        self.annotations
            .get(key)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The alerting rules of alerts/pgpulse.rules.yml.
fn alerts() -> Vec<Rule> {
    let file: RuleFile = serde_saphyr::from_str(&read("alerts/pgpulse.rules.yml")).unwrap();
    let rules = file.groups.into_iter().flat_map(|g| g.rules);
    rules.filter(|r| r.alert.is_some()).collect()
}

/// Files of `dir` (relative to the repository) ending in `ext`, sorted.
fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(repo(dir)).unwrap_or_else(|e| panic!("list {dir}: {e}"));
    let mut v: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    v.retain(|p| p.to_string_lossy().ends_with(ext));
    v.sort();
    v
}

/// The elements of a JSON array (none when it is not one).
fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// A JSON string, or "".
fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// (uid, JSON) of every dashboard.
fn dashboards() -> Vec<(String, Value)> {
    let parse = |p: PathBuf| {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        (text(&v["uid"]).to_owned(), v)
    };
    files("dashboards", ".json")
        .into_iter()
        .map(parse)
        .collect()
}

/// Every panel of a dashboard, also those nested in rows.
fn panels(d: &Value) -> Vec<&Value> {
    items(&d["panels"])
        .flat_map(|p| std::iter::once(p).chain(items(&p["panels"])))
        .collect()
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
            let panel = text(&p["title"]).to_owned();
            for t in items(&p["targets"]) {
                let at = format!("{uid} / {panel} / {}", text(&t["refId"]));
                let expr = text(&t["expr"]).to_owned();
                out.push(Target {
                    at,
                    uid: uid.clone(),
                    panel: panel.clone(),
                    expr,
                });
            }
        }
    }
    out
}

/// Every expression of the rules and dashboards, labelled for messages.
fn all_exprs() -> Vec<(String, String)> {
    let rules = alerts().into_iter().map(|r| (r.name().to_owned(), r.expr));
    rules
        .chain(targets().into_iter().map(|t| (t.at, t.expr)))
        .collect()
}

/// A dashboard expression with Grafana's variables replaced, as Grafana would send it.
fn substitute(expr: &str, instance: &str, datname: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$job", "pgpulse")
        .replace("$instance", instance)
        .replace("$datname", datname)
}

/// Runs a tool in the repository with space-separated arguments (none of ours contains a
/// space); Ok(output) when it exits 0, else Err(output).
fn tool(cmdline: &str) -> Result<String, String> {
    let mut words = cmdline.split_whitespace();
    let program = words.next().unwrap();
    let out = Command::new(program).args(words).current_dir(repo("")).output().unwrap_or_else(|e| {
        panic!("{program} not runnable ({e}); install the packages prometheus and prometheus-alertmanager")
    });
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if out.status.success() {
        Ok(format!("{o}{e}"))
    } else {
        Err(format!("{o}{e}"))
    }
}

/// Fails with every problem found, one per line.
fn assert_none(problems: Vec<String>) {
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ------------------------------------------------------------------------------------------
// A small PromQL scanner: the metric selectors of an expression with their matchers, their
// range and the functions around them. Enough for lint; promtool does the real parsing.
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Selector {
    name: String,
    /// Matchers with spaces removed, e.g. `job="$job"`.
    matchers: Vec<String>,
    /// The text between `[` and `]` right after the selector, if any.
    range: Option<String>,
    /// Enclosing functions and aggregations, outermost first.
    functions: Vec<String>,
}

const AGGREGATIONS: &str =
    "sum avg min max count group stddev stdvar topk bottomk quantile count_values";
const KEYWORDS: &str = "and or unless bool inf nan offset";
const LABEL_LISTS: &str = "by without on ignoring group_left group_right";
const LABELS: &str = "#labels";

fn is_one_of(word: &str, list: &str) -> bool {
    list.split_whitespace().any(|w| w == word)
}

fn selectors(expr: &str) -> Vec<Selector> {
    let c: Vec<char> = expr.chars().collect();
    let (mut i, mut out) = (0, Vec::new());
    let mut stack: Vec<String> = Vec::new(); // what each open `(` belongs to
    let mut pending: Vec<String> = Vec::new(); // what the next `(`s will belong to
    let skip_ws = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // The index of the `shut` ending the bracket opened at `j` (`{}` and `[]` do not nest).
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
    let word_char = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    while i < c.len() {
        let ch = c[i];
        if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if matches!(ch, '"' | '\'' | '`') {
            i = close(i, ch) + 1;
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
        } else if word_char(ch) {
            let start = i;
            while i < c.len() && word_char(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_ws(i);
            if stack.last().is_some_and(|s| s == LABELS) || is_one_of(&word, KEYWORDS) {
                continue;
            }
            if is_one_of(&word, LABEL_LISTS) {
                if c.get(next) == Some(&'(') {
                    pending.insert(0, LABELS.into());
                }
                continue;
            }
            if is_one_of(&word, AGGREGATIONS) || c.get(next) == Some(&'(') {
                pending = vec![word];
                continue;
            }
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
            let named = stack.iter().filter(|s| !s.is_empty() && *s != LABELS);
            sel.functions = named.cloned().collect();
            out.push(sel);
        } else {
            i += 1;
        }
    }
    out
}

/// The scanner itself: names, matchers, ranges, enclosing functions; label lists, strings,
/// comments, keywords and durations are not metrics.
#[test]
fn the_promql_scanner_finds_selectors_matchers_ranges_and_enclosing_functions() {
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

/// Metric names used by the rules and the dashboards.
fn used_metrics() -> BTreeSet<String> {
    all_exprs()
        .iter()
        .flat_map(|(_, e)| selectors(e))
        .map(|s| s.name)
        .collect()
}

// ------------------------------------------------------------------------------------------
// Rules and Alertmanager
// ------------------------------------------------------------------------------------------

/// promtool accepts the rules (with its duplicate-rule lint fatal) and every unit test passes.
#[test]
fn promtool_finds_the_rules_clean_and_their_unit_tests_pass() {
    let check = tool("promtool check rules --lint=all --lint-fatal alerts/pgpulse.rules.yml");
    assert!(
        check.as_ref().is_ok_and(|o| o.contains("SUCCESS")),
        "{check:?}"
    );
    let tests: Vec<String> = files("alerts/tests", ".yml")
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(!tests.is_empty(), "no unit tests in alerts/tests");
    let out =
        tool(&format!("promtool test rules {}", tests.join(" "))).unwrap_or_else(|o| panic!("{o}"));
    assert_eq!(out.matches("SUCCESS").count(), tests.len(), "{out}");
}

/// Every alert is unit-tested firing (with its labels and annotations) and silent.
#[test]
fn every_alert_has_unit_tests_that_see_it_fire_and_stay_silent() {
    let tests: String = files("alerts/tests", ".yml")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for rule in alerts() {
        let name = rule.name();
        let cases = tests
            .split("alertname: ")
            .filter(|c| c.starts_with(&format!("{name}\n")));
        let (mut firing, mut silent) = (0, 0);
        for case in cases {
            firing += usize::from(case.contains("exp_annotations:"));
            silent += usize::from(
                case.lines()
                    .nth(1)
                    .is_some_and(|l| l.trim() == "exp_alerts: []"),
            );
        }
        assert!(
            firing > 0 && silent > 0,
            "{name}: {firing} firing and {silent} silent test cases"
        );
    }
}

/// Each alert: a severity, a summary, a description quoting its value and labels, and a runbook
/// link whose anchor is a `## Alert` heading of docs/runbooks.md.
#[test]
fn every_alert_has_a_severity_annotations_with_its_values_and_a_runbook_section() {
    let runbooks = read("docs/runbooks.md");
    let headings: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let all = alerts();
    assert!(
        all.len() >= 13,
        "expected the documented alerts, got {}",
        all.len()
    );
    let mut names = BTreeSet::new();
    for r in &all {
        let name = r.name();
        assert!(names.insert(name), "{name} is defined twice");
        let severity = r.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        assert!(!r.annotation("summary").is_empty(), "{name}: no summary");
        let description = r.annotation("description");
        // absent() has neither a meaningful value nor labels.
        if !r.expr.trim_start().starts_with("absent(") {
            let quotes = description.contains("$value") && description.contains("$labels.");
            assert!(
                quotes,
                "{name}: description without value and labels: {description}"
            );
        }
        let url = r.annotation("runbook_url");
        let anchor = url
            .strip_prefix(RUNBOOKS)
            .unwrap_or_else(|| panic!("{name}: runbook_url {url}"));
        assert_eq!(anchor, name.to_lowercase(), "{name}: runbook anchor");
        assert!(
            headings.contains(anchor),
            "{name}: docs/runbooks.md has no `## {name}` section"
        );
    }
}

/// amtool accepts the example and routes by severity: critical pages, warning goes to chat.
#[test]
fn amtool_accepts_the_alertmanager_example_and_routes_critical_to_the_pager_and_warnings_to_chat() {
    tool("amtool check-config alerts/alertmanager.yml").unwrap_or_else(|o| panic!("{o}"));
    for (severity, receiver) in [("critical", "pager"), ("warning", "chat")] {
        let out = tool(&format!(
            "amtool config routes test --config.file=alerts/alertmanager.yml \
             --verify.receivers={receiver} alertname=PgDown instance=db1:9864 severity={severity}"
        ))
        .unwrap_or_else(|o| panic!("severity={severity} is not routed to {receiver}:\n{o}"));
        let resolved = out
            .lines()
            .find(|l| !l.starts_with("Warning"))
            .map(str::trim);
        assert_eq!(resolved, Some(receiver), "{out}");
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
            .unwrap_or_else(|e| panic!("{program} not runnable ({e}); install its Debian package"));
        Self { child, log }
    }

    /// The last lines of its log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn local_addr() -> String {
    format!(
        "127.0.0.1:{}",
        pgpulse::demo::cluster::free_port().expect("a free port")
    )
}

/// Waits until `http://addr/-/ready` answers 200.
async fn ready(server: &Server, addr: &str) {
    let url = format!("http://{addr}/-/ready");
    let ok = eventually(Duration::from_secs(30), || async {
        reqwest::get(&url)
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await;
    assert!(ok.is_some(), "{addr} not ready:\n{}", server.log_tail());
}

/// Starts Alertmanager with `config` in `dir` (clustering off); returns it and its address.
async fn alertmanager(dir: &Path, config: &str) -> (Server, String) {
    let path = dir.join("alertmanager.yml");
    std::fs::write(&path, config).unwrap();
    let addr = local_addr();
    let args = [
        format!("--config.file={}", path.display()),
        format!("--storage.path={}", dir.join("am-data").display()),
        format!("--web.listen-address={addr}"),
        "--cluster.listen-address=".into(),
    ];
    let server = Server::spawn(
        "/usr/bin/prometheus-alertmanager",
        &args,
        dir.join("am.log"),
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
    // [alertname, instance, parent label, expected state]
    let cases = [
        ["PgDown", "db1", "", "active"],
        ["PgCacheHitRatioLow", "db1", "", "suppressed"],
        ["PgpulseQueryFailing", "db1", "", "suppressed"],
        ["PgCacheHitRatioLow", "db2", "", "active"],
        ["PgpulseDown", "db3", "", "active"],
        ["PgDown", "db3", "", "suppressed"],
        ["PgPartitionRunwayCritical", "db2", "trades", "active"],
        ["PgPartitionRunwayLow", "db2", "trades", "suppressed"],
        ["PgPartitionRunwayLow", "db2", "orders", "active"],
    ];
    let dir = tempfile::tempdir().unwrap();
    // Our config, with the example receivers pointed at a closed local port.
    let config =
        read("alerts/alertmanager.yml").replace("https://pager.example.com", "http://127.0.0.1:9");
    let config = config.replace("https://chat.example.com", "http://127.0.0.1:9");
    let (am, addr) = alertmanager(dir.path(), &config).await;
    let posted: Vec<Value> = cases
        .iter()
        .map(|[name, instance, parent, _]| {
            let mut labels =
                json!({"alertname": name, "instance": instance, "severity": "warning"});
            if !parent.is_empty() {
                labels["parent"] = json!(parent);
            }
            json!({ "labels": labels })
        })
        .collect();
    let url = format!("http://{addr}/api/v2/alerts");
    let client = reqwest::Client::new();
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body(json!(posted).to_string());
    assert!(r.send().await.unwrap().status().is_success(), "post alerts");
    let want: BTreeSet<[String; 4]> = cases.iter().map(|c| c.map(String::from)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body: Value =
            serde_json::from_str(&reqwest::get(&url).await.unwrap().text().await.unwrap()).unwrap();
        let state = |a: &Value| {
            let label = |k: &str| text(&a["labels"][k]).to_owned();
            [
                label("alertname"),
                label("instance"),
                label("parent"),
                text(&a["status"]["state"]).to_owned(),
            ]
        };
        let got: BTreeSet<[String; 4]> = items(&body).map(state).collect();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inhibition: got {got:#?}\nwant {want:#?}\n{}",
            am.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------------------------------------
// PromQL and dashboards
// ------------------------------------------------------------------------------------------

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
    let fixed = BTreeSet::from(["pgpulse-overview", "pgpulse-statements", "pgpulse-tables"]);
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
        let mut needed = vec!["job", "instance"];
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

/// Every selector of every dashboard query has job="$job" and instance=~"$instance", and every
/// range is `$__rate_interval` (so rates work at any scrape interval).
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
            if !has(r#"job="$job""#) || !instance {
                problems.push(format!(
                    "{}: {} lacks job/instance matchers {:?}",
                    t.at, s.name, s.matchers
                ));
            }
            if let Some(range) = s.range.filter(|r| r != "$__rate_interval") {
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
    ];
    let rules: String = alerts().iter().map(|r| r.expr.clone()).collect();
    let mut problems = Vec::new();
    let mut shown = BTreeSet::new();
    for (uid, d) in dashboards() {
        for p in panels(&d) {
            let exprs: String = items(&p["targets"]).map(|t| text(&t["expr"])).collect();
            let steps = &p["fieldConfig"]["defaults"]["thresholds"]["steps"];
            let steps: Vec<f64> = items(steps).filter_map(|s| s["value"].as_f64()).collect();
            for (needle, wanted, _) in cases.iter().filter(|c| exprs.contains(c.0)) {
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

// ------------------------------------------------------------------------------------------
// The metric contract, against the constant and against a live pgpulse
// ------------------------------------------------------------------------------------------

/// Nothing in a rule or dashboard refers to a metric pgpulse does not promise.
#[test]
fn every_metric_used_by_dashboards_and_alerts_is_in_the_contract() {
    let contract: BTreeSet<&str> = CONTRACT.split_whitespace().collect();
    let unknown: Vec<String> = used_metrics()
        .into_iter()
        .filter(|m| !contract.contains(m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "not in the metric contract: {unknown:?}"
    );
}

/// The repository's queries.yaml with every interval 2s (timeout 1500ms, expire_after 30s), so
/// tests see data in seconds, plus a query that always fails, so pgpulse_query_errors_total has
/// a series.
fn test_catalog() -> String {
    let mut out = String::new();
    let mut indent = None;
    for line in read("queries.yaml").lines() {
        let t = line.trim_start();
        let pad = &line[..line.len() - t.len()];
        if t.starts_with("- name:") {
            indent.get_or_insert_with(|| pad.to_owned());
        }
        match t.split(':').next() {
            Some("interval") => out.push_str(&format!("{pad}interval: 2s\n")),
            Some("timeout") => out.push_str(&format!("{pad}timeout: 1500ms\n")),
            Some("expire_after") => out.push_str(&format!("{pad}expire_after: 30s\n")),
            _ => out.push_str(&format!("{line}\n")),
        }
    }
    let failing = "- name: alerts_test_failing\n  help: Always fails.\n  interval: 2s\n  timeout: 1500ms\n  \
                   sql: SELECT 1 / 0 AS x\n  metrics:\n    - column: x\n      name: pg_alerts_test_failing\n      \
                   type: gauge\n      help: Never set.\n";
    let pad = indent.unwrap_or_else(|| "  ".into());
    out.extend(failing.lines().map(|l| format!("{pad}{l}\n")));
    out
}

/// The sampling defaults matching [`test_catalog`].
fn fast(cfg: &mut pgpulse::config::Config) {
    cfg.default_interval = Duration::from_secs(2);
    cfg.default_timeout = Duration::from_millis(1500);
}

/// Makes every metric have series: a vacuum and an analyze (vacuum and analyze ages), and a
/// session blocked on a row lock of a table the workload never touches (blocking metrics; it
/// lasts while the returned holder is alive). Returns a client for the workload and the holder.
async fn induce_activity(db: &TestDb) -> (Client, Client) {
    let c = db.client().await;
    c.batch_execute("VACUUM (ANALYZE) candles")
        .await
        .expect("vacuum");
    c.batch_execute(
        "CREATE TABLE lock_demo (id int PRIMARY KEY); INSERT INTO lock_demo VALUES (1)",
    )
    .await
    .unwrap();
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

/// Runs rounds of the demo workload (statements for pg_stat_statements), each followed by
/// `extra` when given, until `stop`.
fn spawn_workload(
    client: Client,
    stop: Arc<AtomicBool>,
    extra: Option<&'static str>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stats = pgpulse::demo::workload::WorkloadStats::default();
        for i in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            pgpulse::demo::workload::round(&client, i, &stats).await;
            if let Some(sql) = extra {
                let _ = client.batch_execute(sql).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Whether the exposition has a sample of `name`.
fn has_sample(body: &str, name: &str) -> bool {
    let sample = |l: &str| {
        l.strip_prefix(name)
            .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
    };
    body.lines().any(|l| !l.starts_with('#') && sample(l))
}

/// Against a live pgpulse on the trade database with the repository's queries.yaml (intervals
/// shortened), every metric the rules and dashboards use has samples.
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
        "used by dashboards or alerts, not emitted by pgpulse: {missing:?}"
    );
}

// ------------------------------------------------------------------------------------------
// End to end: pgpulse → Prometheus (our rules) → Alertmanager → a webhook of the test
// ------------------------------------------------------------------------------------------

/// The POST bodies a webhook receiver got.
#[derive(Clone, Default)]
struct Webhook(Arc<Mutex<Vec<String>>>);

impl Webhook {
    /// Serves the receiver on 127.0.0.1:0; returns its URL and the server task.
    async fn serve(&self) -> (String, tokio::task::JoinHandle<()>) {
        use axum::extract::State;
        async fn receive(State(hook): State<Webhook>, body: String) -> &'static str {
            hook.0.lock().unwrap().push(body);
            "ok"
        }
        let app = axum::Router::new()
            .route("/", axum::routing::post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, task)
    }

    fn received(&self, alertname: &str) -> bool {
        let needle = format!("\"alertname\":\"{alertname}\"");
        self.0.lock().unwrap().iter().any(|b| b.contains(&needle))
    }
}

/// Our rules with every `for:` shortened to 1s and the cache traffic guard lowered.
fn fast_rules() -> String {
    let rules = read("alerts/pgpulse.rules.yml");
    assert!(
        rules.contains(CACHE_GUARD),
        "the cache alert's traffic guard changed; update CACHE_GUARD"
    );
    let rules = rules.replace(CACHE_GUARD, ">= 1 # traffic guard (lowered for the test)");
    let shorten = |l: &str| {
        let t = l.trim_start();
        if t.starts_with("for:") {
            format!("{}for: 1s\n", &l[..l.len() - t.len()])
        } else {
            format!("{l}\n")
        }
    };
    rules.lines().map(shorten).collect()
}

/// One Prometheus instant query: Ok(number of series) or Err(message).
async fn query(prometheus: &str, expr: &str) -> Result<usize, String> {
    let url = format!("http://{prometheus}/api/v1/query");
    let r = reqwest::Client::new()
        .post(url)
        .form(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_str(&r.text().await.map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    match (text(&body["status"]), text(&body["data"]["resultType"])) {
        ("success", "scalar" | "string") => Ok(1),
        ("success", _) => Ok(items(&body["data"]["result"]).count()),
        _ => Err(body["error"].to_string()),
    }
}

/// Creates a 27 MB table with 50% dead tuples that is never read again (a scan would prune
/// them), and a 27 MB table for sequential scans through 128 kB of shared_buffers.
async fn induce_bloat_and_cache_misses(c: &Client) {
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
}

/// Starts Prometheus scraping `target` every second with `rules`, alerting to `alertmanager`.
async fn prometheus(dir: &Path, target: &str, rules: &str, alertmanager: &str) -> (Server, String) {
    std::fs::write(dir.join("rules.yml"), rules).unwrap();
    let config = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}\n\
         rule_files: [rules.yml]\n\
         alerting: {{alertmanagers: [{{static_configs: [{{targets: ['{alertmanager}']}}]}}]}}\n\
         scrape_configs: [{{job_name: pgpulse, static_configs: [{{targets: ['{target}']}}]}}]\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let addr = local_addr();
    let args = [
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
        format!("--web.listen-address={addr}"),
    ];
    let server = Server::spawn("/usr/bin/prometheus", &args, dir.join("prometheus.log"));
    ready(&server, &addr).await;
    (server, addr)
}

/// With a dead-tuple ratio of 50% on a table above the size floor and a cache hit ratio near 0
/// induced, our rules (`for` shortened), evaluated by a real Prometheus scraping pgpulse, deliver
/// PgTableBloatHigh and PgCacheHitRatioLow through a real Alertmanager to the test's webhook;
/// and every dashboard query returns data from that Prometheus.
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
    induce_bloat_and_cache_misses(&c).await;
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
    let route =
        "{receiver: hook, group_by: [alertname, instance], group_wait: 1s, group_interval: 1s}";
    let receiver =
        format!("{{name: hook, webhook_configs: [{{url: '{hook_url}', send_resolved: false}}]}}");
    let (am, am_addr) = alertmanager(
        dir.path(),
        &format!("route: {route}\nreceivers: [{receiver}]\n"),
    )
    .await;
    let (prom, prom_addr) =
        prometheus(dir.path(), &svc.addr.to_string(), &fast_rules(), &am_addr).await;

    let mut problems = Vec::new();
    let wanted = ["PgTableBloatHigh", "PgCacheHitRatioLow"];
    let all_delivered = || async { wanted.iter().all(|a| hook.received(a)).then_some(()) };
    if eventually(Duration::from_secs(180), all_delivered)
        .await
        .is_none()
    {
        let body = svc.metrics().await;
        let inputs = [
            "pg_table_dead_tuple_ratio",
            "pg_table_size_bytes",
            "pg_database_blocks_read_total",
        ];
        let missing: Vec<&str> = inputs
            .into_iter()
            .filter(|m| !has_sample(&body, m))
            .collect();
        let alerts = reqwest::get(format!("http://{prom_addr}/api/v1/alerts"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for a in wanted.iter().filter(|a| !hook.received(a)) {
            problems.push(format!(
                "{a} not delivered (pgpulse lacks {missing:?}); Prometheus alerts: {alerts}"
            ));
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
    let logs = format!(
        "--- prometheus:\n{}\n--- alertmanager:\n{}",
        prom.log_tail(),
        am.log_tail()
    );
    assert!(problems.is_empty(), "{}\n{logs}", problems.join("\n"));
}
