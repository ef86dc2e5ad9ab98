//! Catalog queries rewritten to cost less at 40,000 relations (issue 14) report what the
//! `monitoring.v_*` view they replace reports, on the same database and statistics snapshot.

use pgpulse::catalog::{Catalog, Defaults};

use crate::harness::TestDb;

/// The SQL of the shipped catalog's query `name`.
fn shipped_sql(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/queries.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let catalog = Catalog::parse(&text, path.as_ref(), Defaults::default()).unwrap();
    let spec = catalog.queries.iter().find(|q| q.name == name).unwrap();
    spec.sql.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn database_cache_reads_the_database_row_of_v_cache_hit_ratio() {
    let db = TestDb::trade_migrated().await;
    let mut c = db.client().await;
    let txn = c.transaction().await.unwrap();
    txn.batch_execute("SET LOCAL stats_fetch_consistency = snapshot")
        .await
        .unwrap();
    let ours = txn
        .query_one(&shipped_sql("database_cache"), &[])
        .await
        .unwrap();
    let view = txn
        .query_one(
            "SELECT current_database() AS datname, blks_hit, blks_read, hit_ratio
               FROM monitoring.v_cache_hit_ratio WHERE metric = 'database'",
            &[],
        )
        .await
        .unwrap();
    let hits: i64 = ours.get("blks_hit");
    assert!(hits > 0, "the database has block hits");
    assert_eq!(
        ours.get::<_, String>("datname"),
        view.get::<_, String>("datname")
    );
    assert_eq!(hits, view.get::<_, i64>("blks_hit"));
    assert_eq!(
        ours.get::<_, i64>("blks_read"),
        view.get::<_, i64>("blks_read")
    );
    assert_eq!(
        ours.get::<_, Option<f64>>("hit_ratio"),
        view.get::<_, Option<f64>>("hit_ratio")
    );
}
