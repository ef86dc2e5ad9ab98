//! The alert rules and the Alertmanager routing: promtool's rule checks and the rules' unit
//! tests, each alert's severity, annotations and runbook section, amtool's routing, and a real
//! Alertmanager's inhibitions.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::servers::alertmanager;
use super::{alerts, files, items, read, text, tool};

const RUNBOOKS: &str = "https://github.com/pgpulse/pgpulse/blob/main/docs/runbooks.md#";

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

/// amtool accepts the example and routes every alert of the rules (the PgBouncer ones too) by
/// its severity: critical pages, warning goes to chat.
#[test]
fn amtool_accepts_the_alertmanager_example_and_routes_critical_to_the_pager_and_warnings_to_chat() {
    tool("amtool check-config alerts/alertmanager.yml").unwrap_or_else(|o| panic!("{o}"));
    for rule in alerts() {
        let (name, severity) = (rule.name(), rule.labels["severity"].as_str());
        let receiver = if severity == "critical" {
            "pager"
        } else {
            "chat"
        };
        let out = tool(&format!(
            "amtool config routes test --config.file=alerts/alertmanager.yml \
             --verify.receivers={receiver} alertname={name} instance=db1:9864 severity={severity}"
        ))
        .unwrap_or_else(|o| {
            panic!("{name} (severity={severity}) is not routed to {receiver}:\n{o}")
        });
        let resolved = out
            .lines()
            .find(|l| !l.starts_with("Warning"))
            .map(str::trim);
        assert_eq!(resolved, Some(receiver), "{out}");
    }
}

/// A real Alertmanager with our example config: PgDown silences its instance's other alerts,
/// PgpulseDown silences PgDown, the critical runway silences the warning of the same parent,
/// the critical idle transaction its warning; PgBouncerDown silences its PgBouncer's other
/// alerts, waiting clients of a trading pool the max-wait warning of the same pool; other
/// instances, parents and pools stay active.
#[tokio::test]
async fn a_real_alertmanager_inhibits_the_alerts_of_an_instance_whose_database_or_exporter_is_down()
{
    // "alertname instance other-labels expected-state"; other labels `k=v,k=v` (sorted) or `-`.
    let cases = [
        "PgDown db1 - active",
        "PgCacheHitRatioLow db1 - suppressed",
        "PgpulseQueryFailing db1 - suppressed",
        "PgCacheHitRatioLow db2 - active",
        "PgpulseDown db3 - active",
        "PgDown db3 - suppressed",
        "PgPartitionRunwayCritical db2 parent=trades active",
        "PgPartitionRunwayLow db2 parent=trades suppressed",
        "PgPartitionRunwayLow db2 parent=orders active",
        "PgIdleInTransactionCritical db2 - active",
        "PgIdleInTransactionLong db2 - suppressed",
        "PgIdleInTransactionLong db4 - active",
        "PgBouncerDown bouncer-a - active",
        "PgBouncerClientsWaiting bouncer-a database=reports,user=analyst suppressed",
        "PgBouncerClientsWaiting bouncer-b database=reports,user=analyst active",
        "PgBouncerClientsWaitingTrading bouncer-b database=trade,user=engine active",
        "PgBouncerMaxWaitHigh bouncer-b database=trade,user=engine suppressed",
        "PgBouncerMaxWaitHigh bouncer-b database=reports,user=analyst active",
    ];
    let cases: Vec<[String; 4]> = cases
        .iter()
        .map(|c| {
            let w: Vec<&str> = c.split_whitespace().collect();
            [w[0], w[1], w[2], w[3]].map(String::from)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // Our config, with the example receivers pointed at a closed local port.
    let config =
        read("alerts/alertmanager.yml").replace("https://pager.example.com", "http://127.0.0.1:9");
    let config = config.replace("https://chat.example.com", "http://127.0.0.1:9");
    let (am, addr) = alertmanager(dir.path(), &config).await;
    let posted: Vec<Value> = cases
        .iter()
        .map(|[name, instance, other, _]| {
            let mut labels =
                json!({"alertname": name, "instance": instance, "severity": "warning"});
            for (k, v) in other.split(',').filter_map(|kv| kv.split_once('=')) {
                labels[k] = json!(v);
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
    let want: BTreeSet<[String; 4]> = cases.iter().cloned().collect();
    let deadline = Instant::now() + crate::harness::PATIENCE;
    loop {
        let body: Value =
            serde_json::from_str(&reqwest::get(&url).await.unwrap().text().await.unwrap()).unwrap();
        let state = |a: &Value| {
            let label = |k: &str| text(&a["labels"][k]).to_owned();
            let mut other: Vec<String> = (a["labels"].as_object().into_iter().flatten())
                .filter(|(k, _)| !matches!(k.as_str(), "alertname" | "instance" | "severity"))
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            other.sort();
            if other.is_empty() {
                other.push("-".into());
            }
            [
                label("alertname"),
                label("instance"),
                other.join(","),
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
