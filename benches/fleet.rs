//! A fleet from one process: the real `pgpulse serve` binary with the shipped catalog samples
//! 50 targets over 3 throwaway servers (each database a copy of the reference trade-engine
//! schema with the monitoring schema), then one more target of about 10,000 relations
//! (scripts/trading-shape.sql). Reports the resident memory per added target, pgpulse's CPU and
//! the database time (pg_stat_statements of its login role, all three servers) per target and
//! minute over `PGPULSE_BENCH_SECONDS` (default 120), `/probe` scrapes/s and latency with 50 wrk
//! connections spread over the 50 targets, and the time from adding a target to the file to its
//! first complete snapshot. Run: `cargo bench --bench fleet` (needs `wrk`).

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

/// Milliseconds of statements of the sampling role on every server since the last reset.
async fn db_ms(servers: &[TempCluster]) -> f64 {
    let mut total = 0.0;
    for s in servers {
        let c = common::connect(&s.url("tmpl")).await;
        let ms: f64 = c
            .query_one(
                "SELECT coalesce(sum(total_exec_time + total_plan_time), 0)::float8 \
                 FROM pg_stat_statements WHERE userid = (SELECT oid FROM pg_roles WHERE rolname = $1)",
                &[&ROLE],
            )
            .await
            .unwrap()
            .get(0);
        total += ms;
    }
    total
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

/// `/probe` with 50 wrk connections spread over the targets: requests/s, p50, p99.
fn probe_load(f: &Fleet) -> [String; 3] {
    let lua = f.dir.path().join("spread.lua");
    std::fs::write(
        &lua,
        format!(
            "local n = 0\nrequest = function()\n  n = n + 1\n  return wrk.format(nil, string.format('/probe?target=t%02d', n % {TARGETS}))\nend\n"
        ),
    )
    .unwrap();
    let out = Command::new("wrk")
        .args(["-t2", "-c50", "-d10s", "--latency", "-s"])
        .arg(&lua)
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
    let db = db_ms(&f.servers).await / minutes / TARGETS as f64;
    let rss_all = proc_field(pid, "VmRSS:");
    let per_target = (rss_all as f64 - rss_one as f64) / (TARGETS - 1) as f64 / 1024.0;
    let [rps, p50, p99] = probe_load(&f);
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
    println!("  /probe, 50 connections over {TARGETS} targets: {rps} req/s, p50 {p50}, p99 {p99}");
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
