//! The metric catalog: the `queries.yaml` model, its parsing with serde-saphyr and its
//! validation into [`Catalog`], the immutable list of [`QuerySpec`]s the sampler runs.
//!
//! Every error names the file, line and column, the query and what is wrong, e.g.
//! `queries.yaml:12:7: query "cache": metric name "pg cache" is not a valid Prometheus name`.

pub(crate) mod derive;
mod model;
mod validate;

pub use derive::Derive;
pub use model::{
    Accumulate, Binds, HistogramSpec, MetricKind, MetricSpec, QuerySpec, Role, Scope, Signal,
};
pub use validate::{Invalid, Loc, Problem, is_label_name, is_metric_name};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The built-in catalog (the shipped `queries.yaml`), embedded so the binary works without a
/// catalog file next to it.
pub const BUILTIN: &str = include_str!("../../queries.yaml");

/// Where a catalog comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file, read again on reload.
    File(PathBuf),
    /// The catalog embedded in the binary.
    Builtin,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Builtin => f.write_str("queries.yaml (built in)"),
        }
    }
}

/// A catalog error, ready to print: every variant names the file, and where it can, the
/// line, column, query and key.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("{source_name}: cannot read: {error}")]
    Read {
        /// Where the catalog comes from (a file or the built-in catalog).
        source_name: Source,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The file is not valid YAML for the catalog (syntax, unknown key, wrong type).
    #[error("{source_name}:{line}:{column}: {message}")]
    Syntax {
        /// Where the catalog comes from (a file or the built-in catalog).
        source_name: Source,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// The parser's message.
        message: String,
    },
    /// An entry breaks a rule of the catalog.
    #[error("{source_name}:{}:{}: {}{}", invalid.at.0, invalid.at.1, query_prefix(invalid.query.as_deref()), invalid.problem)]
    Invalid {
        /// Where the catalog comes from (a file or the built-in catalog).
        source_name: Source,
        /// Where, which query and what is wrong.
        invalid: Box<Invalid>,
    },
}

fn query_prefix(query: Option<&str>) -> String {
    query
        .map(|q| format!("query \"{q}\": "))
        .unwrap_or_default()
}

/// The validated, immutable metric catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The queries, in file order.
    pub queries: Vec<Arc<QuerySpec>>,
    /// The query whose rows `/health/db` serves, when the catalog names one.
    pub health_query: Option<String>,
    /// Where it came from.
    pub source: Source,
}

/// Defaults applied to queries that leave a setting out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// Interval of queries that set none.
    pub interval: Duration,
    /// Timeout of queries that set none.
    pub timeout: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Catalog {
    /// Reads and validates a catalog file.
    pub fn load(path: &Path, defaults: Defaults) -> Result<Self, CatalogError> {
        let source = Source::File(path.to_owned());
        let text = std::fs::read_to_string(path).map_err(|error| CatalogError::Read {
            source_name: source.clone(),
            error,
        })?;
        Self::parse_from(&text, source, defaults)
    }

    /// The built-in catalog.
    pub fn builtin(defaults: Defaults) -> Result<Self, CatalogError> {
        Self::parse_from(BUILTIN, Source::Builtin, defaults)
    }

    /// Loads `source`: the file, or the built-in catalog.
    pub fn from_source(source: &Source, defaults: Defaults) -> Result<Self, CatalogError> {
        match source {
            Source::File(p) => Self::load(p, defaults),
            Source::Builtin => Self::builtin(defaults),
        }
    }

    /// Parses and validates catalog text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path, defaults: Defaults) -> Result<Self, CatalogError> {
        Self::parse_from(text, Source::File(path.to_owned()), defaults)
    }

    fn parse_from(text: &str, source: Source, defaults: Defaults) -> Result<Self, CatalogError> {
        let raw: model::RawCatalog = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column, message) = crate::yaml::describe(text, &e);
            CatalogError::Syntax {
                source_name: source.clone(),
                line,
                column,
                message,
            }
        })?;
        let validated =
            validate::validate(raw, defaults).map_err(|invalid| CatalogError::Invalid {
                source_name: source.clone(),
                invalid: Box::new(invalid),
            })?;
        Ok(Self {
            queries: validated.queries.into_iter().map(Arc::new).collect(),
            health_query: validated.health_query,
            source,
        })
    }

    /// Every metric name the catalog can emit, with its query.
    pub fn metric_names(&self) -> impl Iterator<Item = (&QuerySpec, &MetricSpec)> {
        self.queries
            .iter()
            .flat_map(|q| q.metrics.iter().map(move |m| (q.as_ref(), m)))
    }
}

impl QuerySpec {
    /// Every column the spec reads from the result: labels, values, histogram inputs.
    pub fn columns(&self) -> Vec<&str> {
        let mut cols: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        cols.extend(self.metrics.iter().map(|m| m.column.as_str()));
        if let Some(h) = &self.histogram {
            cols.extend([
                h.key_column.as_str(),
                h.calls_column.as_str(),
                h.time_ms_column.as_str(),
            ]);
        }
        cols
    }
}

/// The Markdown metrics reference (docs/metrics.md), generated from the catalog.
pub fn markdown(catalog: &Catalog) -> String {
    use std::fmt::Write;
    let mut s = String::from(
        "# pgpulse metrics reference\n\nGenerated by `pgpulse catalog --markdown` from `queries.yaml`; do not edit.\n\n\
         ## The probe (every target, every 5 s)\n\n\
         | metric | type | unit | help |\n| --- | --- | --- | --- |\n\
         | `pg_up` | gauge |  | 1 when the last connection attempt got the server's answer in time, else 0. |\n\
         | `pg_server_version_num` | gauge |  | server_version_num (0 before the first connection). |\n\
         | `pg_server_in_recovery` | gauge |  | 1 on a standby (in recovery), 0 on a primary; absent until a probe reached the server. A promotion changes the value, never a series' identity. |\n\n",
    );
    for q in &catalog.queries {
        let _ = writeln!(s, "## Query `{}`\n\n{}\n", q.name, q.help.trim());
        let _ = writeln!(
            s,
            "Interval {}, timeout {}, series budget {}, labels: {}.\n",
            humantime::format_duration(q.interval),
            humantime::format_duration(q.timeout),
            q.max_series,
            if q.labels.is_empty() {
                "none".to_owned()
            } else {
                q.labels
                    .iter()
                    .map(|l| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        match q.role {
            Role::Primary => s.push_str("Runs only on a primary (not in recovery).\n\n"),
            Role::Replica => s.push_str("Runs only on a standby (in recovery).\n\n"),
            Role::Any => {}
        }
        if q.scope == Scope::Server {
            s.push_str(
                "Server-wide: in a fleet it runs through one target of each server (the first by name).\n\n",
            );
        }
        if q.signals.is_some() {
            s.push_str(
                "Signals lock waits: each run tells every database of its server whether a session waits for a lock.\n\n",
            );
        }
        if q.idle_without.is_some() {
            let _ = writeln!(
                s,
                "Idles while the server signals no lock wait since its last run, which found none: \
                 its last result stands (a run at least every {}, its expire_after).\n",
                humantime::format_duration(q.expire_after)
            );
        }
        if let Some(v) = q.min_server_version {
            let _ = writeln!(s, "Runs on server_version_num ≥ {v}.\n");
        }
        if let Some(v) = q.max_server_version {
            let _ = writeln!(s, "Runs on server_version_num ≤ {v}.\n");
        }
        if let Some(d) = q.derive {
            let _ = writeln!(
                s,
                "Derived by pgpulse (`derive: {}`) from the relation pass, one read of the relations \
                 per round shared with the other derived families (docs/operations.md).\n",
                d.name()
            );
        }
        if q.accumulate.is_some() {
            s.push_str(
                "Accumulated by pgpulse: each sample adds value × interval (seconds) to the counter.\n\n",
            );
        }
        if let Some(p) = &q.requires_preload {
            let _ = writeln!(s, "Requires `{p}` in `shared_preload_libraries`.\n");
        }
        metrics_table(q, &mut s);
        s.push('\n');
    }
    s
}

/// The metrics of `q` as a Markdown table (or the note that it has none).
fn metrics_table(q: &QuerySpec, s: &mut String) {
    use std::fmt::Write;
    if q.metrics.is_empty() && q.histogram.is_none() {
        s.push_str("No metrics: its rows are published for a JSON endpoint.\n");
        return;
    }
    let _ = writeln!(
        s,
        "| metric | type | unit | help |\n| --- | --- | --- | --- |"
    );
    for m in &q.metrics {
        let kind = match m.kind {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
        };
        let _ = writeln!(
            s,
            "| `{}` | {kind} | {} | {} |",
            m.name,
            m.unit.as_deref().unwrap_or(""),
            m.help.replace('|', "\\|")
        );
    }
    if let Some(h) = &q.histogram {
        let _ = writeln!(
            s,
            "| `{}` | histogram | seconds | {} |",
            h.name,
            h.help.replace('|', "\\|")
        );
    }
}

/// Hostile catalogs (fuzzed with proptest): any text, and the shipped catalog with one line
/// removed, duplicated or one byte changed, parses or fails with `file:line:col` or the query
/// named; it never panics.
#[cfg(test)]
mod hostile {
    use super::*;
    use proptest::prelude::*;

    const SHIPPED: &str = include_str!("../../queries.yaml");

    fn parse(text: &str) {
        if let Err(e) = Catalog::parse(text, "q.yaml".as_ref(), Defaults::default()) {
            assert!(e.to_string().contains("q.yaml"), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_parses_or_fails_with_the_file_named(text in "\\PC{0,400}") {
            parse(&text);
        }

        #[test]
        fn the_shipped_catalog_mutated_never_panics(
            line in 0usize..800,
            at in 0usize..40_000,
            byte in any::<u8>(),
        ) {
            let lines: Vec<&str> = SHIPPED.lines().collect();
            let n = lines.len().max(1);
            let removed: Vec<&str> = lines.iter().enumerate()
                .filter(|(i, _)| *i != line % n).map(|(_, l)| *l).collect();
            parse(&removed.join("\n"));
            let mut doubled = lines.clone();
            if let Some(l) = lines.get(line % n) {
                doubled.insert(line % n, l);
            }
            parse(&doubled.join("\n"));
            let mut changed = SHIPPED.as_bytes().to_vec();
            if let Some(b) = changed.get_mut(at % SHIPPED.len().max(1)) {
                *b = byte;
            }
            parse(&String::from_utf8_lossy(&changed));
        }
    }
}
