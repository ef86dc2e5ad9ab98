//! The trade tables as configuration (issue 27, item 2), on real PostgreSQL: a database whose
//! trade tables live in schema `exchange` under other names (one of them hostile: a quote, a
//! semicolon and a comment in its name) beside an unrelated `public.orders`, through migrate,
//! verify, the plan check of serve, the partition families and explain; and a database
//! without trade tables, where the plan checks are "not applicable" and every family works.

use crate::harness::exec;
use std::sync::Arc;
use std::time::Duration;

use pgpulse::db::lease::Budget;
use pgpulse::plans::GuardConfig;
use pgpulse::plans::guard::{PlanGuard, PlanLabel};
use prometheus_client::registry::Registry;

use crate::harness::{PATIENCE, TestDb, eventually, pgpulse, scalar, strings, text};
use crate::service::{sample, start};

/// The market data table's name: an attacker's try at SQL injection through configuration.
const HOSTILE: &str = "ti\"cks; DROP TABLE public.orders; --";

/// The trade tables under other names in schema `exchange`, partitioned by other columns, and
/// an unrelated, unpartitioned `public.orders` with autovacuum settings of its own.
const SCHEMA: &str = r#"
CREATE TABLE public.orders (id bigint PRIMARY KEY, note text)
    WITH (autovacuum_vacuum_scale_factor = 0.3);
CREATE SCHEMA exchange;
CREATE TABLE exchange.client_orders (
    id bigint, user_id bigint, symbol text, side text, price numeric, quantity numeric,
    filled_quantity numeric, status text, placed_at timestamptz NOT NULL,
    CONSTRAINT orders_pkey PRIMARY KEY (id, placed_at)) PARTITION BY RANGE (placed_at);
CREATE TABLE exchange.fills (
    id bigint, symbol text, price numeric, quantity numeric, maker_order_id bigint,
    maker_user_id bigint, filled_at timestamptz NOT NULL) PARTITION BY RANGE (filled_at);
CREATE TABLE exchange.book (symbol text, side text, price numeric, quantity numeric,
    order_count int);
CREATE TABLE exchange."ti""cks; DROP TABLE public.orders; --" (id bigint, symbol text,
    last_price numeric, bid numeric, ask numeric, volume numeric, ts timestamptz);
CREATE TABLE exchange.bars (symbol text, "interval" text, open_time timestamptz, open numeric,
    high numeric, low numeric, close numeric, volume numeric);
CREATE INDEX idx_orders_user_status ON exchange.client_orders (user_id, status);
CREATE INDEX idx_orders_status_created ON exchange.client_orders (status, placed_at);
CREATE INDEX idx_trades_symbol_time ON exchange.fills (symbol, filled_at);
CREATE INDEX idx_trades_maker_user_time ON exchange.fills (maker_user_id, filled_at);
CREATE INDEX idx_orderbook_symbol_side_price ON exchange.book (symbol, side, price);
CREATE INDEX idx_market_data_symbol_timestamp
    ON exchange."ti""cks; DROP TABLE public.orders; --" (symbol, ts);
CREATE INDEX idx_candles_symbol_interval_time ON exchange.bars (symbol, "interval", open_time);
DO $$
DECLARE m timestamptz := date_trunc('month', now(), 'UTC');
        d timestamptz := date_trunc('day', now(), 'UTC');
BEGIN
    FOR i IN -1..1 LOOP
        EXECUTE format('CREATE TABLE exchange.%I PARTITION OF exchange.client_orders FOR VALUES FROM (%L) TO (%L)',
                       'client_orders_' || (i + 1), m + make_interval(months => i), m + make_interval(months => i + 1));
    END LOOP;
    FOR i IN -8..1 LOOP
        EXECUTE format('CREATE TABLE exchange.%I PARTITION OF exchange.fills FOR VALUES FROM (%L) TO (%L)',
                       'fills_' || (i + 8), d + make_interval(days => i), d + make_interval(days => i + 1));
    END LOOP;
END $$;
CREATE TABLE exchange.client_orders_default PARTITION OF exchange.client_orders DEFAULT;
CREATE TABLE exchange.fills_default PARTITION OF exchange.fills DEFAULT;
"#;

fn config_yaml() -> String {
    let hostile = HOSTILE.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "trade_tables:\n  \
         orders: {{schema: exchange, name: client_orders, partition_column: placed_at}}\n  \
         trades: {{schema: exchange, name: fills, partition_column: filled_at}}\n  \
         order_book: {{schema: exchange, name: book}}\n  \
         market_data: {{schema: exchange, name: \"{hostile}\"}}\n  \
         candles: {{schema: exchange, name: bars}}\n"
    )
}

async fn reloptions(c: &tokio_postgres::Client, rel: &str) -> String {
    let sql = format!(
        "SELECT coalesce(array_to_string(reloptions, ','), '') FROM pg_class WHERE oid = '{}'::regclass",
        rel.replace('\'', "''")
    );
    strings(c, &sql).await.concat()
}

/// The plan guard of serve on `url` with `tables`, checked directly: one round's result.
async fn guard_for(url: &str, config: &str) -> Arc<PlanGuard> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgpulse.yaml");
    std::fs::write(&path, format!("database:\n  url: {url}\n{config}")).unwrap();
    let settings = pgpulse::config::load(Some(&path), true, &Default::default()).unwrap();
    let cfg = settings.validate().unwrap();
    let budget = Budget::new(pgpulse::db::pool::build(&cfg.pool_settings()).unwrap());
    let plans: GuardConfig = cfg.plans.clone().unwrap();
    let mut registry = Registry::default();
    PlanGuard::new(
        &mut registry,
        budget,
        plans,
        Duration::from_secs(1),
        Default::default(),
    )
}

fn label(q: &str) -> PlanLabel {
    PlanLabel {
        query: q.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trade_tables_under_other_names_in_another_schema_work_through_the_whole_chain() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(&c, SCHEMA).await;
    let before = reloptions(&c, "public.orders").await;
    assert_eq!(before, "autovacuum_vacuum_scale_factor=0.3");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgpulse.yaml");
    std::fs::write(&cfg, config_yaml()).unwrap();
    let cfg = cfg.to_str().unwrap();

    // migrate: the mapped tables tuned, the unrelated public.orders exactly as it was.
    let out = pgpulse(
        &["migrate", "--config", cfg, "--database-url", &db.url],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(r#"tuned   orders "exchange"."client_orders""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"skipped "public"."orders": not a configured trade table"#),
        "{stdout}"
    );
    assert_eq!(reloptions(&c, "public.orders").await, before);
    assert_eq!(scalar(&c, "SELECT count(*) FROM public.orders").await, 0);
    let tuned = "autovacuum_vacuum_scale_factor=0.1,autovacuum_analyze_scale_factor=0.05";
    assert_eq!(
        reloptions(&c, "exchange.client_orders_default").await,
        tuned
    );
    assert_eq!(
        reloptions(&c, "exchange.book").await,
        "autovacuum_vacuum_scale_factor=0.02,autovacuum_analyze_scale_factor=0.01"
    );
    let hostile = format!("exchange.\"{}\"", HOSTILE.replace('"', "\"\""));
    assert_eq!(
        reloptions(&c, &hostile).await,
        "autovacuum_vacuum_scale_factor=0.2,autovacuum_analyze_scale_factor=0.1"
    );
    // A second migrate changes nothing and says so.
    let again = text(&pgpulse(
        &["migrate", "--config", cfg, "--database-url", &db.url],
        &[],
    ))
    .0;
    assert!(again.contains("(0 changed, 4 already set)"), "{again}");
    assert_eq!(reloptions(&c, "public.orders").await, before);

    // verify: one line per trade table.
    let (stdout, _) = text(&pgpulse(
        &["verify", "--config", cfg, "--database-url", &db.url],
        &[],
    ));
    for want in [
        r#"TABLE orders "exchange"."client_orders": found, partitioned by "placed_at""#,
        r#"TABLE trades "exchange"."fills": found, partitioned by "filled_at""#,
        r#"TABLE candles "exchange"."bars": found, a plain table"#,
    ] {
        assert!(stdout.contains(want), "{want}\n{stdout}");
    }

    // serve's plan check: every key query applies and is explained on the mapped tables.
    let guard = guard_for(&db.url, &config_yaml()).await;
    let round = guard.check_once().await;
    assert!(
        round.errors.is_empty() && round.not_applicable.is_empty(),
        "{round:?}"
    );
    assert_eq!(round.passed.len() + round.failed.len(), 10, "{round:?}");
    let m = guard.metrics();
    let leaves = |t: &str| format!("SELECT count(*) FROM pg_partition_tree('{t}') WHERE isleaf");
    let orders_leaves = scalar(&c, &leaves("exchange.client_orders")).await;
    let q = label("orders_partition_pruning");
    assert_eq!(m.applicable.get_or_create(&q).get(), 1);
    assert_eq!(m.partitions_total.get_or_create(&q).get(), orders_leaves);
    assert_eq!(m.partitions_scanned.get_or_create(&q).get(), 1);
    let t = label("trades_partition_pruning");
    assert_eq!(
        m.partitions_total.get_or_create(&t).get(),
        scalar(&c, &leaves("exchange.fills")).await
    );
    assert_eq!(m.index_used.get_or_create(&label("latest_ticker")).get(), 1);

    // The partition family reports the mapped tables.
    let catalog =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/queries.yaml")).unwrap();
    let svc = start(&db.url, &catalog, |_| {}).await;
    let series = r#"pg_partitions{parent="exchange.client_orders"}"#;
    let body = svc.wait_for_sample(series, |_| true).await;
    let direct = scalar(
        &c,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'exchange.client_orders'::regclass",
    )
    .await;
    assert_eq!(sample(&body, series), Some(direct as f64), "{body}");
    svc.stop().await;

    // explain: every key query explained on the mapped tables, exit 0.
    let out = pgpulse(
        &[
            "explain",
            "--no-analyze",
            "--config",
            cfg,
            "--database-url",
            &db.url,
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("PASS")).count(),
        10,
        "{stdout}"
    );
    assert_eq!(scalar(&c, "SELECT count(*) FROM public.orders").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_trade_tables_plan_checks_are_not_applicable_and_every_family_works() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;

    // Two rounds of serve's plan check: nothing explained, nothing counted as an error.
    let guard = guard_for(&db.url, "").await;
    for _ in 0..2 {
        let round = guard.check_once().await;
        assert_eq!(round.not_applicable.len(), 10, "{round:?}");
        assert!(
            round.errors.is_empty() && round.failed.is_empty(),
            "{round:?}"
        );
    }
    let m = guard.metrics();
    assert_eq!(
        m.applicable.get_or_create(&label("orders_by_user")).get(),
        0
    );
    assert_eq!(m.cost.get_or_create(&label("orders_by_user")).get(), 0.0);

    // explain says so and exits 0.
    let out = pgpulse(&["explain", "--no-analyze", "--database-url", &db.url], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("N/A")).count(),
        10,
        "{stdout}"
    );
    assert!(
        stdout
            .contains(r#"N/A   orders_by_user: not applicable: orders "public"."orders": missing"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("no key query applies to this database"),
        "{stdout}"
    );

    // Every family of the built-in catalog that runs here succeeds; the partition families
    // are empty, without errors.
    let catalog =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/queries.yaml")).unwrap();
    let svc = start(&db.url, &catalog, |cfg| cfg.plans = None).await;
    let defaults = pgpulse::catalog::Defaults {
        interval: Duration::from_secs(15),
        timeout: Duration::from_secs(5),
    };
    let names: Vec<String> = pgpulse::catalog::Catalog::builtin(defaults)
        .unwrap()
        .queries
        .iter()
        .map(|q| q.name.clone())
        .collect();
    let enabled: Vec<String> = eventually(PATIENCE, || async {
        let b = svc.metrics().await;
        let state = |q: &String| sample(&b, &format!("pgpulse_query_enabled{{query=\"{q}\"}}"));
        let ran = |q: &String| {
            sample(
                &b,
                &format!("pgpulse_query_last_success_timestamp_seconds{{query=\"{q}\"}}"),
            )
            .is_some()
        };
        // Every query has its gate decided, and every one that runs here has succeeded.
        let all = names.iter().all(|q| match state(q) {
            Some(1.0) => ran(q),
            Some(_) => true,
            None => false,
        });
        all.then(|| {
            names
                .iter()
                .filter(|q| state(q) == Some(1.0))
                .cloned()
                .collect()
        })
    })
    .await
    .expect("every enabled query succeeds");
    assert!(enabled.iter().any(|q| q == "partitions"), "{enabled:?}");
    let body = svc.metrics().await;
    assert!(
        !body.lines().any(|l| l.starts_with("pg_partitions{")),
        "{body}"
    );
    assert!(
        !body
            .lines()
            .any(|l| l.starts_with("pgpulse_query_errors_total{") && !l.ends_with(" 0")),
        "{body}"
    );
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM pg_partitioned_table").await,
        0
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_resets_only_the_exact_settings_pgpulse_left_on_a_same_named_unrelated_table() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(
        &c,
        "CREATE TABLE public.orders (id bigint); CREATE TABLE public.trades (id bigint)",
    )
    .await;
    // A fresh install: V006 tunes the reference names, and migrate puts them back at once.
    db.migrate().await;
    assert_eq!(reloptions(&c, "public.orders").await, "");
    assert_eq!(reloptions(&c, "public.trades").await, "");
    // What an earlier pgpulse left (V006's exact values) and a setting of the shop's own.
    exec(
        &c,
        "ALTER TABLE public.orders SET (autovacuum_vacuum_scale_factor = 0.1, \
                                        autovacuum_analyze_scale_factor = 0.05); \
         ALTER TABLE public.trades SET (autovacuum_vacuum_scale_factor = 0.05, \
                                        autovacuum_analyze_scale_factor = 0.03)",
    )
    .await;
    let out = pgpulse(&["migrate", "--database-url", &db.url], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    for want in [
        r#"skipped orders "public"."orders": wrong shape: a plain table, expected partitioned by "created_at""#,
        r#"skipped "public"."orders": not a configured trade table of the expected shape; its autovacuum settings left as they were (1 table(s) restored)"#,
        r#"skipped "public"."trades": not a configured trade table of the expected shape; its autovacuum settings left as they were (0 table(s) restored)"#,
    ] {
        assert!(stdout.contains(want), "{want}\n{stdout}");
    }
    assert_eq!(reloptions(&c, "public.orders").await, "");
    assert_eq!(
        reloptions(&c, "public.trades").await,
        "autovacuum_vacuum_scale_factor=0.05,autovacuum_analyze_scale_factor=0.03"
    );
}

#[test]
fn an_empty_trade_table_name_is_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgpulse.yaml");
    std::fs::write(&cfg, "trade_tables:\n  orders: {name: \"\"}\n").unwrap();
    let out = pgpulse(&["check-config", "--config", cfg.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("`trade_tables.orders.name`: must not be empty"),
        "{stderr}"
    );
}
