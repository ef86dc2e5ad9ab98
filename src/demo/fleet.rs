//! `pgpulse demo --fleet` / `--pgbouncer`: the demo's primary plus a streaming standby made
//! with `pg_basebackup` and a second database (`risk`), and/or a PgBouncer in front of the
//! trade database, all sampled by one pgpulse as targets (`primary`, `replica`, `risk`,
//! `pgbouncer`), with the Prometheus scrape configuration that discovers them through `/sd`
//! printed for the user.

use std::net::SocketAddr;

use super::bouncer::TempBouncer;
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
        discover_databases: None,
    }
}

/// What the demo samples: the primary, and with `--fleet` its standby (and the `risk`
/// database), with `--pgbouncer` the PgBouncer in front of it.
#[derive(Debug)]
pub(super) struct Members<'a> {
    /// The demo's cluster.
    pub primary: &'a TempCluster,
    /// The standby of `--fleet`.
    pub standby: Option<&'a TempCluster>,
    /// The PgBouncer of `--pgbouncer` (or the pool-exhaustion scenario).
    pub bouncer: Option<&'a TempBouncer>,
}

impl Members<'_> {
    /// Whether more than the primary is sampled: then the demo serves a fleet.
    pub(super) fn is_fleet(&self) -> bool {
        self.standby.is_some() || self.bouncer.is_some()
    }

    /// The targets' names.
    fn names(&self) -> Vec<&'static str> {
        let mut names = vec!["primary"];
        if self.standby.is_some() {
            names.extend(["replica", "risk"]);
        }
        if self.bouncer.is_some() {
            names.push("pgbouncer");
        }
        names
    }

    /// The fleet's configuration: the targets sampled as `role` (PgBouncer's console as its
    /// stats user), served on `listen_address`, the demo's intervals.
    pub(super) fn config(
        &self,
        listen_address: &str,
        role: &str,
        defaults: crate::catalog::Defaults,
    ) -> Result<crate::config::Config, DemoError> {
        let mut settings = crate::config::Settings::default();
        settings.web.listen_address = listen_address.to_owned();
        settings.targets = vec![target("primary", self.primary, "trade_engine", role)];
        if let Some(standby) = self.standby {
            settings.targets.extend([
                target("replica", standby, "trade_engine", role),
                target("risk", self.primary, "risk", role),
            ]);
        }
        if let Some(b) = self.bouncer {
            settings.targets.push(TargetSettings {
                name: "pgbouncer".to_owned(),
                url: b.url("pgpulse_stats", "pgbouncer"),
                auth: None,
                labels: [("cluster".to_owned(), "demo".to_owned())].into(),
                kind: TargetKind::Pgbouncer,
                discover_databases: None,
            });
            settings.fleet.pgbouncer_interval = defaults.interval;
        }
        let mut config = settings.validate()?;
        config.default_interval = defaults.interval;
        config.default_timeout = defaults.timeout;
        Ok(config)
    }

    /// The fleet's lines of the banner.
    pub(super) fn print_banner(&self, addr: SocketAddr) {
        let mut what = vec!["primary (the trade database)"];
        if self.standby.is_some() {
            what.extend([
                "replica (a pg_basebackup standby)",
                "risk (a second database)",
            ]);
        }
        if self.bouncer.is_some() {
            what.push("pgbouncer (PgBouncer in front of the trade database, pool size 2)");
        }
        println!("  fleet:        {}", what.join(", "));
        let last = self.names().last().copied().unwrap_or("primary");
        println!(
            "  targets:      http://{addr}/sd (Prometheus http_sd), http://{addr}/probe?target={last}"
        );
        println!("  prometheus.yml for this fleet:");
        for line in scrape_config(addr).lines() {
            println!("    {line}");
        }
    }
}

/// The scrape configuration that discovers the fleet through `/sd`.
pub fn scrape_config(addr: SocketAddr) -> String {
    format!(
        "scrape_configs:\n  - job_name: pgpulse\n    http_sd_configs:\n      - url: http://{addr}/sd\n        refresh_interval: 10s\n"
    )
}
