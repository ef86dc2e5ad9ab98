//! Running one query. The catalog's SQL is sent over the extended protocol, so the server
//! accepts exactly one statement (a `;`-separated second statement is a parse error, whatever
//! quotes or comments hide it), inside a transaction that is read-only with server-side
//! `statement_timeout` and `lock_timeout`, on a session whose `default_transaction_read_only`
//! is on. Rows are streamed through a portal in batches of [`ROW_BATCH`] and decoded one at a
//! time, so memory is bounded by the query's budget.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, PoolError, TimeoutType};
use futures_util::{StreamExt, pin_mut};
use tokio_postgres::error::SqlState;

use super::decode::{Decoder, RunStats};
use crate::catalog::QuerySpec;
use crate::db::lease::Budget;
use crate::snapshot::QueryResult;

/// Rows fetched per round trip from the query's portal.
pub const ROW_BATCH: i32 = 1000;

/// Extra time past the statement timeout before the client gives up on the connection: the
/// server cancels the statement itself; this only catches a dead network.
pub const CLIENT_GRACE: Duration = Duration::from_secs(5);

/// The kinds of failure counted in `pgpulse_query_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The statement or lock timeout fired (server side), or the client-side guard did.
    Timeout,
    /// Every connection of the budget stayed busy for the query's whole timeout.
    Pool,
    /// No connection: the database is unreachable or closed the connection.
    Connection,
    /// An object the query reads is missing or not readable (undefined table, function,
    /// schema; insufficient privilege): its series are cleared at once.
    Unavailable,
    /// The server rejected the SQL otherwise.
    Sql,
    /// The rows did not fit the spec: a missing column, a non-numeric value.
    Decode,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 6] = [
        Self::Timeout,
        Self::Pool,
        Self::Connection,
        Self::Unavailable,
        Self::Sql,
        Self::Decode,
    ];

    /// What an operator reads on the landing page: the kind and what it means, never the
    /// server's message (it may quote values; it goes to the log at debug level).
    pub fn summary(self) -> &'static str {
        match self {
            Self::Timeout => "timeout: the statement or lock timeout fired",
            Self::Pool => "pool: every pooled connection stayed busy for the query's timeout",
            Self::Connection => "connection: the database could not be reached",
            Self::Unavailable => {
                "unavailable: a relation, function or schema the query reads is missing, or the role may not read it (see the log at debug level)"
            }
            Self::Sql => "sql: PostgreSQL rejected the query (see the log at debug level)",
            Self::Decode => "decode: the rows do not fit the catalog (see the log at debug level)",
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Pool => "pool",
            Self::Connection => "connection",
            Self::Unavailable => "unavailable",
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
}

impl RunError {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Whether the database may be unreachable, so the probe should check.
    pub fn maybe_down(&self) -> bool {
        self.kind == ErrorKind::Connection
    }

    /// Whether the connection that met this error is fit for reuse: the server answered
    /// (its transaction was rolled back when dropped), unlike a closed or broken one.
    pub fn leaves_connection_usable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Timeout | ErrorKind::Sql | ErrorKind::Unavailable | ErrorKind::Decode
        )
    }
}

/// SQLSTATEs that mean an object the query reads is missing or not readable.
const UNAVAILABLE: [SqlState; 5] = [
    SqlState::UNDEFINED_TABLE,
    SqlState::UNDEFINED_FUNCTION,
    SqlState::INSUFFICIENT_PRIVILEGE,
    SqlState::INVALID_SCHEMA_NAME,
    SqlState::UNDEFINED_OBJECT,
];

/// Classifies a driver error.
pub fn classify(e: &tokio_postgres::Error) -> RunError {
    let msg = crate::db::connect::describe(e);
    match e.code() {
        Some(c) if *c == SqlState::QUERY_CANCELED || *c == SqlState::LOCK_NOT_AVAILABLE => {
            RunError::new(ErrorKind::Timeout, msg)
        }
        Some(c) if UNAVAILABLE.contains(c) => RunError::new(ErrorKind::Unavailable, msg),
        Some(_) => RunError::new(ErrorKind::Sql, msg),
        None => RunError::new(ErrorKind::Connection, msg),
    }
}

/// A pool failure as a counted error (pool or connection kind; the reason says TLS or network).
pub(crate) fn pool_error(e: PoolError) -> RunError {
    match &e {
        PoolError::Timeout(TimeoutType::Wait) => RunError::new(
            ErrorKind::Pool,
            "every pooled connection stayed busy for the query's timeout",
        ),
        PoolError::Backend(be) => {
            RunError::new(ErrorKind::Connection, crate::db::connect::describe(be))
        }
        PoolError::Timeout(_) => RunError::new(
            ErrorKind::Connection,
            "timed out connecting to the database",
        ),
        other => RunError::new(ErrorKind::Connection, other.to_string()),
    }
}

/// Whether a pool error only means every connection of the budget is in use.
pub fn is_pool_busy(e: &PoolError) -> bool {
    matches!(e, PoolError::Timeout(TimeoutType::Wait))
}

/// The `SET LOCAL` statements that bound a transaction by server-side timeouts and pin its
/// `search_path` to `pg_catalog, public, pg_temp`: built-ins are found first, and a schema
/// named like the login (`"$user"`, which any role with CREATE on the database can make) is
/// never searched, so no tenant's function or operator stands in for one a query names.
/// `public` stays for custom catalogs that name their tables without a schema (since
/// PostgreSQL 15 only its owner and roles granted CREATE can add objects there).
pub fn timeouts_sql(timeout: Duration, lock_timeout: Duration) -> String {
    format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}; \
         SET LOCAL search_path = pg_catalog, public, pg_temp",
        millis(timeout),
        millis(lock_timeout.min(timeout))
    )
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// What one successful run produced.
#[derive(Debug)]
pub struct Sampled {
    /// The series (per object, before any roll-up).
    pub result: QueryResult,
    /// Counters of the run and the histogram's statement samples.
    pub stats: RunStats,
}

/// Runs `spec` once on a pooled connection and turns its rows into a result. A run that is
/// cancelled, or gets no answer within its guard, leaves its connection to settle (see
/// [`crate::db::lease`]): it keeps its slot of the budget until the server has answered.
pub async fn sample_once(
    budget: &Budget,
    spec: &Arc<QuerySpec>,
    lock_timeout: Duration,
) -> Result<Sampled, RunError> {
    let guard = spec.timeout + CLIENT_GRACE;
    let mut checkout = budget
        .lease(Some(spec.timeout), guard)
        .await
        .map_err(pool_error)?;
    let Some(client) = checkout.client() else {
        return Err(RunError::new(ErrorKind::Connection, "no connection"));
    };
    match tokio::time::timeout(guard, run_in_transaction(client, spec, lock_timeout)).await {
        Ok(Ok(sampled)) => {
            checkout.release();
            Ok(sampled)
        }
        Ok(Err(err)) => {
            // A failed transaction was rolled back by the driver when it was dropped; a
            // connection that closed or failed otherwise is discarded with the checkout.
            if err.leaves_connection_usable() && checkout.client().is_some_and(|c| !c.is_closed()) {
                checkout.release();
            }
            Err(err)
        }
        // Dropping the lease lets the connection settle: its state is unknown.
        Err(_) => Err(RunError::new(
            ErrorKind::Timeout,
            format!(
                "no answer within {}s; the connection settles",
                guard.as_secs()
            ),
        )),
    }
}

/// Starts a read-only transaction on `client` and runs `settings` (its `SET LOCAL`s) in it.
pub async fn begin_read_only<'a>(
    client: &'a mut Object,
    settings: &str,
) -> Result<tokio_postgres::Transaction<'a>, RunError> {
    let client: &mut tokio_postgres::Client = client;
    let txn = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| classify(&e))?;
    txn.batch_execute(settings)
        .await
        .map_err(|e| classify(&e))?;
    Ok(txn)
}

async fn run_in_transaction(
    client: &mut Object,
    spec: &Arc<QuerySpec>,
    lock_timeout: Duration,
) -> Result<Sampled, RunError> {
    let txn = begin_read_only(client, &timeouts_sql(spec.timeout, lock_timeout)).await?;
    let statement = txn.prepare(&spec.sql).await.map_err(|e| classify(&e))?;
    let columns: Vec<(String, tokio_postgres::types::Type)> = statement
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), c.type_().clone()))
        .collect();
    if columns.is_empty() {
        return Err(RunError::new(
            ErrorKind::Decode,
            format!("query \"{}\" returns no rows (is it a SELECT?)", spec.name),
        ));
    }
    let mut decoder = Decoder::new(spec, &columns)?;
    let portal = txn.bind(&statement, &[]).await.map_err(|e| classify(&e))?;
    loop {
        let rows = txn
            .query_portal_raw(&portal, ROW_BATCH)
            .await
            .map_err(|e| classify(&e))?;
        pin_mut!(rows);
        let mut n = 0;
        while let Some(row) = rows.next().await {
            let row = row.map_err(|e| classify(&e))?;
            n += 1;
            decoder.push(&row)?;
        }
        if n < ROW_BATCH {
            break;
        }
    }
    txn.commit().await.map_err(|e| classify(&e))?;
    let (result, stats) = decoder.finish();
    Ok(Sampled { result, stats })
}
