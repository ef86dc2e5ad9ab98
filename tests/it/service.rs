//! Running the exporter in-process for tests: `App::build` on port 0 with a catalog written
//! to a temp file, stopped when the handle is dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pgpulse::app::{App, Reloader};
use pgpulse::catalog::{Catalog, Defaults};
use pgpulse::config::{Config, Settings};

/// A catalog of one constant query (`pg_test_answer 42`, every second): for tests about
/// connections, TLS and the web layer, where what is sampled does not matter.
pub(crate) const CONSTANT_CATALOG: &str = r#"
queries:
  - name: constant
    help: a constant
    interval: 1s
    timeout: 900ms
    sql: SELECT 42 AS answer
    metrics:
      - {column: answer, name: pg_test_answer, type: gauge, help: The answer.}
"#;

/// A running exporter.
pub(crate) struct Running {
    /// Its address.
    pub addr: SocketAddr,
    /// Reload handle (what SIGHUP calls).
    pub reloader: Reloader,
    /// The catalog file (rewrite it, then reload).
    pub catalog_path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// Config for `url` listening on 127.0.0.1:0.
pub(crate) fn config(url: &str, catalog_path: &std::path::Path) -> Config {
    let mut s = Settings::default();
    s.database.url = Some(url.to_owned().into());
    s.web.listen_address = "127.0.0.1:0".into();
    s.queries_file = Some(catalog_path.to_owned());
    s.validate().expect("valid test config")
}

/// Starts the exporter on `url` with `catalog` (YAML text); `tweak` adjusts the config.
pub(crate) async fn start(url: &str, catalog: &str, tweak: impl FnOnce(&mut Config)) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog_path = dir.path().join("queries.yaml");
    std::fs::write(&catalog_path, catalog).unwrap();
    let mut cfg = config(url, &catalog_path);
    tweak(&mut cfg);
    run(cfg, dir, catalog_path).await
}

/// Starts the exporter on the settings `tweak` makes of the defaults (listening on
/// 127.0.0.1:0, sampling `catalog`), e.g. a fleet; `tweak` gets the temp dir for its files.
pub(crate) async fn start_settings(
    catalog: &str,
    tweak: impl FnOnce(&mut Settings, &std::path::Path),
) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog_path = dir.path().join("queries.yaml");
    std::fs::write(&catalog_path, catalog).unwrap();
    let mut s = Settings::default();
    s.web.listen_address = "127.0.0.1:0".into();
    s.queries_file = Some(catalog_path.clone());
    tweak(&mut s, dir.path());
    let cfg = s.validate().unwrap_or_else(|e| panic!("{e}"));
    run(cfg, dir, catalog_path).await
}

/// Builds and runs the exporter on `cfg` until the handle is dropped.
async fn run(cfg: Config, dir: tempfile::TempDir, catalog_path: PathBuf) -> Running {
    let cat = Catalog::load(
        &catalog_path,
        Defaults {
            interval: cfg.default_interval,
            timeout: cfg.default_timeout,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let app = App::build(cfg, cat).await.expect("build app");
    let addr = app.local_addr();
    let reloader = app.reloader();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = app
            .run_until_stopped(async {
                let _ = rx.await;
            })
            .await;
    });
    Running {
        addr,
        reloader,
        catalog_path,
        stop: Some(tx),
        task: Some(task),
        _dir: dir,
    }
}

impl Running {
    /// GET `path` with extra headers; returns status, headers and body bytes.
    pub(crate) async fn get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        // On two loaded cores a request can time out while the process waits for a CPU:
        // that is retried (the answer is what the test is about, not its speed).
        let client = reqwest::Client::new();
        let last = std::sync::Mutex::new(String::new());
        let got = crate::harness::eventually(crate::harness::PATIENCE, || async {
            let mut req = client
                .get(format!("http://{}{path}", self.addr))
                .timeout(Duration::from_secs(30));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let attempt = async {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let h = resp.headers().clone();
                Ok::<_, reqwest::Error>((status, h, resp.bytes().await?.to_vec()))
            };
            match attempt.await {
                Ok(answer) => Some(answer),
                Err(e) => {
                    *last.lock().unwrap() = e.to_string();
                    None
                }
            }
        })
        .await;
        got.unwrap_or_else(|| panic!("GET {path}: {}", last.lock().unwrap()))
    }

    /// GET `path`; returns status and body text.
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let (s, _, b) = self.get_with(path, &[]).await;
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    /// Waits until /ready answers 200 (a generous deadline: it only bounds a failure).
    pub(crate) async fn wait_ready(&self) {
        crate::harness::eventually(crate::harness::PATIENCE, || async {
            (self.get("/ready").await.0 == 200).then_some(())
        })
        .await
        .expect("ready within the test patience");
    }

    /// Waits until `f` holds for the /metrics body; panics with `what` and the last body.
    pub(crate) async fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let last = std::sync::Mutex::new(String::new());
        let found = crate::harness::eventually(crate::harness::PATIENCE, || async {
            let b = self.metrics().await;
            if f(&b) {
                return Some(b);
            }
            *last.lock().unwrap() = b;
            None
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}; last body:\n{}",
                last.lock().unwrap()
            )
        })
    }

    /// The /metrics body.
    /// Waits until the series `series` (name and labels, as [`sample`] reads it) has a value
    /// that satisfies `ok`; returns that body.
    pub(crate) async fn wait_for_sample(&self, series: &str, ok: impl Fn(f64) -> bool) -> String {
        self.wait_for(series, |b| sample(b, series).is_some_and(&ok))
            .await
    }

    pub(crate) async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    /// The `/probe?target=NAME` answer of a fleet: status and body.
    pub(crate) async fn probe(&self, target: &str) -> (u16, String) {
        self.get(&format!("/probe?target={}", percent(target)))
            .await
    }

    /// Waits until `f` holds for the `/probe` body of `target`; panics with `what` and the
    /// last answer.
    pub(crate) async fn wait_probe(
        &self,
        target: &str,
        what: &str,
        f: impl Fn(&str) -> bool,
    ) -> String {
        let last = std::sync::Mutex::new(String::new());
        let found = crate::harness::eventually(crate::harness::PATIENCE, || async {
            let (status, b) = self.probe(target).await;
            if status == 200 && f(&b) {
                return Some(b);
            }
            *last.lock().unwrap() = format!("{status}\n{b}");
            None
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what} of {target}; last answer:\n{}",
                last.lock().unwrap()
            )
        })
    }

    /// Stops the service and waits for it.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Running {
    /// Stops the service; true when it had stopped within `patience`.
    pub(crate) async fn stop_within(mut self, patience: Duration) -> bool {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => tokio::time::timeout(patience, t).await.is_ok(),
            None => true,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The value of the sample line `name{labels}` (exact match of the series text) in `body`.
pub(crate) fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the exposition has a `# TYPE` line for `family`.
pub(crate) fn has_family(body: &str, family: &str) -> bool {
    body.lines()
        .any(|l| l.starts_with(&format!("# TYPE {family} ")))
}

/// `s` percent-encoded for a query parameter (every byte but letters and digits).
pub(crate) fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
