//! The global connection cap: pgpulse's backends over every target, counted by
//! `application_name` every 100 ms, never exceed `fleet.max_connections` through target
//! additions, removals and reloads, although the targets' pools together could hold more;
//! every target still gets its turn; a removed target's connections are gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::{WHOAMI, whoami, write_targets};
use crate::harness::{PATIENCE, TestDb, admin_url, connect, eventually};
use crate::service::{Running, sample, start_settings};

const CAP: usize = 3;

/// Counts the backends of `app` every 100 ms until `done`; returns the highest count.
fn watch(app: String, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let c = connect(&admin_url()).await;
        let most = AtomicI64::new(0);
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1";
        // The count's cadence, not a wait for a condition: a sample every 100 ms.
        let mut every = tokio::time::interval(std::time::Duration::from_millis(100));
        while !done.load(Ordering::Relaxed) {
            every.tick().await;
            let n: i64 = c.query_one(sql, &[&app]).await.unwrap().get(0);
            most.fetch_max(n, Ordering::Relaxed);
        }
        most.load(Ordering::Relaxed)
    })
}

/// Waits until each of `dbs` has been sampled through its target.
async fn all_sampled(svc: &Running, dbs: &[(&str, &TestDb)]) {
    for (name, db) in dbs {
        svc.wait_probe(name, "a sample", |b| {
            sample(b, &whoami(&db.name)) == Some(1.0)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_over_every_target_through_churn() {
    let dbs = [
        TestDb::new().await,
        TestDb::new().await,
        TestDb::new().await,
        TestDb::new().await,
    ];
    let app = format!("pgpulse_budget_{}", rand::random::<u32>());
    let urls: Vec<String> = dbs
        .iter()
        .map(|d| format!("{}&application_name={app}", d.url))
        .collect();
    let names = ["a", "b", "c", "d"];
    let file = std::sync::Mutex::new(None);
    let svc = start_settings(WHOAMI, |s, dir| {
        let f = dir.join("targets.yaml");
        write_targets(
            &f,
            &[
                (names[0], &urls[0]),
                (names[1], &urls[1]),
                (names[2], &urls[2]),
            ],
        );
        s.targets_file = Some(f.clone());
        s.fleet.max_connections = CAP;
        s.fleet.pool_size = 2;
        s.fleet.refresh_interval = std::time::Duration::from_secs(1);
        *file.lock().unwrap() = Some(f);
    })
    .await;
    let file = file.lock().unwrap().clone().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch(app.clone(), done.clone());
    let pairs: Vec<(&str, &TestDb)> = names.iter().copied().zip(dbs.iter()).collect();
    let listed = |ix: &[usize]| -> Vec<(&str, &str)> {
        ix.iter().map(|&i| (names[i], urls[i].as_str())).collect()
    };
    all_sampled(&svc, &pairs[..3]).await;
    // Add the fourth target by the timer, then churn by reload (SIGHUP's path).
    write_targets(&file, &listed(&[0, 1, 2, 3]));
    all_sampled(&svc, &pairs).await;
    write_targets(&file, &listed(&[1, 3]));
    let _ = svc.reloader.reload();
    assert_eq!(svc.probe("a").await.0, 404);
    all_sampled(&svc, &[pairs[1], pairs[3]]).await;
    // The removed targets' connections are gone.
    let c = connect(&admin_url()).await;
    let sql =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = ANY($2)";
    let removed = vec![dbs[0].name.clone(), dbs[2].name.clone()];
    let gone = eventually(PATIENCE, || async {
        let n: i64 = c.query_one(sql, &[&app, &removed]).await.unwrap().get(0);
        (n == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the removed targets' connections closed");
    write_targets(&file, &listed(&[0, 1, 2, 3]));
    let _ = svc.reloader.reload();
    all_sampled(&svc, &pairs).await;
    done.store(true, Ordering::Relaxed);
    let most = watcher.await.unwrap();
    assert!(most >= 1, "the watcher saw pgpulse's backends");
    assert!(most <= CAP as i64, "{most} backends > cap {CAP}");
    svc.stop().await;
}
