//! `pgpulse demo`: throwaway cluster → trade-engine schema → migrations → workload →
//! `/metrics` (→ Prometheus → Alertmanager, when installed), until Ctrl-C or SIGTERM; then
//! everything is stopped and the temp cluster and directories removed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::alerting::AlertStack;
use super::bouncer::{BouncerOptions, TempBouncer};
use super::cluster::{ClusterOptions, TempCluster};
use super::error::DemoError;
use super::rules;
use super::scenario::{self, Scenario};
use super::status;
use super::workload::{self, WorkloadStats};
use crate::catalog::{Catalog, Defaults};
use crate::db::outcome::describe;

/// Interval and timeout of the demo's queries: short, so a newcomer sees values move.
pub(super) const DEMO_DEFAULTS: Defaults = Defaults {
    interval: Duration::from_secs(5),
    timeout: Duration::from_secs(4),
};

/// The login role the demo's pgpulse samples as (a member of `pgpulse_monitor`).
pub(super) const DEMO_ROLE: &str = "pgpulse";

fn step(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DemoError {
    move |e| DemoError::Database {
        step,
        reason: describe(&e),
    }
}

/// Options of `pgpulse demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Workload rounds per second.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// host:port for /metrics (an address and a port, e.g. 127.0.0.1:9864; checked and
    /// bound before the cluster starts).
    #[arg(long, default_value = "127.0.0.1:9864", value_parser = listen_address)]
    pub listen_address: String,
    /// Stop by itself after this long (e.g. 30s); runs until Ctrl-C when unset.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Make an alert condition true within a minute.
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// A fleet: a streaming standby (pg_basebackup) and a second database too, sampled by one
    /// pgpulse as three targets served at /probe and listed at /sd.
    #[arg(long)]
    pub fleet: bool,
    /// A PgBouncer (pool size 2) in front of the trade database, sampled as the target
    /// `pgbouncer` (a fleet: /probe, /sd); the pool-exhaustion scenario implies it.
    #[arg(long)]
    pub pgbouncer: bool,
}

/// `--listen-address` as clap checks it: `host:port`, so a bare port is refused at once.
fn listen_address(s: &str) -> Result<String, String> {
    s.parse::<std::net::SocketAddr>()
        .map(|_| s.to_owned())
        .map_err(|e| format!("{e}: expected host:port, e.g. 127.0.0.1:{s}"))
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let listener = bind(&args.listen_address).await?;
    eprintln!("pgpulse demo: starting a throwaway PostgreSQL ...");
    let cluster = start_cluster(args.scenario).await?;
    let (client, target) = prepare(&cluster).await?;
    let bouncer = start_bouncer(&cluster, &args)?;
    let bouncer_url = bouncer.as_ref().map(|b| b.url("postgres", "trade_engine"));
    let stop = CancellationToken::new();
    let stats = Arc::new(WorkloadStats::default());
    let work_client = crate::db::connect(&target).await?;
    let workload = tokio::spawn(workload::run(
        work_client,
        args.rate,
        stats.clone(),
        stop.clone(),
    ));
    let scenario_task = match args.scenario {
        Some(s) => scenario::apply(s, &client, &target, bouncer_url.as_deref(), stop.clone())
            .await
            .map_err(|reason| DemoError::Database {
                step: "start the scenario",
                reason,
            })?,
        None => None,
    };
    let standby = match args.fleet {
        true => Some(super::fleet::prepare(&cluster).await?),
        false => None,
    };
    let fleet = super::fleet::Members {
        primary: &cluster,
        standby: standby.as_ref(),
        bouncer: bouncer.as_ref(),
    };
    let config = match fleet.is_fleet() {
        true => fleet.config(&args.listen_address, DEMO_ROLE, DEMO_DEFAULTS)?,
        false => demo_config(&cluster, &args)?,
    };
    let catalog = Catalog::builtin(DEMO_DEFAULTS)?;
    let app = crate::app::App::build_on(listener, config, catalog).await?;
    let addr = app.local_addr();
    let alerting = start_alerting(addr, fleet.is_fleet()).await;
    print_banner(&args, addr, &fleet, alerting.as_ref());
    spawn_status(
        stats.clone(),
        alerting.as_ref(),
        args.scenario,
        stop.clone(),
    );
    let served = app.run_until_stopped(shutdown_after(args.duration)).await;
    stop.cancel();
    let _ = workload.await;
    if let Some(t) = scenario_task {
        let _ = t.await;
    }
    if let Some(a) = alerting {
        a.stop().await;
    }
    drop(client);
    tokio::task::spawn_blocking(move || drop((bouncer, standby, cluster)))
        .await
        .ok();
    eprintln!("pgpulse demo: stopped; throwaway cluster removed");
    Ok(served?)
}

/// The demo's PgBouncer, with `--pgbouncer` or the pool-exhaustion scenario: in front of the
/// trade database with a pool of 2, trusting loopback clients as the throwaway cluster does.
fn start_bouncer(cluster: &TempCluster, args: &DemoArgs) -> Result<Option<TempBouncer>, DemoError> {
    if !args.pgbouncer && args.scenario != Some(Scenario::PoolExhaustion) {
        return Ok(None);
    }
    eprintln!("pgpulse demo: starting PgBouncer (pool size 2) in front of trade_engine ...");
    let opts = BouncerOptions {
        backend_port: cluster.port(),
        databases: vec![("trade_engine".into(), "trade_engine".into())],
        auth_type: "trust".into(),
        pool_size: 2,
        ..Default::default()
    };
    let bouncer = tokio::task::block_in_place(|| TempBouncer::start(&opts))?;
    Ok(Some(bouncer))
}

/// Binds the listen address first: a taken port fails now, not after the cluster's setup.
async fn bind(listen_address: &str) -> Result<tokio::net::TcpListener, DemoError> {
    let addr: SocketAddr = listen_address.parse().map_err(|_| {
        DemoError::Config(crate::config::ConfigError::Invalid {
            key: "--listen-address",
            reason: self::listen_address(listen_address)
                .err()
                .unwrap_or_default(),
        })
    })?;
    Ok(tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::app::AppError::Bind { addr, source })?)
}

/// The throwaway cluster: jsonlog from 10 ms (the smallest key-query target of plans.yaml, so
/// every SLO miss is in the log; the slow-statement count still starts at 100 ms), and shared
/// buffers smaller than the scanned table for the cache-miss scenario.
async fn start_cluster(scenario: Option<Scenario>) -> Result<TempCluster, DemoError> {
    let opts = ClusterOptions {
        shared_buffers: if scenario == Some(Scenario::CacheMiss) {
            "128kB".into()
        } else {
            "128MB".into()
        },
        extra_settings: [
            ("logging_collector", "on"),
            ("log_destination", "stderr,jsonlog"),
            ("log_min_duration_statement", "10ms"),
            ("log_parameter_max_length", "0"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
        ..ClusterOptions::default()
    };
    Ok(
        tokio::task::spawn_blocking(move || TempCluster::start(&opts))
            .await
            .map_err(|e| DemoError::Task(e.to_string()))??,
    )
}

/// The trade-engine database with its schema, production-like volume, the monitoring schema
/// and the sampling role; a client on it and its target.
async fn prepare(
    cluster: &TempCluster,
) -> Result<(tokio_postgres::Client, crate::db::DatabaseTarget), DemoError> {
    let admin = crate::db::DatabaseTarget::parse(&cluster.url("postgres"))?;
    crate::db::connect(&admin)
        .await?
        .batch_execute("CREATE DATABASE trade_engine")
        .await
        .map_err(step("create the demo database"))?;
    let target = crate::db::DatabaseTarget::parse(&cluster.url("trade_engine"))?;
    let mut client = crate::db::connect(&target).await?;
    super::schema::install(&client)
        .await
        .map_err(step("trade-engine schema"))?;
    eprintln!("pgpulse demo: loading production-like volume for the key-query plan checks ...");
    super::schema::scale(&client)
        .await
        .map_err(step("trade-engine volume"))?;
    crate::db::migrate::migrate(&mut client).await?;
    // pgpulse samples as a login role of pgpulse_monitor, as in production (docs/operations.md):
    // read-only by grants, its own statements told apart from the workload's, and SELECT on
    // the trade tables for the key-query plan checks (docs/plans.md, "Privileges").
    client
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {DEMO_ROLE} LOGIN IN ROLE pgpulse_monitor; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             GRANT SELECT ON orders, trades, order_book, market_data, candles TO {DEMO_ROLE}"
        ))
        .await
        .map_err(step("create the sampling role"))?;
    Ok((client, target))
}

/// The service's configuration: the sampling role on the demo database, the demo's
/// intervals.
fn demo_config(cluster: &TempCluster, args: &DemoArgs) -> Result<crate::config::Config, DemoError> {
    let overrides = crate::config::CliOverrides {
        database_url: Some(cluster.url("trade_engine").replacen(
            "postgres://postgres@",
            &format!("postgres://{DEMO_ROLE}@"),
            1,
        )),
        listen_address: Some(args.listen_address.clone()),
        ..Default::default()
    };
    let mut config = crate::config::load(None, false, &overrides)?.validate()?;
    config.default_interval = DEMO_DEFAULTS.interval;
    config.default_timeout = DEMO_DEFAULTS.timeout;
    Ok(config)
}

/// Completes at SIGTERM/SIGINT, or after `limit` when one is given.
async fn shutdown_after(limit: Option<std::time::Duration>) {
    match limit {
        Some(d) => tokio::select! {
            _ = crate::shutdown::signal() => {}
            _ = tokio::time::sleep(d) => {}
        },
        None => crate::shutdown::signal().await,
    }
}

/// Starts Prometheus and Alertmanager when installed (discovering a fleet's targets through
/// `/sd`); says why not otherwise.
async fn start_alerting(target: SocketAddr, fleet: bool) -> Option<AlertStack> {
    eprintln!("pgpulse demo: starting Prometheus and Alertmanager ...");
    match super::alerting::start(target, fleet).await {
        Ok(stack) => Some(stack),
        Err(e) => {
            eprintln!("pgpulse demo: running without Prometheus and Alertmanager: {e}");
            None
        }
    }
}

fn print_banner(
    args: &DemoArgs,
    addr: SocketAddr,
    fleet: &super::fleet::Members<'_>,
    alerting: Option<&AlertStack>,
) {
    let database = fleet.primary.url("trade_engine");
    println!("pgpulse demo is running:");
    println!("  metrics:      http://{addr}/metrics");
    println!("  status:       http://{addr}/");
    if fleet.is_fleet() {
        fleet.print_banner(addr);
    }
    if let Some(a) = alerting {
        let demo_for = |bundled: &str| {
            let ms = rules::parse_duration(bundled).unwrap_or_default();
            rules::format_duration(rules::scaled_for(ms))
        };
        println!("  prometheus:   http://{}/alerts", a.prometheus_addr);
        println!("  alertmanager: http://{}/#/alerts", a.alertmanager_addr);
        println!(
            "  alert rules:  a demo copy of alerts/pgpulse.rules.yml with every `for:` divided by {} \
             (PgTableBloatHigh 30m -> {}, PgLockWaitLong 1m -> {}); thresholds and windows as \
             bundled, the bundled file unchanged",
            rules::FOR_DIVISOR,
            demo_for("30m"),
            demo_for("1m"),
        );
        println!(
            "  routing:      alerts/alertmanager.yml, its webhooks sent to the demo's receiver"
        );
    }
    println!("  database:     psql \"{database}\"");
    if let Some(s) = args.scenario {
        println!("  scenario:     {s:?}: watch {}", s.watch());
    }
    println!("Press Ctrl-C to stop; the throwaway cluster is removed on exit.");
}

/// Prints the workload's counters and, with the alerting chain, each alert's state every 5 s.
fn spawn_status(
    stats: Arc<WorkloadStats>,
    alerting: Option<&AlertStack>,
    scenario: Option<Scenario>,
    stop: CancellationToken,
) {
    let servers = alerting.map(|a| (a.prometheus_addr, a.alertmanager_addr, a.notified.clone()));
    let focus = scenario.map(Scenario::alerts).unwrap_or_default();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            eprintln!(
                "workload: {} orders, {} trades, {} errors",
                stats.orders.load(Ordering::Relaxed),
                stats.trades.load(Ordering::Relaxed),
                stats.errors.load(Ordering::Relaxed)
            );
            if let Some((prometheus, alertmanager, notified)) = &servers {
                let line = status::poll(*prometheus, *alertmanager, notified, focus).await;
                eprintln!("{line}");
            }
        }
    });
}
