//! The demo: a throwaway PostgreSQL cluster, the reference trade-engine schema and a
//! synthetic workload, so a newcomer sees pgpulse work with one command.

pub mod cluster;
mod run;
pub mod scenario;
pub mod schema;
pub mod workload;

pub use cluster::{ClusterOptions, TempCluster};
pub use run::{DemoArgs, DemoError, run};
