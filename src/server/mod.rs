//! Start-up and shutdown: loads and checks the model, opens ONNX Runtime, warms up, serves gRPC (with health and
//! reflection) and `/metrics`, and drains open streams on SIGTERM/SIGINT.

pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::api::grpc::decode::Limits;
use crate::api::grpc::proto::{self, diagnosis_server::DiagnosisServer};
use crate::api::grpc::service::{DiagnosisService, Shared};
use crate::engine::onnx::{self, Device, Model, Placement};
use crate::error::StartupError;
use crate::model::card::LoadedModel;
use crate::pipeline::batch::{self, BatchConfig};
use crate::pipeline::respond::ResultContext;
use crate::server::config::{Resolved, ServeConfig};
use crate::telemetry::metrics as m;

/// A server that is up and SERVING.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub placement: Placement,
    pub settings: Resolved,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Starts draining: NOT_SERVING, no new streams, queued windows delivered, streams ended with a status.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped (after [`Running::shutdown`]).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Opens `n` sessions on a blocking thread; the first decides the placement for `Device::Auto`.
pub async fn open_models(
    config: &ServeConfig,
    model: Arc<LoadedModel>,
) -> Result<(Vec<Model>, Placement, Resolved), StartupError> {
    let library = onnx::locate_library(config.ort_lib.as_deref(), config.device)?;
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let env = onnx::environment(&library)?;
        tracing::info!(library = %library.display(), "ONNX Runtime loaded");
        let (first, placement) = Model::open(&env, &model, config.device, config.intra_threads)?;
        if config.device == Device::Auto && placement == Placement::Cpu {
            counter!(m::DEVICE_FALLBACKS).increment(1);
        }
        let settings = config.resolve(placement);
        let fixed = match placement {
            Placement::Cpu => Device::Cpu,
            Placement::Cuda(n) => Device::Cuda(n),
        };
        let mut models = vec![first];
        for _ in 1..settings.workers {
            models.push(Model::open(&env, &model, fixed, config.intra_threads)?.0);
        }
        // Warm up every session at batch 1 and at the largest batch, so the first requests pay no set-up cost.
        let zeros = vec![0.0f32; model.window_values()];
        for session in &mut models {
            for rows in [1, settings.max_batch] {
                session
                    .run(std::iter::repeat_n(zeros.as_slice(), rows))
                    .map_err(StartupError::Warmup)?;
            }
        }
        Ok((models, placement, settings))
    })
    .await
    .map_err(|e| StartupError::Session(format!("the start-up thread failed: {e}")))?
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { what, addr, source })
}

/// Starts the server; returns once it is SERVING.
pub async fn start(config: ServeConfig) -> Result<Running, StartupError> {
    if config.max_unary_windows > config.queue_capacity {
        return Err(StartupError::Config(format!(
            "--max-unary-windows ({}) is larger than --queue-capacity ({}): such requests could never be queued",
            config.max_unary_windows, config.queue_capacity
        )));
    }
    let handle = m::install().map_err(StartupError::Config)?;
    gauge!(m::SERVING).set(0.0);
    let model = Arc::new(LoadedModel::load(&config.model)?);
    tracing::info!(model = %model.card.name, version = %model.card.version, sha256 = %model.card.sha256,
        "model card loaded and checksum verified");
    let (models, placement, settings) = open_models(&config, model.clone()).await?;
    tracing::info!(%placement, workers = settings.workers, intra_threads = config.intra_threads,
        max_batch = settings.max_batch, max_queue_delay = ?settings.max_queue_delay, "inference sessions warmed up");

    let grpc = bind("gRPC", config.grpc_addr).await?;
    let metrics_listener = bind("metrics", config.metrics_addr).await?;
    let grpc_addr = grpc.local_addr().map_err(|source| StartupError::Bind {
        what: "gRPC",
        addr: config.grpc_addr,
        source,
    })?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|source| StartupError::Bind {
            what: "metrics",
            addr: config.metrics_addr,
            source,
        })?;

    let (queue, queue_rx) = batch::queue(config.queue_capacity);
    let stop_batcher = CancellationToken::new();
    let batcher = batch::spawn(
        queue_rx,
        BatchConfig {
            max_batch: settings.max_batch,
            max_delay: settings.max_queue_delay,
        },
        models,
        stop_batcher.clone(),
    );
    let shutdown = CancellationToken::new();
    let drain_expired = CancellationToken::new();
    let max_streams = config.max_streams.max(1);
    let shared = Arc::new(Shared {
        model: model.clone(),
        placement,
        queue,
        limits: Limits {
            max_chunk_frames: config.max_chunk_frames,
        },
        stream_buffer: config.stream_buffer,
        max_unary_windows: config.max_unary_windows,
        shutdown: shutdown.clone(),
        drain_expired: drain_expired.clone(),
        streams: Arc::new(tokio::sync::Semaphore::new(max_streams)),
        max_streams,
        open_timeout: config.open_timeout,
        results: Arc::new(ResultContext::new(&model)),
    });
    gauge!(m::MODEL_INFO, "name" => model.card.name.clone(), "version" => model.card.version.clone(),
        "device" => placement.to_string()).set(1.0);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<DiagnosisServer<DiagnosisService>>()
        .await;
    health.set_service_status("", ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartupError::Config(format!("reflection: {e}")))?;
    let max_message = config.max_chunk_frames * 4 * model.channels() * 2 + (64 << 10);
    let diagnosis = DiagnosisServer::new(DiagnosisService(shared.clone()))
        .max_decoding_message_size(
            max_message.max(model.window_values() * 4 * config.max_unary_windows + (64 << 10)),
        );
    drop(shared);

    let stop_metrics = CancellationToken::new();
    tokio::spawn(m::serve(metrics_listener, handle, stop_metrics.clone()));

    let drain_timeout = config.drain_timeout;
    let draining = shutdown.clone();
    // Small replies on many streams: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms per reply.
    let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        let signal = {
            let draining = draining.clone();
            let health = health.clone();
            async move {
                draining.cancelled().await;
                tracing::info!(?drain_timeout, "draining: NOT_SERVING, no new streams");
                gauge!(m::SERVING).set(0.0);
                health
                    .set_not_serving::<DiagnosisServer<DiagnosisService>>()
                    .await;
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
            }
        };
        let serve = Server::builder()
            .max_frame_size(Some(1 << 20))
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(16 << 20))
            // Finds clients whose connection died without a goodbye, so their streams are freed.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(diagnosis)
            .serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(serve);
        let expire = async {
            draining.cancelled().await;
            tokio::time::sleep(drain_timeout).await;
            drain_expired.cancel();
            // Streams abandoned at the deadline end at once; give their statuses a moment to be written.
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        tokio::select! {
            result = &mut serve => {
                if let Err(err) = result {
                    tracing::error!(error = %err, "gRPC server failed");
                }
            }
            _ = expire => tracing::warn!("drain timeout passed; abandoning connections still open"),
        }
        stop_metrics.cancel();
        // Stop forming batches; the inference threads finish the batch they hold and end.
        stop_batcher.cancel();
        let joined = tokio::task::spawn_blocking(move || batcher.join());
        if tokio::time::timeout(Duration::from_secs(5), joined)
            .await
            .is_err()
        {
            tracing::warn!("an inference thread is still busy; not waiting for it");
        }
        tracing::info!("stopped");
    });
    gauge!(m::SERVING).set(1.0);
    tracing::info!(%grpc_addr, %metrics_addr, "SERVING");
    Ok(Running {
        grpc_addr,
        metrics_addr,
        placement,
        settings,
        shutdown,
        task,
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
