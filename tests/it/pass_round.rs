//! The relation pass's ordinary round reads the statistics alone (`STATS_SQL`) and the
//! structure again only when a relation was created, altered or dropped: after each kind of
//! change, what a round returns equals a full read (`FACTS_SQL`) in the same snapshot.

use std::time::Instant;

use pgpulse::sampler::relations::facts::{self, Facts, Relation};
use tokio_postgres::Client;

use crate::harness::{TestDb, cluster_without_autovacuum, flush_stats};

/// Every relation of a pass, as text (a time never had is NaN, which `==` would not match).
fn digest(f: &Facts) -> Vec<String> {
    // Where a name sits in the pass's list of names depends on the order of the read: the
    // names themselves are compared instead.
    let arena = ["schema: ", "name_at: ", "name_len: "];
    let shown = |r: &Relation| -> String {
        let fields = format!("{r:?}");
        let kept: Vec<&str> = fields
            .split(", ")
            .filter(|field| !arena.iter().any(|a| field.starts_with(a)))
            .collect();
        format!("{}.{} {}", f.schema(r), f.name(r), kept.join(", "))
    };
    let mut all: Vec<String> = f.relations.iter().map(shown).collect();
    all.sort();
    all
}

/// A round after `previous` (with `full`), and a full read, in one statistics snapshot.
async fn round_and_full(c: &mut Client, previous: Facts, full: bool) -> (Facts, Facts) {
    let txn = c.build_transaction().read_only(true).start().await.unwrap();
    txn.batch_execute("SET LOCAL stats_fetch_consistency = snapshot")
        .await
        .unwrap();
    let round = facts::refresh_facts(&txn, Some(previous), full)
        .await
        .unwrap();
    let whole = facts::read_facts(&txn, 0).await.unwrap();
    txn.commit().await.unwrap();
    (round, whole)
}

/// Runs `sql` and flushes the session's statistics (they are flushed when it goes idle).
async fn run(c: &Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    flush_stats(c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_round_reads_the_statistics_alone_until_a_relation_is_created_altered_or_dropped() {
    let cluster = cluster_without_autovacuum();
    let db = TestDb::trade_migrated_on(&cluster.url("postgres")).await;
    let writer = db.client().await;
    run(
        &writer,
        "CREATE TABLE pass_t (id int PRIMARY KEY);
         CREATE TABLE pass_p (at date NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE pass_p1 PARTITION OF pass_p FOR VALUES FROM ('2030-01-01') TO ('2030-02-01')",
    )
    .await;
    let mut reader = db.client().await;
    let txn = reader.transaction().await.unwrap();
    let mut previous = facts::read_facts(&txn, 0).await.unwrap();
    txn.commit().await.unwrap();
    let oid_of = |name: &str| {
        let name = name.to_owned();
        let c = &writer;
        async move {
            c.query_one("SELECT $1::text::regclass::oid", &[&name])
                .await
                .unwrap()
                .get::<_, u32>(0)
        }
    };
    let table = oid_of("pass_t").await;

    // Rows written and scanned: the statistics move, the structure is not read again.
    run(
        &writer,
        "INSERT INTO pass_t SELECT generate_series(1, 100); SELECT count(*) FROM pass_t",
    )
    .await;
    let shape_at = previous.shape_at;
    let (round, whole) = round_and_full(&mut reader, previous, false).await;
    assert_eq!(round.shape_at, shape_at, "no DDL: the statistics alone");
    assert_eq!(digest(&round), digest(&whole));
    let t = round.get(table).expect("pass_t read");
    assert_eq!((t.inserted(), t.live()), (100, 100), "pg_stat of pass_t");
    assert!(t.scans >= 1);
    previous = round;

    // Each kind of DDL makes the round read the structure again.
    for ddl in [
        "CREATE TABLE pass_new (id int)",
        "CREATE INDEX ON pass_new (id)",
        "ALTER TABLE pass_p DETACH PARTITION pass_p1",
        "ALTER TABLE pass_p ATTACH PARTITION pass_p1 FOR VALUES FROM ('2030-01-01') TO ('2030-02-01')",
        "ALTER TABLE pass_t RENAME TO pass_renamed",
        "DROP TABLE pass_new",
    ] {
        run(&writer, ddl).await;
        let before = Instant::now();
        let (round, whole) = round_and_full(&mut reader, previous, false).await;
        assert!(round.shape_at > before, "{ddl}: the structure read again");
        assert_eq!(digest(&round), digest(&whole), "after {ddl}");
        previous = round;
    }
    let renamed = previous.get(table).expect("pass_t, renamed");
    assert_eq!(previous.name(renamed), "pass_renamed");
    let p1 = previous.get(oid_of("pass_p1").await).expect("pass_p1");
    assert_eq!(p1.parent(), Some(oid_of("pass_p").await), "attached again");

    // The safety net: a full read when due, even without DDL.
    let before = Instant::now();
    let (round, whole) = round_and_full(&mut reader, previous, true).await;
    assert!(round.shape_at > before);
    assert_eq!(digest(&round), digest(&whole));
}
