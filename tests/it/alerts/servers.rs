//! The Prometheus and Alertmanager processes the tests start: a guard that kills and reaps
//! them, and starters that configure them and wait until they are ready.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::harness::eventually;

/// A spawned server process, killed and reaped when dropped (also when the test panics).
pub(crate) struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(program: &str, args: &[String], log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("{program} not runnable ({e}); install its Debian package"));
        Self { child, log }
    }

    /// The last lines of its log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn local_addr() -> String {
    format!(
        "127.0.0.1:{}",
        pgpulse::demo::cluster::free_port().expect("a free port")
    )
}

/// Waits until `http://addr/-/ready` answers 200.
async fn ready(server: &Server, addr: &str) {
    let url = format!("http://{addr}/-/ready");
    let ok = eventually(crate::harness::PATIENCE, || async {
        reqwest::get(&url)
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await;
    assert!(ok.is_some(), "{addr} not ready:\n{}", server.log_tail());
}

/// Starts Alertmanager with `config` in `dir` (clustering off); returns it and its address.
pub(super) async fn alertmanager(dir: &Path, config: &str) -> (Server, String) {
    let path = dir.join("alertmanager.yml");
    std::fs::write(&path, config).unwrap();
    let addr = local_addr();
    let args = [
        format!("--config.file={}", path.display()),
        format!("--storage.path={}", dir.join("am-data").display()),
        format!("--web.listen-address={addr}"),
        "--cluster.listen-address=".into(),
    ];
    let server = Server::spawn(
        "/usr/bin/prometheus-alertmanager",
        &args,
        dir.join("am.log"),
    );
    ready(&server, &addr).await;
    (server, addr)
}

/// Starts Prometheus scraping `target` every second with `rules`, alerting to `alertmanager`.
pub(crate) async fn prometheus(
    dir: &Path,
    target: &str,
    rules: &str,
    alertmanager: &str,
) -> (Server, String) {
    std::fs::write(dir.join("rules.yml"), rules).unwrap();
    let config = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}\n\
         rule_files: [rules.yml]\n\
         alerting: {{alertmanagers: [{{static_configs: [{{targets: ['{alertmanager}']}}]}}]}}\n\
         scrape_configs: [{{job_name: pgpulse, static_configs: [{{targets: ['{target}']}}]}}]\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let addr = local_addr();
    let args = [
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
        format!("--web.listen-address={addr}"),
    ];
    let server = Server::spawn("/usr/bin/prometheus", &args, dir.join("prometheus.log"));
    ready(&server, &addr).await;
    (server, addr)
}
