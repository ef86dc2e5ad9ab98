//! pgpulse: a Prometheus exporter and monitoring schema for the PostgreSQL database of a
//! trading engine.
//!
//! It installs a `monitoring` schema (13 views, 14 functions, a maintenance schedule) with
//! embedded migrations, samples it on per-query intervals into metrics, serves them
//! pre-rendered at `/metrics`, and runs the scheduled maintenance.
//!
//! # Layout
//!
//! - [`app`]: `App::build` / `run_until_stopped`, the seam used by `main` and tests.
//! - [`config`]: settings layered by figment, validated into [`config::Config`].
//! - [`catalog`]: the `queries.yaml` model, parsing and validation.
//! - [`crypto`]: the one rustls crypto provider and PEM loading.
//! - [`db`]: connections, TLS, the pool, migrations, `verify`, `uninstall`.
//! - [`sampler`]: scheduling, running a query, rows → series, budgets.
//! - [`exposition`]: snapshot → text/OpenMetrics, gzip, atomic swap; self-metrics.
//! - [`http`]: router and handlers.
//! - [`maintenance`]: the job runner (leader lock, schedule, client-side VACUUM).
//! - [`demo`]: throwaway cluster, reference trade-engine schema and workload.
//! - [`cli`]: the command line and the commands besides `serve`.

pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod demo;
pub mod exposition;
pub mod http;
pub mod maintenance;
pub mod sampler;
pub mod yaml;
