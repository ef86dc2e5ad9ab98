//! The exact count: the counter against an independent count of the log files on disk, with
//! statements whose text and parameters carry a secret literal that must not reach pgpulse.

use crate::harness::exec;
use std::path::Path;

use super::{as_user, log_cluster, rotate, setup};
use crate::harness::{PATIENCE, TestDb, connect, eventually};
use crate::service::{Running, sample, start};
use crate::signals::shipped;
use pgpulse::slowlog::ReaderSettings;
use tokio_postgres::Client;

const COUNTER: &str = "pg_statement_executions_over_threshold_total{";

/// A literal in statement text and bind parameters: on disk in the log, never in what the
/// sampling role receives.
const SECRET: &str = "BTC-USD-secret-4711";

/// The independent count: `duration:` executions at or over 100 ms by other roles than
/// pgpulse's, after the line `from` and before the line `to`, and the plan lines at or over
/// 100 ms (which must not count); `None` while the line `to` is not on disk yet.
fn count_on_disk(logdir: &Path, from: &str, to: &str) -> Option<(u64, u64)> {
    let mut names: Vec<_> = std::fs::read_dir(logdir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    let (mut on, mut ended, mut count, mut plans) = (false, false, 0, 0);
    for path in names {
        // Lossy: the file being written may end inside a character.
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let msg = v["message"].as_str().unwrap_or_default();
            if msg == from {
                on = true;
            } else if msg == to {
                on = false;
                ended = true;
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
    ended.then_some((count, plans))
}

/// The count on disk once the line `to` is there: the logger writes asynchronously, and it
/// writes in order, so everything logged before `to` is on disk with it.
async fn counted_on_disk(logdir: &Path, from: &str, to: &str) -> (u64, u64) {
    eventually(PATIENCE, || async { count_on_disk(logdir, from, to) })
        .await
        .unwrap_or_else(|| panic!("{to} never reached the log files"))
}

/// Waits until the counter has grown by the count on disk since `before` (the reader reads
/// at its own pace, slower on a loaded machine), then for three more polls, and returns that
/// body: the caller asserts that nothing more was counted.
async fn caught_up(svc: &Running, before: f64, expected: u64) -> String {
    svc.wait_for("the counter at the count on disk", |b| {
        exposed_total(b) - before >= expected as f64
    })
    .await;
    settled(svc).await
}

pub(super) fn exposed_total(body: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(COUNTER))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the reader has completed three polls that started after now (so everything
/// logged before now is read and held-back counts of new pairs are exposed); returns the body.
pub(super) async fn settled(svc: &Running) -> String {
    let polls = |b: &str| sample(b, "pgpulse_slow_log_polls_total").unwrap_or(0.0);
    let p0 = polls(&svc.metrics().await);
    svc.wait_for("three more polls of the log", |b| polls(b) >= p0 + 3.0)
        .await
}

async fn mark(admin: &Client, text: &str) {
    exec(admin, &format!("DO $$ BEGIN RAISE LOG '{text}'; END $$")).await;
}

/// Statements of one workload by the traders.
const STATEMENTS: u64 = 970 + 30 + 10;

/// 970 fast and 30 slow statements, 10 at the edge, over both protocols, four (database,
/// user) pairs, multibyte text, with log rotations; and two slow ones by pgpulse's role.
async fn workload(clients: &[Client], admin: &Client, own: &Client, datadir: &Path) {
    for i in 0..970usize {
        let c = &clients[i % clients.len()];
        if i % 2 == 0 {
            exec(c, "SELECT 1 AS fast, 'é€日本' AS t").await;
        } else {
            c.query(
                "SELECT $1::int AS fast, $2::text",
                &[&(i as i32), &"é€日本"],
            )
            .await
            .unwrap();
        }
        if i % 250 == 0 {
            rotate(admin, datadir).await;
        }
    }
    for i in 0..30usize {
        let c = &clients[i % clients.len()];
        if i % 2 == 0 {
            exec(
                c,
                &format!("SELECT pg_sleep(0.2), 'é€日本 slow' WHERE '{SECRET}' <> ''"),
            )
            .await;
        } else {
            c.query("SELECT pg_sleep($1), $2::text", &[&0.2f64, &SECRET])
                .await
                .unwrap();
        }
        if i % 10 == 0 {
            rotate(admin, datadir).await;
        }
    }
    for (i, s) in [0.098f64, 0.099, 0.1, 0.101, 0.102].iter().enumerate() {
        let c = &clients[i % clients.len()];
        exec(c, &format!("SELECT pg_sleep({s})")).await;
        c.query("SELECT pg_sleep($1)", &[s]).await.unwrap();
    }
    exec(own, "SELECT pg_sleep(0.15)").await;
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

/// Starts pgpulse as `url` with `catalog` and the slow-log reader on, and waits until the
/// reader is up.
pub(super) async fn start_reader(url: &str, catalog: &str) -> Running {
    let svc = start(url, catalog, reader_config).await;
    svc.wait_for_sample("pgpulse_slow_log_up", |v| v == 1.0)
        .await;
    svc
}

pub(super) fn reader_config(cfg: &mut pgpulse::config::Config) {
    cfg.plans = None;
    cfg.slow_log = Some(ReaderSettings {
        interval: std::time::Duration::from_millis(500),
        timeout: std::time::Duration::from_secs(5),
        lock_timeout: cfg.lock_timeout,
        chunk_bytes: 4096,
        max_series: 50,
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_counter_equals_an_independent_count_of_the_log_files() {
    let cluster = log_cluster(&[]);
    let (one, two) = setup(&cluster).await;
    let datadir = cluster.dir().join("data");
    let logdir = datadir.join("log");
    let admin = connect(&cluster.url("postgres")).await;
    let own_url = as_user(&one.url, "pgpulse_login");
    let own = connect(&own_url).await;
    let catalog = shipped(&["statement_latency"], "2s");

    // Phase 1: plain logging.
    let svc = start_reader(&own_url, &catalog).await;
    let before = exposed_total(&settled(&svc).await);
    mark(&admin, "pgpulse-test-phase-1").await;
    workload(&clients(&one, &two).await, &admin, &own, &datadir).await;
    mark(&admin, "pgpulse-test-phase-1-end").await;
    let (expected, _) =
        counted_on_disk(&logdir, "pgpulse-test-phase-1", "pgpulse-test-phase-1-end").await;
    // 30 slow, up to 10 at the edge; on a loaded machine a fast statement may take 100 ms too.
    assert!(
        (30..=STATEMENTS).contains(&expected),
        "30 slow and up to 10 at the edge: {expected}"
    );
    let body = caught_up(&svc, before, expected).await;
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

    // Phase 2: log_statement = all, auto_explain plans of every statement and bind parameters
    // in the log; a new pgpulse starts at the end of the log (nothing of phase 1 counted
    // again), and a reload in the middle keeps the counter.
    for sql in [
        "LOAD 'auto_explain'",
        "ALTER SYSTEM SET log_statement = 'all'",
        "ALTER SYSTEM SET log_parameter_max_length = -1",
        "ALTER SYSTEM SET session_preload_libraries = 'auto_explain'",
        "ALTER SYSTEM SET auto_explain.log_min_duration = 0",
        "SELECT pg_reload_conf()",
    ] {
        admin.simple_query(sql).await.unwrap();
    }
    let svc = start_reader(&own_url, &catalog).await;
    let start_total = exposed_total(&settled(&svc).await);
    assert_eq!(
        start_total, 0.0,
        "a restarted pgpulse counts nothing logged before it"
    );
    mark(&admin, "pgpulse-test-phase-2").await;
    let traders = clients(&one, &two).await;
    workload(&traders[..2], &admin, &own, &datadir).await;
    svc.reloader.reload().expect("reload");
    workload(&traders[2..], &admin, &own, &datadir).await;
    mark(&admin, "pgpulse-test-phase-2-end").await;
    let (expected, plans) =
        counted_on_disk(&logdir, "pgpulse-test-phase-2", "pgpulse-test-phase-2-end").await;
    assert!(
        plans >= 60,
        "auto_explain logged plans of the slow statements: {plans}"
    );
    assert!(
        (60..=2 * STATEMENTS).contains(&expected),
        "two workloads: {expected}"
    );
    let body = caught_up(&svc, 0.0, expected).await;
    assert_eq!(exposed_total(&body), expected as f64, "{body}");
    report("phase 2", expected, plans, &body);
    crate::exporter::promtool_check(&body)
        .unwrap_or_else(|e| panic!("promtool check metrics:\n{e}\n{body}"));
    svc.stop().await;
    secret_stays_on_the_server(&own, &logdir).await;
}

/// The literal is in the log files (statement text and bind parameters), and nothing the
/// sampling role may call gives it back: V009's raw reader is gone, and `log_tally` over every
/// byte of every log file returns counts and names only.
async fn secret_stays_on_the_server(own: &Client, logdir: &Path) {
    let mut on_disk = String::new();
    for e in std::fs::read_dir(logdir).unwrap() {
        on_disk.push_str(&String::from_utf8_lossy(
            &std::fs::read(e.unwrap().path()).unwrap(),
        ));
    }
    assert!(on_disk.contains(&format!(
        "statement: SELECT pg_sleep(0.2), 'é€日本 slow' WHERE '{SECRET}'"
    )));
    assert!(
        on_disk.contains(&format!("$2 = '{SECRET}'")),
        "parameters are logged"
    );
    let raw_reader: bool = own
        .query_one(
            "SELECT to_regprocedure('monitoring.log_read(text,bigint,integer)') IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(raw_reader, "monitoring.log_read is gone");
    let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
    let files = own
        .query("SELECT name FROM monitoring.log_files()", &[])
        .await
        .unwrap();
    let mut windows = 0;
    for f in &files {
        let name: String = f.get(0);
        let (mut offset, mut skip) = (0i64, false);
        loop {
            let row = own
                .query_one(
                    "SELECT t::text, t.consumed, t.skipping FROM monitoring.log_tally($1, $2, $3, 0, $4, '{}', '{}') AS t",
                    &[&name, &offset, &(pgpulse::slowlog::poll::MAX_WINDOW as i32), &skip],
                )
                .await
                .unwrap();
            let (text, consumed): (String, Option<i32>) = (row.get(0), row.get(1));
            assert!(
                !text.contains(SECRET) && !text.contains(&hex),
                "{name} at {offset}: {text}"
            );
            windows += 1;
            match consumed {
                Some(n) if n > 0 => {
                    offset += i64::from(n);
                    skip = row.get(2);
                }
                _ => break,
            }
        }
    }
    assert!(windows > files.len(), "every file was read through");
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
