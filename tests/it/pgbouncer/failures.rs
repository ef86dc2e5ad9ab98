//! A console that refuses the role, a wrong password and a hung PgBouncer (SIGSTOP): each a
//! clear error naming the cause, `pgbouncer_up` 0, while a database target of the same
//! pgpulse keeps its interval and the fleet's connection cap holds.

use std::time::Duration;

use nix::sys::signal::Signal;
use pgpulse::bouncer::{Bouncer, BouncerSettings};
use pgpulse::db::DatabaseTarget;
use prometheus_client::registry::Registry;

use super::{STATS_PASSWORD, add_bouncer, bouncer_over_cluster};
use crate::fleet::{WHOAMI, target, whoami};
use crate::harness::TestDb;
use crate::service::{Running, sample, start_settings};

/// One round of a PgBouncer sampler as `user` with `password`; its error.
async fn round_error(port: u16, user: &str, password: &str, timeout: Duration) -> Option<String> {
    let mut target = DatabaseTarget::parse(&format!(
        "postgres://{user}@127.0.0.1:{port}/pgbouncer?connect_timeout=10"
    ))
    .unwrap();
    target.set_password(password);
    let settings = BouncerSettings {
        target,
        password_file: None,
        cap: None,
        interval: Duration::from_secs(3600),
        timeout,
    };
    let b = Bouncer::new(settings, &mut Registry::default());
    b.run_round().await;
    b.last_error()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_role_a_wrong_password_and_a_hung_pgbouncer_give_clear_errors() {
    let (_cluster, bouncer) = bouncer_over_cluster(|_| {});
    let port = bouncer.port();
    let long = Duration::from_secs(60);
    assert_eq!(
        round_error(port, "pgpulse_stats", STATS_PASSWORD, long).await,
        None
    );
    let refused = round_error(port, "postgres", "postgres", long)
        .await
        .unwrap();
    assert!(
        refused.contains("admin console") && refused.contains("not allowed"),
        "{refused}"
    );
    let wrong = round_error(port, "pgpulse_stats", "wrong", long)
        .await
        .unwrap();
    assert!(
        wrong.contains("authentication failed") && wrong.contains("password_file"),
        "{wrong}"
    );
    bouncer.signal(Signal::SIGSTOP).unwrap();
    let hung = round_error(
        port,
        "pgpulse_stats",
        STATS_PASSWORD,
        Duration::from_secs(2),
    )
    .await;
    bouncer.signal(Signal::SIGCONT).unwrap();
    let hung = hung.unwrap();
    assert!(hung.contains("no answer within"), "{hung}");
}

/// Runs of the database target's query so far.
async fn runs(svc: &Running) -> f64 {
    let body = svc.probe("db").await.1;
    sample(&body, "pgpulse_query_runs_total{query=\"whoami\"}").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pgbouncers_slow_no_other_target_and_hold_the_budget() {
    let (_cluster, bouncer) = bouncer_over_cluster(|_| {});
    let db = TestDb::new().await;
    let svc = start_settings(WHOAMI, |s, dir| {
        s.targets.push(target("db", &db.url, &[]));
        add_bouncer(s, dir, "hung", &bouncer, "pgpulse_stats", STATS_PASSWORD);
        add_bouncer(s, dir, "refused", &bouncer, "postgres", "postgres");
        add_bouncer(s, dir, "wrong", &bouncer, "pgpulse_stats", "wrong");
        s.fleet.max_connections = 5;
        s.fleet.pgbouncer_timeout = Duration::from_secs(1);
    })
    .await;
    svc.wait_probe("hung", "a first round", |b| {
        sample(b, "pgbouncer_up") == Some(1.0)
    })
    .await;
    for name in ["refused", "wrong"] {
        svc.wait_probe(name, "failed rounds", |b| {
            sample(b, "pgbouncer_up") == Some(0.0)
                && sample(b, "pgpulse_pgbouncer_errors_total").is_some_and(|e| e >= 2.0)
        })
        .await;
    }
    bouncer.signal(Signal::SIGSTOP).unwrap();
    svc.wait_probe("hung", "rounds missing their deadline", |b| {
        sample(b, "pgbouncer_up") == Some(0.0)
            && sample(b, "pgpulse_pgbouncer_errors_total").is_some_and(|e| e >= 3.0)
    })
    .await;
    // While it hangs, the database target keeps its 1 s interval: five more runs.
    let before = runs(&svc).await;
    let max_open = std::sync::Mutex::new(0.0_f64);
    crate::harness::eventually(crate::harness::PATIENCE, || async {
        let body = svc.metrics().await;
        let open = sample(&body, "pgpulse_fleet_connections").unwrap_or(0.0);
        {
            let mut m = max_open.lock().unwrap();
            *m = m.max(open);
        }
        (runs(&svc).await >= before + 5.0).then_some(())
    })
    .await
    .expect("five more runs of the database target while PgBouncer hangs");
    let max_open = *max_open.lock().unwrap();
    assert!(max_open <= 5.0, "the cap holds: {max_open}");
    let body = svc.probe("db").await.1;
    assert_eq!(sample(&body, &whoami(&db.name)), Some(1.0));
    bouncer.signal(Signal::SIGCONT).unwrap();
    svc.wait_probe("hung", "up again after SIGCONT", |b| {
        sample(b, "pgbouncer_up") == Some(1.0)
    })
    .await;
    svc.stop().await;
}
