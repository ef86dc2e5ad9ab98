//! The connection budget while new sessions cannot start: a transaction holds ACCESS
//! EXCLUSIVE on `pg_database`, which every new session reads while it starts, so a server
//! process started for pgpulse waits for the lock and lives on after pgpulse's connect timeout
//! gave up on it. pgpulse must count such abandoned attempts against its budget (it opens no
//! more server processes than `database.pool_size`), report `pg_up 0`, and recover once the
//! lock is released.

use crate::harness::exec;
use tokio_postgres::Client;

use crate::harness::{PATIENCE, connect, eventually, own_cluster};
use crate::health::start_short_probe;
use crate::service::sample;
use pgpulse::demo::{ClusterOptions, TempCluster};

/// The login role pgpulse uses here, so its server processes can be told apart by title.
const ROLE: &str = "pulse_slots";

/// Server processes of `ROLE` (in start-up or not): children of the postmaster whose title
/// starts with `postgres: ROLE `. Read from /proc, as `pg_stat_activity` itself reads
/// `pg_database` and would wait for the lock.
fn server_processes(cluster: &TempCluster) -> usize {
    let pid_file = std::fs::read_to_string(cluster.dir().join("data/postmaster.pid")).unwrap();
    let postmaster = pid_file.lines().next().unwrap().trim().to_owned();
    let title = format!("postgres: {ROLE} ");
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let (Ok(stat), Ok(cmdline)) = (
            std::fs::read_to_string(dir.join("stat")),
            std::fs::read(dir.join("cmdline")),
        ) else {
            continue; // not a process, or it just ended
        };
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(postmaster.as_str())
            && String::from_utf8_lossy(&cmdline).starts_with(&title)
        {
            n += 1;
        }
    }
    n
}

/// Begins a transaction holding ACCESS EXCLUSIVE on `pg_database` on `locker`, and ends
/// every session of `ROLE` from inside it, waiting until each has exited (they must
/// reconnect, under the lock, and no exiting process is counted).
async fn lock_and_disconnect(locker: &Client) {
    exec(
        locker,
        &format!(
            "BEGIN; LOCK TABLE pg_database IN ACCESS EXCLUSIVE MODE; \
             SELECT pg_terminate_backend(pid, 60000) FROM pg_stat_activity WHERE usename = '{ROLE}'"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_pg_database_does_not_multiply_connection_attempts_beyond_the_budget() {
    let cluster = own_cluster(ClusterOptions::default());
    let admin = connect(&cluster.url("postgres")).await;
    exec(
        &admin,
        &format!("CREATE ROLE {ROLE} LOGIN; GRANT pg_monitor TO {ROLE}"),
    )
    .await;
    let url = cluster
        .url("postgres")
        .replace("postgres://postgres@", &format!("postgres://{ROLE}@"));
    let budget = 3;
    let svc = start_short_probe(&url, budget).await;
    lock_and_disconnect(&admin).await;
    // Each failed probe gave up on a connection attempt whose server process waits for the
    // lock. Budget + 2 more failures: without slots for attempts, that many processes.
    let failures = "pgpulse_connection_failures_total";
    let first = sample(&svc.metrics().await, failures).unwrap_or(0.0);
    let mut most = 0;
    eventually(PATIENCE, || {
        let held = server_processes(&cluster);
        most = most.max(held);
        assert!(
            held <= budget,
            "{held} server processes of pgpulse, budget {budget}"
        );
        let svc = &svc;
        async move {
            let body = svc.metrics().await;
            let down = sample(&body, "pg_up") == Some(0.0);
            let tried = sample(&body, failures).unwrap_or(0.0) >= first + budget as f64 + 2.0;
            (down && tried).then_some(())
        }
    })
    .await
    .expect("the probe kept failing, with pg_up 0, under the lock");
    let held = server_processes(&cluster);
    assert!(
        held <= budget,
        "{held} server processes of pgpulse, budget {budget}"
    );
    most = most.max(held);
    assert_eq!(
        most, budget,
        "the abandoned attempts' server processes filled the budget (the test saw them wait)"
    );
    exec(&admin, "COMMIT").await;
    svc.wait_for("pg_up 1 after the lock", |b| {
        sample(b, "pg_up") == Some(1.0)
    })
    .await;
    // The abandoned attempts' processes now get the lock, find their client gone and exit,
    // while pgpulse connects again: an exiting one may still be listed for a moment.
    eventually(PATIENCE, || async {
        (server_processes(&cluster) <= budget).then_some(())
    })
    .await
    .expect("back within the budget after the lock");
    svc.stop().await;
}
