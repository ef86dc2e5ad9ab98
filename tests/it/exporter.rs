//! The exporter contract against real PostgreSQL: families present and promtool-clean,
//! series replaced wholesale, timeouts cancelled server-side, truthful health while the
//! database is down, whole bodies under concurrent scrapes, the connection budget.

use crate::harness::exec;
use std::time::Duration;

use crate::harness::{TestDb, connect, eventually, own_cluster};
use crate::service::{has_family, sample, start};
use pgpulse::demo::ClusterOptions;

const ONE_QUERY: &str = r#"
queries:
  - name: tables
    help: per table rows
    interval: 1s
    timeout: 900ms
    labels: [relname]
    sql: SELECT relname, n_live_tup AS rows FROM pg_stat_user_tables
    metrics:
      - column: rows
        name: pg_test_table_rows
        type: gauge
        help: Live rows.
  - name: constant
    help: a constant
    interval: 1s
    timeout: 900ms
    sql: SELECT 42 AS answer, 7 AS seen
    metrics:
      - column: answer
        name: pg_test_answer
        type: gauge
        help: The answer.
      - column: seen
        name: pg_test_seen_total
        type: counter
        help: A counter.
"#;

/// Runs `promtool check metrics` on `body`; returns its output when it complains.
pub(crate) fn promtool_check(body: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool not runnable ({e}); install the `prometheus` package"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && msg.trim().is_empty() {
        Ok(())
    } else {
        Err(msg)
    }
}

#[tokio::test]
async fn metrics_have_every_configured_family_and_promtool_reports_nothing() {
    let db = TestDb::trade_migrated().await;
    let catalog =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/queries.yaml")).unwrap();
    let svc = start(&db.url, &catalog, |_| {}).await;
    let cat = pgpulse::catalog::Catalog::parse(&catalog, "q".as_ref(), Default::default()).unwrap();
    // The test cluster preloads pg_stat_statements, so every query of the catalog runs, but for
    // those gated to a standby or another server version, and those with rows only while
    // something happens (a standby connected, a slot, a vacuum running: tests/it/replication.rs
    // and tests/it/signals.rs induce them).
    const CONDITIONAL: &[&str] = &[
        "replication",
        "replication_slots",
        "replication_slot_wal_status",
        "vacuum_progress",
    ];
    let c = db.client().await;
    let version = crate::harness::scalar(&c, "SELECT current_setting('server_version_num')::bigint")
        .await as i32;
    let runs = |q: &pgpulse::catalog::QuerySpec| {
        q.role != pgpulse::catalog::Role::Replica
            && q.min_server_version.is_none_or(|v| v <= version)
            && q.max_server_version.is_none_or(|v| v >= version)
            && !CONDITIONAL.contains(&q.name.as_str())
    };
    let mut expected: Vec<String> = cat
        .metric_names()
        .filter(|(q, _)| runs(q))
        .map(|(_, m)| m.name.clone())
        .collect();
    expected.extend(
        cat.queries
            .iter()
            .filter_map(|q| q.histogram.as_ref().map(|h| h.name.clone())),
    );
    svc.wait_ready().await;
    let body = crate::catalog::wait_for(&svc, "every configured family", |b| {
        expected.iter().all(|f| has_family(b, f))
    })
    .await;
    promtool_check(&body).unwrap_or_else(|e| panic!("promtool check metrics:\n{e}\n---\n{body}"));
    let (_, headers, om) = svc
        .get_with(
            "/metrics",
            &[("Accept", "application/openmetrics-text; version=1.0.0")],
        )
        .await;
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(String::from_utf8_lossy(&om).ends_with("# EOF\n"));
    svc.stop().await;
}

#[tokio::test]
async fn gzip_is_negotiated_and_vary_is_set() {
    let db = TestDb::new().await;
    let svc = start(&db.url, ONE_QUERY, |_| {}).await;
    svc.wait_ready().await;
    let (_, h, gz) = svc
        .get_with("/metrics", &[("Accept-Encoding", "gzip")])
        .await;
    assert_eq!(h["content-encoding"], "gzip");
    assert!(h["vary"].to_str().unwrap().contains("Accept-Encoding"));
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
    assert!(plain.contains("pg_test_answer 42"), "{plain}");
    let (_, h, _) = svc
        .get_with("/metrics", &[("Accept-Encoding", "gzip;q=0")])
        .await;
    assert!(h.get("content-encoding").is_none());
    svc.stop().await;
}

#[tokio::test]
async fn exact_values_and_counter_naming_in_both_formats() {
    let db = TestDb::new().await;
    let svc = start(&db.url, ONE_QUERY, |_| {}).await;
    let body = svc
        .wait_for("sampled", |b| b.contains("pg_test_answer"))
        .await;
    assert!(
        body.contains("# TYPE pg_test_answer gauge\npg_test_answer 42\n"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE pg_test_seen_total counter\npg_test_seen_total 7\n"),
        "{body}"
    );
    assert_eq!(sample(&body, "pg_up"), Some(1.0));
    assert!(sample(&body, "pg_server_version_num").unwrap() >= 150000.0);
    svc.stop().await;
}

#[tokio::test]
async fn a_dropped_tables_series_vanish_after_the_next_sample() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(
        &c,
        "CREATE TABLE doomed (x int); INSERT INTO doomed VALUES (1); ANALYZE doomed;",
    )
    .await;
    let svc = start(&db.url, ONE_QUERY, |_| {}).await;
    eventually(crate::harness::PATIENCE, || async {
        svc.metrics()
            .await
            .contains("pg_test_table_rows{relname=\"doomed\"}")
            .then_some(())
    })
    .await
    .expect("series for the table");
    exec(&c, "DROP TABLE doomed").await;
    eventually(crate::harness::PATIENCE, || async {
        (!svc.metrics().await.contains("relname=\"doomed\"")).then_some(())
    })
    .await
    .expect("series gone after the table was dropped");
    svc.stop().await;
}

#[tokio::test]
async fn a_query_past_its_timeout_is_cancelled_on_the_server_and_counted_while_others_go_on() {
    let db = TestDb::new().await;
    let catalog = format!(
        "{ONE_QUERY}
  - name: sleepy
    help: sleeps past its timeout
    interval: 3s
    timeout: 1s
    sql: SELECT 1 AS v FROM pg_sleep(30)
    metrics:
      - column: v
        name: pg_test_sleepy
        type: gauge
        help: Never arrives.
"
    );
    let svc = start(&db.url, &catalog, |_| {}).await;
    let body = eventually(crate::harness::PATIENCE, || async {
        let b = svc.metrics().await;
        (sample(
            &b,
            "pgpulse_query_errors_total{query=\"sleepy\",kind=\"timeout\"}",
        )
        .unwrap_or(0.0)
            >= 1.0)
            .then_some(b)
    })
    .await
    .expect("timeout counted");
    assert!(!has_family(&body, "pg_test_sleepy"));
    let before = sample(&body, "pgpulse_query_runs_total{query=\"constant\"}").unwrap();
    let admin = db.client().await;
    let sleeping: i64 = admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND state = 'active' AND pid <> pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(sleeping <= 1, "at most the current run: {sleeping}");
    eventually(crate::harness::PATIENCE, || async {
        let b = svc.metrics().await;
        (sample(&b, "pgpulse_query_runs_total{query=\"constant\"}").unwrap() >= before + 2.0)
            .then_some(())
    })
    .await
    .expect("other queries go on");
    // After a timed-out run, the server-side statement is gone (cancelled, not left running).
    let gone = eventually(crate::harness::PATIENCE, || async {
        let b = svc.metrics().await;
        let errors = sample(&b, "pgpulse_query_errors_total{query=\"sleepy\",kind=\"timeout\"}").unwrap();
        let n: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND state = 'active' AND pid <> pg_backend_pid() AND now() - query_start > interval '1500 milliseconds'", &[])
            .await
            .unwrap()
            .get(0);
        (errors >= 2.0 && n == 0).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "no sampling statement outlives its 1s timeout"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_still_answer_when_the_database_is_down_and_recover_without_restart() {
    let mut cluster = own_cluster(ClusterOptions::default());
    let url = cluster.url("postgres");
    let svc = start(&url, ONE_QUERY, |c| {
        c.reconnect_max_backoff = Duration::from_secs(1)
    })
    .await;
    svc.wait_ready().await;
    tokio::task::block_in_place(|| cluster.stop()).expect("stop cluster");
    let body = svc.wait_for_sample("pg_up", |v| v == 0.0).await;
    assert!(body.contains("pgpulse_build_info"));
    let started = std::time::Instant::now();
    let (status, _) = svc.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a scrape does not wait for the database"
    );
    assert_eq!(svc.get("/ready").await.0, 503);
    assert_eq!(svc.get("/health").await.0, 200);
    tokio::task::block_in_place(|| cluster.start_again()).expect("start cluster again");
    let c = connect(&url).await;
    exec(
        &c,
        "CREATE TABLE fresh (x int); INSERT INTO fresh VALUES (1); ANALYZE fresh;",
    )
    .await;
    svc.wait_for(
        "pg_up 1 and fresh series after the database came back",
        |b| sample(b, "pg_up") == Some(1.0) && b.contains("relname=\"fresh\""),
    )
    .await;
    assert_eq!(svc.get("/ready").await.0, 200);
    svc.stop().await;
}

#[tokio::test]
async fn many_concurrent_scrapes_during_sampling_never_see_a_partial_body() {
    let db = TestDb::new().await;
    let svc = start(&db.url, ONE_QUERY, |_| {}).await;
    svc.wait_ready().await;
    let families = |b: &str| b.lines().filter(|l| l.starts_with("# TYPE ")).count();
    // The reference is a complete body: both queries have published.
    let complete = crate::catalog::wait_for(&svc, "both queries sampled", |b| {
        sample(b, "pg_test_answer") == Some(42.0) && has_family(b, "pg_test_table_rows")
    })
    .await;
    let reference = families(&complete);
    let addr = svc.addr;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut bodies = Vec::new();
            for _ in 0..20 {
                let request = client.get(format!("http://{addr}/metrics"));
                bodies.push(crate::harness::http_text(request).await);
            }
            bodies
        }));
    }
    for t in tasks {
        for b in t.await.unwrap() {
            // Families only ever join (the plan guard's first verdict may come later);
            // a partial body would miss some.
            assert!(
                families(&b) >= reference,
                "a body with fewer families than a complete one:\n{b}"
            );
            assert!(b.ends_with('\n'));
            assert!(sample(&b, "pg_test_answer") == Some(42.0));
        }
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_never_holds_more_connections_than_configured_even_when_every_query_hangs_on_a_lock()
 {
    let db = TestDb::new().await;
    let locker = db.client().await;
    exec(&locker, "CREATE TABLE hot (x int)").await;
    let mut catalog = String::from("queries:\n");
    for i in 0..8 {
        catalog.push_str(&format!(
            "  - name: q{i}\n    help: waits on a lock\n    interval: 2s\n    timeout: 1500ms\n    sql: SELECT count(*) AS n FROM hot\n    metrics:\n      - column: n\n        name: pg_test_hot_{i}\n        type: gauge\n        help: rows\n"
        ));
    }
    exec(&locker, "BEGIN; LOCK TABLE hot IN ACCESS EXCLUSIVE MODE").await;
    let svc = start(&db.url, &catalog, |c| {
        c.pool_size = 2;
        c.lock_timeout = Duration::from_secs(1);
    })
    .await;
    let admin = db.client().await;
    let mut max_seen = 0;
    let mut waiting_seen = 0;
    for _ in 0..40 {
        let r = admin
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') FROM pg_stat_activity WHERE application_name = 'pgpulse' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        max_seen = max_seen.max(r.get::<_, i64>(0));
        waiting_seen = waiting_seen.max(r.get::<_, i64>(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(waiting_seen >= 1, "queries did wait on the lock");
    assert!(
        max_seen <= 2,
        "pgpulse held {max_seen} connections with pool_size 2"
    );
    // Counted as failures (the body follows within a render gap).
    let failures = |body: &str, kind: &str| -> f64 {
        (0..8)
            .filter_map(|i| {
                sample(
                    body,
                    &format!("pgpulse_query_errors_total{{query=\"q{i}\",kind=\"{kind}\"}}"),
                )
            })
            .sum()
    };
    svc.wait_for("lock waits counted as failures", |b| {
        failures(b, "timeout") + failures(b, "connection") >= 1.0
    })
    .await;
    exec(&locker, "ROLLBACK").await;
    svc.stop().await;
}

#[tokio::test]
async fn a_role_without_monitoring_privileges_still_shows_pg_up_1() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let role = format!("plain_{}", rand::random::<u32>());
    exec(&admin, &format!("CREATE ROLE {role} LOGIN")).await;
    // shared_preload_libraries is unreadable without pg_read_all_settings: gating data is
    // unknown, but the database answers, so pg_up must be 1 and queries must run.
    let url = db
        .url
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let svc = start(&url, ONE_QUERY, |_| {}).await;
    let body = svc.wait_for_sample("pg_test_answer", |v| v == 42.0).await;
    assert_eq!(sample(&body, "pg_up"), Some(1.0));
    svc.stop().await;
    exec(&admin, &format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;
}

#[tokio::test]
async fn a_failing_querys_last_good_series_stay_until_expire_after_then_vanish() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(
        &c,
        "CREATE TABLE fleeting (v int); INSERT INTO fleeting VALUES (7);
         CREATE TABLE divisor (d int); INSERT INTO divisor VALUES (1);",
    )
    .await;
    let catalog = "queries:
  - name: fleeting
    help: reads a table that goes away
    interval: 1s
    timeout: 900ms
    expire_after: 4s
    sql: SELECT max(v) / (SELECT count(*) FROM divisor) AS v FROM fleeting
    metrics:
      - {column: v, name: pg_test_fleeting, type: gauge, help: The value.}
";
    let svc = start(&db.url, catalog, |_| {}).await;
    svc.wait_for_sample("pg_test_fleeting", |v| v == 7.0).await;
    // Division by zero from now on: a SQL error, not a missing object.
    exec(&c, "DELETE FROM divisor").await;
    let failing = "pgpulse_query_errors_total{query=\"fleeting\",kind=\"sql\"}";
    let first_failure = svc.wait_for_sample(failing, |v| v >= 1.0).await;
    assert_eq!(
        sample(&first_failure, "pg_test_fleeting"),
        Some(7.0),
        "the last good series stays"
    );
    let last_success = sample(
        &first_failure,
        "pgpulse_query_last_success_timestamp_seconds{query=\"fleeting\"}",
    )
    .unwrap();
    svc.wait_for("the series vanish after expire_after", |b| {
        !has_family(b, "pg_test_fleeting")
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - last_success >= 4.0,
        "gone only after expire_after (4s): {:.1}s",
        now - last_success
    );
    let landing = svc.get("/").await.1;
    assert!(
        landing.contains("fleeting")
            && landing.contains("s ago (unix ")
            && landing.contains(": sql: "),
        "the landing page says which kind of error and when: {landing}"
    );
    assert!(
        !landing.contains("does not exist"),
        "no server message on the landing page: {landing}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_a_real_sample_after_the_database_comes_up() {
    let mut cluster = own_cluster(ClusterOptions::default());
    tokio::task::block_in_place(|| cluster.stop()).expect("stop cluster");
    let url = cluster.url("postgres");
    let svc = start(&url, ONE_QUERY, |c| {
        c.reconnect_max_backoff = Duration::from_millis(500)
    })
    .await;
    // Ticks are skipped while the database is down; they must not make pgpulse ready.
    let skipped = "pgpulse_query_skipped_ticks_total{query=\"constant\"}";
    svc.wait_for_sample(skipped, |v| v >= 2.0).await;
    assert_eq!(svc.get("/ready").await.0, 503);
    tokio::task::block_in_place(|| cluster.start_again()).expect("start cluster");
    eventually(crate::harness::PATIENCE, || async {
        (svc.get("/ready").await.0 == 200).then_some(())
    })
    .await
    .expect("ready once the database answers");
    // Ready follows the rendered body: once ready, the first real sample is in it.
    assert!(
        sample(&svc.metrics().await, "pg_test_answer").is_some(),
        "ready before the first real sample"
    );
    svc.stop().await;
}

#[tokio::test]
async fn a_dropped_object_is_unavailable_and_its_series_go_at_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(
        &c,
        "CREATE TABLE vanishing (v int); INSERT INTO vanishing VALUES (3);",
    )
    .await;
    let catalog = "queries:
  - name: vanishing
    interval: 1s
    timeout: 900ms
    expire_after: 1h
    sql: SELECT max(v) AS v FROM vanishing
    metrics:
      - {column: v, name: pg_test_vanishing, type: gauge, help: The value.}
";
    let svc = start(&db.url, catalog, |_| {}).await;
    svc.wait_for("sampled", |b| sample(b, "pg_test_vanishing") == Some(3.0))
        .await;
    exec(&c, "DROP TABLE vanishing").await;
    let unavailable = "pgpulse_query_errors_total{query=\"vanishing\",kind=\"unavailable\"}";
    let body = svc
        .wait_for("the missing table counted as unavailable", |b| {
            sample(b, unavailable).unwrap_or(0.0) >= 1.0
        })
        .await;
    // Cleared at once, although expire_after is an hour.
    assert!(!has_family(&body, "pg_test_vanishing"), "{body}");
    assert_eq!(
        sample(&body, "pgpulse_query_series{query=\"vanishing\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &body,
            "pgpulse_query_errors_total{query=\"vanishing\",kind=\"sql\"}"
        ),
        Some(0.0)
    );
    svc.stop().await;
}
