//! Against a live pgpulse on a real database: every metric the rules and dashboards use is
//! emitted (a PgBouncer target's aside, see [`PGBOUNCER_ONLY`]); and end to end, a real
//! Prometheus (our rules) and Alertmanager watching a pgpulse whose database was made to bloat
//! and to miss its cache deliver the alerts to a webhook of the test, while every dashboard
//! query returns data.

use crate::harness::exec;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::Client;

use super::contract::is_pgbouncer_metric;
use super::promql::{selectors, used_metrics};
use super::servers::{alertmanager, prometheus};
use super::{items, read, substitute, targets, text};
use crate::harness::{TestDb, eventually, own_cluster};
use crate::service::start;
use pgpulse::demo::ClusterOptions;

/// Dashboard panels (uid, title) whose queries may return nothing on a healthy test database,
/// with the reason. The end-to-end test induces a lock conflict (blocking pairs), a failing
/// query (query errors), statements, a vacuum and an analyze, and holds a replication slot, so
/// every other query has data.
const MAY_BE_EMPTY: &[(&str, &str, &str)] = &[
    (
        "pgpulse-fleet",
        "Targets / C",
        "replication lag: rows only with a standby; tests/it/replication.rs",
    ),
    (
        "pgpulse-fleet",
        "Targets / G",
        "the slow-statement share needs the server's jsonlog; tests/it/slow_log",
    ),
    (
        "pgpulse-fleet",
        "Replication lag",
        "rows only while a standby streams from the primary; tests/it/replication.rs",
    ),
    (
        "pgpulse-server",
        "Replication lag by standby (bytes)",
        "rows only while a standby streams from the primary; tests/it/replication.rs asserts them against pg_stat_replication",
    ),
    (
        "pgpulse-server",
        "Replication lag by standby (seconds)",
        "rows only while a standby streams from the primary; tests/it/replication.rs",
    ),
    (
        "pgpulse-server",
        "Standby receive and replay lag",
        "a standby's own view (role: replica): absent on the primary the test watches; tests/it/replication.rs",
    ),
    (
        "pgpulse-server",
        "Standby replay paused",
        "a standby's own view (role: replica); tests/it/replication.rs",
    ),
    (
        "pgpulse-server",
        "Vacuums running",
        "rows only while a VACUUM runs; tests/it/signals.rs",
    ),
    (
        "pgpulse-trading",
        "Key-query SLO burn rate",
        "the misses need the server's jsonlog, which the shared test cluster does not write; tests/it/slow_log/slo.rs asserts them exact",
    ),
    (
        "pgpulse-trading",
        "Key-query error budget left (time range)",
        "the misses need the server's jsonlog; tests/it/slow_log/slo.rs",
    ),
    (
        "pgpulse-statements",
        "Executions at or over 100 ms (exact)",
        "needs the server's jsonlog and log_min_duration_statement, which the shared test cluster does not set; tests/it/slow_log asserts the counter exact",
    ),
];

/// The PgBouncer dashboard, and the reason why its queries that read PgBouncer metrics only
/// return nothing here; those metrics ([`is_pgbouncer_metric`]) are left out of both live
/// checks for the same reason: no PgBouncer runs in these tests, and a PostgreSQL target emits
/// none of them.
const PGBOUNCER_ONLY: (&str, &str) = (
    "pgpulse-pgbouncer",
    "a PgBouncer target: tests/it/pgbouncer asserts these series against SHOW POOLS/STATS",
);

/// Whether a dashboard query is exempt by [`PGBOUNCER_ONLY`]: on the PgBouncer dashboard and
/// reading PgBouncer metrics only (a query there that reads `up` or a PostgreSQL metric is
/// still checked).
fn pgbouncer_only(uid: &str, expr: &str) -> bool {
    let found = selectors(expr);
    uid == PGBOUNCER_ONLY.0
        && !found.is_empty()
        && found.iter().all(|s| is_pgbouncer_metric(&s.name))
}

/// Metrics used by rules or dashboards that a healthy primary without a standby does not emit,
/// with the reason; the replication and signals tests induce and assert them.
const NOT_ON_A_LONE_PRIMARY: &[(&str, &str)] = &[
    (
        "pg_replication_replay_lag_bytes",
        "needs a connected standby",
    ),
    (
        "pg_replication_flush_lag_bytes",
        "needs a connected standby",
    ),
    (
        "pg_replication_replay_lag_seconds",
        "needs a connected standby",
    ),
    (
        "pg_standby_replay_lag_bytes",
        "standby only (role: replica)",
    ),
    ("pg_standby_replay_paused", "standby only (role: replica)"),
    (
        "pg_standby_replay_lag_seconds",
        "standby only (role: replica)",
    ),
    (
        "pg_standby_receive_lag_bytes",
        "standby only (role: replica)",
    ),
    ("pg_vacuum_heap_scanned_ratio", "only while a VACUUM runs"),
    (
        "pg_statement_executions_over_threshold_total",
        "needs jsonlog and a slow statement (tests/it/slow_log/)",
    ),
    (
        "pg_key_query_slo_misses_total",
        "needs jsonlog and the log reader (tests/it/slow_log/slo.rs)",
    ),
    (
        "pg_archiver_last_archived_age_seconds",
        "absent until a WAL file was archived (archive_mode is off in tests)",
    ),
    (
        "pg_archiver_last_failure_age_seconds",
        "absent until an archive attempt failed",
    ),
];

/// The cache alert's traffic guard, lowered in the end-to-end copy of the rules: Prometheus there
/// has seconds of data, and rate() over 10 minutes divides by the whole window.
const CACHE_GUARD: &str = ">= 100 # traffic guard: block requests per second";

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
    exec(
        &c,
        "CREATE TABLE lock_demo (id int PRIMARY KEY); INSERT INTO lock_demo VALUES (1)",
    )
    .await;
    let holder = db.client().await;
    // A temporary physical slot reserving WAL (slot metrics), dropped with the holder's session.
    holder
        .batch_execute(
            "SELECT pg_create_physical_replication_slot('e2e_' || pg_backend_pid(), true, true)",
        )
        .await
        .expect("temporary replication slot");
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
    // PgBouncer metrics: see PGBOUNCER_ONLY.
    let wanted: Vec<String> = used_metrics()
        .into_iter()
        .filter(|m| m != "up" && !NOT_ON_A_LONE_PRIMARY.iter().any(|(n, _)| n == m))
        .filter(|m| !is_pgbouncer_metric(m))
        .collect();
    let deadline = Instant::now() + crate::harness::PATIENCE;
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
pub(crate) fn fast_rules() -> String {
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
pub(crate) async fn query(prometheus: &str, expr: &str) -> Result<usize, String> {
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
    if eventually(crate::harness::PATIENCE, all_delivered)
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
        if MAY_BE_EMPTY.iter().any(|(uid, panel, _)| {
            *uid == t.uid && (*panel == t.panel || t.at == format!("{uid} / {panel}"))
        }) || pgbouncer_only(&t.uid, &t.expr)
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
