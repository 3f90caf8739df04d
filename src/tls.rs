//! TLS configurations (ring provider): the client side, one rustls `ClientConfig` from a CA
//! bundle and an optional client certificate, shared by every connection the gateway makes;
//! and the server side of the HL7 listener, optionally requiring client certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::secrets::SecretError;

/// Why a TLS configuration could not be built. Every message that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read, or is not PEM.
    #[error("{}: {error}", path.display())]
    Pem { path: PathBuf, error: rustls_pki_types::pem::Error },
    #[error("{}: no certificate found", path.display())]
    NoCertificate { path: PathBuf },
    /// rustls refused a certificate or key of the file.
    #[error("{}: {error}", path.display())]
    Refused { path: PathBuf, error: rustls::Error },
    /// The client CAs make no verifier.
    #[error("{}: {error}", path.display())]
    ClientCa { path: PathBuf, error: rustls::server::VerifierBuilderError },
    #[error("{0}")]
    Rustls(rustls::Error),
    /// The private key's file is not a secret only the service user can read.
    #[error(transparent)]
    Secret(SecretError),
}

/// Makes ring the process's default rustls provider (idempotent). `main` calls it first; the
/// library calls it again before building an HTTP client, so that tests and embedders work
/// too (reqwest without a provider of its own panics otherwise).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a client configuration that trusts exactly the certificates in `ca_file` and, if
/// given, presents `client` (certificate chain file, private key file). Verification of the
/// chain and the server name is always on.
pub fn client_config(ca_file: &Path, client: Option<(&Path, &Path)>) -> Result<rustls::ClientConfig, TlsError> {
    let roots = roots(ca_file)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let (chain, key) = identity(cert, key)?;
            builder.with_client_auth_cert(chain, key).map_err(TlsError::Rustls)
        }
    }
}

/// Builds the HL7 listener's server configuration: the certificate chain in `cert` and its
/// private key in `key` (a secret: its mode is checked). With `client_ca`, a client must
/// present a certificate that those CAs sign.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                .build()
                .map_err(|error| TlsError::ClientCa { path: ca.to_path_buf(), error })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let (chain, key) = identity(cert, key)?;
    builder.with_single_cert(chain, key).map_err(|error| TlsError::Refused { path: cert.to_path_buf(), error })
}

/// Exactly the certificates in `ca_file`.
fn roots(ca_file: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let pem = |error| TlsError::Pem { path: ca_file.to_path_buf(), error };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(pem)? {
        roots.add(cert.map_err(pem)?).map_err(|error| TlsError::Refused { path: ca_file.to_path_buf(), error })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate { path: ca_file.to_path_buf() });
    }
    Ok(roots)
}

/// A certificate chain and its private key (whose file mode is checked: it is a secret).
fn identity(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let pem = |path: &Path, error| TlsError::Pem { path: path.to_path_buf(), error };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_path_buf() });
    }
    crate::config::secrets::secret_file_mode(key).map_err(TlsError::Secret)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e))?;
    Ok((chain, key))
}
