//! The command line: clap definitions and the commands besides `serve`'s service loop.
//! Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.

pub mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::LogFormat;

/// pgpulse: PostgreSQL exporter and monitoring schema for a trading engine.
#[derive(Debug, Parser)]
#[command(name = "pgpulse", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, env = "PGPULSE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Config file (YAML).
    #[arg(long, global = true, env = "PGPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Database selection shared by the commands that connect.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/db.
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
        /// host:port to listen on.
        #[arg(long)]
        listen_address: Option<String>,
        /// The metric catalog.
        #[arg(long)]
        queries: Option<PathBuf>,
        /// Web configuration file (TLS, basic auth, headers) in the Prometheus exporter
        /// toolkit format.
        #[arg(long = "web.config.file", value_name = "FILE")]
        web_config_file: Option<PathBuf>,
    },
    /// Validate the configuration and queries.yaml; exit 0 or 2.
    CheckConfig {
        /// Database (optional; not contacted).
        #[command(flatten)]
        db: DbArgs,
        /// The metric catalog.
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
        /// Run this job once now and exit, instead of following the schedule.
        #[arg(long, value_name = "JOB")]
        run_now: Option<String>,
    },
    /// Start a throwaway PostgreSQL with a synthetic trade workload and serve its metrics.
    Demo(crate::demo::DemoArgs),
    /// Print the metric catalog.
    Catalog {
        /// As the Markdown metrics reference (docs/metrics.md).
        #[arg(long)]
        markdown: bool,
        /// The metric catalog.
        #[arg(long, default_value = "queries.yaml")]
        queries: PathBuf,
    },
}

/// A command's failure and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration or usage: exit 2.
    #[error("{0}")]
    Config(String),
    /// A runtime failure: exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 2,
            Self::Runtime(_) => 1,
        }
    }
}

impl From<crate::db::ConnectError> for CliError {
    fn from(e: crate::db::ConnectError) -> Self {
        match e {
            crate::db::ConnectError::InvalidUrl(_) | crate::db::ConnectError::Tls(_) => {
                Self::Config(e.to_string())
            }
            crate::db::ConnectError::Unreachable { .. } => Self::Runtime(e.to_string()),
        }
    }
}

/// The database target of a command: `--database-url`, else the config's database.
pub fn target(
    cli_config: Option<&std::path::Path>,
    db: &DbArgs,
) -> Result<crate::db::DatabaseTarget, CliError> {
    let overrides = crate::config::CliOverrides {
        database_url: db.database_url.clone(),
        ..Default::default()
    };
    let settings = crate::config::load(cli_config, true, &overrides)
        .map_err(|e| CliError::Config(e.to_string()))?;
    if settings.database.url.is_none()
        && settings.database.url_file.is_none()
        && settings.database.host.is_none()
    {
        return Err(CliError::Config(
            "no database given: pass --database-url or set PGPULSE_DATABASE_URL".to_owned(),
        ));
    }
    let config = settings
        .validate()
        .map_err(|e| CliError::Config(e.to_string()))?;
    Ok(config.target)
}

/// `pgpulse migrate [--status]`.
pub async fn migrate(target: &crate::db::DatabaseTarget, status: bool) -> Result<(), CliError> {
    let mut client = crate::db::connect(target).await?;
    let rt = |e: crate::db::migrate::MigrateError| CliError::Runtime(e.to_string());
    if status {
        for s in crate::db::migrate::status(&client).await.map_err(rt)? {
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
    let applied = crate::db::migrate::migrate(&mut client).await.map_err(rt)?;
    for m in &applied {
        println!("applied V{:03} {}", m.version, m.name);
    }
    if applied.is_empty() {
        println!("nothing to apply: the monitoring schema is up to date");
    }
    Ok(())
}

/// `pgpulse uninstall`.
pub async fn uninstall(target: &crate::db::DatabaseTarget) -> Result<(), CliError> {
    let mut client = crate::db::connect(target).await?;
    match crate::db::uninstall::uninstall(&mut client).await {
        Ok(true) => {
            println!(
                "removed the monitoring schema, its roles and autovacuum settings; trade data untouched"
            );
            Ok(())
        }
        Ok(false) => {
            println!("nothing to remove: the monitoring schema is not installed");
            Ok(())
        }
        Err(e) => Err(CliError::Runtime(e.to_string())),
    }
}

/// `pgpulse maintain [--run-now JOB]`.
pub async fn maintain(
    target: &crate::db::DatabaseTarget,
    run_now: Option<String>,
) -> Result<(), CliError> {
    let client = crate::db::connect(target).await?;
    let rt = |e: crate::maintenance::MaintenanceError| CliError::Runtime(e.to_string());
    if let Some(job) = run_now {
        let o = crate::maintenance::run_job(&client, &job)
            .await
            .map_err(rt)?;
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
            Err(CliError::Runtime(format!("job {job} did not succeed")))
        };
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        serve::shutdown_signal().await;
        s.cancel();
    });
    crate::maintenance::run(&client, stop).await.map_err(rt)
}

/// `pgpulse verify`: prints one line per check; fails when a check FAILs.
pub async fn verify(target: &crate::db::DatabaseTarget) -> Result<(), CliError> {
    let mut client = crate::db::connect(target).await?;
    let checks = crate::db::verify::verify(&mut client).await;
    let mut failed = 0;
    for c in &checks {
        println!("{c}");
        if c.outcome == crate::db::verify::Outcome::Fail {
            failed += 1;
        }
    }
    if failed > 0 {
        Err(CliError::Runtime(format!("{failed} check(s) failed")))
    } else {
        Ok(())
    }
}
