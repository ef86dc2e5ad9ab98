//! The SLO alert on the exact counter, evaluated by a real Prometheus with the shipped rules
//! (`for:` shortened): one statement that is slow 3 % of the time fires
//! `PgStatementSlowShareHigh`, while the histogram, which observes each statement at its mean
//! between two samples, keeps its p99 under 100 ms and `PgStatementLatencyP99High` silent.

use super::count::{exposed_total, reader_config, settled};
use super::{as_user, log_cluster, setup};
use crate::alerts::{fast_rules, instant as value, prometheus, query};
use crate::harness::{PATIENCE, connect, eventually, with_db};
use crate::service::{sample, start};
use crate::signals::shipped;
use tokio_postgres::Client;

const BIMODAL: &str = "SELECT CASE WHEN $1 THEN pg_sleep(0.2) END /* bimodal */";

/// Runs the bimodal statement `n` times: slow when `i % 33 == 0` (i counted from `from`).
async fn bimodal(trader: &Client, from: u32, n: u32) -> u32 {
    let mut slow = 0;
    for i in from..from + n {
        let is_slow = i % 33 == 0;
        slow += u32::from(is_slow);
        trader.query(BIMODAL, &[&is_slow]).await.unwrap();
    }
    slow
}

/// The histogram's (count, observations at or under 100 ms).
fn hist(b: &str) -> (f64, f64) {
    (
        sample(b, "pg_statement_latency_seconds_count").unwrap_or(0.0),
        sample(b, "pg_statement_latency_seconds_bucket{le=\"0.1\"}").unwrap_or(0.0),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn one_bimodal_statement_fires_the_slo_alert_while_the_histogram_p99_stays_low() {
    let cluster = log_cluster(&[]);
    let (one, _two) = setup(&cluster).await;
    let own_url = as_user(&one.url, "pgpulse_login");
    let svc = start(
        &own_url,
        &shipped(&["statement_latency", "top_statements"], "2s"),
        reader_config,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Alerts go nowhere: the test reads their state from Prometheus itself.
    let (prom, prom_addr) = prometheus(
        dir.path(),
        &svc.addr.to_string(),
        &fast_rules(),
        "127.0.0.1:9",
    )
    .await;
    svc.wait_for("the reader up and the histogram's baseline", |b| {
        sample(b, "pgpulse_slow_log_up") == Some(1.0)
            && b.contains("pg_statement_latency_seconds_count")
    })
    .await;

    // A first cycle, so that the statement's call counter and the slow counter of its user
    // exist in Prometheus before the measured run: increase() counts from a series' first sample.
    let trader = connect(&as_user(&one.url, "trader_c")).await;
    let warmup_slow = bimodal(&trader, 0, 33).await;
    let calls_series = "pg_statement_calls_total{user=\"trader_c\"}";
    let slow_series = "pg_statement_executions_over_threshold_total{user=\"trader_c\"}";
    let seen = eventually(PATIENCE, || async {
        let calls = value(&prom_addr, calls_series).await?;
        let slow = value(&prom_addr, slow_series).await?;
        (calls >= 33.0 && slow >= f64::from(warmup_slow)).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "Prometheus never scraped the warm-up's counters:\n{}",
        prom.log_tail()
    );
    let body = settled(&svc).await;
    let (h0, c0) = (hist(&body), exposed_total(&body));

    let slow = bimodal(&trader, 33, 990).await;
    assert_eq!(slow, 30);
    let admin = connect(&with_db(&cluster.url("postgres"), &one.name)).await;
    let calls: i64 = admin
        .query_one(
            "SELECT sum(calls)::bigint FROM pg_stat_statements \
             WHERE query LIKE '%bimodal%' AND userid = 'trader_c'::regrole",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(calls, 1023);
    svc.wait_for(
        "the 30 slow executions and the histogram's 990 calls",
        |b| exposed_total(b) - c0 >= 30.0 && hist(b).0 - h0.0 >= 990.0,
    )
    .await;
    let body = settled(&svc).await;
    assert_eq!(exposed_total(&body) - c0, 30.0, "the exact count");
    let h1 = hist(&body);
    let (count, fast) = (h1.0 - h0.0, h1.1 - h0.1);
    eprintln!(
        "bimodal: 30 of 990 executions at or over 100 ms (3.0 %); histogram: {fast} of {count} observations at or under 100 ms"
    );
    assert!(
        fast / count >= 0.99,
        "the histogram puts {fast} of {count} observations at or under 100 ms: its p99 stays under 100 ms"
    );

    let firing = "ALERTS{alertname=\"PgStatementSlowShareHigh\",alertstate=\"firing\"}";
    let fired = eventually(PATIENCE, || async {
        (query(&prom_addr, firing).await.ok()? > 0).then_some(())
    })
    .await;
    let share = value(
        &prom_addr,
        "sum(increase(pg_statement_executions_over_threshold_total[5m])) \
         / sum(increase(pg_statement_calls_total[5m]) unless on (user) pgpulse_database_user_info)",
    )
    .await;
    assert!(
        fired.is_some(),
        "PgStatementSlowShareHigh never fired (share in Prometheus {share:?}):\n{}",
        prom.log_tail()
    );
    let p99 = value(
        &prom_addr,
        "histogram_quantile(0.99, sum by (le) (rate(pg_statement_latency_seconds_bucket[5m])))",
    )
    .await;
    eprintln!("Prometheus: exact share {share:?}, histogram p99 {p99:?} s");
    assert!(
        p99.is_some_and(|v| v <= 0.1),
        "the histogram's p99 in Prometheus is {p99:?}"
    );
    let p99_alert = "ALERTS{alertname=\"PgStatementLatencyP99High\"}";
    assert_eq!(
        query(&prom_addr, p99_alert).await,
        Ok(0),
        "the histogram's alert must stay silent on this workload"
    );
    svc.stop().await;
}
