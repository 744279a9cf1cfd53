//! Start-up and shutdown, as a list of parts that each build themselves from their own settings: security, metrics,
//! health, the model, the engine, the listeners, the pipeline, the conditions, the API, and the lifecycle that
//! drains them on SIGTERM/SIGINT.

pub mod config;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod lifecycle;
pub(crate) mod listeners;
pub(crate) mod models;
pub(crate) mod net;
pub(crate) mod security;
pub(crate) mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::api::grpc::frames::MessageLimits;
use crate::api::services::Api;
use crate::condition::export;
use crate::engine::device::Placement;
use crate::error::StartupError;
use crate::server::config::{Resolved, ServeConfig};
use crate::server::health::{Health, State};
use crate::server::lifecycle::Lifecycle;
use crate::server::listeners::{Listeners, Served};
use crate::server::security::Security;
use crate::telemetry::metrics as m;

/// A server that is up and SERVING.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The KServe V2 REST listener.
    pub http_addr: SocketAddr,
    pub placement: Placement,
    pub settings: Resolved,
    lifecycle: Lifecycle,
}

impl Running {
    /// Starts draining: NOT_SERVING, no new streams, queued windows delivered, streams ended with a status.
    pub fn shutdown(&self) {
        self.lifecycle.begin_drain();
    }

    /// Waits until the server has stopped (after [`Running::shutdown`]).
    pub async fn stopped(self) {
        self.lifecycle.stopped().await;
    }
}

/// Starts the server; returns once it is SERVING.
pub async fn start(config: ServeConfig) -> Result<Running, StartupError> {
    config.validate()?;
    let security = Security::load(&config)?;
    let metrics = m::install().map_err(StartupError::Config)?;
    let health = Health::starting().await;
    let mut lifecycle = Lifecycle::new(config.drain_timeout);
    let set = models::load(&config, &lifecycle).await?;
    let (placement, settings, models) = (set.placement, set.settings, set.models.clone());
    let listeners = Listeners::bind(&config).await?;
    let conditions = Arc::new(config.conditions.conditions(config.streams.max_streams));
    let control = set.control(MessageLimits::new(&models));
    let api_settings = config.api_settings(security.tokens.clone(), health.ready(), control);
    let api = Api::build(&models, &conditions, placement, api_settings)?;
    let machines = (config.conditions.machine_metrics).then(|| {
        export::series(
            conditions.registry().clone(),
            config.conditions.max_machine_metrics,
        )
    });
    let scrape = m::router(metrics.clone(), machines).merge(health.probes());
    tokio::spawn(m::upkeep(metrics, lifecycle.stop_metrics.clone()));
    let addrs = listeners.addrs;
    security.warn_if_exposed(&addrs.api());
    let served = Served {
        api,
        health: health.grpc_service(),
        scrape,
    };
    let grpc = listeners.serve(served, &security, &config, &lifecycle)?;
    health.follow(lifecycle.drain.shutdown.clone(), set.workers_gone());
    lifecycle.run(grpc, set);
    health.set(State::Serving).await;
    tracing::info!(grpc_addr = %addrs.grpc, metrics_addr = %addrs.metrics, http_addr = %addrs.http,
        tls = security.tls.is_some(), mutual_tls = security.mutual_tls(), tokens = security.tokens.len(),
        reflection = config.network.reflection, "SERVING");
    Ok(Running {
        grpc_addr: addrs.grpc,
        metrics_addr: addrs.metrics,
        http_addr: addrs.http,
        placement,
        settings,
        lifecycle,
    })
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
