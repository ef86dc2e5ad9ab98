//! The lock queue on the trade tables (`trade_table_lock_queue`, `trade_table_lock_modes`),
//! against the classic trading outage on real PostgreSQL: a report idle in transaction holds
//! the trades table, a migration's `ALTER TABLE` waits for it, and a trade insert queues behind
//! the migration. The trade tables live under other names (one of them hostile) and are
//! found through the configuration, bound as parameters. Both queries idle while the server's
//! `database_load` sees no lock wait (`idle_without: lock_waits`), so every scenario here runs
//! with idling on; the last tests check idling itself, also across a fleet's databases.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::harness::{TestDb, connect, exec, scalar};
use crate::service::{Running, sample, start};
use crate::signals::shipped;
use pgpulse::db::{TableRef, TradeTables};

/// The market data table's name: a quote, a semicolon and a comment.
const HOSTILE: &str = "ti\"cks; DROP TABLE exchange.fills; --";

/// The fills (trades, partitioned by day: yesterday, today, tomorrow, a DEFAULT) and the market
/// data table with the hostile name, in schema `exchange`.
const SCHEMA: &str = r#"
CREATE SCHEMA exchange;
CREATE TABLE exchange.fills (id bigint, symbol text, filled_at timestamptz NOT NULL)
    PARTITION BY RANGE (filled_at);
CREATE TABLE exchange."ti""cks; DROP TABLE exchange.fills; --" (symbol text, price numeric);
DO $$
DECLARE d timestamptz := date_trunc('day', now(), 'UTC');
BEGIN
    FOR i IN -1..1 LOOP
        EXECUTE format('CREATE TABLE exchange.%I PARTITION OF exchange.fills FOR VALUES FROM (%L) TO (%L)',
                       'fills_' || (i + 1), d + make_interval(days => i), d + make_interval(days => i + 1));
    END LOOP;
END $$;
CREATE TABLE exchange.fills_default PARTITION OF exchange.fills DEFAULT;
"#;

fn table(schema: &str, name: &str, partition_column: &str) -> TableRef {
    TableRef {
        schema: schema.into(),
        name: name.into(),
        partition_column: partition_column.into(),
    }
}

/// The configured trade tables: trades and market data in `exchange`, the rest absent.
fn tables() -> TradeTables {
    TradeTables {
        trades: table("exchange", "fills", "filled_at"),
        market_data: table("exchange", HOSTILE, ""),
        ..TradeTables::default()
    }
}

/// A session of the test with its own `application_name`.
async fn session(db: &TestDb, app: &str) -> Client {
    let sep = if db.url.contains('?') { '&' } else { '?' };
    connect(&format!("{}{sep}application_name={app}", db.url)).await
}

/// Starts `sql` on `c` in the background; the handle yields its SQLSTATE if it failed.
fn background(c: Client, sql: &'static str) -> tokio::task::JoinHandle<Option<String>> {
    tokio::spawn(async move {
        let e = c.batch_execute(sql).await.err()?;
        Some(
            e.code()
                .map_or_else(|| e.to_string(), |c| c.code().to_owned()),
        )
    })
}

/// Waits until `n` sessions of the database wait for a lock on a relation.
async fn waiting(admin: &Client, n: i64) {
    crate::harness::eventually(crate::harness::PATIENCE, || async {
        let got = scalar(
            admin,
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND locktype = 'relation' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await;
        (got == n).then_some(())
    })
    .await
    .expect("the sessions queue");
}

/// A report idle in transaction holding the trades table, and an `ALTER TABLE` waiting for it
/// (once the database shows it waiting): the report's session, and the DDL's SQLSTATE handle.
async fn ddl_behind_reader(
    db: &TestDb,
    admin: &Client,
) -> (Client, tokio::task::JoinHandle<Option<String>>) {
    let report = session(db, "report").await;
    exec(&report, "BEGIN; SELECT count(*) FROM exchange.fills").await;
    let ddl = background(
        session(db, "migration").await,
        "ALTER TABLE exchange.fills ADD COLUMN note text",
    );
    waiting(admin, 1).await;
    (report, ddl)
}

/// The runs of the queue query so far.
fn runs(body: &str) -> f64 {
    sample(
        body,
        "pgpulse_query_runs_total{query=\"trade_table_lock_queue\"}",
    )
    .unwrap_or(0.0)
}

/// The value of the trades table's series of `family` in `body`.
fn trades(body: &str, family: &str) -> Option<f64> {
    sample(
        body,
        &format!("{family}{{table=\"trades\",relation=\"exchange.fills\"}}"),
    )
}

/// The first body whose queue query ran at least twice after the state the caller set up:
/// the first body read afterwards has run `n` times, and run `n + 2` started after run `n + 1`
/// ended, which was after that read.
async fn two_samples_later(svc: &Running) -> String {
    let n = runs(&svc.metrics().await);
    svc.wait_for("two more samples of the queue", |b| runs(b) >= n + 2.0)
        .await
}

/// The two queue queries, the server-wide `database_load` that signals lock waits, and
/// `lock_roots` and `lock_root_load`, which idle on it too.
const QUEUE_QUERIES: [&str; 5] = [
    "database_load",
    "lock_roots",
    "lock_root_load",
    "trade_table_lock_queue",
    "trade_table_lock_modes",
];

async fn setup() -> (TestDb, Client, Running) {
    setup_on(TestDb::new().await, shipped(&QUEUE_QUERIES, "1s")).await
}

/// [`setup`] on `db` with `catalog`.
async fn setup_on(db: TestDb, catalog: String) -> (TestDb, Client, Running) {
    let admin = db.client().await;
    exec(&admin, SCHEMA).await;
    let svc = start(&db.url, &catalog, |c| c.trade_tables = tables()).await;
    (db, admin, svc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ddl_waiting_behind_an_idle_reader_with_an_insert_behind_it_raises_the_flag_until_cancelled()
 {
    let (db, admin, svc) = setup().await;
    let body = svc
        .wait_for("a row per configured table that exists", |b| {
            trades(b, "pg_trade_table_lock_queue").is_some()
        })
        .await;
    assert_eq!(trades(&body, "pg_trade_table_lock_queue"), Some(0.0));
    let hostile = r#"pg_trade_table_lock_queue{table="market_data",relation="exchange.\"ti\"\"cks; DROP TABLE exchange.fills; --\""} 0"#;
    assert!(body.contains(hostile), "{body}");
    assert!(
        !body.contains("table=\"orders\""),
        "absent tables have no row"
    );

    let (report, ddl) = ddl_behind_reader(&db, &admin).await;
    // A DDL waiting with nobody behind it blocks no writes yet: no flag.
    let body = two_samples_later(&svc).await;
    assert_eq!(trades(&body, "pg_trade_table_lock_queue"), Some(0.0));
    assert_eq!(
        trades(&body, "pg_trade_table_lock_waiting_sessions"),
        Some(1.0)
    );

    let insert = background(
        session(&db, "engine").await,
        "INSERT INTO exchange.fills VALUES (1, 'BTC-USD', now())",
    );
    waiting(&admin, 2).await;
    let body = two_samples_later(&svc).await;
    assert_eq!(trades(&body, "pg_trade_table_lock_queue"), Some(1.0));
    assert_eq!(
        trades(&body, "pg_trade_table_lock_waiting_sessions"),
        Some(2.0)
    );
    let modes = by_mode(&body);
    assert_eq!(
        modes,
        HashMap::from([
            ("AccessExclusiveLock".to_owned(), 1.0),
            ("RowExclusiveLock".to_owned(), 1.0)
        ])
    );
    let waited = trades(&body, "pg_trade_table_lock_queue_seconds").unwrap();
    assert!(waited > 0.0, "{waited}");
    promtool_sees(&body, true);

    // Cancelling the waiting DDL (the runbook's advice) lets the insert through at once,
    // although the report still holds its lock.
    let cancelled: bool = admin
        .query_one(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'migration' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(cancelled);
    assert_eq!(
        ddl.await.unwrap().as_deref(),
        Some("57014"),
        "query_canceled"
    );
    assert_eq!(insert.await.unwrap(), None, "the insert went through");
    let body = svc
        .wait_for("the flag back to 0", |b| {
            trades(b, "pg_trade_table_lock_queue") == Some(0.0)
        })
        .await;
    assert_eq!(
        trades(&body, "pg_trade_table_lock_waiting_sessions"),
        Some(0.0)
    );
    assert_eq!(
        trades(&body, "pg_trade_table_lock_queue_seconds"),
        Some(0.0)
    );
    promtool_sees(&body, false);
    exec(&report, "COMMIT").await;
    svc.stop().await;
}

/// The trades table's waiting sessions by requested mode.
fn by_mode(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter_map(|l| {
            l.strip_prefix("pg_trade_table_lock_waiting_sessions_by_mode{table=\"trades\",mode=\"")
        })
        .filter_map(|rest| rest.split_once("\"} "))
        .map(|(mode, v)| (mode.to_owned(), v.parse().unwrap()))
        .collect()
}

/// Runs the shipped rules in promtool over the trades table's two queue series as sampled in
/// `body` (job and instance added, as Prometheus does), expecting the queue alert to fire or not.
fn promtool_sees(body: &str, fires: bool) {
    let flag = trades(body, "pg_trade_table_lock_queue").unwrap();
    let secs = trades(body, "pg_trade_table_lock_queue_seconds").unwrap();
    let labels = r#"job="pgpulse", instance="db1:9864", table="trades", relation="exchange.fills""#;
    let expected = if fires {
        format!(
            "\n          - exp_labels: {{severity: critical, job: pgpulse, instance: \"db1:9864\", \
             table: trades, relation: exchange.fills}}\n            exp_annotations:\n              \
             summary: Writes to trades on db1:9864 queue behind a waiting lock request\n              \
             description: 'A session has waited {} for a lock on exchange.fills (trade table trades) that conflicts with row writes, and other sessions queue behind it: inserts and updates of trades stop until it gets its lock or gives up. Cancel the waiting request (usually DDL), not the session holding the lock; /debug/locks shows both.'\n              \
             runbook_url: https://github.com/pgpulse/pgpulse/blob/main/docs/runbooks.md#pgtradetablelockqueue",
            humanize_seconds(secs)
        )
    } else {
        " []".to_owned()
    };
    let test = format!(
        "rule_files: [{rules}]\nevaluation_interval: 15s\ntests:\n  - interval: 15s\n    input_series:\n      \
         - series: 'pg_trade_table_lock_queue{{{labels}}}'\n        values: '{flag} {flag}'\n      \
         - series: 'pg_trade_table_lock_queue_seconds{{{labels}}}'\n        values: '{secs} {secs}'\n    \
         alert_rule_test:\n      - eval_time: 0s\n        alertname: PgTradeTableLockQueue\n        exp_alerts:{expected}\n",
        rules = concat!(env!("CARGO_MANIFEST_DIR"), "/alerts/pgpulse.rules.yml"),
    );
    crate::alerts::promtool_test(&test);
}

/// Prometheus' `humanizeDuration` of a duration under a minute: `%.4g` of the seconds, or of
/// the milliseconds (microseconds, ...) below a second: `3.217s`, `412.3ms`, `0s`.
fn humanize_seconds(s: f64) -> String {
    assert!((0.0..60.0).contains(&s), "the queue waited {s} s");
    if s == 0.0 {
        return "0s".to_owned();
    }
    let (mut v, mut prefix) = (s, "");
    for p in ["m", "u", "n"] {
        if v >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", crate::alerts::go_4g(v))
}

#[test]
fn humanize_seconds_is_prometheus_four_significant_digits() {
    assert_eq!(humanize_seconds(3.21749), "3.217s");
    assert_eq!(humanize_seconds(12.3456), "12.35s");
    assert_eq!(humanize_seconds(0.4123456), "412.3ms");
    assert_eq!(humanize_seconds(2.0), "2s");
    assert_eq!(humanize_seconds(0.0), "0s");
}

/// The configuration file's `trade_tables:` for [`tables`].
fn config_yaml() -> String {
    let hostile = HOSTILE.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "trade_tables:\n  trades: {{schema: exchange, name: fills, partition_column: filled_at}}\n  \
         market_data: {{schema: exchange, name: \"{hostile}\"}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_every_role_that_can_alter_a_trade_table_without_a_lock_timeout() {
    // Roles are server-wide: a server of its own, so the roles of other tests stay apart.
    let cluster = crate::harness::own_cluster(pgpulse::demo::ClusterOptions::default());
    let db = TestDb::on(&cluster.url("postgres")).await;
    let admin = db.client().await;
    exec(&admin, SCHEMA).await;
    exec(
        &admin,
        &format!(
            "CREATE ROLE trader LOGIN; ALTER TABLE exchange.fills OWNER TO trader; \
             CREATE ROLE deployer LOGIN IN ROLE trader; ALTER ROLE deployer SET lock_timeout = '3s'; \
             CREATE ROLE bystander LOGIN; \
             CREATE ROLE \"ev\"\"il\nx\" LOGIN SUPERUSER; \
             ALTER ROLE \"ev\"\"il\nx\" IN DATABASE {db} SET lock_timeout = 0",
            db = db.name
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgpulse.yaml");
    std::fs::write(&cfg, config_yaml()).unwrap();
    let verify = || {
        let out = crate::harness::pgpulse(
            &[
                "verify",
                "--config",
                cfg.to_str().unwrap(),
                "--database-url",
                &db.url,
            ],
            &[],
        );
        let (stdout, stderr) = crate::harness::text(&out);
        let lines: Vec<String> = stdout
            .lines()
            .filter(|l| l.starts_with("LOCK_TIMEOUT "))
            .map(str::to_owned)
            .collect();
        assert!(!lines.is_empty(), "{stdout}{stderr}");
        lines
    };
    let lines = verify();
    let of = |role: &str| -> Vec<&String> {
        lines
            .iter()
            .filter(|l| l.contains(&format!(" {role} can alter ")))
            .collect()
    };
    let trader = of("\"trader\"");
    assert_eq!(trader.len(), 1, "{lines:#?}");
    assert!(trader[0].starts_with(
        "LOCK_TIMEOUT WARN \"trader\" can alter exchange.fills and has no lock_timeout"
    ));
    assert!(trader[0].ends_with("ALTER ROLE \"trader\" SET lock_timeout = '2s'"));
    // A member of the owner, with a setting of its own.
    let deployer = of("\"deployer\"");
    assert_eq!(deployer.len(), 1, "{lines:#?}");
    assert!(
        deployer[0].starts_with("LOCK_TIMEOUT PASS"),
        "{}",
        deployer[0]
    );
    assert!(deployer[0].ends_with("lock_timeout 3s"), "{}", deployer[0]);
    // A superuser can alter every trade table; its hostile name is one quoted, escaped name on
    // one line.
    let evil = of(r#""ev""il\nx""#);
    assert_eq!(evil.len(), 1, "{lines:#?}");
    assert!(evil[0].starts_with("LOCK_TIMEOUT WARN"), "{}", evil[0]);
    assert!(evil[0].contains("exchange.fills"), "{}", evil[0]);
    assert!(evil[0].contains("ti\"\"cks; DROP TABLE"), "{}", evil[0]);
    assert!(lines.iter().all(|l| !l.contains("bystander")), "{lines:#?}");

    // A role without a setting of its own takes the database's; a setting of the role for this
    // database (the superuser's 0) beats it.
    let sql = format!("ALTER DATABASE {} SET lock_timeout = '1s'", db.name);
    exec(&admin, &sql).await;
    let lines = verify();
    let line = |role: &str| {
        let found: Vec<&String> = lines.iter().filter(|l| l.contains(role)).collect();
        assert_eq!(found.len(), 1, "{lines:#?}");
        found[0].clone()
    };
    let trader = line(" \"trader\" ");
    assert!(
        trader.starts_with("LOCK_TIMEOUT PASS") && trader.ends_with("lock_timeout 1s"),
        "{trader}"
    );
    assert!(line(r#""ev""il\nx""#).starts_with("LOCK_TIMEOUT WARN"));
    drop(admin);
    drop(db);
}

/// `pgpulse_query_{what}_total` of `query` in `body` (0 when absent).
fn count(body: &str, what: &str, query: &str) -> f64 {
    sample(
        body,
        &format!("pgpulse_query_{what}_total{{query=\"{query}\"}}"),
    )
    .unwrap_or(0.0)
}

/// [`QUEUE_QUERIES`] with results that may stand an hour: the queue queries wake only on the
/// server's signal within a test's patience (their run at least every `expire_after` would
/// otherwise hide a signal that never arrives).
fn idling_catalog() -> String {
    let catalog = shipped(&QUEUE_QUERIES, "1s");
    assert!(catalog.contains("expire_after: 10s"));
    catalog.replace("expire_after: 10s", "expire_after: 1h")
}

/// Whether the queue queries, `lock_roots` and `lock_root_load` idled at least `n` times in
/// `body`.
fn both_idled(body: &str, n: f64) -> bool {
    [
        "trade_table_lock_queue",
        "trade_table_lock_modes",
        "lock_roots",
        "lock_root_load",
    ]
    .iter()
    .all(|q| count(body, "idle_ticks", q) >= n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_nobody_waits_the_queue_queries_idle_and_a_waiting_ddl_wakes_them() {
    // A server of its own: other tests' lock waits on the shared one would wake them.
    let cluster = crate::harness::own_cluster(Default::default());
    let db = TestDb::on(&cluster.url("postgres")).await;
    let (db, admin, svc) = setup_on(db, idling_catalog()).await;
    let body = svc
        .wait_for("both queue queries idling", |b| both_idled(b, 3.0))
        .await;
    // The last result stands while they idle: every configured table that exists, at 0.
    assert_eq!(trades(&body, "pg_trade_table_lock_queue"), Some(0.0));
    assert_eq!(
        trades(&body, "pg_trade_table_lock_waiting_sessions"),
        Some(0.0)
    );
    assert!(body.contains("pg_trade_table_lock_queue{table=\"market_data\""));
    let (report, ddl) = ddl_behind_reader(&db, &admin).await;
    svc.wait_for("the waiting DDL counted", |b| {
        trades(b, "pg_trade_table_lock_waiting_sessions") == Some(1.0)
    })
    .await;
    // lock_root_load woke too: the reader holds up one session, second after second.
    svc.wait_for("the reader's blocked seconds accumulating", |b| {
        b.lines().any(|l| {
            l.starts_with("pg_lock_root_blocked_seconds_total{")
                && l.contains("application_name=\"report\"")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(2.0)
        })
    })
    .await;
    exec(&report, "ROLLBACK").await;
    assert_eq!(ddl.await.unwrap(), None, "the DDL went through");
    let body = svc
        .wait_for("the count back to 0", |b| {
            trades(b, "pg_trade_table_lock_waiting_sessions") == Some(0.0)
        })
        .await;
    let idled = count(&body, "idle_ticks", "trade_table_lock_queue");
    svc.wait_for("idling again", |b| {
        count(b, "idle_ticks", "trade_table_lock_queue") >= idled + 3.0
    })
    .await;
    svc.stop().await;
}

/// A signalling query that always fails: the signal never becomes news.
const BROKEN_SIGNAL: &str = r#"  - name: broken_signal
    help: fails every run
    scope: server
    signals: lock_waits
    interval: 1s
    timeout: 800ms
    sql: SELECT 1 / (SELECT count(*) - count(*) FROM pg_class)::int AS waits
    metrics:
      - {column: waits, name: pg_test_waits, type: gauge, help: Never.}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fresh_signal_the_queue_queries_run_every_tick() {
    let db = TestDb::new().await;
    exec(&db.client().await, SCHEMA).await;
    let catalog = format!(
        "{}{BROKEN_SIGNAL}",
        shipped(&["trade_table_lock_queue", "trade_table_lock_modes"], "1s")
    );
    let svc = start(&db.url, &catalog, |c| c.trade_tables = tables()).await;
    let body = svc
        .wait_for("five runs of the queue query and a failed signal", |b| {
            count(b, "runs", "trade_table_lock_queue") >= 5.0
                && sample(
                    b,
                    "pgpulse_query_errors_total{query=\"broken_signal\",kind=\"sql\"}",
                )
                .is_some_and(|n| n >= 2.0)
        })
        .await;
    for q in ["trade_table_lock_queue", "trade_table_lock_modes"] {
        assert_eq!(count(&body, "idle_ticks", q), 0.0, "{q} idled:\n{body}");
    }
    assert_eq!(trades(&body, "pg_trade_table_lock_queue"), Some(0.0));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_database_idles_on_its_leaders_signal_and_wakes_on_its_own_waiter() {
    let cluster = crate::harness::own_cluster(Default::default());
    let admin_url = cluster.url("postgres");
    let (first, second) = (TestDb::on(&admin_url).await, TestDb::on(&admin_url).await);
    let admin = second.client().await;
    exec(&admin, SCHEMA).await;
    let svc = crate::service::start_settings(&idling_catalog(), |s, _| {
        s.trade_tables = tables();
        s.targets = vec![
            crate::fleet::target("t1", &first.url, &[]),
            crate::fleet::target("t2", &second.url, &[]),
        ];
    })
    .await;
    let body = svc
        .wait_probe("t2", "both queue queries idling", |b| {
            ["trade_table_lock_queue", "trade_table_lock_modes"]
                .iter()
                .all(|q| count(b, "idle_ticks", q) >= 3.0)
        })
        .await;
    // t1 leads the server: database_load runs there only, and t2 idles on what it signals.
    assert_eq!(
        sample(&body, "pgpulse_query_enabled{query=\"database_load\"}"),
        Some(0.0)
    );
    assert_eq!(trades(&body, "pg_trade_table_lock_queue"), Some(0.0));
    let (report, ddl) = ddl_behind_reader(&second, &admin).await;
    svc.wait_probe("t2", "the waiting DDL counted", |b| {
        trades(b, "pg_trade_table_lock_waiting_sessions") == Some(1.0)
    })
    .await;
    exec(&report, "ROLLBACK").await;
    assert_eq!(ddl.await.unwrap(), None, "the DDL went through");
    svc.wait_probe("t2", "the count back to 0", |b| {
        trades(b, "pg_trade_table_lock_waiting_sessions") == Some(0.0)
    })
    .await;
    svc.stop().await;
}
