//! /metrics under load: the reference trade-engine database with 10,000 extra relations
//! (5,000 partitions and their indexes), the real `pgpulse serve` binary with the shipped
//! catalog, and wrk with 50 connections, plain and gzip. Reports scrapes/s, latency
//! percentiles, the exporter's resident memory, and the database statements a scrape costs.
//! Run: `cargo bench --bench scrape` (needs `wrk`: apt-get install wrk).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

fn wrk(url: &str, gzip: bool) -> String {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c50", "-d10s", "--latency"]);
    if gzip {
        cmd.args(["-H", "Accept-Encoding: gzip"]);
    }
    let out = cmd.arg(url).output().expect("wrk (apt-get install wrk)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(str::trim)
        .unwrap_or("?")
}

async fn commits(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'bench'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let (cluster, url) = common::cluster().await;
    let c = common::connect(&url).await;
    pgpulse::demo::schema::install(&c).await.unwrap();
    for t in 0..10 {
        c.batch_execute(&format!(
            "CREATE TABLE ticks{t} (id int NOT NULL, v int) PARTITION BY RANGE (id); CREATE INDEX ON ticks{t} (v); \
             DO $$ BEGIN FOR i IN 0 .. 499 LOOP \
               EXECUTE format('CREATE TABLE ticks{t}_%s PARTITION OF ticks{t} FOR VALUES FROM (%s) TO (%s)', i, i * 10, i * 10 + 10); \
             END LOOP; END $$;"
        ))
        .await
        .unwrap();
    }
    let relations: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let port = pgpulse::demo::cluster::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgpulse"))
        .args(["serve", "--database-url", &url, "--listen-address", &listen])
        .args([
            "--queries",
            concat!(env!("CARGO_MANIFEST_DIR"), "/queries.yaml"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgpulse serve");
    let pid = child.id();
    let metrics_url = format!("http://{listen}/metrics");
    // Ready, then one more minute so every query (intervals up to 300s start at once) has run.
    loop {
        if reqwest::get(format!("http://{listen}/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let body = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gz = reqwest::Client::new()
        .get(&metrics_url)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "\n### /metrics under load ({relations} relations in public, {series} series, body {} bytes plain, {} gzip)\n",
        body.len(),
        gz.len()
    );
    println!(
        "| encoding | scrapes/s | p50 | p90 | p99 | max | database statements during the run |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for gzip in [false, true] {
        let before = commits(&c).await;
        let out = wrk(&metrics_url, gzip);
        let after = commits(&c).await;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} (background sampling only) |",
            if gzip { "gzip" } else { "plain" },
            field(&out, "Requests/sec:"),
            field(&out, "50%"),
            field(&out, "90%"),
            field(&out, "99%"),
            out.lines()
                .find(|l| l.trim().starts_with("Latency"))
                .and_then(|l| l.split_whitespace().nth(3))
                .unwrap_or("?"),
            after - before - 2
        );
    }
    // Latency at a fixed rate (oha corrects for coordinated omission): the p99 a scraper sees
    // at 20,000 scrapes/s, as opposed to wrk's saturated run above.
    let oha = std::env::var("HOME")
        .map(|h| format!("{h}/.cargo/bin/oha"))
        .unwrap_or_default();
    if std::path::Path::new(&oha).exists() {
        println!("\n| encoding | offered rate | achieved scrapes/s | p50 | p99 | p99.9 | errors |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for gzip in [false, true] {
            let mut cmd = Command::new(&oha);
            cmd.args([
                "-z",
                "10s",
                "-c",
                "50",
                "-q",
                "20000",
                "--latency-correction",
                "--no-tui",
                "--output-format",
                "json",
            ]);
            if gzip {
                cmd.args(["-H", "Accept-Encoding: gzip"]);
            } else {
                cmd.arg("--disable-compression");
            }
            let out = cmd.arg(&metrics_url).output().expect("oha");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let ms = |k: &str| {
                v["latencyPercentiles"][k]
                    .as_f64()
                    .map(|s| format!("{:.2} ms", s * 1000.0))
                    .unwrap_or("?".into())
            };
            let errors = v["errorDistribution"].to_string();
            println!(
                "| {} | 20000/s | {:.0} | {} | {} | {} | {} |",
                if gzip { "gzip" } else { "plain" },
                v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
                ms("p50"),
                ms("p99"),
                ms("p99.9"),
                errors
            );
        }
    } else {
        println!("\n(oha not installed: `cargo install oha` for the fixed-rate latency table)");
    }
    println!(
        "\nexporter memory: VmRSS {} kB, VmHWM (peak) {} kB",
        common::proc_kb(pid, "VmRSS:"),
        common::proc_kb(pid, "VmHWM:")
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(cluster);
}
