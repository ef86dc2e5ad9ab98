//! Settings: what an operator configures, layered by figment (built-in defaults < YAML file <
//! `PGPULSE_*` environment, nested with `__` < command-line flags), and their validation into
//! [`Config`], the types the program uses.
//!
//! Unknown keys are errors. A file is first parsed on its own with serde-saphyr so that its
//! errors carry `file:line:column`; errors of the environment name the variable.

pub mod discover;
pub mod fleet;
pub(crate) mod secrets;
mod settings;
pub mod target;

pub use settings::{
    DatabaseSettings, LogFormat, MaintenanceRunnerSettings, PlanSettings, SamplingSettings,
    Settings, SlowLogSettings, WebSettings,
};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized};

use secrecy::ExposeSecret;
use serde_saphyr::figment::Yaml;

use crate::catalog::{Defaults, Source};
use crate::db::DatabaseTarget;
use crate::db::pool::PoolSettings;

/// The default listen address: loopback and a port of our own (not 9187, the usual
/// postgres_exporter port, so both can run side by side).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9864";

/// Environment variables that belong to the command line, not to the settings tree.
const CLI_ONLY_ENV: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_URL_FILE",
    "TEST_DATABASE_URL",
    "CONFIG",
    "LOG_FORMAT",
    "LOG",
];

/// A configuration error; the message names the file, line and key, or the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{file}: cannot read: {reason}")]
    Read {
        /// The file that could not be used.
        file: PathBuf,
        /// The cause, in words an operator can act on.
        reason: String,
    },
    /// The config file is not valid YAML for the settings (unknown key, wrong type, ...).
    #[error("{file}:{detail}")]
    File {
        /// The file that could not be used.
        file: PathBuf,
        /// `line:column: message`.
        detail: String,
    },
    /// A layered value is wrong; figment's message names the key and its source.
    #[error("configuration: {0}")]
    Layered(String),
    /// The TLS settings of the database connection are wrong (names the key or file).
    #[error("configuration of TLS to the database: {0}")]
    Tls(String),
    /// A value is well-formed but not acceptable.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A `trade_tables` name is not acceptable.
    #[error("configuration key `{key}`: {reason}")]
    TradeTable {
        /// The dotted key, e.g. `trade_tables.orders.name`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A fleet target is not acceptable (names where it came from, never its URL).
    #[error("{origin}: target `{name}`: {reason}")]
    Target {
        /// `targets[3]`, or `file:line` of a targets file.
        origin: String,
        /// The target's name.
        name: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The plans file (`plans.file`) is unreadable or invalid; the message has file:line:col.
    #[error("{0}")]
    Plans(#[from] crate::plans::PlansError),
}

/// Validated configuration, in the types the program uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database is (password redacted in every printed form).
    pub target: DatabaseTarget,
    /// Hard connection budget of the sampling pool.
    pub pool_size: usize,
    /// How long a query waits for a pooled connection before failing.
    pub pool_wait_timeout: Duration,
    /// Connect timeout for new connections.
    pub connect_timeout: Duration,
    /// Longest pause between reconnect attempts (exponential backoff up to this).
    pub reconnect_max_backoff: Duration,
    /// How long the probe waits for a connection and for the server's answer.
    pub probe_timeout: Duration,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// HTTP request timeout.
    pub request_timeout: Duration,
    /// The most HTTP connections open at once (at least 1).
    pub max_http_connections: usize,
    /// The metric catalog: a file, or the built-in catalog when none is configured.
    pub catalog_source: Source,
    /// Interval of queries that set none.
    pub default_interval: Duration,
    /// Timeout of queries that set none.
    pub default_timeout: Duration,
    /// `lock_timeout` of every sampling query.
    pub lock_timeout: Duration,
    /// How many root blockers are named (validated: 1 ..= 20).
    pub lock_roots_named: i32,
    /// Log format.
    pub log_format: LogFormat,
    /// The maintenance runner's timeouts and backoff (validated: all above zero).
    pub maintenance: crate::maintenance::MaintenanceSettings,
    /// Which tables are the trade tables (validated names).
    pub trade_tables: crate::db::trade_tables::TradeTables,
    /// The key-query plan check of `serve`; `None` when `plans.enabled` is false.
    pub plans: Option<crate::plans::GuardConfig>,
    /// The slow-statement log reader of `serve`; `None` when `slow_log.enabled` is false.
    pub slow_log: Option<crate::slowlog::ReaderSettings>,
    /// The web settings (validated: listen address, request timeout and connection cap
    /// above are their parsed forms).
    pub web: WebSettings,
    /// Fleet mode (`targets:` or `targets_file:` set): the targets instead of `target`.
    pub fleet: Option<fleet::FleetConfig>,
    /// The settings the configuration came from, shown on the landing page (no secrets);
    /// nothing reads behaviour from it.
    pub settings: Settings,
}

/// Overrides from command-line flags, the highest layer.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    /// `--database-url` / `PGPULSE_DATABASE_URL`.
    pub database_url: Option<String>,
    /// `--listen-address`.
    pub listen_address: Option<String>,
    /// `--queries`.
    pub queries_file: Option<PathBuf>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--web.config.file`.
    pub web_config_file: Option<PathBuf>,
}

/// Environment variables holding secrets: read verbatim, never parsed by figment (whose
/// errors would quote the value, e.g. a numeric password). Figment ignores them by their
/// key without the prefix.
const PASSWORD_ENV: &str = "PGPULSE_DATABASE__PASSWORD";
/// See [`PASSWORD_ENV`].
const URL_ENV: &str = "PGPULSE_DATABASE__URL";
const SECRET_KEYS: [&str; 2] = ["DATABASE__PASSWORD", "DATABASE__URL"];

/// Loads settings: defaults < `file` < the `PGPULSE_*` environment (when `use_env`; nested
/// with `__`) < `cli`.
pub fn load(
    file: Option<&Path>,
    use_env: bool,
    cli: &CliOverrides,
) -> Result<Settings, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Settings::default()));
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: path.to_owned(),
            reason: e.to_string(),
        })?;
        // Parse alone first: serde-saphyr errors carry line and column.
        serde_saphyr::from_str::<Settings>(&text).map_err(|e| {
            let (line, column, msg) = crate::yaml::describe(&text, &e);
            ConfigError::File {
                file: path.to_owned(),
                detail: format!("{line}:{column}: {msg}"),
            }
        })?;
        fig = fig.merge(Yaml::file_exact(path));
    }
    if use_env {
        let ignored: Vec<&str> = CLI_ONLY_ENV.iter().copied().chain(SECRET_KEYS).collect();
        fig = fig.merge(Env::prefixed("PGPULSE_").ignore(&ignored).split("__"));
    }
    let mut settings: Settings = fig
        .extract()
        .map_err(|e| ConfigError::Layered(flatten(e)))?;
    if use_env {
        if let Ok(pw) = std::env::var(PASSWORD_ENV) {
            settings.database.password = Some(pw.into());
        }
        if let Ok(url) = std::env::var(URL_ENV) {
            settings.database.url = Some(url.into());
        }
        if let Some(file) = std::env::var_os("PGPULSE_DATABASE_URL_FILE").filter(|f| !f.is_empty())
        {
            settings.database.url_file = Some(PathBuf::from(file));
        }
    }
    if let Some(url) = &cli.database_url {
        settings.database.url = Some(url.clone().into());
    }
    if let Some(l) = &cli.listen_address {
        settings.web.listen_address = l.clone();
    }
    if let Some(q) = &cli.queries_file {
        settings.queries_file = Some(q.clone());
    }
    if let Some(f) = cli.log_format {
        settings.log_format = f;
    }
    if let Some(w) = &cli.web_config_file {
        settings.web.config_file = Some(w.clone());
    }
    Ok(settings)
}

/// One message per error; a value from the environment names its variable.
fn flatten(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("environment"));
            if from_env && !e.path.is_empty() {
                let var = format!("PGPULSE_{}", e.path.join("__").to_uppercase());
                format!(
                    "{} (key `{}`, from environment variable {var})",
                    e.kind,
                    e.path.join(".").to_lowercase()
                )
            } else if !e.path.is_empty() {
                format!("{} (key `{}`)", e.kind, e.path.join("."))
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Config {
    /// What the sampling pool needs.
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            target: self.target.clone(),
            size: self.pool_size,
            wait_timeout: self.pool_wait_timeout,
            connect_timeout: self.connect_timeout,
            statement_timeout: self.probe_timeout,
            lock_timeout: self.lock_timeout,
            cap: None,
            password_file: None,
        }
    }

    /// What the sampler needs; `key_queries` is the plan guard's record of identifiers.
    pub fn sampler_settings(
        &self,
        key_queries: crate::plans::slo::KeyQueryIds,
    ) -> crate::sampler::SamplerSettings {
        crate::sampler::SamplerSettings {
            lock_timeout: self.lock_timeout,
            max_backoff: self.reconnect_max_backoff,
            probe_timeout: self.probe_timeout,
            trade_tables: self.trade_tables.clone(),
            lock_roots_named: self.lock_roots_named,
            key_queries,
            seat: crate::db::server::Seat::alone(),
        }
    }

    /// The web security (TLS, basic auth) from the web configuration file, if any.
    pub fn web_security(
        &self,
    ) -> Result<crate::http::auth::WebSecurity, crate::http::auth::AuthError> {
        crate::http::auth::WebSecurity::load(
            self.web.config_file.clone(),
            self.web.open_health,
            self.web.landing_page,
        )
        .map(|sec| sec.serving_on(self.listen))
    }

    /// Defaults for queries of the catalog that set no interval or timeout.
    pub fn catalog_defaults(&self) -> Defaults {
        Defaults {
            interval: self.default_interval,
            timeout: self.default_timeout,
        }
    }
}

/// The log format set in a config file, if the file sets one; read before logging starts,
/// so errors are ignored here (loading the configuration reports them properly).
pub fn peek_log_format(file: &Path) -> Option<LogFormat> {
    #[derive(serde::Deserialize)]
    struct Peek {
        log_format: Option<LogFormat>,
    }
    let text = std::fs::read_to_string(file).ok()?;
    serde_saphyr::from_str::<Peek>(&text).ok()?.log_format
}

fn positive(key: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(ConfigError::Invalid {
            key,
            reason: "must be greater than zero".to_owned(),
        })
    } else {
        Ok(d)
    }
}

fn at_least_one(key: &'static str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        Err(ConfigError::Invalid {
            key,
            reason: "must be at least 1".to_owned(),
        })
    } else {
        Ok(n)
    }
}

/// The most root blockers `lock_roots` may name: its series budget in queries.yaml is
/// (this + 1 for `other`) × 3 metrics.
const MAX_ROOTS_NAMED: u32 = 20;

impl Settings {
    /// Validates the settings into a [`Config`].
    pub fn validate(self) -> Result<Config, ConfigError> {
        let db = &self.database;
        let mut target = db.target()?;
        let connect_timeout = positive("database.connect_timeout", db.connect_timeout)?;
        target.set_connect_timeout(connect_timeout);
        if !(1..=20).contains(&db.pool_size) {
            return Err(ConfigError::Invalid {
                key: "database.pool_size",
                reason: format!("{} is outside 1..=20", db.pool_size),
            });
        }
        let listen = self.web.listen()?;
        let (default_interval, default_timeout) = self.sampling.defaults()?;
        self.trade_tables
            .validate()
            .map_err(|(key, reason)| ConfigError::TradeTable { key, reason })?;
        let plans = self.plans.validate(&self.trade_tables)?;
        let lock_timeout = positive("sampling.lock_timeout", self.sampling.lock_timeout)?;
        let slow_log = self.slow_log.validate(lock_timeout)?;
        let named = self.sampling.lock_roots_named;
        if !(1..=MAX_ROOTS_NAMED).contains(&named) {
            return Err(ConfigError::Invalid {
                key: "sampling.lock_roots_named",
                reason: format!(
                    "{named} is outside 1..={MAX_ROOTS_NAMED} (each named root is a label set of \
                     lock_roots; the rest are summed as other)"
                ),
            });
        }
        let fleet = self.fleet_config(connect_timeout)?;
        Ok(Config {
            fleet,
            target,
            pool_size: db.pool_size,
            pool_wait_timeout: positive("database.pool_wait_timeout", db.pool_wait_timeout)?,
            connect_timeout,
            reconnect_max_backoff: positive(
                "database.reconnect_max_backoff",
                db.reconnect_max_backoff,
            )?,
            probe_timeout: positive("database.probe_timeout", db.probe_timeout)?,
            listen,
            request_timeout: positive("web.request_timeout", self.web.request_timeout)?,
            max_http_connections: at_least_one("web.max_connections", self.web.max_connections)?,
            web: self.web.clone(),
            catalog_source: match &self.queries_file {
                Some(p) => Source::File(p.clone()),
                None => Source::Builtin,
            },
            default_interval,
            default_timeout,
            lock_timeout,
            lock_roots_named: named as i32,
            log_format: self.log_format,
            maintenance: self.maintenance.validate()?,
            trade_tables: self.trade_tables.clone(),
            plans,
            slow_log,
            settings: self,
        })
    }
}

impl DatabaseSettings {
    /// The database target: the URL (or its file) or the discrete keys, the password (or
    /// its file, or `~/.pgpass`) and TLS.
    fn target(&self) -> Result<DatabaseTarget, ConfigError> {
        let url_from_file = match (&self.url, &self.url_file) {
            (None, Some(file)) => Some(secrets::read_secret_file("database.url_file", file)?),
            _ => None,
        };
        let url = self
            .url
            .as_ref()
            .map(|u| u.expose_secret())
            .or(url_from_file.as_deref());
        let url_key = if self.url.is_some() {
            "database.url"
        } else {
            "database.url_file"
        };
        let mut target = match url {
            Some(url) => DatabaseTarget::parse(url).map_err(|e| match e {
                crate::db::ConnectError::Tls(t) => ConfigError::Tls(t.to_string()),
                e => ConfigError::Invalid {
                    key: url_key,
                    reason: e.to_string(),
                },
            })?,
            None => DatabaseTarget::from_config(self.discrete()),
        };
        self.set_password(&mut target)?;
        target
            .configure_tls(self.ssl_params()?)
            .map_err(|e| ConfigError::Tls(e.to_string()))?;
        Ok(target)
    }

    /// The connection of the discrete keys (host, port, user, dbname), with their defaults.
    fn discrete(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(self.host.as_deref().unwrap_or("localhost"));
        c.port(self.port.unwrap_or(5432));
        c.user(self.user.as_deref().unwrap_or("postgres"));
        c.dbname(self.dbname.as_deref().unwrap_or("postgres"));
        c.application_name("pgpulse");
        c
    }

    /// The password: `password`, then `password_file`, then `~/.pgpass` when neither the
    /// URL nor the keys gave one.
    fn set_password(&self, target: &mut DatabaseTarget) -> Result<(), ConfigError> {
        if let Some(pw) = &self.password {
            target.set_password(pw.expose_secret());
        }
        if let Some(file) = &self.password_file {
            let pw = secrets::read_secret_file("database.password_file", file)?;
            target.set_password(&pw);
        }
        if target.config().get_password().is_none()
            && let Some(file) = secrets::pgpass_file()
            && let Some(pw) = secrets::pgpass_password(&file, target.config())
        {
            target.set_password(&pw);
        }
        Ok(())
    }

    fn ssl_params(&self) -> Result<crate::db::tls::SslParams, ConfigError> {
        ssl_params(
            self.sslmode.as_deref(),
            &self.sslrootcert,
            &self.sslcert,
            &self.sslkey,
        )
        .map_err(|e| ConfigError::Invalid {
            key: "database.sslmode",
            reason: e.to_string(),
        })
    }
}

/// libpq-style TLS keys (of `database` or of an auth) as the TLS settings; only `sslmode` can
/// be malformed here (the files are read when the connector is built).
fn ssl_params(
    mode: Option<&str>,
    root_cert: &Option<String>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<crate::db::tls::SslParams, crate::db::tls::TlsError> {
    Ok(crate::db::tls::SslParams {
        mode: mode.map(str::parse).transpose()?,
        root_cert: root_cert.clone(),
        cert: cert.clone(),
        key: key.clone(),
    })
}

impl WebSettings {
    fn listen(&self) -> Result<SocketAddr, ConfigError> {
        self.listen_address
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::Invalid {
                key: "web.listen_address",
                reason: format!("`{}`: {e} (expected host:port)", self.listen_address),
            })
    }
}

impl SamplingSettings {
    /// The default interval and timeout of queries that set none; the timeout is shorter.
    fn defaults(&self) -> Result<(Duration, Duration), ConfigError> {
        let interval = positive("sampling.default_interval", self.default_interval)?;
        let timeout = positive("sampling.default_timeout", self.default_timeout)?;
        if timeout >= interval {
            return Err(ConfigError::Invalid {
                key: "sampling.default_timeout",
                reason: "must be shorter than sampling.default_interval".to_owned(),
            });
        }
        Ok((interval, timeout))
    }
}

impl MaintenanceRunnerSettings {
    fn validate(&self) -> Result<crate::maintenance::MaintenanceSettings, ConfigError> {
        Ok(crate::maintenance::MaintenanceSettings {
            lock_timeout: positive("maintenance.lock_timeout", self.lock_timeout)?,
            statement_timeout: positive("maintenance.statement_timeout", self.statement_timeout)?,
            max_backoff: positive("maintenance.max_backoff", self.max_backoff)?,
        })
    }
}

impl SlowLogSettings {
    /// The reader's settings, or `None` when it is off.
    fn validate(
        &self,
        lock_timeout: Duration,
    ) -> Result<Option<crate::slowlog::ReaderSettings>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        positive("slow_log.interval", self.interval)?;
        positive("slow_log.timeout", self.timeout)?;
        if !(1..=1024 * 1024).contains(&self.chunk_bytes) {
            return Err(ConfigError::Invalid {
                key: "slow_log.chunk_bytes",
                reason: format!(
                    "{} is outside 1..=1048576 (the first window of each monitoring.log_tally call; it grows only for a longer line)",
                    self.chunk_bytes
                ),
            });
        }
        if self.max_series == 0 {
            return Err(ConfigError::Invalid {
                key: "slow_log.max_series",
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(Some(crate::slowlog::ReaderSettings {
            interval: self.interval,
            timeout: self.timeout,
            lock_timeout,
            chunk_bytes: self.chunk_bytes,
            max_series: self.max_series,
        }))
    }
}

impl PlanSettings {
    /// The plan check's configuration: the plans file loaded and validated, its `{orders}`..
    /// placeholders naming `tables`, or `None` when the check is off.
    fn validate(
        &self,
        tables: &crate::db::trade_tables::TradeTables,
    ) -> Result<Option<crate::plans::GuardConfig>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        if self.interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "plans.interval",
                reason: "must be at least 1s (the default is 10m)".to_owned(),
            });
        }
        let plans = crate::plans::PlanSet::load_or_default(self.file.as_deref(), tables)?;
        Ok(Some(crate::plans::GuardConfig {
            plans: std::sync::Arc::new(plans),
            interval: self.interval,
        }))
    }
}
