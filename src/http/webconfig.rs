//! The web configuration file (`--web.config.file`, `web.config_file`) in the format of the
//! Prometheus exporter toolkit, so one file serves node_exporter, postgres_exporter and
//! pgpulse alike, and `promtool check web-config` checks it:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # relative paths are relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
//!   client_ca_file: ca.crt
//!   min_version: TLS12             # TLS12 or TLS13 (rustls has nothing older)
//! http_server_config:
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! basic_auth_users:
//!   prometheus: $2y$10$...         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! Keys the toolkit has but rustls cannot honour (`cipher_suites`, `curve_preferences`,
//! `client_allowed_sans`, `RequestClientCert`, `RequireAnyClientCert`, TLS 1.0/1.1) are
//! refused with a message that says so, never silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;

use crate::crypto::PemError;

/// Errors of the web configuration; each names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {reason}")]
    Read {
        /// The file that could not be used.
        file: PathBuf,
        /// The cause, in words an operator can act on.
        reason: String,
    },
    /// The file is not valid YAML for the format.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file that could not be used.
        file: PathBuf,
        /// Line (1-based).
        line: u64,
        /// Column (1-based).
        column: u64,
        /// What is wrong.
        message: String,
    },
    /// A value is not acceptable.
    #[error("{file}: {key}: {reason}")]
    Invalid {
        /// The file that could not be used.
        file: PathBuf,
        /// The dotted key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate or key file could not be used.
    #[error("{file}: {key}: {source}")]
    Pem {
        /// The web configuration file.
        file: PathBuf,
        /// The key naming the PEM file.
        key: &'static str,
        /// The PEM file and what is wrong with it.
        source: PemError,
    },
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    http_server_config: Option<HttpFile>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// Who must present a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A certificate, when given, must chain to the client CA.
    VerifyIfGiven,
    /// A certificate chaining to the client CA is required.
    Require,
}

/// The TLS part, with paths resolved against the file's directory.
#[derive(Debug, Clone)]
pub(crate) struct TlsSettings {
    /// Server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Server private key (PEM).
    pub key_file: PathBuf,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// CA bundle for client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// Allowed protocol versions (TLS 1.2 and/or 1.3).
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    /// `prefer_server_cipher_suites` (default true, as in the toolkit).
    pub prefer_server_order: bool,
}

/// A validated web configuration.
#[derive(Debug, Clone)]
pub(crate) struct WebConfig {
    /// The file it came from.
    pub source: PathBuf,
    /// HTTPS settings, when `tls_server_config` is given.
    pub tls: Option<TlsSettings>,
    /// User name → bcrypt hash.
    pub users: BTreeMap<String, String>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Headers the exporter toolkit lets the file set.
const ALLOWED_HEADERS: &[&str] = &[
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

fn version(v: &str) -> Result<u8, String> {
    match v {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(format!(
            "{v} is not supported (TLS 1.0 and 1.1 are obsolete); use TLS12 or TLS13"
        )),
        other => Err(format!("`{other}` is not one of TLS12, TLS13")),
    }
}

impl WebConfig {
    /// Reads and validates `file`; reads no certificate yet (see [`WebConfig::server_config`]).
    pub(crate) fn load(file: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| WebConfigError::Read {
            file: file.to_owned(),
            reason: e.to_string(),
        })?;
        let parsed: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_saphyr::from_str(&text).map_err(|e| {
                let (line, column, message) = crate::yaml::describe(&text, &e);
                WebConfigError::Syntax {
                    file: file.to_owned(),
                    line,
                    column,
                    message,
                }
            })?
        };
        let invalid = |key: &str, reason: String| WebConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        let tls = match parsed.tls_server_config {
            None => None,
            Some(t) => Some(tls_settings(t, dir, &invalid)?),
        };
        let mut users = BTreeMap::new();
        for (user, hash) in parsed.basic_auth_users.unwrap_or_default() {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(invalid(
                    &format!("basic_auth_users.{user}"),
                    "not a bcrypt hash (expected $2y$/$2b$/$2a$, e.g. from `htpasswd -nBC 10`)"
                        .to_owned(),
                ));
            }
            users.insert(user, hash);
        }
        let mut headers = Vec::new();
        let http = parsed.http_server_config.unwrap_or_default();
        if http.http2 == Some(true) {
            return Err(invalid(
                "http_server_config.http2",
                "pgpulse serves HTTP/1.1 only; remove the key or set it to false".to_owned(),
            ));
        }
        for (name, value) in http.headers.unwrap_or_default() {
            let key = format!("http_server_config.headers.{name}");
            if !ALLOWED_HEADERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&name))
            {
                return Err(invalid(
                    &key,
                    format!(
                        "this header can not be set; allowed: {}",
                        ALLOWED_HEADERS.join(", ")
                    ),
                ));
            }
            let n =
                HeaderName::try_from(name.as_str()).map_err(|e| invalid(&key, e.to_string()))?;
            let v =
                HeaderValue::try_from(value.as_str()).map_err(|e| invalid(&key, e.to_string()))?;
            headers.push((n, v));
        }
        Ok(Self {
            source: file.to_owned(),
            tls,
            users,
            headers,
        })
    }

    /// Reads the certificate files and builds the rustls server configuration.
    pub(crate) fn server_config(&self) -> Result<Option<Arc<ServerConfig>>, WebConfigError> {
        let Some(t) = &self.tls else {
            return Ok(None);
        };
        let pem = |key: &'static str| {
            let file = self.source.clone();
            move |source| WebConfigError::Pem { file, key, source }
        };
        let invalid = |key: &str, reason: String| WebConfigError::Invalid {
            file: self.source.clone(),
            key: key.to_owned(),
            reason,
        };
        let certs =
            crate::crypto::load_certs(&t.cert_file).map_err(pem("tls_server_config.cert_file"))?;
        let key =
            crate::crypto::load_key(&t.key_file).map_err(pem("tls_server_config.key_file"))?;
        let provider = crate::crypto::provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&t.versions)
            .map_err(|e| invalid("tls_server_config.min_version", e.to_string()))?;
        let builder = match (&t.client_auth, &t.client_ca_file) {
            (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
            (auth, Some(ca)) => {
                let roots = crate::crypto::load_roots(ca)
                    .map_err(pem("tls_server_config.client_ca_file"))?;
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = if *auth == ClientAuth::VerifyIfGiven {
                    v.allow_unauthenticated()
                } else {
                    v
                };
                let verifier = v
                    .build()
                    .map_err(|e| invalid("tls_server_config.client_ca_file", e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            invalid(
                "tls_server_config.key_file",
                format!("does not match cert_file {}: {e}", t.cert_file.display()),
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.ignore_client_order = t.prefer_server_order;
        Ok(Some(Arc::new(config)))
    }
}

fn tls_settings(
    t: TlsFile,
    dir: &Path,
    invalid: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<TlsSettings, WebConfigError> {
    let k = |s: &str| format!("tls_server_config.{s}");
    unsupported_keys(&t).map_err(|key| {
        invalid(
            &k(key),
            "not supported by pgpulse (rustls chooses safe defaults); remove the key".to_owned(),
        )
    })?;
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
    let cert_file = t
        .cert_file
        .map(resolve)
        .ok_or_else(|| invalid(&k("cert_file"), "missing (and key_file with it)".to_owned()))?;
    let key_file = t
        .key_file
        .map(resolve)
        .ok_or_else(|| invalid(&k("key_file"), "missing (and cert_file with it)".to_owned()))?;
    let client_auth = client_auth(t.client_auth_type.as_deref())
        .map_err(|r| invalid(&k("client_auth_type"), r))?;
    let client_ca_file = t.client_ca_file.map(resolve);
    match (client_auth, &client_ca_file) {
        (ClientAuth::None, Some(_)) => {
            return Err(invalid(
                &k("client_ca_file"),
                "set, but client_auth_type is NoClientCert".to_owned(),
            ));
        }
        (ClientAuth::VerifyIfGiven | ClientAuth::Require, None) => {
            return Err(invalid(
                &k("client_ca_file"),
                "missing: client_auth_type verifies client certificates against it".to_owned(),
            ));
        }
        _ => {}
    }
    let range = (t.min_version.as_deref(), t.max_version.as_deref());
    let versions = versions(range, &|key, r| invalid(&k(key), r))?;
    Ok(TlsSettings {
        cert_file,
        key_file,
        client_auth,
        client_ca_file,
        versions,
        prefer_server_order: t.prefer_server_cipher_suites.unwrap_or(true),
    })
}

/// The first key of the exporter toolkit that pgpulse does not support, if one is set.
fn unsupported_keys(t: &TlsFile) -> Result<(), &'static str> {
    let set = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|c| !c.is_empty());
    if set(&t.cipher_suites) {
        return Err("cipher_suites");
    }
    if set(&t.curve_preferences) {
        return Err("curve_preferences");
    }
    if set(&t.client_allowed_sans) {
        return Err("client_allowed_sans");
    }
    Ok(())
}

/// `client_auth_type`: only the modes that verify a certificate given.
fn client_auth(value: Option<&str>) -> Result<ClientAuth, String> {
    match value.unwrap_or("NoClientCert") {
        "NoClientCert" => Ok(ClientAuth::None),
        "VerifyClientCertIfGiven" => Ok(ClientAuth::VerifyIfGiven),
        "RequireAndVerifyClientCert" => Ok(ClientAuth::Require),
        "RequestClientCert" | "RequireAnyClientCert" => Err(
            "certificates that are not verified are not accepted; use VerifyClientCertIfGiven or RequireAndVerifyClientCert".to_owned(),
        ),
        other => Err(format!(
            "`{other}` is not one of NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
        )),
    }
}

/// The TLS versions between `min_version` (default 1.2) and `max_version` (default 1.3).
fn versions(
    (min, max): (Option<&str>, Option<&str>),
    invalid: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, WebConfigError> {
    let min = match min {
        Some(v) => version(v).map_err(|r| invalid("min_version", r))?,
        None => 12,
    };
    let max = match max {
        Some(v) => version(v).map_err(|r| invalid("max_version", r))?,
        None => 13,
    };
    if min > max {
        return Err(invalid("max_version", "lower than min_version".to_owned()));
    }
    let mut versions = Vec::new();
    if min <= 12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= 13 {
        versions.push(&rustls::version::TLS13);
    }
    Ok(versions)
}

/// Hostile web configuration files (fuzzed with proptest): any text, and the example file
/// with one line removed or one byte changed, loads or fails with a message naming the file;
/// it never panics.
#[cfg(test)]
mod hostile {
    use super::*;
    use proptest::prelude::*;

    /// The shipped example (read at run time: deploy/ is not part of the image's build).
    fn example() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/web-config.example.yml"
        ))
        .unwrap_or_default()
    }

    fn load_text(text: &str) -> Result<WebConfig, WebConfigError> {
        let dir = tempfile::tempdir().map_err(|e| WebConfigError::Read {
            file: PathBuf::from("tempdir"),
            reason: e.to_string(),
        })?;
        let file = dir.path().join("web.yml");
        std::fs::write(&file, text).map_err(|e| WebConfigError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        let loaded = WebConfig::load(&file);
        if let Ok(c) = &loaded {
            // Certificates that do not exist are an error too, never a panic.
            let _ = c.server_config();
        }
        if let Err(e) = &loaded {
            assert!(e.to_string().contains("web.yml"), "{e}");
        }
        loaded
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_loads_or_fails_with_the_file_named(text in "\\PC{0,300}") {
            let _ = load_text(&text);
        }

        #[test]
        fn the_example_with_one_line_removed_or_one_byte_changed_never_panics(
            line in 0usize..40,
            at in 0usize..2000,
            byte in any::<u8>(),
        ) {
            let example = example();
            prop_assert!(!example.is_empty());
            let removed: Vec<&str> = example
                .lines()
                .enumerate()
                .filter(|(i, _)| *i != line)
                .map(|(_, l)| l)
                .collect();
            let _ = load_text(&removed.join("\n"));
            let mut changed = example.as_bytes().to_vec();
            if let Some(b) = changed.get_mut(at % example.len().max(1)) {
                *b = byte;
            }
            let _ = load_text(&String::from_utf8_lossy(&changed));
        }
    }
}
