//! Secrets stay secret: the password never appears in logs, the landing page, error
//! messages, /metrics or `Debug` output.

use crate::harness::{TestDb, eventually, with_db};

const PASSWORD: &str = "Sup3r-S3cret-pw";

#[tokio::test]
async fn the_password_never_appears_in_logs_landing_page_errors_or_metrics() {
    let db = TestDb::new().await;
    // Trust authentication accepts any password, so the URL below connects for real.
    let url = db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{PASSWORD}@"),
        1,
    );
    assert!(url.contains(PASSWORD));
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("queries.yaml");
    std::fs::write(
        &q,
        "queries:\n  - name: ok\n    help: ok\n    sql: SELECT 1 AS v\n    metrics:\n      - {column: v, name: pg_test_ok, type: gauge, help: ok}\n  - name: broken\n    help: broken\n    sql: SELECT nope AS v\n    metrics:\n      - {column: v, name: pg_test_broken, type: gauge, help: broken}\n",
    )
    .unwrap();
    let log = dir.path().join("log");
    let port = pgpulse::demo::cluster::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgpulse"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--queries",
            q.to_str().unwrap(),
            "--listen-address",
            &listen,
        ])
        .env("PGPULSE_DATABASE_URL", &url)
        .env("PGPULSE_DATABASE__PASSWORD", PASSWORD)
        .env("PGPULSE_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://{listen}");
    let body = eventually(crate::harness::PATIENCE, || async {
        let b = reqwest::get(format!("{base}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        b.contains("pgpulse_query_errors_total{query=\"broken\",kind=\"sql\"} 1")
            .then_some(b)
    })
    .await;
    let landing = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ready = reqwest::get(format!("{base}/ready"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // An unreachable server with the password in its URL: the error message.
    let bad = with_db(&url, "x").replace(
        &format!(
            ":{}/",
            url.split(':').nth(3).unwrap().split('/').next().unwrap()
        ),
        ":1/",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgpulse"))
        .args(["migrate", "--database-url", &bad])
        .output()
        .unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let body = body.expect("served metrics with the broken query counted");
    let logs = std::fs::read_to_string(&log).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unreachable server: {err}");
    assert!(
        landing.contains("broken") && landing.contains("postgres@127.0.0.1"),
        "{landing}"
    );
    assert!(logs.contains("query failed"), "{logs}");
    for (what, text) in [
        ("logs", &logs),
        ("landing page", &landing),
        ("metrics", &body),
        ("ready", &ready),
        ("error", &err.to_string()),
    ] {
        assert!(!text.contains(PASSWORD), "password in {what}:\n{text}");
    }
}

#[test]
fn debug_and_display_of_the_config_redact_the_password() {
    let mut s = pgpulse::config::Settings::default();
    s.database.url = Some(format!("postgres://u:{PASSWORD}@h/db").into());
    s.database.password = Some(PASSWORD.to_owned().into());
    let printed = format!("{s:?}");
    assert!(!printed.contains(PASSWORD), "{printed}");
    let c = s.validate().unwrap();
    let printed = format!("{c:?} {}", c.target);
    assert!(!printed.contains(PASSWORD), "{printed}");
}

#[test]
fn a_numeric_password_in_the_environment_is_never_echoed() {
    let out = crate::harness::pgpulse(
        &["check-config"],
        &[("PGPULSE_DATABASE__PASSWORD", "12345678")],
    );
    let (stdout, stderr) = crate::harness::text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!format!("{stdout}{stderr}").contains("12345678"));
}
