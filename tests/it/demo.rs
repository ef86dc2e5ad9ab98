//! `pgpulse demo`: it starts, serves metrics while the workload moves counters, each
//! scenario makes its condition true, and it leaves no process or temp dir behind.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::service::sample;

struct Demo {
    child: Child,
    url: String,
}

impl Demo {
    fn start(scenario: Option<&str>) -> Self {
        match scenario {
            Some(s) => Self::start_with(&["--scenario", s]),
            None => Self::start_with(&[]),
        }
    }

    fn start_with(extra: &[&str]) -> Self {
        let port = pgpulse::demo::cluster::free_port().unwrap();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgpulse"));
        cmd.args([
            "demo",
            "--listen-address",
            &listen,
            "--rate",
            "20",
            "--duration",
            "120s",
        ]);
        cmd.args(extra);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("http://{listen}/metrics"),
        }
    }

    async fn wait_for(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let url = self.url.clone();
        self.wait_at(&url, what, f).await
    }

    /// Waits until the body at `url` satisfies `f`.
    async fn wait_at(&mut self, url: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + crate::harness::PATIENCE;
        let mut last = String::new();
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("demo exited early with {status}");
            }
            if let Ok(r) = reqwest::get(url).await
                && let Ok(b) = r.text().await
            {
                if f(&b) {
                    return b;
                }
                last = b;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("demo: timed out waiting for {what}; last body:\n{last}");
    }

    /// Ctrl-C, then checks the exit and that the cluster and its directory are gone.
    fn stop(mut self) {
        let pid = self.child.id();
        Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap();
        let end = Instant::now() + crate::harness::PATIENCE;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "demo did not stop on Ctrl-C");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "demo exit: {status}");
        let prefix = format!("pgpulse-pg-{pid}-");
        let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .collect();
        assert!(
            left.is_empty(),
            "temp cluster directory left behind: {left:?}"
        );
        // The cluster's watchdog notices the demo's exit within a second and then exits too.
        let end = Instant::now() + crate::harness::PATIENCE;
        loop {
            let procs = Command::new("pgrep")
                .args(["-f", &prefix])
                .output()
                .unwrap();
            if procs.stdout.is_empty() {
                break;
            }
            assert!(
                Instant::now() < end,
                "processes left behind: {}",
                String::from_utf8_lossy(&procs.stdout)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

fn total(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_demo_serves_metrics_while_the_workload_moves_counters_and_cleans_up() {
    let mut demo = Demo::start(None);
    let first = demo
        .wait_for("the first sample", |b| {
            sample(b, "pg_up") == Some(1.0) && b.contains("pg_database_blocks_hit_total")
        })
        .await;
    let hits = total(&first, "pg_database_blocks_hit_total");
    demo.wait_for("the workload to move counters", |b| {
        total(b, "pg_database_blocks_hit_total") > hits
    })
    .await;
    // The workload sends two key queries as plans.yaml writes them: their SLOs count calls.
    demo.wait_for("calls of the key queries the workload sends", |b| {
        ["order_book_depth", "orders_by_user"].iter().all(|q| {
            sample(b, &format!("pg_key_query_calls_total{{query=\"{q}\"}}"))
                .is_some_and(|c| c > 0.0)
        })
    })
    .await;
    demo.stop();
}

#[tokio::test]
async fn the_bloat_scenario_pushes_a_dead_tuple_ratio_above_0_3() {
    let mut demo = Demo::start(Some("bloat"));
    demo.wait_for("dead tuple ratio above 0.3", |b| {
        sample(
            b,
            "pg_table_dead_tuple_ratio{schemaname=\"public\",relname=\"demo_bloat\"}",
        )
        .is_some_and(|v| v > 0.3)
            && sample(
                b,
                "pg_table_size_bytes{schemaname=\"public\",relname=\"demo_bloat\"}",
            )
            .is_some_and(|v| v > 10.0 * 1024.0 * 1024.0)
    })
    .await;
    demo.stop();
}

#[tokio::test]
async fn the_locks_scenario_is_the_classic_outage_named_by_the_queue_the_root_and_the_chain() {
    let mut demo = Demo::start(Some("locks"));
    let root = "pg_lock_root_blocked_sessions{datname=\"trade_engine\",usename=\"postgres\",application_name=\"demo_report\",state=\"idle in transaction\"";
    demo.wait_for("the write-blocking queue on trades and its root", |b| {
        sample(
            b,
            "pg_trade_table_lock_queue{table=\"trades\",relation=\"public.trades\"}",
        ) == Some(1.0)
            && b.lines().any(|l| {
                l.starts_with(root)
                    && l.rsplit_once(' ')
                        .is_some_and(|(_, v)| v.parse::<f64>().is_ok_and(|v| v >= 2.0))
            })
    })
    .await;
    // The demo listens on a loopback address: /debug/locks shows the chain without credentials.
    let url = demo.url.replace("/metrics", "/debug/locks");
    let chain = crate::harness::eventually(crate::harness::PATIENCE, || async {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
        let sessions = doc["sessions"].as_array()?.clone();
        let app = |a: &str| {
            sessions
                .iter()
                .find(|s| s["application_name"] == a)
                .cloned()
        };
        let (report, migration, engine) = (
            app("demo_report")?,
            app("demo_migration")?,
            app("demo_engine")?,
        );
        (engine["blocked_by"] == serde_json::json!([migration["pid"]]))
            .then_some((report, migration, doc))
    })
    .await
    .expect("the chain report -> ALTER TABLE -> insert at /debug/locks");
    let (report, migration, doc) = chain;
    assert_eq!(report["root"], true);
    assert_eq!(migration["blocked_by"], serde_json::json!([report["pid"]]));
    assert_eq!(migration["waits_for_mode"], "AccessExclusiveLock");
    assert_eq!(migration["waits_for_relation"], "public.trades");
    assert_eq!(doc["roots"][0]["pid"], report["pid"]);
    assert!(!doc.to_string().contains("BTC-USD"), "a literal: {doc}");
    demo.stop();
}

#[tokio::test]
async fn the_partition_gap_scenario_cuts_the_runway_below_two_days_and_fills_the_default() {
    let mut demo = Demo::start(Some("partition-gap"));
    demo.wait_for("runway below 2 days and a default row", |b| {
        sample(b, "pg_partition_runway_seconds{parent=\"trades\"}")
            .is_some_and(|v| v < 2.0 * 86400.0)
            && sample(b, "pg_partition_default_rows{parent=\"trades\"}").is_some_and(|v| v >= 1.0)
    })
    .await;
    demo.stop();
}

#[tokio::test]
async fn the_cache_miss_scenario_drops_the_hit_ratio_below_0_95() {
    let mut demo = Demo::start(Some("cache-miss"));
    demo.wait_for("heap hit ratio below 0.95", |b| {
        sample(b, "pg_cache_hit_ratio{kind=\"heap\"}").is_some_and(|v| v < 0.95)
    })
    .await;
    demo.stop();
}

#[tokio::test]
async fn the_slow_scenario_counts_slow_statements_exactly_and_fills_the_slow_buckets() {
    let mut demo = Demo::start(Some("slow"));
    demo.wait_for("slow statements and latencies above 100 ms", |b| {
        let above = total(b, "pg_statement_latency_seconds_count")
            - sample(b, "pg_statement_latency_seconds_bucket{le=\"0.1\"}").unwrap_or(f64::MAX);
        let exact = sample(
            b,
            "pg_statement_executions_over_threshold_total{datname=\"trade_engine\",user=\"demo_trader\"}",
        );
        sample(b, "pg_slow_statements").is_some_and(|v| v >= 1.0)
            && sample(b, "pgpulse_database_user_info{user=\"pgpulse\"}") == Some(1.0)
            && above >= 5.0
            && exact.is_some_and(|v| v >= 5.0)
    })
    .await;
    demo.stop();
}

#[test]
fn without_postgresql_binaries_the_demo_names_the_package_to_install() {
    let out = crate::harness::pgpulse(
        &["demo", "--duration", "1s"],
        &[("PGPULSE_PG_BINDIR", "/nonexistent")],
    );
    let (_, stderr) = crate::harness::text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
}

#[tokio::test]
async fn the_fleet_demo_samples_a_primary_its_standby_and_a_second_database_from_one_process() {
    let mut demo = Demo::start_with(&["--fleet"]);
    let base = demo.url.trim_end_matches("/metrics").to_owned();
    for (target, standby) in [("primary", 0.0), ("replica", 1.0), ("risk", 0.0)] {
        demo.wait_at(
            &format!("{base}/probe?target={target}"),
            &format!("target {target} sampled"),
            |b| {
                sample(b, "pg_up") == Some(1.0)
                    && sample(b, "pg_server_in_recovery") == Some(standby)
            },
        )
        .await;
    }
    let sd = demo
        .wait_at(&format!("{base}/sd"), "the target list", |b| {
            b.contains("risk")
        })
        .await;
    let sd: serde_json::Value = serde_json::from_str(&sd).unwrap();
    let names: Vec<&str> = sd
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["labels"]["__param_target"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["primary", "replica", "risk"]);
    assert!(
        sd.as_array()
            .unwrap()
            .iter()
            .all(|t| t["labels"]["cluster"] == "demo")
    );
    demo.stop();
}
