//! The relation pass (issue 14): every derived family equals, on the same database and the
//! same statistics snapshot, what the catalog's former SQL over the `monitoring.v_*` views
//! reports; and the families pgpulse serves carry those values.

use crate::harness::exec;
use std::collections::BTreeMap;
use std::time::Instant;

use pgpulse::catalog::Derive;
use pgpulse::sampler::relations::{derive, facts, health};
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{TestDb, cluster_without_autovacuum, flush_stats, scalar, strings};
use crate::service::{sample, start};
use crate::signals::shipped;

/// The catalog's SQL for each family before the relation pass (queries.yaml at 7c67798).
const REFERENCE: &[(&str, &str)] = &[
    (
        "tables",
        r#"SELECT coalesce(parent_schemaname, schemaname) AS schemaname,
       coalesce(parent_relname, relname) AS relname,
       sum(n_live_tup) AS live, sum(n_dead_tup) AS dead,
       coalesce(sum(n_dead_tup)::float8 / nullif(sum(n_live_tup) + sum(n_dead_tup), 0), 0) AS dead_ratio,
       sum(total_bytes) AS bytes,
       sum(idx_scan)::float8 / nullif(sum(idx_scan) + sum(seq_scan), 0) AS index_usage,
       max(least(seconds_since_last_vacuum, seconds_since_last_autovacuum)) AS vacuum_age,
       max(least(seconds_since_last_analyze, seconds_since_last_autoanalyze)) AS analyze_age
FROM monitoring.v_table_stats
GROUP BY 1, 2
ORDER BY sum(total_bytes) DESC, 1, 2
LIMIT 100"#,
    ),
    (
        "table_scans",
        r#"WITH t AS (
  SELECT relid, coalesce(parent_schemaname, schemaname) AS schemaname,
         coalesce(parent_relname, relname) AS relname, seq_scan, idx_scan, total_bytes
  FROM monitoring.v_table_stats
), top AS (
  SELECT schemaname, relname FROM t GROUP BY 1, 2 ORDER BY sum(total_bytes) DESC, 1, 2 LIMIT 100
)
SELECT t.relid::text AS relid, t.schemaname, t.relname, t.seq_scan AS seq_scans, t.idx_scan AS idx_scans
FROM t JOIN top USING (schemaname, relname)
ORDER BY t.schemaname, t.relname"#,
    ),
    (
        "indexes",
        r#"WITH u AS (
  SELECT u.indexrelid, coalesce(u.parent_schemaname, u.schemaname) AS schemaname,
         coalesce(u.parent_relname, u.relname) AS relname,
         coalesce(pi.relname::text, u.indexrelname) AS indexrelname, u.idx_scan, u.index_bytes
  FROM monitoring.v_index_usage u
  LEFT JOIN pg_inherits ii ON ii.inhrelid = u.indexrelid
  LEFT JOIN pg_class pi ON pi.oid = ii.inhparent
), top AS (
  SELECT schemaname, relname, indexrelname FROM u GROUP BY 1, 2, 3
  ORDER BY sum(index_bytes) DESC, 1, 2, 3 LIMIT 200
)
SELECT u.indexrelid::text AS indexrelid, u.schemaname, u.relname, u.indexrelname,
       u.idx_scan AS scans, u.index_bytes AS bytes
FROM u JOIN top USING (schemaname, relname, indexrelname)
ORDER BY u.index_bytes DESC"#,
    ),
    (
        "index_cache",
        r#"SELECT coalesce(parent_schemaname, schemaname) AS schemaname,
       coalesce(parent_relname, relname) AS relname,
       sum(idx_blks_hit)::float8 / nullif(sum(idx_blks_hit) + sum(idx_blks_read), 0) AS ratio
FROM monitoring.v_index_cache_hit_ratio
GROUP BY 1, 2
HAVING sum(idx_blks_hit) + sum(idx_blks_read) > 0
ORDER BY sum(idx_blks_hit) + sum(idx_blks_read) DESC
LIMIT 100"#,
    ),
    (
        "cache_hit",
        r#"SELECT metric AS kind, blks_hit, blks_read, hit_ratio
FROM monitoring.v_cache_hit_ratio WHERE metric <> 'database'"#,
    ),
    (
        "unused_indexes",
        r#"SELECT count(*) AS n, coalesce(sum(index_bytes), 0) AS bytes FROM monitoring.v_unused_indexes"#,
    ),
    (
        "partitions",
        r#"SELECT CASE WHEN parent_schemaname = 'public' THEN parent_relname
            ELSE parent_schemaname || '.' || parent_relname END AS parent,
       partition_count, total_bytes, total_rows, default_partition_rows, runway_seconds
FROM monitoring.v_partition_health
ORDER BY total_bytes DESC LIMIT 100"#,
    ),
    (
        "partition_growth",
        r#"SELECT CASE WHEN parent_schemaname = 'public' THEN parent_relname
            ELSE parent_schemaname || '.' || parent_relname END AS parent,
       partition_schemaname || '.' || partition_relname AS partition,
       n_tup_ins AS inserted
FROM monitoring.v_partition_growth"#,
    ),
    (
        "table_wraparound",
        r#"SELECT rn.nspname AS schemaname, r.relname,
       max(greatest(age(c.relfrozenxid), age(t.relfrozenxid))) AS xid_age,
       max(greatest(mxid_age(c.relminmxid), mxid_age(t.relminmxid))) AS mxid_age
FROM pg_class c
LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
JOIN pg_class r ON r.oid = coalesce(pg_partition_root(c.oid), c.oid)
JOIN pg_namespace rn ON rn.oid = r.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't'
GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 20"#,
    ),
];

/// Columns whose value is an age or a time to come: they move with the clock between the
/// two reads of one transaction (`now()` is fixed, pgpulse adds the time since the pass).
const CLOCK_COLUMNS: &[&str] = &["vacuum_age", "analyze_age", "runway_seconds"];

/// A database with what each family must see: partitions two levels deep with a DEFAULT
/// holding rows, partitioned and unique indexes, TOAST data, dead rows, a vacuumed and an
/// analyzed table, an index never scanned, a materialized view, a second schema.
const SETUP: &str = "
CREATE SCHEMA ledger;
CREATE TABLE ledger.entries (id int PRIMARY KEY, note text, amount numeric);
INSERT INTO ledger.entries SELECT g, repeat(md5(g::text), 200 + g % 50), g FROM generate_series(1, 400) g;
CREATE INDEX entries_amount_idx ON ledger.entries (amount);
CREATE INDEX entries_never_idx ON ledger.entries (left(note, 8));
DELETE FROM ledger.entries WHERE id % 4 = 0;
CREATE TABLE ledger.events (id int NOT NULL, at timestamptz NOT NULL, v int) PARTITION BY RANGE (at);
CREATE INDEX ON ledger.events (id);
CREATE TABLE ledger.events_d0 PARTITION OF ledger.events
  FOR VALUES FROM ('2026-01-01 00:00+00') TO ('2026-01-02 00:00+00');
CREATE TABLE ledger.events_d1 PARTITION OF ledger.events
  FOR VALUES FROM ('2026-01-02 00:00+00') TO ('2026-01-03 00:00+00') PARTITION BY HASH (id);
CREATE TABLE ledger.events_d1_h0 PARTITION OF ledger.events_d1 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE ledger.events_d1_h1 PARTITION OF ledger.events_d1 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE ledger.events_default PARTITION OF ledger.events DEFAULT;
INSERT INTO ledger.events SELECT g, '2026-01-01 00:00+00'::timestamptz + g * interval '1 minute', g
  FROM generate_series(1, 4000) g;
CREATE MATERIALIZED VIEW ledger.daily AS SELECT date_trunc('day', at) AS day, count(*) AS n FROM ledger.events GROUP BY 1;
SELECT pg_stat_force_next_flush();
VACUUM ledger.entries;
ANALYZE ledger.events;
SET enable_seqscan = off;
SELECT count(*) FROM ledger.entries WHERE id < 50;
SELECT count(*) FROM ledger.events WHERE id = 7;
RESET enable_seqscan;
SELECT count(*) FROM ledger.entries;
SELECT count(*) FROM trades;
";

type Rows = Vec<Vec<Option<String>>>;

/// Runs [`SETUP`] one statement at a time (VACUUM cannot run in a transaction block) and
/// flushes this session's statistics before returning.
async fn set_up(db: &TestDb) {
    let c = db.client().await;
    for statement in SETUP.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        c.batch_execute(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    flush_stats(&c).await;
}

fn derive_of(name: &str) -> Derive {
    serde_saphyr::from_str::<Derive>(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

async fn text_rows(txn: &tokio_postgres::Transaction<'_>, sql: &str) -> Rows {
    txn.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Label columns of a family's row (everything that does not parse as a number, and keys).
fn is_key(column: &str) -> bool {
    matches!(
        column,
        "schemaname"
            | "relname"
            | "indexrelname"
            | "kind"
            | "parent"
            | "partition"
            | "relid"
            | "indexrelid"
    )
}

/// Derived rows as PostgreSQL would print them, to compare with a view's text rows.
fn as_text(rows: derive::Rows<'_>) -> Rows {
    rows.map(|r| r.iter().map(pgpulse::sampler::cell::Cell::text).collect())
        .collect()
}

fn keyed(columns: &[&str], rows: &Rows) -> BTreeMap<Vec<String>, Vec<(String, Option<f64>)>> {
    rows.iter()
        .map(|r| {
            let key = columns
                .iter()
                .zip(r)
                .filter(|(c, _)| is_key(c))
                .map(|(_, v)| v.clone().unwrap_or_default())
                .collect();
            let values = columns
                .iter()
                .zip(r)
                .filter(|(c, _)| !is_key(c))
                .map(|(c, v)| {
                    (
                        (*c).to_owned(),
                        v.as_deref().map(|v| v.parse::<f64>().unwrap()),
                    )
                })
                .collect();
            (key, values)
        })
        .collect()
}

fn close(column: &str, ours: Option<f64>, theirs: Option<f64>, clock_slack: f64) -> bool {
    match (ours, theirs) {
        (None, None) => true,
        (Some(a), Some(b)) if CLOCK_COLUMNS.contains(&column) => (a - b).abs() <= clock_slack,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_derived_family_equals_what_the_views_report_in_one_snapshot() {
    let cluster = cluster_without_autovacuum();
    let db = TestDb::trade_migrated_on(&cluster.url("postgres")).await;
    set_up(&db).await;
    let mut c = db.client().await;
    let txn = c.transaction().await.unwrap();
    txn.batch_execute("SET LOCAL stats_fetch_consistency = snapshot")
        .await
        .unwrap();
    let started = Instant::now();
    let facts = facts::read_facts(&txn, 0).await.unwrap();
    let mut sizes = facts::Sizes::default();
    facts::read_sizes(&txn, &mut sizes, true, &[])
        .await
        .unwrap();
    let mut bounds = facts::read_bounds(&txn, facts.partitions_fingerprint())
        .await
        .unwrap();
    facts::read_default_rows(&txn, &mut bounds).await.unwrap();
    let input = derive::Inputs {
        facts: &facts,
        sizes: &sizes,
        bounds: &bounds,
        report: &[],
    };
    let mut checked = 0;
    for (name, sql) in REFERENCE {
        let family = derive_of(name);
        let columns = family.columns();
        let ours = as_text(derive::rows(family, input));
        let wraparound = family == Derive::TableWraparound;
        // The top 20 of the wraparound family ties among catalog tables frozen together:
        // every row of ours is checked against all of theirs, and the ages of the top 20.
        let sql = if wraparound {
            sql.replace("LIMIT 20", "")
        } else {
            (*sql).to_owned()
        };
        let theirs = text_rows(&txn, &sql).await;
        let slack = started.elapsed().as_secs_f64() + 1.0;
        let (a, b) = (keyed(columns, &ours), keyed(columns, &theirs));
        if wraparound {
            let ages = |rows: &Rows| {
                let mut v: Vec<i64> = rows
                    .iter()
                    .map(|r| r[2].as_ref().unwrap().parse().unwrap())
                    .collect();
                v.sort_unstable_by(|x, y| y.cmp(x));
                v.truncate(20);
                v
            };
            assert_eq!(ages(&ours), ages(&theirs), "{name}: top 20 ages");
            assert_eq!(ours.len(), 20.min(theirs.len()), "{name}");
        } else {
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                b.keys().collect::<Vec<_>>(),
                "{name}: the same objects"
            );
        }
        for (key, values) in &a {
            let other = b
                .get(key)
                .unwrap_or_else(|| panic!("{name}: {key:?} not in the view's rows"));
            for ((column, x), (_, y)) in values.iter().zip(other) {
                assert!(
                    close(column, *x, *y, slack),
                    "{name} {key:?} {column}: pgpulse {x:?}, the view {y:?}"
                );
            }
            checked += 1;
        }
    }
    txn.commit().await.unwrap();
    // What the database holds reaches every family (no family compared empty lists).
    assert!(checked > 30, "only {checked} rows compared");
    let find = |family: Derive, key: &[&str]| {
        let rows = as_text(derive::rows(family, input));
        keyed(family.columns(), &rows)
            .remove(&key.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("{family:?} has no row {key:?}"))
    };
    let value =
        |v: &[(String, Option<f64>)], c: &str| v.iter().find(|(n, _)| n == c).and_then(|(_, x)| *x);
    let events = find(Derive::Partitions, &["ledger.events"]);
    assert_eq!(value(&events, "partition_count"), Some(3.0));
    assert_eq!(value(&events, "total_rows"), Some(4000.0));
    assert!(value(&events, "default_partition_rows").unwrap() > 0.0);
    let entries = find(Derive::Tables, &["ledger", "entries"]);
    assert_eq!(value(&entries, "live"), Some(300.0));
    assert_eq!(value(&entries, "dead"), Some(0.0), "vacuumed");
    assert!(value(&entries, "vacuum_age").is_some());
    let unused = find(Derive::UnusedIndexes, &[]);
    assert!(value(&unused, "n").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_served_families_carry_the_views_values() {
    // Quiet tables: an autovacuum between pgpulse's read and the view's would add a
    // visibility-map page to one side only.
    let cluster = cluster_without_autovacuum();
    let db = TestDb::trade_migrated_on(&cluster.url("postgres")).await;
    set_up(&db).await;
    let names: Vec<&str> = REFERENCE.iter().map(|(n, _)| *n).collect();
    // 15 s: the safety net that reads every size again comes after 15 intervals (225 s),
    // later than any wait below, so the written table's size is read for its write.
    let svc = start(&db.url, &shipped(&names, "15s"), |_| {}).await;
    let body = svc
        .wait_for("every derived family published", |b| {
            names.iter().all(|n| {
                sample(
                    b,
                    &format!("pgpulse_query_last_success_timestamp_seconds{{query=\"{n}\"}}"),
                )
                .is_some_and(|t| t > 0.0)
            })
        })
        .await;
    let c = db.client().await;
    let one = |sql: &str| {
        let c = &c;
        let sql = sql.to_owned();
        async move { c.query_one(&sql, &[]).await.unwrap().get::<_, f64>(0) }
    };
    // Quiet tables: the served values are the views' values.
    assert_eq!(
        sample(&body, "pg_partition_size_bytes{parent=\"ledger.events\"}"),
        Some(one("SELECT total_bytes::float8 FROM monitoring.v_partition_health WHERE parent_relname = 'events'").await)
    );
    assert_eq!(
        sample(&body, "pg_partitions{parent=\"ledger.events\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &body,
            "pg_table_size_bytes{schemaname=\"ledger\",relname=\"entries\"}"
        ),
        Some(
            one(
                "SELECT total_bytes::float8 FROM monitoring.v_table_stats WHERE relname = 'entries'"
            )
            .await
        )
    );
    assert_eq!(
        sample(
            &body,
            "pg_table_dead_tuples{schemaname=\"ledger\",relname=\"entries\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, "pg_index_size_bytes{schemaname=\"ledger\",relname=\"events\",indexrelname=\"events_id_idx\"}"),
        Some(one("SELECT sum(index_bytes)::float8 FROM monitoring.v_index_usage WHERE parent_relname = 'events'").await)
    );
    assert!(sample(&body, "pg_unused_indexes").is_some_and(|n| n >= 1.0));

    // Rows written to one table: a later round reads its size again (the sizes of the
    // relations written since are read every round), and serves what the view says.
    let table = "pg_table_size_bytes{schemaname=\"ledger\",relname=\"entries\"}";
    let before = sample(&body, table).unwrap();
    c.batch_execute(
        "INSERT INTO ledger.entries SELECT g, repeat(md5(g::text), 300), g FROM generate_series(1000, 1400) g",
    )
    .await
    .unwrap();
    flush_stats(&c).await;
    let grown =
        one("SELECT total_bytes::float8 FROM monitoring.v_table_stats WHERE relname = 'entries'")
            .await;
    assert!(
        grown > before,
        "the insert grew the table: {before} -> {grown}"
    );
    svc.wait_for_sample(table, |v| v == grown).await;
}

/// The statement of `file` that starts with `start`, up to its `COMMENT ON`.
fn former(file: &str, start: &str) -> String {
    let text = std::fs::read_to_string(format!("{}/migrations/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start} in {file}"));
    let rest = &text[from..];
    let to = rest.find("COMMENT ON").unwrap();
    rest[..to].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cheaper_views_and_health_check_return_what_their_former_definitions_return() {
    let db = TestDb::trade_migrated().await;
    set_up(&db).await;
    let c = db.client().await;
    // A DEFAULT partition with rows, and a table over the bloat threshold.
    exec(
        &c,
        "INSERT INTO ledger.events VALUES (1, '2030-01-01', 1);
         CREATE TABLE ledger.churn (id int);
         INSERT INTO ledger.churn SELECT generate_series(1, 3000);",
    )
    .await;
    exec(&c, "DELETE FROM ledger.churn WHERE id <= 1500").await;
    exec(&c, "SELECT pg_stat_force_next_flush()").await;
    let rename = |sql: String| {
        sql.replace("monitoring.partition_bounds(", "former.partition_bounds(")
            .replace("monitoring.v_partition_health", "former.v_partition_health")
            .replace(
                "monitoring.database_health_check(",
                "former.database_health_check(",
            )
    };
    exec(&c, "CREATE SCHEMA former").await;
    for (file, start) in [
        (
            "V004__performance_monitoring.sql",
            "CREATE OR REPLACE FUNCTION monitoring.partition_bounds(",
        ),
        (
            "V004__performance_monitoring.sql",
            "CREATE OR REPLACE VIEW monitoring.v_partition_health",
        ),
        (
            "V005__performance_functions.sql",
            "CREATE OR REPLACE FUNCTION monitoring.database_health_check()",
        ),
    ] {
        exec(&c, &rename(former(file, start))).await;
    }
    let mut c = c;
    let txn = c.transaction().await.unwrap();
    let count = |sql: String| {
        let txn = &txn;
        async move {
            txn.query_one(&sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .get::<_, i64>(0)
        }
    };
    for (what, columns) in [
        ("partition_bounds()", "*"),
        ("v_partition_health", "*"),
        // The long-transaction check quotes statement_timestamp(), which moves between
        // the two statements of a comparison.
        (
            "database_health_check()",
            "check_name, status, CASE WHEN check_name = 'Long Running Transactions' THEN '' ELSE value END, threshold",
        ),
    ] {
        let rows = count(format!("SELECT count(*) FROM monitoring.{what}")).await;
        assert!(rows > 2, "{what}: {rows} rows");
        let differ = count(format!(
            "SELECT count(*) FROM ((SELECT {columns} FROM monitoring.{what} EXCEPT ALL SELECT {columns} FROM former.{what})
               UNION ALL (SELECT {columns} FROM former.{what} EXCEPT ALL SELECT {columns} FROM monitoring.{what})) d"
        ))
        .await;
        assert_eq!(differ, 0, "{what}: rows differ from the former definition");
    }
    let warned = count(
        "SELECT count(*) FROM monitoring.database_health_check() WHERE check_name IN ('Table Bloat', 'Partition Runway') AND status <> 'OK' AND status <> 'N/A'".into(),
    )
    .await;
    assert_eq!(warned, 2, "both rewritten checks fire on this database");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_report_says_what_v016s_said_with_and_without_pg_stat_statements_preloaded() {
    // V017 reads pg_available_extensions only for the advice given when the extension is not
    // preloaded: that branch needs a server without it.
    let bare = crate::harness::own_cluster(pgpulse::demo::ClusterOptions {
        preload_pg_stat_statements: false,
        ..Default::default()
    });
    for (db, expected) in [
        (TestDb::trade_migrated().await, "OK: None."),
        (
            TestDb::trade_migrated_on(&bare.url("postgres")).await,
            "WARNING: Add pg_stat_statements to shared_preload_libraries",
        ),
    ] {
        let c = db.client().await;
        let v016 = former(
            "V016__cheaper_health_check.sql",
            "CREATE OR REPLACE FUNCTION monitoring.health_report(",
        );
        let v016 = v016.replace("monitoring.health_report(", "former.health_report(");
        exec(&c, &format!("CREATE SCHEMA former; {v016}")).await;
        let rows = |schema: &str| {
            format!(
                "SELECT check_name, status, CASE WHEN check_name = 'Long Running Transactions' \
                 THEN '' ELSE value END, threshold, recommendation \
                 FROM {schema}.health_report(NULL, NULL, NULL, 0, NULL, NULL, NULL)"
            )
        };
        let differ = scalar(
            &c,
            &format!(
                "SELECT count(*) FROM (({} EXCEPT ALL {}) UNION ALL ({} EXCEPT ALL {})) d",
                rows("monitoring"),
                rows("former"),
                rows("former"),
                rows("monitoring")
            ),
        )
        .await;
        assert_eq!(differ, 0, "rows differ from V016's");
        let advice = strings(
            &c,
            "SELECT status || ': ' || recommendation FROM monitoring.health_report(NULL, NULL, NULL, 0, NULL, NULL, NULL) \
             WHERE check_name = 'pg_stat_statements'",
        )
        .await;
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert!(advice[0].starts_with(expected), "{advice:?}");
        // The contrib package is installed here: no advice to install it.
        assert!(!advice[0].contains("contrib"), "{advice:?}");
    }
}

/// `database_health_check()` as pgpulse's `health` family serves it: status code first.
const HEALTH_ROWS: &str = "SELECT check_name, \
     CASE status WHEN 'OK' THEN 0 WHEN 'WARNING' THEN 1 WHEN 'CRITICAL' THEN 2 END, \
     status, CASE WHEN check_name = 'Long Running Transactions' THEN '' ELSE value END, \
     threshold, recommendation FROM monitoring.database_health_check()";

#[tokio::test(flavor = "multi_thread")]
async fn the_health_family_equals_database_health_check_in_one_snapshot() {
    let cluster = cluster_without_autovacuum();
    let db = TestDb::trade_migrated_on(&cluster.url("postgres")).await;
    set_up(&db).await;
    let mut c = db.client().await;
    // The worst bloat under a hostile name (quotes, a semicolon), a milder one beside it.
    exec(
        &c,
        r#"CREATE TABLE ledger."Bad""name; DROP" (id int);
           INSERT INTO ledger."Bad""name; DROP" SELECT generate_series(1, 2000);
           DELETE FROM ledger."Bad""name; DROP" WHERE id <= 1300;
           CREATE TABLE ledger.churn (id int);
           INSERT INTO ledger.churn SELECT generate_series(1, 3000);
           DELETE FROM ledger.churn WHERE id <= 600;"#,
    )
    .await;
    flush_stats(&c).await;
    let txn = c.transaction().await.unwrap();
    txn.batch_execute("SET LOCAL stats_fetch_consistency = snapshot")
        .await
        .unwrap();
    let facts = facts::read_facts(&txn, 0).await.unwrap();
    let bounds = facts::read_bounds(&txn, facts.partitions_fingerprint())
        .await
        .unwrap();
    let bloat = health::bloat(&facts).expect("bloated tables");
    assert_eq!(
        (bloat.schema, bloat.name, bloat.tables),
        ("ledger", "Bad\"name; DROP", 2)
    );
    assert_eq!(bloat.ratio, 0.65);
    let runway = health::runway(&facts, &bounds).expect("a time-range table");
    assert_eq!((runway.0, runway.1), ("ledger", "events"));
    let report = health::report(&txn, &facts, &bounds).await.unwrap();
    let ours = as_text(Box::new(report.into_iter()));
    let theirs = text_rows(&txn, HEALTH_ROWS).await;
    txn.commit().await.unwrap();
    let long_tx = |mut rows: Rows| {
        for r in &mut rows {
            if r[0].as_deref() == Some("Long Running Transactions") {
                r[3] = Some(String::new());
            }
        }
        rows
    };
    assert_eq!(
        long_tx(ours.clone()),
        theirs,
        "pgpulse's rows and the function's"
    );
    let row = |check: &str| {
        ours.iter()
            .find(|r| r[0].as_deref() == Some(check))
            .unwrap_or_else(|| panic!("{check} in {ours:?}"))
            .clone()
    };
    let bloat_row = row("Table Bloat");
    assert_eq!(bloat_row[2].as_deref(), Some("CRITICAL"));
    assert_eq!(
        bloat_row[3].as_deref(),
        Some(r#"0.6500 (ledger."Bad""name; DROP")"#)
    );
    let runway_row = row("Partition Runway");
    assert_eq!(runway_row[2].as_deref(), Some("CRITICAL"));
    assert!(
        runway_row[3]
            .as_deref()
            .unwrap()
            .ends_with("days (ledger.events)"),
        "{runway_row:?}"
    );
    assert_eq!(ours.len(), 8);
}

/// Calls of `monitoring.default_partition_rows` counted by the server (`track_functions`).
async fn default_rows_calls(c: &tokio_postgres::Client) -> i64 {
    scalar(
        c,
        "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_user_functions \
         WHERE schemaname = 'monitoring' AND funcname = 'default_partition_rows'",
    )
    .await
}

#[tokio::test]
async fn default_partition_rows_are_counted_again_only_when_they_may_have_changed() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let name = strings(&c, "SELECT current_database()").await.remove(0);
    exec(
        &c,
        &format!("ALTER DATABASE \"{name}\" SET track_functions = 'pl'"),
    )
    .await;
    let svc = start(&db.url, &shipped(&["partitions"], "1s"), |_| {}).await;
    let series = "pg_partition_default_rows{parent=\"trades\"}";
    let runs = |b: &str| sample(b, "pgpulse_query_runs_total{query=\"partitions\"}").unwrap_or(0.0);
    let view = "SELECT default_partition_rows FROM monitoring.v_partition_health \
                WHERE parent_relname = 'trades'";
    let body = svc
        .wait_for("the DEFAULT rows counted", |b| {
            sample(b, series) == Some(0.0) && runs(b) >= 2.0
        })
        .await;
    assert_eq!(scalar(&c, view).await, 0, "the view agrees");
    // At rest: runs go on, the DEFAULT partitions (two, orders' and trades') are not counted
    // again. Counting every run would call the function twice a run, ten times or more here;
    // the call of a run just before the first read may show up late, hence at most two.
    let calls = default_rows_calls(&c).await;
    let base = runs(&body);
    svc.wait_for("five more runs", |b| runs(b) >= base + 5.0)
        .await;
    let more = default_rows_calls(&c).await - calls;
    assert!(more <= 2, "{more} calls in five runs at rest");
    // A row no partition covers lands in the DEFAULT partition: counted at once, exactly.
    let row = "INSERT INTO trades (symbol, price, quantity, maker_order_id, taker_order_id, \
               maker_user_id, taker_user_id, executed_at) \
               VALUES ('BTC-USD', 1, 1, 1, 2, 1, 2, now() + interval '400 days')";
    let before = runs(&svc.metrics().await);
    exec(&c, row).await;
    exec(&c, row).await;
    flush_stats(&c).await;
    let body = svc.wait_for_sample(series, |v| v == 2.0).await;
    assert_eq!(scalar(&c, view).await, 2, "the view agrees");
    // Seen by the runs right after the insert, not by the safety net fifteen intervals on.
    let took = runs(&body) - before;
    assert!(took <= 5.0, "counted {took} runs after the insert");
    // Emptied by a TRUNCATE of the partition (no row deleted: a new file).
    let default = strings(
        &c,
        "SELECT partition_relname FROM monitoring.partition_bounds('trades'::regclass) \
         WHERE is_default",
    )
    .await
    .remove(0);
    exec(&c, &format!("TRUNCATE {default}")).await;
    svc.wait_for_sample(series, |v| v == 0.0).await;
    assert_eq!(scalar(&c, view).await, 0, "the view agrees");
    svc.stop().await;
}
