//! Secrets from files, as Kubernetes mounts them: `password_file`, `url_file`,
//! `PGPULSE_DATABASE_URL_FILE`, libpq's `PGPASSFILE`. A cluster of its own demands
//! scram-sha-256 over TCP, so a connection succeeds only when the secret really was read; none
//! of them ever appears in logs (at debug level), errors, the landing page or /metrics.

use crate::harness::exec;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use pgpulse::demo::{ClusterOptions, TempCluster};

use crate::harness::{connect, eventually, own_cluster, pgpulse, text};
use crate::service::sample;

const SECRET: &str = "S3cret-From-File-7a";

use crate::service::CONSTANT_CATALOG as CATALOG;

/// A cluster where TCP logins need the password; role `scraper` has [`SECRET`].
async fn scram_cluster() -> TempCluster {
    let cluster = own_cluster(ClusterOptions {
        hba: Some("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n".into()),
        ..ClusterOptions::default()
    });
    let admin = format!(
        "host={} port={} user=postgres dbname=postgres",
        cluster.dir().display(),
        cluster.port()
    );
    let c = connect(&admin).await;
    exec(
        &c,
        &format!(
            "SET password_encryption = 'scram-sha-256'; \
         CREATE ROLE scraper LOGIN PASSWORD '{SECRET}'; GRANT pg_monitor TO scraper"
        ),
    )
    .await;
    cluster
}

/// A `pgpulse serve` process, killed on drop (also when the test fails).
struct Served {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
    let q = dir.join("queries.yaml");
    std::fs::write(&q, CATALOG).unwrap();
    let log = dir.join(format!("log-{}", rand::random::<u32>()));
    let port = pgpulse::demo::cluster::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgpulse"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PGPULSE_") || k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(["--log-format", "json"])
        .args(args)
        .args([
            "serve",
            "--queries",
            q.to_str().unwrap(),
            "--listen-address",
            &listen,
        ])
        .env("HOME", dir)
        .env("PGPULSE_LOG", "debug")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Served {
        child,
        base: format!("http://{listen}"),
        log,
    }
}

async fn get(url: &str) -> Option<String> {
    reqwest::get(url).await.ok()?.text().await.ok()
}

/// Waits for pg_up to reach `up`; returns /metrics, the landing page and the log.
async fn observe(s: &Served, up: f64) -> (String, String, String) {
    let metrics = eventually(crate::harness::PATIENCE, || async {
        let b = get(&format!("{}/metrics", s.base)).await?;
        let ok = if up == 1.0 {
            sample(&b, "pg_test_answer") == Some(42.0)
        } else {
            sample(&b, "pgpulse_connection_failures_total").unwrap_or(0.0) >= 1.0
        };
        ok.then_some(b)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "pg_up {up}: {}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        )
    });
    assert_eq!(sample(&metrics, "pg_up"), Some(up));
    let landing = get(&format!("{}/", s.base)).await.unwrap_or_default();
    let log = std::fs::read_to_string(&s.log).unwrap();
    for (what, t) in [
        ("metrics", &metrics),
        ("landing page", &landing),
        ("log", &log),
    ] {
        assert!(!t.contains(SECRET), "the secret in the {what}:\n{t}");
    }
    (metrics, landing, log)
}

fn secret_file(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_urls_from_files_and_pgpass_connect_and_never_leak() {
    let cluster = scram_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bare = format!("postgres://scraper@127.0.0.1:{}/postgres", cluster.port());
    let full = format!(
        "postgres://scraper:{SECRET}@127.0.0.1:{}/postgres",
        cluster.port()
    );

    // password_file through the environment (a trailing newline, as `echo` writes it).
    let pw = secret_file(d, "password", &format!("{SECRET}\n"));
    let s = serve(
        d,
        &[],
        &[
            ("PGPULSE_DATABASE_URL", &bare),
            ("PGPULSE_DATABASE__PASSWORD_FILE", &pw),
        ],
    );
    observe(&s, 1.0).await;
    drop(s);

    // url_file as a config key.
    let url = secret_file(d, "url", &format!("{full}\n"));
    let config = d.join("pgpulse.yaml");
    std::fs::write(&config, format!("database:\n  url_file: {url}\n")).unwrap();
    let s = serve(d, &["--config", config.to_str().unwrap()], &[]);
    let (_, landing, _) = observe(&s, 1.0).await;
    assert!(landing.contains("scraper@127.0.0.1"), "{landing}");
    drop(s);

    // PGPULSE_DATABASE_URL_FILE, for the commands too.
    let out = pgpulse(
        &["migrate", "--status"],
        &[
            ("PGPULSE_DATABASE_URL_FILE", &url),
            ("HOME", d.to_str().unwrap()),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!format!("{stdout}{stderr}").contains(SECRET));

    // libpq's password file.
    let pgpass = secret_file(
        d,
        "pgpass",
        &format!("127.0.0.1:{}:*:scraper:{SECRET}\n", cluster.port()),
    );
    let s = serve(
        d,
        &[],
        &[("PGPULSE_DATABASE_URL", &bare), ("PGPASSFILE", &pgpass)],
    );
    observe(&s, 1.0).await;
    drop(s);

    // A wrong password: pg_up 0, the reason in the log, no secret anywhere.
    let wrong = secret_file(d, "wrong", &format!("not-{SECRET}"));
    let s = serve(
        d,
        &[],
        &[
            ("PGPULSE_DATABASE_URL", &bare),
            ("PGPULSE_DATABASE__PASSWORD_FILE", &wrong),
        ],
    );
    let (_, _, log) = observe(&s, 0.0).await;
    assert!(log.contains("password authentication failed"), "{log}");
    drop(s);
    let out = pgpulse(
        &[
            "migrate",
            "--database-url",
            &full.replace(SECRET, &format!("x{SECRET}")),
        ],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(!format!("{stdout}{stderr}").contains(SECRET), "{stderr}");

    // A missing file is a configuration error naming the file, not its content.
    let out = pgpulse(
        &["check-config"],
        &[("PGPULSE_DATABASE__PASSWORD_FILE", "/nonexistent/pw")],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("database.password_file") && stderr.contains("/nonexistent/pw"),
        "{stderr}"
    );
}
