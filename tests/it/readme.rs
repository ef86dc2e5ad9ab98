//! The README itself: the commands of its "Try it", "Test" and "Use it on a real database"
//! sections are read from README.md and run, on a fresh database that is not the reference
//! schema (a shop with its own `orders` table), so the README cannot drift from what works.
//! Long-running commands (`demo`, `serve`, `maintain`) run until they show they work, then
//! get SIGTERM or Ctrl-C and must exit 0. Listen addresses move to free loopback ports through
//! the environment; the commands themselves are the README's.

use std::process::{Child, Command, Stdio};

use crate::harness::{PATIENCE, TestDb, eventually, scalar, text};

const README: &str = include_str!("../../README.md");

/// The shell lines of the code blocks of the section headed `## {title}` (comments removed).
fn commands(title: &str) -> Vec<String> {
    let start = README
        .find(&format!("\n## {title}"))
        .unwrap_or_else(|| panic!("README has no section {title:?}"));
    let rest = &README[start + 1..];
    let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    let mut out = Vec::new();
    let mut inside = false;
    for line in section.lines() {
        if line.starts_with("```") {
            inside = !inside;
            continue;
        }
        let line = line.split(" #").next().unwrap_or_default().trim();
        if inside && !line.is_empty() {
            out.push(line.to_owned());
        }
    }
    out
}

/// The binary with `args`, run outside the repository (a new user's installed binary has no
/// queries.yaml or plans.yaml beside it).
fn pgpulse(args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgpulse"));
    cmd.current_dir(std::env::temp_dir());
    for (k, _) in std::env::vars() {
        if k.starts_with("PGPULSE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Sends `signal` to `child` and expects exit 0.
fn stop(mut child: Child, signal: &str) {
    let pid = child.id().to_string();
    Command::new("kill").args([signal, &pid]).status().unwrap();
    let status = crate::harness::wait_exit(&mut child, PATIENCE)
        .unwrap_or_else(|| panic!("no exit after {signal}"));
    assert!(status.success(), "exit after {signal}: {status}");
}

async fn http_status(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_try_it_command_runs_the_demo_and_the_local_prometheus_files_are_valid() {
    let lines = commands("Try it");
    assert_eq!(lines.first().map(String::as_str), Some("scripts/demo"));
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo")).unwrap();
    let exec = script.lines().find(|l| l.starts_with("exec ")).unwrap();
    let args: Vec<&str> = exec
        .split(" -- ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(args, ["demo", "\"$@\""], "scripts/demo runs `pgpulse demo`");
    for line in &lines[1..] {
        let file = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("--config.file="))
            .unwrap_or_else(|| panic!("{line}: no --config.file"));
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let check = if line.starts_with("prometheus ") {
            Command::new("promtool")
                .args(["check", "config", &path])
                .output()
        } else {
            Command::new("amtool")
                .args(["check-config", &path])
                .output()
        };
        let out = check.unwrap();
        assert!(out.status.success(), "{line}: {:?}", text(&out));
    }
    let port = pgpulse::demo::cluster::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let demo = pgpulse(&["demo", "--listen-address", &listen], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{listen}/ready");
    let ready = eventually(PATIENCE, || async {
        (http_status(&url).await == Some(200)).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the demo became ready");
    stop(demo, "-INT");
}

#[test]
fn the_test_command_is_the_setup_then_cargo_test() {
    assert_eq!(commands("Test"), ["scripts/test"]);
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test")).unwrap();
    let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(lines.contains(&"scripts/setup test"), "{script}");
    assert_eq!(lines.last(), Some(&"exec cargo test \"$@\""));
    // What CI has just run: installing again finds everything there.
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup"))
        .arg("test")
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
}

/// A shop's database: its own `orders` table, no trade-engine schema.
async fn shop() -> TestDb {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer text, total numeric); \
             INSERT INTO public.orders (customer, total) SELECT 'c' || g, g FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_database_recipe_works_as_written_on_a_shop_database() {
    let install = README
        .lines()
        .find(|l| l.contains("cargo install"))
        .unwrap();
    assert!(
        install.contains("cargo install --locked --path ."),
        "{install}"
    );
    let db = shop().await;
    let mut env = Vec::new();
    for line in commands("Use it on a real database") {
        if let Some(assign) = line.strip_prefix("export ") {
            let (key, _) = assign.split_once('=').unwrap();
            assert_eq!(key, "PGPULSE_DATABASE_URL");
            env.push((key.to_owned(), db.url.clone()));
            continue;
        }
        let args: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(args.first(), Some(&"pgpulse"), "{line}");
        run_step(&args[1..], &env, &db).await;
    }
    let c = db.client().await;
    assert_eq!(scalar(&c, "SELECT count(*) FROM public.orders").await, 100);
}

/// Runs one `pgpulse` line of the recipe; long-running commands until they work.
async fn run_step(args: &[&str], env: &[(String, String)], db: &TestDb) {
    match args {
        ["serve"] => serve(env).await,
        ["maintain"] => maintain(env, db).await,
        _ => {
            let out = pgpulse(args, env).output().unwrap();
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "pgpulse {args:?}:\n{stdout}{stderr}");
        }
    }
}

async fn serve(env: &[(String, String)]) {
    let port = pgpulse::demo::cluster::free_port().unwrap();
    let mut env = env.to_vec();
    env.push((
        "PGPULSE_WEB__LISTEN_ADDRESS".into(),
        format!("127.0.0.1:{port}"),
    ));
    let child = pgpulse(&["serve"], &env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/ready");
    let ready = eventually(PATIENCE, || async {
        (http_status(&url).await == Some(200)).then_some(())
    })
    .await;
    assert!(ready.is_some(), "serve became ready on the shop database");
    stop(child, "-TERM");
}

async fn maintain(env: &[(String, String)], db: &TestDb) {
    let child = pgpulse(&["maintain"], env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The runner is the leader once it holds its advisory lock on the database.
    let c = db.client().await;
    let sql = format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = '{}'",
        db.name
    );
    let leader = eventually(PATIENCE, || async {
        (scalar(&c, &sql).await > 0).then_some(())
    })
    .await;
    assert!(leader.is_some(), "maintain took the leader lock");
    stop(child, "-TERM");
}
