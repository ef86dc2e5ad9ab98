//! `pgpulse serve`, `check-config` and `catalog`: loading config and catalog, signals, and
//! running the service until SIGTERM/SIGINT; SIGHUP reloads the catalog.

use std::path::{Path, PathBuf};

use super::{CliError, DbArgs};
use crate::app::App;
use crate::catalog::{Catalog, Defaults, Source};
use crate::config::{CliOverrides, Config, LogFormat};

/// The web flags of `serve` and `check-config`.
#[derive(Debug, Default, Clone)]
pub struct WebArgs {
    /// `--listen-address`.
    pub listen_address: Option<String>,
    /// `--web.config.file`.
    pub web_config_file: Option<PathBuf>,
}

fn load_config(
    config_file: Option<&Path>,
    log_format: Option<LogFormat>,
    db: DbArgs,
    web: WebArgs,
    queries: Option<PathBuf>,
) -> Result<(Config, Catalog), CliError> {
    let overrides = CliOverrides {
        database_url: db.database_url,
        listen_address: web.listen_address,
        queries_file: queries,
        log_format,
        web_config_file: web.web_config_file,
    };
    let config = crate::config::load(config_file, true, &overrides)?.validate()?;
    let catalog = Catalog::from_source(&config.catalog_source, config.catalog_defaults())?;
    Ok((config, catalog))
}

/// `pgpulse check-config`: validates config and catalog. With a database given explicitly
/// (`--database-url` or `PGPULSE_DATABASE_URL`), also prepares every query there (nothing is
/// executed) and checks that each declared column is in its result.
pub async fn check_config(
    config_file: Option<&Path>,
    log_format: Option<LogFormat>,
    db: DbArgs,
    web: WebArgs,
    queries: Option<PathBuf>,
) -> Result<(), CliError> {
    let explicit_db = db.database_url.is_some();
    let (config, catalog) = load_config(config_file, log_format, db, web, queries)?;
    if let Some(file) = &config.web.config_file {
        crate::http::webconfig::WebConfig::load(file)
            .and_then(|w| w.server_config())
            .map_err(CliError::WebConfig)?;
    }
    if explicit_db {
        check_columns(&config, &catalog).await?;
    }
    let database = match &config.fleet {
        Some(f) => {
            let none_found = std::collections::BTreeMap::new();
            let targets = f
                .read_targets(config.connect_timeout, &none_found)
                .unwrap_or_default();
            let bouncers = targets
                .iter()
                .filter(|t| t.kind == crate::config::fleet::TargetKind::Pgbouncer)
                .count();
            format!(
                "a fleet of {} targets ({bouncers} of them PgBouncer) and {} servers whose \
                 databases are discovered",
                targets.len(),
                f.discoveries.len()
            )
        }
        None => format!("database {} ({})", config.target, config.target.tls()),
    };
    println!(
        "configuration ok: {database}, listen {}, {} queries from {}{}",
        config.listen,
        catalog.queries.len(),
        catalog.source,
        if explicit_db {
            ", every query prepared on the database"
        } else {
            ""
        }
    );
    Ok(())
}

/// Prepares each query and compares its result columns with the declared ones. Before
/// `migrate`, the queries that read the monitoring schema fail for one reason, said once.
async fn check_columns(config: &Config, catalog: &Catalog) -> Result<(), CliError> {
    let client = crate::db::connect(&config.target).await?;
    let setup = |e: tokio_postgres::Error| CliError::Queries {
        problems: vec![format!(
            "cannot read the server version: {}",
            crate::db::outcome::describe(&e)
        )],
    };
    client
        .batch_execute("SET lock_timeout = '2s'; SET statement_timeout = '30s'")
        .await
        .map_err(setup)?;
    // Queries for other server versions reference views this server lacks: skip them.
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, \
                    to_regclass('monitoring.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(setup)?;
    let (version, installed): (i32, bool) = (row.get(0), row.get(1));
    let mut problems = Vec::new();
    let mut objects_missing = false;
    for q in &catalog.queries {
        if q.min_server_version.is_some_and(|v| version < v)
            || q.max_server_version.is_some_and(|v| version > v)
        {
            continue;
        }
        let at = format!(
            "{}:{}:{}: query \"{}\"",
            catalog.source, q.location.0, q.location.1, q.name
        );
        match client.prepare(&q.sql).await {
            Err(e) => {
                objects_missing |=
                    crate::db::outcome::missing_object(&e) && reads_monitoring(&q.sql);
                problems.push(format!("{at}: {}", crate::db::outcome::describe(&e)));
            }
            // A derived family's columns come from pgpulse (checked when the catalog
            // loaded); its statement is the relation pass's, prepared above.
            Ok(_) if q.derive.is_some() => {}
            Ok(stmt) => {
                for col in q.columns() {
                    if !stmt.columns().iter().any(|c| c.name() == col) {
                        problems.push(format!("{at}: column \"{col}\" is not in the result"));
                    }
                }
            }
        }
    }
    if !installed && objects_missing {
        Err(CliError::SchemaMissing)
    } else if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::Queries { problems })
    }
}

/// Whether a query's text names the monitoring schema (the catalog's own text: a custom
/// query that reads a missing table of its own is a problem of the file, not of `migrate`).
fn reads_monitoring(sql: &str) -> bool {
    sql.to_ascii_lowercase().contains("monitoring.")
}

/// `pgpulse serve`.
pub async fn serve(
    config_file: Option<&Path>,
    log_format: Option<LogFormat>,
    db: DbArgs,
    web: WebArgs,
    queries: Option<PathBuf>,
) -> Result<(), CliError> {
    let (config, catalog) = load_config(config_file, log_format, db, web, queries)?;
    run_service(config, catalog).await
}

/// Builds and runs the service with signal handling until SIGTERM or SIGINT.
pub async fn run_service(config: Config, catalog: Catalog) -> Result<(), CliError> {
    let app = App::build(config, catalog).await?;
    app.reload_on_sighup()?;
    Ok(app.run_until_stopped(crate::shutdown::signal()).await?)
}

/// `pgpulse catalog [--markdown]`.
pub fn print_catalog(path: Option<&Path>, markdown: bool) -> Result<(), CliError> {
    let source = path.map_or(Source::Builtin, |p| Source::File(p.to_owned()));
    let catalog = Catalog::from_source(&source, Defaults::default())?;
    if markdown {
        print!("{}", crate::catalog::markdown(&catalog));
        print!("\n{}", crate::bouncer::markdown());
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
