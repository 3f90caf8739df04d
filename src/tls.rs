//! TLS configurations (ring provider): the client side, one rustls `ClientConfig` from a CA
//! bundle and an optional client certificate, shared by every connection the gateway makes;
//! and the server side of the HL7 listener, optionally requiring client certificates.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Makes ring the process's default rustls provider (idempotent). `main` calls it first; the
/// library calls it again before building an HTTP client, so that tests and embedders work
/// too (reqwest without a provider of its own panics otherwise).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a client configuration that trusts exactly the certificates in `ca_file` and, if
/// given, presents `client` (certificate chain file, private key file). Verification of the
/// chain and the server name is always on.
pub fn client_config(ca_file: &Path, client: Option<(&Path, &Path)>) -> Result<rustls::ClientConfig, String> {
    let roots = roots(ca_file)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let (chain, key) = identity(cert, key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())
        }
    }
}

/// Builds the HL7 listener's server configuration: the certificate chain in `cert` and its
/// private key in `key` (a secret: its mode is checked). With `client_ca`, a client must
/// present a certificate that those CAs sign.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let (chain, key) = identity(cert, key)?;
    builder.with_single_cert(chain, key).map_err(|e| format!("{}: {e}", cert.display()))
}

/// Exactly the certificates in `ca_file`.
fn roots(ca_file: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", ca_file.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate found", ca_file.display()));
    }
    Ok(roots)
}

/// A certificate chain and its private key (whose file mode is checked: it is a secret).
fn identity(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    crate::config::secrets::secret_file_mode(key)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    Ok((chain, key))
}
