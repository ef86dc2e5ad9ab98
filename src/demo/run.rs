//! `pgpulse demo`: throwaway cluster → trade-engine schema → migrations → workload →
//! `/metrics`, until Ctrl-C; then everything is stopped and the temp cluster removed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::cluster::{ClusterOptions, TempCluster};
use super::scenario::{self, Scenario};
use super::workload::{self, WorkloadStats};
use crate::catalog::{Catalog, Defaults};
use crate::cli::CliError;

/// Options of `pgpulse demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Workload rounds per second.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// host:port for /metrics.
    #[arg(long, default_value = "127.0.0.1:9864")]
    pub listen_address: String,
    /// Stop by itself after this long (e.g. 30s); runs until Ctrl-C when unset.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Make an alert condition true within a minute.
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    eprintln!("pgpulse demo: starting a throwaway PostgreSQL ...");
    let opts = ClusterOptions {
        // Cache misses need shared_buffers smaller than the table the scenario scans.
        shared_buffers: if args.scenario == Some(Scenario::CacheMiss) {
            "128kB".into()
        } else {
            "128MB".into()
        },
        ..ClusterOptions::default()
    };
    let cluster = tokio::task::spawn_blocking(move || TempCluster::start(&opts))
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let admin = crate::db::DatabaseTarget::parse(&cluster.url("postgres"))?;
    let client = crate::db::connect(&admin).await?;
    client
        .batch_execute("CREATE DATABASE trade_engine")
        .await
        .map_err(|e| CliError::Runtime(crate::db::connect::describe(&e)))?;
    drop(client);
    let target = crate::db::DatabaseTarget::parse(&cluster.url("trade_engine"))?;
    let mut client = crate::db::connect(&target).await?;
    super::schema::install(&client).await.map_err(|e| {
        CliError::Runtime(format!(
            "trade-engine schema: {}",
            crate::db::connect::describe(&e)
        ))
    })?;
    crate::db::migrate::migrate(&mut client)
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
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
        Some(s) => scenario::apply(s, &client, &target, stop.clone())
            .await
            .map_err(|e| CliError::Runtime(format!("scenario {s:?}: {e}")))?,
        None => None,
    };

    let overrides = crate::config::CliOverrides {
        database_url: Some(cluster.url("trade_engine")),
        listen_address: Some(args.listen_address.clone()),
        ..Default::default()
    };
    let settings = crate::config::load(None, false, &overrides)
        .map_err(|e| CliError::Config(e.to_string()))?;
    let mut config = settings
        .validate()
        .map_err(|e| CliError::Config(e.to_string()))?;
    config.default_interval = Duration::from_secs(5);
    let catalog = Catalog::parse(
        crate::cli::serve::DEFAULT_CATALOG,
        std::path::Path::new("queries.yaml (built in)"),
        Defaults {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(4),
        },
    )
    .map_err(|e| CliError::Config(e.to_string()))?;
    let app = crate::app::App::build(config, catalog)
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let addr = app.local_addr();
    println!("pgpulse demo is running:");
    println!("  metrics:   http://{addr}/metrics");
    println!("  status:    http://{addr}/");
    println!("  database:  psql \"{}\"", cluster.url("trade_engine"));
    if let Some(s) = args.scenario {
        println!("  scenario:  {s:?}: watch {}", s.watch());
    }
    println!("Press Ctrl-C to stop; the throwaway cluster is removed on exit.");
    let status_stats = stats.clone();
    let status_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = status_stop.cancelled() => return,
                _ = tick.tick() => eprintln!(
                    "workload: {} orders, {} trades, {} errors",
                    status_stats.orders.load(Ordering::Relaxed),
                    status_stats.trades.load(Ordering::Relaxed),
                    status_stats.errors.load(Ordering::Relaxed)
                ),
            }
        }
    });
    let reloader = app.reloader();
    let limit = args.duration;
    let shutdown = async move {
        match limit {
            Some(d) => tokio::select! {
                _ = crate::cli::serve::shutdown_signal() => {}
                _ = tokio::time::sleep(d) => {}
            },
            None => crate::cli::serve::shutdown_signal().await,
        }
    };
    let served = app.run_until_stopped(reloader, shutdown).await;
    stop.cancel();
    let _ = workload.await;
    if let Some(t) = scenario_task {
        let _ = t.await;
    }
    drop(client);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .ok();
    eprintln!("pgpulse demo: stopped; throwaway cluster removed");
    served.map_err(|e| CliError::Runtime(e.to_string()))
}
