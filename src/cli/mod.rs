//! The command line: clap definitions and the commands besides `serve`'s service loop.
//! Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.

pub mod explain;
pub mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::LogFormat;

/// pgpulse: PostgreSQL exporter and monitoring schema for a trading engine.
#[derive(Debug, Parser)]
#[command(name = "pgpulse", version, about)]
pub struct Cli {
    /// Log format [default: log_format of the config file, else text].
    #[arg(long, global = true, value_enum, env = "PGPULSE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Config file (YAML) [default: none; built-in defaults and PGPULSE_* variables].
    #[arg(long, global = true, env = "PGPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Database selection shared by the commands that connect.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/db [default: the database of the config
    /// file].
    #[arg(long, env = "PGPULSE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve /metrics, sampling the database in the background.
    Serve {
        /// Database.
        #[command(flatten)]
        db: DbArgs,
        /// host:port to listen on [default: web.listen_address of the config file, else
        /// 127.0.0.1:9864].
        #[arg(long)]
        listen_address: Option<String>,
        /// The metric catalog file [default: queries_file of the config file, else the
        /// built-in catalog (the shipped queries.yaml)].
        #[arg(long)]
        queries: Option<PathBuf>,
        /// Web configuration file (TLS, basic auth, headers) in the Prometheus exporter
        /// toolkit format.
        #[arg(long = "web.config.file", value_name = "FILE")]
        web_config_file: Option<PathBuf>,
    },
    /// Validate the configuration and queries.yaml; with --database-url also prepare every
    /// query there. Exit 0 ok, 1 the database lacks the monitoring schema (run `pgpulse
    /// migrate`), 2 a bad file or a query that does not fit the database.
    CheckConfig {
        /// Database (optional; only a --database-url or PGPULSE_DATABASE_URL given here is
        /// contacted).
        #[command(flatten)]
        db: DbArgs,
        /// The metric catalog file [default: queries_file of the config file, else the
        /// built-in catalog].
        #[arg(long)]
        queries: Option<PathBuf>,
        /// Web configuration file to check as well.
        #[arg(long = "web.config.file", value_name = "FILE")]
        web_config_file: Option<PathBuf>,
    },
    /// Apply pending migrations of the monitoring schema.
    Migrate {
        /// Database.
        #[command(flatten)]
        db: DbArgs,
        /// List applied and pending migrations instead.
        #[arg(long)]
        status: bool,
    },
    /// Remove everything the migrations created; trade data is untouched.
    Uninstall {
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Check the monitoring setup: one PASS/WARN/FAIL line per check.
    Verify {
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Run the scheduled maintenance jobs (partitions, statistics, vacuum) as the leader.
    Maintain {
        /// Database (a role that owns the trade tables and is granted pgpulse_maintainer).
        #[command(flatten)]
        db: DbArgs,
        /// Run this job once now and exit, instead of following the schedule. The jobs of
        /// monitoring.maintenance_schedule: daily_partition_creation, daily_statistics_update,
        /// weekly_vacuum, hourly_query_stats.
        #[arg(long, value_name = "JOB")]
        run_now: Option<String>,
    },
    /// Start a throwaway PostgreSQL with a synthetic trade workload and serve its metrics.
    Demo(crate::demo::DemoArgs),
    /// Explain the key queries (plans.yaml): expected index, partitions, latency; exit 1 on a
    /// failed check.
    Explain(explain::ExplainArgs),
    /// Print the metric catalog.
    Catalog {
        /// As the Markdown metrics reference (docs/metrics.md).
        #[arg(long)]
        markdown: bool,
        /// The metric catalog [default: the built-in one].
        #[arg(long)]
        queries: Option<PathBuf>,
    },
}

/// A command's failure and its exit code; each variant names what failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is wrong (exit 2).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The catalog is wrong (exit 2).
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The web configuration file (TLS, basic auth) is wrong (exit 2).
    #[error(transparent)]
    WebConfig(crate::http::webconfig::WebConfigError),
    /// A command that connects was given no database (exit 2).
    #[error("no database given: pass --database-url or set PGPULSE_DATABASE_URL")]
    NoDatabase,
    /// The URL is invalid (exit 2) or the server unreachable (exit 1).
    #[error(transparent)]
    Connect(#[from] crate::db::ConnectError),
    /// `check-config` found queries that do not fit the database (exit 2).
    #[error("{}", problems.join("\n"))]
    Queries {
        /// One line per problem, each naming file, line, column and query.
        problems: Vec<String>,
    },
    /// The database lacks the monitoring schema the catalog reads (exit 1: the files are
    /// fine, the database needs `migrate`).
    #[error("the monitoring schema is not installed: run `pgpulse migrate`")]
    SchemaMissing,
    /// The service failed (exit 1).
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    /// Migrating or uninstalling failed (exit 1).
    #[error(transparent)]
    Migrate(#[from] crate::db::migrate::MigrateError),
    /// The maintenance runner failed (exit 1).
    #[error(transparent)]
    Maintenance(#[from] crate::maintenance::MaintenanceError),
    /// `maintain --run-now` named a job the schedule does not have (exit 2).
    #[error("unknown job \"{job}\": the jobs of monitoring.maintenance_schedule are {known}")]
    UnknownJob {
        /// The name given.
        job: String,
        /// The scheduled jobs, comma-separated.
        known: String,
    },
    /// A maintenance job ran but did not succeed (exit 1).
    #[error("job {job} did not succeed")]
    JobFailed {
        /// The maintenance job's name.
        job: String,
    },
    /// `explain --query` named a query the plans file does not have (exit 2).
    #[error("{problem}")]
    UnknownPlanQuery {
        /// Which name, and the known ones.
        problem: String,
    },
    /// `explain` found key queries whose plan check failed (exit 1).
    #[error("{failed} of {total} key queries failed their plan check: {queries}")]
    PlanCheckFailed {
        /// How many failed.
        failed: usize,
        /// How many were checked.
        total: usize,
        /// Their names.
        queries: String,
    },
    /// `verify` had failing checks (exit 1).
    #[error("{failed} check(s) failed")]
    VerifyFailed {
        /// How many.
        failed: usize,
    },
    /// The demo failed (exit 1).
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
}

impl CliError {
    /// The process exit code: 2 for bad configuration or usage, 1 for runtime failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_)
            | Self::Catalog(_)
            | Self::WebConfig(_)
            | Self::NoDatabase
            | Self::Queries { .. }
            | Self::UnknownJob { .. }
            | Self::UnknownPlanQuery { .. } => 2,
            Self::Connect(
                crate::db::ConnectError::InvalidUrl(_) | crate::db::ConnectError::Tls(_),
            ) => 2,
            Self::Demo(e) if e.is_config() => 2,
            _ => 1,
        }
    }
}

/// The database target of a command: `--database-url`, else the config's database.
pub fn target(
    cli_config: Option<&std::path::Path>,
    db: &DbArgs,
) -> Result<crate::db::DatabaseTarget, CliError> {
    Ok(config_for(cli_config, db)?.target)
}

/// The validated configuration of a command that connects: `--database-url`, else the
/// config's database.
pub fn config_for(
    cli_config: Option<&std::path::Path>,
    db: &DbArgs,
) -> Result<crate::config::Config, CliError> {
    let overrides = crate::config::CliOverrides {
        database_url: db.database_url.clone(),
        ..Default::default()
    };
    let settings = crate::config::load(cli_config, true, &overrides)?;
    if settings.database.url.is_none()
        && settings.database.url_file.is_none()
        && settings.database.host.is_none()
    {
        return Err(CliError::NoDatabase);
    }
    Ok(settings.validate()?)
}

/// `pgpulse migrate [--status]`: the migrations, then one line per trade table tuned or skipped.
pub async fn migrate(
    target: &crate::db::DatabaseTarget,
    tables: &crate::db::trade_tables::TradeTables,
    status: bool,
) -> Result<(), CliError> {
    let mut client = crate::db::connect(target).await?;
    if status {
        for s in crate::db::migrate::status(&client).await? {
            match s.applied_at {
                Some(at) => println!(
                    "applied  V{:03} {}  {at}",
                    s.migration.version, s.migration.name
                ),
                None => println!("pending  V{:03} {}", s.migration.version, s.migration.name),
            }
        }
        return Ok(());
    }
    let (applied, tuning) = crate::db::migrate::migrate_with(&mut client, tables).await?;
    for m in &applied {
        println!("applied V{:03} {}", m.version, m.name);
    }
    if applied.is_empty() {
        println!("nothing to apply: the monitoring schema is up to date");
    }
    for line in &tuning {
        println!("{line}");
    }
    Ok(())
}

/// `pgpulse uninstall`.
pub async fn uninstall(target: &crate::db::DatabaseTarget) -> Result<(), CliError> {
    let mut client = crate::db::connect(target).await?;
    if crate::db::uninstall::uninstall(&mut client).await? {
        println!(
            "removed the monitoring schema, its roles and autovacuum settings; trade data untouched"
        );
    } else {
        println!("nothing to remove: the monitoring schema is not installed");
    }
    Ok(())
}

/// `pgpulse maintain [--run-now JOB]`.
pub async fn maintain(
    target: &crate::db::DatabaseTarget,
    settings: &crate::maintenance::MaintenanceSettings,
    run_now: Option<String>,
) -> Result<(), CliError> {
    if let Some(job) = run_now {
        let client = crate::db::connect(target).await?;
        crate::maintenance::prepare_session(&client, settings).await?;
        let known = crate::maintenance::job_names(&client).await?;
        if !known.contains(&job) {
            return Err(CliError::UnknownJob {
                job,
                known: known.join(", "),
            });
        }
        let o = crate::maintenance::run_job(&client, &job).await?;
        println!(
            "job {job}: {} (log id {}, {} client statements, {} failed){}",
            o.status,
            o.log_id,
            o.client_statements,
            o.client_failures,
            o.error.map(|e| format!(": {e}")).unwrap_or_default()
        );
        return if o.status == "success" && o.client_failures == 0 {
            Ok(())
        } else {
            Err(CliError::JobFailed { job })
        };
    }
    // The runner stops through its token at SIGTERM/SIGINT, finishing the statement in flight.
    let stop = tokio_util::sync::CancellationToken::new();
    let runner = crate::maintenance::serve(target, settings, stop.clone());
    tokio::pin!(runner);
    tokio::select! {
        () = &mut runner => {}
        () = crate::shutdown::signal() => {
            stop.cancel();
            runner.await;
        }
    }
    Ok(())
}

/// `pgpulse verify`: prints one line per check, then one per trade table of the configuration
/// (found, missing, wrong shape: information, never a failure) and one per role that can alter
/// them (with or without a `lock_timeout`: a warning), and one on the log threshold the key
/// queries' SLOs need (`SLO`); fails when a check FAILs.
pub async fn verify(
    target: &crate::db::DatabaseTarget,
    tables: &crate::db::trade_tables::TradeTables,
    plans: Option<&crate::plans::GuardConfig>,
) -> Result<(), CliError> {
    let mut client = crate::db::connect(target).await?;
    let checks = crate::db::verify::verify(&mut client).await;
    let mut mapping = crate::db::verify::trade_tables(&client, tables).await;
    mapping.extend(crate::db::verify::lock_timeouts(&client, tables).await);
    let targets: Vec<_> = plans
        .iter()
        .flat_map(|p| p.plans.queries.iter())
        .filter_map(|q| q.target.map(|t| (q.name.clone(), t)))
        .collect();
    mapping.extend(crate::db::verify::key_query_log(&client, &targets).await);
    let mut failed = 0;
    for c in &checks {
        println!("{c}");
        if c.outcome == crate::db::verify::Outcome::Fail {
            failed += 1;
        }
    }
    for line in &mapping {
        println!("{line}");
    }
    if failed > 0 {
        Err(CliError::VerifyFailed { failed })
    } else {
        Ok(())
    }
}
