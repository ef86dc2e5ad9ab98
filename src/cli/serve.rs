//! `pgpulse serve`, `check-config` and `catalog`: loading config and catalog, signals, and
//! running the service until SIGTERM/SIGINT; SIGHUP reloads the catalog.

use std::path::{Path, PathBuf};

use super::{CliError, DbArgs};
use crate::app::App;
use crate::catalog::{Catalog, Defaults};
use crate::config::{CliOverrides, Config, LogFormat};

/// The default catalog, embedded so the binary works without a queries.yaml next to it.
pub const DEFAULT_CATALOG: &str = include_str!("../../queries.yaml");

fn load_config(
    config_file: Option<&Path>,
    log_format: Option<LogFormat>,
    db: DbArgs,
    listen_address: Option<String>,
    queries: Option<PathBuf>,
) -> Result<(Config, Catalog), CliError> {
    let overrides = CliOverrides {
        database_url: db.database_url,
        listen_address,
        queries_file: queries,
        log_format,
    };
    let settings = crate::config::load(config_file, true, &overrides)
        .map_err(|e| CliError::Config(e.to_string()))?;
    let config = settings
        .validate()
        .map_err(|e| CliError::Config(e.to_string()))?;
    let defaults = Defaults {
        interval: config.default_interval,
        timeout: config.default_timeout,
    };
    let catalog = Catalog::load(&config.queries_file, defaults)
        .map_err(|e| CliError::Config(e.to_string()))?;
    Ok((config, catalog))
}

/// `pgpulse check-config`: validates config and catalog. With a database given explicitly
/// (`--database-url` or `PGPULSE_DATABASE_URL`), also prepares every query there (nothing is
/// executed) and checks that each declared column is in its result.
pub async fn check_config(
    config_file: Option<&Path>,
    log_format: Option<LogFormat>,
    db: DbArgs,
    queries: Option<PathBuf>,
) -> Result<(), CliError> {
    let explicit_db = db.database_url.is_some();
    let (config, catalog) = load_config(config_file, log_format, db, None, queries)?;
    if explicit_db {
        check_columns(&config, &catalog).await?;
    }
    println!(
        "configuration ok: database {}, listen {}, {} queries from {}{}",
        config.target,
        config.listen,
        catalog.queries.len(),
        catalog.source.display(),
        if explicit_db {
            ", every query prepared on the database"
        } else {
            ""
        }
    );
    Ok(())
}

/// Prepares each query and compares its result columns with the declared ones.
async fn check_columns(config: &Config, catalog: &Catalog) -> Result<(), CliError> {
    let client = crate::db::connect(&config.target).await?;
    let mut problems = Vec::new();
    // Queries for other server versions reference views this server lacks: skip them.
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| CliError::Config(crate::db::connect::describe(&e)))?;
    for q in &catalog.queries {
        if q.min_server_version.is_some_and(|v| version < v)
            || q.max_server_version.is_some_and(|v| version > v)
        {
            continue;
        }
        let at = format!(
            "{}:{}:{}: query \"{}\"",
            catalog.source.display(),
            q.location.0,
            q.location.1,
            q.name
        );
        match client.prepare(&q.sql).await {
            Err(e) => problems.push(format!("{at}: {}", crate::db::connect::describe(&e))),
            Ok(stmt) => {
                for col in q.columns() {
                    if !stmt.columns().iter().any(|c| c.name() == col) {
                        problems.push(format!("{at}: column \"{col}\" is not in the result"));
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::Config(problems.join("\n")))
    }
}

/// `pgpulse serve`.
pub async fn serve(
    config_file: Option<&Path>,
    log_format: Option<LogFormat>,
    db: DbArgs,
    listen_address: Option<String>,
    queries: Option<PathBuf>,
) -> Result<(), CliError> {
    let (config, catalog) = load_config(config_file, log_format, db, listen_address, queries)?;
    run_service(config, catalog).await
}

/// Builds and runs the service with signal handling until SIGTERM or SIGINT.
pub async fn run_service(config: Config, catalog: Catalog) -> Result<(), CliError> {
    let app = App::build(config, catalog)
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let reloader = app.reloader();
    spawn_sighup(reloader.clone())?;
    app.run_until_stopped(reloader, shutdown_signal())
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))
}

fn spawn_sighup(reloader: crate::app::Reloader) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| CliError::Runtime(format!("cannot install the SIGHUP handler: {e}")))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = reloader.reload();
        }
    });
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

/// `pgpulse catalog [--markdown]`.
pub fn print_catalog(path: &Path, markdown: bool) -> Result<(), CliError> {
    let catalog =
        Catalog::load(path, Defaults::default()).map_err(|e| CliError::Config(e.to_string()))?;
    if markdown {
        print!("{}", crate::catalog::markdown(&catalog));
    } else {
        for (q, m) in catalog.metric_names() {
            println!(
                "{}\t{:?}\t{}\t{}",
                m.name,
                m.kind,
                q.name,
                q.labels.join(",")
            );
        }
    }
    Ok(())
}
