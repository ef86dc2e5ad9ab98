//! Key-query SLOs (issue 28, item 4): two key queries with a 100 ms target, one that runs 3 of
//! its 100 executions over the target and one that runs none. The identifier pgpulse reads
//! from the plan is the one pg_stat_statements reports; the misses per key query equal an
//! independent count of the log files on disk; the calls equal pg_stat_statements'; and
//! promtool, fed the measured increments, fires only the first query's burn alerts.

use std::path::Path;

use super::{as_user, log_cluster, setup};
use crate::harness::{PATIENCE, connect, eventually, exec};
use crate::service::{Running, sample, start};
use crate::signals::shipped;
use pgpulse::plans::{GuardConfig, PlanSet};
use tokio_postgres::Client;

/// The two key queries: their statements differ, so do their identifiers.
const PLANS: &str = "queries:
  - name: slo_missing
    help: Misses its target in 3 of 100 executions.
    sql: SELECT pg_sleep($1) AS missing
    params: [{type: float8, value: 0}]
    target: 100ms
    objective: 0.998
  - name: slo_meeting
    help: Always meets its target.
    sql: SELECT pg_sleep($1) AS meeting, current_user AS who
    params: [{type: float8, value: 0}]
    target: 100ms
    objective: 0.998
";

const MISSING: &str = "SELECT pg_sleep($1) AS missing";
const MEETING: &str = "SELECT pg_sleep($1) AS meeting, current_user AS who";

/// `name{query="<query>"}` in `body`.
fn of(body: &str, name: &str, query: &str) -> Option<f64> {
    sample(body, &format!("{name}{{query=\"{query}\"}}"))
}

/// The `query_id` label of `pg_key_query_info` for `query`.
fn query_id(body: &str, query: &str) -> Option<i64> {
    let prefix = format!("pg_key_query_info{{query=\"{query}\",query_id=\"");
    let line = body.lines().find_map(|l| l.strip_prefix(&prefix))?;
    line.split_once('"')?.0.parse().ok()
}

/// pg_stat_statements' identifier and calls of the statement `text` (summed over users and
/// databases, pgpulse's own role excepted, as pgpulse reads it).
async fn pgss(admin: &Client, text: &str) -> (Option<i64>, i64) {
    let row = admin
        .query_one(
            "SELECT min(queryid), coalesce(sum(calls), 0)::int8 FROM pg_stat_statements \
             WHERE query = $1",
            &[&text],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// pgpulse as `url` with the log reader, the `key_queries` query every second and the plan
/// guard on [`PLANS`].
async fn start_with_plans(url: &str) -> Running {
    let plans = PlanSet::parse(PLANS, Path::new("slo-plans.yaml")).unwrap();
    start(url, &shipped(&["key_queries"], "1s"), |cfg| {
        super::count::reader_config(cfg);
        cfg.plans = Some(GuardConfig {
            plans: std::sync::Arc::new(plans),
            interval: std::time::Duration::from_secs(600),
        });
    })
    .await
}

/// Executions of `query_id` at or over `ms` between the lines `from` and `to` of the jsonlog
/// files (parse, bind and fetch lines are phases, not executions); `None` until `to` is there.
fn misses_on_disk(logdir: &Path, query_id: i64, ms: f64, from: &str, to: &str) -> Option<u64> {
    let mut names: Vec<_> = std::fs::read_dir(logdir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    let (mut on, mut ended, mut count) = (false, false, 0);
    for path in names {
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let msg = v["message"].as_str().unwrap_or_default();
            (on, ended) = match msg {
                m if m == from => (true, ended),
                m if m == to => (false, true),
                _ => (on, ended),
            };
            let Some((n, tail)) = msg
                .strip_prefix("duration: ")
                .and_then(|r| r.split_once(" ms"))
            else {
                continue;
            };
            let execution = tail.is_empty()
                || tail.starts_with("  statement: ")
                || (tail.starts_with("  execute ") && !tail.starts_with("  execute fetch from "));
            if on
                && execution
                && v["query_id"].as_i64() == Some(query_id)
                && n.parse::<f64>().unwrap() >= ms
            {
                count += 1;
            }
        }
    }
    ended.then_some(count)
}

/// [`misses_on_disk`] at or over 100 ms between the test's marks, once the last is on disk.
async fn counted_on_disk(logdir: &Path, id: i64) -> u64 {
    eventually(PATIENCE, || async {
        misses_on_disk(logdir, id, 100.0, "slo-from", "slo-to")
    })
    .await
    .expect("slo-to reached the log files")
}

/// 100 executions of each key query over the extended protocol, spread over two roles and
/// both databases; the 6th, 39th and 72nd of `slo_missing` sleep 250 ms.
async fn workload(clients: &[Client]) {
    for i in 0..100usize {
        let c = &clients[i % clients.len()];
        let secs = if i % 33 == 5 { 0.25f64 } else { 0.0 };
        c.query(MISSING, &[&secs]).await.unwrap();
        c.query(MEETING, &[&0.0f64]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_key_query_counts_its_misses_exactly_and_only_the_burning_one_alerts() {
    let cluster = log_cluster(&[
        ("log_min_duration_statement", "50ms"),
        ("compute_query_id", "on"),
    ]);
    let (one, two) = setup(&cluster).await;
    let logdir = cluster.dir().join("data").join("log");
    let admin = connect(&cluster.url("postgres")).await;
    let one_admin = one.client().await;
    let own_url = as_user(&one.url, "pgpulse_login");
    let svc = start_with_plans(&own_url).await;
    let body = svc
        .wait_for("both key queries identified, counted and called", |b| {
            ["slo_missing", "slo_meeting"].iter().all(|q| {
                of(b, "pg_key_query_slo_misses_total", q).is_some()
                    && of(b, "pg_key_query_calls_total", q).is_some()
            })
        })
        .await;
    let before = |b: &str, name: &str, q: &str| of(b, name, q).unwrap();
    let (m0, c0) = (
        [
            before(&body, "pg_key_query_slo_misses_total", "slo_missing"),
            before(&body, "pg_key_query_slo_misses_total", "slo_meeting"),
        ],
        [
            before(&body, "pg_key_query_calls_total", "slo_missing"),
            before(&body, "pg_key_query_calls_total", "slo_meeting"),
        ],
    );
    assert_eq!(
        of(&body, "pg_key_query_slo_target_seconds", "slo_missing"),
        Some(0.1)
    );
    assert_eq!(
        of(&body, "pg_key_query_slo_objective_ratio", "slo_meeting"),
        Some(0.998)
    );
    assert_eq!(
        of(
            &body,
            "pg_key_query_slo_miss_threshold_seconds",
            "slo_missing"
        ),
        Some(0.1),
        "the log threshold (50 ms) is below the target"
    );

    exec(&admin, "DO $$ BEGIN RAISE LOG 'slo-from'; END $$").await;
    let mut clients = Vec::new();
    for db in [&one, &two] {
        for user in ["trader_a", "trader_b"] {
            clients.push(connect(&as_user(&db.url, user)).await);
        }
    }
    workload(&clients).await;
    exec(&admin, "DO $$ BEGIN RAISE LOG 'slo-to'; END $$").await;

    // The identifiers are pg_stat_statements' (both databases run the same statement).
    let (missing_id, missing_calls) = pgss(&one_admin, MISSING).await;
    let (meeting_id, meeting_calls) = pgss(&one_admin, MEETING).await;
    let (missing_id, meeting_id) = (missing_id.unwrap(), meeting_id.unwrap());
    assert_eq!(query_id(&body, "slo_missing"), Some(missing_id), "{body}");
    assert_eq!(query_id(&body, "slo_meeting"), Some(meeting_id), "{body}");
    assert_ne!(missing_id, meeting_id);
    assert!(
        missing_calls >= 100 && meeting_calls >= 100,
        "{missing_calls} {meeting_calls}"
    );

    let (missing_disk, meeting_disk) = (
        counted_on_disk(&logdir, missing_id).await,
        counted_on_disk(&logdir, meeting_id).await,
    );
    assert!(
        missing_disk >= 3,
        "3 executions slept 250 ms: {missing_disk}"
    );
    let body = svc
        .wait_for(
            "the misses at the count on disk, the calls at pg_stat_statements'",
            |b| {
                of(b, "pg_key_query_slo_misses_total", "slo_missing")
                    >= Some(m0[0] + missing_disk as f64)
                    && of(b, "pg_key_query_calls_total", "slo_missing")
                        >= Some(missing_calls as f64)
                    && of(b, "pg_key_query_calls_total", "slo_meeting")
                        >= Some(meeting_calls as f64)
            },
        )
        .await;
    drop(body);
    let body = super::count::settled(&svc).await;
    let misses = [
        of(&body, "pg_key_query_slo_misses_total", "slo_missing").unwrap() - m0[0],
        of(&body, "pg_key_query_slo_misses_total", "slo_meeting").unwrap() - m0[1],
    ];
    assert_eq!(misses, [missing_disk as f64, meeting_disk as f64], "{body}");
    let calls = [
        of(&body, "pg_key_query_calls_total", "slo_missing").unwrap() - c0[0],
        of(&body, "pg_key_query_calls_total", "slo_meeting").unwrap() - c0[1],
    ];
    assert_eq!(
        of(&body, "pg_key_query_calls_total", "slo_missing"),
        Some(missing_calls as f64)
    );
    assert!(calls.iter().all(|c| *c >= 100.0), "{calls:?}");
    let slept = of(&body, "pg_key_query_exec_seconds_total", "slo_missing").unwrap();
    assert!(slept >= 0.75, "three executions of 250 ms: {slept}");
    crate::exporter::promtool_check(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    promtool_burns(&[
        ("slo_missing", calls[0], misses[0]),
        ("slo_meeting", calls[1], misses[1]),
    ]);
    verify_names_the_threshold(&one_admin).await;
    svc.stop().await;
}

/// Runs the shipped rules in promtool over six hours of the measured increments (every five
/// minutes, one workload): a key query fires both burn alerts when its misses exceed 14.4
/// times its budget (1 - 0.998), and only then.
fn promtool_burns(measured: &[(&str, f64, f64)]) {
    let mut series = String::new();
    let mut fast = String::new();
    let mut slow = String::new();
    for (query, calls, misses) in measured {
        let labels = format!(r#"job="pgpulse", instance="db1:9864", query="{query}""#);
        series += &format!(
            "      - series: 'pg_key_query_calls_total{{{labels}}}'\n        values: '0+{calls}x72'\n\
             \x20     - series: 'pg_key_query_slo_misses_total{{{labels}}}'\n        values: '0+{misses}x72'\n\
             \x20     - series: 'pg_key_query_slo_objective_ratio{{{labels}}}'\n        values: '0.998x72'\n"
        );
        let ratio = misses / calls;
        for (out, factor, name, long, short, severity, word, pace) in [
            (
                &mut fast,
                14.4,
                "PgKeyQuerySloBurnFast",
                "1h",
                "5m",
                "critical",
                "fast",
                "two days",
            ),
            (
                &mut slow,
                6.0,
                "PgKeyQuerySloBurnSlow",
                "6h",
                "30m",
                "warning",
                "steadily",
                "five days",
            ),
        ] {
            if ratio > factor * 0.002 {
                *out += &format!(
                    "\n          - exp_labels: {{severity: {severity}, job: pgpulse, instance: \"db1:9864\", query: {query}}}\n            \
                     exp_annotations:\n              summary: Key query {query} on db1:9864 burns its latency SLO {word}\n              \
                     description: '{pct}% of the executions of key query {query} on db1:9864 in the last {long} took its latency target or longer (and in the last {short} too): more than {factor} times its error budget, a 30-day budget gone in {pace} at this pace. Check its plan (pg_plan_expected_index_used, `pgpulse explain --query {query}`) and what it waits for (the \"Why is trading slow\" dashboard, /debug/locks).'\n              \
                     runbook_url: https://github.com/pgpulse/pgpulse/blob/main/docs/runbooks.md#{lower}",
                    pct = crate::alerts::go_4g(ratio * 100.0),
                    lower = name.to_lowercase(),
                );
            }
        }
    }
    assert!(
        fast.contains("slo_missing") && !fast.contains("slo_meeting"),
        "3 of 100 burns 15 times a 0.2 % budget, 0 never: {measured:?}"
    );
    let or_none = |s: String| if s.is_empty() { " []".to_owned() } else { s };
    let test = format!(
        "rule_files: [{rules}]\nevaluation_interval: 1m\ntests:\n  - interval: 5m\n    input_series:\n{series}    \
         alert_rule_test:\n      - eval_time: 6h\n        alertname: PgKeyQuerySloBurnFast\n        exp_alerts:{fast}\n      \
         - eval_time: 6h\n        alertname: PgKeyQuerySloBurnSlow\n        exp_alerts:{slow}\n",
        rules = concat!(env!("CARGO_MANIFEST_DIR"), "/alerts/pgpulse.rules.yml"),
        fast = or_none(fast),
        slow = or_none(slow),
    );
    crate::alerts::promtool_test(&test);
}

/// `verify`'s SLO line: PASS where the log threshold (50 ms) is at or below every target,
/// WARN naming the setting that covers a tighter one and its cost.
async fn verify_names_the_threshold(c: &Client) {
    use pgpulse::db::verify::key_query_log;
    use std::time::Duration;
    let ms = Duration::from_millis;
    let pass = key_query_log(c, &[("a".into(), ms(100)), ("b".into(), ms(50))]).await;
    assert_eq!(pass.len(), 1);
    assert!(
        pass[0].starts_with("SLO PASS log_min_duration_statement = 50ms"),
        "{}",
        pass[0]
    );
    let warn = key_query_log(c, &[("a".into(), ms(100)), ("tight".into(), ms(20))]).await;
    assert!(
        warn[0].starts_with(
            "SLO WARN log_min_duration_statement = 50ms is above the targets of tight (20ms)"
        ) && warn[0].contains("set log_min_duration_statement = 20ms")
            && warn[0].contains("statements a minute"),
        "{}",
        warn[0]
    );
    assert!(
        key_query_log(c, &[]).await.is_empty(),
        "no key query with a target, no line"
    );
}

/// The crafted lines of the hostile-`query_id` test and what each must count: key 4242 at a
/// 50 ms target, key i64::MIN at a 10 ms target.
fn hostile_query_ids() -> Vec<u8> {
    let line = |qid: &str, sev: &str, msg: &str| {
        format!(
            r#"{{"user":"trader_a","dbname":"trade","error_severity":"{sev}","message":"{msg}","query_id":{qid}}}"#
        )
    };
    [
        line("4242", "LOG", "duration: 60.5 ms  execute S_1: SELECT 1"), // counts
        line("4242", "LOG", "duration: 50 ms  statement: SELECT 1"),     // counts: at the target
        line("4242", "LOG", "duration: 49.999 ms  statement: SELECT 1"), // under it
        line("\"4242\"", "LOG", "duration: 70 ms"),                      // a string: unparsed
        line("4242.0", "LOG", "duration: 70 ms"),                        // not an integer
        line("4242e0", "LOG", "duration: 70 ms"),
        line("9223372036854775808", "LOG", "duration: 70 ms"), // beyond bigint
        line("1e400", "LOG", "duration: 70 ms"),
        line("-9223372036854775808", "LOG", "duration: 11 ms"), // counts for i64::MIN
        line("42420", "LOG", "duration: 70 ms"),                // another statement
        line(
            "0",
            "LOG",
            r#"duration: 70 ms  statement: SELECT '\"query_id\":4242'"#,
        ), // in the text
        line("4242", "LOG", "duration: 70 ms  parse <unnamed>: SELECT 1"), // phases
        line("4242", "LOG", "duration: 70 ms  bind <unnamed>: SELECT 1"),
        line(
            "4242",
            "LOG",
            "duration: 70 ms  execute fetch from S_1/C_1: SELECT 1",
        ),
        line("4242", "ERROR", "duration: 70 ms"), // not a LOG line
        line("null", "LOG", "duration: 70 ms"),
        line("[4242]", "LOG", "duration: 70 ms"), // an array: unparsed
        // The caller's own role (pgpulse's plan checks prepare the key queries): not counted.
        line("4242", "LOG", "duration: 70 ms").replace("trader_a", "pgpulse_login"),
    ]
    .join("\n")
    .into_bytes()
}

/// A hostile log file cannot make `log_tally` count a key query's execution that the server
/// did not log under its `query_id`, nor raise; bad key arrays are refused with a message.
#[tokio::test(flavor = "multi_thread")]
async fn log_tally_counts_a_key_query_only_by_a_well_formed_query_id() {
    let cluster = log_cluster(&[]);
    let (one, _two) = setup(&cluster).await;
    let mut file = hostile_query_ids();
    file.push(b'\n');
    std::fs::write(cluster.dir().join("data/log/pgpulse-qid.json"), &file).unwrap();
    let me = connect(&as_user(&one.url, "pgpulse_login")).await;
    let tally = "SELECT key_executions, unparsed, executions FROM \
                 monitoring.log_tally('pgpulse-qid.json', 0, 1048576, 100, false, $1, $2)";
    let row = me
        .query_one(
            tally,
            &[&vec![4242i64, i64::MIN, 7], &vec![50.0f64, 10.0, 0.0]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<i64>>(0), [2, 1, 0]);
    assert_eq!(
        row.get::<_, i64>(1),
        2,
        "a string and an array as query_id: unparsed"
    );
    assert!(
        row.get::<_, Vec<i64>>(2).is_empty(),
        "nothing at or over 100 ms counted by the reader"
    );
    // The same identifier twice, each with its own target.
    let row = me
        .query_one(tally, &[&vec![4242i64, 4242], &vec![50.0f64, 65.0]])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<i64>>(0), [2, 0]);
    let refused = [
        "SELECT monitoring.log_tally('pgpulse-qid.json', 0, 10, 0, false, NULL, '{}')",
        "SELECT monitoring.log_tally('pgpulse-qid.json', 0, 10, 0, false, '{1,2}', '{1}')",
        "SELECT monitoring.log_tally('pgpulse-qid.json', 0, 10, 0, false, '{1,NULL}', '{1,2}')",
        "SELECT monitoring.log_tally('pgpulse-qid.json', 0, 10, 0, false, '{{1},{2}}', '{{1},{2}}')",
        "SELECT monitoring.log_tally('pgpulse-qid.json', 0, 10, 0, false, \
         array_fill(1::int8, ARRAY[101]), array_fill(1::float8, ARRAY[101]))",
    ];
    for sql in refused {
        let e = me.simple_query(sql).await.expect_err(sql);
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert!(
            msg.contains("query_ids and targets_ms are two arrays"),
            "{sql}: {msg}"
        );
    }
}

/// `regprocedure` of the log reader's helper as V012 and as V015 made it.
const V012_TALLY: &str = "to_regprocedure('monitoring.log_tally(text,bigint,integer,double precision,boolean)') IS NOT NULL";
const V015_TALLY: &str = "to_regprocedure('monitoring.log_tally(text,bigint,integer,double precision,\
     boolean,bigint[],double precision[])') IS NOT NULL";

async fn helpers(c: &Client) -> (bool, bool) {
    let row = c
        .query_one(&format!("SELECT {V012_TALLY}, {V015_TALLY}"), &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A database whose V012 helper a superuser installed, upgraded by the non-superuser that owns
/// the schema: V015 cannot install its helper, the reader keeps counting slow statements with
/// V012's (no key query counted) and verify says what to run; a superuser's `pgpulse migrate`
/// then installs V015's helper and the running reader counts the key queries' misses.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_by_a_non_superuser_keeps_the_slow_count_until_a_superuser_migrates() {
    let cluster = log_cluster(&[]);
    let db = crate::harness::TestDb::on(&cluster.url("postgres")).await;
    let admin = db.client().await;
    exec(&admin, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await;
    let mut migrator = connect(&super::owned_by_migrator(&db).await).await;
    pgpulse::db::migrate::migrate(&mut migrator)
        .await
        .expect("migrate as the owner");
    // Before V015: a superuser had installed V012's helper.
    let v012 = pgpulse::db::migrate::MIGRATIONS
        .iter()
        .find(|m| m.version == 12)
        .unwrap();
    exec(&admin, v012.sql).await;
    exec(
        &admin,
        "DELETE FROM monitoring.schema_migrations WHERE version = 15",
    )
    .await;
    let applied = pgpulse::db::migrate::migrate(&mut migrator)
        .await
        .expect("V015 as the owner");
    assert_eq!(applied.iter().map(|m| m.version).collect::<Vec<_>>(), [15]);
    assert_eq!(
        helpers(&admin).await,
        (true, false),
        "V012's helper stays, V015's waits"
    );
    exec(
        &admin,
        "DO $$ BEGIN CREATE ROLE pgpulse_login LOGIN IN ROLE pgpulse_monitor; \
           CREATE ROLE trader_a LOGIN; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    .await;
    let verify = || {
        let out = crate::harness::pgpulse(&["verify", "--database-url", &db.url], &[]);
        crate::harness::text(&out).0
    };
    let out = verify();
    assert!(
        out.contains(
            "reader works; also set run `pgpulse migrate` as a superuser (it installs V015's"
        ),
        "{out}"
    );

    let own_url = as_user(&db.url, "pgpulse_login");
    let svc = start_with_plans(&own_url).await;
    svc.wait_for("the reader up, the key queries identified", |b| {
        sample(b, "pgpulse_slow_log_up") == Some(1.0) && query_id(b, "slo_missing").is_some()
    })
    .await;
    let trader = connect(&as_user(&db.url, "trader_a")).await;
    trader.query(MISSING, &[&0.25f64]).await.unwrap();
    let body = svc
        .wait_for("the slow statement counted with V012's helper", |b| {
            super::count::exposed_total(b) >= 1.0
        })
        .await;
    assert!(
        !body.contains("pg_key_query_slo_misses_total{"),
        "V012's helper counts no key query"
    );

    let mut superuser = db.client().await;
    pgpulse::db::migrate::migrate(&mut superuser)
        .await
        .expect("migrate as a superuser");
    assert_eq!(
        helpers(&admin).await,
        (false, true),
        "V015's helper replaced V012's"
    );
    assert!(!verify().contains("V015's"));
    svc.wait_for("the key queries' misses counted from now on", |b| {
        of(b, "pg_key_query_slo_misses_total", "slo_missing").is_some()
    })
    .await;
    trader.query(MISSING, &[&0.25f64]).await.unwrap();
    svc.wait_for("a miss of slo_missing counted", |b| {
        of(b, "pg_key_query_slo_misses_total", "slo_missing") >= Some(1.0)
    })
    .await;
    svc.stop().await;
}
