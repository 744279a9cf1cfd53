//! The three listeners: gRPC (drsn.v1, KServe V2, health), V2 REST, and `/metrics` with the probes. Bound at
//! start-up (a taken port fails start-up, naming it), then served with their connection limits, TLS and HTTP/2
//! settings until the drain.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;

use crate::api::services::Api;
use crate::error::StartupError;
use crate::server::config::{CONNECTION_WINDOW, STREAM_WINDOW, ServeConfig};
use crate::server::http;
use crate::server::lifecycle::Lifecycle;
use crate::server::net::{self, AtCapacity, ConnLimits};
use crate::server::security::Security;

/// Connections the metrics listener holds: scrapers and probes are few, and beyond this the oldest is evicted so
/// that the liveness probe always gets in.
const METRICS_MAX_CONNECTIONS: usize = 64;
/// The largest HTTP/2 frame the gRPC listener takes.
const MAX_FRAME_SIZE: u32 = 1 << 20;
/// HTTP/2 streams a connection may open beyond --max-streams-per-connection, so that the ones over the cap reach the
/// server and are refused with RESOURCE_EXHAUSTED and a message, not by HTTP/2 without one.
const EXTRA_HTTP2_STREAMS: u32 = 16;
/// A ping this often finds clients whose connection died without a goodbye, so their streams are freed; no answer
/// within the timeout closes the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// At --max-connection-age the reader ends each stream with a resume point; the connection closes this much later.
const AGE_CLOSE_AFTER: Duration = Duration::from_secs(1);

/// Where each listener is bound (port 0 in the settings becomes the port taken).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addrs {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub metrics: SocketAddr,
}

impl Addrs {
    /// The listeners that take API calls, by name.
    pub(crate) fn api(&self) -> [(&'static str, SocketAddr); 2] {
        [("gRPC", self.grpc), ("V2 REST", self.http)]
    }
}

/// What the listeners serve.
pub(crate) struct Served {
    pub api: Api,
    pub health: HealthServer<HealthService>,
    /// `/metrics` and the probes.
    pub scrape: axum::Router,
}

pub(crate) struct Listeners {
    grpc: TcpListener,
    http: TcpListener,
    metrics: TcpListener,
    pub addrs: Addrs,
}

impl Listeners {
    pub(crate) async fn bind(config: &ServeConfig) -> Result<Self, StartupError> {
        let network = &config.network;
        let (grpc, grpc_addr) = bind("gRPC", network.listen).await?;
        let (metrics, metrics_addr) = bind("metrics", network.metrics_listen).await?;
        let (http, http_addr) = bind("HTTP", network.http_listen).await?;
        Ok(Self {
            grpc,
            http,
            metrics,
            addrs: Addrs {
                grpc: grpc_addr,
                http: http_addr,
                metrics: metrics_addr,
            },
        })
    }

    /// Serves `/metrics` and REST on their own tasks (until metrics stop, last) and returns the gRPC server, which
    /// runs until the drain has ended its streams.
    pub(crate) fn serve(
        self,
        served: Served,
        security: &Security,
        config: &ServeConfig,
        lifecycle: &Lifecycle,
    ) -> Result<
        impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
        StartupError,
    > {
        let network = &config.network;
        let read_timeout = network.request_read_timeout;
        let limits = |listener, max_connections, at_capacity| ConnLimits {
            listener,
            max_connections,
            idle: network.connection_idle_timeout,
            max_age: None,
            at_capacity,
        };
        tokio::spawn(http::serve(
            self.metrics,
            served.scrape,
            security.metrics_tls()?,
            limits("metrics", METRICS_MAX_CONNECTIONS, AtCapacity::EvictOldest),
            read_timeout,
            lifecycle.stop_metrics.clone(),
        ));
        // REST stops taking requests on the drain (its routes answer not ready), and closes with metrics.
        tokio::spawn(http::serve(
            self.http,
            served.api.rest,
            security.rest_tls()?,
            limits("http", network.max_connections, AtCapacity::Refuse),
            read_timeout,
            lifecycle.stop_metrics.clone(),
        ));
        let incoming = net::accept(
            self.grpc,
            ConnLimits {
                max_age: network.max_connection_age,
                ..limits("grpc", network.max_connections, AtCapacity::Refuse)
            },
            lifecycle.drain.shutdown.clone(),
        );
        let mut builder = Server::builder();
        if let Some(files) = &security.tls {
            builder = builder
                .tls_config(files.tonic())
                .map_err(|e| StartupError::Tls(e.to_string()))?;
        }
        let mut builder = builder
            .max_frame_size(Some(MAX_FRAME_SIZE))
            .initial_stream_window_size(Some(STREAM_WINDOW as u32))
            .initial_connection_window_size(Some(CONNECTION_WINDOW as u32))
            .max_concurrent_streams(Some(
                config.streams.max_streams_per_connection as u32 + EXTRA_HTTP2_STREAMS,
            ))
            .http2_max_pending_accept_reset_streams(Some(network.http2_max_pending_resets))
            .http2_max_local_error_reset_streams(Some(network.http2_max_error_resets))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
        if let Some(age) = network.max_connection_age {
            builder = builder
                .max_connection_age(age + AGE_CLOSE_AFTER)
                .max_connection_age_grace(config.drain_timeout);
        }
        let routes = served.api.grpc.add_service(served.health);
        Ok(builder.add_routes(routes).serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(incoming),
            lifecycle.drain.shutdown.clone().cancelled_owned(),
        ))
    }
}

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartupError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { what, addr, source })?;
    let local =
        listener
            .local_addr()
            .map_err(|source| StartupError::Bind { what, addr, source })?;
    Ok((listener, local))
}
