//! Partition management on the real thing: exact names and bounds, idempotence, the
//! default-partition conflict refused without losing a row, archive detaching only old ones.

use crate::harness::{TestDb, strings};

async fn partitions(c: &tokio_postgres::Client, parent: &str) -> Vec<String> {
    c.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = $1::text::regclass ORDER BY 1",
        &[&parent],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn order_partitions_are_created_exactly_with_names_and_bounds_and_a_second_call_creates_none()
{
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let before = partitions(&c, "orders").await;
    let rows = c
        .query(
            "SELECT partition_name, to_char(range_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), \
                    to_char(range_end AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') \
             FROM monitoring.create_future_order_partitions(6) ORDER BY range_start",
            &[],
        )
        .await
        .unwrap();
    // The schema holds months up to +3; 6 ahead adds months +4, +5 and +6.
    let expected = c
        .query(
            "SELECT 'orders_' || to_char(m, 'YYYY_MM'), to_char(m, 'YYYY-MM-DD HH24:MI'), to_char(m + interval '1 month', 'YYYY-MM-DD HH24:MI') \
             FROM generate_series(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '4 months', \
                                  date_trunc('month', now() AT TIME ZONE 'UTC') + interval '6 months', interval '1 month') m",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(String, String, String)> = expected
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got, want);
    let after = partitions(&c, "orders").await;
    assert_eq!(after.len(), before.len() + 3);
    let again = c
        .query(
            "SELECT * FROM monitoring.create_future_order_partitions(6)",
            &[],
        )
        .await
        .unwrap();
    assert!(again.is_empty(), "idempotent");
    assert_eq!(partitions(&c, "orders").await, after);
    // The bound PostgreSQL stored is the one reported.
    let bound: String = c
        .query_one(
            &format!(
                "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = '{}'",
                want[0].0
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        bound.starts_with("FOR VALUES FROM ('") && bound.contains(&want[0].1[..10]),
        "{bound}"
    );
}

#[tokio::test]
async fn trade_partitions_continue_the_daily_scheme() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let rows = c
        .query("SELECT partition_name FROM monitoring.create_future_trade_partitions(20) ORDER BY range_start", &[])
        .await
        .unwrap();
    let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let want: Vec<String> = strings(&c, "SELECT 'trades_' || to_char(d, 'YYYY_MM_DD') FROM generate_series(date_trunc('day', now() AT TIME ZONE 'UTC') + interval '15 days', \
                    date_trunc('day', now() AT TIME ZONE 'UTC') + interval '20 days', interval '1 day') d").await;
    assert_eq!(got, want);
    assert!(
        c.query(
            "SELECT * FROM monitoring.create_future_trade_partitions(20)",
            &[]
        )
        .await
        .unwrap()
        .is_empty()
    );
}

#[tokio::test]
async fn a_default_partition_holding_rows_of_a_new_range_is_refused_clearly_and_no_row_is_lost() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO orders (user_id, symbol, side, order_type, price, quantity, filled_quantity, status, created_at) \
         VALUES (1, 'BTC-USD', 'buy', 'limit', 1, 1, 0, 'open', date_trunc('month', now()) + interval '5 months' + interval '3 days')",
    )
    .await
    .unwrap();
    let count = || async {
        let total: i64 = c
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .unwrap()
            .get(0);
        let default: i64 = c
            .query_one("SELECT count(*) FROM orders_default", &[])
            .await
            .unwrap()
            .get(0);
        (total, default)
    };
    let before = count().await;
    assert_eq!(before.1, 1);
    let parts_before = partitions(&c, "orders").await;
    let err = c
        .query(
            "SELECT * FROM monitoring.create_future_order_partitions(6)",
            &[],
        )
        .await
        .unwrap_err();
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| err.to_string());
    assert!(
        msg.contains("orders_default"),
        "names the default partition: {msg}"
    );
    assert!(msg.contains('1'), "says how many rows: {msg}");
    assert_eq!(count().await, before, "no row moved or lost");
    assert_eq!(
        partitions(&c, "orders").await,
        parts_before,
        "nothing created"
    );
}

#[tokio::test]
async fn archive_detaches_only_partitions_older_than_the_retention_and_never_drops() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    // The schema holds months -3..+3: with 1 month retention, months -3 and -2 are older.
    let before = partitions(&c, "orders").await;
    let rows = c
        .query(
            "SELECT parent, partition_name FROM monitoring.archive_old_partitions(1) ORDER BY 2",
            &[],
        )
        .await
        .unwrap();
    let detached: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let old_orders: Vec<String> = strings(&c, "SELECT 'orders_' || to_char(date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => m), 'YYYY_MM') FROM generate_series(2, 3) m ORDER BY 1").await;
    let got_orders: Vec<String> = detached
        .iter()
        .filter(|(p, _)| p == "orders")
        .map(|(_, n)| n.clone())
        .collect();
    assert_eq!(got_orders, old_orders);
    assert!(detached.iter().all(|(p, _)| p == "orders" || p == "trades"));
    let after = partitions(&c, "orders").await;
    assert_eq!(after.len(), before.len() - 2);
    for name in &old_orders {
        let exists: bool = c
            .query_one(&format!("SELECT to_regclass('{name}') IS NOT NULL"), &[])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "{name} detached, not dropped");
    }
}
