//! `pgpulse explain`: every key query of the plans file, explained on the database and judged;
//! one line per query (or `--format json`). Exit code 0 when every check passes, 1 when one
//! fails or cannot run, 2 on a bad plans file or configuration. A query whose trade tables
//! (`trade_tables:`) are missing or of another shape is "not applicable" (`N/A`), not a
//! failure: on a database without trade tables explain says so and exits 0.
//!
//! By default each query runs under `EXPLAIN (ANALYZE, BUFFERS)` inside a transaction that is
//! rolled back; `--no-analyze` sends plain EXPLAIN in a read-only transaction (for production:
//! nothing is executed, and no latency is measured).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{CliError, DbArgs};
use crate::plans::PlanSet;
use crate::plans::check::{self, CheckError, Mode, Outcome};

/// Output formats of `pgpulse explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// One line per query.
    #[default]
    Text,
    /// A JSON array, one object per query.
    Json,
}

/// Arguments of `pgpulse explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// The key queries [default: plans.file of the config file, else the built-in plans.yaml].
    #[arg(long)]
    pub plans: Option<PathBuf>,
    /// Plain EXPLAIN only: nothing is executed (for production); no latency is measured.
    #[arg(long)]
    pub no_analyze: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
    /// Only this query (repeatable).
    #[arg(long = "query", value_name = "NAME")]
    pub queries: Vec<String>,
}

/// Runs `pgpulse explain`.
pub async fn explain(config_file: Option<&Path>, args: ExplainArgs) -> Result<(), CliError> {
    let overrides = crate::config::CliOverrides {
        database_url: args.db.database_url.clone(),
        ..Default::default()
    };
    let mut settings = crate::config::load(config_file, true, &overrides)?;
    if let Some(p) = &args.plans {
        settings.plans.file = Some(p.clone());
    }
    settings
        .trade_tables
        .validate()
        .map_err(|(key, reason)| crate::config::ConfigError::TradeTable { key, reason })?;
    let plans = PlanSet::load_or_default(settings.plans.file.as_deref(), &settings.trade_tables)
        .map_err(crate::config::ConfigError::from)?
        .select(&args.queries)
        .map_err(|problem| CliError::UnknownPlanQuery { problem })?;
    if settings.database.url.is_none() && settings.database.host.is_none() {
        return Err(CliError::NoDatabase);
    }
    let config = settings.validate()?;
    let mode = if args.no_analyze {
        Mode::Plain
    } else {
        Mode::Analyze
    };
    let results = run_all(&config.target, &plans, mode, config.lock_timeout).await?;
    print(&results, args.format);
    let failed: Vec<&str> = results
        .iter()
        .filter_map(|r| match r {
            Explained::Ran(Ok(o)) if o.passed() => None,
            Explained::Ran(Ok(o)) => Some(o.spec.name.as_str()),
            Explained::Ran(Err(e)) => Some(e.query.as_str()),
            Explained::NotApplicable { .. } => None,
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::PlanCheckFailed {
            failed: failed.len(),
            total: results.len(),
            queries: failed.join(", "),
        })
    }
}

/// One key query's result in `explain`.
#[derive(Debug)]
pub enum Explained {
    /// It was explained (or its check could not run).
    Ran(Result<Outcome, CheckError>),
    /// A trade table it reads is missing or of another shape: not explained.
    NotApplicable {
        /// The key query.
        query: String,
        /// Which table, and how it differs from the configuration.
        reason: String,
    },
}

fn print(results: &[Explained], format: OutputFormat) {
    match format {
        OutputFormat::Text => {
            for r in results {
                match r {
                    Explained::Ran(r) => println!("{}", line(r)),
                    Explained::NotApplicable { query, reason } => {
                        println!("N/A   {query}: not applicable: {reason}")
                    }
                }
            }
            if results
                .iter()
                .all(|r| matches!(r, Explained::NotApplicable { .. }))
            {
                println!(
                    "no key query applies to this database: its trade tables are missing or of \
                     another shape (set trade_tables in the configuration where they live elsewhere)"
                );
            }
        }
        OutputFormat::Json => {
            let all: Vec<Value> = results
                .iter()
                .map(|r| match r {
                    Explained::Ran(r) => to_json(r),
                    Explained::NotApplicable { query, reason } => json!({
                        "query": query, "status": "not_applicable", "reason": reason,
                    }),
                })
                .collect();
            println!("{}", Value::Array(all));
        }
    }
}

/// Explains every applicable query of `plans` on one connection (a new one after a failure).
pub async fn run_all(
    target: &crate::db::DatabaseTarget,
    plans: &PlanSet,
    mode: Mode,
    lock_timeout: std::time::Duration,
) -> Result<Vec<Explained>, CliError> {
    let mut results = Vec::new();
    let first = crate::db::connect(target).await?;
    // Unreadable: every query is tried, and its own error tells why.
    let why = check::applicability(&first, &plans.queries, lock_timeout)
        .await
        .unwrap_or_else(|_| vec![None; plans.queries.len()]);
    let mut client = Some(first);
    for (spec, why) in plans.queries.iter().zip(why) {
        if let Some(reason) = why {
            let query = spec.name.clone();
            results.push(Explained::NotApplicable { query, reason });
            continue;
        }
        let c = match client.take() {
            Some(c) => c,
            None => crate::db::connect(target).await?,
        };
        let r = check::run(&c, spec, mode, lock_timeout).await;
        if r.is_ok() {
            // A failed check may leave the prepared statement behind: start afresh.
            client = Some(c);
        }
        results.push(Explained::Ran(r));
    }
    Ok(results)
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// The text line of one query's result.
pub fn line(r: &Result<Outcome, CheckError>) -> String {
    let o = match r {
        Ok(o) => o,
        Err(e) => {
            return format!("ERROR {}: {}: {}", e.query, e.kind.as_str(), e.message);
        }
    };
    let mut parts = Vec::new();
    for i in &o.indexes {
        parts.push(match (&i.changed, &i.reason) {
            (Some(c), _) => format!("index {} NOT USED, plan has {c}", i.index),
            (None, Some(r)) => format!("index {} NOT USED: {r}", i.index),
            (None, None) => format!("index {} used", i.index),
        });
    }
    if let Some(p) = &o.partitions {
        let mut s = format!("partitions {} of {}", p.scanned, p.total);
        if let Some(max) = o.spec.max_partitions {
            s.push_str(&format!(
                " (max {max}{})",
                if o.partitions_ok() { "" } else { ", EXCEEDED" }
            ));
        }
        if p.removed_at_startup > 0 {
            s.push_str(&format!(
                ", {} removed at executor startup",
                p.removed_at_startup
            ));
        }
        parts.push(s);
    } else if let Some(max) = o.spec.max_partitions {
        parts.push(format!("no partitioned table scanned (max {max})"));
    }
    let mut time = Vec::new();
    if let Some(p) = o.tree.planning_ms {
        time.push(format!("planning {}", ms(p)));
    }
    if let Some(e) = o.tree.execution_ms {
        time.push(format!("execution {}", ms(e)));
    }
    if let Some(t) = o.spec.target {
        let target = ms(t.as_secs_f64() * 1000.0);
        time.push(match o.latency_ok() {
            Some(true) => format!("target {target} met"),
            Some(false) => format!("target {target} MISSED"),
            None => format!("target {target} not measured"),
        });
    }
    if !time.is_empty() {
        parts.push(time.join(", "));
    }
    parts.push(format!("cost {:.2}", o.tree.total_cost));
    if let Some(id) = o.tree.query_id {
        parts.push(format!("query_id {id}"));
    }
    let status = if o.passed() { "PASS " } else { "FAIL " };
    format!("{status} {}: {}", o.spec.name, parts.join("; "))
}

/// The JSON object of one query's result.
pub fn to_json(r: &Result<Outcome, CheckError>) -> Value {
    let o = match r {
        Ok(o) => o,
        Err(e) => {
            return json!({
                "query": e.query, "status": "error", "kind": e.kind.as_str(), "error": e.message,
            });
        }
    };
    let scans: Vec<String> = o.tree.scans.iter().map(ToString::to_string).collect();
    json!({
        "query": o.spec.name,
        "status": if o.passed() { "pass" } else { "fail" },
        "indexes": o.indexes,
        "index_ok": o.index_ok(),
        "partitions": o.partitions,
        "max_partitions": o.spec.max_partitions,
        "partitions_ok": o.partitions_ok(),
        "planning_ms": o.tree.planning_ms,
        "execution_ms": o.tree.execution_ms,
        "target_ms": o.spec.target.map(|t| t.as_secs_f64() * 1000.0),
        "latency_ok": o.latency_ok(),
        "estimated_cost": o.tree.total_cost,
        "query_id": o.tree.query_id,
        "scans": scans,
    })
}
