//! The trade-engine catalog against real PostgreSQL: induce the condition, assert the metric.

use crate::harness::exec;
use crate::harness::{TestDb, connect, own_cluster};
use crate::service::{Running, has_family, sample, start};
use pgpulse::demo::ClusterOptions;

/// The shipped catalog with every interval at 2s (timeouts just below), for tests.
pub(crate) fn fast_catalog() -> String {
    catalog_every(2)
}

/// The shipped catalog with every interval at `secs` seconds (timeouts 100 ms below).
pub(crate) fn catalog_every(secs: u64) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/queries.yaml")).unwrap();
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            let indent = &l[..l.len() - t.len()];
            if t.starts_with("interval: ") {
                format!("{indent}interval: {secs}s")
            } else if t.starts_with("timeout: ") {
                format!("{indent}timeout: {}ms", secs * 1000 - 100)
            } else if t.starts_with("expire_after: ") {
                format!("{indent}expire_after: {secs}s")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `f` holds for the /metrics body; panics with `what` and the body otherwise.
pub(crate) async fn wait_for(svc: &Running, what: &str, f: impl Fn(&str) -> bool) -> String {
    svc.wait_for(what, f).await
}

#[tokio::test]
async fn dead_tuples_show_as_the_dead_tuple_ratio() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    exec(
        &c,
        "CREATE TABLE bloated (id int, pad text) WITH (autovacuum_enabled = false);
         INSERT INTO bloated SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g;
         DELETE FROM bloated WHERE id % 5 < 2;
         SELECT pg_stat_force_next_flush();",
    )
    .await;
    let svc = start(&db.url, &fast_catalog(), |_| {}).await;
    let series = "pg_table_dead_tuple_ratio{schemaname=\"public\",relname=\"bloated\"}";
    let body = wait_for(&svc, "the dead tuple ratio of bloated", |b| {
        sample(b, series).is_some_and(|v| v > 0.0)
    })
    .await;
    let r = c
        .query_one(
            "SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'bloated'",
            &[],
        )
        .await
        .unwrap();
    let (live, dead): (i64, i64) = (r.get(0), r.get(1));
    let expected = dead as f64 / (live + dead) as f64;
    let got = sample(&body, series).unwrap();
    assert!(
        (got - expected).abs() <= 0.02,
        "ratio {got}, expected {expected} ({dead} dead, {live} live)"
    );
    assert!((got - 0.4).abs() <= 0.02, "2 of 5 rows deleted: {got}");
    assert_eq!(
        sample(
            &body,
            "pg_table_dead_tuples{schemaname=\"public\",relname=\"bloated\"}"
        ),
        Some(dead as f64)
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_table_larger_than_shared_buffers_drops_the_hit_ratio_below_0_95() {
    let cluster = own_cluster(ClusterOptions {
        shared_buffers: "128kB".into(),
        ..Default::default()
    });
    let db = TestDb::on(&cluster.url("postgres")).await;
    db.migrate().await;
    let c = db.client().await;
    exec(
        &c,
        "CREATE TABLE big (id int, pad text);
         INSERT INTO big SELECT g, repeat('y', 200) FROM generate_series(1, 40000) g;
         SELECT pg_stat_reset();",
    )
    .await;
    for _ in 0..5 {
        exec(&c, "SELECT count(*) FROM big WHERE pad LIKE 'z%'").await;
    }
    exec(&c, "SELECT pg_stat_force_next_flush()").await;
    let svc = start(&db.url, &fast_catalog(), |_| {}).await;
    let body = wait_for(&svc, "a heap hit ratio", |b| {
        sample(b, "pg_cache_hit_ratio{kind=\"heap\"}").is_some()
    })
    .await;
    let heap = sample(&body, "pg_cache_hit_ratio{kind=\"heap\"}").unwrap();
    assert!(heap < 0.95, "heap hit ratio {heap}");
    let reads = sample(&body, "pg_cache_blocks_read_total{kind=\"heap\"}").unwrap();
    assert!(reads > 1000.0, "blocks read {reads}");
    svc.stop().await;
    drop(db);
}

/// Client backends in `state`, summed over wait_event_type.
fn connections(body: &str, state: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("pg_connections{{state=\"{state}\",")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_idle_connections_raises_the_idle_count_by_exactly_that_many() {
    let cluster = own_cluster(ClusterOptions::default());
    let db = TestDb::on(&cluster.url("postgres")).await;
    db.migrate().await;
    let svc = start(&db.url, &fast_catalog(), |c| c.pool_size = 1).await;
    let stable = |b: &str| has_family(b, "pg_connections") && sample(b, "pg_up") == Some(1.0);
    let before = connections(&wait_for(&svc, "connection counts", stable).await, "idle");
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(connect(&db.url).await);
    }
    let target = before + 5.0;
    wait_for(&svc, "5 more idle connections", |b| {
        connections(b, "idle") == target
    })
    .await;
    drop(idle);
    wait_for(&svc, "the idle count back down", |b| {
        connections(b, "idle") == before
    })
    .await;
    svc.stop().await;
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_lock_with_a_waiter_shows_one_blocked_session_and_a_wait_above_zero() {
    let cluster = own_cluster(ClusterOptions::default());
    let db = TestDb::on(&cluster.url("postgres")).await;
    db.migrate().await;
    let holder = db.client().await;
    exec(
        &holder,
        "CREATE TABLE book (id int primary key, qty int); INSERT INTO book VALUES (1, 10);",
    )
    .await;
    let svc = start(&db.url, &fast_catalog(), |_| {}).await;
    wait_for(&svc, "no blocked sessions", |b| {
        sample(b, "pg_blocked_sessions") == Some(0.0)
    })
    .await;
    exec(&holder, "BEGIN; UPDATE book SET qty = 9 WHERE id = 1;").await;
    let waiter = db.client().await;
    let blocked = tokio::spawn(async move {
        waiter
            .batch_execute("UPDATE book SET qty = 8 WHERE id = 1")
            .await
    });
    let body = wait_for(&svc, "one blocked session waiting and its root", |b| {
        sample(b, "pg_blocked_sessions") == Some(1.0)
            && sample(b, "pg_lock_wait_longest_seconds").is_some_and(|v| v > 0.0)
            && b.lines()
                .filter(|l| l.starts_with("pg_lock_root_blocked_sessions{"))
                .count()
                == 1
    })
    .await;
    let root = body
        .lines()
        .find(|l| l.starts_with("pg_lock_root_blocked_sessions{"))
        .unwrap();
    assert!(
        root.contains("state=\"idle in transaction\"") && root.ends_with(" 1"),
        "{root}"
    );
    exec(&holder, "COMMIT").await;
    blocked.await.unwrap().unwrap();
    wait_for(&svc, "no blocked sessions again", |b| {
        sample(b, "pg_blocked_sessions") == Some(0.0)
            && !b.contains("pg_lock_root_blocked_sessions{")
    })
    .await;
    svc.stop().await;
    drop(db);
}

#[tokio::test]
async fn partitions_counts_runway_and_default_rows_follow_the_database() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let svc = start(&db.url, &fast_catalog(), |_| {}).await;
    let count = |b: &str| sample(b, "pg_partitions{parent=\"trades\"}");
    let runway = |b: &str| sample(b, "pg_partition_runway_seconds{parent=\"trades\"}");
    let body = wait_for(&svc, "trades partitions", |b| count(b).is_some()).await;
    let expected = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.unwrap().get::<_, f64>(0) }
    };
    let parts =
        expected("SELECT count(*)::float8 FROM pg_inherits WHERE inhparent = 'trades'::regclass")
            .await;
    assert_eq!(count(&body), Some(parts));
    let end = expected(
        "SELECT extract(epoch FROM max(range_end) - now())::float8 FROM monitoring.partition_bounds('trades'::regclass) WHERE NOT is_default",
    )
    .await;
    let got = runway(&body).unwrap();
    assert!((got - end).abs() < 120.0, "runway {got} vs {end}");
    assert!(
        got > 6.0 * 86400.0,
        "a week of daily partitions ahead: {got}"
    );
    // Drop the newest partition: one fewer, a day less of runway.
    let newest: String = c
        .query_one(
            "SELECT partition_relname FROM monitoring.partition_bounds('trades'::regclass) WHERE NOT is_default ORDER BY range_end DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    exec(&c, &format!("DROP TABLE {newest}")).await;
    let body = wait_for(&svc, "one partition fewer", |b| {
        count(b) == Some(parts - 1.0)
    })
    .await;
    let shorter = runway(&body).unwrap();
    assert!(
        (got - shorter - 86400.0).abs() < 120.0,
        "runway {got} → {shorter}"
    );
    // A row no partition covers lands in the default partition.
    assert_eq!(
        sample(&body, "pg_partition_default_rows{parent=\"trades\"}"),
        Some(0.0)
    );
    exec(&c, "INSERT INTO trades (symbol, price, quantity, maker_order_id, taker_order_id, maker_user_id, taker_user_id, executed_at) \
         VALUES ('BTC-USD', 1, 1, 1, 2, 1, 2, now() + interval '400 days')").await;
    wait_for(&svc, "one row in the default partition", |b| {
        sample(b, "pg_partition_default_rows{parent=\"trades\"}") == Some(1.0)
    })
    .await;
    svc.stop().await;
}

#[tokio::test]
async fn without_pg_stat_statements_its_series_are_absent_a_gauge_says_so_and_the_rest_works() {
    let cluster = own_cluster(ClusterOptions {
        preload_pg_stat_statements: false,
        ..Default::default()
    });
    let db = TestDb::trade_migrated_on(&cluster.url("postgres")).await;
    let svc = start(&db.url, &fast_catalog(), |_| {}).await;
    let body = wait_for(&svc, "the availability gauge at 0 and table metrics", |b| {
        sample(b, "pg_stat_statements_available") == Some(0.0)
            && has_family(b, "pg_table_size_bytes")
            && sample(b, "pgpulse_query_enabled{query=\"top_statements\"}").is_some()
    })
    .await;
    for family in [
        "pg_statement_calls_total",
        "pg_statement_exec_seconds_total",
        "pg_slow_statements",
        "pg_statement_latency_seconds",
    ] {
        assert!(
            !has_family(&body, family),
            "{family} present without pg_stat_statements"
        );
    }
    assert_eq!(
        sample(&body, "pgpulse_query_enabled{query=\"top_statements\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &body,
            "pgpulse_query_errors_total{query=\"top_statements\",kind=\"sql\"}"
        ),
        Some(0.0)
    );
    let landing = svc.get("/").await.1;
    assert!(
        landing.contains("shared_preload_libraries"),
        "the landing page says what to change"
    );
    svc.stop().await;
    drop(db);
}

/// The cumulative count of bucket `le` of the statement latency histogram.
fn bucket(body: &str, le: &str) -> f64 {
    sample(
        body,
        &format!("pg_statement_latency_seconds_bucket{{le=\"{le}\"}}"),
    )
    .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_of_pg_sleep_statements_moves_the_latency_buckets_as_the_latencies_say() {
    let cluster = own_cluster(ClusterOptions::default());
    let db = TestDb::on(&cluster.url("postgres")).await;
    db.migrate().await;
    let svc = start(&db.url, &fast_catalog(), |_| {}).await;
    // The first sample is the baseline; wait for one after it.
    let runs =
        |b: &str| sample(b, "pgpulse_query_runs_total{query=\"statement_latency\"}").unwrap_or(0.0);
    let base = wait_for(&svc, "two statement samples", |b| {
        runs(b) >= 2.0 && !bucket(b, "+Inf").is_nan()
    })
    .await;
    let c = db.client().await;
    // Two statement shapes (distinct queryids): 30 calls of 20 ms, 6 calls of 300 ms.
    for _ in 0..30 {
        exec(&c, "SELECT pg_sleep(0.02)").await;
    }
    for _ in 0..6 {
        exec(&c, "SELECT 1 AS a, pg_sleep(0.3)").await;
    }
    let count = |b: &str| sample(b, "pg_statement_latency_seconds_count").unwrap_or(0.0);
    let base_count = count(&base);
    let body = wait_for(&svc, "the 36 calls observed", |b| {
        bucket(b, "0.5") - bucket(b, "0.25") - (bucket(&base, "0.5") - bucket(&base, "0.25")) >= 6.0
            && bucket(b, "0.025")
                - bucket(b, "0.01")
                - (bucket(&base, "0.025") - bucket(&base, "0.01"))
                >= 30.0
    })
    .await;
    let slow = (bucket(&body, "0.5") - bucket(&body, "0.25"))
        - (bucket(&base, "0.5") - bucket(&base, "0.25"));
    assert_eq!(
        slow, 6.0,
        "exactly the six 300 ms calls fall in (0.25, 0.5]"
    );
    let fast = (bucket(&body, "0.025") - bucket(&body, "0.01"))
        - (bucket(&base, "0.025") - bucket(&base, "0.01"));
    assert!(
        fast >= 30.0,
        "the 20 ms calls fall in (0.01, 0.025]: {fast}"
    );
    assert!(count(&body) - base_count >= 36.0);
    let sum = sample(&body, "pg_statement_latency_seconds_sum").unwrap()
        - sample(&base, "pg_statement_latency_seconds_sum").unwrap();
    assert!(
        sum >= 30.0 * 0.02 + 6.0 * 0.3 - 0.01,
        "at least the slept seconds are observed: {sum}"
    );
    // Cumulative buckets never decrease and +Inf equals the count.
    assert_eq!(bucket(&body, "+Inf"), count(&body));
    svc.stop().await;
    drop(db);
}

#[tokio::test]
async fn health_db_serves_the_last_health_sample_and_turns_503_on_a_critical_check() {
    let db = TestDb::trade_migrated().await;
    let svc = start(&db.url, &fast_catalog(), |_| {}).await;
    wait_for(&svc, "a health sample", |b| {
        b.contains("pg_health_check_status{check=\"Table Bloat\"}")
    })
    .await;
    let (status, _, body) = svc.get_with("/health/db", &[]).await;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{json}");
    let checks = json["checks"].as_array().unwrap();
    let bloat = checks
        .iter()
        .find(|c| c["check"] == "Table Bloat")
        .expect("Table Bloat check");
    for key in ["status", "value", "threshold", "recommendation"] {
        assert!(bloat.get(key).is_some(), "{key} in {bloat}");
    }
    let c = db.client().await;
    exec(
        &c,
        "CREATE TABLE rotten (id int, pad text) WITH (autovacuum_enabled = false);
         INSERT INTO rotten SELECT g, repeat('r', 50) FROM generate_series(1, 5000) g;
         DELETE FROM rotten WHERE id % 2 = 0;
         SELECT pg_stat_force_next_flush();",
    )
    .await;
    wait_for(&svc, "Table Bloat critical", |b| {
        sample(b, "pg_health_check_status{check=\"Table Bloat\"}") == Some(2.0)
    })
    .await;
    let (status, _, body) = svc.get_with("/health/db", &[]).await;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["status"], "critical");
    svc.stop().await;
}

#[tokio::test]
async fn detaching_a_scanned_partition_does_not_lower_the_rolled_up_scan_counter() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    exec(
        &c,
        "SELECT count(*) FROM orders; SELECT count(*) FROM orders; SELECT count(*) FROM orders;
         SELECT pg_stat_force_next_flush();",
    )
    .await;
    let svc = start(&db.url, &fast_catalog(), |_| {}).await;
    let series = "pg_table_seq_scans_total{schemaname=\"public\",relname=\"orders\"}";
    let runs =
        |b: &str| sample(b, "pgpulse_query_runs_total{query=\"table_scans\"}").unwrap_or(0.0);
    let body = wait_for(&svc, "orders scans", |b| {
        sample(b, series).is_some_and(|v| v >= 3.0)
    })
    .await;
    let before = sample(&body, series).unwrap();
    let detached: i64 = c
        .query_one(
            "SELECT count(*) FROM monitoring.archive_old_partitions(1) WHERE parent = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(detached, 2, "months -3 and -2 detached");
    let base = runs(&body);
    // Two more runs, the last one published (a run that timed out on a loaded machine
    // leaves the series to expire).
    let after = wait_for(&svc, "two more samples", |b| {
        runs(b) >= base + 2.0 && sample(b, series).is_some()
    })
    .await;
    let now = sample(&after, series).unwrap();
    assert!(
        now >= before,
        "the rolled-up counter went down from {before} to {now}"
    );
    svc.stop().await;
}
