//! A fleet from one process: the real `pgpulse serve` binary with the shipped catalog samples
//! 50 targets over 3 throwaway servers (each database a copy of the reference trade-engine
//! schema with the monitoring schema), then one more target of about 10,000 relations
//! (scripts/trading-shape.sql). Reports the resident memory per added target, pgpulse's CPU and
//! the database time (pg_stat_statements of its login role, all three servers) per target and
//! minute over `PGPULSE_BENCH_SECONDS` (default 120) and per added database (the median
//! database), `/probe` scrapes/s and latency with 50 wrk connections spread over the 50
//! targets (sending Prometheus' scrape headers, then none) and with 50 paced scrapers (one per
//! target, every 10 ms), and the time from adding a target to the file to its first complete
//! snapshot. Run: `cargo bench --bench fleet` (needs `wrk`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use pgpulse::demo::{ClusterOptions, TempCluster};

const SERVERS: usize = 3;
const TARGETS: usize = 50;
const ROLE: &str = "pgpulse_bench";

/// A server with a template database (trade-engine + monitoring schema, pg_stat_statements)
/// and the sampling role.
async fn server() -> TempCluster {
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default()))
        .await
        .unwrap()
        .expect("start cluster");
    let admin = common::connect(&cluster.url("postgres")).await;
    admin.batch_execute("CREATE DATABASE tmpl").await.unwrap();
    let mut c = common::connect(&cluster.url("tmpl")).await;
    pgpulse::demo::schema::install(&c).await.unwrap();
    pgpulse::db::migrate::migrate(&mut c).await.unwrap();
    c.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; \
         CREATE ROLE {ROLE} LOGIN IN ROLE pgpulse_monitor"
    ))
    .await
    .unwrap();
    drop(c);
    cluster
}

/// The database of target `i` on `cluster`, copied from the template.
async fn database(cluster: &TempCluster, i: usize) -> String {
    let admin = common::connect(&cluster.url("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE t{i:02} TEMPLATE tmpl"))
        .await
        .unwrap();
    cluster
        .url(&format!("t{i:02}"))
        .replacen("postgres@", &format!("{ROLE}@"), 1)
}

/// Writes the targets file (file_sd, one named target per group).
fn write_targets(file: &std::path::Path, targets: &[(String, String)]) {
    let mut text = String::new();
    for (name, url) in targets {
        text.push_str(&format!(
            "- targets: ['{url}']\n  labels: {{__pgpulse_name: '{name}'}}\n"
        ));
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn proc_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU of `pid` in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Milliseconds of top-level statements of the sampling role since the last reset, per
/// database of every server (the servers track nested statements too: they would count twice).
async fn db_ms(servers: &[TempCluster]) -> Vec<f64> {
    let mut all = Vec::new();
    for s in servers {
        let c = common::connect(&s.url("tmpl")).await;
        let rows = c
            .query(
                "SELECT coalesce(sum(total_exec_time + total_plan_time), 0)::float8 \
                 FROM pg_stat_statements WHERE userid = (SELECT oid FROM pg_roles WHERE rolname = $1) \
                 AND toplevel GROUP BY dbid",
                &[&ROLE],
            )
            .await
            .unwrap();
        all.extend(rows.iter().map(|r| r.get::<_, f64>(0)));
    }
    all
}

/// The ten statements of target `t03` (a database of the first server that does not run the
/// server-wide queries) that took the most time: ms per minute, calls, the query's start.
async fn breakdown(servers: &[TempCluster], minutes: f64) -> Vec<String> {
    let c = common::connect(&servers[0].url("tmpl")).await;
    let rows = c
        .query(
            "SELECT (total_exec_time + total_plan_time)::float8, calls, \
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 70) \
             FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 't03') AND toplevel \
             ORDER BY 1 DESC LIMIT 10",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let (ms, calls, q): (f64, i64, String) = (r.get(0), r.get(1), r.get(2));
            format!("{:7.2} ms/min {calls:5} calls  {q}", ms / minutes)
        })
        .collect()
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn reset(servers: &[TempCluster]) {
    for s in servers {
        common::connect(&s.url("tmpl"))
            .await
            .batch_execute("SELECT pg_stat_statements_reset()")
            .await
            .unwrap();
    }
}

/// Waits until `/ready?target=NAME` answers 200; returns how long that took.
async fn ready(listen: &str, name: &str) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://{listen}/ready?target={name}")).await
            && r.status() == 200
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{name} never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The running fleet: its servers, targets, targets file and the pgpulse process.
struct Fleet {
    servers: Vec<TempCluster>,
    targets: Vec<(String, String)>,
    file: std::path::PathBuf,
    listen: String,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts the servers, their target databases and pgpulse with the first target only.
    async fn start() -> Self {
        let mut servers = Vec::new();
        for _ in 0..SERVERS {
            servers.push(server().await);
        }
        let mut targets = Vec::new();
        for i in 0..TARGETS {
            let url = database(&servers[i % SERVERS], i).await;
            targets.push((format!("t{i:02}"), url));
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("targets.yaml");
        write_targets(&file, &targets[..1]);
        let config = dir.path().join("pgpulse.yaml");
        std::fs::write(
            &config,
            format!(
                "targets_file: {}\nfleet: {{max_connections: 120, pool_size: 2, refresh_interval: 1s}}\n",
                file.display()
            ),
        )
        .unwrap();
        let (child, listen) = common::serve_binary(&config);
        Self {
            servers,
            targets,
            file,
            listen,
            child,
            dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The headers Prometheus sends with every scrape (2.x, `enable_compression` on by default).
const PROMETHEUS_HEADERS: [&str; 2] = [
    "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding: gzip",
];

/// `/probe` with 50 wrk connections spread over the targets, each request with `headers`:
/// requests/s, p50, p99.
fn probe_load(f: &Fleet, headers: &[&str]) -> [String; 3] {
    let lua = f.dir.path().join("spread.lua");
    std::fs::write(
        &lua,
        format!(
            "local n = 0\nrequest = function()\n  n = n + 1\n  return wrk.format(nil, string.format('/probe?target=t%02d', n % {TARGETS}))\nend\n"
        ),
    )
    .unwrap();
    let mut wrk = Command::new("wrk");
    wrk.args(["-t2", "-c50", "-d10s", "--latency", "-s"])
        .arg(&lua);
    for h in headers {
        wrk.args(["-H", h]);
    }
    let out = wrk
        .arg(format!("http://{}", f.listen))
        .output()
        .expect("wrk (apt-get install wrk)");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    ["Requests/sec:", "50%", "99%"].map(|prefix| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map_or("?", str::trim)
            .to_owned()
    })
}

/// How often each of the 50 paced scrapers GETs its target: 5,000 scrapes/s in all, 1,500
/// times what two Prometheus servers scraping every 15 s ask.
const PACE: Duration = Duration::from_millis(10);

/// 50 scrapers, one per target, each GETting `/probe` every [`PACE`] with Prometheus' headers
/// for `span`, their starts spread over the pace: scrapes done, p50 and p99 in ms, from the
/// request's start to its body's end (the due time would add the client's 1 ms timer grain;
/// a scraper that falls behind shows as fewer scrapes than 50 × span / pace).
async fn paced_scrapes(f: &Fleet, span: Duration) -> (usize, f64, f64) {
    let client = reqwest::Client::new();
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for i in 0..TARGETS {
        let url = format!("http://{}/probe?target=t{i:02}", f.listen);
        let client = client.clone();
        let first = start + PACE * i as u32 / TARGETS as u32;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first, PACE);
            let mut latencies = Vec::new();
            while first.elapsed() < span {
                tick.tick().await;
                let sent = std::time::Instant::now();
                let mut req = client.get(&url);
                for h in PROMETHEUS_HEADERS {
                    let (k, v) = h.split_once(": ").unwrap();
                    req = req.header(k, v);
                }
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (all.len(), at(0.50), at(0.99))
}

/// The three loads of `/probe` (wrk with Prometheus' headers, wrk with none, paced), as
/// report lines.
async fn probe_figures(f: &Fleet) -> [String; 3] {
    let [rps, p50, p99] = probe_load(f, &PROMETHEUS_HEADERS);
    let [plain_rps, plain_p50, plain_p99] = probe_load(f, &[]);
    let (paced, paced_p50, paced_p99) = paced_scrapes(f, Duration::from_secs(10)).await;
    [
        format!(
            "  /probe, 50 connections over {TARGETS} targets, as Prometheus asks (gzip): {rps} req/s, p50 {p50}, p99 {p99}"
        ),
        format!(
            "  /probe, the same with no Accept headers (plain text): {plain_rps} req/s, p50 {plain_p50}, p99 {plain_p99}"
        ),
        format!(
            "  /probe, 50 paced scrapers (one per target, every {} ms, Prometheus' headers): {paced} scrapes in 10 s, p50 {paced_p50:.2} ms, p99 {paced_p99:.2} ms",
            PACE.as_millis()
        ),
    ]
}

/// Adds a target of about 10,000 relations; returns the time to its first complete snapshot
/// and the resident memory it added, in MB.
async fn add_big_target(f: &mut Fleet) -> (Duration, f64) {
    let name = format!("t{TARGETS:02}");
    let url = database(&f.servers[0], TARGETS).await;
    let c = common::connect(&f.servers[0].url(&name)).await;
    c.batch_execute(include_str!("../scripts/trading-shape.sql"))
        .await
        .unwrap();
    c.batch_execute("CALL bench_trading_shape(5, 2500)")
        .await
        .unwrap();
    let before = proc_field(f.pid(), "VmRSS:");
    f.targets.push((name.clone(), url));
    write_targets(&f.file, &f.targets);
    let took = ready(&f.listen, &name).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let added = (proc_field(f.pid(), "VmRSS:") as f64 - before as f64) / 1024.0;
    (took, added)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let seconds: u64 = common::bench_seconds(120);
    let mut f = Fleet::start().await;
    let pid = f.pid();
    let relations: i64 = common::connect(&f.servers[0].url("t00"))
        .await
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    ready(&f.listen, "t00").await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let rss_one = proc_field(pid, "VmRSS:");
    write_targets(&f.file, &f.targets);
    let all_ready = Instant::now();
    for (name, _) in &f.targets {
        ready(&f.listen, name).await;
    }
    let all_ready = all_ready.elapsed();
    tokio::time::sleep(Duration::from_secs(20)).await;
    reset(&f.servers).await;
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let cpu = (cpu_seconds(pid) - cpu0) / minutes / TARGETS as f64 * 1000.0;
    let per_db = db_ms(&f.servers).await;
    let db = per_db.iter().sum::<f64>() / minutes / TARGETS as f64;
    // Of 50 databases, 3 run their server's server-wide queries: the median is one that
    // does not, what one more database on a server costs.
    let added_db = median(per_db) / minutes;
    let top = breakdown(&f.servers, minutes).await;
    let rss_all = proc_field(pid, "VmRSS:");
    let per_target = (rss_all as f64 - rss_one as f64) / (TARGETS - 1) as f64 / 1024.0;
    let probe = probe_figures(&f).await;
    let (big_ready, rss_big) = add_big_target(&mut f).await;
    println!(
        "fleet: {TARGETS} targets over {SERVERS} servers, {relations} relations in public of each"
    );
    println!(
        "  RSS with 1 target:              {:.1} MB",
        rss_one as f64 / 1024.0
    );
    println!(
        "  RSS with {TARGETS} targets:             {:.1} MB ({per_target:.2} MB per added target)",
        rss_all as f64 / 1024.0
    );
    println!(
        "  all {} added targets ready in:  {:.1} s",
        TARGETS - 1,
        all_ready.as_secs_f64()
    );
    println!("  pgpulse CPU per target:         {cpu:.1} ms/min (over {minutes:.1} min)");
    println!("  database time per target:       {db:.1} ms/min (all three servers)");
    println!(
        "  database time per added database: {added_db:.1} ms/min (median over the databases); t03's top statements:"
    );
    for line in top {
        println!("      {line}");
    }
    for line in probe {
        println!("{line}");
    }
    println!(
        "  a target of ~10,000 relations: first complete snapshot {:.1} s after it was added to the file, +{rss_big:.1} MB RSS",
        big_ready.as_secs_f64()
    );
    println!(
        "  peak RSS:                       {:.1} MB",
        proc_field(pid, "VmHWM:") as f64 / 1024.0
    );
    let _ = f.child.kill();
    let _ = f.child.wait();
}
