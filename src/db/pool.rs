//! The sampling pool: deadpool-postgres with a hard connection budget, a wait timeout and a
//! connect timeout and the TLS settings of the target, so that a slow or down database never
//! gets more than `size` connections from pgpulse, however many queries are due (the pool is
//! used through [`super::lease::Budget`], which keeps a connection's slot until its server
//! session is idle, and through [`super::slots`], which keeps an abandoned connection
//! attempt's slot until its socket is closed). Sampling sessions start with
//! `default_transaction_read_only = on`, so even a statement outside pgpulse's read-only
//! transactions cannot write, and with a session `statement_timeout` and `lock_timeout`, so
//! the first statement a session sends (the pin before a query's run,
//! [`super::session::pin`], or a transaction's `BEGIN`) carries timeouts too.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};

use super::DatabaseTarget;

/// Session options of every sampling connection: read-only, and no JIT compilation. A
/// statement over every relation of a large catalog is estimated above `jit_above_cost`, and
/// compiling it takes longer than running it, on every run: at 10,000 relations a DEFAULT
/// partition count cost 60 ms with JIT and 4 ms without.
pub const SESSION_OPTIONS: &str = "-c default_transaction_read_only=on -c jit=off";

/// What the pool needs to know.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Where the database is.
    pub target: DatabaseTarget,
    /// Hard connection budget.
    pub size: usize,
    /// How long a caller waits for a pooled connection by default.
    pub wait_timeout: Duration,
    /// Connect (and recycle) timeout of one connection.
    pub connect_timeout: Duration,
    /// Session `statement_timeout`: bounds statements outside pgpulse's own transactions
    /// (which set their own with `SET LOCAL`).
    pub statement_timeout: Duration,
    /// Session `lock_timeout`, likewise.
    pub lock_timeout: Duration,
    /// The fleet's connection cap every socket also takes a permit of, if any.
    pub cap: Option<super::slots::Cap>,
    /// A file the password is read from for every new connection, if any.
    pub password_file: Option<std::path::PathBuf>,
}

/// Errors of building the pool (a configuration problem, not a connection failure).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the connection pool: {0}")]
pub struct PoolError(String);

/// Builds the pool; no connection is opened until a query needs one.
pub fn build(settings: &PoolSettings) -> Result<Pool, PoolError> {
    let mut config = settings.target.config().clone();
    let session = format!(
        "{SESSION_OPTIONS} -c statement_timeout={} -c lock_timeout={}",
        settings.statement_timeout.as_millis().max(1),
        settings.lock_timeout.as_millis().max(1)
    );
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} {session}"),
        _ => session,
    };
    config.options(&options);
    // The connector counts connection attempts against the budget too (see `super::slots`).
    let manager = Manager::from_connect(
        config,
        super::slots::SlotConnect::new(settings.target.tls().connector(), settings.size)
            .within(settings.cap.clone())
            .with_password_file(settings.password_file.clone()),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(settings.wait_timeout),
            create: Some(settings.connect_timeout),
            recycle: Some(settings.connect_timeout),
        })
        .build()
        .map_err(|e| PoolError(e.to_string()))
}
