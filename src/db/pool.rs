//! The sampling pool: deadpool-postgres with a hard connection budget, a wait timeout and a
//! connect timeout and the TLS settings of the target, so that a slow or down database never gets more than `pool_size`
//! connections from pgpulse, however many queries are due.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};

use crate::config::Config;

/// Errors of building the pool (a configuration problem, not a connection failure).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the connection pool: {0}")]
pub struct PoolError(String);

/// Builds the pool; no connection is opened until a query needs one.
pub fn build(config: &Config) -> Result<Pool, PoolError> {
    let manager = Manager::from_config(
        config.target.config().clone(),
        config.target.tls().connector(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(config.pool_wait_timeout),
            create: Some(config.connect_timeout),
            recycle: Some(config.connect_timeout),
        })
        .build()
        .map_err(|e| PoolError(e.to_string()))
}
