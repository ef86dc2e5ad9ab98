//! Statement statistics without the statement text: a statement whose text is not valid
//! UTF-8, logged by pg_stat_statements from a SQL_ASCII database of the same cluster, makes
//! every read of the text fail in a UTF-8 database; pgpulse's statement families read
//! `pg_stat_statements(false)` and keep succeeding.

use crate::harness::exec;
use crate::harness::{TestDb, connect, own_cluster, with_db};
use crate::service::{sample, start};
use crate::signals::shipped;

/// Runs, in a new SQL_ASCII database of the server of `admin`, a statement whose text holds
/// the byte 0xff (not UTF-8), tracked by pg_stat_statements as a top-level statement.
async fn log_a_statement_that_is_not_utf8(admin: &str) {
    let c = connect(admin).await;
    exec(
        &c,
        "CREATE DATABASE ascii_tenant ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' \
         TEMPLATE template0",
    )
    .await;
    let tenant = connect(&with_db(admin, "ascii_tenant")).await;
    // In a SQL_ASCII database convert_from(.., 'SQL_ASCII') passes the byte through as it is;
    // with track = all the dynamic statement is recorded with that text.
    exec(&tenant, "SET pg_stat_statements.track = 'all'; \
             DO $$ BEGIN EXECUTE 'SELECT 1 /* ' || convert_from('\\xff'::bytea, 'SQL_ASCII') || ' */'; END $$").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_text_that_is_not_utf8_leaves_every_statement_family_working() {
    let cluster = own_cluster(Default::default());
    let admin = cluster.url("postgres");
    let db = TestDb::trade_migrated_on(&admin).await;
    log_a_statement_that_is_not_utf8(&admin).await;
    let c = db.client().await;
    // The hazard is real: reading the text fails in the UTF-8 database.
    let with_text = c
        .query("SELECT query FROM monitoring.statement_stats()", &[])
        .await;
    let err = with_text.expect_err("the text of the 0xff statement cannot be read here");
    assert!(
        format!("{err:?}").contains("invalid byte sequence"),
        "{err:?}"
    );
    // Without the text, every row is there (the 0xff statement's too).
    let rows = c
        .query_one(
            "SELECT count(*) FILTER (WHERE query IS NULL), count(*) \
             FROM monitoring.statement_stats(false)",
            &[],
        )
        .await
        .unwrap();
    let (null_texts, all): (i64, i64) = (rows.get(0), rows.get(1));
    assert!(all > 0);
    assert_eq!(null_texts, all, "no text is read");
    let families = ["top_statements", "slow_statements", "statement_latency"];
    let svc = start(&db.url, &shipped(&families, "1s"), |_| {}).await;
    let body = svc
        .wait_for("two runs of every statement family", |b| {
            families.iter().all(|q| {
                sample(b, &format!("pgpulse_query_runs_total{{query=\"{q}\"}}"))
                    .is_some_and(|n| n >= 2.0)
            })
        })
        .await;
    for q in families {
        let errors = body
            .lines()
            .filter(|l| l.starts_with(&format!("pgpulse_query_errors_total{{query=\"{q}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        assert_eq!(errors, 0.0, "{q} failed:\n{body}");
    }
    assert!(sample(&body, "pg_slow_statements").is_some());
    assert!(body.contains("pg_statement_calls_total{"));
    svc.wait_ready().await;
    svc.stop().await;
    drop(c);
    drop(db);
}
