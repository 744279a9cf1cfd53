//! Who may call and over what: the bearer tokens and the TLS files, loaded and checked once at start-up, and a
//! warning for each listener that serves beyond this machine without them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_rustls::rustls;

use crate::api::auth::Tokens;
use crate::error::StartupError;
use crate::server::config::ServeConfig;
use crate::server::tls::TlsFiles;

pub(crate) struct Security {
    pub tokens: Tokens,
    pub tls: Option<TlsFiles>,
    /// Whether `/metrics` and the probes are served over TLS too.
    metrics_tls: bool,
}

impl Security {
    pub(crate) fn load(config: &ServeConfig) -> Result<Self, StartupError> {
        let settings = &config.security;
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsFiles::load(cert, key, settings.tls_client_ca.as_ref())?)
            }
            _ => None,
        };
        Ok(Self {
            tokens: config.tokens()?,
            tls,
            metrics_tls: settings.metrics_tls,
        })
    }

    /// Warns for each listener reachable from other machines that takes calls without a token or without TLS.
    pub(crate) fn warn_if_exposed(&self, listeners: &[(&'static str, SocketAddr)]) {
        for &(listener, addr) in listeners {
            if addr.ip().is_loopback() {
                continue;
            }
            if self.tokens.is_empty() {
                tracing::warn!(listener, %addr, "serving beyond this machine without authentication: set --auth-tokens-file");
            }
            if self.tls.is_none() {
                tracing::warn!(listener, %addr, "serving beyond this machine without TLS: set --tls-cert and --tls-key");
            }
        }
    }

    /// TLS for the V2 REST listener: the gRPC listener's.
    pub(crate) fn rest_tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, StartupError> {
        self.tls
            .as_ref()
            .map(TlsFiles::rustls)
            .transpose()
            .map_err(StartupError::Tls)
    }

    /// TLS for `/metrics` and the probes, when `--metrics-tls` asks for it.
    pub(crate) fn metrics_tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, StartupError> {
        if self.metrics_tls {
            self.rest_tls()
        } else {
            Ok(None)
        }
    }

    pub(crate) fn mutual_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(TlsFiles::mutual)
    }
}
