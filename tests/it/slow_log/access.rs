//! The V012 helpers: the sampling role counts the jsonlog files of the log directory and reads
//! nothing else, V009's raw reader is gone (also after an upgrade, by a superuser or by the
//! schema's non-superuser owner); without a superuser the helpers are not installed and
//! `verify` says how.

use super::{as_user, log_cluster, setup};
use crate::harness::exec;
use crate::harness::strings;
use crate::harness::{TestDb, connect};
use tokio_postgres::Client;

const LOG_READ: &str = "to_regprocedure('monitoring.log_read(text,bigint,integer)')";
const LOG_TALLY: &str = "to_regprocedure('monitoring.log_tally(text,bigint,integer,double precision,boolean,bigint[],double precision[])')";

async fn exists(c: &Client, regprocedure: &str) -> bool {
    c.query_one(&format!("SELECT {regprocedure} IS NOT NULL"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_helpers_count_the_log_and_refuse_every_other_file() {
    let cluster = log_cluster(&[]);
    let (one, _two) = setup(&cluster).await;
    let me = connect(&as_user(&one.url, "pgpulse_login")).await;
    let files: Vec<(String, i64)> = me
        .query("SELECT name, size FROM monitoring.log_files()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!files.is_empty(), "jsonlog files are listed");
    assert!(files.iter().all(|(n, _)| n.ends_with(".json")), "{files:?}");
    let current: String = me
        .query_one("SELECT monitoring.log_current_file()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(files.iter().any(|(n, _)| *n == current), "{current} listed");
    let row = me
        .query_one(
            "SELECT bytes_read, consumed FROM monitoring.log_tally($1, 0, 1048576, 100, false, '{}', '{}')",
            &[&current],
        )
        .await
        .unwrap();
    let (read, consumed): (Option<i32>, Option<i32>) = (row.get(0), row.get(1));
    assert!(
        read.is_some_and(|r| r > 0) && consumed.is_some_and(|c| c > 0),
        "the current log is counted: {read:?} {consumed:?}"
    );
    let stderr_log = current.replace(".json", ".log");
    let data_auto = cluster.dir().join("data/postgresql.auto.conf");
    for name in [
        "global/1260",
        "../postgresql.auto.conf",
        "/etc/passwd",
        data_auto.to_str().unwrap(),
        ".",
        stderr_log.as_str(),
    ] {
        let r = me
            .query_one(
                "SELECT bytes_read FROM monitoring.log_tally($1, 0, 64, 0, false, '{}', '{}')",
                &[&name],
            )
            .await;
        match r {
            Err(_) => {}
            Ok(row) => assert!(
                row.get::<_, Option<i32>>(0).is_none(),
                "{name} must not be readable"
            ),
        }
    }
    for sql in [
        "SELECT pg_read_binary_file('global/1260')",
        "SELECT pg_read_file('postgresql.auto.conf')",
        "SELECT monitoring.log_read('x.json', 0, 64)",
    ] {
        assert!(me.simple_query(sql).await.is_err(), "{sql} is refused");
    }
    assert!(!exists(&me, LOG_READ).await, "V009's raw reader is gone");
    let row = me
        .query_one(
            "SELECT has_function_privilege('pg_read_binary_file(text,bigint,bigint,boolean)', 'EXECUTE'), \
                    has_function_privilege('pg_read_binary_file(text)', 'EXECUTE'), \
                    pg_has_role('pg_read_server_files', 'MEMBER')",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1) && !row.get::<_, bool>(2));
    // The SECURITY DEFINER functions the sampling role may call: the three log helpers and
    // whatever else the schema defines; none but log_current_file returns text, and that is a
    // file name (the count test checks that no literal comes back from log_tally).
    let definers = strings(
        &me,
        "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'monitoring'::regnamespace \
               AND p.prosecdef AND has_function_privilege(p.oid, 'EXECUTE') \
               AND p.proname LIKE 'log\\_%' ORDER BY 1",
    )
    .await;
    assert_eq!(definers, ["log_current_file", "log_files", "log_tally"]);
    let stranger = connect(&as_user(&one.url, "stranger")).await;
    assert!(
        stranger
            .query_one(
                "SELECT bytes_read FROM monitoring.log_tally($1, 0, 64, 0, false, '{}', '{}')",
                &[&current]
            )
            .await
            .is_err(),
        "a role outside pgpulse_monitor may not count the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_superuser_the_helpers_wait_for_one_and_verify_says_how() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    let migrator_url = super::owned_by_migrator(&db).await;
    let mut migrator = connect(&migrator_url).await;
    pgpulse::db::migrate::migrate(&mut migrator)
        .await
        .expect("migrate as a non-superuser");
    assert!(
        !exists(&admin, LOG_TALLY).await && !exists(&admin, LOG_READ).await,
        "no SECURITY DEFINER file reader created by a non-superuser"
    );
    let verify_line = || {
        let out = crate::harness::pgpulse(&["verify", "--database-url", &migrator_url], &[]);
        let (stdout, _) = crate::harness::text(&out);
        (
            stdout.lines().nth(13).unwrap_or_default().to_owned(),
            stdout,
        )
    };
    let (line, stdout) = verify_line();
    assert!(
        line.starts_with("WARN") && line.contains("run `pgpulse migrate` as a superuser"),
        "{stdout}"
    );

    // A raw reader left by a superuser (as V009's install_log_reader() made it) fails verify,
    // and V012 run again by the non-superuser that owns the schema drops it.
    exec(&admin, "CREATE FUNCTION monitoring.log_read(p_name text, p_offset bigint, p_length integer) \
             RETURNS bytea LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp \
             AS $$ SELECT NULL::bytea $$; \
             GRANT EXECUTE ON FUNCTION monitoring.log_read(text, bigint, integer) TO pgpulse_monitor").await;
    let (line, stdout) = verify_line();
    assert!(
        line.starts_with("FAIL") && line.contains("monitoring.log_read"),
        "{stdout}"
    );
    exec(
        &admin,
        "DELETE FROM monitoring.schema_migrations WHERE version = 12",
    )
    .await;
    let again = pgpulse::db::migrate::migrate(&mut migrator)
        .await
        .expect("V012 again as the schema's owner");
    assert_eq!(again.iter().map(|m| m.version).collect::<Vec<_>>(), [12]);
    assert!(
        !exists(&admin, LOG_READ).await,
        "the schema's owner dropped it"
    );

    assert!(
        migrator
            .batch_execute("SELECT monitoring.install_log_reader()")
            .await
            .is_err(),
        "only a superuser installs the helpers"
    );
    // The non-superuser owns install_log_reader() and replaces its body with code that would
    // make it a superuser; the superuser's `pgpulse migrate` never runs that body.
    exec(
        &migrator,
        "CREATE OR REPLACE FUNCTION monitoring.install_log_reader() RETURNS void \
             LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'ALTER ROLE pgpulse_migrator SUPERUSER'; END $$",
    )
    .await;
    let mut superuser = db.client().await;
    pgpulse::db::migrate::migrate(&mut superuser)
        .await
        .expect("migrate as a superuser installs the helpers");
    let escalated: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'pgpulse_migrator'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !escalated,
        "the owner's replaced body never ran as the superuser"
    );
    assert!(
        exists(&admin, LOG_TALLY).await,
        "a superuser installed the helpers"
    );
    let owner: bool = admin
        .query_one(
            &format!("SELECT (SELECT rolsuper FROM pg_roles WHERE oid = proowner) FROM pg_proc WHERE oid = {LOG_TALLY}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(owner, "log_tally belongs to the superuser");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_from_the_raw_reader_as_a_superuser_drops_it() {
    let db = TestDb::new().await;
    db.migrate().await;
    let admin = db.client().await;
    // The database as V009 left it: its install_log_reader() and its log_read, granted.
    let v009 = pgpulse::db::migrate::MIGRATIONS
        .iter()
        .find(|m| m.version == 9)
        .unwrap();
    exec(&admin, v009.sql).await;
    exec(
        &admin,
        "DELETE FROM monitoring.schema_migrations WHERE version = 12",
    )
    .await;
    let granted: bool = admin
        .query_one(
            &format!("SELECT has_function_privilege('pgpulse_monitor', {LOG_READ}, 'EXECUTE')"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(granted, "V009 gave pgpulse_monitor the raw reader");
    db.migrate().await;
    assert!(!exists(&admin, LOG_READ).await, "V012 dropped it");
    let monitor_counts: bool = admin
        .query_one(
            &format!("SELECT has_function_privilege('pgpulse_monitor', {LOG_TALLY}, 'EXECUTE')"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        monitor_counts,
        "and installed log_tally for pgpulse_monitor"
    );
}
