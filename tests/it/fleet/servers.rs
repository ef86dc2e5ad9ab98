//! One server, sampled once: three databases of one server (one of them reached through its
//! Unix socket, another name for the same server) run each server-wide query through one
//! target only, as pg_stat_statements counts; a standby's promotion flips
//! `pg_server_in_recovery` without a new series identity and stops its replica-only queries.

use super::{WHOAMI, target, whoami};
use crate::harness::{TestDb, connect, eventually, exec, own_cluster};
use crate::service::{Running, sample, start_settings};
use crate::signals::DEADLINE;
use pgpulse::demo::TempCluster;

/// [`WHOAMI`]'s database query with a server-wide one, every second, and a replica-only one.
fn catalog() -> String {
    format!("{WHOAMI}{MORE}")
}

const MORE: &str = r#"  - name: server_sessions
    help: sessions of the whole server
    scope: server
    interval: 1s
    timeout: 900ms
    sql: SELECT count(*) AS fleet_server_scope FROM pg_stat_activity
    metrics:
      - {column: fleet_server_scope, name: pg_test_server_sessions, type: gauge, help: Sessions.}
  - name: replica_only
    help: only on a standby
    role: replica
    interval: 1s
    timeout: 900ms
    sql: SELECT 1 AS one
    metrics:
      - {column: one, name: pg_test_replica_only, type: gauge, help: On a standby.}
"#;

const SERVER_RUNS: &str = "pgpulse_query_runs_total{query=\"server_sessions\"}";

/// The series keys (name and labels) of the catalog's and the probe's families in `body`.
fn series(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| {
            ["pg_test_", "pg_up", "pg_server_"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .filter_map(|l| l.rsplit_once(' ').map(|(k, _)| k.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_databases_of_one_server_run_its_server_wide_queries_once() {
    let cluster = own_cluster(Default::default());
    let admin_url = cluster.url("postgres");
    let dbs = [
        TestDb::on(&admin_url).await,
        TestDb::on(&admin_url).await,
        TestDb::on(&admin_url).await,
    ];
    let admin = connect(&admin_url).await;
    exec(&admin, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await;
    let socket = format!(
        "host={} port={} user=postgres dbname={}",
        cluster.dir().display(),
        cluster.port(),
        dbs[2].name
    );
    let svc = start_settings(&catalog(), |s, _| {
        s.targets = vec![
            target("t1", &dbs[0].url, &[]),
            target("t2", &dbs[1].url, &[]),
            target("t3", &socket, &[]),
        ];
    })
    .await;
    for (name, db) in [("t1", &dbs[0]), ("t2", &dbs[1]), ("t3", &dbs[2])] {
        svc.wait_probe(
            name,
            "its database and its verdict on the server query",
            |b| {
                sample(b, &whoami(&db.name)) == Some(1.0)
                    && (name == "t1"
                        || sample(b, "pgpulse_query_enabled{query=\"server_sessions\"}")
                            == Some(0.0))
            },
        )
        .await;
    }
    // From here on, count: only t1 runs the server-wide query.
    exec(&admin, "SELECT pg_stat_statements_reset()").await;
    let start = sample(&svc.probe("t1").await.1, SERVER_RUNS).unwrap();
    svc.wait_probe("t1", "three more runs", |b| {
        sample(b, SERVER_RUNS).unwrap_or(0.0) >= start + 3.0
    })
    .await;
    let row = admin
        .query_one(
            "SELECT count(DISTINCT dbid), coalesce(min(d.datname)::text, ''), coalesce(sum(calls), 0)::int8 FROM pg_stat_statements s \
             JOIN pg_database d ON d.oid = s.dbid \
             WHERE query LIKE '%fleet_server_scope%' AND query NOT LIKE '%pg_stat_statements%'",
            &[],
        )
        .await
        .unwrap();
    let (databases, db, calls): (i64, String, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (databases, db.as_str()),
        (1, dbs[0].name.as_str()),
        "run through t1 only"
    );
    assert!(calls >= 3, "{calls} calls");
    for name in ["t2", "t3"] {
        let b = svc.probe(name).await.1;
        assert_eq!(sample(&b, "pg_test_server_sessions"), None, "{name}:\n{b}");
        assert_eq!(sample(&b, "pg_up"), Some(1.0));
    }
    svc.stop().await;
}

/// Waits until `target`'s body has `pg_server_in_recovery` = `value`.
async fn role(svc: &Running, target: &str, value: f64) -> String {
    svc.wait_probe(target, "its role", |b| {
        sample(b, "pg_server_in_recovery") == Some(value)
            && sample(b, &whoami("postgres")) == Some(1.0)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_flips_the_role_gauge_without_new_series_and_stops_replica_queries() {
    let primary = own_cluster(Default::default());
    let standby = TempCluster::standby_of(&primary, "fleet_standby")
        .unwrap_or_else(|e| panic!("standby: {e}"));
    let svc = start_settings(&catalog(), |s, _| {
        s.targets = vec![
            target("primary", &primary.url("postgres"), &[]),
            target("replica", &standby.url("postgres"), &[]),
        ];
    })
    .await;
    role(&svc, "primary", 0.0).await;
    let before = svc
        .wait_probe("replica", "a standby with its replica-only query", |b| {
            sample(b, "pg_server_in_recovery") == Some(1.0)
                && sample(b, "pg_test_replica_only") == Some(1.0)
                && sample(b, "pg_test_server_sessions").is_some()
        })
        .await;
    let promoted = connect(&standby.url("postgres")).await;
    exec(&promoted, "SELECT pg_promote()").await;
    let after = svc
        .wait_probe("replica", "a primary without its replica-only query", |b| {
            sample(b, "pg_server_in_recovery") == Some(0.0)
                && sample(b, "pgpulse_query_enabled{query=\"replica_only\"}") == Some(0.0)
        })
        .await;
    let gone: Vec<String> = series(&before)
        .into_iter()
        .filter(|s| !series(&after).contains(s))
        .collect();
    assert_eq!(
        gone,
        ["pg_test_replica_only"],
        "only the replica-only series went"
    );
    let new: Vec<String> = series(&after)
        .into_iter()
        .filter(|s| !series(&before).contains(s))
        .collect();
    assert!(new.is_empty(), "no new series identity: {new:?}");
    let ok = eventually(DEADLINE, || async {
        let b = svc.probe("replica").await.1;
        (sample(&b, "pg_test_server_sessions").is_some()).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "the promoted server still runs its server-wide queries"
    );
    svc.stop().await;
}

/// The sum of every slow-execution counter of a body.
fn slow_total(body: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with("pg_statement_executions_over_threshold_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_slow_statement_log_is_read_through_one_target_and_counted_once() {
    use crate::slow_log::{as_user, log_cluster, setup};
    let cluster = log_cluster(&[]);
    let (one, two) = setup(&cluster).await;
    two.migrate().await;
    let catalog = crate::signals::shipped(&["statements_available"], "2s");
    let svc = start_settings(&catalog, |s, _| {
        s.targets = vec![
            target("a", &as_user(&one.url, "pgpulse_login"), &[]),
            target("b", &as_user(&two.url, "pgpulse_login"), &[]),
        ];
        s.plans.enabled = false;
        s.slow_log.interval = std::time::Duration::from_millis(500);
        s.slow_log.chunk_bytes = 4096;
    })
    .await;
    svc.wait_probe("a", "its log reader up", |b| {
        sample(b, "pgpulse_slow_log_up") == Some(1.0)
    })
    .await;
    svc.wait_probe("b", "its server known", |b| {
        sample(b, "pgpulse_query_enabled{query=\"statements_available\"}") == Some(0.0)
    })
    .await;
    let trader = connect(&as_user(&two.url, "trader_a")).await;
    for _ in 0..3 {
        exec(&trader, "SELECT pg_sleep(0.15) /* fleet-once */").await;
    }
    let series = format!(
        "pg_statement_executions_over_threshold_total{{datname=\"{}\",user=\"trader_a\"}}",
        two.name
    );
    let polls = |b: &str| sample(b, "pgpulse_slow_log_polls_total").unwrap_or(0.0);
    let body = svc
        .wait_probe("a", "the three slow executions", |b| {
            sample(b, &series) == Some(3.0)
        })
        .await;
    let p0 = polls(&body);
    let body = svc
        .wait_probe("a", "three more polls", |b| polls(b) >= p0 + 3.0)
        .await;
    assert_eq!(sample(&body, &series), Some(3.0), "counted once:\n{body}");
    let b = svc.probe("b").await.1;
    assert_eq!(
        slow_total(&b),
        0.0,
        "b does not read its server's log:\n{b}"
    );
    svc.stop().await;
}
