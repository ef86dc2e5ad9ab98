//! The test harness: a throwaway PostgreSQL cluster per test binary (started from the
//! system's binaries, pg_stat_statements preloaded), a fresh database per test, dropped when
//! the test ends, also on panic. `PGPULSE_TEST_DATABASE_URL` points the suite at an existing
//! local server instead. Extra clusters with other settings are started per test.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgpulse::demo::{ClusterOptions, TempCluster};
use tokio_postgres::{Client, NoTls};

static SHARED: OnceLock<Result<TempCluster, String>> = OnceLock::new();

/// The admin URL (database `postgres`) of the shared server.
pub(crate) fn admin_url() -> String {
    if let Ok(url) = std::env::var("PGPULSE_TEST_DATABASE_URL") {
        return url;
    }
    match SHARED
        .get_or_init(|| TempCluster::start(&ClusterOptions::default()).map_err(|e| e.to_string()))
    {
        Ok(c) => c.url("postgres"),
        Err(e) => panic!("cannot start the test cluster: {e}"),
    }
}

/// Replaces the database of a URL.
pub(crate) fn with_db(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map(|(b, q)| (b, format!("?{q}")))
        .unwrap_or((url, String::new()));
    let at = base.rfind('/').expect("a URL with a path");
    format!("{}/{db}{query}", &base[..at])
}

/// Connects to a URL (test helper; panics on failure).
pub(crate) async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The single `bigint` a query returns (test helper; panics on failure).
pub(crate) async fn scalar(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Runs `sql` (one or more statements) on `c`; panics with the statement on failure.
pub(crate) async fn exec(c: &Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The body of an HTTP request's answer (test helper; panics on failure).
pub(crate) async fn http_text(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

/// Statements that create a database owner `owner` (who may create roles) and a tenant role
/// `tenant`, and give the database `db` to the owner.
pub(crate) fn owner_and_tenant(owner: &str, tenant: &str, db: &str) -> String {
    format!(
        "CREATE ROLE {owner} LOGIN CREATEROLE; CREATE ROLE {tenant} LOGIN; \
         ALTER DATABASE {db} OWNER TO {owner};"
    )
}

/// The first column of every row, as text (test helper; panics on failure).
pub(crate) async fn strings(c: &Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A database of its own for one test; dropped (WITH FORCE) on drop.
pub(crate) struct TestDb {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    admin: String,
}

impl TestDb {
    /// Creates an empty database on the shared server.
    pub(crate) async fn new() -> Self {
        Self::on(&admin_url()).await
    }

    /// Creates an empty database on the server of `admin`.
    pub(crate) async fn on(admin: &str) -> Self {
        let name = format!("t_{}_{}", std::process::id(), rand::random::<u32>());
        let c = connect(admin).await;
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        Self {
            url: with_db(admin, &name),
            name,
            admin: admin.to_owned(),
        }
    }

    /// A database with the reference trade-engine schema and sample data.
    pub(crate) async fn trade() -> Self {
        let db = Self::new().await;
        let c = db.client().await;
        pgpulse::demo::schema::install(&c)
            .await
            .expect("install trade-engine schema");
        db
    }

    /// The trade-engine database with the monitoring schema migrated.
    pub(crate) async fn trade_migrated() -> Self {
        Self::trade_migrated_on(&admin_url()).await
    }

    /// The migrated trade-engine database on the server of `admin` (another cluster).
    pub(crate) async fn trade_migrated_on(admin: &str) -> Self {
        let db = Self::on(admin).await;
        let c = db.client().await;
        pgpulse::demo::schema::install(&c)
            .await
            .expect("install trade-engine schema");
        db.migrate().await;
        db
    }

    /// Applies the migrations.
    pub(crate) async fn migrate(&self) {
        let mut c = self.client().await;
        pgpulse::db::migrate::migrate(&mut c)
            .await
            .expect("migrate");
    }

    /// A new connection.
    pub(crate) async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        cleanup(
            &self.admin,
            vec![format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )],
        );
    }
}

/// Runs `statements` on `admin`, ignoring failures, from a plain thread with a runtime of its
/// own: for `Drop`, which runs also while a test panics.
pub(crate) fn cleanup(admin: &str, statements: Vec<String>) {
    let admin = admin.to_owned();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&admin, NoTls).await.ok()?;
            tokio::spawn(conn);
            for sql in statements {
                let _ = c.batch_execute(&sql).await;
            }
            Some(())
        })
    })
    .join();
}

/// Starts a cluster of its own with `opts` (stopped and removed when dropped).
pub(crate) fn own_cluster(opts: ClusterOptions) -> TempCluster {
    TempCluster::start(&opts).unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"))
}

/// A cluster of its own without autovacuum, for tests whose statistics or XIDs only the
/// test may move.
pub(crate) fn cluster_without_autovacuum() -> TempCluster {
    own_cluster(ClusterOptions {
        extra_settings: vec![("autovacuum".into(), "off".into())],
        ..Default::default()
    })
}

/// Flushes the session's pending statistics: forced at its next idle point, which the
/// following statement passes.
pub(crate) async fn flush_stats(c: &Client) {
    c.batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
}

/// Runs the pgpulse binary with `args` and environment `env` (PGPULSE_* of the test process
/// are removed first).
pub(crate) fn pgpulse(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgpulse"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PGPULSE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run pgpulse")
}

/// stdout and stderr of an output, as text.
pub(crate) fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// How long a test waits for a condition before failing: generous, because CI runs on two
/// loaded cores; it only bounds how long a real failure takes to report.
pub(crate) const PATIENCE: Duration = Duration::from_secs(180);

/// Polls `f` until it returns `Some` or `deadline` passes.
pub(crate) async fn eventually<T, F, Fut>(deadline: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `child` to exit, at most `patience`; `None` when it is still running then. Blocks
/// on the child's exit (a waiter thread), no polling.
pub(crate) fn wait_exit(
    child: &mut std::process::Child,
    patience: Duration,
) -> Option<std::process::ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).ok()?);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(nix::sys::wait::waitpid(pid, None));
    });
    match rx.recv_timeout(patience) {
        Ok(Ok(nix::sys::wait::WaitStatus::Exited(_, code))) => {
            Some(std::os::unix::process::ExitStatusExt::from_raw(code << 8))
        }
        Ok(Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _))) => {
            Some(std::os::unix::process::ExitStatusExt::from_raw(sig as i32))
        }
        _ => None,
    }
}
