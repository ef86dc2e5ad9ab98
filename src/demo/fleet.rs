//! `pgpulse demo --fleet`: the demo's primary plus a streaming standby made with
//! `pg_basebackup` and a second database (`risk`), all sampled by one pgpulse as three
//! targets (`primary`, `replica`, `risk`), with the Prometheus scrape configuration that
//! discovers them through `/sd` printed for the user.

use std::net::SocketAddr;

use super::cluster::TempCluster;
use super::error::DemoError;
use crate::config::fleet::{TargetKind, TargetSettings};

/// Creates the `risk` database (with the monitoring schema) and the standby.
pub(super) async fn prepare(primary: &TempCluster) -> Result<TempCluster, DemoError> {
    let admin = crate::db::DatabaseTarget::parse(&primary.url("postgres"))?;
    crate::db::connect(&admin)
        .await?
        .batch_execute("CREATE DATABASE risk")
        .await
        .map_err(|e| DemoError::Database {
            step: "create the risk database",
            reason: crate::db::outcome::describe(&e),
        })?;
    let risk = crate::db::DatabaseTarget::parse(&primary.url("risk"))?;
    crate::db::migrate::migrate(&mut crate::db::connect(&risk).await?).await?;
    eprintln!("pgpulse demo: making a streaming standby with pg_basebackup ...");
    // The standby is made while nothing else runs yet; it blocks until it accepts connections.
    tokio::task::block_in_place(|| TempCluster::standby_of(primary, "demo_standby"))
        .map_err(DemoError::from)
}

/// A target of the demo: `database` on `cluster`, sampled as `role`. Its one label is the
/// cluster: a server's role is the gauge `pg_server_in_recovery`, never a label (a promotion
/// would leave a label lying).
fn target(name: &str, cluster: &TempCluster, database: &str, role: &str) -> TargetSettings {
    TargetSettings {
        name: name.to_owned(),
        url: cluster.url(database).replacen(
            "postgres://postgres@",
            &format!("postgres://{role}@"),
            1,
        ),
        auth: None,
        labels: [("cluster".to_owned(), "demo".to_owned())].into(),
        kind: TargetKind::Postgres,
    }
}

/// The fleet's configuration: three targets sampled as `role`, served on `listen_address`,
/// the demo's intervals.
pub(super) fn config(
    primary: &TempCluster,
    standby: &TempCluster,
    listen_address: &str,
    role: &str,
    defaults: crate::catalog::Defaults,
) -> Result<crate::config::Config, DemoError> {
    let mut settings = crate::config::Settings::default();
    settings.web.listen_address = listen_address.to_owned();
    settings.targets = vec![
        target("primary", primary, "trade_engine", role),
        target("replica", standby, "trade_engine", role),
        target("risk", primary, "risk", role),
    ];
    let mut config = settings.validate()?;
    config.default_interval = defaults.interval;
    config.default_timeout = defaults.timeout;
    Ok(config)
}

/// The scrape configuration that discovers the fleet through `/sd`.
pub fn scrape_config(addr: SocketAddr) -> String {
    format!(
        "scrape_configs:\n  - job_name: pgpulse\n    http_sd_configs:\n      - url: http://{addr}/sd\n        refresh_interval: 10s\n"
    )
}

/// The fleet's lines of the banner.
pub(super) fn print_banner(addr: SocketAddr) {
    println!(
        "  fleet:        primary, replica (a pg_basebackup standby), risk (a second database)"
    );
    println!(
        "  targets:      http://{addr}/sd (Prometheus http_sd), http://{addr}/probe?target=replica"
    );
    println!("  prometheus.yml for this fleet:");
    for line in scrape_config(addr).lines() {
        println!("    {line}");
    }
}
