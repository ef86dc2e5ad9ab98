//! Alert rules, Alertmanager routing and Grafana dashboards, checked with the real tools:
//! `promtool` (rule checks, rule unit tests, the PromQL parser), `amtool`, a real Alertmanager,
//! our own dashboard lint (the checks of Grafana's dashboard-linter), the metric contract, and
//! end to end a real Prometheus and Alertmanager watching a pgpulse whose database was made to
//! bloat and to miss its cache.
//!
//! This module owns reading what the checks check (the rule file, the dashboards, their
//! queries) and running the tools; each submodule owns one kind of check.

pub(crate) mod contract;
mod counters;
mod dashboards;
mod live;
mod promql;
mod rules;
mod servers;

pub(crate) use counters::instant;
pub(crate) use live::{fast_rules, query};
pub(crate) use servers::prometheus;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

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

/// Every panel of a dashboard, also those nested in rows (rows themselves only group panels).
fn panels(d: &Value) -> Vec<&Value> {
    items(&d["panels"])
        .flat_map(|p| std::iter::once(p).chain(items(&p["panels"])))
        .filter(|p| p["type"] != "row")
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
        .replace("$__range", "1h")
        .replace("$job", "pgpulse")
        .replace("$cluster", ".*")
        .replace("$instance", instance)
        .replace("$datname", datname)
        .replace("$database", ".*")
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

/// Go's `%.4g` of `v` where it prints no exponent (|v| from 1e-4 up to 1e4): four significant
/// digits, trailing zeros dropped. Prometheus' humanize functions print numbers so.
pub(crate) fn go_4g(v: f64) -> String {
    if v == 0.0 {
        return "0".to_owned();
    }
    let digits = (3 - v.abs().log10().floor() as i32).max(0) as usize;
    let fixed = format!("{v:.digits$}");
    match fixed.contains('.') {
        true => fixed.trim_end_matches('0').trim_end_matches('.').to_owned(),
        false => fixed,
    }
}

/// Runs `promtool test rules` on the unit-test file `test` (YAML text, rule files named by
/// absolute path); panics with promtool's output and the file unless every test passes.
pub(crate) fn promtool_test(test: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.test.yml");
    std::fs::write(&path, test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("promtool runs (package prometheus)");
    assert!(
        out.status.success(),
        "{test}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn go_4g_is_four_significant_digits_without_trailing_zeros() {
    assert_eq!(go_4g(3.21749), "3.217");
    assert_eq!(go_4g(12.3456), "12.35");
    assert_eq!(go_4g(3.0000000000000004), "3");
    assert_eq!(go_4g(15.000000000000002), "15");
    assert_eq!(go_4g(412.3456), "412.3");
    assert_eq!(go_4g(0.0), "0");
}
