//! Start-up and shutdown, as a list of parts that each build themselves from their own settings: security, metrics,
//! health, the model, the engine, the listeners, the pipeline, the conditions, the API, and the lifecycle that
//! drains them on SIGTERM/SIGINT.

pub mod config;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod lifecycle;
pub(crate) mod listeners;
pub(crate) mod net;
pub(crate) mod security;
pub(crate) mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::api::grpc::status;
use crate::api::services::Api;
use crate::condition::export;
use crate::engine::device::Placement;
use crate::engine::open::Engine;
use crate::error::{ErrorKind, StartupError};
use crate::model::card::LoadedModel;
use crate::pipeline::start;
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
    let model = load_model(&config)?;
    let engine = Engine::open(config.engine_settings(), model.clone()).await?;
    let (placement, settings) = (engine.placement, config.resolve(&engine));
    let listeners = Listeners::bind(&config).await?;
    let mut lifecycle = Lifecycle::new(config.drain_timeout);
    let pipeline_settings = config.pipeline_settings(settings);
    let (drain, stop_batcher) = (lifecycle.drain.clone(), lifecycle.stop_batcher.clone());
    let core = start::start(
        model.clone(),
        engine,
        pipeline_settings,
        drain,
        stop_batcher,
    );
    let conditions = Arc::new(
        config
            .conditions
            .conditions(&model.card.classes, config.streams.max_streams),
    );
    let api_settings = config.api_settings(security.tokens.clone(), health.ready());
    let api = Api::build(&core.pipeline, &conditions, placement, api_settings)?;
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
    health.follow(
        lifecycle.drain.shutdown.clone(),
        core.batcher.workers_gone.clone(),
    );
    lifecycle.run(grpc, core.scheduler, core.batcher);
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

/// Loads the card and its ONNX file (checksum verified), refuses a model whose stream would not fit
/// --max-stream-memory, and zeroes its series so that dashboards see every class from the first scrape.
fn load_model(config: &ServeConfig) -> Result<Arc<LoadedModel>, StartupError> {
    let model = Arc::new(LoadedModel::load(&config.model)?);
    tracing::info!(model = %model.card.name, version = %model.card.version, sha256 = %model.card.sha256,
        "model card loaded and checksum verified");
    let limits = config.limits();
    let (plain_need, what) = limits.stream_memory(&model, 0);
    if plain_need > limits.max_stream_memory {
        return Err(StartupError::Config(format!(
            "a stream needs about {} KiB ({what}), over --max-stream-memory ({} KiB): lower --max-chunk-frames or \
             --stream-buffer, or raise the limit",
            plain_need / 1024,
            limits.max_stream_memory / 1024
        )));
    }
    if model.card.input_range.is_none() {
        tracing::warn!(
            "the model card states no input_range: only flat windows and non-finite outputs are flagged"
        );
    }
    let endings: Vec<&'static str> = std::iter::once("ok")
        .chain(ErrorKind::ALL.iter().map(|k| k.label()))
        .collect();
    m::zero_series(&model.card.classes, &status::error_series(), &endings);
    Ok(model)
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
