//! `/debug/locks` against a real lock chain: a report idle in transaction after a statement
//! with a literal, an `ALTER TABLE` waiting for it, an insert with a literal queued behind the
//! `ALTER`. The endpoint shows the chain with the statements as pg_stat_statements normalized
//! them and never a literal; it answers 401 without credentials, and 404 on a surface that
//! other hosts reach without basic authentication.

use base64::Engine;
use serde_json::Value;
use tokio_postgres::Client;

use crate::harness::{PATIENCE, TestDb, connect, eventually, exec};
use crate::service::{Running, start};
use crate::signals::shipped;

const USER: &str = "operator";
const PASSWORD: &str = "Debug-Pw-93a1";

/// A session of the test with its own `application_name`.
async fn session(db: &TestDb, app: &str) -> Client {
    let sep = if db.url.contains('?') { '&' } else { '?' };
    connect(&format!("{}{sep}application_name={app}", db.url)).await
}

/// pgpulse sampling the lock forest every second, behind basic auth when `users` is set, on
/// `listen` (port 0).
async fn serve(db: &TestDb, dir: &std::path::Path, users: bool, listen: &str) -> Running {
    let listen = listen.parse().unwrap();
    // With the query that signals lock waits: the forest idles while none waits.
    let catalog = shipped(
        &[
            "database_load",
            "lock_roots",
            "lock_root_load",
            "lock_forest",
        ],
        "1s",
    );
    let file = dir.join("web-config.yml");
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(&file, format!("basic_auth_users:\n  {USER}: {hash}\n")).unwrap();
    start(&db.url, &catalog, move |c| {
        c.web.config_file = users.then_some(file);
        c.listen = listen;
    })
    .await
}

/// GET /debug/locks with the operator's credentials.
async fn forest(svc: &Running) -> (u16, String) {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let (status, _, body) = svc
        .get_with(
            "/debug/locks",
            &[("authorization", &format!("Basic {token}"))],
        )
        .await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits until `n` sessions of the database wait for a lock (so the next one queues behind).
async fn waiting(admin: &Client, n: i64) {
    eventually(PATIENCE, || async {
        let got = crate::harness::scalar(
            admin,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND datname = current_database()",
        )
        .await;
        (got == n).then_some(())
    })
    .await
    .expect("the sessions queue");
}

/// The session of `sessions` with `application_name` `app`.
fn by_app<'a>(sessions: &'a [Value], app: &str) -> &'a Value {
    sessions
        .iter()
        .find(|s| s["application_name"] == app)
        .unwrap_or_else(|| panic!("no session {app} in {sessions:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_is_shown_with_normalized_statements_and_never_a_literal() {
    // A server of its own: on the shared one, other tests' statements fill pg_stat_statements
    // past its max, and an entry evicted between a statement's parsing and its end keeps the
    // literal text (the endpoint then shows no statement: a unit test covers that case).
    let cluster = crate::harness::own_cluster(Default::default());
    let db = TestDb::on(&cluster.url("postgres")).await;
    db.migrate().await;
    let admin = db.client().await;
    exec(
        &admin,
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; \
         CREATE TABLE book (symbol text, qty int); INSERT INTO book VALUES ('SOL-USD', 1); \
         COMMENT ON TABLE book IS 'XRP-USD'",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let svc = serve(&db, dir.path(), true, "127.0.0.1:0").await;

    let report = session(&db, "report").await;
    exec(
        &report,
        "BEGIN; SELECT count(*) FROM book WHERE symbol = 'BTC-USD'",
    )
    .await;
    let migration = session(&db, "migration").await;
    let ddl = tokio::spawn(async move {
        let _ = migration
            .batch_execute("ALTER TABLE book ADD COLUMN note text")
            .await;
    });
    waiting(&admin, 1).await;
    let engine = session(&db, "engine").await;
    let insert = tokio::spawn(async move {
        let _ = engine
            .batch_execute("INSERT INTO book VALUES ('ETH-USD', 7)")
            .await;
    });
    waiting(&admin, 2).await;
    // A utility statement keeps its literal in pg_stat_statements (it ran once above): it is
    // shown by its first keyword only.
    let commenter = session(&db, "commenter").await;
    let comment = tokio::spawn(async move {
        let _ = commenter
            .batch_execute("COMMENT ON TABLE book IS 'XRP-USD'")
            .await;
    });
    let doc: Value = eventually(PATIENCE, || async {
        let (status, body) = forest(&svc).await;
        if status == 503 {
            return None; // no sample yet
        }
        assert_eq!(status, 200, "{body}");
        for literal in ["BTC-USD", "ETH-USD", "XRP-USD"] {
            assert!(!body.contains(literal), "a literal: {body}");
        }
        let doc: Value = serde_json::from_str(&body).unwrap();
        (doc["sessions"].as_array().map_or(0, Vec::len) == 4).then_some(doc)
    })
    .await
    .expect("the four sessions of the chain");
    let sessions = doc["sessions"].as_array().unwrap();
    let (root, ddl_s, ins) = (
        by_app(sessions, "report"),
        by_app(sessions, "migration"),
        by_app(sessions, "engine"),
    );
    assert_eq!(root["root"], true);
    assert_eq!(root["state"], "idle in transaction");
    assert_eq!(
        root["statement"],
        "SELECT count(*) FROM book WHERE symbol = $1"
    );
    assert_eq!(root["blocked_by"], serde_json::json!([]));
    assert_eq!(ddl_s["blocked_by"], serde_json::json!([root["pid"]]));
    assert_eq!(ddl_s["waits_for_mode"], "AccessExclusiveLock");
    assert_eq!(ddl_s["waits_for_relation"], "public.book");
    assert_eq!(ddl_s["command"], "ALTER");
    assert!(ddl_s["lock_wait_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(ins["blocked_by"], serde_json::json!([ddl_s["pid"]]));
    assert_eq!(ins["waits_for_mode"], "RowExclusiveLock");
    assert_eq!(ins["command"], "INSERT");
    let com = by_app(sessions, "commenter");
    // The hostile case is real: the waiting statement's entry in pg_stat_statements has the
    // literal, and the endpoint still does not show it.
    let with_literal = crate::harness::scalar(
        &admin,
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_statements s ON s.queryid = a.query_id \
         WHERE a.application_name = 'commenter' AND s.query LIKE '%XRP-USD%'",
    )
    .await;
    assert_eq!(with_literal, 1);
    assert_eq!(com["command"], "COMMENT");
    assert_eq!(com["statement"], Value::Null);
    assert_eq!(com["blocked_by"], serde_json::json!([ddl_s["pid"]]));
    assert_eq!(
        doc["roots"],
        serde_json::json!([{"pid": root["pid"], "blocked_sessions": 3}])
    );

    // Without credentials: 401; the landing page links to it.
    assert_eq!(svc.get("/debug/locks").await.0, 401);
    exec(&report, "ROLLBACK").await;
    ddl.await.unwrap();
    insert.await.unwrap();
    comment.await.unwrap();
    let doc: Value = eventually(PATIENCE, || async {
        let doc: Value = serde_json::from_str(&forest(&svc).await.1).unwrap();
        (doc["sessions"] == serde_json::json!([])).then_some(doc)
    })
    .await
    .expect("the forest empties");
    assert_eq!(doc["roots"], serde_json::json!([]));
    svc.stop().await;

    // On a surface other hosts reach without credentials the endpoint does not exist; on a
    // loopback address it answers.
    let open = serve(&db, dir.path(), false, "0.0.0.0:0").await;
    let (status, body) = open.get("/debug/locks").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("basic_auth_users"), "{body}");
    assert!(open.get("/").await.1.contains("href=\"/debug/locks\""));
    open.stop().await;
    let local = serve(&db, dir.path(), false, "127.0.0.1:0").await;
    let (status, body) = local.get("/debug/locks").await;
    assert!(status == 200 || status == 503, "{status} {body}");
    local.stop().await;
}
