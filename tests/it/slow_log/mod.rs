//! The slow-statement log reader (issues 15 and 24), against real clusters with jsonlog:
//!
//! - [`access`]: the V012 helpers count the log and read nothing else, V009's raw reader is
//!   gone, and only a superuser installs them;
//! - [`count`]: `pg_statement_executions_over_threshold_total` equals an independent count of
//!   the `duration:` lines in the jsonlog files on disk, across rotations, protocols,
//!   databases, users, multibyte text, small chunks, `log_statement = all`, auto_explain, a
//!   reload and a restart of pgpulse, while a literal in statements and parameters stays on
//!   the server;
//! - [`tally`]: `monitoring.log_tally` on hostile files (bytes that are not UTF-8, truncated
//!   JSON, long lines, odd numbers) and on random ones, against [`reference`], pgpulse's
//!   parser from before V012;
//! - [`zero`]: the pair of a session that just opened is exposed at 0 before its first slow
//!   execution;
//! - [`alert`]: a real Prometheus with the shipped rules fires the SLO alert on the bimodal
//!   statement the histogram cannot see;
//! - [`gap`]: a log file removed before it was read is counted as a gap, never as statements;
//! - [`slo`]: each key query's misses of its latency target, by `query_id`, equal the log files'
//!   and only the burning key query's SLO alerts fire.

mod access;
mod alert;
mod count;
mod gap;
mod reference;
mod slo;
mod tally;
mod zero;

use crate::harness::exec;
use std::path::{Path, PathBuf};

use crate::harness::{PATIENCE, TestDb, eventually, own_cluster};
use pgpulse::demo::{ClusterOptions, TempCluster};
use tokio_postgres::Client;

pub(crate) fn log_cluster(extra: &[(&str, &str)]) -> TempCluster {
    let mut settings: Vec<(String, String)> = [
        ("logging_collector", "on"),
        ("log_destination", "stderr,jsonlog"),
        ("log_min_duration_statement", "100ms"),
        ("log_rotation_size", "64kB"),
        ("log_rotation_age", "0"),
        ("log_parameter_max_length", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    settings.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    own_cluster(ClusterOptions {
        extra_settings: settings,
        ..Default::default()
    })
}

/// Makes the non-superuser `pgpulse_migrator` the owner of `db` (it may then run every
/// migration, as the schema's owner); returns its URL.
pub(crate) async fn owned_by_migrator(db: &TestDb) -> String {
    exec(
        &db.client().await,
        &format!(
            "DO $$ BEGIN CREATE ROLE pgpulse_migrator LOGIN CREATEROLE; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             ALTER DATABASE {} OWNER TO pgpulse_migrator",
            db.name
        ),
    )
    .await;
    as_user(&db.url, "pgpulse_migrator")
}

/// `url` with its user replaced.
pub(crate) fn as_user(url: &str, user: &str) -> String {
    url.replacen("postgres@", &format!("{user}@"), 1)
}

/// A migrated database on `cluster` plus the login roles of the test.
pub(crate) async fn setup(cluster: &TempCluster) -> (TestDb, TestDb) {
    let admin = cluster.url("postgres");
    let one = TestDb::on(&admin).await;
    let two = TestDb::on(&admin).await;
    let c = one.client().await;
    exec(&c, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await;
    one.migrate().await;
    exec(
        &c,
        "DO $$ BEGIN \
           CREATE ROLE pgpulse_login LOGIN IN ROLE pgpulse_monitor; \
           CREATE ROLE trader_a LOGIN; CREATE ROLE trader_b LOGIN; CREATE ROLE trader_c LOGIN; \
           CREATE ROLE stranger LOGIN; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    .await;
    (one, two)
}

/// The jsonlog file the server writes to now (absolute).
pub(crate) async fn current(admin: &Client, datadir: &Path) -> PathBuf {
    let rel: String = admin
        .query_one("SELECT pg_current_logfile('jsonlog')", &[])
        .await
        .unwrap()
        .get(0);
    datadir.join(rel)
}

/// Rotates the log and returns the new jsonlog file. The default `log_filename` has a
/// resolution of one second and a rotation to the same name appends to the same file, so the
/// rotation is asked for once the server's clock has left the second of the current file
/// (read in `log_timezone`, the zone of the file names).
pub(crate) async fn rotate(admin: &Client, datadir: &Path) -> PathBuf {
    let before = current(admin, datadir).await;
    let stamp = |p: &Path| {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        name.trim_start_matches("postgresql-").to_owned()
    };
    let old = stamp(&before);
    let later = || async {
        let now: String = admin
            .query_one(
                "SELECT to_char(clock_timestamp() AT TIME ZONE current_setting('log_timezone'), \
                 'YYYY-MM-DD_HH24MISS')",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (now > old).then_some(())
    };
    assert!(eventually(PATIENCE, later).await.is_some());
    let switched = || async {
        let now = current(admin, datadir).await;
        (now != before).then_some(now)
    };
    // The request is asked again while the logger has not switched (a loaded machine once
    // left one unanswered for minutes); a second rotation only makes another new file.
    let end = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < end {
        exec(admin, "SELECT pg_rotate_logfile()").await;
        if let Some(now) = eventually(std::time::Duration::from_secs(10), switched).await {
            return now;
        }
    }
    panic!(
        "pg_rotate_logfile() did not switch files from {}",
        before.display()
    )
}
