//! Demo scenarios: each makes one alert condition true within a minute, so a user can watch
//! the metric move. Setup happens before sampling starts; conditions that need ongoing load
//! (slow statements, lock waits, cache misses) keep a background task running until stop.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::db::DatabaseTarget;

/// The conditions the demo can induce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A 20 MB table with half its rows dead (autovacuum off): dead-tuple ratio above 30 %.
    Bloat,
    /// Statements taking 150–400 ms (as `demo_trader`): statement p99 above 100 ms, slow
    /// statements counted exactly from the slow-statement log.
    Slow,
    /// The classic trading outage: a report idle in transaction holds `trades`, a migration's
    /// `ALTER TABLE` waits for it, and trade inserts queue behind the migration.
    Locks,
    /// Tiny shared_buffers and repeated scans of a larger table: cache hit ratio below 95 %.
    CacheMiss,
    /// Future trade partitions dropped and a row in the default partition: runway below 2 days.
    PartitionGap,
    /// A PgBouncer with a pool of 2 in front of the trade database and 16 clients running
    /// 20 ms statements through it: orders queue in PgBouncer while every PostgreSQL signal
    /// stays green.
    PoolExhaustion,
}

impl Scenario {
    /// The alerts of the bundled rules the scenario makes fire (the demo's status line always
    /// shows them).
    pub fn alerts(self) -> &'static [&'static str] {
        match self {
            Self::Bloat => &["PgTableBloatHigh"],
            Self::Slow => &["PgStatementLatencyP99High", "PgStatementSlowShareHigh"],
            Self::Locks => &["PgTradeTableLockQueue", "PgLockWaitLong"],
            Self::CacheMiss => &["PgCacheHitRatioLow"],
            Self::PartitionGap => &["PgPartitionRunwayCritical", "PgDefaultPartitionHasRows"],
            Self::PoolExhaustion => &["PgBouncerClientsWaitingTrading"],
        }
    }

    /// The metric to watch, for the demo's banner.
    pub fn watch(self) -> &'static str {
        match self {
            Self::Bloat => "pg_table_dead_tuple_ratio{relname=\"demo_bloat\"} (above 0.3)",
            Self::Slow => {
                "histogram_quantile(0.99, rate(pg_statement_latency_seconds_bucket[1m])) (above 0.1), pg_slow_statements and pg_statement_executions_over_threshold_total{user=\"demo_trader\"} (PgStatementSlowShareHigh)"
            }
            Self::Locks => {
                "pg_trade_table_lock_queue{table=\"trades\"} (1: writes to trades stop), pg_lock_root_blocked_sessions{application_name=\"demo_report\"} (the root, idle in transaction) and /debug/locks (the chain: report, the waiting ALTER TABLE, the inserts behind it)"
            }
            Self::CacheMiss => {
                "pg_cache_hit_ratio{kind=\"heap\"} and pg_database_cache_hit_ratio (below 0.95)"
            }
            Self::PartitionGap => {
                "pg_partition_runway_seconds{parent=\"trades\"} (below 172800) and pg_partition_default_rows"
            }
            Self::PoolExhaustion => {
                "pgbouncer_pool_clients{state=\"waiting\"} at /probe?target=pgbouncer (above 0), while /probe?target=primary stays green"
            }
        }
    }
}

/// What a scenario's setup returns: the task that keeps the condition true, if one is needed.
type Setup = std::result::Result<Option<tokio::task::JoinHandle<()>>, String>;

/// Prepares the condition; returns a task that keeps it true until `stop`, if one is needed.
pub(crate) async fn apply(
    scenario: Scenario,
    client: &Client,
    target: &DatabaseTarget,
    bouncer: Option<&str>,
    stop: CancellationToken,
) -> Setup {
    match scenario {
        Scenario::PoolExhaustion => pool_exhaustion(bouncer, stop).await,
        Scenario::Bloat => bloat(client).await,
        Scenario::PartitionGap => partition_gap(client).await,
        Scenario::CacheMiss => cache_miss(client, target, stop).await,
        Scenario::Slow => slow(client, target, stop).await,
        Scenario::Locks => locks(target, stop).await,
    }
}

fn describe(e: tokio_postgres::Error) -> String {
    crate::db::outcome::describe(&e)
}

async fn bloat(client: &Client) -> Setup {
    client
        .batch_execute(
            "CREATE TABLE demo_bloat (id int, pad text) WITH (autovacuum_enabled = false);
             INSERT INTO demo_bloat SELECT g, repeat('x', 80) FROM generate_series(1, 200000) g;
             DELETE FROM demo_bloat WHERE id % 2 = 0;
             SELECT pg_stat_force_next_flush();",
        )
        .await
        .map_err(describe)?;
    Ok(None)
}

async fn partition_gap(client: &Client) -> Setup {
    client
        .batch_execute(
            "DO $$ DECLARE r record; BEGIN
               FOR r IN SELECT partition_relname FROM monitoring.partition_bounds('trades'::regclass)
                         WHERE NOT is_default AND range_start >= date_trunc('day', now()) + interval '1 day'
               LOOP EXECUTE format('DROP TABLE %I', r.partition_relname); END LOOP;
             END $$;
             INSERT INTO trades (symbol, price, quantity, maker_order_id, taker_order_id, maker_user_id, taker_user_id, executed_at)
               VALUES ('BTC-USD', 100, 1, 1, 2, 1, 2, now() + interval '3 days');",
        )
        .await
        .map_err(describe)?;
    Ok(None)
}

async fn cache_miss(client: &Client, target: &DatabaseTarget, stop: CancellationToken) -> Setup {
    client
        .batch_execute(
            "CREATE TABLE demo_cold (id int, pad text);
             INSERT INTO demo_cold SELECT g, repeat('c', 200) FROM generate_series(1, 60000) g;",
        )
        .await
        .map_err(describe)?;
    let sql = "SELECT count(*) FROM demo_cold WHERE pad LIKE 'z%'";
    Ok(Some(
        loop_task(target, stop, sql, Duration::from_millis(200)).await?,
    ))
}

/// Eight clients per server connection of PgBouncer's pool (2), each sending 20 ms statements
/// back to back through `bouncer` (a URL): clients always wait in PgBouncer's queue, while
/// PostgreSQL sees two short statements at a time.
async fn pool_exhaustion(bouncer: Option<&str>, stop: CancellationToken) -> Setup {
    let url = bouncer.ok_or("the pool-exhaustion scenario needs the demo's PgBouncer")?;
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(describe)?;
        tokio::spawn(conn);
        clients.push(c);
    }
    Ok(Some(tokio::spawn(async move {
        let busy = clients.iter().map(|c| async move {
            loop {
                if let Err(e) = c.batch_execute("SELECT pg_sleep(0.02)").await {
                    tracing::debug!(error = %e, "scenario statement failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = futures_util::future::join_all(busy) => {}
        }
    })))
}

/// A role of its own, so the dashboard shows who is slow; pgpulse (role `pgpulse`) and the
/// order workload (`postgres`) stay fast.
async fn slow(client: &Client, target: &DatabaseTarget, stop: CancellationToken) -> Setup {
    client
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE demo_trader LOGIN; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        )
        .await
        .map_err(describe)?;
    let mut config = target.config().clone();
    config.user("demo_trader");
    let trader = DatabaseTarget::from_config(config);
    let sql = "SELECT 1 AS slow, pg_sleep(0.15 + random() * 0.25)";
    Ok(Some(
        loop_task(&trader, stop, sql, Duration::from_millis(50)).await?,
    ))
}

/// The classic trading outage: a report idle in transaction holds the trades table, a
/// migration's `ALTER TABLE` waits for it, and every trade insert (one of the scenario's, then
/// the workload's) queues behind the migration. At stop the migration is cancelled first (the
/// runbook's advice) and the report rolled back, so the schema stays as it was.
async fn locks(target: &DatabaseTarget, stop: CancellationToken) -> Setup {
    let report = session(target, "demo_report").await?;
    report
        .batch_execute("BEGIN; SELECT count(*) FROM trades WHERE symbol = 'BTC-USD'")
        .await
        .map_err(describe)?;
    let migration = session(target, "demo_migration").await?;
    let engine = session(target, "demo_engine").await?;
    Ok(Some(tokio::spawn(async move {
        let alter = migration.batch_execute("ALTER TABLE trades ADD COLUMN demo_note text");
        // The insert is sent once the ALTER waits, so it queues behind it.
        let insert = async {
            wait_for_lock_waiters(&engine, 1).await;
            engine
                .batch_execute(
                    "INSERT INTO trades (symbol, price, quantity, maker_order_id, taker_order_id, \
                     maker_user_id, taker_user_id) VALUES ('ETH-USD', 1, 1, 1, 2, 1, 2)",
                )
                .await
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            r = async { tokio::join!(alter, insert) } => {
                tracing::warn!(result = ?r, "the locks scenario ended before stop");
            }
        }
        // The report's transaction has not read pg_stat_activity yet: this is a fresh view.
        let _ = report
            .batch_execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'demo_migration' AND datname = current_database()",
            )
            .await;
        let _ = report.batch_execute("ROLLBACK").await;
    })))
}

/// A connection of the scenario named `application_name` (what pg_lock_root_* labels show).
async fn session(target: &DatabaseTarget, application_name: &str) -> Result<Client, String> {
    let mut config = target.config().clone();
    config.application_name(application_name);
    crate::db::connect(&DatabaseTarget::from_config(config))
        .await
        .map_err(|e| e.to_string())
}

/// Polls until `n` sessions of the database wait for a lock (on a session outside a
/// transaction: a transaction sees one snapshot of pg_stat_activity).
async fn wait_for_lock_waiters(client: &Client, n: i64) {
    loop {
        let waiting = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0));
        if !matches!(waiting, Ok(w) if w < n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn loop_task(
    target: &DatabaseTarget,
    stop: CancellationToken,
    sql: &'static str,
    pause: Duration,
) -> std::result::Result<tokio::task::JoinHandle<()>, String> {
    let client = crate::db::connect(target)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = client.batch_execute(sql) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "scenario statement failed");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }))
}
