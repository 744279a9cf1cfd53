//! Serves an HTTP/1.1 router (`/metrics`, the KServe V2 REST API), optionally over TLS, with the same connection
//! limits as the gRPC listener: a slow or silent client (half a request) is closed, not held.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use crate::server::net::{self, ConnIo, ConnLimits};
use crate::server::tls::HANDSHAKE_TIMEOUT;

/// A connection, plain or TLS.
pub enum HttpIo {
    Plain(ConnIo),
    Tls(Box<tokio_rustls::server::TlsStream<ConnIo>>),
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            HttpIo::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            HttpIo::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for HttpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for HttpIo {
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
    rx: mpsc::Receiver<HttpIo>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for Accepted {
    type Io = HttpIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (HttpIo, std::net::SocketAddr) {
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

/// Serves `router` on `listener` until `stop` fires; connections as `limits` say (a connection that sends nothing
/// for `limits.idle`, a half-sent request or keep-alive between requests, is closed).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnLimits,
    stop: CancellationToken,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(err) => {
            tracing::error!(error = %err, "HTTP listener has no address");
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
                    if tx.send(HttpIo::Plain(io)).await.is_err() {
                        return;
                    }
                }
                // Handshakes run apart, so one slow client cannot hold up the others.
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send(HttpIo::Tls(Box::new(tls))).await;
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
    if let Err(err) = axum::serve(Accepted { rx, local }, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %err, listener = limits.listener, "HTTP endpoint failed");
    }
}
