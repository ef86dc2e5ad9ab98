//! The settings tree as written in a config file or the environment; every key has a default.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Every setting; see `pgpulse.example.yaml` for the commented list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where the database is and how to connect.
    pub database: DatabaseSettings,
    /// The HTTP server.
    pub web: WebSettings,
    /// Sampling defaults.
    pub sampling: SamplingSettings,
    /// The metric catalog file; the built-in catalog when unset.
    pub queries_file: Option<PathBuf>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// The key-query plan check of `serve` (plans.yaml).
    pub plans: PlanSettings,
    /// The maintenance runner (`pgpulse maintain`).
    pub maintenance: MaintenanceRunnerSettings,
    /// The slow-statement log reader of `serve` (the exact count of slow executions).
    pub slow_log: SlowLogSettings,
    /// Which tables are the trade tables (default: the reference schema).
    pub trade_tables: crate::db::trade_tables::TradeTables,
    /// Fleet mode: the targets to sample (instead of `database`).
    pub targets: Vec<super::fleet::TargetSettings>,
    /// Fleet mode: a Prometheus file_sd file of targets, read again on change.
    pub targets_file: Option<PathBuf>,
    /// Fleet mode: named credential sets the targets reference.
    pub auths: std::collections::BTreeMap<String, super::fleet::AuthSettings>,
    /// Fleet mode: the global connection cap, refresh interval, pool size per target.
    pub fleet: super::fleet::FleetSettings,
}

/// The slow-statement log reader of `serve` (docs/statement-latency.md). It runs only where
/// the server has the prerequisites (jsonlog, `log_min_duration_statement`, the V012 helpers)
/// and says once in the log what is missing otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowLogSettings {
    /// Whether `serve` reads the log where the server allows it.
    pub enabled: bool,
    /// Time between two polls of the log.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// `statement_timeout` of every statement of a poll.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The first window of each `monitoring.log_tally` call, in bytes (1 ..= 1048576); a
    /// window grows only to hold a longer line whole.
    pub chunk_bytes: u32,
    /// The most (database, user) pairs of `pg_statement_executions_over_threshold_total`.
    pub max_series: usize,
}

impl Default for SlowLogSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
            chunk_bytes: 1024 * 1024,
            max_series: 200,
        }
    }
}

/// How the maintenance runner treats the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceRunnerSettings {
    /// `lock_timeout` of every maintenance statement (DDL, ANALYZE, VACUUM).
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// `statement_timeout` of every maintenance statement but VACUUM.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Longest pause between retries of a failed job and between reconnects.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for MaintenanceRunnerSettings {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(1800),
            max_backoff: Duration::from_secs(900),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database: DatabaseSettings::default(),
            web: WebSettings::default(),
            sampling: SamplingSettings::default(),
            queries_file: None,
            log_format: LogFormat::Text,
            maintenance: MaintenanceRunnerSettings::default(),
            plans: PlanSettings::default(),
            slow_log: SlowLogSettings::default(),
            trade_tables: crate::db::trade_tables::TradeTables::default(),
            targets: Vec::new(),
            targets_file: None,
            auths: std::collections::BTreeMap::new(),
            fleet: super::fleet::FleetSettings::default(),
        }
    }
}

/// The key-query plan check of `serve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSettings {
    /// Whether `serve` checks the key queries' plans.
    pub enabled: bool,
    /// The key queries; unset: the plans.yaml built into the binary.
    pub file: Option<PathBuf>,
    /// How often the plans are checked (plain EXPLAIN of every key query).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for PlanSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            file: None,
            interval: Duration::from_secs(600),
        }
    }
}

/// Database connection settings: a URL, or the fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// A `postgres://` URL; overrides the fields below. May hold a password: never shown.
    #[serde(skip_serializing)]
    pub url: Option<SecretString>,
    /// Host name or socket directory.
    pub host: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// User name.
    pub user: Option<String>,
    /// Database name.
    pub dbname: Option<String>,
    /// The password (better: `PGPULSE_DATABASE__PASSWORD` or `password_file`). Never shown.
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    /// A file holding the password (a trailing newline is ignored), e.g. a mounted secret.
    pub password_file: Option<PathBuf>,
    /// A file holding the `postgres://` URL (used when `url` is unset). Never shown.
    pub url_file: Option<PathBuf>,
    /// libpq-style `sslmode`: disable, allow, prefer (default), require, verify-ca, verify-full.
    pub sslmode: Option<String>,
    /// CA bundle the server certificate must chain to, or `system` (libpq's `sslrootcert`).
    pub sslrootcert: Option<String>,
    /// Client certificate (PEM) for `clientcert=verify-full` servers.
    pub sslcert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    pub sslkey: Option<PathBuf>,
    /// Hard connection budget of the sampling pool.
    pub pool_size: usize,
    /// Connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a query waits for a pooled connection.
    #[serde(with = "humantime_serde")]
    pub pool_wait_timeout: Duration,
    /// Longest pause between reconnect attempts; `pg_up` returns to 1 at most this long after
    /// the database accepts connections again.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
    /// How long the probe waits for the server's answer (and for a pooled connection) before
    /// `pg_up` goes to 0; also the session `statement_timeout` of pooled connections.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            host: None,
            port: None,
            user: None,
            dbname: None,
            password: None,
            password_file: None,
            url_file: None,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            pool_size: 3,
            connect_timeout: Duration::from_secs(5),
            pool_wait_timeout: Duration::from_secs(2),
            reconnect_max_backoff: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(5),
        }
    }
}

/// HTTP server settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    /// `host:port` to listen on.
    pub listen_address: String,
    /// The deadline of every phase of a connection: complete request headers within it of
    /// the connect (TLS handshake included) or of the previous answer, and the answer sent
    /// within it of the headers; a connection that overruns a phase is closed.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The most HTTP connections open at once; at the cap the oldest connection that is not
    /// in a request makes room, and a new one is refused only when all are in a request.
    pub max_connections: usize,
    /// A web configuration file in the format of the Prometheus exporter toolkit (TLS,
    /// basic auth, headers); `--web.config.file`.
    pub config_file: Option<PathBuf>,
    /// Serve `/health` and `/ready` without basic auth, for probes (default: protected too).
    pub open_health: bool,
    /// Serve the landing page at `/` (default: on; it shows no database data).
    pub landing_page: bool,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            listen_address: super::DEFAULT_LISTEN.to_owned(),
            request_timeout: Duration::from_secs(10),
            max_connections: 128,
            config_file: None,
            open_health: false,
            landing_page: true,
        }
    }
}

/// Defaults for queries of the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingSettings {
    /// Interval of queries that set none.
    #[serde(with = "humantime_serde")]
    pub default_interval: Duration,
    /// Statement timeout of queries that set none.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Lock timeout of every sampling query.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// How many root blockers `lock_roots` names (by blocked sessions; the rest are summed
    /// as `other`), 1 ..= 20.
    pub lock_roots_named: u32,
}

impl Default for SamplingSettings {
    fn default() -> Self {
        Self {
            default_interval: Duration::from_secs(15),
            default_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_millis(500),
            lock_roots_named: 5,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
