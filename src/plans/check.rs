//! Checking one key query on a connection: PREPARE it with its typed parameters, EXPLAIN its
//! generic plan (`plan_cache_mode = force_generic_plan`; PostgreSQL 15 has no
//! `EXPLAIN (GENERIC_PLAN)`), resolve the scanned relations and the expected indexes in the
//! catalog (partitioned tables and partitioned indexes to their leaves), and judge the plan.
//!
//! Everything runs in one transaction with `SET LOCAL statement_timeout` and `lock_timeout`:
//! `BEGIN READ ONLY … COMMIT` for plain EXPLAIN, `BEGIN … ROLLBACK` for EXPLAIN ANALYZE. A
//! prepared statement outlives a rollback, so after a failure the caller drops the connection
//! instead of reusing it.

use std::time::Duration;

use tokio_postgres::Client;

use super::PlanSpec;
use super::tree::{PlanTree, Scan};
use super::verdict::{self, Relation, ResolvedIndex, index_verdict};
pub(crate) use super::verdict::{IndexVerdict, Partitions};
use crate::db::trade_tables::{TableRef, describe, shapes};

/// The name of the prepared statement of a check.
const STATEMENT: &str = "pgpulse_plan_check";

/// Removes the check's prepared statement from a session where a failed check left it.
pub(crate) const DEALLOCATE: &str = "DEALLOCATE pgpulse_plan_check";

/// How a check explains its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `EXPLAIN (ANALYZE, BUFFERS)`: runs the query, in a transaction that is rolled back.
    Analyze,
    /// Plain `EXPLAIN`: plans only, in a read-only transaction.
    Plain,
}

/// What kind of failure a check met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The statement or lock timeout fired, or the server did not answer in time.
    Timeout,
    /// The server rejected a statement (a missing table, a permission, a type).
    Sql,
    /// No connection or the connection broke.
    Connection,
    /// The EXPLAIN output could not be read.
    Decode,
}

impl FailureKind {
    /// The label value (`pgpulse_plan_check_errors_total{kind}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Sql => "sql",
            Self::Connection => "connection",
            Self::Decode => "decode",
        }
    }
}

/// A check that could not run to its end.
#[derive(Debug, Clone, thiserror::Error)]
#[error("query \"{query}\": {message}")]
pub struct CheckError {
    /// The key query.
    pub query: String,
    /// What kind of failure.
    pub kind: FailureKind,
    /// One line, no secrets.
    pub message: String,
}

/// The judged plan of one key query.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The query's spec.
    pub spec: std::sync::Arc<PlanSpec>,
    /// The plan as read.
    pub tree: PlanTree,
    /// One verdict per expected index.
    pub indexes: Vec<IndexVerdict>,
    /// Partitions, when the plan reads a partitioned table.
    pub partitions: Option<Partitions>,
}

impl Outcome {
    /// Whether every expected index is used (true when none is expected).
    pub fn index_ok(&self) -> bool {
        self.indexes.iter().all(|i| i.used)
    }

    /// Whether the plan scans at most `max_partitions` (true when none is expected).
    pub fn partitions_ok(&self) -> bool {
        match (self.spec.max_partitions, &self.partitions) {
            (Some(max), Some(p)) => p.scanned <= u64::from(max),
            _ => true,
        }
    }

    /// Planning plus execution time in milliseconds, when measured (ANALYZE).
    pub fn latency_ms(&self) -> Option<f64> {
        self.tree
            .execution_ms
            .map(|e| e + self.tree.planning_ms.unwrap_or(0.0))
    }

    /// Whether the latency target was met; `None` without a target or a measurement.
    pub fn latency_ok(&self) -> Option<bool> {
        let target = self.spec.target?.as_secs_f64() * 1000.0;
        self.latency_ms().map(|l| l <= target)
    }

    /// Every check passed.
    pub fn passed(&self) -> bool {
        self.index_ok() && self.partitions_ok() && self.latency_ok() != Some(false)
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// The batch that prepares and explains `spec`; its only result set is the plan.
pub(crate) fn batch(spec: &PlanSpec, mode: Mode, lock_timeout: Duration) -> String {
    let begin = match mode {
        Mode::Analyze => "BEGIN",
        Mode::Plain => "BEGIN READ ONLY",
    };
    let options = match mode {
        Mode::Analyze => "ANALYZE, BUFFERS, VERBOSE, FORMAT JSON",
        Mode::Plain => "VERBOSE, SUMMARY, FORMAT JSON",
    };
    let (types, args) = if spec.params.is_empty() {
        (String::new(), String::new())
    } else {
        let types: Vec<&str> = spec.params.iter().map(|p| p.ty.as_str()).collect();
        let args: Vec<String> = spec.params.iter().map(|p| p.sql()).collect();
        (
            format!("({})", types.join(", ")),
            format!("({})", args.join(", ")),
        )
    };
    // The newline before `;` keeps a trailing `--` comment of the SQL from swallowing it.
    format!(
        "{begin}; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}; \
         SET LOCAL plan_cache_mode = force_generic_plan; \
         PREPARE {STATEMENT}{types} AS {}\n; EXPLAIN ({options}) EXECUTE {STATEMENT}{args}; \
         DEALLOCATE {STATEMENT}",
        millis(spec.timeout),
        millis(lock_timeout.min(spec.timeout)),
        spec.sql
    )
}

/// Scanned relations: their root table, whether it is partitioned (and its leaf count), size.
const RELATIONS_SQL: &str = "\
SELECT s.i::int, r.oid::regclass::text, r.relkind = 'p', \
       CASE WHEN r.relkind = 'p' THEN (SELECT count(*) FROM pg_partition_tree(r.oid) WHERE isleaf) END, \
       pg_relation_size(c.oid) / current_setting('block_size')::bigint \
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS s(nsp, rel, i) \
JOIN pg_class c ON c.oid = to_regclass(CASE WHEN s.nsp IS NULL THEN quote_ident(s.rel) \
                                            ELSE format('%I.%I', s.nsp, s.rel) END) \
JOIN pg_class r ON r.oid = coalesce(pg_partition_root(c.oid), c.oid)";

/// Expected indexes (an unqualified name looked up in the schemas of the query's trade tables
/// first, `$2`, then on the search path): whether each exists, its table's root, and every index of its partition
/// tree as `schema.name`.
const INDEXES_SQL: &str = "\
SELECT e.i::int, x.oid IS NOT NULL, coalesce(x.relkind IN ('i', 'I'), false), \
       (SELECT coalesce(pg_partition_root(ix.indrelid), ix.indrelid)::regclass::text \
          FROM pg_index ix WHERE ix.indexrelid = x.oid), \
       ARRAY(SELECT n.nspname || '.' || c.relname \
               FROM (SELECT x.oid AS relid UNION SELECT relid FROM pg_partition_tree(x.oid)) t \
               JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace) \
FROM unnest($1::text[]) WITH ORDINALITY AS e(name, i) \
LEFT JOIN pg_class x ON x.oid = coalesce( \
    (SELECT r FROM (SELECT to_regclass(format('%I.%I', s.nsp, e.name)) AS r, s.o \
                      FROM unnest($2::text[]) WITH ORDINALITY AS s(nsp, o) \
                     WHERE strpos(e.name, '.') = 0) q \
      WHERE r IS NOT NULL ORDER BY o LIMIT 1), \
    to_regclass(e.name))";

/// Why each of `specs` does not apply to the database (`None`: it applies): a trade table it
/// names is missing or of another shape. One catalog query in a read-only transaction with the
/// timeouts of the first spec.
pub(crate) async fn applicability(
    client: &Client,
    specs: &[std::sync::Arc<PlanSpec>],
    lock_timeout: Duration,
) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
    let tables: Vec<&TableRef> = specs
        .iter()
        .flat_map(|s| s.tables.iter().map(|(_, t)| t))
        .collect();
    if tables.is_empty() {
        return Ok(vec![None; specs.len()]);
    }
    let timeout = specs
        .first()
        .map_or(super::model::DEFAULT_TIMEOUT, |s| s.timeout);
    client
        .batch_execute(&format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
            millis(timeout),
            millis(lock_timeout.min(timeout))
        ))
        .await?;
    let found = shapes(client, &tables).await;
    let end = client
        .batch_execute(if found.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await;
    let (found, ()) = (found?, end?);
    let mut shapes = found.iter();
    Ok(specs
        .iter()
        .map(|s| {
            let why: Vec<String> = s
                .tables
                .iter()
                .zip(shapes.by_ref())
                .filter(|(_, shape)| !shape.is_found())
                .map(|((role, t), shape)| describe(*role, t, shape))
                .collect();
            (!why.is_empty()).then(|| why.join("; "))
        })
        .collect())
}

fn fail(spec: &PlanSpec, e: &tokio_postgres::Error) -> CheckError {
    use crate::db::outcome::{ErrorKind, classify};
    let kind = match classify(e).kind {
        ErrorKind::Timeout => FailureKind::Timeout,
        ErrorKind::Connection | ErrorKind::Pool => FailureKind::Connection,
        ErrorKind::Unavailable | ErrorKind::Sql | ErrorKind::Decode => FailureKind::Sql,
    };
    CheckError {
        query: spec.name.clone(),
        kind,
        message: crate::db::outcome::describe(e),
    }
}

/// How long a check waits for the server's answer: the server enforces the timeouts, this
/// only catches a dead network.
pub(crate) fn guard(timeout: Duration) -> Duration {
    timeout * 3 + Duration::from_secs(5)
}

/// Explains `spec` on `client` and judges its plan. On an error the connection may hold an
/// aborted transaction and the prepared statement: drop it.
pub(crate) async fn run(
    client: &Client,
    spec: &std::sync::Arc<PlanSpec>,
    mode: Mode,
    lock_timeout: Duration,
) -> Result<Outcome, CheckError> {
    // The server enforces the timeouts; this guard only catches a dead network.
    let guard = guard(spec.timeout);
    match tokio::time::timeout(guard, run_inner(client, spec, mode, lock_timeout)).await {
        Ok(r) => r,
        Err(_) => Err(CheckError {
            query: spec.name.clone(),
            kind: FailureKind::Timeout,
            message: format!("no answer within {}s", guard.as_secs()),
        }),
    }
}

async fn run_inner(
    client: &Client,
    spec: &std::sync::Arc<PlanSpec>,
    mode: Mode,
    lock_timeout: Duration,
) -> Result<Outcome, CheckError> {
    let messages = client
        .simple_query(&batch(spec, mode, lock_timeout))
        .await
        .map_err(|e| fail(spec, &e))?;
    let json = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .ok_or_else(|| CheckError {
            query: spec.name.clone(),
            kind: FailureKind::Decode,
            message: "EXPLAIN returned no row".to_owned(),
        })?;
    let tree = PlanTree::parse(json).map_err(|e| CheckError {
        query: spec.name.clone(),
        kind: FailureKind::Decode,
        message: e.to_string(),
    })?;
    let outcome = judge(client, spec, tree).await;
    let end = match mode {
        Mode::Analyze => "ROLLBACK",
        Mode::Plain => "COMMIT",
    };
    client
        .batch_execute(end)
        .await
        .map_err(|e| fail(spec, &e))?;
    outcome
}

async fn judge(
    client: &Client,
    spec: &std::sync::Arc<PlanSpec>,
    tree: PlanTree,
) -> Result<Outcome, CheckError> {
    let rels = tree.relations();
    let nsps: Vec<Option<String>> = rels.iter().map(|r| r.0.clone()).collect();
    let names: Vec<String> = rels.iter().map(|r| r.1.clone()).collect();
    let mut found: Vec<Option<Relation>> = vec![None; rels.len()];
    for row in client
        .query(RELATIONS_SQL, &[&nsps, &names])
        .await
        .map_err(|e| fail(spec, &e))?
    {
        let i = (row.get::<_, i32>(0) as usize).wrapping_sub(1);
        if let Some(slot) = found.get_mut(i) {
            *slot = Some(Relation {
                root: row.get(1),
                partitioned: row.get(2),
                leaves: row.get::<_, Option<i64>>(3).unwrap_or(0),
                pages: row.get(4),
            });
        }
    }
    let relation_of = |s: &Scan| {
        rels.iter()
            .position(|r| r.0 == s.schema && r.1 == s.relation)
            .and_then(|i| found.get(i).cloned().flatten())
    };
    let mut indexes = Vec::new();
    if !spec.indexes.is_empty() {
        let schemas: Vec<&str> = spec.tables.iter().map(|(_, t)| t.schema.as_str()).collect();
        let rows = client
            .query(INDEXES_SQL, &[&spec.indexes, &schemas])
            .await
            .map_err(|e| fail(spec, &e))?;
        for (n, index) in spec.indexes.iter().enumerate() {
            let resolved = rows
                .iter()
                .find(|r| r.get::<_, i32>(0) as usize == n + 1 && r.get::<_, bool>(1))
                .map(|r| ResolvedIndex {
                    is_index: r.get(2),
                    table: r.get::<_, Option<String>>(3).unwrap_or_default(),
                    members: r.get(4),
                });
            indexes.push(index_verdict(
                index,
                resolved.as_ref(),
                &tree.scans,
                relation_of,
            ));
        }
    }
    let partitions = verdict::partitions(found.iter().flatten(), tree.subplans_removed);
    Ok(Outcome {
        spec: spec.clone(),
        tree,
        indexes,
        partitions,
    })
}
