//! pgpulse: a Prometheus exporter and monitoring schema for the PostgreSQL database of a
//! trading engine.
//!
//! It installs a `monitoring` schema (13 views, 14 functions, a maintenance schedule) with
//! embedded migrations, samples it on per-query intervals into metrics, serves them
//! pre-rendered at `/metrics`, and runs the scheduled maintenance.
//!
//! # Layout
//!
//! The modules sit in layers along the data flow of DESIGN.md §1, declared below in that
//! order; a module uses the leaf helpers and modules of lower layers only (the architecture
//! test in `tests/it/architecture.rs` holds the table and checks this file against it):
//!
//! - leaves, open to all: [`clock`] (time, the loop of background tasks, the one backoff),
//!   [`crypto`] (the rustls provider, PEM), [`shutdown`] (SIGTERM/SIGINT), [`yaml`] (error
//!   locations).
//! - 1: [`catalog`] (the `queries.yaml` model, validation, the built-in catalog); [`db`]
//!   (connections, TLS, the pool and its budget, read-only sessions, the one SQLSTATE
//!   classification, migrations, `verify`, `uninstall`).
//! - 2: [`snapshot`] (the latest result of every query, `pg_up`, the state that outlives a
//!   reload); [`plans`] (the key queries' plan check).
//! - 3: [`sampler`] (probe, gating, scheduling, running a query, rows → series, the current
//!   catalog and reload as a diff); [`slowlog`] (the exact slow-statement counter);
//!   [`maintenance`] (the job runner); [`bouncer`] (PgBouncer's admin console as a target).
//! - 4: [`exposition`] (snapshot + self-metrics → text/OpenMetrics, gzip, the render loop).
//! - 5: [`http`] (server with deadlines and a connection cap, router, auth, handlers).
//! - 6: [`config`] (settings layered by figment, validated into [`config::Config`], whose
//!   methods hand each feature its settings).
//! - 7: [`fleet`] (the targets by name: one target's pool, sampler, snapshot, features and
//!   body; the global connection cap; the target list and its reload as a diff).
//! - 8: [`app`] (`App::build` / `run_until_stopped`, the reloader, build and reload metrics).
//! - 9: [`demo`] (throwaway cluster, trade-engine schema and workload, Prometheus).
//! - 10: [`cli`] (the command line and the commands besides `serve`'s service loop).

pub mod clock;
pub mod crypto;
pub mod shutdown;
pub mod yaml;

pub mod catalog;
pub mod db;

pub mod plans;
pub mod snapshot;

pub mod bouncer;
pub mod maintenance;
pub mod sampler;
pub mod slowlog;

pub mod exposition;

pub mod http;

pub mod config;

pub mod fleet;

pub mod app;

pub mod demo;

pub mod cli;
