//! `/ready` against real PostgreSQL: 200 only once every enabled query has succeeded at least
//! once (queries gated out for this server are not waited for), 503 before, naming the
//! queries still pending; once reached, a reload that adds a query does not revoke it.

use crate::harness::TestDb;
use crate::service::{sample, start};

const CATALOG: &str = "queries:
  - name: constant
    interval: 1s
    timeout: 900ms
    sql: SELECT 1 AS v
    metrics:
      - {column: v, name: pg_test_constant, type: gauge, help: One.}
  - name: late
    interval: 1s
    timeout: 900ms
    sql: SELECT count(*) AS n FROM later
    metrics:
      - {column: n, name: pg_test_later_rows, type: gauge, help: Rows.}
  - name: standby_only
    interval: 1s
    timeout: 900ms
    role: replica
    sql: SELECT 1 AS v
    metrics:
      - {column: v, name: pg_test_standby_only, type: gauge, help: One.}
";

#[tokio::test]
async fn ready_waits_until_every_enabled_query_has_succeeded_once_and_names_the_pending_ones() {
    let db = TestDb::new().await;
    let svc = start(&db.url, CATALOG, |_| {}).await;
    // `late` reads a table that does not exist yet: it ran and failed, more than once.
    let failed = "pgpulse_query_errors_total{query=\"late\",kind=\"unavailable\"}";
    svc.wait_for("late failed twice while constant succeeded", |b| {
        sample(b, failed).unwrap_or(0.0) >= 2.0
            && sample(b, "pg_test_constant") == Some(1.0)
            && sample(b, "pgpulse_query_enabled{query=\"standby_only\"}") == Some(0.0)
    })
    .await;
    let (status, body) = svc.get("/ready").await;
    assert_eq!(status, 503, "a failing query keeps pgpulse unready: {body}");
    assert!(
        body.lines().any(|l| l == "late"),
        "names the pending query: {body}"
    );
    assert!(
        !body.contains("constant") && !body.contains("standby_only"),
        "only the pending query is named (a gated-out query is not waited for): {body}"
    );
    db.client()
        .await
        .batch_execute("CREATE TABLE later (x int); INSERT INTO later VALUES (1)")
        .await
        .unwrap();
    svc.wait_ready().await;
    assert_eq!(
        sample(&svc.metrics().await, "pg_test_later_rows"),
        Some(1.0),
        "ready follows the body: the late query's first result is in it"
    );
    // A reload adds a query that cannot succeed: readiness, once reached, stays.
    let mut more = CATALOG.to_owned();
    more.push_str(
        "  - name: never
    interval: 1s
    timeout: 900ms
    sql: SELECT count(*) AS n FROM missing_forever
    metrics:
      - {column: n, name: pg_test_never, type: gauge, help: Rows.}
",
    );
    std::fs::write(&svc.catalog_path, more).unwrap();
    assert_eq!(svc.reloader.reload().unwrap().started, 1);
    svc.wait_for("the added query failed", |b| {
        sample(
            b,
            "pgpulse_query_errors_total{query=\"never\",kind=\"unavailable\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert_eq!(svc.get("/ready").await.0, 200);
    svc.stop().await;
}
