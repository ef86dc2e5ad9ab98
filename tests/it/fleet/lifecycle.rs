//! The target list reloads as a diff by name: a target added to the targets file is sampled
//! within the refresh interval plus its query's interval; a removed one answers 404;
//! unchanged targets keep their counters (their runs go on from where they were).

use super::{WHOAMI, whoami, write_targets};
use crate::harness::TestDb;
use crate::service::{sample, start_settings};

const RUNS: &str = "pgpulse_query_runs_total{query=\"whoami\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_added_and_removed_in_the_file_come_and_go_and_the_others_keep_their_counters() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    let file = std::sync::Mutex::new(None);
    let svc = start_settings(WHOAMI, |s, dir| {
        let f = dir.join("targets.json");
        write_targets(&f, &[("a", &a.url)]);
        s.targets_file = Some(f.clone());
        s.fleet.refresh_interval = std::time::Duration::from_secs(1);
        *file.lock().unwrap() = Some(f);
    })
    .await;
    let file = file.lock().unwrap().clone().unwrap();
    let body = svc
        .wait_probe("a", "three runs", |b| sample(b, RUNS).unwrap_or(0.0) >= 3.0)
        .await;
    let before = sample(&body, RUNS).unwrap();
    assert_eq!(svc.probe("b").await.0, 404);
    write_targets(&file, &[("a", &a.url), ("b", &b.url)]);
    svc.wait_probe("b", "its first sample", |body| {
        sample(body, &whoami(&b.name)) == Some(1.0)
    })
    .await;
    let after = sample(&svc.probe("a").await.1, RUNS).unwrap();
    assert!(
        after >= before,
        "a's counter went on: {before} then {after}"
    );
    write_targets(&file, &[("b", &b.url)]);
    crate::harness::eventually(crate::harness::PATIENCE, || async {
        (svc.probe("a").await.0 == 404).then_some(())
    })
    .await
    .expect("a removed target answers 404");
    // /metrics follows within a render gap (a second).
    svc.wait_for("the process body without a", |m| {
        sample(m, "pgpulse_fleet_targets") == Some(1.0)
            && sample(m, "pgpulse_target_up{target=\"a\"}").is_none()
    })
    .await;
    // A target list that does not read keeps the running targets, and says so.
    std::fs::write(&file, "- targets: [b/db]\n  lables: {}\n").unwrap();
    svc.wait_for("the failed refresh counted", |m| {
        sample(m, "pgpulse_fleet_last_refresh_successful") == Some(0.0)
    })
    .await;
    assert_eq!(svc.probe("b").await.0, 200);
    svc.stop().await;
}
