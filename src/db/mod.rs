//! Everything that talks to PostgreSQL outside the sampler: connection settings and TLS, single
//! connections for commands, the sampling pool and its connection slots, the monitoring
//! schema's migrations, the trade tables of the configuration ([`trade_tables`]) and the autovacuum
//! tuning `migrate` gives them ([`tuning`]), verification (with what it checks of the `SECURITY DEFINER` functions,
//! [`definer`]) and removal, and what reading the slow-statement log needs ([`log_access`]).

pub(crate) mod alterers;
pub(crate) mod check;
pub(crate) mod connect;
pub(crate) mod definer;
pub mod lease;
pub(crate) mod log_access;
pub mod migrate;
mod migrate_error;
pub(crate) mod outcome;
pub mod pool;
pub mod server;
pub(crate) mod session;
pub(crate) mod slots;
pub mod tls;
mod tls_params;
pub(crate) mod trade_tables;
pub(crate) mod tuning;
pub(crate) mod uninstall;
pub mod verify;

pub use connect::{ConnectError, DatabaseTarget, connect};
pub use trade_tables::{TableRef, TradeTables};
