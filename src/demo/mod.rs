//! The demo: a throwaway PostgreSQL cluster, the reference trade-engine schema and a
//! synthetic workload, so a newcomer sees pgpulse work with one command; and, where Prometheus
//! and Alertmanager are installed, both watching it with the bundled rules and routing;
//! with `--fleet`, a standby and a second database too, sampled by one pgpulse ([`fleet`]).

mod alerting;
pub mod bouncer;
pub mod cluster;
mod error;
pub mod fleet;
pub mod rules;
mod run;
pub(crate) mod scenario;
pub mod schema;
mod status;
pub mod workload;

pub use bouncer::{BouncerOptions, TempBouncer};
pub use cluster::{ClusterOptions, TempCluster};
pub use error::DemoError;
pub use run::{DemoArgs, run};
