//! pgpulse's integration tests: real PostgreSQL (a throwaway cluster from the system's
//! binaries), real HTTP, the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod alerts;
mod architecture;
mod cardinality;
mod catalog;
mod catalog_lock;
mod cheap_sql;
mod commands;
mod config;
mod counter_guard;
mod debug_locks;
mod demo;
mod demo_alerts;
mod docker;
mod exporter;
mod fleet;
mod golden;
mod harness;
pub(crate) mod health;
mod hostile_tenant;
mod http_limits;
mod lock_queue;
mod lock_roots;
mod maintenance;
mod migrations;
mod next_step;
mod partitions;
mod pass_round;
mod pgbouncer;
mod plans;
mod readme;
mod readonly;
mod relations;
mod replication;
mod schema_objects;
mod secret_files;
mod secrets;
mod service;
mod signals;
mod slow_log;
mod statement_text;
mod tls;
mod trade_tables;
mod web;
