//! Read-only is enforced by the server, not by parsing SQL: hostile catalog entries are each
//! refused by `check-config` or fail at run time with a counted error, and nothing in the
//! database changes.

use crate::harness::exec;
use crate::harness::{TestDb, pgpulse, scalar, text};
use crate::service::{sample, start};

/// Hostile entries: (query name, SQL, refused by check-config because it is not one statement).
const HOSTILE: &[(&str, &str, bool)] = &[
    (
        "comment_hides_quote",
        "SELECT 1 AS v /* ' */ ; COMMIT; DELETE FROM trades",
        true,
    ),
    ("plain_second", "SELECT 1 AS v; DELETE FROM trades", true),
    (
        "dollar_quote",
        "SELECT $q$;$q$ AS s, 1 AS v; DELETE FROM trades",
        true,
    ),
    (
        "e_string",
        "SELECT E'\\';' AS s, 1 AS v; DELETE FROM trades",
        true,
    ),
    (
        "line_comment",
        "SELECT 1 AS v -- ;\n; DELETE FROM trades",
        true,
    ),
    ("read_write", "SET transaction_read_only = off", false),
    ("for_update", "SELECT 1 AS v FROM trades FOR UPDATE", false),
    ("sequence", "SELECT nextval('hostile_seq') AS v", false),
    (
        "cte_delete",
        "WITH d AS (DELETE FROM trades RETURNING 1) SELECT count(*) AS v FROM d",
        false,
    ),
    ("do_block", "DO $$ BEGIN DELETE FROM trades; END $$", false),
];

fn catalog() -> String {
    let mut s = String::from("queries:\n");
    for (i, (name, sql, _)) in HOSTILE.iter().enumerate() {
        let sql = sql.replace('\n', "\n      ");
        s.push_str(&format!(
            "  - name: {name}\n    interval: 1s\n    timeout: 900ms\n    sql: |\n      {sql}\n    metrics:\n      - {{column: v, name: pg_hostile_{i}, type: gauge, help: Hostile.}}\n"
        ));
    }
    s
}

#[tokio::test]
async fn hostile_catalog_entries_are_refused_or_fail_and_nothing_changes() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    exec(&c, "CREATE SEQUENCE hostile_seq").await;
    let trades = scalar(&c, "SELECT count(*) FROM trades").await;
    assert!(trades > 0, "the reference data has trades");

    // check-config prepares each entry on the database: the multi-statement ones are refused.
    let dir = tempfile::tempdir().unwrap();
    for (name, sql, multi) in HOSTILE {
        let one = format!(
            "queries:\n  - name: {name}\n    sql: |\n      {}\n    metrics:\n      - {{column: v, name: pg_hostile, type: gauge, help: Hostile.}}\n",
            sql.replace('\n', "\n      ")
        );
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, one).unwrap();
        let out = pgpulse(
            &[
                "check-config",
                "--queries",
                path.to_str().unwrap(),
                "--database-url",
                &db.url,
            ],
            &[],
        );
        if *multi {
            let (_, err) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{name}: {err}");
            assert!(
                err.contains(name),
                "{name}: the error names the query: {err}"
            );
        }
    }

    // At run time every entry fails with a counted error.
    let svc = start(&db.url, &catalog(), |_| {}).await;
    let body = svc
        .wait_for("every hostile entry failed at least once", |b| {
            HOSTILE.iter().all(|(name, _, _)| {
                ["sql", "decode", "unavailable", "timeout"].iter().any(|k| {
                    sample(
                        b,
                        &format!("pgpulse_query_errors_total{{query=\"{name}\",kind=\"{k}\"}}"),
                    )
                    .unwrap_or(0.0)
                        >= 1.0
                })
            })
        })
        .await;
    for i in 0..HOSTILE.len() {
        assert!(
            sample(&body, &format!("pg_hostile_{i}")).is_none(),
            "hostile entry {i} produced a series"
        );
    }
    svc.stop().await;
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM trades").await,
        trades,
        "no trade deleted"
    );
    let called: bool = c
        .query_one("SELECT is_called FROM hostile_seq", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!called, "the sequence never advanced");
}

#[tokio::test]
async fn sampling_sessions_are_read_only_by_default() {
    let db = TestDb::new().await;
    let catalog = "queries:
  - name: session
    interval: 1s
    timeout: 900ms
    sql: SELECT (current_setting('default_transaction_read_only') = 'on')::int AS ro, (current_setting('transaction_read_only') = 'on')::int AS tro
    metrics:
      - {column: ro, name: pg_test_session_read_only, type: gauge, help: Session default.}
      - {column: tro, name: pg_test_transaction_read_only, type: gauge, help: Transaction.}
";
    let svc = start(&db.url, catalog, |_| {}).await;
    svc.wait_for("both read-only flags at 1", |b| {
        sample(b, "pg_test_session_read_only") == Some(1.0)
            && sample(b, "pg_test_transaction_read_only") == Some(1.0)
    })
    .await;
    svc.stop().await;
}

/// A catalog query that changes its session's settings for good (`set_config(..., false)`):
/// read-write, no timeouts, a tenant's schema first on the path.
const TAMPER: &str = "SELECT 1 AS v FROM (SELECT \
    set_config('default_transaction_read_only', 'off', false), \
    set_config('statement_timeout', '0', false), set_config('lock_timeout', '0', false), \
    set_config('search_path', 'tenant, pg_catalog', false)) s";

#[tokio::test]
async fn a_query_that_changes_its_sessions_settings_leaves_no_mark_on_the_next_run() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let trades = scalar(&c, "SELECT count(*) FROM trades").await;
    // One connection: every run of the writer and the observer follows a tamper run on it.
    let catalog = format!(
        "queries:
  - name: tamper
    interval: 1s
    timeout: 900ms
    sql: {TAMPER}
    metrics:
      - {{column: v, name: pg_test_tamper, type: gauge, help: Tamper.}}
  - name: writer
    interval: 1s
    timeout: 900ms
    sql: WITH d AS (DELETE FROM trades RETURNING 1) SELECT count(*) AS v FROM d
    metrics:
      - {{column: v, name: pg_test_deleted, type: gauge, help: Deleted.}}
  - name: observer
    interval: 1s
    timeout: 900ms
    sql: >-
      SELECT 1 / (current_setting('transaction_read_only') = 'on'
              AND current_setting('statement_timeout') = '900ms'
              AND current_setting('lock_timeout') <> '0'
              AND current_setting('search_path') = 'pg_catalog, public, pg_temp')::int AS pinned
    metrics:
      - {{column: pinned, name: pg_test_pinned, type: gauge, help: Pinned.}}
"
    );
    let svc = start(&db.url, &catalog, |c| c.pool_size = 1).await;
    let runs = |b: &str, q: &str| {
        sample(b, &format!("pgpulse_query_runs_total{{query=\"{q}\"}}")).unwrap_or(0.0)
    };
    let body = svc
        .wait_for("ten runs of each, the tamper runs succeeding", |b| {
            ["tamper", "writer", "observer"]
                .iter()
                .all(|q| runs(b, q) >= 10.0)
                && sample(b, "pg_test_tamper") == Some(1.0)
        })
        .await;
    // Every writer run failed (read-only), and every observer run saw its own settings (it
    // divides by zero otherwise).
    let writer_errors = sample(
        &body,
        "pgpulse_query_errors_total{query=\"writer\",kind=\"sql\"}",
    )
    .unwrap_or(0.0);
    assert_eq!(writer_errors, runs(&body, "writer"), "every write refused");
    let observer_errors = ["sql", "decode", "timeout", "unavailable"]
        .iter()
        .map(|k| {
            sample(
                &body,
                &format!("pgpulse_query_errors_total{{query=\"observer\",kind=\"{k}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .sum::<f64>();
    assert_eq!(observer_errors, 0.0, "the observer never failed");
    assert_eq!(sample(&body, "pg_test_pinned"), Some(1.0));
    svc.stop().await;
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM trades").await,
        trades,
        "no trade deleted"
    );
}
