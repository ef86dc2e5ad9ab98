//! Ground truth for the issue-12 signals on real clusters: induce the condition, then compare
//! what pgpulse exposes with what PostgreSQL itself reports. XID ages move by exactly the XIDs
//! burnt, a forced deadlock adds one, a restart-only setting shows one pending restart and a
//! restart a new start time (and fires PgRestarted in promtool), sessions sleeping on a lock
//! accumulate as load under `Lock`, a vacuum of a partition shows under its root.

use crate::harness::exec;
use std::time::Duration;

use tokio_postgres::Client;

use crate::harness::{
    TestDb, cluster_without_autovacuum, connect, eventually, own_cluster, scalar,
};
use crate::service::{Running, sample, start};
use pgpulse::demo::ClusterOptions;

/// Conditions are polled for this long (CI runs on two loaded cores).
pub(crate) const DEADLINE: Duration = Duration::from_secs(120);

/// The named queries of the shipped queries.yaml, unchanged but for their interval (timeout
/// 800 ms), so tests run the real SQL fast.
pub(crate) fn shipped(names: &[&str], interval: &str) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/queries.yaml")).unwrap();
    let mut out = String::from("queries:\n");
    let mut keep = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("  - name: ") {
            keep = names.contains(&name.trim());
        } else if line.starts_with("  #") || !line.starts_with(' ') {
            keep = false;
        }
        if !keep {
            continue;
        }
        let t = line.trim_start();
        let pad = &line[..line.len() - t.len()];
        match t.split(':').next() {
            Some("interval") => out.push_str(&format!("{pad}interval: {interval}\n")),
            Some("timeout") => out.push_str(&format!("{pad}timeout: 800ms\n")),
            _ => out.push_str(&format!("{line}\n")),
        }
    }
    for n in names {
        assert!(
            out.contains(&format!("- name: {n}\n")),
            "no query {n} in queries.yaml"
        );
    }
    out
}

/// A single float8 (test helper; panics on failure).
pub(crate) async fn float(c: &Client, sql: &str) -> f64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Polls until the series `series` of `svc` equals what `sql` returns right after, and `ok`
/// accepts the value; panics with `what` otherwise.
pub(crate) async fn agreed(
    svc: &Running,
    c: &Client,
    series: &str,
    sql: &str,
    what: &str,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let got = eventually(DEADLINE, || async {
        let m = sample(&svc.metrics().await, series)?;
        let pg = float(c, sql).await;
        (m == pg && ok(m)).then_some(m)
    })
    .await;
    match got {
        Some(v) => v,
        None => panic!(
            "{what}: {series} never agreed with `{sql}` = {}; pgpulse has {:?}",
            float(c, sql).await,
            sample(&svc.metrics().await, series)
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn burning_xids_moves_the_database_xid_age_by_exactly_the_number_burnt() {
    // No autovacuum or analyze: nothing but the test assigns transaction IDs.
    let cluster = cluster_without_autovacuum();
    let db = TestDb::on(&cluster.url("postgres")).await;
    let c = db.client().await;
    let svc = start(&db.url, &shipped(&["database_wraparound"], "1s"), |_| {}).await;
    let series = format!("pg_database_xid_age_xids{{datname=\"{}\"}}", db.name);
    let sql = format!(
        "SELECT age(datfrozenxid)::float8 FROM pg_database WHERE datname = '{}'",
        db.name
    );
    let before = agreed(&svc, &c, &series, &sql, "xid age", |_| true).await;
    for _ in 0..1000 {
        c.batch_execute("SELECT pg_current_xact_id()")
            .await
            .expect("assign an xid");
    }
    let after = agreed(&svc, &c, &series, &sql, "xid age", |v| v != before).await;
    assert_eq!(after - before, 1000.0, "before {before}, after {after}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_deadlock_adds_exactly_one_deadlock() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(
        &c,
        "CREATE TABLE dl (id int PRIMARY KEY); INSERT INTO dl VALUES (1), (2)",
    )
    .await;
    let svc = start(&db.url, &shipped(&["database_stats"], "1s"), |_| {}).await;
    let series = format!("pg_database_deadlocks_total{{datname=\"{}\"}}", db.name);
    let sql = "SELECT deadlocks::float8 FROM pg_stat_database WHERE datname = current_database()";
    let before = agreed(&svc, &c, &series, sql, "deadlocks", |_| true).await;
    let (a, b) = (db.client().await, db.client().await);
    exec(&a, "BEGIN; UPDATE dl SET id = id WHERE id = 1").await;
    exec(&b, "BEGIN; UPDATE dl SET id = id WHERE id = 2").await;
    let a_pid = scalar(&a, "SELECT pg_backend_pid()::bigint").await;
    let first = tokio::spawn(async move {
        let r = a.batch_execute("UPDATE dl SET id = id WHERE id = 2").await;
        let _ = a.batch_execute("ROLLBACK").await;
        r
    });
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {a_pid} AND wait_event_type = 'Lock'"
    );
    eventually(DEADLINE, || async {
        (scalar(&c, &waiting).await == 1).then_some(())
    })
    .await
    .expect("the first session waits on the second's row lock");
    let second = b.batch_execute("UPDATE dl SET id = id WHERE id = 1").await;
    let _ = b.batch_execute("ROLLBACK").await;
    let first = first.await.unwrap();
    let deadlocked = [&first, &second]
        .iter()
        .filter(|r| {
            r.as_ref().err().and_then(|e| e.code())
                == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
        })
        .count();
    assert_eq!(deadlocked, 1, "{first:?} {second:?}");
    let after = agreed(&svc, &c, &series, sql, "deadlocks", |v| v != before).await;
    assert_eq!(after, before + 1.0);
    svc.stop().await;
}

/// A promtool unit test of PgRestarted over the start times pgpulse exposed before and after a
/// restart, one sample a second on a clock that starts at the first start: the alert fires a
/// minute after the restart (uptime 1 minute) and is silent from 5 minutes after it on.
fn restart_alert_test(before: f64, after: f64) -> String {
    let d = (after.floor() - before.floor()) as u64;
    assert!(
        d >= 1,
        "the restart took at least a second: {before} → {after}"
    );
    let (fires, quiet) = (d + 60, d + 300);
    format!(
        "rule_files:\n  - {root}/alerts/pgpulse.rules.yml\nevaluation_interval: 1s\ntests:\n  \
         - interval: 1s\n    input_series:\n      \
         - series: 'pg_postmaster_start_time_seconds{{job=\"pgpulse\", instance=\"db1:9864\"}}'\n        \
         values: '0x{before_samples} {d}x400'\n    alert_rule_test:\n      \
         - eval_time: {fires}s\n        alertname: PgRestarted\n        exp_alerts:\n          \
         - exp_labels: {{severity: warning, job: pgpulse, instance: \"db1:9864\"}}\n            \
         exp_annotations:\n              summary: PostgreSQL on db1:9864 restarted\n              \
         description: 'PostgreSQL on db1:9864 has been up for only 1m 0s (threshold 5 minutes): every session was reset. Check the server log for a crash.'\n              \
         runbook_url: https://github.com/pgpulse/pgpulse/blob/main/docs/runbooks.md#pgrestarted\n      \
         - eval_time: {quiet}s\n        alertname: PgRestarted\n        exp_alerts: []\n",
        root = env!("CARGO_MANIFEST_DIR"),
        before_samples = d - 1,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_only_setting_shows_one_pending_restart_and_a_restart_a_new_start_time() {
    let mut cluster = own_cluster(ClusterOptions::default());
    let db = TestDb::on(&cluster.url("postgres")).await;
    let c = db.client().await;
    let svc = start(&db.url, &shipped(&["server"], "1s"), |_| {}).await;
    let pending = "pg_settings_pending_restart";
    let pending_sql = "SELECT count(*)::float8 FROM pg_settings WHERE pending_restart";
    let started = "pg_postmaster_start_time_seconds";
    let started_sql = "SELECT extract(epoch FROM pg_postmaster_start_time())::float8";
    agreed(&svc, &c, pending, pending_sql, "no pending restart", |v| {
        v == 0.0
    })
    .await;
    let before = agreed(&svc, &c, started, started_sql, "start time", |_| true).await;
    exec(&c, "ALTER SYSTEM SET max_connections = 101").await;
    exec(&c, "SELECT pg_reload_conf()").await;
    agreed(&svc, &c, pending, pending_sql, "one pending restart", |v| {
        v == 1.0
    })
    .await;
    drop(c);
    tokio::task::block_in_place(|| {
        cluster.stop().expect("stop");
        cluster.start_again().expect("start again");
    });
    let c = connect(&db.url).await;
    let after = agreed(&svc, &c, started, started_sql, "new start time", |v| {
        v != before
    })
    .await;
    assert!(after > before, "start time went from {before} to {after}");
    agreed(
        &svc,
        &c,
        pending,
        pending_sql,
        "applied by the restart",
        |v| v == 0.0,
    )
    .await;
    assert_eq!(
        scalar(&c, "SELECT current_setting('max_connections')::bigint").await,
        101
    );
    svc.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.test.yml");
    std::fs::write(&path, restart_alert_test(before, after)).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_sleeping_on_a_lock_accumulate_as_load_under_lock() {
    let cluster = own_cluster(ClusterOptions::default());
    let db = TestDb::on(&cluster.url("postgres")).await;
    let c = db.client().await;
    exec(&c, "CREATE TABLE load_demo (id int)").await;
    let holder = db.client().await;
    exec(
        &holder,
        "BEGIN; LOCK TABLE load_demo IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let w = db.client().await;
        waiters.push(tokio::spawn(async move {
            let _ = w.batch_execute("SELECT count(*) FROM load_demo").await;
        }));
    }
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE wait_event_type = 'Lock' AND wait_event = 'relation'";
    eventually(DEADLINE, || async {
        (scalar(&c, waiting).await == 3).then_some(())
    })
    .await
    .expect("three sessions wait on the table lock");
    // pgpulse starts once PostgreSQL itself shows the three waiters: every sample sees them.
    let svc = start(&db.url, &shipped(&["database_load"], "1s"), |_| {}).await;
    let lock = "pg_database_load_session_seconds_total{state=\"active\",wait_event_type=\"Lock\",wait_event=\"relation\"}";
    let runs = "pgpulse_query_runs_total{query=\"database_load\"}";
    let seen = std::cell::RefCell::new(Vec::new());
    let settled = eventually(DEADLINE, || async {
        let body = svc.metrics().await;
        let (v, n) = (sample(&body, lock)?, sample(&body, runs)?);
        seen.borrow_mut().push(v);
        // Each 1 s sample adds 3 session-seconds.
        (n >= 5.0 && v == 3.0 * n).then_some((v, n))
    })
    .await;
    let seen = seen.into_inner();
    assert!(settled.is_some(), "load never reached 3 × runs: {seen:?}");
    assert!(
        seen.iter().all(|v| v % 3.0 == 0.0) && seen.windows(2).all(|w| w[0] <= w[1]),
        "every sample adds exactly 3 session-seconds and the counter never goes down: {seen:?}"
    );
    // The holder is idle in transaction, not active: it adds no Lock load.
    let body = svc.metrics().await;
    assert!(
        sample(&body, "pg_database_load_session_seconds_total{state=\"idle in transaction\",wait_event_type=\"Client\",wait_event=\"ClientRead\"}").is_some(),
        "{body}"
    );
    exec(&holder, "ROLLBACK").await;
    for w in waiters {
        w.await.unwrap();
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vacuum_of_a_partition_shows_as_running_on_its_root_table() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(&c, "CREATE TABLE vp (id int, pad text) PARTITION BY RANGE (id);
         CREATE TABLE vp_1 PARTITION OF vp FOR VALUES FROM (0) TO (1000000) WITH (autovacuum_enabled = false);
         INSERT INTO vp SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g;
         DELETE FROM vp WHERE id % 2 = 0;").await;
    let svc = start(&db.url, &shipped(&["vacuum_progress"], "1s"), |_| {}).await;
    // Cost-based delay at its most: one page per 100 ms, so the vacuum runs for minutes.
    let vacuumer = db.client().await;
    exec(
        &vacuumer,
        "SET vacuum_cost_delay = 100; SET vacuum_cost_limit = 1",
    )
    .await;
    let pid = scalar(&vacuumer, "SELECT pg_backend_pid()::bigint").await;
    let vacuum = tokio::spawn(async move { vacuumer.batch_execute("VACUUM vp_1").await });
    let running = format!(
        "pg_vacuum_running{{datname=\"{}\",relname=\"vp\"}}",
        db.name
    );
    let ratio = format!(
        "pg_vacuum_heap_scanned_ratio{{datname=\"{}\",relname=\"vp\"}}",
        db.name
    );
    let pg = format!(
        "SELECT count(*)::float8 FROM pg_stat_progress_vacuum WHERE pid = {pid} AND relid = 'vp_1'::regclass"
    );
    agreed(&svc, &c, &running, &pg, "a vacuum of vp_1 under vp", |v| {
        v == 1.0
    })
    .await;
    let body = svc.metrics().await;
    let r = sample(&body, &ratio).unwrap_or(f64::NAN);
    assert!((0.0..=1.0).contains(&r), "scanned ratio {r}");
    exec(&c, &format!("SELECT pg_cancel_backend({pid})")).await;
    assert!(vacuum.await.unwrap().is_err(), "the vacuum was cancelled");
    svc.stop().await;
}
