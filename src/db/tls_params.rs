//! libpq's TLS settings as values: [`SslMode`], the layered [`SslParams`], taking them out of
//! a connection string ([`strip_ssl_params`], which tokio-postgres would refuse) and reading
//! the `PGSSL*` environment variables; and [`TlsError`], the errors of every TLS setting.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::crypto::PemError;

/// Errors of the TLS settings; each names the setting, the file or the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `sslmode` has a value libpq does not know.
    #[error("sslmode `{0}` is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    InvalidMode(String),
    /// A certificate or key file could not be used.
    #[error("{setting}: {source}")]
    File {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        setting: &'static str,
        /// The file and what is wrong with it.
        source: PemError,
    },
    /// `verify-ca`/`verify-full` without a root certificate file.
    #[error(
        "sslmode={mode} needs a root certificate: {file} does not exist; set sslrootcert \
         (or sslrootcert=system for the public CAs), or use sslmode=require"
    )]
    MissingRoot {
        /// The sslmode that needs the root certificate.
        mode: SslMode,
        /// The file looked for.
        file: String,
    },
    /// Settings that contradict each other.
    #[error("{0}")]
    Conflict(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// As `prefer` (tokio-postgres has no plain-first mode).
    Allow,
    /// TLS when the server offers it.
    Prefer,
    /// TLS always.
    Require,
    /// TLS, and the server certificate chains to the root file.
    VerifyCa,
    /// TLS, chain, and the host name in the certificate.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told (`verify-*` are `require` plus our verifier).
    pub fn driver(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as D;
        match self {
            Self::Disable => D::Disable,
            Self::Allow | Self::Prefer => D::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => D::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => return Err(TlsError::InvalidMode(other.to_owned())),
        })
    }
}

/// TLS settings from one source; unset fields fall through to the next source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslParams {
    /// `sslmode`.
    pub mode: Option<SslMode>,
    /// `sslrootcert`: a file, or `system`.
    pub root_cert: Option<String>,
    /// `sslcert`.
    pub cert: Option<PathBuf>,
    /// `sslkey`.
    pub key: Option<PathBuf>,
}

impl SslParams {
    /// Field by field: ours when set, else `fallback`'s.
    pub fn or(self, fallback: SslParams) -> SslParams {
        SslParams {
            mode: self.mode.or(fallback.mode),
            root_cert: self.root_cert.or(fallback.root_cert),
            cert: self.cert.or(fallback.cert),
            key: self.key.or(fallback.key),
        }
    }

    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` (empty counts as unset).
    pub fn from_env() -> Result<SslParams, TlsError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Ok(SslParams {
            mode: var("PGSSLMODE")
                .map(|m| {
                    m.parse::<SslMode>().map_err(|_| {
                        TlsError::Conflict(format!(
                            "environment variable PGSSLMODE: `{m}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                        ))
                    })
                })
                .transpose()?,
            root_cert: var("PGSSLROOTCERT"),
            cert: var("PGSSLCERT").map(PathBuf::from),
            key: var("PGSSLKEY").map(PathBuf::from),
        })
    }

    fn set(&mut self, key: &str, value: String) -> Result<bool, TlsError> {
        match key {
            "sslmode" => self.mode = Some(value.parse()?),
            "sslrootcert" => self.root_cert = Some(value),
            "sslcert" => self.cert = Some(PathBuf::from(value)),
            "sslkey" => self.key = Some(PathBuf::from(value)),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

// Every index is checked against the length in the same condition.
#[allow(clippy::indexing_slicing)]
fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of a `postgres://` URL or a
/// libpq key/value string; returns the rest (for tokio-postgres) and the taken settings.
pub fn strip_ssl_params(conn: &str) -> Result<(String, SslParams), TlsError> {
    let mut params = SslParams::default();
    let trimmed = conn.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok((trimmed.to_owned(), params));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !params.set(&percent_decode(k), percent_decode(v))? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, params));
    }
    let mut kept = Vec::new();
    for (key, value, raw) in key_values(trimmed) {
        if !params.set(&key, value)? {
            kept.push(raw);
        }
    }
    Ok((kept.join(" "), params))
}

/// Splits a libpq key/value string into (key, unquoted value, raw text of the pair). Input
/// that does not follow the grammar is passed through as raw text for the driver to report.
// A scanner over `chars`: every index is checked against the length before use.
#[allow(clippy::indexing_slicing)]
fn key_values(s: &str) -> Vec<(String, String, String)> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        skip_ws(&mut i);
        if i >= chars.len() || chars[i] != '=' {
            out.push((
                String::new(),
                String::new(),
                chars[start..i].iter().collect(),
            ));
            continue;
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
        }
        let end = i.min(chars.len());
        out.push((key, value, chars[start..end].iter().collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_settings_are_taken_out_of_a_url() {
        let (rest, p) = strip_ssl_params(
            "postgres://u:pw@db.example:5432/x?sslmode=verify-full&connect_timeout=3&sslrootcert=%2Fetc%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:pw@db.example:5432/x?connect_timeout=3");
        assert_eq!(p.mode, Some(SslMode::VerifyFull));
        assert_eq!(p.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(p.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(p.key, Some(PathBuf::from("/k.pem")));
        let (rest, p) = strip_ssl_params("postgres://h/x?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), p.mode),
            ("postgres://h/x", Some(SslMode::Require))
        );
    }

    #[test]
    fn ssl_settings_are_taken_out_of_a_key_value_string() {
        let (rest, p) = strip_ssl_params(
            "host=h sslmode = verify-ca sslrootcert='/a b/ca.pem' password='x y' dbname=d",
        )
        .unwrap();
        assert_eq!(rest, "host=h password='x y' dbname=d");
        assert_eq!(p.mode, Some(SslMode::VerifyCa));
        assert_eq!(p.root_cert.as_deref(), Some("/a b/ca.pem"));
    }

    #[test]
    fn an_unknown_sslmode_is_named() {
        let e = strip_ssl_params("postgres://h/x?sslmode=verify").unwrap_err();
        assert!(e.to_string().contains("sslmode `verify`"), "{e}");
    }

    #[test]
    fn the_url_wins_over_the_fallback_field_by_field() {
        let url = SslParams {
            mode: Some(SslMode::VerifyFull),
            ..SslParams::default()
        };
        let keys = SslParams {
            mode: Some(SslMode::Require),
            root_cert: Some("/ca".into()),
            ..SslParams::default()
        };
        let p = url.or(keys);
        assert_eq!(p.mode, Some(SslMode::VerifyFull));
        assert_eq!(p.root_cert.as_deref(), Some("/ca"));
    }
}
