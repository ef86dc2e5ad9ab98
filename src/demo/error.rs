//! Why the demo stopped early: one error type for every step of `pgpulse demo`, shared by the
//! single-database run and the fleet.

use super::cluster::ClusterError;

/// Why the demo stopped early; each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The throwaway cluster could not start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A connection failed.
    #[error(transparent)]
    Connect(#[from] crate::db::ConnectError),
    /// A statement of a setup step failed.
    #[error("{step}: {reason}")]
    Database {
        /// What the demo was doing.
        step: &'static str,
        /// The server's message.
        reason: String,
    },
    /// The migrations failed.
    #[error(transparent)]
    Migrate(#[from] crate::db::migrate::MigrateError),
    /// The demo's configuration is invalid (e.g. a bad listen address).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The built-in catalog does not load.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The exporter failed.
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    /// A background task panicked.
    #[error("{0}")]
    Task(String),
}

impl DemoError {
    /// Whether the failure is a configuration or usage error.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Catalog(_))
    }
}
