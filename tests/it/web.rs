//! `/metrics` protection by the web configuration file (exporter-toolkit format): basic auth,
//! HTTPS with the test CA, client certificates, headers, the `/health` and landing page
//! switches, the reload of certificates, and `promtool check web-config` on our example.
//! HTTPS requests are made with curl, the client an operator would use.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{TestDb, pgpulse, text};
use crate::service::{Running, sample, start};
use crate::tls::Pki;

use crate::service::CONSTANT_CATALOG as CATALOG;

const USER: &str = "prometheus";
const PASSWORD: &str = "Scrape-Pw-41c7";

/// The example file shipped in deploy/ and the password its hash was made from.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/web-config.example.yml");
const EXAMPLE_PASSWORD: &str = "change-me-scrape-password";

/// Writes `yaml` as web-config.yml in `dir` (with the PKI's files next to it).
pub(crate) fn web_config(dir: &Path, pki: &Pki, yaml: &str) -> PathBuf {
    for (name, from) in [
        ("server.crt", &pki.server_cert),
        ("server.key", &pki.server_key),
        ("ca.crt", &pki.ca),
    ] {
        std::fs::copy(from, dir.join(name)).unwrap();
    }
    let file = dir.join("web-config.yml");
    std::fs::write(&file, yaml).unwrap();
    file
}

fn users_yaml() -> String {
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    format!("basic_auth_users:\n  {USER}: {hash}\n")
}

/// The exporter with the web configuration `file`, and its database (dropped with it).
async fn serve(file: &Path, open_health: bool, landing_page: bool) -> (Running, TestDb) {
    let db = TestDb::new().await;
    let file = file.to_owned();
    let svc = start(&db.url, CATALOG, move |c| {
        c.web.config_file = Some(file);
        c.web.open_health = open_health;
        c.web.landing_page = landing_page;
    })
    .await;
    (svc, db)
}

/// curl `url` with `args`; returns (exit code, HTTP status, body).
fn curl(url: &str, args: &[&str]) -> (i32, u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn https(svc: &Running, path: &str) -> (String, String) {
    let port = svc.addr.port();
    (
        format!("https://localhost:{port}{path}"),
        format!("localhost:{port}:127.0.0.1"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_answers_401_without_or_with_wrong_credentials_and_200_with_the_right_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let yaml = format!(
        "{}http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n",
        users_yaml()
    );
    let file = web_config(dir.path(), &pki, &yaml);
    let (svc, _db) = serve(&file, false, true).await;
    let url = format!("http://{}/metrics", svc.addr);
    let (_, code, body) = curl(&url, &["-D", "-"]);
    assert_eq!(code, 401, "{body}");
    assert!(
        body.to_lowercase().contains("www-authenticate: basic"),
        "{body}"
    );
    assert!(
        body.to_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{body}"
    );
    let wrong = format!("{USER}:not-{PASSWORD}");
    assert_eq!(curl(&url, &["-u", &wrong]).1, 401);
    let stranger = format!("stranger:{PASSWORD}");
    assert_eq!(curl(&url, &["-u", &stranger]).1, 401);
    let right = format!("{USER}:{PASSWORD}");
    let (_, code, body) = curl(&url, &["-u", &right]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("# TYPE pg_up gauge"), "{body}");
    // The cached result answers the same on the next scrape.
    assert_eq!(curl(&url, &["-u", &right]).1, 200);
    assert_eq!(curl(&url, &["-u", &wrong]).1, 401);
    // /health is protected unless the switch says otherwise.
    assert_eq!(curl(&format!("http://{}/health", svc.addr), &[]).1, 401);
    svc.stop().await;

    let (svc, _db) = serve(&file, true, false).await;
    let base = format!("http://{}", svc.addr);
    assert_eq!(curl(&format!("{base}/health"), &[]).1, 200);
    assert_ne!(
        curl(&format!("{base}/ready"), &[]).1,
        401,
        "readiness is open too (200 or 503, never 401)"
    );
    assert_eq!(curl(&format!("{base}/metrics"), &[]).1, 401);
    assert_eq!(
        curl(&format!("{base}/"), &["-u", &right]).1,
        404,
        "landing page off"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_needs_the_ca_and_a_client_certificate_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let yaml = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS12\n{}",
        users_yaml()
    );
    let file = web_config(dir.path(), &pki, &yaml);
    let (svc, _db) = serve(&file, false, true).await;
    let (url, resolve) = https(&svc, "/metrics");
    let ca = pki.ca.to_str().unwrap();
    let cert = pki.client_cert.to_str().unwrap();
    let key = pki.client_key.to_str().unwrap();
    let right = format!("{USER}:{PASSWORD}");
    let (trust, client) = (
        ["--resolve", &resolve, "--cacert", ca],
        ["--cert", cert, "--key", key],
    );
    let (exit, code, body) = curl(&url, &[&trust[..], &client, &["-u", &right]].concat());
    assert_eq!((exit, code), (0, 200), "{body}");
    assert!(body.contains("# TYPE pg_up gauge"), "{body}");
    // Without the client certificate the handshake (or the first read) fails.
    let (exit, code, body) = curl(&url, &[&trust[..], &["-u", &right]].concat());
    assert!(
        exit != 0 && code == 0,
        "refused without a client certificate: {body}"
    );
    // Without our CA, curl does not trust the server (exit 60).
    let (exit, _, body) = curl(
        &url,
        &[&["--resolve", &resolve][..], &client, &["-u", &right]].concat(),
    );
    assert_eq!(exit, 60, "{body}");
    // Plain HTTP on the TLS port gets no metrics.
    let (_, code, _) = curl(&format!("http://{}/metrics", svc.addr), &["-u", &right]);
    assert_ne!(code, 200);
    // Basic auth still applies over mutual TLS.
    let (_, code, _) = curl(&url, &[&trust[..], &client].concat());
    assert_eq!(code, 401);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_reloaded_without_dropping_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::new();
    let yaml = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let file = web_config(dir.path(), &first, yaml);
    let (svc, _db) = serve(&file, false, true).await;
    let (url, resolve) = https(&svc, "/health");
    let fetch = |ca: &Path| {
        curl(
            &url,
            &["--resolve", &resolve, "--cacert", ca.to_str().unwrap()],
        )
    };
    assert_eq!(fetch(&first.ca).1, 200);
    let second = Pki::new();
    web_config(dir.path(), &second, yaml);
    assert_eq!(fetch(&first.ca).1, 200, "nothing changes before the reload");
    svc.reloader.reload().expect("reload");
    let (exit, code, body) = fetch(&first.ca);
    assert!(
        exit != 0 && code == 0,
        "the old certificate is gone: {body}"
    );
    assert_eq!(fetch(&second.ca).1, 200, "same listener, new certificate");
    // A broken file keeps the running certificate.
    std::fs::write(dir.path().join("server.key"), "garbage").unwrap();
    svc.reloader
        .reload()
        .expect("the catalog reload itself succeeds");
    assert_eq!(fetch(&second.ca).1, 200);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_and_pgpulse_accept_the_example_web_config_and_its_password_works() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let file = web_config(dir.path(), &pki, &std::fs::read_to_string(EXAMPLE).unwrap());
    let out = Command::new("promtool")
        .args(["check", "web-config", file.to_str().unwrap()])
        .output()
        .expect("promtool");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("SUCCESS"),
        "{stdout}{stderr}"
    );
    let out = pgpulse(
        &["check-config", "--web.config.file", file.to_str().unwrap()],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let (svc, _db) = serve(&file, false, true).await;
    let (url, resolve) = https(&svc, "/metrics");
    let ca = pki.ca.to_str().unwrap();
    let right = format!("prometheus:{EXAMPLE_PASSWORD}");
    let (_, code, body) = curl(
        &url,
        &[
            "--resolve",
            &resolve,
            "--cacert",
            ca,
            "-u",
            &right,
            "-D",
            "-",
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        body.to_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{body}"
    );
    let b = body.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(sample(b, "pg_up").is_some(), "{body}");
    svc.stop().await;
}

#[test]
fn a_bad_web_config_is_a_configuration_error_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let check = |yaml: &str| {
        let file = web_config(dir.path(), &pki, yaml);
        let out = pgpulse(
            &["check-config", "--web.config.file", file.to_str().unwrap()],
            &[],
        );
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
        stderr
    };
    let e = check(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  colour: blue\n",
    );
    assert!(
        e.contains("web-config.yml:4:3") && e.contains("colour"),
        "{e}"
    );
    let e = check(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n",
    );
    assert!(
        e.contains("tls_server_config.client_ca_file") && e.contains("missing"),
        "{e}"
    );
    let e = check("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n");
    assert!(e.contains("missing.crt") && e.contains("cert_file"), "{e}");
    let e = check("basic_auth_users:\n  prometheus: plain-text-password\n");
    assert!(
        e.contains("basic_auth_users.prometheus") && !e.contains("plain-text-password"),
        "{e}"
    );
    let e = check(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS10\n",
    );
    assert!(e.contains("min_version") && e.contains("TLS10"), "{e}");
}

/// The files of the TLS demo stack (deploy/compose.tls.yml) work together without Docker:
/// make-certs.sh's certificates serve PostgreSQL (verify-full to `localhost`) and pgpulse's
/// HTTPS with deploy/tls/web-config.yml, and promtool accepts both the web config and the
/// Prometheus configuration that scrapes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_demo_stack_files_work_together() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = Command::new("sh")
        .arg(repo.join("deploy/tls/make-certs.sh"))
        .arg(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    std::fs::copy(
        repo.join("deploy/tls/web-config.yml"),
        d.join("web-config.yml"),
    )
    .unwrap();
    let check = |args: &[&str]| {
        let out = Command::new("promtool").args(args).output().unwrap();
        let (o, e) = text(&out);
        assert!(out.status.success(), "promtool {args:?}: {o}{e}");
    };
    check(&[
        "check",
        "web-config",
        d.join("web-config.yml").to_str().unwrap(),
    ]);
    let prom = std::fs::read_to_string(repo.join("deploy/prometheus/prometheus.tls.yml"))
        .unwrap()
        .replace(
            "/etc/pgpulse/tls/ca.crt",
            d.join("ca.crt").to_str().unwrap(),
        )
        .replace(
            "/etc/prometheus/scrape-password",
            repo.join("deploy/prometheus/scrape-password")
                .to_str()
                .unwrap(),
        );
    std::fs::write(d.join("prometheus.yml"), prom).unwrap();
    check(&[
        "check",
        "config",
        "--syntax-only",
        d.join("prometheus.yml").to_str().unwrap(),
    ]);

    // Every file the override mounts exists (certificates: once make-certs.sh ran).
    let compose: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo.join("deploy/compose.tls.yml")).unwrap(),
    )
    .unwrap();
    for (name, svc) in compose["services"].as_object().unwrap() {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            let rel = src.strip_prefix("./").unwrap_or(src);
            let exists = match rel.strip_prefix("deploy/tls/") {
                Some(generated) if generated.ends_with(".crt") => d.join(generated).exists(),
                _ => repo.join(rel).exists(),
            };
            assert!(exists, "{name} mounts {src}, which does not exist");
        }
    }

    // PostgreSQL with the demo server certificate, reached with verify-full as pgpulse would.
    let read = |f: &str| std::fs::read(d.join(f)).unwrap();
    let cluster = crate::harness::own_cluster(pgpulse::demo::ClusterOptions {
        extra_settings: vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), "server.crt".into()),
            ("ssl_key_file".into(), "server.key".into()),
        ],
        hba: Some("local all all trust\nhostssl all all 127.0.0.1/32 trust\n".into()),
        data_files: vec![
            ("server.crt".into(), read("postgres.crt")),
            ("server.key".into(), read("postgres.key")),
        ],
        ..Default::default()
    });
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port(),
        d.join("ca.crt").display()
    );
    let svc = start(&url, CATALOG, |c| {
        c.web.config_file = Some(d.join("web-config.yml"));
    })
    .await;
    let (https_url, resolve) = https(&svc, "/metrics");
    let ca = d.join("ca.crt");
    let right = format!("prometheus:{EXAMPLE_PASSWORD}");
    let body = crate::harness::eventually(std::time::Duration::from_secs(30), || async {
        let (_, code, body) = curl(
            &https_url,
            &[
                "--resolve",
                &resolve,
                "--cacert",
                ca.to_str().unwrap(),
                "-u",
                &right,
            ],
        );
        (code == 200 && sample(&body, "pg_test_answer") == Some(42.0)).then_some(body)
    })
    .await
    .expect("HTTPS metrics sampled over verify-full");
    assert_eq!(sample(&body, "pg_up"), Some(1.0));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificates_of_a_running_binary_on_the_same_listener() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::new();
    let yaml = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let file = web_config(dir.path(), &first, yaml);
    let port = pgpulse::demo::cluster::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgpulse"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PGPULSE_") {
            cmd.env_remove(k);
        }
    }
    let q = dir.path().join("queries.yaml");
    std::fs::write(&q, CATALOG).unwrap();
    let child = cmd
        .args([
            "serve",
            "--listen-address",
            &listen,
            "--queries",
            q.to_str().unwrap(),
        ])
        .args(["--web.config.file", file.to_str().unwrap()])
        .env("PGPULSE_DATABASE_URL", "postgres://u@127.0.0.1:1/x")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Killed(child);
    let url = format!("https://localhost:{port}/health");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let fetch = |ca: &Path| {
        curl(
            &url,
            &["--resolve", &resolve, "--cacert", ca.to_str().unwrap()],
        )
    };
    crate::harness::eventually(std::time::Duration::from_secs(30), || async {
        (fetch(&first.ca).1 == 200).then_some(())
    })
    .await
    .expect("serving HTTPS with the first certificate");
    let second = Pki::new();
    web_config(dir.path(), &second, yaml);
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    crate::harness::eventually(std::time::Duration::from_secs(30), || async {
        (fetch(&second.ca).1 == 200).then_some(())
    })
    .await
    .expect("the second certificate after SIGHUP, on the same port");
    assert_ne!(fetch(&first.ca).1, 200, "the first certificate is gone");
    assert!(
        Command::new("kill")
            .args(["-0", &pid])
            .status()
            .unwrap()
            .success(),
        "still running"
    );
}

/// A TLS client trusting the test CA, for raw connections that stop after the handshake.
fn tls_client(pki: &Pki) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&pki.ca).unwrap();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_silent_before_or_after_the_handshake_are_closed_by_the_request_timeout() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let yaml = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let file = web_config(dir.path(), &pki, yaml);
    let db = TestDb::new().await;
    let svc = start(&db.url, CATALOG, move |c| {
        c.web.config_file = Some(file);
        c.request_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let connector = tls_client(&pki);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut after = Vec::new();
    for _ in 0..10 {
        let tcp = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
        after.push(connector.connect(name.clone(), tcp).await.unwrap());
    }
    let mut before = Vec::new();
    for _ in 0..10 {
        before.push(tokio::net::TcpStream::connect(svc.addr).await.unwrap());
    }
    let patience = crate::harness::PATIENCE;
    for s in &mut after {
        let mut sink = Vec::new();
        let r = tokio::time::timeout(patience, s.read_to_end(&mut sink)).await;
        assert!(r.is_ok(), "a silent TLS session was never closed");
    }
    for s in &mut before {
        let mut sink = Vec::new();
        let r = tokio::time::timeout(patience, s.read_to_end(&mut sink)).await;
        assert!(
            r.is_ok(),
            "a connection silent before its handshake was never closed"
        );
    }
    let (_, resolve) = https(&svc, "/metrics");
    let (url, _) = https(&svc, "/metrics");
    let ca = pki.ca.to_str().unwrap().to_owned();
    let (code, status, _) = curl(&url, &["--cacert", &ca, "--resolve", &resolve]);
    assert_eq!((code, status), (0, 200), "a scrape over TLS still answers");
    svc.stop().await;
}
