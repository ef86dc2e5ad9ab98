//! Migrations: apply to empty and trade-engine databases, idempotence, concurrency,
//! uninstall and reinstall without touching trade data.

use crate::harness::exec;
use crate::harness::{TestDb, pgpulse, scalar, text};
use pgpulse::db::migrate::{MIGRATIONS, migrate, status};

async fn history(db: &TestDb) -> Vec<(i32, String)> {
    let c = db.client().await;
    c.query(
        "SELECT version, checksum FROM monitoring.schema_migrations ORDER BY version",
        &[],
    )
    .await
    .expect("history")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_a_second_run_applies_nothing() {
    let db = TestDb::new().await;
    let mut c = db.client().await;
    let first = migrate(&mut c).await.expect("first migrate");
    assert_eq!(
        first.iter().map(|m| m.version).collect::<Vec<_>>(),
        MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    let second = migrate(&mut c).await.expect("second migrate");
    assert!(second.is_empty(), "second run applied {second:?}");
    let h = history(&db).await;
    assert_eq!(h.len(), MIGRATIONS.len());
    for (m, (v, sum)) in MIGRATIONS.iter().zip(&h) {
        assert_eq!(m.version, *v);
        assert_eq!(&m.checksum(), sum);
    }
    let st = status(&c).await.expect("status");
    assert!(st.iter().all(|s| s.applied_at.is_some()));
}

#[tokio::test]
async fn migrations_apply_to_the_trade_engine_database() {
    let db = TestDb::trade().await;
    let mut c = db.client().await;
    let applied = migrate(&mut c).await.expect("migrate");
    assert_eq!(applied.len(), MIGRATIONS.len());
    let n = scalar(
        &c,
        "SELECT count(*) FROM pg_views WHERE schemaname = 'monitoring'",
    )
    .await;
    assert!(n >= 13, "{n} views");
}

#[tokio::test]
async fn migrate_status_lists_pending_then_applied() {
    let db = TestDb::new().await;
    let out = pgpulse(&["migrate", "--status", "--database-url", &db.url], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.matches("pending").count(),
        MIGRATIONS.len(),
        "{stdout}"
    );
    let out = pgpulse(&["migrate"], &[("PGPULSE_DATABASE_URL", &db.url)]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.matches("applied V").count(),
        MIGRATIONS.len(),
        "{stdout}"
    );
    let out = pgpulse(&["migrate", "--status", "--database-url", &db.url], &[]);
    assert_eq!(text(&out).0.matches("applied ").count(), MIGRATIONS.len());
}

#[tokio::test]
async fn two_concurrent_migrate_runs_both_succeed_and_apply_once() {
    let db = TestDb::trade().await;
    let url = db.url.clone();
    let bin = env!("CARGO_BIN_EXE_pgpulse");
    let spawn = || {
        std::process::Command::new(bin)
            .args(["migrate", "--database-url", &url])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn migrate")
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "first: {}", text(&a).1);
    assert!(b.status.success(), "second: {}", text(&b).1);
    let applied = text(&a).0.matches("applied V").count() + text(&b).0.matches("applied V").count();
    assert_eq!(
        applied,
        MIGRATIONS.len(),
        "each migration applied exactly once in all"
    );
    assert_eq!(history(&db).await.len(), MIGRATIONS.len());
}

async fn trade_counts(db: &TestDb) -> Vec<i64> {
    let c = db.client().await;
    let mut out = Vec::new();
    for t in ["orders", "trades", "order_book", "market_data", "candles"] {
        out.push(
            c.query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await
                .unwrap()
                .get(0),
        );
    }
    out
}

/// How many privileges on sequences, and default privileges, name pgpulse_monitor here.
const SEQUENCE_GRANTS: &str = "SELECT (SELECT count(*) FROM pg_class k, aclexplode(k.relacl) a \
     WHERE k.relkind = 'S' AND a.grantee::regrole::text = 'pgpulse_monitor') \
     + (SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a \
     WHERE a.grantee::regrole::text = 'pgpulse_monitor')";

#[tokio::test]
async fn uninstall_then_migrate_again_works_and_leaves_trade_data_untouched() {
    let db = TestDb::trade_migrated().await;
    let before = trade_counts(&db).await;
    assert!(
        before.iter().all(|n| *n > 0),
        "sample data loaded: {before:?}"
    );
    let granted_before = crate::harness::scalar(&db.client().await, SEQUENCE_GRANTS).await;
    let out = pgpulse(&["uninstall", "--database-url", &db.url], &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    let c = db.client().await;
    let schema: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'monitoring')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!schema, "monitoring schema removed");
    let tuned: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace \
             AND array_to_string(reloptions, ',') LIKE '%autovacuum_vacuum_scale_factor%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tuned, 0, "autovacuum reloptions reset");
    // V014's grants on the sequences, whether the role was dropped or kept for another database.
    assert!(granted_before > 0, "V014 granted SELECT on the sequences");
    assert_eq!(
        crate::harness::scalar(&c, SEQUENCE_GRANTS).await,
        0,
        "sequence grants revoked"
    );
    assert_eq!(trade_counts(&db).await, before);
    let out = pgpulse(&["migrate", "--database-url", &db.url], &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(text(&out).0.matches("applied V").count(), MIGRATIONS.len());
    assert_eq!(trade_counts(&db).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_drops_the_roles_the_migrations_created_on_a_cluster_of_its_own() {
    let cluster = crate::harness::own_cluster(Default::default());
    let db = TestDb::trade_migrated_on(&cluster.url("postgres")).await;
    let c = db.client().await;
    let roles = || async {
        c.query_one("SELECT count(*) FROM pg_roles WHERE rolname IN ('pgpulse_monitor', 'pgpulse_maintainer')", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(roles().await, 2);
    let out = pgpulse(&["uninstall", "--database-url", &db.url], &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(
        roles().await,
        0,
        "roles created by the migrations are dropped"
    );
    drop(c);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_gives_up_on_a_lock_held_by_the_trading_engine_and_applies_once_it_is_free() {
    let db = TestDb::trade().await;
    let engine = db.client().await;
    // A long transaction of the trading engine holds orders (as an ALTER TABLE of its own
    // would); the migration's autovacuum tuning of orders needs a lock on it.
    exec(
        &engine,
        "BEGIN; LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    let mut c = db.client().await;
    let err = migrate(&mut c)
        .await
        .expect_err("the lock is held throughout");
    let text = err.to_string();
    assert!(
        text.contains("lock timeout")
            && text.contains("run `pgpulse migrate` again when it is free"),
        "{text}"
    );
    assert!(
        history(&db).await.len() < MIGRATIONS.len(),
        "the migration that needs the lock was not recorded"
    );
    // The engine's own statements were never queued behind the migration.
    assert_eq!(
        scalar(&engine, "SELECT count(*) FROM public.orders WHERE false").await,
        0
    );
    exec(&engine, "COMMIT").await;
    migrate(&mut c).await.unwrap();
    assert_eq!(history(&db).await.len(), MIGRATIONS.len());
}
