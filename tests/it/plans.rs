//! The plan guard on the real thing: the key queries of plans.yaml on the reference schema
//! with production-like volume use their indexes and prune as expected (partition counts
//! compared with PostgreSQL's own); a dropped index or a planner that leaves an index makes
//! `pgpulse explain` exit 1 naming the query and the node, and flips the serve metric; a query
//! without the partition key scans every partition; a bad plans file is exit 2 with
//! file:line:column.

use crate::harness::exec;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::exporter::promtool_check;
use crate::harness::{TestDb, eventually, pgpulse, scalar, text};
use crate::service::{sample, start};
use pgpulse::plans::{GuardConfig, PlanSet};

const SCALE_SQL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/trade-engine/scale_data.sql"
));

/// The trade-engine database with seed data plus examples/trade-engine/scale_data.sql.
async fn scaled() -> TestDb {
    let db = TestDb::trade().await;
    db.client()
        .await
        .batch_execute(SCALE_SQL)
        .await
        .expect("scale data");
    db
}

/// `pgpulse explain --format json` with `args`; exit code and the parsed results by query.
fn explain_json(url: &str, args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let mut all = vec!["explain", "--database-url", url, "--format", "json"];
    all.extend_from_slice(args);
    let out = pgpulse(&all, &[]);
    let (stdout, stderr) = text(&out);
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    (out.status.code(), v.as_array().unwrap().clone(), stderr)
}

fn by_name<'a>(results: &'a [Value], name: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["query"] == name)
        .unwrap_or_else(|| panic!("no result for {name}: {results:?}"))
}

async fn leaves(c: &tokio_postgres::Client, table: &str) -> u64 {
    scalar(
        c,
        &format!("SELECT count(*) FROM pg_partition_tree('{table}') WHERE isleaf"),
    )
    .await as u64
}

#[tokio::test]
async fn every_key_query_uses_its_index_and_prunes_as_expected_on_the_reference_schema_with_data() {
    let db = scaled().await;
    let c = db.client().await;
    let (orders, trades) = (leaves(&c, "orders").await, leaves(&c, "trades").await);
    assert_eq!(
        (orders, trades),
        (8, 23),
        "the reference schema's partitions"
    );
    // A day back from now lies in the previous month only on the first day of a month.
    let status_parts = scalar(
        &c,
        "SELECT CASE WHEN date_trunc('month', now() - interval '1 day', 'UTC') \
                = date_trunc('month', now(), 'UTC') THEN 1 ELSE 2 END::bigint",
    )
    .await as u64;
    // (query, partitions scanned, their total); None: not partitioned.
    let expected: [(&str, Option<(u64, u64)>); 10] = [
        ("orders_by_user", Some((orders, orders))),
        ("order_book_depth", None),
        ("trade_history_by_symbol", Some((2, trades))),
        ("user_trade_history", Some((8, trades))),
        ("latest_ticker", None),
        ("candles_for_chart", None),
        ("orders_partition_pruning", Some((1, orders))),
        ("trades_partition_pruning", Some((1, trades))),
        ("order_status_aggregation", Some((status_parts, orders))),
        ("orders_with_trades", None),
    ];
    // Production mode first: plain EXPLAIN passes every check, exit 0.
    let (code, plain, stderr) = explain_json(&db.url, &["--no-analyze"]);
    assert_eq!(code, Some(0), "{plain:#?}\n{stderr}");
    // With ANALYZE (rolled back): the same verdicts, and times measured.
    let (_, analyzed, _) = explain_json(&db.url, &[]);
    for results in [&plain, &analyzed] {
        assert_eq!(results.len(), 10);
        for (name, parts) in expected {
            let r = by_name(results, name);
            assert_eq!(r["index_ok"], true, "{name}: {r:#}");
            assert_eq!(r["partitions_ok"], true, "{name}: {r:#}");
            for i in r["indexes"].as_array().unwrap() {
                assert_eq!(i["used"], true, "{name}: {i}");
            }
            if let Some((scanned, total)) = parts {
                let p = &r["partitions"];
                assert_eq!(p["scanned"], scanned, "{name}: {p}");
                assert_eq!(p["total"], total, "{name}: {p}");
                // A generic plan cannot prune on $n at plan time: every other partition is
                // removed at executor startup.
                assert_eq!(p["removed_at_startup"], total - scanned, "{name}: {p}");
            }
        }
    }
    // Every key query carries the server's identifier of its statement, the same with and
    // without ANALYZE, and no two share one.
    let ids: std::collections::BTreeSet<i64> = plain
        .iter()
        .map(|r| r["query_id"].as_i64().unwrap_or_else(|| panic!("{r:#}")))
        .collect();
    assert_eq!(ids.len(), 10, "{ids:?}");
    for r in &analyzed {
        let name = r["query"].as_str().unwrap();
        assert_eq!(r["query_id"], by_name(&plain, name)["query_id"], "{name}");
    }
    // orders_with_trades reads both partitioned tables.
    let p = &by_name(&plain, "orders_with_trades")["partitions"];
    assert_eq!(p["total"], orders + trades, "{p}");
    assert_eq!(p["tables"], serde_json::json!(["trades", "orders"]), "{p}");
    for r in &analyzed {
        assert!(r["execution_ms"].as_f64().is_some(), "{r}");
    }
    for r in &plain {
        assert!(
            r["execution_ms"].is_null() && r["latency_ok"].is_null(),
            "{r}"
        );
    }
    // Nothing was left behind by the rolled-back ANALYZE runs or the prepared statements.
    assert_eq!(scalar(&c, "SELECT count(*) FROM orders").await, 102_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_index_makes_explain_exit_1_naming_the_query_and_flips_the_serve_metric() {
    let db = scaled().await;
    let svc = start(&db.url, "queries: []\n", |cfg| {
        cfg.plans = Some(GuardConfig {
            plans: Arc::new(PlanSet::built_in().unwrap()),
            interval: Duration::from_secs(2),
        });
    })
    .await;
    let series = r#"pg_plan_expected_index_used{query="latest_ticker"}"#;
    let value_is = |want: f64| {
        let svc = &svc;
        move || async move {
            let body = svc.metrics().await;
            (sample(&body, series) == Some(want)).then_some(body)
        }
    };
    // The guard publishes each key query's gauges as it judges it: wait for the last one
    // asserted below, not only the first.
    let body = eventually(crate::harness::PATIENCE, || async {
        let body = value_is(1.0)().await?;
        sample(
            &body,
            r#"pg_plan_partitions_expected_max{query="trade_history_by_symbol"}"#,
        )
        .and(sample(
            &body,
            r#"pg_plan_partitions_scanned{query="trades_partition_pruning"}"#,
        ))
        .and(sample(
            &body,
            r#"pg_plan_estimated_cost{query="latest_ticker"}"#,
        ))
        .map(|_| body)
    })
    .await
    .expect("latest_ticker uses its index, and every key query was judged");
    promtool_check(&body).unwrap_or_else(|e| panic!("promtool check metrics:\n{e}\n{body}"));
    assert_eq!(
        sample(
            &body,
            r#"pg_plan_partitions_scanned{query="trades_partition_pruning"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            r#"pg_plan_partitions{query="trades_partition_pruning"}"#
        ),
        Some(23.0)
    );
    assert_eq!(
        sample(
            &body,
            r#"pg_plan_partitions_expected_max{query="trade_history_by_symbol"}"#
        ),
        Some(2.0)
    );
    assert!(
        sample(&body, r#"pg_plan_estimated_cost{query="latest_ticker"}"#).is_some_and(|c| c > 0.0)
    );

    db.client()
        .await
        .batch_execute("DROP INDEX idx_market_data_symbol_timestamp")
        .await
        .unwrap();
    let out = pgpulse(&["explain", "--no-analyze", "--database-url", &db.url], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 1, "{stdout}");
    assert!(
        failed[0].starts_with(
            "FAIL  latest_ticker: index idx_market_data_symbol_timestamp NOT USED: it does not exist"
        ),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("PASS")).count(),
        9,
        "{stdout}"
    );
    assert!(
        stderr.contains("1 of 10") && stderr.contains("latest_ticker"),
        "{stderr}"
    );

    let body = eventually(crate::harness::PATIENCE, value_is(0.0))
        .await
        .expect("the serve metric flips to 0");
    assert_eq!(
        sample(
            &body,
            r#"pg_plan_expected_index_used{query="order_book_depth"}"#
        ),
        Some(1.0),
        "other queries unaffected"
    );
    svc.stop().await;
}

#[tokio::test]
async fn a_planner_that_leaves_the_index_is_reported_with_the_node_that_changed() {
    let db = scaled().await;
    let c = db.client().await;
    // What a statistics change can do to a plan, induced for every new session.
    exec(&c, &format!(
        "ALTER DATABASE {} SET enable_indexscan = off; ALTER DATABASE {} SET enable_bitmapscan = off",
        db.name, db.name
    )).await;
    let pages = scalar(
        &c,
        "SELECT pg_relation_size('market_data') / current_setting('block_size')::bigint",
    )
    .await;
    let out = pgpulse(
        &[
            "explain",
            "--no-analyze",
            "--query",
            "latest_ticker",
            "--database-url",
            &db.url,
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "FAIL  latest_ticker: index idx_market_data_symbol_timestamp NOT USED, plan has Seq Scan on public.market_data ({pages} pages)"
        )),
        "{stdout}"
    );
    let (code, json, _) = explain_json(&db.url, &["--no-analyze", "--query", "latest_ticker"]);
    assert_eq!(code, Some(1));
    assert_eq!(json[0]["status"], "fail");
    assert_eq!(
        json[0]["scans"],
        serde_json::json!(["Seq Scan on public.market_data"])
    );
}

#[tokio::test]
async fn a_query_without_the_partition_key_is_reported_as_scanning_every_partition() {
    let db = TestDb::trade().await;
    let c = db.client().await;
    let total = leaves(&c, "trades").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plans.yaml");
    std::fs::write(
        &path,
        "queries:\n  - name: trades_of_symbol\n    sql: SELECT count(*) FROM trades WHERE symbol = $1\n    \
         params:\n      - {type: text, value: BTC-USD}\n    expect:\n      max_partitions: 2\n",
    )
    .unwrap();
    let plans = path.to_str().unwrap();
    let (code, json, stderr) = explain_json(&db.url, &["--no-analyze", "--plans", plans]);
    assert_eq!(code, Some(1), "{stderr}");
    let p = &json[0]["partitions"];
    assert_eq!(p["scanned"], total, "{p}");
    assert_eq!(p["total"], total, "{p}");
    assert_eq!(p["removed_at_startup"], 0, "{p}");
    assert_eq!(json[0]["partitions_ok"], false);
    let out = pgpulse(
        &["explain", "--plans", plans, "--database-url", &db.url],
        &[],
    );
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(&format!("partitions {total} of {total} (max 2, EXCEEDED)")),
        "{stdout}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_bad_plans_file_is_a_clear_error_with_line_and_column_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "queries:\n  - name: q\n    sql: SELECT 1\n    expect:\n      index: [x]\n",
            "5:7: unknown field `index`",
        ),
        (
            "queries:\n  - name: q\n    sql: SELECT $1, $2\n    params:\n      - {type: int, value: 1}\n    expect: {max_partitions: 1}\n",
            "3:10: query \"q\": sql uses $2 as its highest placeholder but 1 params are given",
        ),
        (
            "queries:\n  - name: q\n    sql: SELECT 1\n    target: fast\n    expect: {max_partitions: 1}\n",
            "4:13: query \"q\": target: invalid duration `fast`",
        ),
        (
            "queries:\n  - name: q\n    sql: SELECT 1\n",
            "2:5: query \"q\": expect needs indexes or max_partitions",
        ),
        (
            "queries:\n  - name: q\n    sql: SELECT $1\n    params:\n      - {type: \"int; DROP TABLE x\", value: 1}\n    expect: {max_partitions: 1}\n",
            "5:16: query \"q\": parameter $1: `int; DROP TABLE x` is not a type name",
        ),
    ];
    for (i, (yaml, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("plans{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let p = path.to_str().unwrap();
        // No database is contacted: the file is refused first.
        let out = pgpulse(
            &[
                "explain",
                "--plans",
                p,
                "--database-url",
                "postgres://x@127.0.0.1:1/x",
            ],
            &[],
        );
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{yaml}\n{stdout}{stderr}");
        let expected = format!("{p}:{want}");
        assert!(
            stderr.contains(&expected),
            "want `{expected}`, got: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        // serve/check-config refuse it the same way through plans.file.
        let cfg = dir.path().join(format!("config{i}.yaml"));
        std::fs::write(&cfg, format!("plans:\n  file: {p}\n")).unwrap();
        let queries = concat!(env!("CARGO_MANIFEST_DIR"), "/queries.yaml");
        let out = pgpulse(
            &[
                "check-config",
                "--config",
                cfg.to_str().unwrap(),
                "--queries",
                queries,
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out).1.contains(&expected), "{}", text(&out).1);
    }
}

#[test]
fn the_shipped_plans_file_holds_the_ten_key_queries_with_the_specification_targets() {
    let shipped =
        PlanSet::load(concat!(env!("CARGO_MANIFEST_DIR"), "/plans.yaml").as_ref()).unwrap();
    let targets: Vec<(String, Option<u128>)> = shipped
        .queries
        .iter()
        .map(|q| (q.name.clone(), q.target.map(|t| t.as_millis())))
        .collect();
    let want = [
        ("orders_by_user", Some(50)),
        ("order_book_depth", Some(20)),
        ("trade_history_by_symbol", Some(100)),
        ("user_trade_history", Some(100)),
        ("latest_ticker", Some(10)),
        ("candles_for_chart", Some(50)),
        ("orders_partition_pruning", None),
        ("trades_partition_pruning", None),
        ("order_status_aggregation", None),
        ("orders_with_trades", Some(100)),
    ];
    let want: Vec<(String, Option<u128>)> = want.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    assert_eq!(targets, want);
    assert_eq!(PlanSet::built_in().unwrap().queries.len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_that_cannot_run_is_counted_by_kind_and_publishes_no_plan_series() {
    // A key query that names its table directly (no {market_data} placeholder, so it always
    // applies) on a database without it: every EXPLAIN fails with an SQL error.
    let db = TestDb::new().await;
    let plans = PlanSet::parse(
        "queries:\n  - name: latest_ticker\n    sql: SELECT ts FROM market_data WHERE symbol = $1\n    \
         params: [{type: text, value: BTC-USD}]\n    expect: {indexes: [idx_market_data_symbol_timestamp]}\n",
        "direct.yaml".as_ref(),
    )
    .unwrap();
    let svc = start(&db.url, "queries: []\n", |cfg| {
        cfg.plans = Some(GuardConfig {
            plans: Arc::new(plans),
            interval: Duration::from_secs(2),
        });
    })
    .await;
    let failing = r#"pgpulse_plan_check_errors_total{query="latest_ticker",kind="sql"}"#;
    let body = svc.wait_for_sample(failing, |v| v >= 2.0).await;
    assert_eq!(
        sample(
            &body,
            r#"pgpulse_plan_check_errors_total{query="latest_ticker",kind="timeout"}"#
        ),
        Some(0.0),
        "every kind starts at 0"
    );
    assert!(
        !body
            .lines()
            .any(|l| l.starts_with("pg_plan_") && !l.starts_with("pg_plan_check_applicable")),
        "no plan series without a plan:\n{body}"
    );
    // It names no trade table through a placeholder: it applies, and its failures count.
    assert_eq!(
        sample(&body, r#"pg_plan_check_applicable{query="latest_ticker"}"#),
        Some(1.0)
    );
    // The connection of a failed check is dropped, not kept: no prepared statement lingers.
    let c = db.client().await;
    let lingering = scalar(
        &c,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'pgpulse' AND state = 'idle in transaction (aborted)'",
    )
    .await;
    assert_eq!(lingering, 0);
    svc.stop().await;
}

/// Two key queries on the seed data: one on market_data with its index, one whose execution
/// would fail (division by zero) but whose plan is fine.
const TWO_PLANS: &str = "queries:
  - name: ticker
    sql: SELECT ts FROM market_data WHERE symbol = $1 ORDER BY ts DESC LIMIT 1
    params:
      - {type: text, value: BTC-USD}
    expect:
      indexes: [idx_market_data_symbol_timestamp]
  - name: never_executed
    sql: SELECT count(*) FROM candles WHERE symbol = $1 AND 1 / $2 = 1
    params:
      - {type: text, value: BTC-USD}
      - {type: int, value: 0}
    expect:
      indexes: [idx_candles_symbol_interval_time]
";

#[tokio::test(flavor = "multi_thread")]
async fn serve_never_executes_a_key_query_and_a_failing_checks_series_vanish_after_three_intervals()
{
    let db = TestDb::trade().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plans.yaml");
    std::fs::write(&path, TWO_PLANS).unwrap();
    let plans = PlanSet::load(&path).unwrap();
    let svc = start(&db.url, "queries: []\n", |cfg| {
        cfg.plans = Some(GuardConfig {
            plans: Arc::new(plans),
            interval: Duration::from_secs(3),
        });
    })
    .await;
    let cost = |q: &str| format!("pg_plan_estimated_cost{{query=\"{q}\"}}");
    let both = svc
        .wait_for("both plans checked", |b| {
            sample(b, &cost("ticker")).is_some() && sample(b, &cost("never_executed")).is_some()
        })
        .await;
    // Planned, not executed: executing it raises division by zero.
    let errors = |q: &str| format!("pgpulse_plan_check_errors_total{{query=\"{q}\",kind=\"sql\"}}");
    assert_eq!(sample(&both, &errors("never_executed")), Some(0.0));
    let p = path.to_str().unwrap();
    let analyzed = pgpulse(&["explain", "--plans", p, "--database-url", &db.url], &[]);
    let (stdout, _) = text(&analyzed);
    assert_eq!(analyzed.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("ERROR never_executed: sql: ERROR: division by zero"),
        "{stdout}"
    );
    let plain = pgpulse(
        &[
            "explain",
            "--no-analyze",
            "--plans",
            p,
            "--database-url",
            &db.url,
        ],
        &[],
    );
    assert_eq!(plain.status.code(), Some(0), "{:?}", text(&plain));

    // The ticker's table goes away: its checks fail. The round that counts the first failure
    // still shows the last good values (kept for three intervals); then they vanish.
    db.client()
        .await
        .batch_execute("DROP TABLE market_data")
        .await
        .unwrap();
    let first = svc
        .wait_for("the failed check is counted", |b| {
            sample(b, &errors("ticker")) == Some(1.0)
        })
        .await;
    assert!(sample(&first, &cost("ticker")).is_some(), "{first}");
    let gone = svc
        .wait_for("the ticker's series vanish", |b| {
            sample(b, &cost("ticker")).is_none()
        })
        .await;
    assert!(
        sample(&gone, &errors("ticker")).is_some_and(|n| n >= 3.0),
        "{gone}"
    );
    assert!(
        sample(&gone, r#"pg_plan_expected_index_used{query="ticker"}"#).is_none(),
        "{gone}"
    );
    // The other key query is still checked (its plan's verdict is the planner's business:
    // an autovacuum ANALYZE under load may change it, so only its presence is asserted).
    assert!(
        sample(
            &gone,
            r#"pg_plan_expected_index_used{query="never_executed"}"#
        )
        .is_some(),
        "{gone}"
    );
    svc.stop().await;
}
