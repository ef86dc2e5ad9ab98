//! The V009 helpers: the sampling role reads the jsonlog files of the log directory and
//! nothing else; without a superuser they are not installed and `verify` says how.

use super::{as_user, log_cluster, setup};
use crate::harness::{TestDb, connect};

#[tokio::test(flavor = "multi_thread")]
async fn the_log_helpers_read_the_log_and_refuse_every_other_file() {
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
    let head: Option<Vec<u8>> = me
        .query_one("SELECT monitoring.log_read($1, 0, 64)", &[&current])
        .await
        .unwrap()
        .get(0);
    assert!(
        head.is_some_and(|b| b.first() == Some(&b'{')),
        "a jsonlog line"
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
            .query_one("SELECT monitoring.log_read($1, 0, 64)", &[&name])
            .await;
        match r {
            Err(_) => {}
            Ok(row) => assert!(
                row.get::<_, Option<Vec<u8>>>(0).is_none(),
                "{name} must not be readable"
            ),
        }
    }
    for sql in [
        "SELECT pg_read_binary_file('global/1260')",
        "SELECT pg_read_file('postgresql.auto.conf')",
    ] {
        assert!(me.simple_query(sql).await.is_err(), "{sql} is refused");
    }
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
    let stranger = connect(&as_user(&one.url, "stranger")).await;
    assert!(
        stranger
            .query_one("SELECT monitoring.log_read($1, 0, 64)", &[&current])
            .await
            .is_err(),
        "a role outside pgpulse_monitor may not read the log"
    );
}

/// The independent count: `duration:` executions at or over 100 ms by other roles than
/// pgpulse's, after the line `from` and before the line `to`, and the plan lines at or over
#[tokio::test(flavor = "multi_thread")]
async fn without_a_superuser_the_helpers_wait_for_one_and_verify_says_how() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE pgpulse_migrator LOGIN CREATEROLE; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             ALTER DATABASE {} OWNER TO pgpulse_migrator",
            db.name
        ))
        .await
        .unwrap();
    let migrator_url = as_user(&db.url, "pgpulse_migrator");
    let mut migrator = connect(&migrator_url).await;
    pgpulse::db::migrate::migrate(&mut migrator)
        .await
        .expect("migrate as a non-superuser");
    let helper = "SELECT to_regprocedure('monitoring.log_read(text,bigint,integer)') IS NOT NULL";
    let has: bool = admin.query_one(helper, &[]).await.unwrap().get(0);
    assert!(
        !has,
        "no SECURITY DEFINER file reader created by a non-superuser"
    );
    let out = crate::harness::pgpulse(&["verify", "--database-url", &migrator_url], &[]);
    let (stdout, _) = crate::harness::text(&out);
    let line = stdout.lines().nth(13).unwrap_or_default();
    assert!(
        line.starts_with("WARN") && line.contains("SELECT monitoring.install_log_reader();"),
        "{stdout}"
    );
    assert!(
        migrator
            .batch_execute("SELECT monitoring.install_log_reader()")
            .await
            .is_err(),
        "only a superuser installs the helpers"
    );
    admin
        .batch_execute("SELECT monitoring.install_log_reader()")
        .await
        .unwrap();
    let has: bool = admin.query_one(helper, &[]).await.unwrap().get(0);
    assert!(has, "a superuser installed the helpers");
}
