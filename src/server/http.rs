//! Serves an HTTP/1.1 router (`/metrics` and probes, the KServe V2 REST API), optionally over TLS, one hyper
//! connection per client, with the listener's connection limits: a request whose headers do not arrive within the read
//! timeout is closed, its body must arrive by the same deadline ([`read_body`]), and silent connections are closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics::counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use crate::api::connection::ReadDeadline;
use crate::server::net::{self, ConnIo, ConnLimits};
use crate::server::tls::HANDSHAKE_TIMEOUT;
use crate::telemetry::metrics as m;
/// A connection, plain or TLS.
pub(crate) enum HttpIo {
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

/// When the request being read began (its first byte), so that headers and body share one read deadline.
struct RequestClock {
    epoch: Instant,
    /// Nanoseconds from `epoch` to the request's first byte, plus one; 0 between requests.
    started: AtomicU64,
}

impl RequestClock {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
        }
    }

    fn started(&self) -> Option<Instant> {
        match self.started.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }
}

/// A connection that tells its [`RequestClock`] when a request starts (bytes in) and ends (bytes out).
struct Watched {
    io: HttpIo,
    clock: Arc<RequestClock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before && this.clock.started.load(Ordering::Relaxed) == 0 {
            let at = this.clock.epoch.elapsed().as_nanos();
            let at = u64::try_from(at).unwrap_or(u64::MAX - 1) + 1;
            this.clock.started.store(at, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.clock.started.store(0, Ordering::Relaxed);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` until `stop` fires (requests in flight are answered, then connections close);
/// connections as `limits` say, and each request must arrive within `read_timeout` of its first byte.
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnLimits,
    read_timeout: Duration,
    stop: CancellationToken,
) {
    let mut raw = net::accept(listener, limits, stop.clone());
    let acceptor = tls.map(TlsAcceptor::from);
    let mut http = http1::Builder::new();
    // Headers must arrive within the read timeout (a trickling client is closed); the timer starts when the
    // connection waits for a request, so a keep-alive connection idle that long is closed too.
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let http = Arc::new(http);
    while let Some(Ok(io)) = raw.recv().await {
        let (router, acceptor, http, stop) =
            (router.clone(), acceptor.clone(), http.clone(), stop.clone());
        tokio::spawn(async move {
            let io = match acceptor {
                None => HttpIo::Plain(io),
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => HttpIo::Tls(Box::new(tls)),
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, listener = limits.listener, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(listener = limits.listener, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            connection(io, router, &http, limits.listener, read_timeout, stop).await;
        });
    }
}

/// Serves one connection until it closes, or until `stop`, when it finishes the request in flight.
async fn connection(
    io: HttpIo,
    router: axum::Router,
    http: &http1::Builder,
    listener: &'static str,
    read_timeout: Duration,
    stop: CancellationToken,
) {
    let clock = Arc::new(RequestClock::new());
    let info = match &io {
        HttpIo::Plain(io) => io.info().clone(),
        HttpIo::Tls(tls) => tls.get_ref().0.info().clone(),
    };
    let io = Watched {
        io,
        clock: clock.clone(),
    };
    let inner = TowerToHyperService::new(router);
    let request_clock = clock.clone();
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        let started = request_clock.started().unwrap_or_else(Instant::now);
        request.extensions_mut().insert(ReadDeadline {
            at: started + read_timeout,
            timeout: read_timeout,
            listener,
        });
        request.extensions_mut().insert(info.clone());
        hyper::service::Service::call(&inner, request)
    });
    let conn = http.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match served {
        Ok(()) => {}
        // The headers did not arrive in time: half a request is slow; none at all, an idle keep-alive connection.
        Err(err) if err.is_timeout() => {
            let reason = if clock.started().is_some() {
                "slow"
            } else {
                "idle"
            };
            counter!(m::CONNECTIONS_CLOSED, "listener" => listener, "reason" => reason)
                .increment(1);
        }
        Err(err) => tracing::debug!(error = %err, listener, "HTTP connection ended with an error"),
    }
}
