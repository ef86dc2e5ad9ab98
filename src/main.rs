//! The `pgpulse` binary: CLI → telemetry → config → command; exit codes 0 ok, 1 runtime
//! failure, 2 bad configuration or usage.

use std::process::ExitCode;

use clap::Parser;
use pgpulse::cli::{Cli, CliError, Command};
use pgpulse::config::LogFormat;

/// jemalloc instead of glibc's allocator: the relation pass allocates and frees a few
/// megabytes per round at 10,000 relations, between long-lived allocations, and glibc keeps
/// such freed memory in its per-thread arenas, so resident memory stayed at the peak;
/// jemalloc, with the options in `.cargo/config.toml`, returns freed pages to the operating
/// system at once (see BENCHMARKS.md, resident memory).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGPULSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: never ANSI codes in a file, pipe or journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    pgpulse::crypto::install_default_provider();
    // Flag or PGPULSE_LOG_FORMAT first, then the config file's `log_format`.
    let format = cli
        .log_format
        .or_else(|| {
            cli.config
                .as_deref()
                .and_then(pgpulse::config::peek_log_format)
        })
        .unwrap_or(LogFormat::Text);
    init_tracing(format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgpulse: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgpulse: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let config_file = cli.config.as_deref();
    match cli.command {
        Command::Serve {
            db,
            listen_address,
            queries,
            web_config_file,
        } => {
            let web = pgpulse::cli::serve::WebArgs {
                listen_address,
                web_config_file,
            };
            pgpulse::cli::serve::serve(config_file, cli.log_format, db, web, queries).await
        }
        Command::CheckConfig {
            db,
            queries,
            web_config_file,
        } => {
            let web = pgpulse::cli::serve::WebArgs {
                listen_address: None,
                web_config_file,
            };
            pgpulse::cli::serve::check_config(config_file, cli.log_format, db, web, queries).await
        }
        Command::Migrate { db, status } => {
            let config = pgpulse::cli::config_for(config_file, &db)?;
            pgpulse::cli::migrate(&config.target, &config.trade_tables, status).await
        }
        Command::Uninstall { db } => {
            let target = pgpulse::cli::target(config_file, &db)?;
            pgpulse::cli::uninstall(&target).await
        }
        Command::Verify { db } => {
            let config = pgpulse::cli::config_for(config_file, &db)?;
            pgpulse::cli::verify(&config.target, &config.trade_tables, config.plans.as_ref()).await
        }
        Command::Maintain { db, run_now } => {
            let config = pgpulse::cli::config_for(config_file, &db)?;
            pgpulse::cli::maintain(&config.target, &config.maintenance, run_now).await
        }
        Command::Demo(args) => Ok(pgpulse::demo::run(args).await?),
        Command::Explain(args) => pgpulse::cli::explain::explain(config_file, args).await,
        Command::Catalog { markdown, queries } => {
            pgpulse::cli::serve::print_catalog(queries.as_deref(), markdown)
        }
    }
}
