//! Every error names the next step (issue 27, items 4 and 5): before `migrate`, `check-config`,
//! `serve` and `verify` say once to run it; `serve` says once what to change when
//! pg_stat_statements is not preloaded; an unknown maintenance job lists the jobs; the demo
//! refuses a bad or taken listen address before it builds a cluster; `migrate` prints no
//! server NOTICE noise and gives the sampling role what the shipped catalog needs (the
//! sequences' state) and nothing more; `--help` shows defaults and the jobs' names.

use crate::harness::exec;
use std::process::Stdio;

use crate::harness::{PATIENCE, TestDb, eventually, own_cluster, pgpulse, strings, text};
use pgpulse::demo::ClusterOptions;

const MIGRATE_FIRST: &str = "the monitoring schema is not installed: run `pgpulse migrate`";

fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().into_owned()
}

#[tokio::test]
async fn check_config_before_migrate_says_run_migrate_once_and_exits_1_a_bad_file_stays_2() {
    let db = TestDb::trade().await;
    let out = pgpulse(&["check-config", "--database-url", &db.url], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.matches(MIGRATE_FIRST).count(), 1, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("does not exist"), "{stderr}");

    // Hostile: a custom query that reads a missing table of its own is the file's fault (2),
    // even on a database without the schema, and it is named.
    let dir = tempfile::tempdir().unwrap();
    let own = write(
        &dir,
        "q.yaml",
        "queries:\n  - name: ledger\n    help: h\n    sql: SELECT count(*)::float8 AS v FROM no_such_ledger\n    metrics:\n      - {column: v, name: pg_ledger_rows, type: gauge, help: Rows.}\n",
    );
    let out = pgpulse(
        &["check-config", "--queries", &own, "--database-url", &db.url],
        &[],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("query \"ledger\"") && !stderr.contains(MIGRATE_FIRST),
        "{stderr}"
    );
    // A broken file is exit 2 whatever the database holds.
    let bad = write(&dir, "bad.yaml", "queries:\n  - name: x\n    colour: red\n");
    let out = pgpulse(
        &["check-config", "--queries", &bad, "--database-url", &db.url],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);

    db.migrate().await;
    let out = pgpulse(&["check-config", "--database-url", &db.url], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "after migrate: {stdout}{stderr}"
    );
}

#[tokio::test]
async fn verify_before_migrate_prints_one_line_per_check_and_says_to_migrate_once() {
    let db = TestDb::trade().await;
    let out = pgpulse(&["verify", "--database-url", &db.url], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    // One line per check; the trade-table mapping follows on lines of its own.
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            !["TABLE", "LOCK_TIMEOUT", "SLO "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert_eq!(lines.len(), 15, "{stdout}");
    for l in &lines {
        assert!(
            ["PASS", "WARN", "FAIL"].iter().any(|o| l.starts_with(o)),
            "{l}"
        );
    }
    assert_eq!(
        stdout.matches("run `pgpulse migrate`").count(),
        1,
        "{stdout}"
    );
    assert!(lines[1].contains(MIGRATE_FIRST), "check 2: {stdout}");
    assert!(!stdout.contains("does not exist"), "{stdout}");
}

#[tokio::test]
async fn verify_folds_many_failures_of_one_check_into_one_line() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    // Break three of the 13 views (as their owner could): check 4 folds them.
    for v in ["v_slow_queries", "v_table_stats", "v_cache_hit_ratio"] {
        c.batch_execute(&format!(
            "ALTER VIEW monitoring.{v} RENAME TO {v}_gone; \
             CREATE VIEW monitoring.{v} AS SELECT x FROM (VALUES (1)) AS t(x) WHERE 1 / (x - 1) > 0"
        ))
        .await
        .unwrap_or_else(|e| panic!("{v}: {e}"));
    }
    let out = pgpulse(&["verify", "--database-url", &db.url], &[]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let checks = stdout
        .lines()
        .filter(|l| {
            !["TABLE", "LOCK_TIMEOUT", "SLO "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .count();
    assert_eq!(checks, 15, "{stdout}");
    let check4 = stdout.lines().nth(3).unwrap();
    assert!(
        check4.starts_with("FAIL") && check4.contains("3 of 13 views failed"),
        "{check4}"
    );
    assert_eq!(check4.matches("division by zero").count(), 1, "{check4}");
}

#[tokio::test]
async fn serve_before_migrate_and_without_pg_stat_statements_warns_once_each_without_colour() {
    let cluster = own_cluster(ClusterOptions {
        preload_pg_stat_statements: false,
        ..Default::default()
    });
    let db = TestDb::on(&cluster.url("postgres")).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let port = pgpulse::demo::cluster::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgpulse"))
        .args(["serve", "--listen-address", &listen])
        .env("PGPULSE_DATABASE_URL", &db.url)
        .env_remove("PGPULSE_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Until a query has failed twice: the probe (every 5 s) has had several chances to warn.
    let twice = eventually(PATIENCE, || async {
        let b = reqwest::get(format!("http://{listen}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        b.lines()
            .filter(|l| {
                l.starts_with("pgpulse_query_errors_total{") && l.contains("kind=\"unavailable\"")
            })
            .any(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(2.0))
            .then_some(())
    })
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(twice.is_some(), "no query failed twice: {logs}");
    assert_eq!(logs.matches(MIGRATE_FIRST).count(), 1, "{logs}");
    assert_eq!(
        logs.matches("pg_stat_statements is not preloaded").count(),
        1,
        "{logs}"
    );
    assert!(
        logs.contains("shared_preload_libraries = 'pg_stat_statements'"),
        "{logs}"
    );
    let noisy: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("query failed"))
        .collect();
    assert!(
        noisy.is_empty(),
        "one warning, not one per query: {noisy:?}"
    );
    assert!(!logs.contains('\u{1b}'), "ANSI codes in a file: {logs:?}");
    drop(db);
}

#[tokio::test]
async fn maintain_run_now_with_an_unknown_job_lists_the_jobs_runs_nothing_and_exits_2() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let jobs = strings(
        &c,
        "SELECT job_name FROM monitoring.maintenance_schedule ORDER BY job_name",
    )
    .await;
    assert!(jobs.len() >= 4, "{jobs:?}");
    let log = "SELECT count(*) FROM monitoring.maintenance_log";
    let before = crate::harness::scalar(&c, log).await;
    let out = pgpulse(
        &[
            "maintain",
            "--run-now",
            "weekly_vaccum",
            "--database-url",
            &db.url,
        ],
        &[],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown job \"weekly_vaccum\""), "{stderr}");
    for j in &jobs {
        assert!(stderr.contains(j.as_str()), "{j} listed: {stderr}");
    }
    let after = crate::harness::scalar(&c, log).await;
    assert_eq!(after, before, "nothing ran");

    let help = text(&pgpulse(&["maintain", "--help"], &[])).0;
    for j in &jobs {
        assert!(help.contains(j.as_str()), "{j} in maintain --help: {help}");
    }
}

#[test]
fn serve_help_shows_the_default_listen_address_and_catalog() {
    let out = pgpulse(&["check-config"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let listen = stdout
        .split("listen ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap();
    let help = text(&pgpulse(&["serve", "--help"], &[])).0;
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(&format!("else {listen}]")),
        "serve --help names {listen}: {help}"
    );
    assert!(flat.contains("built-in catalog"), "{help}");
}

#[test]
fn the_demo_refuses_a_bare_port_and_a_taken_port_before_it_builds_a_cluster() {
    let out = pgpulse(&["demo", "--listen-address", "57871"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("host:port"), "{stderr}");
    assert!(!stderr.contains("throwaway"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = pgpulse(&["demo", "--listen-address", &addr], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("throwaway"),
        "no cluster was started: {stderr}"
    );
}

#[tokio::test]
async fn migrate_prints_no_notice_noise_and_the_monitor_reads_sequences_but_cannot_advance_them() {
    let db = TestDb::trade().await;
    let c = db.client().await;
    let out = pgpulse(&["migrate", "--database-url", &db.url], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        !stderr.contains("already exists") && !stderr.contains("NOTICE"),
        "{stderr}"
    );
    // A sequence the migrating role creates later is covered by its default privileges;
    // hostile: one another role creates later is not (only its owner may grant on it).
    exec(&c, "CREATE SEQUENCE public.later_seq; SELECT nextval('public.later_seq'); \
         DO $$ BEGIN CREATE ROLE seq_tenant NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         CREATE SCHEMA tenant AUTHORIZATION seq_tenant; \
         SET ROLE seq_tenant; CREATE SEQUENCE tenant.ticket_seq; SELECT nextval('tenant.ticket_seq'); \
         RESET ROLE").await;
    // What PostgreSQL shows a superuser against what it shows the sampling role.
    let seen = "SELECT schemaname || '.' || sequencename FROM pg_sequences \
                WHERE last_value IS NOT NULL ORDER BY 1";
    let all = strings(&c, seen).await;
    exec(&c, "SET ROLE pgpulse_monitor").await;
    let monitor = strings(&c, seen).await;
    let advance = c.batch_execute("SELECT nextval('public.later_seq')").await;
    let set = c
        .batch_execute("SELECT setval('public.later_seq', 1000)")
        .await;
    exec(&c, "RESET ROLE").await;
    assert!(all.contains(&"public.later_seq".to_owned()), "{all:?}");
    assert!(all.contains(&"tenant.ticket_seq".to_owned()), "{all:?}");
    let expected: Vec<String> = all
        .iter()
        .filter(|s| *s != "tenant.ticket_seq")
        .cloned()
        .collect();
    assert_eq!(
        monitor, expected,
        "the monitor sees every sequence but the tenant's"
    );
    assert!(advance.is_err() && set.is_err(), "SELECT only");
    // verify names the one it cannot read, as a warning with the grant to ask for.
    let out = pgpulse(&["verify", "--database-url", &db.url], &[]);
    let (stdout, _) = text(&out);
    let check12 = stdout.lines().nth(11).unwrap();
    assert!(
        check12.starts_with("WARN")
            && check12.contains("tenant.ticket_seq")
            && check12.contains("GRANT SELECT ON SEQUENCE"),
        "{stdout}"
    );
    exec(
        &c,
        "GRANT SELECT ON SEQUENCE tenant.ticket_seq TO pgpulse_monitor",
    )
    .await;
    let out = pgpulse(&["verify", "--database-url", &db.url], &[]);
    let check12 = text(&out).0.lines().nth(11).unwrap().to_owned();
    assert!(check12.starts_with("PASS"), "{check12}");
    exec(
        &c,
        "GRANT USAGE ON SEQUENCE tenant.ticket_seq TO pgpulse_monitor",
    )
    .await;
    let out = pgpulse(&["verify", "--database-url", &db.url], &[]);
    let check12 = text(&out).0.lines().nth(11).unwrap().to_owned();
    assert!(
        check12.starts_with("FAIL") && check12.contains("SELECT only"),
        "nothing more: {check12}"
    );
}

#[tokio::test]
async fn migrate_as_a_non_superuser_owner_names_the_sequences_it_may_not_grant_and_verify_too() {
    let tag = rand::random::<u32>();
    let (owner, tenant) = (format!("seqowner_{tag}"), format!("seqtenant_{tag}"));
    let db = TestDb::new().await;
    let admin = db.client().await;
    exec(
        &admin,
        &format!(
            "{} CREATE SCHEMA tenant AUTHORIZATION {tenant}; \
             SET ROLE {tenant}; CREATE SEQUENCE tenant.ticket_seq; \
             SELECT nextval('tenant.ticket_seq'); RESET ROLE",
            crate::harness::owner_and_tenant(&owner, &tenant, &db.name)
        ),
    )
    .await;
    let owner_url = db.url.replacen("postgres@", &format!("{owner}@"), 1);
    assert_ne!(owner_url, db.url, "the harness URL names its user");
    let o = crate::harness::connect(&owner_url).await;
    pgpulse::demo::schema::install(&o).await.unwrap();
    let out = pgpulse(&["migrate", "--database-url", &owner_url], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("tenant.ticket_seq") && stderr.contains("GRANT SELECT ON SEQUENCE"),
        "the NOTICE names the tenant's sequence: {stderr}"
    );
    assert!(!stderr.contains("already exists"), "{stderr}");
    let unreadable = strings(
        &admin,
        "SELECT k.oid::regclass::text FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace \
         WHERE k.relkind = 'S' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' \
           AND NOT has_table_privilege('pgpulse_monitor', k.oid, 'SELECT') ORDER BY 1",
    )
    .await;
    assert_eq!(unreadable, vec!["tenant.ticket_seq".to_owned()]);
    let out = pgpulse(&["verify", "--database-url", &owner_url], &[]);
    let (stdout, _) = text(&out);
    let check12 = stdout.lines().nth(11).unwrap_or_default();
    assert!(
        check12.starts_with("WARN  12.") && check12.contains("tenant.ticket_seq"),
        "{stdout}"
    );
    drop((o, admin));
    drop(db);
    // Best effort: the roles own nothing once their database is gone.
    let c = crate::harness::connect(&crate::harness::admin_url()).await;
    let _ = c
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {tenant}; DROP ROLE IF EXISTS {owner}"
        ))
        .await;
}
