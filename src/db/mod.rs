//! Everything that talks to PostgreSQL outside the sampler: connection settings and TLS, single
//! connections for commands, the sampling pool, and the monitoring schema's migrations,
//! verification and removal.

pub mod connect;
pub mod lease;
pub mod migrate;
pub mod pool;
pub mod tls;
mod tls_params;
pub mod uninstall;
pub mod verify;

pub use connect::{ConnectError, DatabaseTarget, connect};
