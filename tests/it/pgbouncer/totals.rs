//! Totals: 1,000 transactions through PgBouncer raise pgpulse's counter by exactly 1,000, as
//! SHOW STATS's; a restart of PgBouncer shows `pgbouncer_up` 0, then 1 with a new start time,
//! and no counter decreases inside one life.

use super::{STATS_PASSWORD, add_bouncer, bouncer_over_cluster, client, console, show};
use crate::fleet::WHOAMI;
use crate::service::{Running, sample, start_settings};

const XACTS: &str = "pgbouncer_transactions_total{database=\"trade\"}";

/// Waits until pgpulse shows `want` transactions of `trade` and returns the body.
async fn shows(svc: &Running, want: f64) -> String {
    svc.wait_probe("bouncer", &format!("{want} transactions"), |b| {
        sample(b, XACTS) == Some(want)
    })
    .await
}

/// SHOW STATS' transactions of `trade`: the truth.
async fn xacts(truth: &tokio_postgres::Client) -> f64 {
    show(truth, "SHOW STATS", "database", "trade", "total_xact_count")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_transactions_raise_the_counter_by_exactly_a_thousand() {
    let (_cluster, bouncer) = bouncer_over_cluster(|_| {});
    let svc = start_settings(WHOAMI, |s, dir| {
        add_bouncer(s, dir, "bouncer", &bouncer, "pgpulse_stats", STATS_PASSWORD);
    })
    .await;
    let truth = console(&bouncer).await;
    let trade = client(&bouncer).await;
    trade.simple_query("SELECT 1").await.unwrap();
    let before = xacts(&truth).await;
    shows(&svc, before).await;
    for _ in 0..1000 {
        trade.simple_query("SELECT 1").await.unwrap();
    }
    let after = xacts(&truth).await;
    assert_eq!(
        after - before,
        1000.0,
        "SHOW STATS counts each as a transaction"
    );
    let body = shows(&svc, before + 1000.0).await;
    let queries = sample(&body, "pgbouncer_queries_total{database=\"trade\"}").unwrap();
    assert!(queries >= 1001.0, "{queries}");
    // The configuration is read on a new connection and every 10th round only.
    let sent = |b: &str, c: &str| {
        sample(
            b,
            &format!("pgpulse_pgbouncer_commands_total{{command=\"{c}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let body = svc
        .wait_probe("bouncer", "30 rounds", |b| sent(b, "SHOW POOLS") >= 30.0)
        .await;
    let (pools, config) = (sent(&body, "SHOW POOLS"), sent(&body, "SHOW CONFIG"));
    assert!(
        config >= 3.0 && config <= 2.0 + pools / 10.0,
        "{config} of {pools} rounds"
    );
    svc.stop().await;
}

/// (start time, transactions) of a body, when up.
fn life(body: &str) -> Option<(f64, f64)> {
    (sample(body, "pgbouncer_up") == Some(1.0)).then_some(())?;
    Some((
        sample(body, "pgbouncer_start_time_seconds")?,
        sample(body, XACTS)?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_a_new_life_and_no_counter_decreases_inside_one() {
    let (_cluster, mut bouncer) = bouncer_over_cluster(|_| {});
    let svc = start_settings(WHOAMI, |s, dir| {
        add_bouncer(s, dir, "bouncer", &bouncer, "pgpulse_stats", STATS_PASSWORD);
    })
    .await;
    let trade = client(&bouncer).await;
    for _ in 0..50 {
        trade.simple_query("SELECT 1").await.unwrap();
    }
    let body = shows(&svc, 50.0).await;
    let (first_start, _) = life(&body).unwrap();
    let seen = std::sync::Mutex::new(vec![life(&body).unwrap()]);
    drop(trade);
    bouncer.stop().unwrap();
    svc.wait_probe("bouncer", "pgbouncer_up 0", |b| {
        sample(b, "pgbouncer_up") == Some(0.0)
    })
    .await;
    bouncer.start_again().unwrap();
    let trade = client(&bouncer).await;
    for _ in 0..5 {
        trade.simple_query("SELECT 1").await.unwrap();
    }
    let body = svc
        .wait_probe("bouncer", "up again with the new totals", |b| {
            if let Some(l) = life(b) {
                seen.lock().unwrap().push(l);
            }
            life(b).is_some_and(|(_, x)| x == 5.0)
        })
        .await;
    let (second_start, _) = life(&body).unwrap();
    assert!(
        second_start > first_start,
        "a new life: {first_start} → {second_start}"
    );
    for pair in seen.lock().unwrap().windows(2) {
        let ((s0, x0), (s1, x1)) = (pair[0], pair[1]);
        assert!(s1 != s0 || x1 >= x0, "a decrease inside one life: {pair:?}");
    }
    let errors = sample(&body, "pgpulse_pgbouncer_errors_total").unwrap();
    assert!(
        errors >= 1.0,
        "the rounds while it was down failed: {errors}"
    );
    svc.stop().await;
}
