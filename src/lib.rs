//! pgpulse: a Prometheus exporter and monitoring schema for the PostgreSQL database of a
//! trading engine.
//!
//! It installs a `monitoring` schema (13 views, 14 functions, a maintenance schedule) with
//! embedded migrations, samples it on per-query intervals into metrics, serves them
//! pre-rendered at `/metrics`, and runs the scheduled maintenance.
//!
//! # Layout
//!
//! The modules follow the data flow of DESIGN.md §1, and a module imports only from the
//! modules listed before it (the architecture test in `tests/it/architecture.rs` keeps it so):
//!
//! - [`clock`], [`yaml`], [`shutdown`]: small shared helpers.
//! - [`catalog`]: the `queries.yaml` model, parsing, validation, the built-in catalog.
//! - [`db`]: connection settings, the pool (its own [`db::pool::PoolSettings`]) and the budget
//!   that keeps abandoned connections in their slot ([`db::lease`]), migrations,
//!   `verify`, `uninstall`.
//! - [`config`]: settings layered by figment, validated into [`config::Config`].
//! - [`crypto`]: the one rustls crypto provider and PEM loading.
//! - [`snapshot`]: the latest result of every query, statuses, and the counter state that
//!   outlives a reload (roll-ups, histograms). The sampler writes it; the exposition reads it.
//! - [`sampler`]: probe, gating, scheduling, running a query, rows → series, budgets, its own
//!   self-metrics, reload as a diff (`Sampler::apply`).
//! - [`slowlog`]: the slow-statement log reader: the exact count of executions at or over
//!   `log_min_duration_statement`, read from the server's jsonlog over SQL.
//! - [`exposition`]: snapshot + self-metrics → text/OpenMetrics, gzip, atomic swap.
//! - [`http`]: router, handlers, content negotiation, web config (TLS, basic auth).
//! - [`maintenance`]: the job runner (leader lock, schedule, client-side VACUUM).
//! - [`app`]: `App::build` / `run_until_stopped` and the reloader: the wiring.
//! - [`demo`]: throwaway cluster, reference trade-engine schema and workload.
//! - [`plans`]: the key queries' plan check (`pgpulse explain`, `pg_plan_*` in `serve`).
//! - [`cli`]: the command line and the commands besides `serve`'s service loop.

pub mod app;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod db;
pub mod demo;
pub mod exposition;
pub mod http;
pub mod maintenance;
pub mod plans;
pub mod sampler;
pub mod shutdown;
pub mod slowlog;
pub mod snapshot;
pub mod yaml;
