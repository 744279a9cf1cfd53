//! TLS from PEM files: server certificate and key, and optionally a client CA for mutual TLS. One set of files
//! serves the gRPC listener (through tonic) and, when asked, `/metrics` (through tokio-rustls).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::error::StartupError;

/// Longest a client may take to complete its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files, read and checked once at start-up.
#[derive(Clone)]
pub(crate) struct TlsFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, StartupError> {
    std::fs::read(path)
        .map_err(|e| StartupError::Tls(format!("cannot read the {what} {}: {e}", path.display())))
}

impl TlsFiles {
    pub(crate) fn load(
        cert: &Path,
        key: &Path,
        client_ca: Option<&PathBuf>,
    ) -> Result<Self, StartupError> {
        let files = Self {
            cert: read(cert, "certificate")?,
            key: read(key, "private key")?,
            client_ca: client_ca
                .map(|p| read(p, "client CA certificate"))
                .transpose()?,
        };
        // Parse now, so a bad file is a start-up error naming it, not a failed handshake later.
        files.rustls().map_err(|e| {
            StartupError::Tls(format!(
                "{e} (certificate {}, key {})",
                cert.display(),
                key.display()
            ))
        })?;
        Ok(files)
    }

    pub(crate) fn mutual(&self) -> bool {
        self.client_ca.is_some()
    }

    /// For the gRPC listener.
    pub(crate) fn tonic(&self) -> ServerTlsConfig {
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        config
    }

    /// For `/metrics`.
    pub(crate) fn rustls(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
        if certs.is_empty() {
            return Err("the certificate file holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| format!("the private key is not valid PEM: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| format!("the client CA is not valid PEM: {e}"))?;
                    roots.add(cert).map_err(|e| format!("the client CA: {e}"))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("the client CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("the certificate and key do not fit together: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
