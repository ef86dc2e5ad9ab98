//! Counters stay counters: a custom catalog's counter column that returns a negative number,
//! NaN, or a value lower than the last one served while the server's statistics did not
//! reset, is dropped and counted, never served; after a real reset (`pg_stat_reset()`), the
//! lower value is served as the counter's new life.

use crate::harness::TestDb;
use crate::harness::exec;
use crate::service::{Running, sample, start};

const CATALOG: &str = r#"
queries:
  - name: hostile_counter
    help: a counter column whose values the test sets
    interval: 1s
    timeout: 900ms
    labels: [k]
    sql: SELECT k, v FROM public.counter_source
    metrics:
      - {column: v, name: pg_test_events_total, type: counter, help: Events.}
"#;

fn value(body: &str, k: &str) -> Option<f64> {
    sample(body, &format!("pg_test_events_total{{k=\"{k}\"}}"))
}

fn dropped(body: &str, reason: &str) -> f64 {
    sample(
        body,
        &format!(
            "pgpulse_query_samples_rejected_total{{query=\"hostile_counter\",reason=\"{reason}\"}}"
        ),
    )
    .unwrap_or(-1.0)
}

/// Sets the source and waits until two runs after the change were published. The body read
/// first may be one render gap (`exposition::MIN_GAP`, one run of this 1 s query) behind,
/// and the run in flight at the change may have read the old value: four runs more.
async fn set_and_wait(svc: &Running, c: &tokio_postgres::Client, sql: &str) -> String {
    let runs =
        |b: &str| sample(b, "pgpulse_query_runs_total{query=\"hostile_counter\"}").unwrap_or(0.0);
    let before = runs(&svc.metrics().await);
    exec(c, sql).await;
    svc.wait_for("two runs after the change", |b| runs(b) >= before + 4.0)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_nan_and_decreasing_counter_samples_are_dropped_until_the_source_resets() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(&c, "CREATE TABLE public.counter_source (k text PRIMARY KEY, v float8); \
         INSERT INTO public.counter_source VALUES ('a', 10), ('b', -5), ('c', 'NaN'), ('d', 'Infinity'); \
         GRANT SELECT ON public.counter_source TO PUBLIC").await;
    let svc = start(&db.url, CATALOG, |_| {}).await;
    let body = svc
        .wait_for("the first run", |b| value(b, "a").is_some())
        .await;
    assert_eq!(value(&body, "a"), Some(10.0));
    assert_eq!(
        value(&body, "b"),
        None,
        "a negative counter is never served"
    );
    assert_eq!(value(&body, "c"), None, "NaN is never served");
    assert_eq!(value(&body, "d"), None, "Inf is never served");
    assert!(dropped(&body, "negative") >= 1.0);
    assert!(dropped(&body, "not_finite") >= 2.0);
    assert_eq!(dropped(&body, "decrease"), 0.0);

    // Lower without a reset: the served value holds, the sample is counted.
    let body = set_and_wait(
        &svc,
        &c,
        "UPDATE public.counter_source SET v = 4 WHERE k = 'a'",
    )
    .await;
    assert_eq!(value(&body, "a"), Some(10.0));
    assert!(dropped(&body, "decrease") >= 2.0);

    // Higher again: served.
    let body = set_and_wait(
        &svc,
        &c,
        "UPDATE public.counter_source SET v = 12 WHERE k = 'a'",
    )
    .await;
    assert_eq!(value(&body, "a"), Some(12.0));

    // A real reset of the server's statistics (the database's stats_reset moves): the lower
    // value is the counter's new life and is served.
    exec(
        &c,
        "UPDATE public.counter_source SET v = 3 WHERE k = 'a'; SELECT pg_stat_reset()",
    )
    .await;
    svc.wait_for("the reset taken as a reset", |b| value(b, "a") == Some(3.0))
        .await;
    svc.stop().await;
}
