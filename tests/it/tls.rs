//! TLS to PostgreSQL against a real cluster with `ssl=on` and a `pg_hba.conf` that accepts
//! TCP connections only over TLS (`hostssl`), one database also demanding a client
//! certificate (`clientcert=verify-full`). Certificates are made by rcgen per test binary.
//!
//! The test connections of the harness use the Unix socket (trust, no TLS), so the server's
//! own view (`pg_stat_ssl`) can be compared with what pgpulse claims.

use crate::harness::exec;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pgpulse::demo::{ClusterOptions, TempCluster};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use crate::harness::{connect, eventually, own_cluster, pgpulse, text};
use crate::service::{sample, start};

/// A password in every URL: trust authentication ignores it, the tests check it never leaks.
const PASSWORD: &str = "Tls-Pw-9f3e";

/// A CA, a server certificate for `localhost` and a client certificate for `postgres`, as
/// PEM files in a temp dir.
pub(crate) struct Pki {
    /// The directory holding the files (removed on drop).
    _dir: tempfile::TempDir,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate (SAN localhost).
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
    /// The client certificate (CN postgres).
    pub client_cert: PathBuf,
    /// The client key.
    pub client_key: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = p.self_signed(&key).unwrap();
    (cert, Issuer::new(p, key))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Generates the certificates.
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, issuer) = ca("pgpulse test CA");
        let (other_cert, _) = ca("some other CA");
        let (server_cert, server_key) = leaf(
            &issuer,
            "localhost",
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            &issuer,
            "postgres",
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, content: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p
        };
        Self {
            ca: write("ca.crt", &ca_cert.pem()),
            other_ca: write("other-ca.crt", &other_cert.pem()),
            server_cert: write("server.crt", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.crt", &client_cert),
            client_key: write("client.key", &client_key),
            _dir: dir,
        }
    }
}

/// The TLS cluster of this test binary and its certificates.
struct TlsCluster {
    cluster: TempCluster,
    pki: Pki,
}

static CLUSTER: OnceLock<TlsCluster> = OnceLock::new();

fn tls_cluster() -> &'static TlsCluster {
    CLUSTER.get_or_init(|| {
        let pki = Pki::new();
        let read = |p: &Path| std::fs::read(p).unwrap();
        let cluster = own_cluster(ClusterOptions {
            extra_settings: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), "server.crt".into()),
                ("ssl_key_file".into(), "server.key".into()),
                ("ssl_ca_file".into(), "root.crt".into()),
            ],
            hba: Some(
                "local all all trust\n\
                 hostssl certdb all 127.0.0.1/32 trust clientcert=verify-full\n\
                 hostssl certdb all ::1/128 trust clientcert=verify-full\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostssl all all ::1/128 trust\n"
                    .into(),
            ),
            data_files: vec![
                ("server.crt".into(), read(&pki.server_cert)),
                ("server.key".into(), read(&pki.server_key)),
                ("root.crt".into(), read(&pki.ca)),
            ],
            ..ClusterOptions::default()
        });
        let admin = admin(&cluster);
        // Called from async tests: a runtime of its own on a plain thread.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let c = connect(&admin).await;
                    exec(&c, "CREATE DATABASE certdb").await;
                });
        })
        .join()
        .expect("create certdb");
        TlsCluster { cluster, pki }
    })
}

/// The Unix-socket admin connection string (no TLS; `local` trust).
fn admin(cluster: &TempCluster) -> String {
    format!(
        "host={} port={} user=postgres dbname=postgres",
        cluster.dir().display(),
        cluster.port()
    )
}

/// A TCP URL with the password, to `host`, with `query` parameters.
fn url(host: &str, db: &str, query: &str) -> String {
    let port = tls_cluster().cluster.port();
    format!("postgres://postgres:{PASSWORD}@{host}:{port}/{db}?connect_timeout=10&{query}")
}

use crate::service::CONSTANT_CATALOG as CATALOG;

/// Runs the binary against `url` (HOME is an empty dir: no ~/.postgresql defaults).
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap().to_owned();
    let mut all: Vec<(&str, &str)> = vec![("HOME", &home_s)];
    all.extend_from_slice(env);
    let out = pgpulse(args, &all);
    let (stdout, stderr) = text(&out);
    let joined = format!("{stdout}{stderr}");
    assert!(!joined.contains(PASSWORD), "password in output: {joined}");
    (out.status.success(), joined)
}

fn check_config(url: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("queries.yaml");
    std::fs::write(&q, CATALOG).unwrap();
    run(
        &[
            "check-config",
            "--queries",
            q.to_str().unwrap(),
            "--database-url",
            url,
        ],
        env,
    )
}

/// `(application_name, ssl)` of every pgpulse session, as the server sees them.
async fn pgpulse_sessions_ssl() -> Vec<(String, bool)> {
    let c = connect(&admin(&tls_cluster().cluster)).await;
    c.query(
        "SELECT a.application_name, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'pgpulse' AND a.pid <> pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_to_localhost_samples_over_tls_and_pg_stat_ssl_shows_it() {
    let pki = &tls_cluster().pki;
    let u = url(
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", pki.ca.display()),
    );
    let svc = start(&u, CATALOG, |_| {}).await;
    let body = svc.wait_for_sample("pg_test_answer", |v| v == 42.0).await;
    assert_eq!(sample(&body, "pg_up"), Some(1.0));
    // The pool holds its connections between runs; wait until the server lists one.
    let sessions = eventually(crate::harness::PATIENCE, || async {
        let s = pgpulse_sessions_ssl().await;
        (!s.is_empty()).then_some(s)
    })
    .await
    .expect("pgpulse holds pooled connections");
    assert!(
        sessions.iter().all(|(_, ssl)| *ssl),
        "every sampling connection is encrypted: {sessions:?}"
    );
    let landing = svc.get("/").await.1;
    assert!(landing.contains("sslmode=verify-full"), "{landing}");
    assert!(!landing.contains(PASSWORD) && !body.contains(PASSWORD));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_mismatch_is_refused_with_a_clear_error_and_pg_up_0() {
    let pki = &tls_cluster().pki;
    let u = url(
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", pki.ca.display()),
    );
    let svc = start(&u, CATALOG, |_| {}).await;
    let body = svc
        .wait_for_sample("pgpulse_connection_failures_total", |v| v >= 1.0)
        .await;
    assert_eq!(sample(&body, "pg_up"), Some(0.0));
    assert_eq!(sample(&body, "pg_test_answer"), None);
    svc.stop().await;
    let (ok, out) = run(&["migrate", "--database-url", &u], &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("name mismatch") && out.contains("127.0.0.1") && out.contains("localhost"),
        "{out}"
    );
    // verify-ca checks the chain only: the same address is accepted.
    let u = u.replace("verify-full", "verify-ca");
    let (ok, out) = check_config(&u, &[]);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_ca_is_refused_also_by_require_with_a_root_file_like_libpq() {
    let pki = &tls_cluster().pki;
    for mode in ["verify-full", "verify-ca", "require"] {
        let u = url(
            "localhost",
            "postgres",
            &format!("sslmode={mode}&sslrootcert={}", pki.other_ca.display()),
        );
        let (ok, out) = check_config(&u, &[]);
        assert!(!ok, "{mode}: {out}");
        assert!(out.contains("unknown CA"), "{mode}: {out}");
    }
    let u = url(
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", pki.other_ca.display()),
    );
    let svc = start(&u, CATALOG, |_| {}).await;
    let body = svc
        .wait_for_sample("pgpulse_connection_failures_total", |v| v >= 1.0)
        .await;
    assert_eq!(sample(&body, "pg_up"), Some(0.0));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_without_a_root_encrypts_and_plain_connections_are_refused_by_hostssl() {
    let _ = tls_cluster();
    let (ok, out) = check_config(&url("127.0.0.1", "postgres", "sslmode=require"), &[]);
    assert!(ok, "{out}");
    let (ok, out) = check_config(&url("127.0.0.1", "postgres", "sslmode=disable"), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("no encryption"),
        "hostssl refuses plain: {out}"
    );
    // The libpq environment variables, for a URL without TLS parameters.
    let pki = &tls_cluster().pki;
    let ca = pki.ca.to_str().unwrap();
    let plain = url("localhost", "postgres", "application_name=pgpulse");
    let (ok, out) = check_config(
        &plain,
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca)],
    );
    assert!(ok, "{out}");
    let (ok, out) = check_config(
        &plain.replace("localhost", "127.0.0.1"),
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca)],
    );
    assert!(!ok && out.contains("name mismatch"), "{out}");
    let (ok, out) = check_config(&plain, &[("PGSSLMODE", "verify-full")]);
    assert!(!ok && out.contains("needs a root certificate"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_opens_a_clientcert_database_and_its_absence_does_not() {
    let pki = &tls_cluster().pki;
    let base = format!("sslmode=verify-full&sslrootcert={}", pki.ca.display());
    let (ok, out) = check_config(&url("localhost", "certdb", &base), &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("certificate"), "{out}");
    let with_cert = format!(
        "{base}&sslcert={}&sslkey={}",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let (ok, out) = check_config(&url("localhost", "certdb", &with_cert), &[]);
    assert!(ok, "{out}");
    // In-process, with the settings as configuration keys instead of URL parameters.
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("queries.yaml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let mut s = pgpulse::config::Settings::default();
    s.database.url = Some(url("localhost", "certdb", "application_name=pgpulse").into());
    s.database.sslmode = Some("verify-full".into());
    s.database.sslrootcert = Some(pki.ca.display().to_string());
    s.database.sslcert = Some(pki.client_cert.clone());
    s.database.sslkey = Some(pki.client_key.clone());
    s.web.listen_address = "127.0.0.1:0".into();
    s.queries_file = Some(catalog);
    let cfg = s.validate().expect("valid");
    assert_eq!(
        cfg.target.tls().mode(),
        pgpulse::db::tls::SslMode::VerifyFull
    );
    let svc = start(&url("localhost", "certdb", ""), CATALOG, |c| *c = cfg).await;
    let body = svc.wait_for_sample("pg_test_answer", |v| v == 42.0).await;
    assert_eq!(sample(&body, "pg_up"), Some(1.0));
    svc.stop().await;
}

#[test]
fn tls_settings_that_cannot_work_are_configuration_errors_naming_the_file() {
    let (ok, out) = run(
        &["migrate"],
        &[(
            "PGPULSE_DATABASE_URL",
            "postgres://u:Tls-Pw-9f3e@localhost:1/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )],
    );
    assert!(!ok);
    assert!(out.contains("/nonexistent/ca.pem"), "{out}");
    let (ok, out) = run(
        &["check-config"],
        &[("PGPULSE_DATABASE__SSLMODE", "verify-everything")],
    );
    assert!(!ok);
    assert!(
        out.contains("database.sslmode") && out.contains("verify-everything"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let (ok, out) = run(
        &["check-config"],
        &[
            ("PGPULSE_DATABASE__SSLMODE", "verify-ca"),
            ("PGPULSE_DATABASE__SSLROOTCERT", bad.to_str().unwrap()),
        ],
    );
    assert!(!ok);
    assert!(
        out.contains(bad.to_str().unwrap()) && out.contains("no certificate"),
        "{out}"
    );
}

#[test]
fn an_expired_server_certificate_is_refused_and_the_error_says_expired() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_cert, issuer) = ca("expiring CA");
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = p.signed_by(&key, &issuer).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let cluster = own_cluster(ClusterOptions {
        extra_settings: vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), "server.crt".into()),
            ("ssl_key_file".into(), "server.key".into()),
        ],
        hba: Some("local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n".into()),
        data_files: vec![
            ("server.crt".into(), cert.pem().into_bytes()),
            ("server.key".into(), key.serialize_pem().into_bytes()),
        ],
        ..ClusterOptions::default()
    });
    let u = format!(
        "postgres://postgres:{PASSWORD}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port(),
        ca_file.display()
    );
    let (ok, out) = check_config(&u, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("server certificate expired"), "{out}");
    // require without a root does not look at the certificate at all, as libpq.
    let u = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=require",
        cluster.port()
    );
    let (ok, out) = check_config(&u, &[]);
    assert!(ok, "{out}");
}
