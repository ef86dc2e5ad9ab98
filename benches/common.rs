//! Shared setup of the benchmarks: a throwaway cluster and pgpulse served in-process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use pgpulse::catalog::{Catalog, Defaults};
use pgpulse::demo::{ClusterOptions, TempCluster};
use tokio_postgres::{Client, NoTls};

/// Connects to `url` (panics on failure: benchmarks have no error path worth keeping).
pub(crate) async fn connect(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    c
}

/// A cluster with database `bench`, migrated.
pub(crate) async fn cluster() -> (TempCluster, String) {
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default()))
        .await
        .unwrap()
        .expect("start cluster");
    connect(&cluster.url("postgres"))
        .await
        .batch_execute("CREATE DATABASE bench")
        .await
        .unwrap();
    let url = cluster.url("bench");
    let mut c = connect(&url).await;
    pgpulse::db::migrate::migrate(&mut c)
        .await
        .expect("migrate");
    (cluster, url)
}

/// Serves pgpulse in-process on 127.0.0.1:0 for `url` with `catalog` (YAML text).
/// The temp dir holding the catalog is removed when the returned guard drops.
pub(crate) async fn serve(
    url: &str,
    catalog: &str,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("queries.yaml");
    std::fs::write(&path, catalog).unwrap();
    let mut s = pgpulse::config::Settings::default();
    s.database.url = Some(url.to_owned().into());
    s.web.listen_address = "127.0.0.1:0".into();
    let cfg = s.validate().unwrap();
    let cat = Catalog::load(
        &path,
        Defaults {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
        },
    )
    .unwrap();
    let app = pgpulse::app::App::build(cfg, cat).await.unwrap();
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    (addr, tx, dir)
}

/// GET /metrics as text.
pub(crate) async fn metrics(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series `series` in `body`.
pub(crate) fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A `/proc/PID/status` figure in kB (`VmRSS:`, `VmHWM:`), 0 when unreadable.
pub(crate) fn proc_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `PGPULSE_BENCH_SECONDS`, else `default`.
pub(crate) fn bench_seconds(default: u64) -> u64 {
    std::env::var("PGPULSE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The built `pgpulse serve --config CONFIG` on a free loopback port (its stdout and stderr
/// discarded); returns the child and its `host:port`.
pub(crate) fn serve_binary(config: &std::path::Path) -> (std::process::Child, String) {
    let listen = format!("127.0.0.1:{}", pgpulse::demo::cluster::free_port().unwrap());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgpulse"))
        .args(["serve", "--listen-address", &listen])
        .arg("--config")
        .arg(config)
        .env_remove("PGPULSE_BENCH_SECONDS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (child, listen)
}
