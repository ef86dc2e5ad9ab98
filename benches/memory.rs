//! Memory bounded by the budget: a catalog query returning 2,000,000 rows with
//! `max_series: 100`, sampled by the real `pgpulse serve` binary. Rows are streamed through a
//! portal and only the budget is kept, so the peak RSS while the big query runs stays near the
//! idle RSS. Reports the RSS before the first run and the peak (VmHWM) after five runs.
//! Run: `cargo bench --bench memory`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

const ROWS: u64 = 2_000_000;

const CATALOG: &str = "queries:
  - name: huge
    help: two million rows, a budget of 100
    interval: 5s
    timeout: 4s
    max_series: 100
    labels: [id]
    sql: SELECT g::text AS id, g AS v FROM generate_series(1, 2000000) g
    metrics:
      - {column: v, name: pg_bench_huge, type: gauge, help: One row.}
";

/// A field of /proc/<pid>/status in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (cluster, url) = common::cluster().await;
        let dir = tempfile::tempdir().unwrap();
        let queries = dir.path().join("queries.yaml");
        std::fs::write(&queries, CATALOG).unwrap();
        let port = pgpulse::demo::cluster::free_port().unwrap();
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgpulse"))
            .args(["serve", "--listen-address", &listen, "--database-url", &url])
            .arg("--queries")
            .arg(&queries)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Idle: before the first run (the first run is spread, so wait for the listener).
        let addr: std::net::SocketAddr = listen.parse().unwrap();
        while reqwest::get(format!("http://{listen}/health")).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let idle = status_kb(pid, "VmRSS:");
        let started = std::time::Instant::now();
        let mut runs = 0.0;
        let mut dropped = 0.0;
        while runs < 5.0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let body = common::metrics(addr).await;
            runs = common::sample(&body, "pgpulse_query_runs_total{query=\"huge\"}").unwrap_or(0.0);
            dropped = common::sample(&body, "pgpulse_query_series_dropped_total{query=\"huge\"}")
                .unwrap_or(0.0);
            assert!(started.elapsed() < Duration::from_secs(600), "no runs: {body}");
        }
        let body = common::metrics(addr).await;
        let errors: f64 = body
            .lines()
            .filter(|l| l.starts_with("pgpulse_query_errors_total{query=\"huge\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let series = body.lines().filter(|l| l.starts_with("pg_bench_huge{")).count();
        let peak = status_kb(pid, "VmHWM:");
        let rss = status_kb(pid, "VmRSS:");
        println!(
            "memory: {ROWS} rows per run, max_series 100: {runs} runs ({errors} failed), {series} series exposed, {dropped} rows dropped in total"
        );
        println!(
            "memory: RSS idle {:.1} MB, peak (VmHWM) {:.1} MB, after the runs {:.1} MB",
            idle as f64 / 1024.0,
            peak as f64 / 1024.0,
            rss as f64 / 1024.0
        );
        let _ = child.kill();
        let _ = child.wait();
        drop(cluster);
    });
}
