//! The slow-statement counter starts at 0 for the pair of every open session, so that the
//! first slow execution of a new (database, user) pair shows in `increase()`: a role that has
//! just connected is exposed at 0 before it runs anything slow, and one slow statement makes
//! it 1, as the log on disk says.

use super::count::{settled, start_reader};
use super::{as_user, log_cluster, setup};
use crate::harness::connect;
use crate::harness::exec;
use crate::service::sample;
use crate::signals::shipped;

#[tokio::test(flavor = "multi_thread")]
async fn a_new_pair_is_exposed_at_zero_before_its_first_slow_statement() {
    let cluster = log_cluster(&[]);
    let (one, _two) = setup(&cluster).await;
    let logdir = cluster.dir().join("data/log");
    let svc = start_reader(
        &as_user(&one.url, "pgpulse_login"),
        &shipped(&["statements_available"], "2s"),
    )
    .await;
    let series = format!(
        "pg_statement_executions_over_threshold_total{{datname=\"{}\",user=\"trader_c\"}}",
        one.name
    );
    assert_eq!(
        sample(&settled(&svc).await, &series),
        None,
        "no session yet"
    );

    let trader = connect(&as_user(&one.url, "trader_c")).await;
    exec(&trader, "SELECT 1").await;
    let body = svc
        .wait_for("the open session's pair at 0", |b| {
            sample(b, &series).is_some()
        })
        .await;
    assert_eq!(sample(&body, &series), Some(0.0), "{body}");
    assert!(
        !body
            .lines()
            .any(|l| l.contains("executions_over") && l.contains("pgpulse_login")),
        "pgpulse's own session is not a pair"
    );

    exec(&trader, "SELECT pg_sleep(0.15) /* zero-test */").await;
    svc.wait_for("the first slow execution counted", |b| {
        sample(b, &series).is_some_and(|v| v > 0.0)
    })
    .await;
    let body = settled(&svc).await;
    let on_disk = std::fs::read_dir(&logdir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("zero-test") && l.contains("\"message\":\"duration: "))
                .count()
        })
        .sum::<usize>();
    assert_eq!(on_disk, 1, "PostgreSQL logged the statement once");
    assert_eq!(sample(&body, &series), Some(1.0), "{body}");
    svc.stop().await;
}
