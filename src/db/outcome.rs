//! The one classification of what a statement's failure means, from its SQLSTATE (or its
//! absence: the connection failed): the [`ErrorKind`]s counted in
//! `pgpulse_query_errors_total{kind}`, and the finer questions other modules ask (a lock
//! held elsewhere, a missing object). Every module classifies a driver error here.

use deadpool_postgres::{PoolError, TimeoutType};
use tokio_postgres::error::SqlState;

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
pub(crate) fn classify(e: &tokio_postgres::Error) -> RunError {
    let msg = describe(e);
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
        PoolError::Backend(be) => RunError::new(ErrorKind::Connection, describe(be)),
        PoolError::Timeout(_) => RunError::new(
            ErrorKind::Connection,
            "timed out connecting to the database",
        ),
        other => RunError::new(ErrorKind::Connection, other.to_string()),
    }
}

/// Whether a pool error only means every connection of the budget is in use.
pub(crate) fn is_pool_busy(e: &PoolError) -> bool {
    matches!(e, PoolError::Timeout(TimeoutType::Wait))
}

/// Whether the statement gave up because another session holds a lock it needs
/// (`lock_timeout` fired): nothing of it was done, and a retry may succeed.
pub(crate) fn lock_not_available(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

/// Whether a statement failed because a relation, function or schema it names is missing.
pub(crate) fn missing_object(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        [
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_FUNCTION,
            SqlState::INVALID_SCHEMA_NAME,
        ]
        .contains(c)
    })
}

/// Whether a notice or error says an object already exists (`IF NOT EXISTS` met one).
pub(crate) fn already_exists(code: &SqlState) -> bool {
    [
        SqlState::DUPLICATE_SCHEMA,
        SqlState::DUPLICATE_TABLE,
        SqlState::DUPLICATE_OBJECT,
        SqlState::DUPLICATE_FUNCTION,
    ]
    .contains(code)
}

/// A one-line description of a driver error, including the server's message when there is one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    if let Some(reason) = super::tls::explain(e) {
        return reason;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
