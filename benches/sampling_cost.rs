//! The database cost of sampling: the real `pgpulse serve` binary with a catalog (the shipped
//! queries.yaml unless `PGPULSE_BENCH_QUERIES` names another) samples a throwaway cluster with
//! the trade-engine schema and 5 pairs of time-range partitioned tables shaped like its orders
//! (by month) and trades (by day), 2,500 partitions in all (scripts/trading-shape.sql), for
//! `PGPULSE_BENCH_SECONDS` (default 600) as a dedicated login role in `pgpulse_monitor`; then
//! pg_stat_statements of that role says how much database time the sampling cost, per minute,
//! in total and per statement. Run: `cargo bench --bench sampling_cost`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let seconds: u64 = common::bench_seconds(600);
    let queries = std::env::var("PGPULSE_BENCH_QUERIES")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/queries.yaml").to_owned());
    let (cluster, url) = common::cluster().await;
    let c = common::connect(&url).await;
    pgpulse::demo::schema::install(&c).await.unwrap();
    // 5 pairs of orders (by month) and trades (by day) shaped tables, 2,500 partitions of 4
    // relations each: about 10,000 relations in `public`.
    c.batch_execute(include_str!("../scripts/trading-shape.sql"))
        .await
        .unwrap();
    c.batch_execute("CALL bench_trading_shape(5, 2500)")
        .await
        .unwrap();
    c.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
         CREATE ROLE pgpulse_bench LOGIN IN ROLE pgpulse_monitor;
         SELECT pg_stat_statements_reset();",
    )
    .await
    .unwrap();
    let role_url = url.replace("postgres@", "pgpulse_bench@");
    let port = pgpulse::demo::cluster::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgpulse"))
        .args([
            "serve",
            "--database-url",
            &role_url,
            "--listen-address",
            &listen,
        ])
        .args(["--queries", &queries])
        .env_remove("PGPULSE_BENCH_SECONDS")
        .env_remove("PGPULSE_BENCH_QUERIES")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("pgpulse serve");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let body = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .map(|r| r.text())
        .expect("metrics")
        .await
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let errors: f64 = body
        .lines()
        .filter(|l| l.starts_with("pgpulse_query_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let minutes = seconds as f64 / 60.0;
    let of_role = "FROM pg_stat_statements WHERE userid = 'pgpulse_bench'::regrole";
    let total = c
        .query_one(
            &format!("SELECT sum(total_exec_time)::float8, sum(calls)::float8 {of_role}"),
            &[],
        )
        .await
        .unwrap();
    let (ms, calls): (f64, f64) = (total.get(0), total.get(1));
    println!("\n### Database cost of sampling ({queries}, {seconds} s, {errors} query errors)\n");
    println!(
        "All statements of the role: {calls} calls, {ms:.1} ms execution time: \
         {:.1} ms of database time per minute ({:.3} % of one core).\n",
        ms / minutes,
        ms / minutes / 600.0
    );
    println!("| statement | calls/min | mean ms | ms/min |\n| --- | --- | --- | --- |");
    let rows = c
        .query(
            &format!(
                "SELECT regexp_replace(left(query, 70), '\\s+', ' ', 'g'), calls::float8, \
                 mean_exec_time, total_exec_time {of_role} ORDER BY total_exec_time DESC LIMIT 15"
            ),
            &[],
        )
        .await
        .unwrap();
    for r in rows {
        let (q, n, mean, t): (String, f64, f64, f64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        println!(
            "| `{}` | {:.1} | {mean:.2} | {:.1} |",
            q.replace('|', "\\|"),
            n / minutes,
            t / minutes
        );
    }
    let load = c
        .query_opt(
            &format!(
                "SELECT calls::float8, mean_exec_time, total_exec_time {of_role} \
                 AND query LIKE '%AS sessions%'"
            ),
            &[],
        )
        .await
        .unwrap();
    if let Some(r) = load {
        let (n, mean, t): (f64, f64, f64) = (r.get(0), r.get(1), r.get(2));
        println!(
            "\nDatabase load query (pg_stat_activity every second): {:.1} calls/min, mean {mean:.3} ms, \
             {:.1} ms per minute.",
            n / minutes,
            t / minutes
        );
    }
    drop(cluster);
}
