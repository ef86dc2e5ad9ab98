//! A synthetic trade workload: orders placed and cancelled, trades executed, order book
//! reads and writes, market data ticks and candles, at a modest configurable rate; and two
//! key queries of plans.yaml sent as the trading UI sends them (typed parameters, the extended
//! protocol), so that their SLOs have calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

/// Counters of what the workload did.
#[derive(Debug, Default)]
pub struct WorkloadStats {
    /// Orders placed.
    pub orders: AtomicU64,
    /// Trades executed.
    pub trades: AtomicU64,
    /// Statements that failed.
    pub errors: AtomicU64,
}

const SYMBOLS: [&str; 5] = ["BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD", "DOT-USD"];

/// One round of the workload: a handful of statements of every kind.
pub async fn round(client: &Client, i: u64, stats: &WorkloadStats) {
    let symbol = SYMBOLS
        .get((i % SYMBOLS.len() as u64) as usize)
        .copied()
        .unwrap_or("BTC-USD");
    let price = 100.0 + (i % 50) as f64;
    let user = (i % 100) as i64 + 1;
    let sql = format!(
        "INSERT INTO orders (user_id, symbol, side, order_type, price, quantity, filled_quantity, status, created_at) \
           VALUES ({user}, '{symbol}', '{side}', 'limit', {price}, 1, 0, 'open', now());
         UPDATE orders SET status = 'cancelled', updated_at = now() \
           WHERE id = (SELECT max(id) FROM orders WHERE user_id = {user} AND status = 'open' AND created_at > now() - interval '1 day') \
             AND created_at > now() - interval '1 day' AND {cancel};
         INSERT INTO trades (symbol, price, quantity, maker_order_id, taker_order_id, maker_user_id, taker_user_id, executed_at) \
           VALUES ('{symbol}', {price}, 0.5, {i}, {i} + 1, {user}, {user} + 1, now());
         INSERT INTO order_book (symbol, side, price, quantity, order_count, updated_at) \
           VALUES ('{symbol}', '{side}', {price}, 1, 1, now()) \
           ON CONFLICT (symbol, side, price) DO UPDATE SET quantity = order_book.quantity + 1, \
             order_count = order_book.order_count + 1, updated_at = now();
         INSERT INTO market_data (symbol, ts, last_price, bid, ask, volume) \
           VALUES ('{symbol}', now(), {price}, {price} - 0.5, {price} + 0.5, 10);
         INSERT INTO candles (symbol, interval, open_time, open, high, low, close, volume) \
           VALUES ('{symbol}', '1m', date_trunc('minute', now()), {price}, {price}, {price}, {price}, 1) \
           ON CONFLICT (symbol, interval, open_time) DO UPDATE SET close = excluded.close, \
             high = greatest(candles.high, excluded.high), low = least(candles.low, excluded.low), \
             volume = candles.volume + 1;
         SELECT side, price, quantity FROM order_book WHERE symbol = '{symbol}' ORDER BY side, price LIMIT 20;
         SELECT * FROM trades WHERE symbol = '{symbol}' AND executed_at > now() - interval '1 hour' ORDER BY executed_at DESC LIMIT 50;",
        side = side(i),
        cancel = if i.is_multiple_of(3) { "true" } else { "false" },
    );
    let done = match client.batch_execute(&sql).await {
        Ok(()) => ui_reads(client, symbol, side(i), user).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => {
            stats.orders.fetch_add(1, Ordering::Relaxed);
            stats.trades.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "workload statement failed");
        }
    }
}

fn side(i: u64) -> &'static str {
    if i.is_multiple_of(2) { "buy" } else { "sell" }
}

/// The SQL of the key queries `order_book_depth` and `orders_by_user` of the built-in
/// plans.yaml (the demo's schema is the reference schema).
fn key_sql() -> Option<&'static [String; 2]> {
    static SQL: OnceLock<Option<[String; 2]>> = OnceLock::new();
    SQL.get_or_init(|| {
        let plans = crate::plans::PlanSet::built_in().ok()?;
        let sql = |name: &str| Some(plans.queries.iter().find(|q| q.name == name)?.sql.clone());
        Some([sql("order_book_depth")?, sql("orders_by_user")?])
    })
    .as_ref()
}

/// The trading UI's reads: the order book depth of `symbol` and `user`'s open orders, with
/// the parameter types of plans.yaml (the same types make the same query_id).
async fn ui_reads(
    client: &Client,
    symbol: &str,
    side: &str,
    user: i64,
) -> Result<(), tokio_postgres::Error> {
    let Some([book, orders]) = key_sql() else {
        return Ok(());
    };
    client
        .query_typed(book, &[(&symbol, Type::TEXT), (&side, Type::TEXT)])
        .await?;
    client
        .query_typed(orders, &[(&user, Type::INT8), (&"open", Type::TEXT)])
        .await?;
    Ok(())
}

/// Runs rounds at `rate` per second until `stop`.
pub async fn run(client: Client, rate: u32, stats: Arc<WorkloadStats>, stop: CancellationToken) {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        round(&client, i, &stats).await;
        i += 1;
    }
}
