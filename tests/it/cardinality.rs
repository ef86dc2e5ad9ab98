//! Cardinality is a contract: 10,000 partitions roll up to their parent and the total
//! series stay within the configured budgets.

use crate::catalog::{catalog_every, wait_for};
use crate::harness::TestDb;
use crate::service::{sample, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_partitions_stay_within_the_series_budget() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    // 10 parents of 1,000 partitions each: 10,000 partitions, without the quadratic cost of
    // attaching 10,000 partitions to one parent (which takes minutes on this machine).
    let t0 = std::time::Instant::now();
    for t in 0..10 {
        c.batch_execute(&format!(
            "CREATE TABLE ticks{t} (id int NOT NULL, v int) PARTITION BY RANGE (id); CREATE INDEX ON ticks{t} (v); \
             DO $$ BEGIN FOR i IN 0 .. 999 LOOP \
               EXECUTE format('CREATE TABLE ticks{t}_%s PARTITION OF ticks{t} FOR VALUES FROM (%s) TO (%s)', i, i * 10, i * 10 + 10); \
             END LOOP; END $$;"
        ))
        .await
        .unwrap();
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname LIKE 'ticks_' AND p.relkind = 'p'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10_000);
    eprintln!("created 10,000 partitions in {:?}", t0.elapsed());
    let t1 = std::time::Instant::now();
    // Every query at 10 s, all due at once: some 40 queries over 10,000 partitions queue for the
    // budget of 3 connections on two loaded cores. This test is about series budgets, so they
    // may wait for a connection longer than the default 2 s.
    let catalog = catalog_every(10);
    let svc = start(&db.url, &catalog, |cfg| {
        cfg.pool_wait_timeout = std::time::Duration::from_secs(30);
    })
    .await;
    let body = wait_for(&svc, "tables and partitions sampled", |b| {
        (0..10)
            .all(|t| sample(b, &format!("pg_partitions{{parent=\"ticks{t}\"}}")) == Some(1_000.0))
            && sample(
                b,
                "pg_table_size_bytes{schemaname=\"public\",relname=\"ticks0\"}",
            )
            .is_some()
            && b.contains("pg_index_size_bytes{")
    })
    .await;
    eprintln!("sampled in {:?}", t1.elapsed());
    let cat = pgpulse::catalog::Catalog::parse(&catalog, "q".as_ref(), Default::default()).unwrap();
    let budget: usize = cat.queries.iter().map(|q| q.max_series).sum();
    let exposed: f64 = body
        .lines()
        .filter(|l| l.starts_with("pgpulse_query_series{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        exposed as usize <= budget,
        "{exposed} series, budget {budget}"
    );
    let table_series = body
        .lines()
        .filter(|l| l.starts_with("pg_table_size_bytes{"))
        .count();
    assert!(
        table_series <= 100,
        "partitions rolled up: {table_series} table series"
    );
    let partition_as_table = |l: &&str| {
        let relname = l
            .split(",relname=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        relname.starts_with("ticks") && relname.contains('_')
    };
    assert_eq!(
        body.lines().filter(partition_as_table).count(),
        0,
        "no partition appears as a table"
    );
    let pg_lines = body.lines().filter(|l| l.starts_with("pg_")).count();
    assert!(
        pg_lines < 2_000,
        "{pg_lines} pg_ sample lines for 10,000 partitions"
    );
    svc.stop().await;
}
