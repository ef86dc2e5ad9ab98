//! Running one query: a read-only transaction with `SET LOCAL statement_timeout` and
//! `lock_timeout`, sent as one simple-protocol batch (one round trip; values arrive as text
//! and are parsed here), then rows → series within the query's budget.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Object, Pool, PoolError, TimeoutType};
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;

use super::store::{QueryResult, Series};
use crate::catalog::QuerySpec;

/// The most rows a roll-up query may return (its series are budgeted after the roll-up).
pub const ROLLUP_ROW_LIMIT: usize = 200_000;

/// The kinds of failure counted in `pgpulse_query_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The statement or lock timeout fired (server side), or the client-side guard did.
    Timeout,
    /// No connection: the pool timed out or the database is unreachable.
    Connection,
    /// The server rejected the SQL.
    Sql,
    /// The rows did not fit the spec: a missing column, a non-numeric value.
    Decode,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 4] = [Self::Timeout, Self::Connection, Self::Sql, Self::Decode];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Sql => "sql",
            Self::Decode => "decode",
        }
    }
}

/// A failed run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct RunError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A one-line description (no secrets).
    pub message: String,
    /// The database may be unreachable (a connection failed or closed), as opposed to the
    /// pool's budget being busy: the probe should check.
    pub maybe_down: bool,
}

impl RunError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            maybe_down: kind == ErrorKind::Connection,
        }
    }
}

/// Counters of one successful run besides its series.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    /// Rows for the query's latency histogram, if it declares one.
    pub statements: Vec<super::latency::StatementSample>,
    /// NULL values met (series omitted).
    pub nulls: u64,
    /// Series dropped over the budget or as duplicates.
    pub dropped: u64,
}

fn classify(e: &tokio_postgres::Error) -> RunError {
    let msg = crate::db::connect::describe(e);
    match e.code() {
        Some(c) if *c == SqlState::QUERY_CANCELED || *c == SqlState::LOCK_NOT_AVAILABLE => {
            RunError::new(ErrorKind::Timeout, msg)
        }
        Some(_) => RunError::new(ErrorKind::Sql, msg),
        None => RunError::new(ErrorKind::Connection, msg),
    }
}

/// A pool failure as a counted error (connection kind; the reason says TLS or network).
pub(crate) fn pool_error(e: PoolError) -> RunError {
    let msg = match &e {
        PoolError::Backend(be) => crate::db::connect::describe(be),
        PoolError::Timeout(TimeoutType::Wait) => {
            "timed out waiting for a pooled connection".to_owned()
        }
        PoolError::Timeout(_) => "timed out connecting to the database".to_owned(),
        other => other.to_string(),
    };
    let mut err = RunError::new(ErrorKind::Connection, msg);
    // Only a wait for a pooled connection means the budget is busy; a connect that timed
    // out means the database may be down.
    err.maybe_down = !is_pool_busy(&e);
    err
}

/// Whether a pool error only means every connection of the budget is in use.
pub fn is_pool_busy(e: &PoolError) -> bool {
    matches!(e, PoolError::Timeout(TimeoutType::Wait))
}

/// A checked-out connection that is dropped, not returned to the pool, unless released:
/// a run cancelled mid-batch (reload, shutdown) leaves the connection in an unknown state.
struct Checkout(Option<Object>);

impl Checkout {
    fn client(&self) -> &Object {
        // Set at construction and only taken by `release`/`discard`, which consume self.
        self.0
            .as_ref()
            .expect("checkout holds a connection until released")
    }

    fn release(mut self) -> Option<Object> {
        self.0.take()
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            let _ = Object::take(obj);
        }
    }
}

/// The batch that runs `sql` read-only with server-side timeouts, in one round trip. The
/// newline before `COMMIT` keeps a trailing `--` comment of `sql` from swallowing it.
pub fn read_only_batch(sql: &str, timeout: Duration, lock_timeout: Duration) -> String {
    format!(
        "BEGIN READ ONLY; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}; {}\n; COMMIT",
        millis(timeout),
        millis(lock_timeout.min(timeout)),
        sql.trim().trim_end_matches(';')
    )
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// Runs `spec` once on a pooled connection and turns its rows into a result.
pub async fn sample_once(
    pool: &Pool,
    spec: &Arc<QuerySpec>,
    lock_timeout: Duration,
) -> Result<(QueryResult, RunStats), RunError> {
    let checkout = Checkout(Some(pool.get().await.map_err(pool_error)?));
    let batch = read_only_batch(&spec.sql, spec.timeout, lock_timeout);
    // The server enforces the timeout; this guard only catches a dead network.
    let guard = spec.timeout + Duration::from_secs(5);
    let outcome = tokio::time::timeout(guard, checkout.client().simple_query(&batch)).await;
    let messages = match outcome {
        Ok(Ok(m)) => {
            drop(checkout.release());
            m
        }
        Ok(Err(e)) => {
            let err = classify(&e);
            if let Some(client) = checkout.release() {
                release_after_error(client).await;
            }
            return Err(err);
        }
        // Dropping the checkout drops the connection: its state is unknown.
        Err(_) => {
            return Err(RunError::new(
                ErrorKind::Timeout,
                format!("no answer within {}s; connection dropped", guard.as_secs()),
            ));
        }
    };
    decode(spec, &messages)
}

async fn release_after_error(client: Object) {
    if client.is_closed() {
        let _ = Object::take(client);
        return;
    }
    if client.batch_execute("ROLLBACK").await.is_err() {
        let _ = Object::take(client);
    }
}

/// Turns the rows of the query (the batch's fourth statement) into series.
pub fn decode(
    spec: &Arc<QuerySpec>,
    messages: &[SimpleQueryMessage],
) -> Result<(QueryResult, RunStats), RunError> {
    let mut stats = RunStats::default();
    let mut families: Vec<Vec<Series>> = vec![Vec::new(); spec.metrics.len()];
    let mut seen = std::collections::HashSet::new();
    let mut total = 0usize;
    let mut columns: Option<(Vec<usize>, Vec<usize>, Vec<usize>)> = None;
    let mut rows: Option<Vec<super::store::Row>> = spec.publish_rows.then(Vec::new);
    // Statements before the query (BEGIN, 2 × SET) complete with CommandComplete.
    let mut completed = 0;
    for msg in messages {
        match msg {
            SimpleQueryMessage::CommandComplete(_) => completed += 1,
            SimpleQueryMessage::RowDescription(desc) if completed == 3 => {
                let find = |name: &str| {
                    desc.iter().position(|c| c.name() == name).ok_or_else(|| {
                        RunError::new(
                            ErrorKind::Decode,
                            format!(
                                "column \"{name}\" is not in the result of query \"{}\"",
                                spec.name
                            ),
                        )
                    })
                };
                // A roll-up key is carried as a last, hidden label until the roll-up.
                let labels = spec
                    .labels
                    .iter()
                    .chain(spec.rollup_key.as_ref())
                    .map(|l| find(l))
                    .collect::<Result<_, _>>()?;
                let values = spec
                    .metrics
                    .iter()
                    .map(|m| find(&m.column))
                    .collect::<Result<_, _>>()?;
                let hist = match &spec.histogram {
                    Some(h) => vec![
                        find(&h.key_column)?,
                        find(&h.calls_column)?,
                        find(&h.time_ms_column)?,
                    ],
                    None => Vec::new(),
                };
                columns = Some((labels, values, hist));
            }
            SimpleQueryMessage::Row(row) if completed == 3 => {
                let Some((label_idx, value_idx, hist_idx)) = &columns else {
                    continue;
                };
                if let Some(rows) = rows.as_mut() {
                    rows.push(
                        row.columns()
                            .iter()
                            .enumerate()
                            .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                            .collect(),
                    );
                }
                if let [k, c, t] = hist_idx[..] {
                    let num = |i: usize| row.get(i).and_then(parse_value);
                    if let (Some(key), Some(calls), Some(total_ms)) = (row.get(k), num(c), num(t)) {
                        stats.statements.push(super::latency::StatementSample {
                            key: key.to_owned(),
                            calls,
                            total_ms,
                        });
                    }
                }
                let labels: Vec<String> = label_idx
                    .iter()
                    .map(|&i| row.get(i).unwrap_or("").to_owned())
                    .collect();
                if !seen.insert(labels.clone()) {
                    stats.dropped += spec.metrics.len() as u64;
                    continue;
                }
                let mut row_series = Vec::new();
                for (m, &i) in value_idx.iter().enumerate() {
                    match row.get(i) {
                        None => stats.nulls += 1,
                        Some(text) => {
                            let value = parse_value(text).ok_or_else(|| {
                                RunError::new(
                                    ErrorKind::Decode,
                                    format!(
                                        "column \"{}\" holds \"{}\", not a number",
                                        spec.metrics[m].column,
                                        text.chars().take(40).collect::<String>()
                                    ),
                                )
                            })?;
                            row_series.push((m, value));
                        }
                    }
                }
                // Rolled-up rows are budgeted after the roll-up, by label set.
                let budget = if spec.rollup_key.is_some() {
                    ROLLUP_ROW_LIMIT
                } else {
                    spec.max_series
                };
                if total + row_series.len() > budget {
                    stats.dropped += row_series.len() as u64;
                    continue;
                }
                total += row_series.len();
                for (m, value) in row_series {
                    families[m].push(Series {
                        labels: labels.clone(),
                        value,
                    });
                }
            }
            _ => {}
        }
    }
    if columns.is_none() {
        return Err(RunError::new(
            ErrorKind::Decode,
            format!(
                "query \"{}\" returned no result set (is it a SELECT?)",
                spec.name
            ),
        ));
    }
    Ok((
        QueryResult {
            spec: spec.clone(),
            families,
            histogram: None,
            rows,
            at: SystemTime::now(),
        },
        stats,
    ))
}

/// Parses a text value as a number: integers, floats, NaN/Infinity, booleans (t/f).
pub fn parse_value(text: &str) -> Option<f64> {
    match text {
        "t" | "true" => Some(1.0),
        "f" | "false" => Some(0.0),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}
