//! The slow-statement log reader (issue 15): the helpers read the log and nothing else, and
//! `pg_statement_executions_over_threshold_total` equals an independent count of the
//! `duration:` lines in the jsonlog files on disk, across rotations, protocols, databases,
//! users, multibyte text, small chunks, `log_statement = all`, auto_explain, a reload and a
//! restart of pgpulse.

use std::path::Path;

use crate::harness::{TestDb, connect, own_cluster, with_db};
use crate::service::{Running, sample, start};
use crate::signals::shipped;
use pgpulse::config::SlowLogSettings;
use pgpulse::demo::{ClusterOptions, TempCluster};
use tokio_postgres::Client;

const COUNTER: &str = "pg_statement_executions_over_threshold_total{";

fn log_cluster(extra: &[(&str, &str)]) -> TempCluster {
    let mut settings: Vec<(String, String)> = [
        ("logging_collector", "on"),
        ("log_destination", "stderr,jsonlog"),
        ("log_min_duration_statement", "100ms"),
        ("log_rotation_size", "64kB"),
        ("log_rotation_age", "0"),
        ("log_parameter_max_length", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    settings.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    own_cluster(ClusterOptions {
        extra_settings: settings,
        ..Default::default()
    })
}

/// `url` with its user replaced.
fn as_user(url: &str, user: &str) -> String {
    url.replacen("postgres@", &format!("{user}@"), 1)
}

/// A migrated database on `cluster` plus the login roles of the test.
async fn setup(cluster: &TempCluster) -> (TestDb, TestDb) {
    let admin = cluster.url("postgres");
    let one = TestDb::on(&admin).await;
    let two = TestDb::on(&admin).await;
    let c = one.client().await;
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .unwrap();
    one.migrate().await;
    c.batch_execute(
        "DO $$ BEGIN \
           CREATE ROLE pgpulse_login LOGIN IN ROLE pgpulse_monitor; \
           CREATE ROLE trader_a LOGIN; CREATE ROLE trader_b LOGIN; CREATE ROLE trader_c LOGIN; \
           CREATE ROLE stranger LOGIN; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    .await
    .unwrap();
    (one, two)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_helpers_read_the_log_and_refuse_every_other_file() {
    let cluster = log_cluster(&[]);
    let (one, _two) = setup(&cluster).await;
    let me = connect(&as_user(&one.url, "pgpulse_login")).await;
    let files: Vec<(String, i64)> = me
        .query("SELECT name, size FROM monitoring.log_files()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!files.is_empty(), "jsonlog files are listed");
    assert!(files.iter().all(|(n, _)| n.ends_with(".json")), "{files:?}");
    let current: String = me
        .query_one("SELECT monitoring.log_current_file()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(files.iter().any(|(n, _)| *n == current), "{current} listed");
    let head: Option<Vec<u8>> = me
        .query_one("SELECT monitoring.log_read($1, 0, 64)", &[&current])
        .await
        .unwrap()
        .get(0);
    assert!(
        head.is_some_and(|b| b.first() == Some(&b'{')),
        "a jsonlog line"
    );
    let stderr_log = current.replace(".json", ".log");
    let data_auto = cluster.dir().join("data/postgresql.auto.conf");
    for name in [
        "global/1260",
        "../postgresql.auto.conf",
        "/etc/passwd",
        data_auto.to_str().unwrap(),
        ".",
        stderr_log.as_str(),
    ] {
        let r = me
            .query_one("SELECT monitoring.log_read($1, 0, 64)", &[&name])
            .await;
        match r {
            Err(_) => {}
            Ok(row) => assert!(
                row.get::<_, Option<Vec<u8>>>(0).is_none(),
                "{name} must not be readable"
            ),
        }
    }
    for sql in [
        "SELECT pg_read_binary_file('global/1260')",
        "SELECT pg_read_file('postgresql.auto.conf')",
    ] {
        assert!(me.simple_query(sql).await.is_err(), "{sql} is refused");
    }
    let row = me
        .query_one(
            "SELECT has_function_privilege('pg_read_binary_file(text,bigint,bigint,boolean)', 'EXECUTE'), \
                    has_function_privilege('pg_read_binary_file(text)', 'EXECUTE'), \
                    pg_has_role('pg_read_server_files', 'MEMBER')",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1) && !row.get::<_, bool>(2));
    let stranger = connect(&as_user(&one.url, "stranger")).await;
    assert!(
        stranger
            .query_one("SELECT monitoring.log_read($1, 0, 64)", &[&current])
            .await
            .is_err(),
        "a role outside pgpulse_monitor may not read the log"
    );
}

/// The independent count: `duration:` executions at or over 100 ms by other roles than
/// pgpulse's, after the line `from` and before the line `to`, and the plan lines at or over
/// 100 ms (which must not count).
fn count_on_disk(logdir: &Path, from: &str, to: &str) -> (u64, u64) {
    let mut names: Vec<_> = std::fs::read_dir(logdir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    let (mut on, mut count, mut plans) = (false, 0, 0);
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let msg = v["message"].as_str().unwrap_or_default();
            if msg == from {
                on = true;
            } else if msg == to {
                on = false;
            }
            let Some(rest) = msg.strip_prefix("duration: ") else {
                continue;
            };
            if !on || v["user"] == "pgpulse_login" {
                continue;
            }
            let (n, tail) = rest.split_once(" ms").unwrap();
            let ms: f64 = n.parse().unwrap();
            let phase = ["  plan:", "  parse ", "  bind ", "  execute fetch from "]
                .iter()
                .any(|p| tail.starts_with(p));
            if tail.starts_with("  plan:") && ms >= 100.0 {
                plans += 1;
            } else if !phase && ms >= 100.0 {
                count += 1;
            }
        }
    }
    (count, plans)
}

fn exposed_total(body: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(COUNTER))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the reader has completed three polls that started after now (so everything
/// logged before now is read and held-back counts of new pairs are exposed); returns the body.
async fn settled(svc: &Running) -> String {
    let polls = |b: &str| sample(b, "pgpulse_slow_log_polls_total").unwrap_or(0.0);
    let p0 = polls(&svc.metrics().await);
    svc.wait_for("three more polls of the log", |b| polls(b) >= p0 + 3.0)
        .await
}

async fn mark(admin: &Client, text: &str) {
    admin
        .batch_execute(&format!("DO $$ BEGIN RAISE LOG '{text}'; END $$"))
        .await
        .unwrap();
}

/// 970 fast and 30 slow statements, 10 at the edge, over both protocols, four (database,
/// user) pairs, multibyte text, with log rotations; and two slow ones by pgpulse's role.
async fn workload(clients: &[Client], admin: &Client, own: &Client) {
    for i in 0..970usize {
        let c = &clients[i % clients.len()];
        if i % 2 == 0 {
            c.batch_execute("SELECT 1 AS fast, 'é€日本' AS t")
                .await
                .unwrap();
        } else {
            c.query(
                "SELECT $1::int AS fast, $2::text",
                &[&(i as i32), &"é€日本"],
            )
            .await
            .unwrap();
        }
        if i % 250 == 0 {
            admin
                .batch_execute("SELECT pg_rotate_logfile()")
                .await
                .unwrap();
        }
    }
    for i in 0..30usize {
        let c = &clients[i % clients.len()];
        if i % 2 == 0 {
            c.batch_execute("SELECT pg_sleep(0.2), 'é€日本 slow'")
                .await
                .unwrap();
        } else {
            c.query("SELECT pg_sleep($1), $2::text", &[&0.2f64, &"é€日本"])
                .await
                .unwrap();
        }
        if i % 10 == 0 {
            admin
                .batch_execute("SELECT pg_rotate_logfile()")
                .await
                .unwrap();
        }
    }
    for (i, s) in [0.098f64, 0.099, 0.1, 0.101, 0.102].iter().enumerate() {
        let c = &clients[i % clients.len()];
        c.batch_execute(&format!("SELECT pg_sleep({s})"))
            .await
            .unwrap();
        c.query("SELECT pg_sleep($1)", &[s]).await.unwrap();
    }
    own.batch_execute("SELECT pg_sleep(0.15)").await.unwrap();
    own.query("SELECT pg_sleep($1)", &[&0.15f64]).await.unwrap();
}

async fn clients(one: &TestDb, two: &TestDb) -> Vec<Client> {
    let mut out = Vec::new();
    for db in [one, two] {
        for user in ["trader_a", "trader_b"] {
            out.push(connect(&as_user(&db.url, user)).await);
        }
    }
    out
}

fn reader_config(cfg: &mut pgpulse::config::Config) {
    cfg.plans = None;
    cfg.slow_log = Some(SlowLogSettings {
        enabled: true,
        interval: std::time::Duration::from_millis(500),
        timeout: std::time::Duration::from_secs(5),
        chunk_bytes: 4096,
        max_series: 50,
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_counter_equals_an_independent_count_of_the_log_files() {
    let cluster = log_cluster(&[]);
    let (one, two) = setup(&cluster).await;
    let logdir = cluster.dir().join("data/log");
    let admin = connect(&cluster.url("postgres")).await;
    let own_url = as_user(&one.url, "pgpulse_login");
    let own = connect(&own_url).await;
    let catalog = shipped(&["statement_latency"], "2s");

    // Phase 1: plain logging.
    let svc = start(&own_url, &catalog, reader_config).await;
    svc.wait_for("the reader up", |b| {
        sample(b, "pgpulse_slow_log_up") == Some(1.0)
    })
    .await;
    let before = exposed_total(&settled(&svc).await);
    mark(&admin, "pgpulse-test-phase-1").await;
    workload(&clients(&one, &two).await, &admin, &own).await;
    mark(&admin, "pgpulse-test-phase-1-end").await;
    let body = settled(&svc).await;
    let (expected, _) = count_on_disk(&logdir, "pgpulse-test-phase-1", "pgpulse-test-phase-1-end");
    assert!(
        (30..=40).contains(&expected),
        "30 slow and up to 10 at the edge: {expected}"
    );
    assert_eq!(exposed_total(&body) - before, expected as f64, "{body}");
    assert!(
        !body
            .lines()
            .any(|l| l.starts_with(COUNTER) && l.contains("user=\"pgpulse_login\"")),
        "pgpulse's own role is not counted"
    );
    assert!(
        body.contains("pgpulse_database_user_info{user=\"pgpulse_login\"} 1"),
        "pgpulse's role is exposed for the alert to exclude"
    );
    report("phase 1", expected, 0, &body);
    assert_eq!(
        sample(&body, "pg_statement_executions_threshold_seconds"),
        Some(0.1)
    );
    assert_eq!(sample(&body, "pgpulse_slow_log_gap_bytes_total"), Some(0.0));
    let files = std::fs::read_dir(&logdir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count();
    assert!(files >= 5, "the run rotated the log: {files} jsonlog files");
    svc.stop().await;

    // Phase 2: log_statement = all and auto_explain plans of every statement; a new pgpulse
    // starts at the end of the log (nothing of phase 1 counted again), and a reload in the
    // middle keeps the counter.
    for sql in [
        "LOAD 'auto_explain'",
        "ALTER SYSTEM SET log_statement = 'all'",
        "ALTER SYSTEM SET session_preload_libraries = 'auto_explain'",
        "ALTER SYSTEM SET auto_explain.log_min_duration = 0",
        "SELECT pg_reload_conf()",
    ] {
        admin.simple_query(sql).await.unwrap();
    }
    let svc = start(&own_url, &catalog, reader_config).await;
    svc.wait_for("the reader up", |b| {
        sample(b, "pgpulse_slow_log_up") == Some(1.0)
    })
    .await;
    let start_total = exposed_total(&settled(&svc).await);
    assert_eq!(
        start_total, 0.0,
        "a restarted pgpulse counts nothing logged before it"
    );
    mark(&admin, "pgpulse-test-phase-2").await;
    let traders = clients(&one, &two).await;
    workload(&traders[..2], &admin, &own).await;
    svc.reloader.reload().expect("reload");
    workload(&traders[2..], &admin, &own).await;
    mark(&admin, "pgpulse-test-phase-2-end").await;
    let body = settled(&svc).await;
    let (expected, plans) =
        count_on_disk(&logdir, "pgpulse-test-phase-2", "pgpulse-test-phase-2-end");
    assert!(
        plans >= 60,
        "auto_explain logged plans of the slow statements: {plans}"
    );
    assert!((60..=80).contains(&expected), "two workloads: {expected}");
    assert_eq!(exposed_total(&body), expected as f64, "{body}");
    report("phase 2", expected, plans, &body);
    svc.stop().await;
}

/// Prints the figures docs/statement-latency.md quotes (run with --nocapture).
fn report(phase: &str, expected: u64, plans: u64, body: &str) {
    let v = |s: &str| sample(body, s).unwrap_or(f64::NAN);
    eprintln!(
        "{phase}: on disk {expected} slow executions ({plans} plan lines over 100 ms), counter {}; \
         reader: {} polls, {} statements, {} bytes read, gap {} bytes",
        exposed_total(body),
        v("pgpulse_slow_log_polls_total"),
        v("pgpulse_slow_log_statements_total"),
        v("pgpulse_slow_log_read_bytes_total"),
        v("pgpulse_slow_log_gap_bytes_total"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_bimodal_statement_is_three_percent_slow_while_the_histogram_sees_none() {
    let cluster = log_cluster(&[]);
    let (one, _two) = setup(&cluster).await;
    let own_url = as_user(&one.url, "pgpulse_login");
    let svc = start(
        &own_url,
        &shipped(&["statement_latency"], "2s"),
        reader_config,
    )
    .await;
    let hist = |b: &str| {
        (
            sample(b, "pg_statement_latency_seconds_count").unwrap_or(0.0),
            sample(b, "pg_statement_latency_seconds_bucket{le=\"0.1\"}").unwrap_or(0.0),
        )
    };
    let body = svc
        .wait_for("the reader up and the histogram's baseline", |b| {
            sample(b, "pgpulse_slow_log_up") == Some(1.0)
                && b.contains("pg_statement_latency_seconds_count")
        })
        .await;
    let h0 = hist(&body);
    let c0 = exposed_total(&body);
    let trader = connect(&as_user(&one.url, "trader_c")).await;
    let sql = "SELECT CASE WHEN $1 THEN pg_sleep(0.2) END /* bimodal */";
    for i in 0..1000u32 {
        let slow = i % 33 == 0 && i < 990;
        trader.query(sql, &[&slow]).await.unwrap();
    }
    let admin = connect(&with_db(&cluster.url("postgres"), &one.name)).await;
    let calls: i64 = admin
        .query_one(
            "SELECT sum(calls)::bigint FROM pg_stat_statements \
             WHERE query LIKE '%bimodal%' AND userid = 'trader_c'::regrole",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(calls, 1000);
    let body = svc
        .wait_for("30 slow executions and the histogram's 1000 calls", |b| {
            exposed_total(b) - c0 >= 30.0 && hist(b).0 - h0.0 >= 1000.0
        })
        .await;
    let slow = exposed_total(&settled(&svc).await) - c0;
    assert_eq!(slow, 30.0);
    let share = slow / calls as f64;
    assert!(
        share > 0.01,
        "the exact share is {share}, over the 1 % of the SLO"
    );
    let h1 = hist(&body);
    let (count, fast) = (h1.0 - h0.0, h1.1 - h0.1);
    eprintln!(
        "bimodal: {slow} of {calls} executions at or over 100 ms (share {share}); histogram: {fast} of {count} observations at or under 100 ms"
    );
    assert!(
        fast / count >= 0.99,
        "the histogram puts {fast} of {count} observations at or under 100 ms: its p99 stays under 100 ms"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_superuser_the_helpers_wait_for_one_and_verify_says_how() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE pgpulse_migrator LOGIN CREATEROLE; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             ALTER DATABASE {} OWNER TO pgpulse_migrator",
            db.name
        ))
        .await
        .unwrap();
    let migrator_url = as_user(&db.url, "pgpulse_migrator");
    let mut migrator = connect(&migrator_url).await;
    pgpulse::db::migrate::migrate(&mut migrator)
        .await
        .expect("migrate as a non-superuser");
    let helper = "SELECT to_regprocedure('monitoring.log_read(text,bigint,integer)') IS NOT NULL";
    let has: bool = admin.query_one(helper, &[]).await.unwrap().get(0);
    assert!(
        !has,
        "no SECURITY DEFINER file reader created by a non-superuser"
    );
    let out = crate::harness::pgpulse(&["verify", "--database-url", &migrator_url], &[]);
    let (stdout, _) = crate::harness::text(&out);
    let line = stdout.lines().nth(13).unwrap_or_default();
    assert!(
        line.starts_with("WARN") && line.contains("SELECT monitoring.install_log_reader();"),
        "{stdout}"
    );
    assert!(
        migrator
            .batch_execute("SELECT monitoring.install_log_reader()")
            .await
            .is_err(),
        "only a superuser installs the helpers"
    );
    admin
        .batch_execute("SELECT monitoring.install_log_reader()")
        .await
        .unwrap();
    let has: bool = admin.query_one(helper, &[]).await.unwrap().get(0);
    assert!(has, "a superuser installed the helpers");
}
