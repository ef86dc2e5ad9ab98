//! Measures the error of the statement latency histogram: a workload of known latencies
//! (pg_sleep, timed on the client), then histogram_quantile over pgpulse's buckets against
//! the true quantiles of the client timings. Figures go to BENCHMARKS.md and
//! docs/statement-latency.md. Run: `cargo bench --bench latency_error`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

const CATALOG: &str = "queries:
  - name: statement_latency
    help: latency
    interval: 2s
    timeout: 1500ms
    requires_preload: pg_stat_statements
    sql: SELECT queryid::text || ':' || userid::text || ':' || dbid::text AS statement, calls, total_exec_time_ms FROM monitoring.statement_stats()
    histogram:
      name: pg_statement_latency_seconds
      help: latency
      key_column: statement
      calls_column: calls
      time_ms_column: total_exec_time_ms
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10]
";

/// (le, cumulative count) of the histogram in `body`.
fn buckets(body: &str) -> Vec<(f64, f64)> {
    body.lines()
        .filter_map(|l| l.strip_prefix("pg_statement_latency_seconds_bucket{le=\""))
        .filter_map(|r| {
            let (le, v) = r.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect()
}

/// Prometheus' histogram_quantile: linear interpolation inside the bucket.
fn histogram_quantile(q: f64, b: &[(f64, f64)]) -> f64 {
    let total = b.last().map(|x| x.1).unwrap_or(0.0);
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in b {
        if c >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            return prev.0 + (le - prev.0) * (rank - prev.1) / (c - prev.1).max(f64::MIN_POSITIVE);
        }
        prev = (le, c);
    }
    prev.0
}

fn true_quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn wait_runs(addr: std::net::SocketAddr, at_least: f64) -> String {
    loop {
        let b = common::metrics(addr).await;
        if common::sample(&b, "pgpulse_query_runs_total{query=\"statement_latency\"}")
            .unwrap_or(0.0)
            >= at_least
        {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `calls` of the mixture (sleep ms, weight, distinct shape?) and returns client timings.
async fn workload(
    c: &tokio_postgres::Client,
    mix: &[(f64, f64)],
    calls: usize,
    distinct: bool,
) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let total: f64 = mix.iter().map(|m| m.1).sum();
    let mut timings = Vec::with_capacity(calls);
    for _ in 0..calls {
        let mut x = rng.random::<f64>() * total;
        let mut pick = 0;
        for (i, m) in mix.iter().enumerate() {
            if x < m.1 {
                pick = i;
                break;
            }
            x -= m.1;
        }
        let ms = mix[pick].0;
        // Distinct shapes get distinct queryids (one column more each); the same shape with
        // another constant shares one queryid.
        let cols: String = if distinct {
            (0..=pick).map(|i| format!("{i} AS c{i}, ")).collect()
        } else {
            String::new()
        };
        let sql = format!("SELECT {cols}pg_sleep({})", ms / 1000.0);
        let t = Instant::now();
        c.simple_query(&sql).await.unwrap();
        timings.push(t.elapsed().as_secs_f64());
    }
    timings.sort_by(|a, b| a.total_cmp(b));
    timings
}

async fn scenario(
    name: &str,
    url: &str,
    addr: std::net::SocketAddr,
    mix: &[(f64, f64)],
    calls: usize,
    distinct: bool,
) {
    let c = common::connect(url).await;
    let runs = common::sample(
        &wait_runs(addr, 2.0).await,
        "pgpulse_query_runs_total{query=\"statement_latency\"}",
    )
    .unwrap();
    let before = buckets(&wait_runs(addr, runs + 1.0).await);
    let timings = workload(&c, mix, calls, distinct).await;
    let runs = common::sample(
        &common::metrics(addr).await,
        "pgpulse_query_runs_total{query=\"statement_latency\"}",
    )
    .unwrap();
    let after = buckets(&wait_runs(addr, runs + 2.0).await);
    let delta: Vec<(f64, f64)> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a.0, a.1 - b.1))
        .collect();
    println!("\n### {name} ({calls} calls, client-timed)\n");
    println!("| quantile | true (client) | pgpulse histogram_quantile | error |");
    println!("| --- | --- | --- | --- |");
    for q in [0.5, 0.9, 0.99] {
        let t = true_quantile(&timings, q);
        let h = histogram_quantile(q, &delta);
        println!(
            "| p{} | {:.1} ms | {:.1} ms | {:+.1} % |",
            (q * 100.0) as u32,
            t * 1000.0,
            h * 1000.0,
            (h - t) / t * 100.0
        );
    }
    println!(
        "\nobserved calls: {} (pgpulse's own sampling statements included)",
        delta.last().map(|d| d.1).unwrap_or(0.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let (cluster, url) = common::cluster().await;
    let (addr, stop, _dir) = common::serve(&url, CATALOG).await;
    // Distinct statements with fixed latencies: 60% 1 ms, 25% 5 ms, 10% 20 ms, 4% 60 ms, 1% 150 ms.
    let mix = [
        (1.0, 60.0),
        (5.0, 25.0),
        (20.0, 10.0),
        (60.0, 4.0),
        (150.0, 1.0),
    ];
    scenario(
        "distinct statements, each with a fixed latency",
        &url,
        addr,
        &mix,
        2000,
        true,
    )
    .await;
    // One statement whose latency varies: 97% 2 ms, 3% 200 ms (the method's known limit).
    let mix = [(2.0, 97.0), (200.0, 3.0)];
    scenario(
        "one statement with a bimodal latency (known limit)",
        &url,
        addr,
        &mix,
        2000,
        false,
    )
    .await;
    let _ = stop.send(());
    drop(cluster);
}
