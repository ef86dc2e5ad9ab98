//! Counters never lie, as Prometheus sees them: a real Prometheus scrapes the real pgpulse
//! binary while a partition of `trades` is detached, the catalog is reloaded with SIGHUP and
//! pgpulse is restarted; `increase()` of the rolled-up scan counter of `trades` over that
//! window equals the scans the test made in it.

use crate::harness::exec;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tokio_postgres::Client;

use super::servers::prometheus;
use crate::harness::{PATIENCE, TestDb, eventually, scalar};

const SERIES: &str = "pg_table_seq_scans_total{schemaname=\"public\",relname=\"trades\"}";

/// The shipped `table_scans` query, every second (timeout `timeout_ms`).
fn catalog(timeout_ms: u64) -> String {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/queries.yaml")).unwrap();
    let start = shipped.find("  - name: table_scans").unwrap();
    let rest = &shipped[start..];
    let end = rest[1..].find("\n  - name:").map_or(rest.len(), |i| i + 1);
    let entry: String = rest[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("interval:") {
                "    interval: 1s".to_owned()
            } else if t.starts_with("timeout:") {
                format!("    timeout: {timeout_ms}ms")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!("queries:\n{entry}\n")
}

/// The real binary, killed when dropped.
struct Exporter(Child);

impl Exporter {
    fn start(url: &str, listen: &str, queries: &std::path::Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgpulse"));
        for (k, _) in std::env::vars() {
            if k.starts_with("PGPULSE_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(["serve", "--listen-address", listen, "--database-url", url])
            .arg("--queries")
            .arg(queries)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgpulse");
        Self(child)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal pgpulse");
    }

    fn stop(mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of [`SERIES`] in pgpulse's body, and its runs counter.
async fn exported(listen: &str) -> Option<(f64, f64)> {
    let body = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = crate::service::sample(&body, SERIES)?;
    let runs = crate::service::sample(&body, "pgpulse_query_runs_total{query=\"table_scans\"}")?;
    Some((value, runs))
}

/// Waits until pgpulse has sampled twice more (a baseline after its start), and returns the
/// value.
async fn two_more_samples(listen: &str) -> f64 {
    let (_, runs) = eventually(PATIENCE, || exported(listen))
        .await
        .expect("pgpulse exports the series");
    let (value, _) = eventually(PATIENCE, || async {
        exported(listen).await.filter(|(_, r)| *r >= runs + 2.0)
    })
    .await
    .expect("two more samples");
    value
}

/// Waits until pgpulse exports exactly `want` for the series. A number of runs alone would
/// not do: the derived families share one read of the statistics per round, so a run within
/// half an interval of the last read (the first run of a query a reload restarted) reuses
/// it. The scans are all made before the wait, so a counter that lost or counted twice any
/// of them never shows `want`.
async fn reaches(listen: &str, want: f64) -> f64 {
    let last = std::cell::Cell::new(None);
    let seen = eventually(PATIENCE, || async {
        let (value, _) = exported(listen).await?;
        last.set(Some(value));
        (value == want).then_some(value)
    })
    .await;
    seen.unwrap_or_else(|| panic!("pgpulse never exported {want}; last seen {:?}", last.get()))
}

/// Waits until Prometheus has scraped `value` for the series.
async fn scraped(prom: &str, value: f64) {
    eventually(PATIENCE, || async {
        (instant(prom, SERIES).await? == value).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("Prometheus never scraped {value}"));
}

/// The single value of an instant query.
pub(crate) async fn instant(prom: &str, expr: &str) -> Option<f64> {
    let text = reqwest::Client::new()
        .post(format!("http://{prom}/api/v1/query"))
        .form(&[("query", expr)])
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let body: Value = serde_json::from_str(&text).ok()?;
    let result = &body["data"]["result"];
    let value = if body["data"]["resultType"] == "scalar" {
        &result[1]
    } else {
        &result[0]["value"][1]
    };
    value.as_str()?.parse().ok()
}

/// The raw samples (time, value) of a range-vector query.
async fn range(prom: &str, expr: &str) -> Vec<(f64, f64)> {
    let request = reqwest::Client::new()
        .post(format!("http://{prom}/api/v1/query"))
        .form(&[("query", expr)]);
    let text = crate::harness::http_text(request).await;
    let body: Value = serde_json::from_str(&text).unwrap();
    body["data"]["result"][0]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no samples: {text}"))
        .iter()
        .map(|p| {
            (
                p[0].as_f64().unwrap(),
                p[1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Scans `partition` `n` times, sequentially (one scan of one partition each).
async fn scan(c: &Client, partition: &str, n: usize) {
    exec(
        c,
        "SET enable_indexscan = off; SET enable_bitmapscan = off; SET enable_indexonlyscan = off",
    )
    .await;
    for _ in 0..n {
        exec(c, &format!("SELECT count(*) FROM {partition}")).await;
    }
    exec(c, "SELECT pg_stat_force_next_flush()").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increase_of_a_rolled_up_counter_spans_a_detach_a_sighup_and_a_restart_exactly() {
    let db = TestDb::trade_migrated().await;
    let c = db.client().await;
    let oldest: String = c
        .query_one(
            "SELECT partition_relname FROM monitoring.partition_bounds('trades'::regclass) \
             WHERE NOT is_default ORDER BY range_start LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let today: String = c
        .query_one(
            "SELECT partition_relname FROM monitoring.partition_bounds('trades'::regclass) \
             WHERE NOT is_default AND range_start <= now() AND now() < range_end",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // History before the window: a counter that lost its state would count it again.
    scan(&c, &today, 40).await;
    scan(&c, &oldest, 20).await;

    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("queries.yaml");
    std::fs::write(&queries, catalog(900)).unwrap();
    let listen = format!("127.0.0.1:{}", pgpulse::demo::cluster::free_port().unwrap());
    let exporter = Exporter::start(&db.url, &listen, &queries);
    let (_prom, prom) = prometheus(dir.path(), &listen, "groups: []\n", "127.0.0.1:9").await;
    let start_value = two_more_samples(&listen).await;
    scraped(&prom, start_value).await;
    let t0 = instant(&prom, "time()").await.unwrap();

    let scans =
        |rel: &str| format!("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = '{rel}'");
    let (today_start, oldest_start) = (
        scalar(&c, &scans(&today)).await,
        scalar(&c, &scans(&oldest)).await,
    );
    let mut done = 0;
    scan(&c, &today, 5).await;
    scan(&c, &oldest, 3).await;
    done += 8;
    reaches(&listen, start_value + done as f64).await;
    // Detach the oldest partition: its scans leave the parent.
    exec(&c, &format!("ALTER TABLE trades DETACH PARTITION {oldest}")).await;
    scan(&c, &today, 4).await;
    done += 4;
    reaches(&listen, start_value + done as f64).await;
    // Reload with a changed timeout: the query restarts, its counter state stays.
    std::fs::write(&queries, catalog(800)).unwrap();
    exporter.signal(nix::sys::signal::Signal::SIGHUP);
    scan(&c, &today, 3).await;
    done += 3;
    let before_restart = reaches(&listen, start_value + done as f64).await;
    scraped(&prom, before_restart).await;
    // Restart: the counter starts again from a baseline; Prometheus sees a reset.
    exporter.stop();
    let exporter = Exporter::start(&db.url, &listen, &queries);
    let baseline = two_more_samples(&listen).await;
    scan(&c, &today, 6).await;
    done += 6;
    let end_value = reaches(&listen, baseline + 6.0).await;
    scraped(&prom, end_value).await;
    let t1 = instant(&prom, "time()").await.unwrap();
    // From a few seconds before t0: the scrape that last saw the starting value may precede
    // t0 by up to a scrape interval, and the counter was flat before it.
    let window = (t1 - t0).ceil() as u64 + 3;

    // PostgreSQL's own count of the scans in the window agrees with the test's.
    let truth = scalar(&c, &scans(&today)).await - today_start + scalar(&c, &scans(&oldest)).await
        - oldest_start;
    assert_eq!(truth, done, "PostgreSQL counted the scans the test made");
    // The raw samples in the window, read as Prometheus reads a counter (a decrease is a
    // reset): their increase is exactly the scans made.
    let samples = range(&prom, &format!("{SERIES}[{window}s]")).await;
    let mut raw = 0.0;
    for pair in samples.windows(2) {
        let (prev, next) = (pair[0].1, pair[1].1);
        raw += if next >= prev { next - prev } else { next };
    }
    assert_eq!(raw, done as f64, "raw increase of {samples:?}");
    // increase() extrapolates from the first and last sample to the window's edges, by at
    // most the ratio of the window to the sampled span.
    let span = samples.last().unwrap().0 - samples[0].0;
    let increase = instant(&prom, &format!("increase({SERIES}[{window}s])"))
        .await
        .expect("increase over the window");
    let most = done as f64 * window as f64 / span + 1e-6;
    assert!(
        increase >= done as f64 - 1e-6 && increase <= most,
        "increase() = {increase} over {window}s; {done} scans were made (at most {most:.2})"
    );
    exporter.stop();
}
