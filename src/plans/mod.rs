//! The plan guard: the specification's key queries (`plans.yaml`), the analysis of their
//! PostgreSQL plans, the `pgpulse explain` command and the check `serve` runs on a slow
//! interval.
//!
//! - [`model`]: the file's model and validation; [`PlanSet::load`] gives `file:line:col`
//!   errors like the metric catalog.
//! - [`tree`]: the JSON plan tree (`EXPLAIN (FORMAT JSON)`) → scans, indexes, partitions.
//! - [`verdict`]: the rules: expected index used (or the node that changed), partitions.
//! - [`check`]: running one key query's EXPLAIN on a connection and judging the plan.
//! - [`command`]: `pgpulse explain`.
//! - [`guard`]: [`guard::PlanGuard`], the `pg_plan_*` metrics and their loop in `serve`.
//! - [`slo`]: the key queries' identifiers ([`slo::KeyQueryIds`]) and their SLO gauges.
//!
//! Every statement runs inside a transaction with `SET LOCAL statement_timeout` and
//! `lock_timeout`; `serve` only ever sends plain EXPLAIN in a read-only transaction.

pub(crate) mod check;
pub mod guard;
pub(crate) mod model;
pub mod slo;
pub(crate) mod tree;
pub(crate) mod verdict;

pub use model::{Param, ParamValue, PlanSpec};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::db::trade_tables::TradeTables;

/// Labels naming a key query: the series of the plan guard and of the key queries' SLOs.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct PlanLabel {
    /// The key query's name.
    pub query: String,
}

impl PlanLabel {
    /// The label of the key query `query`.
    pub fn of(query: &str) -> Self {
        Self {
            query: query.to_owned(),
        }
    }
}

/// The default key queries, embedded so the binary works without a plans.yaml next to it.
pub const DEFAULT_PLANS: &str = include_str!("../../plans.yaml");

/// The name under which the embedded default appears in messages.
pub const BUILT_IN: &str = "plans.yaml (built in)";

/// A plans file error, ready to print: `file:line:column: message`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PlansError {
    /// The file that could not be used.
    pub file: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// What is wrong, naming the query and key.
    pub message: String,
}

/// The validated, immutable set of key queries.
#[derive(Debug, Clone)]
pub struct PlanSet {
    /// The key queries, in file order.
    pub queries: Vec<Arc<PlanSpec>>,
    /// Where they came from.
    pub source: PathBuf,
}

impl PlanSet {
    /// Reads and validates a plans file, its placeholders naming the reference schema.
    pub fn load(path: &Path) -> Result<Self, PlansError> {
        Self::load_with(path, &TradeTables::default())
    }

    /// Reads and validates a plans file, its placeholders naming `tables`.
    pub fn load_with(path: &Path, tables: &TradeTables) -> Result<Self, PlansError> {
        let text = std::fs::read_to_string(path).map_err(|e| PlansError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse_with(&text, path, tables)
    }

    /// The embedded default (`plans.yaml` of the repository) on the reference schema.
    pub fn built_in() -> Result<Self, PlansError> {
        Self::parse(DEFAULT_PLANS, Path::new(BUILT_IN))
    }

    /// `path`, or the embedded default when `None`, its placeholders naming `tables`.
    pub fn load_or_default(path: Option<&Path>, tables: &TradeTables) -> Result<Self, PlansError> {
        match path {
            Some(p) => Self::load_with(p, tables),
            None => Self::parse_with(DEFAULT_PLANS, Path::new(BUILT_IN), tables),
        }
    }

    /// Parses and validates plans text on the reference schema; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PlansError> {
        Self::parse_with(text, path, &TradeTables::default())
    }

    /// Parses and validates plans text, its placeholders naming `tables`.
    pub fn parse_with(text: &str, path: &Path, tables: &TradeTables) -> Result<Self, PlansError> {
        let err = |line, column, message| PlansError {
            file: path.to_owned(),
            line,
            column,
            message,
        };
        let raw: model::RawPlans = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column, message) = crate::yaml::describe(text, &e);
            err(line, column, message)
        })?;
        let queries = model::validate(raw, tables)
            .map_err(|((line, column), message)| err(line, column, message))?;
        Ok(Self {
            queries: queries.into_iter().map(Arc::new).collect(),
            source: path.to_owned(),
        })
    }

    /// Only the queries named in `names` (all when empty); an unknown name is an error.
    pub fn select(&self, names: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return Ok(self.clone());
        }
        let mut queries = Vec::new();
        for n in names {
            match self.queries.iter().find(|q| &q.name == n) {
                Some(q) => queries.push(q.clone()),
                None => {
                    return Err(format!("{}: no query named \"{n}\"", self.source.display()));
                }
            }
        }
        Ok(Self {
            queries,
            source: self.source.clone(),
        })
    }
}

/// Settings of the running check, validated from the `plans` settings.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// The key queries.
    pub plans: Arc<PlanSet>,
    /// How often they are checked.
    pub interval: std::time::Duration,
}
