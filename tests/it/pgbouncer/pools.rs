//! Pool exhaustion: pool size 2, five clients in `pg_sleep` through it. pgpulse shows 3
//! clients waiting and 2 servers active, as SHOW POOLS does, and the oldest wait past 1 s;
//! PostgreSQL meanwhile sees two busy sessions and nothing wrong.

use super::{STATS_PASSWORD, add_bouncer, bouncer_over_cluster, client, console, show};
use crate::alerts::contract::PGBOUNCER_CONTRACT;
use crate::exporter::promtool_check;
use crate::fleet::WHOAMI;
use crate::service::{sample, start_settings};

const POOL: &str = "{database=\"trade\",user=\"postgres\"";

fn pool_series(family: &str, state: Option<&str>) -> String {
    match state {
        Some(s) => format!("{family}{POOL},state=\"{s}\"}}"),
        None => format!("{family}{POOL}}}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sleepers_on_a_pool_of_two_show_three_waiting_as_show_pools_does() {
    let (_cluster, bouncer) = bouncer_over_cluster(|_| {});
    let svc = start_settings(WHOAMI, |s, dir| {
        add_bouncer(s, dir, "bouncer", &bouncer, "pgpulse_stats", STATS_PASSWORD);
    })
    .await;
    // The sleepers: long enough that the state holds while the test compares (they end
    // with the test: PgBouncer is killed).
    let mut sleepers = Vec::new();
    for _ in 0..5 {
        let c = client(&bouncer).await;
        sleepers.push(tokio::spawn(async move {
            let _ = c.simple_query("SELECT pg_sleep(600)").await;
        }));
    }
    let waiting = pool_series("pgbouncer_pool_clients", Some("waiting"));
    let active = pool_series("pgbouncer_pool_servers", Some("active"));
    let max_wait = pool_series("pgbouncer_pool_max_wait_seconds", None);
    let body = svc
        .wait_probe("bouncer", "3 waiting and a wait past 1 s", |b| {
            sample(b, &waiting) == Some(3.0) && sample(b, &max_wait).is_some_and(|w| w > 1.0)
        })
        .await;
    let truth = console(&bouncer).await;
    let q = |col: &'static str| show(&truth, "SHOW POOLS", "database", "trade", col);
    assert_eq!(q("cl_waiting").await, Some(3.0));
    assert_eq!(sample(&body, &active), q("sv_active").await);
    assert_eq!(sample(&body, &active), Some(2.0));
    assert_eq!(
        sample(
            &body,
            &pool_series("pgbouncer_pool_clients", Some("active"))
        ),
        q("cl_active").await
    );
    let shown = sample(&body, &max_wait).unwrap();
    let now = q("maxwait").await.unwrap() + q("maxwait_us").await.unwrap() / 1e6;
    assert!(
        now >= shown,
        "the wait only grows: SHOW POOLS {now} s, pgpulse {shown} s"
    );
    assert_eq!(
        sample(&body, "pgbouncer_database_pool_size{database=\"trade\"}"),
        show(&truth, "SHOW DATABASES", "name", "trade", "pool_size").await
    );
    assert_eq!(sample(&body, "pgbouncer_up"), Some(1.0));
    assert!(
        body.contains("pgbouncer_version_info{version=\"1."),
        "{body}"
    );
    assert_eq!(
        sample(&body, "pgbouncer_max_client_connections"),
        Some(100.0),
        "max_client_conn of the test PgBouncer"
    );
    // The whole contract of a PgBouncer target is in the body, and promtool finds it clean.
    for name in PGBOUNCER_CONTRACT.split_whitespace() {
        let present = body
            .lines()
            .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")));
        assert!(present, "{name} missing from the body:\n{body}");
    }
    promtool_check(&body).unwrap_or_else(|e| panic!("promtool check metrics:\n{e}\n{body}"));
    for s in sleepers {
        s.abort();
    }
    svc.stop().await;
}
