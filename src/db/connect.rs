//! Connection settings parsed from a URL, and one-off connections for commands.
//!
//! The password never leaves this module in readable form: [`DatabaseTarget`]'s `Debug` and
//! `Display` redact it, and errors describe the server by host, port and database only.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};

use super::tls::{PgTls, SslParams, TlsError};

/// Default connect timeout when the URL does not set `connect_timeout`.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TCP keepalive idle time when the URL does not set `keepalives_idle` (libpq's and the
/// driver's default is the operating system's, two hours). A connection, or an abandoned
/// connection attempt, keeps its budget slot while its socket is open
/// ([`super::slots`], [`super::lease`]); with keepalives (on an idle socket) and
/// [`DEFAULT_TCP_USER_TIMEOUT`] (on a socket with data the peer has not acknowledged) a peer
/// that is gone (a host behind a network partition) is noticed within about a minute and its
/// slot comes free, while a live server, even one whose process waits or is stopped, answers
/// from its kernel and keeps the slot. The price: after a partition longer than that, the
/// server may still hold pgpulse's former sessions until its own keepalives notice
/// (`tcp_keepalives_idle` on the server) while pgpulse opens new ones; without it, pgpulse
/// could stay without a connection for hours after the network is back.
pub(crate) const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(30);

/// TCP keepalive probe interval when the URL does not set `keepalives_interval`.
pub(crate) const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);

/// Unanswered keepalive probes before the connection is dropped, when the URL does not set
/// `keepalives_retries`.
pub(crate) const DEFAULT_KEEPALIVES_RETRIES: u32 = 3;

/// How long sent data may stay unacknowledged before the connection is closed, when the URL
/// does not set `tcp_user_timeout` (given in seconds to this driver, in milliseconds to libpq).
pub(crate) const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// The driver's keepalive idle time when none is given.
const DRIVER_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// Errors of parsing connection settings and connecting.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The database URL could not be parsed (a configuration error).
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The server could not be reached or refused the connection (a runtime error).
    #[error("cannot connect to {target}: {reason}")]
    Unreachable {
        /// Host, port and database, without credentials.
        target: String,
        /// Why, as the driver reported it.
        reason: String,
    },
    /// The TLS settings are wrong (a configuration error).
    #[error("TLS settings: {0}")]
    Tls(#[from] TlsError),
}

/// A secret file's value: one trailing newline (`\n` or `\r\n`) dropped, as `echo secret >
/// file` and Kubernetes secrets leave one; an empty value is an error.
pub(crate) fn secret_value(text: &str) -> Result<&str, &'static str> {
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text);
    if value.is_empty() {
        Err("the file is empty")
    } else {
        Ok(value)
    }
}

/// Reads a secret file now (a password file is read for every new connection: a few bytes
/// from a local or mounted file); the error names the reason, never the content.
pub(crate) fn read_secret(file: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.kind().to_string())?;
    secret_value(&text)
        .map(str::to_owned)
        .map_err(str::to_owned)
}

/// A parsed database location; the password is redacted in every printed form.
#[derive(Clone)]
pub struct DatabaseTarget {
    config: Config,
    /// The TLS settings given in the URL (they win over config keys and the environment).
    url_ssl: SslParams,
    tls: PgTls,
}

impl DatabaseTarget {
    /// Parses a `postgres://` URL or a libpq key/value string.
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        if url.trim().is_empty() {
            return Err(ConnectError::InvalidUrl(
                "empty; pass --database-url or set PGPULSE_DATABASE_URL".to_owned(),
            ));
        }
        let (rest, url_ssl) = super::tls::strip_ssl_params(url)
            .map_err(|e| ConnectError::InvalidUrl(e.to_string()))?;
        let mut config = Config::from_str(&rest)
            .map_err(|e| ConnectError::InvalidUrl(redact(&e.to_string(), &rest)))?;
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("pgpulse");
        }
        set_keepalive_defaults(&mut config);
        let mut target = Self {
            config,
            url_ssl,
            tls: PgTls::disabled(),
        };
        target.configure_tls(SslParams::default())?;
        Ok(target)
    }

    /// Wraps an already built driver configuration, without TLS until
    /// [`DatabaseTarget::configure_tls`] is called.
    pub fn from_config(mut config: Config) -> Self {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        Self {
            config,
            url_ssl: SslParams::default(),
            tls: PgTls::disabled(),
        }
    }

    /// Resolves the TLS settings (the URL's, then `keys` from the configuration, then the
    /// `PGSSL*` environment, then libpq's defaults) and builds the connector.
    pub fn configure_tls(&mut self, keys: SslParams) -> Result<(), TlsError> {
        let params = self.url_ssl.clone().or(keys).or(SslParams::from_env()?);
        let tls = PgTls::build(&params)?;
        // As libpq: no TLS over a Unix socket, whatever the mode.
        let unix = matches!(self.config.get_hosts().first(), Some(Host::Unix(_)));
        self.config.ssl_mode(if unix {
            tokio_postgres::config::SslMode::Disable
        } else {
            tls.mode().driver()
        });
        self.tls = tls;
        Ok(())
    }

    /// The resolved TLS settings.
    pub fn tls(&self) -> &PgTls {
        &self.tls
    }

    /// The driver configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Overrides the password (from a file or the environment).
    pub fn set_password(&mut self, password: &str) {
        self.config.password(password);
    }

    /// Overrides the user name.
    pub fn set_user(&mut self, user: &str) {
        self.config.user(user);
    }

    /// Overrides the database name.
    pub fn set_dbname(&mut self, dbname: &str) {
        self.config.dbname(dbname);
    }

    /// Overrides the connect timeout.
    pub fn set_connect_timeout(&mut self, timeout: Duration) {
        self.config.connect_timeout(timeout);
    }

    /// The database name (`postgres` when unset, as libpq defaults to the user name).
    pub fn dbname(&self) -> String {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
            .to_owned()
    }
}

/// Sets pgpulse's keepalive defaults where the URL left the driver's (see
/// [`DEFAULT_KEEPALIVES_IDLE`]).
fn set_keepalive_defaults(config: &mut Config) {
    // The driver keeps no trace of whether the idle time was given: its default counts as
    // not given (a URL asking for exactly two hours gets 30 s).
    if config.get_keepalives_idle() == DRIVER_KEEPALIVES_IDLE {
        config.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(DEFAULT_KEEPALIVES_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(DEFAULT_KEEPALIVES_RETRIES);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
    }
}

/// Removes the password of `url` from a message that may quote it.
fn redact(message: &str, url: &str) -> String {
    match Config::from_str(url)
        .ok()
        .and_then(|c| c.get_password().map(<[u8]>::to_vec))
    {
        Some(pw) if !pw.is_empty() => message.replace(&*String::from_utf8_lossy(&pw), "********"),
        _ => message.to_owned(),
    }
}

impl fmt::Display for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("");
        write!(f, "{user}@{host}:{port}/{}", self.dbname())
    }
}

impl fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseTarget({self})")
    }
}

/// Opens one connection (used by commands such as `migrate`); the connection task runs on
/// the current runtime and ends when the client is dropped.
pub async fn connect(target: &DatabaseTarget) -> Result<Client, ConnectError> {
    let (client, connection) = target
        .config
        .connect(target.tls.connector())
        .await
        .map_err(|e| ConnectError::Unreachable {
            target: target.to_string(),
            reason: match super::tls::explain(&e) {
                // Name the settings that decided, e.g. which sslrootcert did not match.
                Some(tls) => format!("{tls} ({})", target.tls),
                None => super::outcome::describe(&e),
            },
        })?;
    tokio::spawn(drive(connection));
    Ok(client)
}

/// Drives a command's connection until it closes, logging the server's notices: those that
/// only say an `IF NOT EXISTS` object already exists at debug level (no news to an operator),
/// every other one (pgpulse's own, e.g. an extension not created) at info.
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_postgres::AsyncMessage;
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notice(n))) if super::outcome::already_exists(n.code()) => {
                tracing::debug!(notice = n.message(), "database notice");
            }
            Some(Ok(AsyncMessage::Notice(n))) => {
                tracing::info!(
                    severity = n.severity(),
                    notice = n.message(),
                    "database notice"
                );
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "database connection closed");
                return;
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_peers_are_noticed_within_about_a_minute_unless_the_url_says_otherwise() {
        let t = DatabaseTarget::parse("postgres://u@db.example/trading").unwrap();
        assert!(t.config().get_keepalives());
        assert_eq!(t.config().get_keepalives_idle(), DEFAULT_KEEPALIVES_IDLE);
        assert_eq!(
            t.config().get_keepalives_interval(),
            Some(DEFAULT_KEEPALIVES_INTERVAL)
        );
        assert_eq!(
            t.config().get_keepalives_retries(),
            Some(DEFAULT_KEEPALIVES_RETRIES)
        );
        assert_eq!(
            t.config().get_tcp_user_timeout(),
            Some(&DEFAULT_TCP_USER_TIMEOUT)
        );
        let t = DatabaseTarget::parse(
            "postgres://u@db.example/trading?keepalives_idle=100&keepalives_interval=5&keepalives_retries=7&tcp_user_timeout=9",
        )
        .unwrap();
        assert_eq!(t.config().get_keepalives_idle(), Duration::from_secs(100));
        assert_eq!(
            t.config().get_keepalives_interval(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(t.config().get_keepalives_retries(), Some(7));
        assert_eq!(
            t.config().get_tcp_user_timeout(),
            Some(&Duration::from_secs(9))
        );
        let t = DatabaseTarget::parse("host=db.example keepalives=0").unwrap();
        assert!(!t.config().get_keepalives(), "keepalives=0 stays off");
    }
}
