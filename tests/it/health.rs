//! Health that holds under pressure: the connection budget on the server's side, a truthful
//! `pg_up` when the server accepts TCP but does not answer, and `/ready`. pgpulse's role never
//! holds more server connections than `database.pool_size`, the probe included, also while
//! runs are cancelled by reloads and while its backends (and the postmaster) are stopped with
//! SIGSTOP; `/ready` is 200 only once every enabled query has succeeded at least once (queries
//! gated out for this server are not waited for), 503 before, naming the queries still
//! pending; once reached, a reload that adds a query does not revoke it. First runs wait for
//! the probe's first verdict rather than being skipped before it.

use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_postgres::Client;

use crate::harness::{PATIENCE, TestDb, connect, eventually, own_cluster, scalar};
use crate::service::{Running, sample, start};
use pgpulse::demo::{ClusterOptions, TempCluster};

/// pgpulse's server connections to the current database.
const HELD: &str = "SELECT count(*) FROM pg_stat_activity \
                    WHERE application_name = 'pgpulse' AND datname = current_database()";

/// `n` queries that each hold a connection for 0.6 s per run.
fn sleepers(n: usize, interval: &str) -> String {
    let mut c = String::from("queries:\n");
    for i in 0..n {
        c.push_str(&format!(
            "  - name: s{i}\n    help: sleeps\n    interval: {interval}\n    timeout: 1500ms\n    \
             sql: SELECT 1 AS v FROM pg_sleep(0.6)\n    metrics:\n      \
             - {{column: v, name: pg_test_sleeper_{i}, type: gauge, help: One.}}\n"
        ));
    }
    c
}

/// Polls pgpulse's connections while reloading every half second (each reload changes every
/// query's interval, so every run in flight is cancelled and restarted); returns the most
/// connections seen.
async fn most_held_across_reloads(svc: &Running, admin: &Client, reloads: u32) -> i64 {
    let seen = Mutex::new((0i64, 0u32, 0u32));
    eventually(PATIENCE, || async {
        let held = scalar(admin, HELD).await;
        let mut s = seen.lock().unwrap();
        s.0 = s.0.max(held);
        s.1 += 1;
        if s.1.is_multiple_of(5) {
            s.2 += 1;
            let interval = if s.2.is_multiple_of(2) {
                "2s"
            } else {
                "2100ms"
            };
            std::fs::write(&svc.catalog_path, sleepers(4, interval)).unwrap();
            let applied = svc.reloader.reload().unwrap();
            assert_eq!(applied.restarted, 4, "every query restarts");
        }
        (s.2 >= reloads).then_some(())
    })
    .await
    .expect("the reloads ran");
    seen.into_inner().unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_never_holds_more_server_connections_than_the_budget_even_when_reloads_cancel_runs()
 {
    for budget in [1, 2, 3] {
        let db = TestDb::new().await;
        let svc = start(&db.url, &sleepers(4, "2s"), |c| c.pool_size = budget).await;
        let admin = db.client().await;
        svc.wait_for("a first sample", |b| {
            sample(b, "pg_up") == Some(1.0) && sample(b, "pg_test_sleeper_0") == Some(1.0)
        })
        .await;
        let most = most_held_across_reloads(&svc, &admin, 16).await;
        assert!(
            most <= budget as i64,
            "pgpulse held {most} server connections with a budget of {budget}"
        );
        assert!(most >= 1, "the poll saw pgpulse's connections");
        let body = svc
            .wait_for("samples after the reloads", |b| {
                sample(b, "pg_test_sleeper_3") == Some(1.0)
            })
            .await;
        assert_eq!(sample(&body, "pg_up"), Some(1.0), "{body}");
        svc.stop().await;
    }
}

/// Processes stopped with SIGSTOP; all continued (SIGCONT) when dropped, also on panic, so
/// the cluster can be stopped and removed.
#[derive(Default)]
pub(crate) struct Stopped(Mutex<Vec<i32>>);

impl Stopped {
    pub(crate) fn stop(&self, pid: i32) {
        let mut pids = self.0.lock().unwrap();
        if !pids.contains(&pid) {
            kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
            pids.push(pid);
        }
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let pids = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for pid in pids.iter() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
        }
    }
}

/// The postmaster's pid, from its pid file.
pub(crate) fn postmaster_pid(cluster: &TempCluster) -> i32 {
    let file = std::fs::read_to_string(cluster.dir().join("data/postmaster.pid")).unwrap();
    file.lines().next().unwrap().trim().parse().unwrap()
}

/// Stops every backend pgpulse holds now; returns how many it holds.
async fn stop_pgpulse_backends(admin: &Client, stopped: &Stopped) -> usize {
    let pids = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgpulse'",
            &[],
        )
        .await
        .unwrap();
    for row in &pids {
        stopped.stop(row.get(0));
    }
    pids.len()
}

const QUICK: &str = "queries:
  - name: quick
    interval: 1s
    timeout: 900ms
    sql: SELECT 1 AS v
    metrics:
      - {column: v, name: pg_test_quick, type: gauge, help: One.}
";

/// pgpulse with `budget` connections, 1 s probe and connect timeouts and a 1 s backoff cap,
/// sampling one cheap query every second; returns once it is up and has a sample.
pub(crate) async fn start_short_probe(url: &str, budget: usize) -> Running {
    let svc = start(url, QUICK, |c| {
        c.pool_size = budget;
        c.probe_timeout = Duration::from_secs(1);
        c.connect_timeout = Duration::from_secs(1);
        c.reconnect_max_backoff = Duration::from_secs(1);
    })
    .await;
    svc.wait_for("pg_up 1 and a sample", |b| {
        sample(b, "pg_up") == Some(1.0) && sample(b, "pg_test_quick") == Some(1.0)
    })
    .await;
    svc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_backends_make_pg_up_0_and_their_connections_keep_their_budget_slots() {
    let cluster = own_cluster(ClusterOptions::default());
    let url = cluster.url("postgres");
    let budget = 2;
    let svc = start_short_probe(&url, budget).await;
    let admin = connect(&url).await;
    let stopped = Stopped::default();
    // Every backend pgpulse opens is stopped as soon as it is seen: its connections get no
    // answer, whatever they do. It must neither open more than its budget nor say it is up.
    eventually(PATIENCE, || async {
        let held = stop_pgpulse_backends(&admin, &stopped).await;
        assert!(held <= budget, "{held} server connections, budget {budget}");
        let up = sample(&svc.metrics().await, "pg_up");
        (up == Some(0.0) && held == budget && stopped.len() >= budget).then_some(())
    })
    .await
    .expect("pg_up 0 with every budget slot held by a stopped backend");
    // Three more failed probes, every poll on the way: still within the budget, still down.
    let failures = "pgpulse_connection_failures_total";
    let first = sample(&svc.metrics().await, failures).unwrap();
    eventually(PATIENCE, || async {
        let held = stop_pgpulse_backends(&admin, &stopped).await;
        assert!(held <= budget, "{held} server connections, budget {budget}");
        let body = svc.metrics().await;
        assert_eq!(
            sample(&body, "pg_up"),
            Some(0.0),
            "no answer, yet up:\n{body}"
        );
        (sample(&body, failures).unwrap() >= first + 3.0).then_some(())
    })
    .await
    .expect("the probe kept failing while every budget slot is stopped");
    drop(stopped);
    svc.wait_for("pg_up 1 after SIGCONT", |b| sample(b, "pg_up") == Some(1.0))
        .await;
    let held = scalar(&admin, HELD).await as usize;
    assert!(held <= budget, "{held} server connections, budget {budget}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_postmaster_and_backends_make_pg_up_0_until_they_continue() {
    let cluster = own_cluster(ClusterOptions::default());
    let url = cluster.url("postgres");
    let budget = 3;
    let svc = start_short_probe(&url, budget).await;
    let admin = connect(&url).await;
    let stopped = Stopped::default();
    // New connections now hang after TCP's handshake; existing ones get no answer.
    stopped.stop(postmaster_pid(&cluster));
    let body = eventually(PATIENCE, || async {
        let held = stop_pgpulse_backends(&admin, &stopped).await;
        assert!(held <= budget, "{held} server connections, budget {budget}");
        let b = svc.metrics().await;
        (sample(&b, "pg_up") == Some(0.0)).then_some(b)
    })
    .await
    .expect("pg_up 0 while the server does not answer");
    assert_eq!(svc.get("/ready").await.0, 503, "{body}");
    drop(stopped);
    svc.wait_for("pg_up 1 after SIGCONT", |b| sample(b, "pg_up") == Some(1.0))
        .await;
    svc.stop().await;
}

const READY_CATALOG: &str = "queries:
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
    let svc = start(&db.url, READY_CATALOG, |_| {}).await;
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
    let mut more = READY_CATALOG.to_owned();
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

/// The first query's first run comes before the probe's first answer: it waits for that
/// verdict instead of being skipped as if the database were down, which left a query with an
/// hour's interval (a minute's, in the shipped catalog) without a value, and `/ready` at 503,
/// until its next tick.
#[tokio::test]
async fn first_runs_wait_for_the_probe_instead_of_skipping_a_whole_interval() {
    let db = TestDb::new().await;
    let catalog = "queries:
  - name: hourly
    interval: 1h
    sql: SELECT 1 AS v
    metrics:
      - {column: v, name: pg_test_hourly, type: gauge, help: One.}
  - name: often
    interval: 1s
    timeout: 900ms
    sql: SELECT 1 AS v
    metrics:
      - {column: v, name: pg_test_often, type: gauge, help: One.}
";
    let svc = start(&db.url, catalog, |_| {}).await;
    svc.wait_ready().await;
    let body = svc.metrics().await;
    assert_eq!(sample(&body, "pg_test_hourly"), Some(1.0), "{body}");
    assert_eq!(
        sample(&body, "pgpulse_query_skipped_ticks_total{query=\"hourly\"}"),
        Some(0.0),
        "{body}"
    );
    svc.stop().await;
}
