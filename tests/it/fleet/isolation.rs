//! One hung server slows no other target: a target whose server is stopped with SIGSTOP and a
//! target at a listener that accepts and never answers each use their own slots and
//! timeouts, and the healthy target keeps its interval and answers `/probe`.

use super::{WHOAMI, target, whoami};
use crate::harness::{TestDb, own_cluster};
use crate::health::{Stopped, postmaster_pid};
use crate::service::{Running, sample, start_settings};

/// Holds every connection a silent listener accepts, answering nothing.
fn silent_listener() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

/// Runs of the healthy target's query so far.
async fn runs(svc: &Running) -> f64 {
    let body = svc.probe("healthy").await.1;
    sample(&body, "pgpulse_query_runs_total{query=\"whoami\"}").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_and_a_silent_listener_slow_no_other_target() {
    let cluster = own_cluster(Default::default());
    let stopped = Stopped::default();
    let healthy = TestDb::new().await;
    let (silent, _accepting) = silent_listener();
    let frozen_url = cluster.url("postgres");
    let svc = start_settings(WHOAMI, |s, _| {
        s.targets = vec![
            target("healthy", &healthy.url, &[]),
            target("frozen", &frozen_url, &[]),
            target(
                "silent",
                &format!("postgres://pgpulse@{silent}/postgres"),
                &[],
            ),
        ];
        s.fleet.max_connections = 6;
    })
    .await;
    svc.wait_probe("frozen", "a first sample", |b| {
        sample(b, &whoami("postgres")) == Some(1.0)
    })
    .await;
    // Freeze the server: the postmaster and every backend pgpulse holds there.
    // Freeze the server: the postmaster first, so that no process starts after, then every
    // process it started (pgpulse's backends, also one still in its start-up, which
    // pg_stat_activity does not show yet).
    let postmaster = postmaster_pid(&cluster);
    stopped.stop(postmaster);
    let children = std::process::Command::new("pgrep")
        .args(["-P", &postmaster.to_string()])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&children.stdout).split_whitespace() {
        stopped.stop(pid.parse().unwrap());
    }
    // Each hung target's own body says down (the process body, rendered at most once a
    // second, may still show the state before the freeze).
    for t in ["frozen", "silent"] {
        svc.wait_probe(t, "down", |b| sample(b, "pg_up") == Some(0.0))
            .await;
    }
    // The healthy target keeps sampling every second while both stay hung.
    let before = runs(&svc).await;
    svc.wait_probe("healthy", "ten more runs", |b| {
        sample(b, "pgpulse_query_runs_total{query=\"whoami\"}").unwrap_or(0.0) >= before + 10.0
    })
    .await;
    let body = svc.probe("healthy").await.1;
    assert_eq!(sample(&body, "pg_up"), Some(1.0), "{body}");
    let frozen = svc.probe("frozen").await;
    assert_eq!((frozen.0, sample(&frozen.1, "pg_up")), (200, Some(0.0)));
    let m = svc.metrics().await;
    assert!(
        sample(&m, "pgpulse_fleet_connections").unwrap() <= 6.0,
        "the cap holds:\n{m}"
    );
    svc.stop().await;
    drop(stopped);
}
