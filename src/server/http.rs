//! Serves `GET /metrics` (optionally over TLS) from the telemetry recorder, with the same connection limits as
//! the gRPC listener: a slow or silent client (half a request) is closed, not held.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use crate::server::net::{self, ConnIo, ConnLimits};
use crate::server::tls::HANDSHAKE_TIMEOUT;

/// Scrapers are few.
const MAX_CONNECTIONS: usize = 64;

/// A metrics connection, plain or TLS.
pub enum MetricsIo {
    Plain(ConnIo),
    Tls(Box<tokio_rustls::server::TlsStream<ConnIo>>),
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            MetricsIo::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            MetricsIo::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for MetricsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for MetricsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// Accepted (and, with TLS, handshaken) connections for axum.
struct Accepted {
    rx: mpsc::Receiver<MetricsIo>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for Accepted {
    type Io = MetricsIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (MetricsIo, std::net::SocketAddr) {
        match self.rx.recv().await {
            Some(io) => (io, self.local),
            // The accept loop ended (shutdown): wait for axum's graceful shutdown to stop calling.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        Ok(self.local)
    }
}

/// Serves `/metrics` on `listener` until `stop` fires; a connection that sends nothing for `idle` (a half-sent
/// request, or keep-alive between scrapes) is closed.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    tls: Option<Arc<rustls::ServerConfig>>,
    idle: Duration,
    stop: CancellationToken,
) {
    let limits = ConnLimits {
        listener: "metrics",
        max_connections: MAX_CONNECTIONS,
        idle,
        max_age: None,
    };
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(err) => {
            tracing::error!(error = %err, "metrics listener has no address");
            return;
        }
    };
    let mut raw = net::accept(listener, limits, stop.clone());
    let (tx, rx) = mpsc::channel(16);
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::spawn(async move {
        while let Some(Ok(io)) = raw.recv().await {
            let tx = tx.clone();
            match &acceptor {
                None => {
                    if tx.send(MetricsIo::Plain(io)).await.is_err() {
                        return;
                    }
                }
                // Handshakes run apart, so one slow client cannot hold up the others.
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send(MetricsIo::Tls(Box::new(tls))).await;
                            }
                            Ok(Err(err)) => {
                                tracing::debug!(error = %err, "metrics TLS handshake failed")
                            }
                            Err(_) => tracing::debug!("metrics TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    let upkeep = handle.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    // The recorder needs periodic upkeep to drain histogram buffers when nobody scrapes.
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep.run_upkeep(),
                _ = upkeep_stop.cancelled() => break,
            }
        }
    });
    if let Err(err) = axum::serve(Accepted { rx, local }, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %err, "metrics endpoint failed");
    }
}
