//! A rotated password needs no restart: the role's password changed in the server and in
//! the auth's password file, the next connection succeeds with the new one; neither password
//! appears in anything pgpulse serves.

use super::{WHOAMI, target, whoami};
use crate::harness::{connect, exec, own_cluster};
use crate::service::{sample, start_settings};
use pgpulse::config::fleet::AuthSettings;
use pgpulse::demo::ClusterOptions;

const OLD: &str = "Old-Rotating-Secret-41";
const NEW: &str = "New-Rotating-Secret-42";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_file_is_used_by_the_next_connection_without_a_restart() {
    let cluster = own_cluster(ClusterOptions {
        hba: Some("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n".into()),
        ..ClusterOptions::default()
    });
    let local = format!(
        "host={} port={} user=postgres dbname=postgres",
        cluster.dir().display(),
        cluster.port()
    );
    let admin = connect(&local).await;
    exec(
        &admin,
        &format!("CREATE ROLE rotator LOGIN PASSWORD '{OLD}'; GRANT pg_monitor TO rotator"),
    )
    .await;
    let pw_file = std::sync::Mutex::new(None);
    let url = format!("postgres://127.0.0.1:{}/postgres", cluster.port());
    let svc = start_settings(WHOAMI, |s, dir| {
        let f = dir.join("password");
        std::fs::write(&f, format!("{OLD}\n")).unwrap();
        s.auths.insert(
            "monitor".into(),
            AuthSettings {
                user: Some("rotator".into()),
                password_file: Some(f.clone()),
                ..AuthSettings::default()
            },
        );
        let mut t = target("rotating", &url, &[]);
        t.auth = Some("monitor".into());
        s.targets = vec![t];
        *pw_file.lock().unwrap() = Some(f);
    })
    .await;
    let pw_file = pw_file.lock().unwrap().clone().unwrap();
    svc.wait_probe("rotating", "a sample with the old password", |b| {
        sample(b, &whoami("postgres")) == Some(1.0)
    })
    .await;
    // Rotate: the server first, then the file; then end pgpulse's sessions so it reconnects.
    exec(&admin, &format!("ALTER ROLE rotator PASSWORD '{NEW}'")).await;
    std::fs::write(&pw_file, format!("{NEW}\n")).unwrap();
    let runs = |b: &str| sample(b, "pgpulse_query_runs_total{query=\"whoami\"}").unwrap_or(0.0);
    let before = runs(&svc.probe("rotating").await.1);
    exec(
        &admin,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'rotator'",
    )
    .await;
    let body = svc
        .wait_probe("rotating", "samples on a new connection", |b| {
            sample(b, "pg_up") == Some(1.0) && runs(b) >= before + 3.0
        })
        .await;
    let sessions: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'rotator'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(sessions >= 1, "pgpulse connected again as rotator");
    for (what, text) in [
        ("probe", body),
        ("metrics", svc.metrics().await),
        ("sd", svc.get("/sd").await.1),
        ("landing page", svc.get("/").await.1),
    ] {
        assert!(
            !text.contains(OLD) && !text.contains(NEW),
            "a password in {what}:\n{text}"
        );
    }
    svc.stop().await;
}
