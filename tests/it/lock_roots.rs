//! The root blockers of the lock forest (`lock_roots`, `lock_root_load`), against real lock
//! trees: the sessions behind each root equal what `pg_blocking_pids()` says transitively,
//! roots are named by what an operator acts on and never by a pid, and at most five roots are
//! named while the rest are summed as `other`.

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;

use crate::exporter::promtool_check;
use crate::harness::{TestDb, connect, exec, own_cluster};
use crate::service::{Running, start};
use crate::signals::shipped;
use pgpulse::demo::{ClusterOptions, TempCluster};

/// A session of the test with its own `application_name`.
async fn session(db: &TestDb, app: &str) -> Client {
    let sep = if db.url.contains('?') { '&' } else { '?' };
    connect(&format!("{}{sep}application_name={app}", db.url)).await
}

/// Starts `sql` on `c` in the background (it waits for a lock, or sleeps).
fn background(c: Client, sql: impl Into<String>) -> tokio::task::JoinHandle<()> {
    let sql = sql.into();
    tokio::spawn(async move {
        let _ = c.batch_execute(&sql).await;
    })
}

/// Waits until `n` sessions of the database wait for a lock.
async fn waiting(admin: &Client, n: i64) {
    crate::harness::eventually(crate::harness::PATIENCE, || async {
        let got = crate::harness::scalar(
            admin,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        .await;
        (got == n).then_some(())
    })
    .await
    .expect("the waiters queue");
}

/// The truth from the server: for each session that blocks others and waits for none, the
/// sessions behind it, transitively, by its application_name.
async fn truth(admin: &Client) -> HashMap<String, usize> {
    let rows = admin
        .query(
            "SELECT a.pid, a.application_name, pg_blocking_pids(a.pid) FROM pg_stat_activity a \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let app: HashMap<i32, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let edges: Vec<(i32, i32)> = rows
        .iter()
        .flat_map(|r| {
            let pid: i32 = r.get(0);
            r.get::<_, Vec<i32>>(2).into_iter().map(move |b| (b, pid))
        })
        .collect();
    let waiters: HashSet<i32> = edges.iter().map(|(_, w)| *w).collect();
    let mut out = HashMap::new();
    for root in edges
        .iter()
        .map(|(b, _)| *b)
        .filter(|b| !waiters.contains(b))
    {
        let mut seen = HashSet::from([root]);
        let mut frontier = vec![root];
        while let Some(at) = frontier.pop() {
            for (_, w) in edges.iter().filter(|(b, _)| *b == at) {
                if seen.insert(*w) {
                    frontier.push(*w);
                }
            }
        }
        out.insert(app[&root].clone(), seen.len() - 1);
    }
    out
}

/// The `pg_lock_root_blocked_sessions` series of `body`: labels (name → value) and value.
fn roots(body: &str) -> Vec<(HashMap<String, String>, f64)> {
    body.lines()
        .filter_map(|l| l.strip_prefix("pg_lock_root_blocked_sessions{"))
        .map(|rest| {
            let (labels, value) = rest.rsplit_once("} ").unwrap();
            let mut map = HashMap::new();
            for kv in labels.split("\",") {
                let (k, v) = kv.split_once("=\"").unwrap();
                map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
            }
            (map, value.parse().unwrap())
        })
        .collect()
}

/// A server of its own (the root blockers are sampled server-wide, and other tests hold
/// locks on the shared server), a database with a table `book` of 20 rows, an admin session,
/// and pgpulse sampling the root blockers every second, naming `named` of them.
async fn book(named: u32) -> (TempCluster, TestDb, Client, Running) {
    let cluster = own_cluster(ClusterOptions::default());
    let db = TestDb::on(&cluster.url("postgres")).await;
    let admin = db.client().await;
    exec(
        &admin,
        "CREATE TABLE book (id int PRIMARY KEY, qty int); \
         INSERT INTO book SELECT g, 0 FROM generate_series(1, 20) g",
    )
    .await;
    let catalog = shipped(&["database_load", "lock_roots", "lock_root_load"], "1s");
    let svc = start(&db.url, &catalog, |c| c.lock_roots_named = named as i32).await;
    (cluster, db, admin, svc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_of_depth_three_and_a_second_root_count_every_waiter_once_by_name_and_state() {
    let (_cluster, db, admin, svc) = book(5).await;
    // root_active holds row 1 and runs; w1 holds 2 and waits for 1; w2 holds 3 and waits
    // for 2; w3 waits for 3: depth 3. root_idle holds 10, idle in transaction; v1 waits.
    let root_active = session(&db, "root_active").await;
    exec(&root_active, "BEGIN; UPDATE book SET qty = 1 WHERE id = 1").await;
    let sleeping = background(root_active, "SELECT pg_sleep(600)");
    let mut tasks = vec![sleeping];
    for (app, hold, wait) in [("w1", 2, 1), ("w2", 3, 2)] {
        let c = session(&db, app).await;
        exec(
            &c,
            &format!("BEGIN; UPDATE book SET qty = 1 WHERE id = {hold}"),
        )
        .await;
        tasks.push(background(
            c,
            format!("UPDATE book SET qty = 2 WHERE id = {wait}"),
        ));
        waiting(&admin, i64::from(hold) - 1).await;
    }
    tasks.push(background(
        session(&db, "w3").await,
        "UPDATE book SET qty = 2 WHERE id = 3",
    ));
    let root_idle = session(&db, "root_idle").await;
    exec(&root_idle, "BEGIN; UPDATE book SET qty = 1 WHERE id = 10").await;
    tasks.push(background(
        session(&db, "v1").await,
        "UPDATE book SET qty = 2 WHERE id = 10",
    ));
    waiting(&admin, 4).await;
    let truth = truth(&admin).await;
    assert_eq!(truth.get("root_active"), Some(&3), "{truth:?}");
    assert_eq!(truth.get("root_idle"), Some(&1), "{truth:?}");

    let body = svc
        .wait_for("both roots named with what waits behind them", |b| {
            let r = roots(b);
            r.len() == 2
                && truth.iter().all(|(app, n)| {
                    r.iter()
                        .any(|(l, v)| &l["application_name"] == app && *v == *n as f64)
                })
        })
        .await;
    let named = roots(&body);
    let state = |app: &str| {
        named
            .iter()
            .find(|(l, _)| l["application_name"] == app)
            .map(|(l, _)| l["state"].clone())
    };
    assert_eq!(state("root_active").as_deref(), Some("active"));
    assert_eq!(state("root_idle").as_deref(), Some("idle in transaction"));
    let pids: HashSet<String> = admin
        .query("SELECT pid::text FROM pg_stat_activity", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (labels, _) in &named {
        let names: HashSet<&str> = labels.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            HashSet::from([
                "datname",
                "usename",
                "application_name",
                "state",
                "query_id"
            ])
        );
        for (k, v) in labels {
            assert!(k == "query_id" || !pids.contains(v), "a pid in {k}: {v}");
        }
    }
    // The session-seconds counter grows while the sessions wait.
    let series = |b: &str| {
        b.lines()
            .find(|l| {
                l.starts_with("pg_lock_root_blocked_seconds_total{")
                    && l.contains("application_name=\"root_active\"")
            })
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
    };
    svc.wait_for("three sessions held up for a few seconds", |b| {
        series(b).is_some_and(|v| v >= 6.0)
    })
    .await;
    for t in &tasks {
        t.abort();
    }
    svc.stop().await;
    drop(admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_five_roots_the_rest_are_one_other_series_and_hostile_names_stay_labels() {
    seven_roots(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_of_named_roots_is_configurable() {
    seven_roots(2).await;
}

/// Seven roots of one waiter each, `named` of them named and the rest one `other` series.
async fn seven_roots(named: u32) {
    let (_cluster, db, admin, svc) = book(named).await;
    // Seven roots, each holding one row with one waiter; one root's name is hostile.
    let mut held = Vec::new();
    let mut tasks = Vec::new();
    for i in 1..=7 {
        let root = session(&db, &format!("root_{i}")).await;
        if i == 1 {
            // Quotes, braces and a backslash: an attempt to forge a series in the body.
            exec(&root, "SET application_name = 'evil\"}\npg_up{x=\"1\\'").await;
        }
        exec(
            &root,
            &format!("BEGIN; UPDATE book SET qty = 1 WHERE id = {i}"),
        )
        .await;
        held.push(root);
        let sql = format!("UPDATE book SET qty = 2 WHERE id = {i}");
        tasks.push(background(session(&db, &format!("waiter_{i}")).await, sql));
    }
    waiting(&admin, 7).await;
    let body = svc
        .wait_for(
            "the named roots and one other, all seven waiters counted",
            |b| {
                // A sample taken while the waiters still queued may already show `named` + 1
                // series; only one that counts all seven is the state this test built.
                let r = roots(b);
                r.len() == named as usize + 1 && r.iter().map(|(_, v)| v).sum::<f64>() == 7.0
            },
        )
        .await;
    let series = roots(&body);
    let other: Vec<_> = series
        .iter()
        .filter(|(l, _)| l["application_name"] == "other")
        .collect();
    assert_eq!(other.len(), 1, "{series:?}");
    let rest = f64::from(7 - named);
    assert_eq!(
        other[0].1, rest,
        "the other roots of one waiter each are summed"
    );
    assert!(other[0].0.values().all(|v| v == "other"));
    assert_eq!(series.iter().map(|(_, v)| v).sum::<f64>(), 7.0);
    promtool_check(&body).unwrap();
    for t in &tasks {
        t.abort();
    }
    drop(held);
    svc.stop().await;
}
