//! The maintenance runner: jobs run from the schedule's functions, VACUUM issued from the
//! client, every run logged, and one leader among concurrent runners.

use crate::harness::exec;
use crate::harness::{TestDb, eventually, pgpulse, text};
use crate::service::sample;

#[tokio::test]
async fn the_weekly_vacuum_runs_its_statements_from_the_client_and_logs_them() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    exec(
        &c,
        "CREATE TABLE stale (id int, pad text) WITH (autovacuum_enabled = false);
         INSERT INTO stale SELECT g, 'x' FROM generate_series(1, 2000) g;
         DELETE FROM stale WHERE id <= 1000;
         SELECT pg_stat_force_next_flush();",
    )
    .await;
    let out = run_now("weekly_vacuum", &db.url);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("weekly_vacuum: success"), "{stdout}");
    let vacuumed = eventually(crate::harness::PATIENCE, || async {
        let r = c
            .query_one("SELECT last_vacuum IS NOT NULL, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'stale'", &[])
            .await
            .unwrap();
        (r.get::<_, bool>(0) && r.get::<_, i64>(1) == 0).then_some(())
    })
    .await;
    assert!(vacuumed.is_some(), "stale was vacuumed by the client");
    let r = c
        .query_one(
            "SELECT status, (details->>'client_ran')::int, (details->>'client_failed')::int \
             FROM monitoring.maintenance_log WHERE job_name = 'weekly_vacuum' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "success");
    assert!(r.get::<_, i32>(1) >= 1, "client statements recorded");
    assert_eq!(r.get::<_, i32>(2), 0);
}

#[tokio::test]
async fn the_daily_partition_job_recreates_missing_future_partitions() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let count = || async {
        c.query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'trades'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let before = count().await;
    assert!(drop_future_trade_partitions(&c).await < before);
    let out = run_now("daily_partition_creation", &db.url);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(
        count().await,
        before,
        "the dropped future partitions are back"
    );
    let logged: i64 = c
        .query_one("SELECT count(*) FROM monitoring.maintenance_log WHERE job_name = 'daily_partition_creation' AND status = 'success'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 1);
}

#[tokio::test]
async fn an_unknown_job_is_a_clear_error() {
    let db = TestDb::trade_migrated().await;
    let out = run_now("no_such_job", &db.url);
    let (_, stderr) = text(&out);
    // A usage error (issue 27): exit 2, and the jobs are listed (see next_step.rs).
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no_such_job"), "{stderr}");
}

#[tokio::test]
async fn only_one_runner_leads_until_it_goes_away() {
    let db = TestDb::trade_migrated().await;
    let first = db.client().await;
    let second = db.client().await;
    assert!(pgpulse::maintenance::try_lead(&first).await.unwrap());
    assert!(!pgpulse::maintenance::try_lead(&second).await.unwrap());
    drop(first);
    let took_over = eventually(crate::harness::PATIENCE, || async {
        pgpulse::maintenance::try_lead(&second)
            .await
            .unwrap()
            .then_some(())
    })
    .await;
    assert!(
        took_over.is_some(),
        "the second runner leads once the first is gone"
    );
}

#[tokio::test]
async fn the_runner_reads_the_seed_schedule() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let jobs = pgpulse::maintenance::schedule(&c).await.unwrap();
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "daily_partition_creation",
            "daily_statistics_update",
            "hourly_query_stats",
            "weekly_vacuum"
        ]
    );
}

/// Drops the future trade partitions from 3 days ahead; returns how many partitions remain.
async fn drop_future_trade_partitions(c: &tokio_postgres::Client) -> i64 {
    exec(
        c,
        "DO $$ DECLARE r record; BEGIN
           FOR r IN SELECT partition_relname FROM monitoring.partition_bounds('trades'::regclass)
                     WHERE NOT is_default AND range_start >= now() + interval '3 days'
           LOOP EXECUTE format('DROP TABLE %I', r.partition_relname); END LOOP; END $$;",
    )
    .await;
    crate::harness::scalar(
        c,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'trades'::regclass",
    )
    .await
}

const INSERT_TRADE: &str = "INSERT INTO trades (symbol, price, quantity, maker_order_id, taker_order_id, maker_user_id, taker_user_id) VALUES ('BTC-USD', 1, 1, 1, 2, 1, 2)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_job_behind_a_lock_gives_up_blocks_no_insert_leaves_nothing_half_made_and_succeeds_later()
 {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let partitions = drop_future_trade_partitions(&c).await;
    let tables = "SELECT count(*) FROM pg_class WHERE relname LIKE 'trades\\_%' AND relkind = 'r'";
    let tables_before = crate::harness::scalar(&c, tables).await;
    // Another session holds a lock that conflicts with the job's (a manual VACUUM or
    // CREATE INDEX CONCURRENTLY would), for as long as the test needs.
    let holder = db.client().await;
    exec(
        &holder,
        "BEGIN; LOCK TABLE trades IN SHARE UPDATE EXCLUSIVE MODE",
    )
    .await;
    let url = db.url.clone();
    let job = tokio::task::spawn_blocking(move || {
        pgpulse(
            &[
                "maintain",
                "--run-now",
                "daily_partition_creation",
                "--database-url",
                &url,
            ],
            &[("PGPULSE_MAINTENANCE__LOCK_TIMEOUT", "3s")],
        )
    });
    // While the job waits for its lock, trades keep being inserted and nothing waits on it.
    let waiting = eventually(crate::harness::PATIENCE, || async {
        let pid: Option<i32> = c
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgpulse maintain' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        pid
    })
    .await
    .expect("the job waits for its lock");
    let inserter = db.client().await;
    let insert = tokio::spawn(async move { inserter.execute(INSERT_TRADE, &[]).await });
    let blocked_by_job = crate::harness::scalar(
        &c,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE {waiting} = ANY (pg_blocking_pids(pid))"
        ),
    )
    .await;
    assert_eq!(
        blocked_by_job, 0,
        "no session waits for the maintenance session"
    );
    assert_eq!(insert.await.unwrap().unwrap(), 1, "the trade was inserted");
    let out = job.await.unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("lock timeout"), "{stdout}");
    assert_eq!(
        crate::harness::scalar(&c, tables).await,
        tables_before,
        "no partition half-made"
    );
    let failed = crate::harness::scalar(
        &c,
        "SELECT count(*) FROM monitoring.maintenance_log WHERE job_name = 'daily_partition_creation' AND status = 'failed' AND error LIKE '%lock timeout%'",
    )
    .await;
    assert_eq!(failed, 1, "the failure is logged");
    exec(&holder, "COMMIT").await;
    let out = run_now("daily_partition_creation", &db.url);
    assert!(out.status.success(), "{:?}", text(&out));
    let after = crate::harness::scalar(
        &c,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'trades'::regclass",
    )
    .await;
    assert!(
        after > partitions,
        "the missing partitions exist once the lock is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_long_reader_of_one_partition_the_partition_job_attaches_without_blocking_inserts()
{
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let partitions = drop_future_trade_partitions(&c).await;
    // A long transaction reading today's trades: CREATE TABLE ... PARTITION OF would queue
    // ACCESS EXCLUSIVE behind it and every INSERT behind that; ATTACH does not.
    // Literal bounds: the planner prunes to today's partition and locks only it.
    let today = c
        .query_one(
            "SELECT range_start::text, range_end::text FROM monitoring.partition_bounds('trades'::regclass) \
             WHERE NOT is_default AND range_start <= now() AND now() < range_end",
            &[],
        )
        .await
        .unwrap();
    let (from, to): (String, String) = (today.get(0), today.get(1));
    let reader = db.client().await;
    exec(&reader, &format!(
            "BEGIN; SELECT count(*) FROM trades WHERE executed_at >= '{from}' AND executed_at < '{to}'"
        )).await;
    let out = run_now("daily_partition_creation", &db.url);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(c.execute(INSERT_TRADE, &[]).await.unwrap(), 1);
    let after = crate::harness::scalar(
        &c,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'trades'::regclass",
    )
    .await;
    assert!(after > partitions, "created while the reader still reads");
    // The attached partitions have the parent's indexes and constraints.
    let indexed = crate::harness::scalar(
        &c,
        "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid \
         WHERE i.inhparent = 'trades'::regclass AND NOT EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = p.oid AND x.indisprimary)",
    )
    .await;
    assert_eq!(indexed, 0, "every partition has its primary key");
    exec(&reader, "COMMIT").await;
}

#[tokio::test]
async fn job_outcomes_from_the_log_are_metrics() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let run =
        |url: String| tokio::task::spawn_blocking(move || run_now("hourly_query_stats", &url));
    // A bad function_call makes the job fail (logged), then a good one succeeds.
    exec(&c, "UPDATE monitoring.maintenance_schedule SET function_call = 'DROP TABLE trades' WHERE job_name = 'hourly_query_stats'").await;
    assert_eq!(run(db.url.clone()).await.unwrap().status.code(), Some(1));
    let svc = crate::service::start(&db.url, &crate::catalog::fast_catalog(), |_| {}).await;
    let job = |m: &str| format!("pg_maintenance_job_{m}{{job_name=\"hourly_query_stats\"}}");
    svc.wait_for("the failed run", |b| {
        sample(b, &job("failures_total")) == Some(1.0)
            && sample(b, &job("last_run_successful")) == Some(0.0)
    })
    .await;
    exec(&c, "UPDATE monitoring.maintenance_schedule SET function_call = 'monitoring.get_query_performance()' WHERE job_name = 'hourly_query_stats'").await;
    assert!(run(db.url.clone()).await.unwrap().status.success());
    let body = svc
        .wait_for("the successful run", |b| {
            sample(b, &job("last_run_successful")) == Some(1.0)
        })
        .await;
    assert_eq!(sample(&body, &job("failures_total")), Some(1.0));
    assert_eq!(sample(&body, &job("period_seconds")), Some(3600.0));
    let logged: f64 = c
        .query_one(
            "SELECT extract(epoch FROM finished_at)::float8 FROM monitoring.maintenance_log \
             WHERE job_name = 'hourly_query_stats' AND status = 'success'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let exposed = sample(&body, &job("last_success_timestamp_seconds")).unwrap();
    assert!((exposed - logged).abs() < 1e-3, "{exposed} vs {logged}");
    assert_eq!(
        sample(
            &body,
            "pg_maintenance_job_period_seconds{job_name=\"weekly_vacuum\"}"
        ),
        Some(604800.0)
    );
    svc.stop().await;
}

/// `pgpulse maintain --run-now JOB` against `url`.
fn run_now(job: &str, url: &str) -> std::process::Output {
    pgpulse(&["maintain", "--run-now", job, "--database-url", url], &[])
}
