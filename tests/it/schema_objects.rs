//! The monitoring schema's objects: 13 views and 14 functions exist and run with their
//! documented columns; the sampling role reads every view and writes nothing.

use crate::harness::exec;
use crate::harness::strings;
use crate::harness::{TestDb, with_db};
use pgpulse::db::verify::{FUNCTIONS, VIEWS};

#[tokio::test]
async fn after_migrating_the_13_views_and_14_functions_exist_and_every_view_answers() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    for v in VIEWS {
        c.query(&format!("SELECT * FROM monitoring.{v}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
    }
    let names: Vec<String> = FUNCTIONS.iter().map(|s| s.to_string()).collect();
    let n: i64 = c
        .query_one(
            "SELECT count(DISTINCT proname) FROM pg_proc WHERE pronamespace = 'monitoring'::regnamespace AND proname = ANY($1)",
            &[&names],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 14);
    let n = crate::harness::scalar(
        &c,
        "SELECT count(*) FROM pg_views WHERE schemaname = 'monitoring'",
    )
    .await;
    assert_eq!(n, 13);
}

/// Column names of the rows a query returns (prepared, not executed).
async fn columns(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    c.prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect()
}

#[tokio::test]
async fn every_function_runs_on_the_trade_engine_database_with_its_documented_result() {
    let db = TestDb::trade_migrated().await;
    let mut c = db.client().await;
    let documented: [(&str, &[&str]); 12] = [
        (
            "get_query_performance(interval '1 hour')",
            &[
                "queryid",
                "calls",
                "total_exec_time_ms",
                "mean_exec_time_ms",
            ],
        ),
        (
            "get_table_bloat()",
            &[
                "schemaname",
                "relname",
                "dead_tuple_ratio",
                "recommendation",
            ],
        ),
        (
            "get_missing_indexes()",
            &["schemaname", "relname", "seq_scan", "suggestion"],
        ),
        (
            "analyze_partition_usage()",
            &[
                "parent_relname",
                "partition_name",
                "seq_scan",
                "idx_scan",
                "usage_category",
            ],
        ),
        (
            "create_future_order_partitions(3)",
            &["partition_name", "range_start", "range_end"],
        ),
        (
            "create_future_trade_partitions(7)",
            &["partition_name", "range_start", "range_end"],
        ),
        (
            "archive_old_partitions(12)",
            &["parent", "partition_name", "range_end"],
        ),
        (
            "run_maintenance_vacuum()",
            &["schemaname", "relname", "n_dead_tup", "statement"],
        ),
        ("update_table_statistics()", &["schemaname", "relname"]),
        (
            "partition_maintenance()",
            &["parent", "partition_name", "range_start", "range_end"],
        ),
        (
            "rebuild_bloated_indexes()",
            &["indexrelname", "reason", "statement"],
        ),
        (
            "database_health_check()",
            &[
                "check_name",
                "status",
                "value",
                "threshold",
                "recommendation",
            ],
        ),
    ];
    for (call, cols) in documented {
        let got = columns(&c, &format!("SELECT * FROM monitoring.{call}")).await;
        for col in cols {
            assert!(
                got.iter().any(|g| g == col),
                "{call} lacks column {col}: {got:?}"
            );
        }
        let tx = c.transaction().await.unwrap();
        tx.query(&format!("SELECT * FROM monitoring.{call}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{call}: {e}"));
        tx.rollback().await.unwrap();
    }
    // The health check covers the named checks with statuses from a fixed set.
    let rows = c
        .query(
            "SELECT check_name, status FROM monitoring.database_health_check()",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for needed in [
        "Cache Hit Ratio",
        "Connection Usage",
        "Table Bloat",
        "Blocked Sessions",
        "Partition Runway",
        "pg_stat_statements",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "{needed} missing from {names:?}"
        );
    }
    assert!(
        rows.iter()
            .all(|r| ["OK", "WARNING", "CRITICAL", "N/A"].contains(&r.get::<_, &str>(1)))
    );
    let reset: bool = c
        .query_one("SELECT monitoring.reset_query_stats()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reset, "pg_stat_statements is preloaded on the test cluster");
    let status: String = c
        .query_one(
            "SELECT status FROM monitoring.run_scheduled_maintenance('daily_statistics_update')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "success");
    let logged: i64 = c
        .query_one("SELECT count(*) FROM monitoring.maintenance_log WHERE job_name = 'daily_statistics_update'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 1);
    let err = c
        .query(
            "SELECT * FROM monitoring.run_scheduled_maintenance('no_such_job')",
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no_such_job") || format!("{err:?}").contains("no_such_job"),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_schedule_holds_the_four_jobs_as_cron_expressions() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    let rows = c
        .query("SELECT job_name, cron_expression FROM monitoring.maintenance_schedule ORDER BY job_name", &[])
        .await
        .unwrap();
    let jobs: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        jobs,
        vec![
            ("daily_partition_creation".into(), "0 1 * * *".into()),
            ("daily_statistics_update".into(), "0 2 * * *".into()),
            ("hourly_query_stats".into(), "0 * * * *".into()),
            ("weekly_vacuum".into(), "0 3 * * 0".into()),
        ]
    );
}

#[tokio::test]
async fn autovacuum_tuning_applies_only_to_the_trade_tables_that_exist() {
    let empty = TestDb::new().await;
    empty.migrate().await;
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let opts = |t: &'static str| {
        let c = &c;
        async move {
            c.query_one(&format!("SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class WHERE oid = '{t}'::regclass"), &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert!(
        opts("order_book")
            .await
            .contains("autovacuum_vacuum_scale_factor=0.02")
    );
    assert!(
        opts("order_book")
            .await
            .contains("autovacuum_analyze_scale_factor=0.01")
    );
    assert!(
        opts("market_data")
            .await
            .contains("autovacuum_vacuum_scale_factor=0.2")
    );
    assert!(
        opts("orders_default")
            .await
            .contains("autovacuum_vacuum_scale_factor=0.1")
    );
    assert!(
        opts("trades_default")
            .await
            .contains("autovacuum_vacuum_scale_factor=0.05")
    );
}

#[tokio::test]
async fn the_sampling_role_reads_every_view_and_cannot_write_any_table() {
    let db = TestDb::trade_migrated().await;
    let admin = db.client().await;
    let login = format!("reader_{}", rand::random::<u32>());
    exec(
        &admin,
        &format!("CREATE ROLE {login} LOGIN IN ROLE pgpulse_monitor"),
    )
    .await;
    let url = with_db(&db.url, &db.name).replacen(
        "postgres://postgres@",
        &format!("postgres://{login}@"),
        1,
    );
    let c = crate::harness::connect(&url).await;
    for v in VIEWS {
        c.query(&format!("SELECT * FROM monitoring.{v}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{v} as the sampling role: {e}"));
    }
    c.query("SELECT * FROM monitoring.database_health_check()", &[])
        .await
        .expect("health check");
    let tables = strings(&admin, "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('public', 'monitoring')").await;
    assert!(tables.len() > 10);
    for t in &tables {
        for stmt in [
            format!("DELETE FROM {t}"),
            format!("INSERT INTO {t} DEFAULT VALUES"),
            format!("TRUNCATE {t}"),
        ] {
            let e = c
                .batch_execute(&stmt)
                .await
                .expect_err(&format!("{stmt} must fail"));
            assert_eq!(
                e.code().map(|c| c.code()),
                Some("42501"),
                "{stmt}: permission denied expected, got {e:?}"
            );
        }
    }
    let e = c
        .query(
            "SELECT * FROM monitoring.create_future_trade_partitions(30)",
            &[],
        )
        .await
        .expect_err("write function");
    assert_eq!(e.code().map(|c| c.code()), Some("42501"));
    drop(c);
    exec(&admin, &format!("DROP OWNED BY {login}; DROP ROLE {login}")).await;
}
