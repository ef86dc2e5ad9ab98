//! `/probe` serves each target's own body, `/sd` lists the targets for Prometheus, `/metrics`
//! has the process's own metrics, and a name not in the list is 404 without a connection.

use super::{WHOAMI, target, whoami};
use crate::exporter::promtool_check;
use crate::harness::TestDb;
use crate::service::{has_family, sample, start_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_target_is_served_at_probe_and_listed_at_sd_for_prometheus() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    let svc = start_settings(WHOAMI, |s, _| {
        s.targets = vec![
            target("trading", &a.url, &[("cluster", "eu"), ("env", "prod")]),
            target("risk", &b.url, &[]),
        ];
    })
    .await;
    for (name, db, other) in [("trading", &a, &b), ("risk", &b, &a)] {
        let body = svc
            .wait_probe(name, "its database sampled", |body| {
                sample(body, &whoami(&db.name)) == Some(1.0)
            })
            .await;
        assert_eq!(sample(&body, "pg_up"), Some(1.0), "{body}");
        assert_eq!(sample(&body, &whoami(&other.name)), None, "{body}");
        promtool_check(&body).unwrap();
    }
    let m = svc
        .wait_for("both targets up and ready in /metrics", |m| {
            ["trading", "risk"]
                .iter()
                .all(|t| sample(m, &format!("pgpulse_target_ready{{target=\"{t}\"}}")) == Some(1.0))
        })
        .await;
    assert!(
        !has_family(&m, "pg_up"),
        "/metrics is the process's own:\n{m}"
    );
    assert_eq!(sample(&m, "pgpulse_fleet_targets"), Some(2.0));
    assert_eq!(sample(&m, "pgpulse_fleet_max_connections"), Some(20.0));
    promtool_check(&m).unwrap();
    let (status, sd) = svc.get("/sd").await;
    assert_eq!(status, 200);
    let sd: serde_json::Value = serde_json::from_str(&sd).unwrap();
    let expected = serde_json::json!([
        {"targets": [svc.addr.to_string()], "labels": {"__metrics_path__": "/probe", "__param_target": "risk", "instance": "risk"}},
        {"targets": [svc.addr.to_string()], "labels": {"__metrics_path__": "/probe", "__param_target": "trading", "instance": "trading", "cluster": "eu", "env": "prod"}},
    ]);
    assert_eq!(sd, expected);
    let (status, ready) = svc.get("/ready").await;
    assert_eq!(
        (status, ready.as_str()),
        (200, "risk: ready\ntrading: ready\n")
    );
    assert_eq!(svc.get("/ready?target=risk").await.0, 200);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_not_in_the_list_is_404_and_opens_no_connection() {
    let db = TestDb::new().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let svc = start_settings(WHOAMI, |s, _| {
        s.targets = vec![target("trading", &db.url, &[])];
    })
    .await;
    svc.wait_probe("trading", "a sample", |b| {
        sample(b, &whoami(&db.name)).is_some()
    })
    .await;
    let hostile = [
        format!("127.0.0.1:{port}"),
        format!("postgres://127.0.0.1:{port}/postgres"),
        format!("host=127.0.0.1 port={port} dbname=postgres"),
        "trading ".to_owned(),
        "TRADING".to_owned(),
        "../trading".to_owned(),
        String::new(),
    ];
    for name in &hostile {
        let (status, body) = svc.probe(name).await;
        assert_eq!(status, 404, "{name:?}: {body}");
        assert!(
            !body.contains(&port.to_string()),
            "the answer echoes nothing: {body}"
        );
    }
    for path in ["/probe", "/ready?target=nope", "/health/db?target=nope"] {
        assert_eq!(svc.get(path).await.0, 404, "{path}");
    }
    // Let pgpulse work on after the requests (a connection started in the background by one
    // of them would be made meanwhile): three more runs of its target's query. Then nothing
    // may wait in the listener's queue (the kernel completes a handshake without accept).
    let runs = |b: &str| sample(b, "pgpulse_query_runs_total{query=\"whoami\"}").unwrap_or(0.0);
    let before = runs(&svc.probe("trading").await.1);
    svc.wait_probe("trading", "three more runs", |b| runs(b) >= before + 3.0)
        .await;
    let accepted = listener.accept();
    assert!(
        accepted
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "pgpulse connected to a name it was given: {accepted:?}"
    );
    svc.stop().await;
}
