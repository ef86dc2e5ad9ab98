//! PgBouncer: pgpulse beside Debian's `prometheus-pgbouncer-exporter` on the same PgBouncer.
//!
//! A throwaway cluster and, in front of it, a throwaway PgBouncer 1.18 with 50 `[databases]`
//! entries, each with one client connection open (and one server connection), so `SHOW POOLS`
//! lists 50 pools. Then, one after the other (the console's log cannot tell two exporters
//! apart): the real `pgpulse serve` (release build) with that PgBouncer as a config-file target
//! (`fleet.pgbouncer_interval` 15 s), and Debian's exporter (`/usr/bin/prometheus-pgbouncer-
//! exporter`, Python) as the same console user. For each:
//!
//! - **console work**: two scrapers each GET it every 15 s (offset by 7 s, as two Prometheus
//!   servers) for `PGPULSE_BENCH_SECONDS` (default 120); the `SHOW` commands PgBouncer received
//!   in that window, counted from PgBouncer's own log (`verbose = 1` logs every console query as
//!   `got admin query: ...`), per minute. pgpulse's figure is cross-checked against its own
//!   `pgpulse_pgbouncer_commands_total`.
//! - **50 scrapers**: `wrk -t2 -c50 -d10s --latency` on `/probe?target=bouncer` (pgpulse) and
//!   `/metrics` (the exporter): scrapes/s, p50, p99, errors, and the console commands the run
//!   caused.
//! - **RSS**: VmRSS after the wrk run, VmHWM (peak).
//!
//! Debian's exporter (1.7) reads `SHOW STATS`' `total_requests`, a column PgBouncer renamed to
//! `total_query_count` in 1.8, and exits at start against 1.18 (`KeyError`). The bench shows
//! that, then runs it with that one key renamed at import (a five-line wrapper, the package's
//! files untouched): the same connection, commands and HTTP server.
//!
//! Run: `cargo bench --bench pgbouncer` (needs `wrk`, `pgbouncer` and
//! `prometheus-pgbouncer-exporter`; as root, as the benchmarks' clusters are).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pgpulse::demo::cluster::free_port;
use pgpulse::demo::{BouncerOptions, ClusterOptions, TempBouncer, TempCluster};
use tokio_postgres::{Client, SimpleQueryMessage};

const POOLS: usize = 50;
const STATS_USER: &str = "pgpulse_stats";
const STATS_PASSWORD: &str = "stats-secret";
const EXPORTER: &str = "/usr/bin/prometheus-pgbouncer-exporter";
const SCRAPE_EVERY: Duration = Duration::from_secs(15);
/// The one change the exporter needs to start against PgBouncer ≥ 1.8.
const WRAPPER: &str = "import sys\n\
from prometheus_pgbouncer_exporter import cli, collectors\n\
m = collectors.StatsCollector.metrics\n\
m['total_query_count'] = m.pop('total_requests')\n\
sys.exit(cli.main())\n";

/// A child process killed when dropped (a panicking bench leaves nothing running).
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects to PgBouncer's console as the stats user.
async fn console(port: u16) -> Client {
    common::connect(&format!(
        "postgres://{STATS_USER}:{STATS_PASSWORD}@127.0.0.1:{port}/pgbouncer"
    ))
    .await
}

/// `command`'s rows as column → value maps.
async fn show(c: &Client, command: &str) -> Vec<BTreeMap<String, String>> {
    c.simple_query(command)
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The value of `key` in `SHOW CONFIG`.
async fn config_value(c: &Client, key: &str) -> String {
    show(c, "SHOW CONFIG")
        .await
        .into_iter()
        .find(|r| r.get("key").map(String::as_str) == Some(key))
        .and_then(|mut r| r.remove("value"))
        .unwrap_or_default()
}

/// Turns on PgBouncer's DEBUG log (`verbose = 1`: one `got admin query: ...` line per console
/// command) through its own configuration file and a reload; returns the log's path.
async fn log_console_queries(bouncer: &TempBouncer) -> PathBuf {
    let c = console(bouncer.port()).await;
    let conffile = config_value(&c, "conffile").await;
    let logfile = PathBuf::from(config_value(&c, "logfile").await);
    let mut ini = std::fs::read_to_string(&conffile).unwrap();
    ini.push_str("verbose = 1\n");
    std::fs::write(&conffile, ini).unwrap();
    bouncer.signal(Signal::SIGHUP).unwrap();
    let started = Instant::now();
    while config_value(&c, "verbose").await != "1" {
        assert!(started.elapsed() < Duration::from_secs(10), "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    logfile
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).unwrap().len()
}

/// The console commands PgBouncer logged between two lengths of its log, by command.
fn console_commands(log: &Path, from: u64, to: u64) -> BTreeMap<String, u64> {
    let mut f = std::fs::File::open(log).unwrap();
    f.seek(SeekFrom::Start(from)).unwrap();
    let mut text = String::new();
    f.take(to - from).read_to_string(&mut text).unwrap();
    let mut by = BTreeMap::new();
    for l in text.lines() {
        if let Some((_, q)) = l.split_once("got admin query: ") {
            *by.entry(q.trim().trim_end_matches(';').to_uppercase())
                .or_insert(0) += 1;
        }
    }
    by
}

/// GETs `url` until it answers 200 with the last pool in its body (at most 60 s); the body.
async fn ready(url: &str, child: &mut Proc) -> String {
    let last_pool = format!("database=\"p{:02}\"", POOLS - 1);
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status() == 200
            && let Ok(body) = r.text().await
            && body.contains(&last_pool)
        {
            return body;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("{url}: the exporter exited ({status})");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{url} never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two scrapers, 7 s apart, each GETs `url` every 15 s for `window`; returns how many
/// answered 200.
async fn two_scrapers(url: &str, window: Duration) -> usize {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for offset in [Duration::ZERO, Duration::from_secs(7)] {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            let mut at = offset;
            while at < window {
                tokio::time::sleep_until(start + at).await;
                if let Ok(r) = reqwest::get(&url).await
                    && r.status() == 200
                {
                    let _ = r.bytes().await;
                    ok += 1;
                }
                at += SCRAPE_EVERY;
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    tokio::time::sleep_until(start + window).await;
    ok
}

/// `wrk -t2 -c50 -d10s --latency` on `url`.
struct Load {
    rps: String,
    p50: String,
    p99: String,
    requests: String,
    errors: String,
}

fn wrk(url: &str) -> Load {
    let out = Command::new("wrk")
        .args(["-t2", "-c50", "-d10s", "--latency", url])
        .output()
        .expect("wrk (apt-get install wrk)");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let find = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map_or("?", str::trim)
            .to_owned()
    };
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?")
        .to_owned();
    let mut errors = Vec::new();
    for prefix in ["Socket errors:", "Non-2xx or 3xx responses:"] {
        let e = find(prefix);
        if e != "?" {
            errors.push(format!("{prefix} {e}"));
        }
    }
    Load {
        rps: find("Requests/sec:"),
        p50: find("50%"),
        p99: find("99%"),
        requests,
        errors: if errors.is_empty() {
            "none".into()
        } else {
            errors.join("; ")
        },
    }
}

/// The sum of `pgpulse_pgbouncer_commands_total` over its commands in a `/probe` body.
fn pgpulse_commands(body: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with("pgpulse_pgbouncer_commands_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What one exporter cost and did.
struct Figures {
    name: &'static str,
    body_bytes: usize,
    scrapes: usize,
    minutes: f64,
    window: BTreeMap<String, u64>,
    under_load: u64,
    load: Load,
    rss_kb: u64,
    hwm_kb: u64,
    own_count: Option<f64>,
}

impl Figures {
    fn per_minute(&self) -> f64 {
        self.window.values().sum::<u64>() as f64 / self.minutes
    }
}

/// Measures one running exporter at `url` (the bouncer's log at `log`).
async fn measure(
    name: &'static str,
    url: &str,
    child: &mut Proc,
    log: &Path,
    window: Duration,
) -> Figures {
    let body = ready(url, child).await;
    // Past the first round (pgpulse) or the first scrape's connection (the exporter).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let own_before = pgpulse_commands(&reqwest::get(url).await.unwrap().text().await.unwrap());
    let (from, t0) = (log_len(log), Instant::now());
    let scrapes = two_scrapers(url, window).await;
    let (to, minutes) = (log_len(log), t0.elapsed().as_secs_f64() / 60.0);
    let own_after = pgpulse_commands(&reqwest::get(url).await.unwrap().text().await.unwrap());
    let load_from = log_len(log);
    let load = wrk(url);
    let under_load = console_commands(log, load_from, log_len(log))
        .values()
        .sum();
    tokio::time::sleep(Duration::from_secs(1)).await;
    Figures {
        name,
        body_bytes: body.len(),
        scrapes,
        minutes,
        window: console_commands(log, from, to),
        under_load,
        load,
        rss_kb: common::proc_kb(child.pid(), "VmRSS:"),
        hwm_kb: common::proc_kb(child.pid(), "VmHWM:"),
        // Two GETs of /probe read it, before and after; neither reaches the console.
        own_count: (own_after > 0.0).then(|| (own_after - own_before) / minutes),
    }
}

/// The real `pgpulse serve` with the PgBouncer as its one target.
fn start_pgpulse(dir: &Path, bouncer_port: u16) -> (Proc, String) {
    let password = dir.join("stats.pw");
    std::fs::write(&password, STATS_PASSWORD).unwrap();
    let config = dir.join("pgpulse.yaml");
    std::fs::write(
        &config,
        format!(
            "targets:\n  - {{name: bouncer, url: \"postgres://127.0.0.1:{bouncer_port}/pgbouncer\", \
             auth: stats, kind: pgbouncer}}\n\
             auths:\n  stats: {{user: {STATS_USER}, password_file: {}}}\n\
             fleet: {{pgbouncer_interval: 15s, pgbouncer_timeout: 5s}}\n",
            password.display()
        ),
    )
    .unwrap();
    let (child, listen) = common::serve_binary(&config);
    (Proc(child), format!("http://{listen}/probe?target=bouncer"))
}

/// Debian's exporter (`program`, or `python3 program` for the wrapper) on a free port.
fn start_exporter(program: &[&str], bouncer_port: u16, stderr: Stdio) -> (Proc, String) {
    let port = free_port().unwrap().to_string();
    let bouncer_port = bouncer_port.to_string();
    let child = Command::new(program[0])
        .args(&program[1..])
        .args(["--host", "127.0.0.1", "--port", &port])
        .args([
            "--pgbouncer-host",
            "127.0.0.1",
            "--pgbouncer-port",
            &bouncer_port,
        ])
        .args(["--pgbouncer-user", STATS_USER])
        .env("PGPASSWORD", STATS_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("CONFIG")
        .env_remove("PGBOUNCER_DATABASES")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("prometheus-pgbouncer-exporter (apt-get install prometheus-pgbouncer-exporter)");
    (Proc(child), format!("http://127.0.0.1:{port}/metrics"))
}

/// Whether the packaged exporter, unchanged, starts against this PgBouncer: its last words if not.
async fn unchanged_exporter(dir: &Path, bouncer_port: u16) -> String {
    let err = dir.join("exporter-unchanged.err");
    let (mut p, url) = start_exporter(
        &[EXPORTER],
        bouncer_port,
        std::fs::File::create(&err).unwrap().into(),
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(status) = p.0.try_wait().unwrap() {
            let text = std::fs::read_to_string(&err).unwrap_or_default();
            let last = text.lines().last().unwrap_or("").trim().to_owned();
            return format!("exits at start ({status}): {last}");
        }
        if let Ok(r) = reqwest::get(&url).await
            && r.status() == 200
        {
            return "starts and serves".into();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    "neither exits nor serves within 20 s".into()
}

fn print(f: &Figures) {
    println!("{}:", f.name);
    println!("  body:                         {} bytes", f.body_bytes);
    println!(
        "  two scrapers every 15 s:      {:.1} SHOW commands/min at the console ({} scrapes over {:.2} min)",
        f.per_minute(),
        f.scrapes,
        f.minutes
    );
    for (command, n) in &f.window {
        println!("      {command:<18} {n}");
    }
    if let Some(own) = f.own_count {
        println!("  its own pgpulse_pgbouncer_commands_total: {own:.1}/min");
    }
    println!(
        "  wrk -t2 -c50 -d10s:           {} scrapes/s, p50 {}, p99 {} ({} requests, errors: {})",
        f.load.rps, f.load.p50, f.load.p99, f.load.requests, f.load.errors
    );
    println!("  console commands in those 10 s: {}", f.under_load);
    println!(
        "  RSS after:                    {:.1} MB (peak {:.1} MB)",
        f.rss_kb as f64 / 1024.0,
        f.hwm_kb as f64 / 1024.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let seconds: u64 = common::bench_seconds(120);
    let window = Duration::from_secs(seconds);
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default()))
        .await
        .unwrap()
        .expect("start cluster");
    let opts = BouncerOptions {
        backend_port: cluster.port(),
        databases: (0..POOLS)
            .map(|i| (format!("p{i:02}"), "postgres".to_owned()))
            .collect(),
        max_client_conn: 200,
        ..Default::default()
    };
    let bouncer = tokio::task::spawn_blocking(move || TempBouncer::start(&opts))
        .await
        .unwrap()
        .expect("start pgbouncer");
    let port = bouncer.port();
    let log = log_console_queries(&bouncer).await;
    // One client per [databases] entry, kept open: 50 pools, each with a server connection.
    let mut clients = Vec::new();
    for i in 0..POOLS {
        let c = common::connect(&format!(
            "postgres://postgres:postgres@127.0.0.1:{port}/p{i:02}"
        ))
        .await;
        c.simple_query("SELECT 1").await.unwrap();
        clients.push(c);
    }
    let pools = show(&console(port).await, "SHOW POOLS")
        .await
        .iter()
        .filter(|r| r.get("database").is_some_and(|d| d != "pgbouncer"))
        .count();
    assert_eq!(pools, POOLS, "SHOW POOLS");

    let dir = tempfile::tempdir().unwrap();
    let (mut pgpulse, url) = start_pgpulse(dir.path(), port);
    let ours = measure("pgpulse", &url, &mut pgpulse, &log, window).await;
    drop(pgpulse);

    let unchanged = unchanged_exporter(dir.path(), port).await;
    let wrapper = dir.path().join("exporter.py");
    std::fs::write(&wrapper, WRAPPER).unwrap();
    let (mut exporter, url) = start_exporter(
        &["/usr/bin/python3", wrapper.to_str().unwrap()],
        port,
        Stdio::null(),
    );
    let theirs = measure(
        "prometheus-pgbouncer-exporter 1.7 (total_requests → total_query_count)",
        &url,
        &mut exporter,
        &log,
        window,
    )
    .await;
    drop(exporter);

    println!(
        "PgBouncer 1.18 with {POOLS} pools (50 [databases] entries, one client each); \
         console commands counted from PgBouncer's log"
    );
    println!("prometheus-pgbouncer-exporter as packaged: {unchanged}");
    print(&ours);
    print(&theirs);
    drop(clients);
}
