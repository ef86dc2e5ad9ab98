//! The one TLS crypto provider of the binary (rustls with `ring`) and PEM file loading shared
//! by the PostgreSQL client ([`crate::db::tls`]) and the HTTPS server
//! ([`crate::http::webconfig`]).
//!
//! Every rustls builder in pgpulse is given [`provider`] explicitly, and `main` also installs
//! it as the process default, so no code path can pick another provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Errors of reading certificates and keys; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read or holds no PEM section of the wanted kind.
    #[error("{file}: {reason}")]
    File {
        /// The file that could not be used.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The crypto provider used by every TLS configuration of pgpulse (`ring`).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs [`provider`] as the process-wide default; a second call is harmless.
pub fn install_default_provider() {
    // Err means a default is already installed (by an earlier call): nothing to do.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn pem_reason(e: rustls_pki_types::pem::Error, what: &str) -> String {
    match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!("no {what} found (expected PEM)"),
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        other => format!("not a valid PEM file: {other}"),
    }
}

/// Reads every certificate of a PEM file (a chain, or a bundle of CAs); at least one.
pub fn load_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let err = |reason: String| PemError::File {
        file: file.to_owned(),
        reason,
    };
    let iter =
        CertificateDer::pem_file_iter(file).map_err(|e| err(pem_reason(e, "certificate")))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_reason(e, "certificate")))?;
    if certs.is_empty() {
        return Err(err("no certificate found (expected PEM)".to_owned()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(file: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(file).map_err(|e| PemError::File {
        file: file.to_owned(),
        reason: pem_reason(e, "private key"),
    })
}

/// Reads a CA bundle into a root store.
pub fn load_roots(file: &Path) -> Result<rustls::RootCertStore, PemError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(file)? {
        roots.add(cert).map_err(|e| PemError::File {
            file: file.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}
