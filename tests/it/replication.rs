//! Replication ground truth: a primary of the test's own and a standby started by
//! `pg_basebackup -R` through a physical slot (`TempCluster::standby_of`), each watched by a
//! pgpulse of its own. Paused replay under writes shows lag growing and equal to the primary's
//! own `pg_wal_lsn_diff`; the standby runs the whole catalog without a failure; a dropped
//! standby leaves an inactive slot retaining exactly the WAL PostgreSQL reports.

use crate::harness::exec;
use tokio_postgres::Client;

use crate::catalog::fast_catalog;
use crate::harness::{TestDb, connect, eventually, own_cluster, with_db};
use crate::service::{Running, sample, start};
use crate::signals::{DEADLINE, agreed, shipped};
use pgpulse::catalog::Catalog;
use pgpulse::demo::{ClusterOptions, TempCluster};

/// The application_name of the standby's WAL receiver, once it streams.
async fn streaming_standby(primary: &Client) -> String {
    let sql = "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'";
    eventually(DEADLINE, || async {
        primary
            .query_opt(sql, &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0))
    })
    .await
    .expect("the standby streams from the primary")
}

/// Waits until every query that gating lets run on the server of `svc` ran at least once;
/// returns the body.
async fn every_enabled_query_ran(svc: &Running, catalog: &str) -> String {
    let cat = Catalog::parse(catalog, "q".as_ref(), Default::default()).unwrap();
    let body = eventually(DEADLINE, || async {
        let body = svc.metrics().await;
        let ran = cat.queries.iter().all(|q| {
            let label = format!("{{query=\"{}\"}}", q.name);
            match sample(&body, &format!("pgpulse_query_enabled{label}")) {
                Some(0.0) => true,
                // Succeeded once: a first run that waited too long for the pool has no
                // series yet, and it is not a failure of this server's role either.
                Some(_) => sample(
                    &body,
                    &format!("pgpulse_query_last_success_timestamp_seconds{label}"),
                )
                .is_some_and(|t| t > 0.0),
                None => false,
            }
        });
        ran.then_some(body)
    })
    .await;
    body.expect("every enabled query ran")
}

/// The (series, value) of every failure counter above zero.
fn failures(body: &str) -> Vec<&str> {
    // A wait for a pooled connection (kind="pool") or a statement timeout is the scheduling of
    // 39 queries at 2 s on a loaded machine, not a query failing on this server's role.
    body.lines()
        .filter(|l| l.starts_with("pgpulse_query_errors_total{"))
        .filter(|l| !l.contains("kind=\"pool\"") && !l.contains("kind=\"timeout\""))
        .filter(|l| !l.ends_with(" 0"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_standby_lags_by_exactly_the_primarys_own_lsn_diff_and_runs_the_catalog_cleanly() {
    let primary = own_cluster(ClusterOptions::default());
    let db = TestDb::trade_migrated_on(&primary.url("postgres")).await;
    let standby =
        TempCluster::standby_of(&primary, "standby_a").unwrap_or_else(|e| panic!("standby: {e}"));
    let p = db.client().await;
    let s_url = with_db(&standby.url("postgres"), &db.name);
    let s = connect(&s_url).await;
    let app = streaming_standby(&p).await;
    let catalog = fast_catalog();
    let svc_p = start(&db.url, &catalog, |_| {}).await;
    let svc_s = start(&s_url, &catalog, |_| {}).await;

    // The whole catalog on both: role-gated queries off where they do not apply, no failure.
    for (svc, role, on, off) in [
        (&svc_p, "primary", "replication", "standby"),
        (&svc_s, "standby", "standby", "replication"),
    ] {
        let body = every_enabled_query_ran(svc, &catalog).await;
        assert_eq!(failures(&body), Vec::<&str>::new(), "{role}: failures");
        let enabled = |q: &str| sample(&body, &format!("pgpulse_query_enabled{{query=\"{q}\"}}"));
        assert_eq!(
            (enabled(on), enabled(off)),
            (Some(1.0), Some(0.0)),
            "{role}"
        );
        // Read from a body of its own: with 39 queries every 2 s on a loaded machine, the
        // `server` query's series may have expired (3 × its interval without a success) in
        // the body above, although the query succeeded before it.
        let in_recovery = eventually(DEADLINE, || async {
            sample(&svc.metrics().await, "pg_server_in_recovery")
        })
        .await;
        assert_eq!(
            in_recovery,
            Some(f64::from(u8::from(role == "standby"))),
            "{role}"
        );
    }

    exec(&s, "SELECT pg_wal_replay_pause()").await;
    let paused = "SELECT (pg_get_wal_replay_pause_state() = 'paused')::int::float8";
    agreed(
        &svc_s,
        &s,
        "pg_standby_replay_paused",
        paused,
        "paused",
        |v| v == 1.0,
    )
    .await;

    let lag = format!("pg_replication_replay_lag_bytes{{application_name=\"{app}\"}}");
    let lag_sql = format!(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 \
         FROM pg_stat_replication WHERE application_name = '{app}'"
    );
    let s_lag_sql =
        "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8";
    let mut last = 0.0;
    for round in 0..2 {
        exec(
            &p,
            &format!(
                "CREATE TABLE lag_{round} AS SELECT g AS id, repeat('x', 200) AS pad \
             FROM generate_series(1, 20000) g"
            ),
        )
        .await;
        let now = agreed(&svc_p, &p, &lag, &lag_sql, "primary replay lag", |v| {
            v > last
        })
        .await;
        // The standby's own view: received but not replayed.
        agreed(
            &svc_s,
            &s,
            "pg_standby_replay_lag_bytes",
            s_lag_sql,
            "standby replay lag",
            |v| v > last,
        )
        .await;
        last = now;
    }

    exec(&s, "SELECT pg_wal_replay_resume()").await;
    agreed(&svc_p, &p, &lag, &lag_sql, "caught up", |v| v == 0.0).await;
    agreed(
        &svc_s,
        &s,
        "pg_standby_replay_paused",
        paused,
        "resumed",
        |v| v == 0.0,
    )
    .await;
    let received = "SELECT greatest(pg_wal_lsn_diff(latest_end_lsn, flushed_lsn), 0)::float8 \
                    FROM pg_stat_wal_receiver";
    agreed(
        &svc_s,
        &s,
        "pg_standby_receive_lag_bytes",
        received,
        "receive lag",
        |_| true,
    )
    .await;
    svc_s.stop().await;
    svc_p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_standby_leaves_an_inactive_slot_retaining_the_wal_postgresql_reports() {
    let primary = own_cluster(ClusterOptions::default());
    let db = TestDb::on(&primary.url("postgres")).await;
    let standby =
        TempCluster::standby_of(&primary, "gone").unwrap_or_else(|e| panic!("standby: {e}"));
    let p = db.client().await;
    let app = streaming_standby(&p).await;
    let catalog = shipped(
        &[
            "replication",
            "replication_slots",
            "replication_slot_wal_status",
        ],
        "1s",
    );
    let svc = start(&db.url, &catalog, |_| {}).await;
    let slot = "{slot_name=\"gone\",slot_type=\"physical\"}";
    let active = format!("pg_replication_slot_active{slot}");
    let active_sql =
        "SELECT active::int::float8 FROM pg_replication_slots WHERE slot_name = 'gone'";
    agreed(&svc, &p, &active, active_sql, "active slot", |v| v == 1.0).await;
    let streaming = format!("pg_replication_standby_streaming{{application_name=\"{app}\"}}");
    eventually(DEADLINE, || async {
        (sample(&svc.metrics().await, &streaming) == Some(1.0)).then_some(())
    })
    .await
    .expect("the standby is reported streaming");

    drop(standby);
    exec(
        &p,
        "CREATE TABLE after_drop AS SELECT g FROM generate_series(1, 50000) g",
    )
    .await;
    agreed(&svc, &p, &active, active_sql, "inactive slot", |v| v == 0.0).await;
    let retained = format!("pg_replication_slot_retained_wal_bytes{slot}");
    let retained_sql = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 \
                        FROM pg_replication_slots WHERE slot_name = 'gone'";
    let bytes = agreed(&svc, &p, &retained, retained_sql, "retained WAL", |v| {
        v > 0.0
    })
    .await;
    assert!(bytes > 0.0);
    let body = svc.metrics().await;
    assert_eq!(
        sample(
            &body,
            "pg_replication_slot_wal_status{slot_name=\"gone\",wal_status=\"reserved\"}"
        ),
        Some(1.0),
        "{body}"
    );
    // The standby is gone from pg_stat_replication, so its series go with the next run of
    // the replication query.
    eventually(DEADLINE, || async {
        sample(&svc.metrics().await, &streaming)
            .is_none()
            .then_some(())
    })
    .await
    .expect("the dropped standby's series are gone");
    svc.stop().await;
}
