//! The demo's alerting chain, when Prometheus and Alertmanager are installed: both started on
//! free loopback ports in a temp dir with the demo copies of the bundled rules and routing
//! ([`super::rules`]), and a webhook receiver of our own that the routing notifies.
//!
//! Everything started here is stopped by [`AlertStack::stop`] (SIGTERM, then SIGKILL after a
//! grace period) and the temp dir removed; `kill_on_drop` covers an early return, and a small
//! watchdog process (as for the throwaway cluster) stops both servers and removes the dir if
//! the demo dies without running its destructors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::rules;
use super::status::{Notified, at, get};

/// How long a server may take to answer `/-/ready` (two loaded cores: generous).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why the alerting chain could not start; the demo goes on without it.
#[derive(Debug, thiserror::Error)]
pub(super) enum AlertingError {
    /// A binary is not installed.
    #[error(
        "{0} not found in PATH; install it to see alerts fire (Debian: apt-get install prometheus prometheus-alertmanager, or scripts/setup demo)"
    )]
    NotInstalled(&'static str),
    /// A file or process operation failed.
    #[error("{step}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A server did not become ready; the tail of its log.
    #[error("{server} did not become ready: {log}")]
    NotReady {
        /// prometheus or alertmanager.
        server: &'static str,
        /// The last lines of its log.
        log: String,
    },
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> AlertingError {
    move |source| AlertingError::Io { step, source }
}

/// The first of `names` found in PATH, canonicalized.
fn find(names: &[&'static str]) -> Result<PathBuf, AlertingError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            if let Ok(p) = std::fs::canonicalize(dir.join(name))
                && p.is_file()
            {
                return Ok(p);
            }
        }
    }
    Err(AlertingError::NotInstalled(
        names.first().copied().unwrap_or("prometheus"),
    ))
}

/// A running Prometheus, Alertmanager and webhook receiver.
#[derive(Debug)]
pub(super) struct AlertStack {
    prometheus: Child,
    alertmanager: Child,
    /// Where Prometheus listens.
    pub prometheus_addr: SocketAddr,
    /// Where Alertmanager listens.
    pub alertmanager_addr: SocketAddr,
    /// What the webhook receiver was notified of.
    pub notified: Notified,
    sink_stop: CancellationToken,
    dir: tempfile::TempDir,
}

/// Starts the chain scraping pgpulse at `target` (its fleet's targets, discovered at `/sd`,
/// when `fleet`).
pub(super) async fn start(target: SocketAddr, fleet: bool) -> Result<AlertStack, AlertingError> {
    let prometheus_bin = find(&["prometheus"])?;
    let alertmanager_bin = find(&["prometheus-alertmanager", "alertmanager"])?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("pgpulse-demo-alerting-{}-", std::process::id()))
        .tempdir()
        .map_err(io("create the alerting directory"))?;
    let notified = Notified::default();
    let sink_stop = CancellationToken::new();
    // Stops the receiver again when a later step fails.
    let sink_guard = sink_stop.clone().drop_guard();
    let sink = sink(notified.clone(), sink_stop.clone()).await?;
    let routing = rules::demo_routing(rules::BUNDLED_ROUTING, &format!("http://{sink}"));
    write(dir.path(), "alertmanager.yml", &routing)?;
    let (alertmanager, alertmanager_addr) =
        spawn_ready("alertmanager", &alertmanager_bin, dir.path(), |addr, d| {
            vec![
                format!("--config.file={}", d.join("alertmanager.yml").display()),
                format!("--storage.path={}", d.join("am-data").display()),
                format!("--web.listen-address={addr}"),
                "--cluster.listen-address=".into(),
            ]
        })
        .await?;
    let scrape = match target {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        other => other,
    };
    write(
        dir.path(),
        "pgpulse.demo.rules.yml",
        &rules::demo_rules(rules::BUNDLED_RULES),
    )?;
    let config = rules::prometheus_config(
        &scrape.to_string(),
        &alertmanager_addr.to_string(),
        "pgpulse.demo.rules.yml",
        fleet,
    );
    write(dir.path(), "prometheus.yml", &config)?;
    let (prometheus, prometheus_addr) =
        spawn_ready("prometheus", &prometheus_bin, dir.path(), |addr, d| {
            vec![
                format!("--config.file={}", d.join("prometheus.yml").display()),
                format!("--storage.tsdb.path={}", d.join("tsdb").display()),
                format!("--web.listen-address={addr}"),
            ]
        })
        .await?;
    let stack = AlertStack {
        prometheus,
        alertmanager,
        prometheus_addr,
        alertmanager_addr,
        notified,
        sink_stop,
        dir,
    };
    stack.spawn_watchdog(&prometheus_bin, &alertmanager_bin)?;
    sink_guard.disarm();
    Ok(stack)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<(), AlertingError> {
    std::fs::write(dir.join(name), text).map_err(io("write a configuration file"))
}

/// Starts `program` on a free loopback port (another one if it exits, e.g. lost a port race)
/// and waits until it answers `/-/ready`.
async fn spawn_ready(
    server: &'static str,
    program: &Path,
    dir: &Path,
    args: impl Fn(SocketAddr, &Path) -> Vec<String>,
) -> Result<(Child, SocketAddr), AlertingError> {
    let log_path = dir.join(format!("{server}.log"));
    let mut last_log = String::new();
    for _ in 0..3 {
        let port = super::cluster::free_port().map_err(|e| AlertingError::Io {
            step: "pick a free port",
            source: std::io::Error::other(e.to_string()),
        })?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(&log_path).map_err(io("create a server log"))?;
        let mut child = Command::new(program)
            .args(args(addr, dir))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log.try_clone().map_err(io("open a server log"))?,
            ))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(io("start a server"))?;
        let end = Instant::now() + READY_TIMEOUT;
        while Instant::now() < end && matches!(child.try_wait(), Ok(None)) {
            if matches!(get(addr, "/-/ready").await, Ok((200, _))) {
                return Ok((child, addr));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        last_log = tail(&log_path);
        let _ = child.kill().await;
    }
    Err(AlertingError::NotReady {
        server,
        log: last_log,
    })
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .get(lines.len().saturating_sub(5)..)
        .unwrap_or_default()
        .join("\n")
}

/// Serves the webhook receiver on a free loopback port: `POST /{receiver}` records the
/// alert names of an Alertmanager notification.
async fn sink(notified: Notified, stop: CancellationToken) -> Result<SocketAddr, AlertingError> {
    use axum::extract::{Path as UrlPath, State};
    async fn receive(
        State(seen): State<Notified>,
        UrlPath(receiver): UrlPath<String>,
        body: String,
    ) -> &'static str {
        let payload: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let names = at(&payload, "/alerts").as_array().into_iter().flatten();
        let names: Vec<String> = names
            .filter_map(|a| at(a, "/labels/alertname").as_str().map(str::to_owned))
            .collect();
        if let Ok(mut s) = seen.lock() {
            s.extend(names.into_iter().map(|n| (receiver.clone(), n)));
        }
        "ok"
    }
    let app = axum::Router::new()
        .route("/{receiver}", axum::routing::post(receive))
        .with_state(notified);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io("bind the webhook receiver"))?;
    let addr = listener
        .local_addr()
        .map_err(io("bind the webhook receiver"))?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "demo webhook receiver stopped");
        }
    });
    Ok(addr)
}

impl AlertStack {
    /// Stops both servers (SIGTERM, SIGKILL after [`STOP_GRACE`]) and the receiver, and
    /// removes the temp dir.
    pub(super) async fn stop(mut self) {
        for child in [&mut self.prometheus, &mut self.alertmanager] {
            if let Some(pid) = child.id() {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        for child in [&mut self.prometheus, &mut self.alertmanager] {
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        self.sink_stop.cancel();
        let dir = self.dir;
        let _ = tokio::task::spawn_blocking(move || dir.close()).await;
    }

    /// Starts a process that, once the demo is gone whatever way it ended, stops the servers
    /// (only if their pid still runs the same program) and removes the temp dir.
    fn spawn_watchdog(&self, prometheus: &Path, alertmanager: &Path) -> Result<(), AlertingError> {
        // Paths travel as positional arguments, never inside the script's text.
        const SCRIPT: &str = "pid=$1 dir=$2; shift 2; \
             while kill -0 \"$pid\" 2>/dev/null; do sleep 1; done; \
             while [ $# -ge 2 ]; do \
               if [ \"$(readlink \"/proc/$1/exe\")\" = \"$2\" ]; then kill \"$1\"; \
                 n=0; while kill -0 \"$1\" 2>/dev/null && [ $n -lt 20 ]; do sleep 1; n=$((n+1)); done; \
               fi; shift 2; \
             done; \
             rm -rf \"$dir\"";
        let pid = |c: &Child| c.id().map(|p| p.to_string()).unwrap_or_default();
        std::process::Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("pgpulse-demo-watchdog")
            .arg(std::process::id().to_string())
            .arg(self.dir.path())
            .args([pid(&self.prometheus).as_str()])
            .arg(prometheus)
            .args([pid(&self.alertmanager).as_str()])
            .arg(alertmanager)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|_| ())
            .map_err(io("start the alerting watchdog"))
    }
}
