//! `pgpulse demo` with the real Prometheus and Alertmanager: the demo's copy of the rules
//! differs from the bundled rules in `for:` only and passes promtool, its routing passes amtool
//! and routes as bundled, the local Prometheus configuration of deploy/ is valid, and the
//! locks scenario's alert reaches Alertmanager while PostgreSQL shows the lock wait; nothing
//! of the chain survives SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use crate::harness::{PATIENCE, eventually};
use pgpulse::demo::rules;

fn repo(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs a tool; panics with its output unless it exits 0.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap_or_else(|e| panic!("{program} not runnable ({e}); install its Debian package"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}:\n{text}");
    text
}

/// Every rule of a rule file as JSON, `for` taken out and returned beside it.
fn rules_by_name(text: &str) -> Vec<(String, Option<String>, Value)> {
    let file: Value = serde_saphyr::from_str(text).unwrap();
    let mut out = Vec::new();
    for g in file["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let mut r = r.clone();
            let hold = r.as_object_mut().unwrap().remove("for");
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap();
            out.push((
                name.to_owned(),
                hold.map(|h| h.as_str().unwrap().to_owned()),
                r,
            ));
        }
    }
    out
}

#[test]
fn the_demo_rules_differ_from_the_bundled_rules_only_in_a_for_divided_by_15() {
    let bundled = std::fs::read_to_string(repo("alerts/pgpulse.rules.yml")).unwrap();
    assert_eq!(
        rules::BUNDLED_RULES,
        bundled,
        "the binary's bundled rules are not alerts/pgpulse.rules.yml"
    );
    let demo = rules::demo_rules(&bundled);
    let (before, after) = (rules_by_name(&bundled), rules_by_name(&demo));
    assert_eq!(before.len(), after.len());
    let mut scaled = 0;
    for ((name, hold, rule), (demo_name, demo_hold, demo_rule)) in before.iter().zip(&after) {
        assert_eq!(
            (name, rule),
            (demo_name, demo_rule),
            "more than `for` changed"
        );
        let ms = |h: &Option<String>| h.as_deref().map(|h| rules::parse_duration(h).unwrap());
        let (ms, demo_ms) = (ms(hold), ms(demo_hold));
        assert_eq!(
            ms.is_some(),
            demo_ms.is_some(),
            "{name}: for added or removed"
        );
        if let (Some(ms), Some(demo_ms)) = (ms, demo_ms) {
            // Divided by 15, rounded up to whole seconds: never longer, never more than 1 s off.
            assert!(
                demo_ms * 15 >= ms && demo_ms * 15 <= ms + 15_000,
                "{name}: {ms} -> {demo_ms}"
            );
            scaled += 1;
        }
    }
    let count = bundled
        .lines()
        .filter(|l| l.trim_start().starts_with("for:"))
        .count();
    assert_eq!(
        scaled, count,
        "every `for:` line of the bundled file is a rule's and scaled"
    );
    assert!(scaled > 20, "{scaled}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.rules.yml");
    std::fs::write(&path, &demo).unwrap();
    let out = tool("promtool", &["check", "rules", path.to_str().unwrap()]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", after.len())),
        "{out}"
    );
}

#[test]
fn the_demo_routing_passes_amtool_routes_as_bundled_and_notifies_only_the_demo() {
    let demo = rules::demo_routing(rules::BUNDLED_ROUTING, "http://127.0.0.1:1");
    assert!(!demo.contains("example.com"), "{demo}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alertmanager.yml");
    std::fs::write(&path, &demo).unwrap();
    let config = format!("--config.file={}", path.display());
    tool("amtool", &["check-config", path.to_str().unwrap()]);
    for (severity, receiver) in [("critical", "pager"), ("warning", "chat")] {
        let label = format!("severity={severity}");
        let out = tool("amtool", &["config", "routes", "test", &config, &label]);
        // stdout (the receiver) comes first; amtool warns on stderr about --alertmanager.url.
        assert_eq!(out.lines().next(), Some(receiver), "{severity}: {out}");
    }
    let parsed: Value = serde_saphyr::from_str(&demo).unwrap();
    for r in parsed["receivers"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        let url = r["webhook_configs"][0]["url"].as_str().unwrap();
        assert_eq!(url, format!("http://127.0.0.1:1/{name}"));
    }
}

#[test]
fn the_local_prometheus_configuration_is_valid_and_names_no_compose_host() {
    let rel = "deploy/prometheus/prometheus.local.yml";
    let out = tool("promtool", &["check", "config", rel]);
    assert!(out.contains("alerts/pgpulse.rules.yml"), "{out}");
    let text = std::fs::read_to_string(repo(rel)).unwrap();
    for host in ["pgpulse:", "alertmanager:", "localhost:"] {
        assert!(!text.contains(&format!("\"{host}")), "{host} in {rel}");
    }
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    assert!(readme.contains(rel), "README does not name {rel}");
}

/// A running `pgpulse demo` with its output collected.
struct Demo {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Demo {
    fn start(scenario: &str) -> Self {
        let port = pgpulse::demo::cluster::free_port().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgpulse"))
            .args(["demo", "--scenario", scenario, "--rate", "20"])
            .args(["--listen-address", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    b.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
            buf
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        Self { child, out, err }
    }

    /// The address after `  {key}: http://` in the banner, once printed.
    async fn address(&mut self, key: &str) -> String {
        let prefix = format!("  {key}:");
        let found = eventually(PATIENCE, || async {
            let out = self.out.lock().unwrap().clone();
            let line = out.lines().find(|l| l.starts_with(&prefix))?.to_owned();
            let url = line.split_whitespace().nth(1)?;
            Some(
                url.trim_start_matches("http://")
                    .split('/')
                    .next()?
                    .to_owned(),
            )
        })
        .await;
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "demo exited:\n{}",
            self.logs()
        );
        found.unwrap_or_else(|| panic!("no {key} in the banner:\n{}", self.logs()))
    }

    fn logs(&self) -> String {
        format!(
            "--- stdout:\n{}\n--- stderr:\n{}",
            self.out.lock().unwrap(),
            self.err.lock().unwrap()
        )
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

async fn json(url: &str) -> Option<Value> {
    serde_json::from_str(&reqwest::get(url).await.ok()?.text().await.ok()?).ok()
}

/// The pids of the children of `pid` running `program` (by /proc/<pid>/exe).
fn children_running(pid: u32, program: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    let exe = std::fs::canonicalize(program).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == exe))
        .collect()
}

fn alert_dirs(pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("pgpulse-demo-alerting-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// The locks scenario, end to end: Prometheus (the demo rules: PgLockWaitLong's `for` 4 s)
/// fires, Alertmanager holds the alert routed to `chat`, PostgreSQL itself shows a session
/// waiting on a lock for over the rule's minute, the status line says delivered; SIGTERM
/// stops Prometheus, Alertmanager and the demo and removes the alerting directory; the
/// bundled rule file is byte-equal before and after.
#[tokio::test(flavor = "multi_thread")]
async fn the_locks_scenario_reaches_alertmanager_and_sigterm_leaves_nothing() {
    let bundled = std::fs::read(repo("alerts/pgpulse.rules.yml")).unwrap();
    let mut demo = Demo::start("locks");
    let prometheus = demo.address("prometheus").await;
    let alertmanager = demo.address("alertmanager").await;
    let pid = demo.child.id();
    assert!(
        demo.out.lock().unwrap().contains("divided by 15"),
        "{}",
        demo.logs()
    );

    let rules = json(&format!("http://{prometheus}/api/v1/rules?type=alert"))
        .await
        .unwrap();
    let duration = |name: &str| {
        let groups = rules["data"]["groups"].as_array().unwrap();
        let mut all = groups.iter().flat_map(|g| g["rules"].as_array().unwrap());
        all.find(|r| r["name"] == name)
            .map(|r| r["duration"].as_f64().unwrap())
    };
    assert_eq!(duration("PgLockWaitLong"), Some(4.0), "60 s / 15");
    assert_eq!(duration("PgTableBloatHigh"), Some(120.0), "30 min / 15");

    let url =
        format!("http://{alertmanager}/api/v2/alerts?filter=alertname%3D%22PgLockWaitLong%22");
    let started = Instant::now();
    let receivers = eventually(PATIENCE, || async {
        let alerts = json(&url).await?;
        let first = alerts.as_array()?.first()?.clone();
        Some(
            first["receivers"]
                .as_array()?
                .iter()
                .map(|r| r["name"].clone())
                .collect::<Vec<_>>(),
        )
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "PgLockWaitLong never reached Alertmanager:\n{}",
            demo.logs()
        )
    });
    assert_eq!(receivers, vec![Value::from("chat")]);
    // The classic outage's own alert: the write-blocking queue on trades, critical.
    let queue = format!(
        "http://{alertmanager}/api/v2/alerts?filter=alertname%3D%22PgTradeTableLockQueue%22"
    );
    let labels = eventually(PATIENCE, || async {
        let alerts = json(&queue).await?;
        Some(alerts.as_array()?.first()?["labels"].clone())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "PgTradeTableLockQueue never reached Alertmanager:\n{}",
            demo.logs()
        )
    });
    assert_eq!(labels["table"], "trades");
    assert_eq!(labels["severity"], "critical");
    eprintln!(
        "PgLockWaitLong in Alertmanager {:?} after the banner",
        started.elapsed()
    );

    let database = demo.out.lock().unwrap().lines().find_map(|l| {
        l.trim_start().strip_prefix("database:").map(|r| {
            r.trim()
                .trim_start_matches("psql ")
                .trim_matches('"')
                .to_owned()
        })
    });
    let (client, conn) = tokio_postgres::connect(&database.unwrap(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let waited: f64 = client
        .query_one(
            "SELECT coalesce(max(extract(epoch FROM now() - state_change)), 0)::float8 \
             FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        waited > 60.0,
        "PostgreSQL shows a lock wait of {waited} s only"
    );
    drop(client);

    let said = eventually(PATIENCE, || async {
        let err = demo.err.lock().unwrap().clone();
        err.lines()
            .any(|l| l.contains("PgLockWaitLong delivered to Alertmanager → chat"))
            .then_some(())
    })
    .await;
    assert!(
        said.is_some(),
        "the status line never said delivered:\n{}",
        demo.logs()
    );

    let servers: Vec<u32> = ["/usr/bin/prometheus", "/usr/bin/prometheus-alertmanager"]
        .iter()
        .flat_map(|p| children_running(pid, p))
        .collect();
    assert_eq!(
        servers.len(),
        2,
        "prometheus and alertmanager children: {servers:?}"
    );
    assert_eq!(
        alert_dirs(pid).len(),
        1,
        "the alerting directory while running"
    );
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status =
        crate::harness::wait_exit(&mut demo.child, PATIENCE).expect("demo did not stop on SIGTERM");
    assert!(status.success(), "demo exit {status}:\n{}", demo.logs());
    for p in servers {
        let alive = Command::new("kill")
            .args(["-0", &p.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(!alive, "process {p} left behind");
    }
    assert_eq!(alert_dirs(pid), Vec::<std::path::PathBuf>::new());
    assert_eq!(
        std::fs::read(repo("alerts/pgpulse.rules.yml")).unwrap(),
        bundled
    );
}

/// The pool-exhaustion scenario, end to end: the demo's PgBouncer (pool size 2) queues the
/// scenario's clients; Prometheus fires PgBouncerClientsWaitingTrading, Alertmanager pages,
/// and meanwhile not one PostgreSQL alert is pending or firing (every `Pg*` rule stays
/// inactive while orders queue in front of the database). At SIGTERM the PgBouncer goes too.
#[tokio::test(flavor = "multi_thread")]
async fn the_pool_exhaustion_scenario_pages_while_every_postgresql_alert_stays_inactive() {
    let mut demo = Demo::start("pool-exhaustion");
    let prometheus = demo.address("prometheus").await;
    let alertmanager = demo.address("alertmanager").await;
    let pid = demo.child.id();
    let url = format!(
        "http://{alertmanager}/api/v2/alerts?filter=alertname%3D%22PgBouncerClientsWaitingTrading%22"
    );
    let alert = eventually(PATIENCE, || async {
        json(&url).await?.as_array()?.first().cloned()
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the waiting-clients alert never reached Alertmanager:\n{}",
            demo.logs()
        )
    });
    assert_eq!(alert["labels"]["database"], "trade_engine");
    assert_eq!(alert["labels"]["instance"], "pgbouncer");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["receivers"][0]["name"], "pager");
    // Steady state (a rate needs two samples of a counter: PgCommitRateLow may be pending
    // for the first seconds of any demo): the waiting-clients alert fires, no `Pg*` alert of
    // PostgreSQL is pending or firing.
    let alerts = format!("http://{prometheus}/api/v1/alerts");
    let last = Mutex::new(Vec::new());
    let green = eventually(PATIENCE, || async {
        let active = json(&alerts).await?;
        let names: Vec<String> = active["data"]["alerts"]
            .as_array()?
            .iter()
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
            .collect();
        *last.lock().unwrap() = names.clone();
        let postgres = names.iter().any(|n| !n.starts_with("PgBouncer"));
        (!postgres && names.iter().any(|n| n == "PgBouncerClientsWaitingTrading")).then_some(())
    })
    .await;
    assert!(
        green.is_some(),
        "PostgreSQL alerts active beside the waiting clients: {:?}",
        last.lock().unwrap()
    );
    let waiting = json(&format!(
        "http://{prometheus}/api/v1/query?query=pgbouncer_pool_clients%7Bstate%3D%22waiting%22%2Cdatabase%3D%22trade_engine%22%7D"
    ))
    .await
    .unwrap();
    let value = waiting["data"]["result"][0]["value"][1].as_str().unwrap();
    assert!(value.parse::<f64>().unwrap() > 0.0, "{waiting}");
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let child = Mutex::new(&mut demo.child);
    let status = eventually(PATIENCE, || async {
        child.lock().unwrap().try_wait().unwrap()
    })
    .await
    .expect("the demo stops on SIGTERM");
    assert!(status.success(), "{}", demo.logs());
    // PgBouncer and its watchdog (which notices the demo's exit within a second) are gone.
    let pattern = format!("pgpulse-pgbouncer-{pid}-");
    let gone = eventually(PATIENCE, || async {
        let left = Command::new("pgrep").args(["-f", &pattern]).output().ok()?;
        left.stdout.is_empty().then_some(())
    })
    .await;
    assert!(gone.is_some(), "PgBouncer left behind");
}
