//! The maintenance runner: jobs run from the schedule's functions, VACUUM issued from the
//! client, every run logged, and one leader among concurrent runners.

use crate::harness::{TestDb, eventually, pgpulse, text};

#[tokio::test]
async fn the_weekly_vacuum_runs_its_statements_from_the_client_and_logs_them() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE stale (id int, pad text) WITH (autovacuum_enabled = false);
         INSERT INTO stale SELECT g, 'x' FROM generate_series(1, 2000) g;
         DELETE FROM stale WHERE id <= 1000;
         SELECT pg_stat_force_next_flush();",
    )
    .await
    .unwrap();
    let out = pgpulse(
        &[
            "maintain",
            "--run-now",
            "weekly_vacuum",
            "--database-url",
            &db.url,
        ],
        &[],
    );
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
    c.batch_execute(
        "DO $$ DECLARE r record; BEGIN
           FOR r IN SELECT partition_relname FROM monitoring.partition_bounds('trades'::regclass)
                     WHERE NOT is_default AND range_start >= now() + interval '3 days'
           LOOP EXECUTE format('DROP TABLE %I', r.partition_relname); END LOOP; END $$;",
    )
    .await
    .unwrap();
    assert!(count().await < before);
    let out = pgpulse(
        &[
            "maintain",
            "--run-now",
            "daily_partition_creation",
            "--database-url",
            &db.url,
        ],
        &[],
    );
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
    let out = pgpulse(
        &[
            "maintain",
            "--run-now",
            "no_such_job",
            "--database-url",
            &db.url,
        ],
        &[],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
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
