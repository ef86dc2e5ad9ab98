//! TLS to PostgreSQL with libpq's meaning of `sslmode`, `sslrootcert`, `sslcert` and `sslkey`.
//!
//! tokio-postgres knows only `disable`/`prefer`/`require` and refuses `verify-ca`,
//! `verify-full` and `sslrootcert` in a connection string, so this module takes those
//! settings out of the URL ([`strip_ssl_params`]), layers them (URL query > config keys >
//! `PGSSLMODE`/`PGSSLROOTCERT`/`PGSSLCERT`/`PGSSLKEY` > libpq's defaults, see
//! [`SslParams::or`]), and builds the rustls verifier that matches ([`PgTls::build`]):
//!
//! | sslmode | encryption | server certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `allow`, `prefer` | when the server offers it | chain checked when a root file exists |
//! | `require` | always | chain checked when a root file exists (libpq's rule), else not checked |
//! | `verify-ca` | always | chain up to `sslrootcert` |
//! | `verify-full` | always | chain, and the host name in the certificate |
//!
//! The root file defaults to `~/.postgresql/root.crt` and the client certificate to
//! `~/.postgresql/postgresql.crt`/`.key`, as in libpq; `sslrootcert=system` uses the Mozilla
//! root store (webpki-roots) and implies `verify-full`. `allow` behaves as `prefer` (TLS is
//! tried first): tokio-postgres has no plain-first mode.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use super::tls_params::{SslMode, SslParams, TlsError, strip_ssl_params};

use crate::crypto::PemError;

/// Where the server certificate's chain must lead.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// No check of the server certificate.
    None,
    /// A PEM bundle.
    File(PathBuf),
    /// The Mozilla root store (`sslrootcert=system`).
    System,
}

/// The resolved TLS settings of a connection and the connector built from them.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    roots: Roots,
    client_cert: Option<PathBuf>,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTls({self})")
    }
}

impl fmt::Display for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sslmode={}", self.mode)?;
        match &self.roots {
            Roots::None => {}
            Roots::File(p) => write!(f, " sslrootcert={}", p.display())?,
            Roots::System => write!(f, " sslrootcert=system")?,
        }
        if let Some(c) = &self.client_cert {
            write!(f, " sslcert={}", c.display())?;
        }
        Ok(())
    }
}

fn home_file(name: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql").join(name))
}

impl PgTls {
    /// The settings of a plain connection (`sslmode=disable`).
    pub fn disabled() -> Self {
        Self::build(&SslParams {
            mode: Some(SslMode::Disable),
            ..SslParams::default()
        })
        .unwrap_or_else(|_| unreachable!("disable reads no file and cannot fail"))
    }

    /// Builds the connector from layered settings (unset values take libpq's defaults).
    pub fn build(params: &SslParams) -> Result<Self, TlsError> {
        let system = params.root_cert.as_deref() == Some("system");
        let mode = effective_mode(params.mode, system)?;
        let roots = roots(params, mode, system)?;
        let (cert, key) = client_files(params, mode)?;
        let provider = crate::crypto::provider();
        let verifier = verifier(&roots, &provider, mode)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&cert, &key) {
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(load_client_chain(c)?, load_client_key(k)?)
                .map_err(|e| {
                    TlsError::Rustls(format!(
                        "client certificate {} with key {}: {e}",
                        c.display(),
                        k.display()
                    ))
                })?,
            _ => builder.with_no_client_auth(),
        };
        Ok(Self {
            mode,
            roots,
            client_cert: cert,
            connector: MakeRustlsConnect::new(config),
        })
    }

    /// The effective mode.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The connector handed to tokio-postgres and deadpool.
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }
}

/// The mode in effect: `prefer` when unset; `sslrootcert=system` implies `verify-full` and
/// accepts no weaker mode but `disable`.
fn effective_mode(mode: Option<SslMode>, system: bool) -> Result<SslMode, TlsError> {
    match (mode, system) {
        (Some(m), false) => Ok(m),
        (None, false) => Ok(SslMode::Prefer),
        (None | Some(SslMode::VerifyFull), true) => Ok(SslMode::VerifyFull),
        (Some(m), true) if m != SslMode::Disable => Err(TlsError::Conflict(format!(
            "sslrootcert=system needs sslmode=verify-full, not {m}"
        ))),
        (Some(m), true) => Ok(m),
    }
}

/// Where the server certificate's chain must lead, by libpq's rules: the verifying modes
/// need the root file; a root file that exists is used also by the weaker modes.
fn roots(params: &SslParams, mode: SslMode, system: bool) -> Result<Roots, TlsError> {
    let root_setting = params
        .root_cert
        .as_deref()
        .map(PathBuf::from)
        .or_else(|| home_file("root.crt"));
    match mode {
        SslMode::Disable => Ok(Roots::None),
        _ if system => Ok(Roots::System),
        SslMode::VerifyCa | SslMode::VerifyFull => match root_setting {
            Some(p) if p.exists() => Ok(Roots::File(p)),
            other => Err(TlsError::MissingRoot {
                mode,
                file: other
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.postgresql/root.crt".to_owned()),
            }),
        },
        _ => match root_setting {
            Some(p) if p.exists() => Ok(Roots::File(p)),
            Some(p) if params.root_cert.is_some() => Err(TlsError::File {
                setting: "sslrootcert",
                source: PemError::File {
                    file: p,
                    reason: "does not exist".to_owned(),
                },
            }),
            _ => Ok(Roots::None),
        },
    }
}

/// The client certificate and key: both or neither; libpq's default files when both exist.
fn client_files(
    params: &SslParams,
    mode: SslMode,
) -> Result<(Option<PathBuf>, Option<PathBuf>), TlsError> {
    match (&params.cert, &params.key) {
        // A plain connection reads no file.
        _ if mode == SslMode::Disable => Ok((None, None)),
        (Some(c), Some(k)) => Ok((Some(c.clone()), Some(k.clone()))),
        (Some(_), None) | (None, Some(_)) => Err(TlsError::Conflict(
            "sslcert and sslkey must be given together".to_owned(),
        )),
        (None, None) => match (home_file("postgresql.crt"), home_file("postgresql.key")) {
            (Some(c), Some(k)) if c.exists() && k.exists() => Ok((Some(c), Some(k))),
            _ => Ok((None, None)),
        },
    }
}

/// The server certificate verifier of `roots`.
fn verifier(
    roots: &Roots,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    mode: SslMode,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    Ok(match roots {
        Roots::None => Arc::new(NoVerification(provider.clone())),
        Roots::File(p) => {
            let store = crate::crypto::load_roots(p).map_err(|source| TlsError::File {
                setting: "sslrootcert",
                source,
            })?;
            webpki(store, provider, mode == SslMode::VerifyFull)?
        }
        Roots::System => {
            let store = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            webpki(store, provider, true)?
        }
    })
}

fn load_client_chain(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    crate::crypto::load_certs(file).map_err(|source| TlsError::File {
        setting: "sslcert",
        source,
    })
}

fn load_client_key(file: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    crate::crypto::load_key(file).map_err(|source| TlsError::File {
        setting: "sslkey",
        source,
    })
}

fn webpki(
    store: rustls::RootCertStore,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    check_name: bool,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(if check_name {
        inner
    } else {
        Arc::new(ChainOnly(inner))
    })
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root file: encryption without authentication of the server
/// (libpq's behaviour); the handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A plain-words reason for a failed TLS handshake found in `e`'s chain of sources (unknown
/// CA, name mismatch, expired, ...), or `None` when the failure is not about TLS.
pub fn explain(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let found = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(r) = found {
            return Some(reason(r));
        }
        cur = err.source();
    }
    None
}

fn reason(e: &rustls::Error) -> String {
    use CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                "TLS: server certificate signed by an unknown CA (not in sslrootcert)".to_owned()
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("TLS: server certificate name mismatch: {c}")
            }
            C::Expired | C::ExpiredContext { .. } => {
                format!("TLS: server certificate expired: {c}")
            }
            other => format!("TLS: invalid server certificate: {other}"),
        },
        rustls::Error::AlertReceived(a) => format!(
            "TLS: the server refused the handshake ({a:?}); a client certificate may be required or not trusted"
        ),
        other => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mode: Option<SslMode>, root: Option<&str>) -> SslParams {
        SslParams {
            mode,
            root_cert: root.map(str::to_owned),
            ..SslParams::default()
        }
    }

    #[test]
    fn system_roots_imply_verify_full_and_refuse_weaker_modes() {
        let t = PgTls::build(&params(None, Some("system"))).unwrap();
        assert_eq!(t.mode(), SslMode::VerifyFull);
        assert_eq!(t.to_string(), "sslmode=verify-full sslrootcert=system");
        let e = PgTls::build(&params(Some(SslMode::Require), Some("system"))).unwrap_err();
        assert!(e.to_string().contains("needs sslmode=verify-full"), "{e}");
    }

    #[test]
    fn verify_modes_need_a_root_file_that_exists() {
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let e = PgTls::build(&params(Some(mode), Some("/nonexistent/ca.pem"))).unwrap_err();
            assert!(
                matches!(e, TlsError::MissingRoot { .. })
                    && e.to_string().contains("/nonexistent/ca.pem"),
                "{e}"
            );
        }
        // An explicit root file that is missing is an error for the weaker modes too.
        let e =
            PgTls::build(&params(Some(SslMode::Require), Some("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            e.to_string()
                .contains("sslrootcert: /nonexistent/ca.pem: does not exist"),
            "{e}"
        );
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let p = SslParams {
            mode: Some(SslMode::Require),
            cert: Some(PathBuf::from("/c.pem")),
            ..SslParams::default()
        };
        let e = PgTls::build(&p).unwrap_err();
        assert!(e.to_string().contains("sslcert and sslkey"), "{e}");
    }

    #[test]
    fn disable_reads_no_file_and_tells_the_driver_to_stay_plain() {
        let t = PgTls::build(&params(Some(SslMode::Disable), Some("/nonexistent/ca.pem"))).unwrap();
        assert_eq!(t.mode().driver(), tokio_postgres::config::SslMode::Disable);
        assert_eq!(t.to_string(), "sslmode=disable");
    }
}
