//! Command-line behaviour: exit codes and one-line errors for bad URLs and unreachable servers.

use crate::harness::{TestDb, own_cluster, pgpulse, text};
use pgpulse::demo::ClusterOptions;

#[test]
fn a_bad_database_url_is_a_one_line_error_and_exit_2() {
    let out = pgpulse(
        &[
            "migrate",
            "--database-url",
            "postgres://u:pw@host:notaport/db",
        ],
        &[],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("invalid database URL"), "{stderr}");
    assert!(!stderr.contains("pw"), "password leaked: {stderr}");
}

#[test]
fn a_missing_database_url_is_exit_2() {
    let out = pgpulse(&["verify"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--database-url"));
}

#[test]
fn an_unreachable_server_is_a_one_line_error_and_exit_1() {
    let port = pgpulse::demo::cluster::free_port().unwrap();
    let url = format!("postgres://app:secret-pw@127.0.0.1:{port}/x?connect_timeout=2");
    let out = pgpulse(&["migrate", "--database-url", &url], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(!stderr.contains("secret-pw"), "password leaked: {stderr}");
}

#[tokio::test]
async fn verify_passes_on_a_healthy_cluster() {
    let db = TestDb::trade_migrated().await;
    let out = pgpulse(&["verify", "--database-url", &db.url], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let (tables, lines): (Vec<&str>, Vec<&str>) = stdout
        .lines()
        .filter(|l| !l.starts_with("LOCK_TIMEOUT ") && !l.starts_with("SLO "))
        .partition(|l| l.starts_with("TABLE "));
    assert_eq!(lines.len(), 15, "{stdout}");
    // One line per trade table of the (default) mapping, every one found.
    assert_eq!(tables.len(), 5, "{stdout}");
    assert!(tables.iter().all(|l| l.contains(": found, ")), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(
        lines[10].starts_with("PASS"),
        "pg_stat_statements collecting: {}",
        lines[10]
    );
    // The key queries' SLO: the test cluster logs no durations, so verify names the setting
    // that covers the smallest target of plans.yaml (10 ms) and what it costs.
    let slo: Vec<&str> = stdout.lines().filter(|l| l.starts_with("SLO ")).collect();
    assert_eq!(slo.len(), 1, "{stdout}");
    assert!(
        slo[0].starts_with("SLO WARN log_min_duration_statement is off")
            && slo[0].contains("set log_min_duration_statement = 10ms")
            && slo[0].contains("statements a minute"),
        "{}",
        slo[0]
    );
}

#[tokio::test]
async fn verify_warns_with_the_fix_when_pg_stat_statements_is_not_preloaded() {
    let cluster = own_cluster(ClusterOptions {
        preload_pg_stat_statements: false,
        ..Default::default()
    });
    let db = TestDb::trade_migrated_on(&cluster.url("postgres")).await;
    let out = pgpulse(&["verify", "--database-url", &db.url], &[]);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "exit 0 despite the warning: {stdout}{stderr}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let pss: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("shared_preload_libraries"))
        .collect();
    assert!(
        pss.len() == 1 && pss[0].starts_with("WARN") && pss[0].contains("restart"),
        "{stdout}"
    );
    drop(db);
}
