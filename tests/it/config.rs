//! Configuration and catalog errors: exit 2 naming file, line and key; layering order;
//! SIGHUP reload keeps a running catalog on a bad file and switches on a good one.

use std::time::Duration;

use crate::harness::{TestDb, eventually, pgpulse, text};
use crate::service::{has_family, start};

const GOOD: &str = "queries:
  - name: one
    help: one
    sql: SELECT 1 AS v
    metrics:
      - column: v
        name: pg_test_one
        type: gauge
        help: One.
";

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn check(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = pgpulse(args, env);
    let (o, e) = text(&out);
    (out.status.code(), format!("{o}{e}"))
}

#[test]
fn check_config_accepts_the_shipped_catalog_and_example_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, msg) = check(
        &[
            "check-config",
            "--config",
            &format!("{root}/pgpulse.example.yaml"),
            "--queries",
            &format!("{root}/queries.yaml"),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{msg}");
}

#[test]
fn an_unknown_config_key_is_exit_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        &dir,
        "pgpulse.yaml",
        "database:\n  pool_size: 2\n  pool_sizee: 3\n",
    );
    let (code, msg) = check(&["check-config", "--config", &cfg], &[]);
    assert_eq!(code, Some(2), "{msg}");
    assert!(
        msg.contains(&format!("{cfg}:3:3: unknown field `pool_sizee`")),
        "file, line and key: {msg}"
    );
    assert!(msg.contains("pool_sizee"), "key: {msg}");
}

#[test]
fn named_root_blockers_outside_one_to_twenty_are_refused_naming_the_key() {
    for n in ["0", "21"] {
        let (code, msg) = check(
            &["check-config"],
            &[("PGPULSE_SAMPLING__LOCK_ROOTS_NAMED", n)],
        );
        assert_eq!(code, Some(2), "{msg}");
        assert!(
            msg.contains("sampling.lock_roots_named") && msg.contains("outside 1..=20"),
            "{msg}"
        );
    }
    let (code, msg) = check(
        &["check-config"],
        &[("PGPULSE_SAMPLING__LOCK_ROOTS_NAMED", "20")],
    );
    assert_eq!(code, Some(0), "{msg}");
}

#[test]
fn a_bad_value_in_the_environment_names_the_variable() {
    let (code, msg) = check(
        &["check-config"],
        &[("PGPULSE_DATABASE__POOL_SIZE", "many")],
    );
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("PGPULSE_DATABASE__POOL_SIZE"), "{msg}");
}

#[test]
fn the_command_line_beats_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let q = write(&dir, "q.yaml", GOOD);
    let cfg = write(&dir, "c.yaml", "web:\n  listen_address: 127.0.0.1:1111\n");
    let (code, msg) = check(&["check-config", "--config", &cfg, "--queries", &q], &[]);
    assert_eq!(code, Some(0), "{msg}");
    assert!(msg.contains("127.0.0.1:1111"), "{msg}");
    let (_, msg) = check(
        &["check-config", "--config", &cfg, "--queries", &q],
        &[("PGPULSE_WEB__LISTEN_ADDRESS", "127.0.0.1:2222")],
    );
    assert!(msg.contains("127.0.0.1:2222"), "env over file: {msg}");
    let (_, msg) = check(
        &[
            "check-config",
            "--config",
            &cfg,
            "--queries",
            &q,
            "--database-url",
            "postgres://a@db.example:5999/x",
        ],
        &[("PGPULSE_DATABASE__HOST", "other.example")],
    );
    assert!(msg.contains("db.example:5999"), "cli over env: {msg}");
}

#[test]
fn catalog_errors_name_file_line_column_query_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            GOOD.replace("name: pg_test_one", "name: pg test one"),
            "not a valid Prometheus name",
            7,
        ),
        (
            GOOD.replace("help: one\n", "help: one\n    timeout: 30s\n"),
            "timeout",
            4,
        ),
        (
            GOOD.replace("type: gauge", "type: gauge\n        colour: red"),
            "colour",
            9,
        ),
        (
            format!("{GOOD}{}", GOOD.replace("queries:\n", "")),
            "duplicate query name",
            10,
        ),
        (
            GOOD.replace("name: pg_test_one", "name: pg_test_one_total"),
            "must not end in _total",
            7,
        ),
        (
            GOOD.replace(
                "    sql: SELECT 1 AS v\n",
                "    sql: SELECT 1 AS v\n    labels: [le]\n",
            ),
            "le",
            5,
        ),
        (
            GOOD.replace("help: One.", "help: \"One\\\\two\""),
            "help must be one line",
            6,
        ),
        (
            GOOD.replace("SELECT 1 AS v", "SELECT 1 AS v, 2 AS w").replace(
                "        help: One.\n",
                "        help: One.\n      - {column: w, name: pg_test_one_total, type: counter, help: Two.}\n",
            ),
            "would expose the same family",
            10,
        ),
        (
            GOOD.replace("    help: one\n", "    help: one\n    role: standby\n"),
            "replica",
            4,
        ),
        (
            GOOD.replace("    help: one\n", "    help: one\n    accumulate: seconds\n"),
            "must be type counter",
            4,
        ),
        (
            GOOD.replace("    help: one\n", "    help: one\n    signals: lock_waits\n"),
            "signals needs scope: server",
            4,
        ),
        (
            GOOD.replace(
                "    help: one\n",
                "    help: one\n    rollup_key: k\n    idle_without: lock_waits\n",
            ),
            "idle_without cannot be combined",
            5,
        ),
        (
            format!(
                "{GOOD}{}",
                GOOD.replace("queries:\n", "")
                    .replace("name: one", "name: two")
                    .replace("    help: one\n", "    help: one\n    min_server_version: 150000\n")
            ),
            "disjoint server versions",
            16,
        ),
    ];
    for (text, needle, line) in cases {
        let q = write(&dir, "queries.yaml", &text);
        let (code, msg) = check(&["check-config", "--queries", &q], &[]);
        assert_eq!(code, Some(2), "{msg}");
        assert!(msg.contains(needle), "{needle}: {msg}");
        assert!(msg.contains(&format!("{q}:{line}:")), "line {line}: {msg}");
    }
}

#[test]
fn a_bad_duration_deep_in_the_catalog_is_file_line_column_never_0_0() {
    // The duration is checked by pgpulse's own deserializer, which serde-saphyr gives no
    // location: it once printed `file:0:0: line 640: ...`. Put it far down the file.
    let dir = tempfile::tempdir().unwrap();
    let padding = "# filler\n".repeat(600);
    let bad = GOOD.replace("    help: one\n", "    help: one\n    interval: soon\n");
    let q = write(&dir, "queries.yaml", &format!("{padding}{bad}"));
    let (code, msg) = check(&["check-config", "--queries", &q], &[]);
    assert_eq!(code, Some(2), "{msg}");
    let line = 600 + 4;
    assert!(
        msg.contains(&format!("{q}:{line}:15: invalid duration `soon`")),
        "file:line:col of the value: {msg}"
    );
    assert!(!msg.contains(":0:0") && !msg.contains(": line "), "{msg}");
    // The parser's own errors: the location once, in front, not repeated after the message.
    let q = write(
        &dir,
        "enum.yaml",
        &format!("{padding}{}", GOOD.replace("type: gauge", "type: gaugey")),
    );
    let (code, msg) = check(&["check-config", "--queries", &q], &[]);
    assert_eq!(code, Some(2), "{msg}");
    assert!(
        msg.contains(&format!("{q}:{}:15: unknown variant `gaugey`", 600 + 8)),
        "{msg}"
    );
    assert!(!msg.contains("at line"), "{msg}");
}

#[test]
fn a_metric_name_may_repeat_only_in_queries_for_disjoint_server_versions() {
    let dir = tempfile::tempdir().unwrap();
    let old = GOOD.replace(
        "    help: one\n",
        "    help: one\n    max_server_version: 169999\n",
    );
    let new = GOOD
        .replace("queries:\n", "")
        .replace("name: one", "name: two")
        .replace(
            "    help: one\n",
            "    help: one\n    min_server_version: 170000\n",
        );
    let q = write(&dir, "queries.yaml", &format!("{old}{new}"));
    let (code, msg) = check(&["check-config", "--queries", &q], &[]);
    assert_eq!(code, Some(0), "{msg}");
}

#[tokio::test]
async fn a_reload_with_a_bad_file_keeps_the_running_catalog_and_a_good_one_switches() {
    let db = TestDb::new().await;
    let svc = start(&db.url, GOOD, |_| {}).await;
    svc.wait_for("first catalog sampled", |b| has_family(b, "pg_test_one"))
        .await;
    std::fs::write(&svc.catalog_path, "queries:\n  - name: [broken\n").unwrap();
    assert!(svc.reloader.reload().is_err());
    let body = eventually(crate::harness::PATIENCE, || async {
        let b = svc.metrics().await;
        b.contains("pgpulse_config_reloads_total{result=\"failure\"} 1")
            .then_some(b)
    })
    .await
    .expect("failure counted");
    assert!(body.contains("pgpulse_config_last_reload_successful 0"));
    assert!(has_family(&body, "pg_test_one"), "old catalog still served");
    std::fs::write(
        &svc.catalog_path,
        GOOD.replace("pg_test_one", "pg_test_two")
            .replace("name: one", "name: two"),
    )
    .unwrap();
    let applied = svc.reloader.reload().expect("a good catalog reloads");
    assert_eq!((applied.started, applied.stopped, applied.kept), (1, 1, 0));
    svc.wait_for("switched to the new catalog", |b| {
        has_family(b, "pg_test_two")
            && !has_family(b, "pg_test_one")
            && !b.contains("query=\"one\"")
    })
    .await;
    svc.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_catalog_of_a_running_binary() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let q = write(&dir, "queries.yaml", GOOD);
    let port = pgpulse::demo::cluster::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgpulse"))
        .args([
            "serve",
            "--database-url",
            &db.url,
            "--queries",
            &q,
            "--listen-address",
            &listen,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let url = format!("http://{listen}/metrics");
    let fetch = || async { reqwest::get(&url).await.ok()?.text().await.ok() };
    eventually(crate::harness::PATIENCE, || async {
        fetch().await.filter(|b| has_family(b, "pg_test_one"))
    })
    .await
    .expect("serving");
    std::fs::write(&q, "not: [valid").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    eventually(crate::harness::PATIENCE, || async {
        fetch().await.filter(|b| {
            b.contains("pgpulse_config_reloads_total{result=\"failure\"} 1")
                && has_family(b, "pg_test_one")
        })
    })
    .await
    .expect("bad reload refused, old catalog kept");
    std::fs::write(&q, GOOD.replace("pg_test_one", "pg_test_two")).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    eventually(crate::harness::PATIENCE, || async {
        fetch()
            .await
            .filter(|b| has_family(b, "pg_test_two") && !has_family(b, "pg_test_one"))
    })
    .await
    .expect("good reload switched");
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "graceful exit 0: {status}");
}

#[tokio::test]
async fn check_config_with_a_database_prepares_every_query_and_names_a_missing_column() {
    let db = TestDb::trade_migrated().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, msg) = check(
        &[
            "check-config",
            "--queries",
            &format!("{root}/queries.yaml"),
            "--database-url",
            &db.url,
        ],
        &[],
    );
    assert_eq!(
        code,
        Some(0),
        "the shipped catalog fits the migrated schema: {msg}"
    );
    assert!(msg.contains("every query prepared"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    let q = write(
        &dir,
        "queries.yaml",
        &GOOD.replace("SELECT 1 AS v", "SELECT 1 AS w"),
    );
    let (code, msg) = check(
        &["check-config", "--queries", &q, "--database-url", &db.url],
        &[],
    );
    assert_eq!(code, Some(2), "{msg}");
    assert!(
        msg.contains(&format!("{q}:2:"))
            && msg.contains("query \"one\"")
            && msg.contains("column \"v\""),
        "{msg}"
    );
}

#[test]
fn an_unknown_sslmode_is_refused_from_the_key_the_url_and_pgsslmode() {
    let dir = tempfile::tempdir().unwrap();
    let key = write(
        &dir,
        "key.yaml",
        "database:\n  url: postgres://u@127.0.0.1:1/db\n  sslmode: verify-fool\n",
    );
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: [Case; 3] = [
        (vec!["check-config", "--config", &key], vec![]),
        (
            vec![
                "check-config",
                "--database-url",
                "postgres://u@127.0.0.1:1/db?sslmode=verify-fool",
            ],
            vec![],
        ),
        (
            vec![
                "check-config",
                "--database-url",
                "postgres://u@127.0.0.1:1/db",
            ],
            vec![("PGSSLMODE", "verify-fool")],
        ),
    ];
    for (args, env) in cases {
        let (code, msg) = check(&args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {msg}");
        assert!(msg.to_lowercase().contains("sslmode"), "{msg}");
    }
}

#[test]
fn without_a_catalog_file_the_built_in_catalog_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgpulse"))
        .arg("check-config")
        .current_dir(dir.path())
        .env_remove("PGPULSE_QUERIES_FILE")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let shipped = pgpulse::catalog::Catalog::builtin(Default::default()).unwrap();
    assert!(
        stdout.contains(&format!(
            "{} queries from queries.yaml (built in)",
            shipped.queries.len()
        )),
        "{stdout}"
    );
}

#[test]
fn log_format_in_the_config_file_is_honoured() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let port = pgpulse::demo::cluster::free_port().unwrap();
    let cfg = write(
        &dir,
        "json.yaml",
        &format!(
            "log_format: json\nweb:\n  listen_address: 127.0.0.1:{port}\ndatabase:\n  url: postgres://u@127.0.0.1:1/db\n"
        ),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgpulse"))
        .args(["serve", "--config", &cfg])
        .env_remove("PGPULSE_LOG_FORMAT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let first = std::io::BufReader::new(stderr).lines().next();
        let _ = tx.send(first);
    });
    let line = rx.recv_timeout(crate::harness::PATIENCE);
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a log line").expect("a line").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert!(json["fields"]["message"].is_string(), "{json}");
}
