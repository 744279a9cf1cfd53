//! Start-up and shutdown: checks the settings and the model, opens ONNX Runtime and warms it up, wires the engine
//! into the pipeline and the pipeline into the gRPC API (with health, optional reflection, TLS and tokens), serves
//! `/metrics`, and drains on SIGTERM/SIGINT.

pub mod config;
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod net;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::api::grpc::proto::{self, diagnosis_server::DiagnosisServer};
use crate::api::grpc::service::{DiagnosisService, StreamTimeouts};
use crate::api::grpc::transport_errors::TransportErrors;
use crate::api::grpc::{frames, status};
use crate::api::kserve;
use crate::api::kserve::proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::api::machines;
use crate::condition::{Conditions, export};
use crate::engine::device::{Device, Placement};
use crate::engine::onnx::{self, OnnxSession};
use crate::error::StartupError;
use crate::model::card::LoadedModel;
use crate::pipeline::batch;
use crate::pipeline::cost::CostModel;
use crate::pipeline::diagnosis::Reading;
use crate::pipeline::schedule::{BatchPolicy, ScheduleConfig, Scheduler};
use crate::pipeline::spec::Limits;
use crate::pipeline::{Admission, Drain, Pipeline};
use crate::server::config::{CONNECTION_WINDOW, Resolved, STREAM_WINDOW, ServeConfig};
use crate::server::health::{Health, Serving};
use crate::server::lifecycle::Lifecycle;
use crate::server::net::{AtCapacity, ConnLimits};
use crate::server::tls::TlsFiles;
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

/// Sessions ready to serve: one per worker, where they run, the settings that follow, and the inference time per
/// batch size measured while warming up.
pub struct Opened {
    pub models: Vec<OnnxSession>,
    pub placement: Placement,
    pub settings: Resolved,
    pub costs: Vec<(usize, f64)>,
}

/// Opens one session per worker on a blocking thread (the first decides the placement for `Device::Auto`), warms
/// each up, and times the first at batch sizes 1, 2, 4, ... up to the largest.
pub async fn open_models(
    config: &ServeConfig,
    model: Arc<LoadedModel>,
) -> Result<Opened, StartupError> {
    let engine = config.engine.clone();
    let library = onnx::locate_library(engine.ort_lib.as_deref(), engine.device)?;
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let env = onnx::environment(&library)?;
        tracing::info!(library = %library.display(), "ONNX Runtime loaded");
        let (first, placement) =
            OnnxSession::open(&env, &model, engine.device, engine.intra_threads)?;
        if engine.device == Device::Auto && placement == Placement::Cpu {
            counter!(m::DEVICE_FALLBACKS).increment(1);
        }
        let settings = config.resolve(placement);
        let fixed = match placement {
            Placement::Cpu => Device::Cpu,
            Placement::Cuda(n) => Device::Cuda(n),
        };
        let mut models = vec![first];
        for _ in 1..settings.workers {
            models.push(OnnxSession::open(&env, &model, fixed, engine.intra_threads)?.0);
        }
        // Warm up every session at batch 1 and at the largest batch, so the first requests pay no set-up cost.
        let zeros = vec![0.0f32; model.window_values()];
        let run = |session: &mut OnnxSession, rows: usize| {
            let started = std::time::Instant::now();
            session
                .run(std::iter::repeat_n(zeros.as_slice(), rows))
                .map(|_| started.elapsed().as_secs_f64())
                .map_err(|e| StartupError::Warmup(e.to_string()))
        };
        for session in &mut models {
            for rows in [1, settings.max_batch] {
                run(session, rows)?;
            }
        }
        let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |b| Some(b * 2))
            .take_while(|b| *b < settings.max_batch)
            .collect();
        sizes.push(settings.max_batch);
        let mut costs = Vec::new();
        for rows in sizes {
            let mut t = [0.0; 3];
            for x in &mut t {
                *x = run(&mut models[0], rows)?;
            }
            t.sort_by(f64::total_cmp);
            costs.push((rows, t[1]));
        }
        Ok(Opened {
            models,
            placement,
            settings,
            costs,
        })
    })
    .await
    .map_err(|e| StartupError::Session(format!("the start-up thread failed: {e}")))?
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

/// Stream limits from the settings.
pub fn limits(config: &ServeConfig) -> Limits {
    Limits {
        max_chunk_frames: config.streams.max_chunk_frames,
        max_id_bytes: config.streams.max_id_bytes,
        stream_buffer: config.streams.stream_buffer,
        transport_buffer: STREAM_WINDOW,
        max_stream_memory: config.streams.max_stream_memory,
        default_zones: config.conditions.zones(),
    }
}

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
/// A V2 REST body may hold this many bytes of JSON per sample (a float's text and its separator), plus this much
/// for the rest of the request.
const JSON_BYTES_PER_SAMPLE: usize = 16;
const REST_BODY_OVERHEAD: usize = 64 << 10;

/// Starts the server; returns once it is SERVING.
pub async fn start(config: ServeConfig) -> Result<Running, StartupError> {
    config.validate()?;
    let tokens = config.tokens()?;
    let tls = match (&config.security.tls_cert, &config.security.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles::load(
            cert,
            key,
            config.security.tls_client_ca.as_ref(),
        )?),
        _ => None,
    };
    let handle = m::install().map_err(StartupError::Config)?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter).await;
    let model = Arc::new(LoadedModel::load(&config.model)?);
    tracing::info!(model = %model.card.name, version = %model.card.version, sha256 = %model.card.sha256,
        "model card loaded and checksum verified");
    let limits = limits(&config);
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
        .chain(crate::error::ErrorKind::ALL.iter().map(|k| k.label()))
        .collect();
    m::zero_series(&model.card.classes, &status::error_series(), &endings);
    let Opened {
        models,
        placement,
        settings,
        costs,
    } = open_models(&config, model.clone()).await?;
    let cost = Arc::new(CostModel::new(settings.max_batch, &costs));
    tracing::info!(%placement, workers = settings.workers, intra_threads = config.engine.intra_threads,
        max_batch = settings.max_batch, efficient_batch = cost.efficient_batch(),
        max_queue_delay = ?settings.max_queue_delay, "inference sessions warmed up");

    let (grpc, grpc_addr) = bind("gRPC", config.network.listen).await?;
    let (metrics_listener, metrics_addr) = bind("metrics", config.network.metrics_listen).await?;
    let (http_listener, http_addr) = bind("HTTP", config.network.http_listen).await?;

    let mut lifecycle = Lifecycle::new(config.drain_timeout);
    let scheduler = Scheduler::new(ScheduleConfig {
        capacity: config.batching.queue_capacity,
        reserve: 1,
        max_wait: config.batching.max_queue_wait,
    });
    let batcher = batch::spawn(
        scheduler.clone(),
        BatchPolicy {
            max_batch: settings.max_batch,
            max_delay: settings.max_queue_delay,
            budget: config.batching.latency_budget,
            cost: cost.clone(),
        },
        Reading {
            temperature: model.temperature(),
            uncertain_below: model.uncertain_below(),
            uncertain_above: model.uncertain_above(),
        },
        models,
        lifecycle.stop_batcher.clone(),
    );
    let drain: Drain = lifecycle.drain.clone();
    let pipeline = Arc::new(Pipeline::new(
        model.clone(),
        scheduler.clone(),
        limits,
        Admission {
            max_streams: config.streams.max_streams,
            max_streams_per_connection: config.streams.max_streams_per_connection,
            max_unary_windows: config.streams.max_unary_windows,
            max_request_memory: config.streams.max_request_memory,
        },
        drain,
    ));
    gauge!(m::MODEL_INFO, "name" => model.card.name.clone(), "version" => model.card.version.clone(),
        "device" => placement.to_string()).set(1.0);

    // Each method's message limit is enforced from the framing (`frames`); tonic's own limit is the largest.
    let messages = frames::MessageLimits::new(&pipeline);
    let v2 = Arc::new(kserve::V2::new(pipeline.clone()));
    let inference = GrpcInferenceServiceServer::new(kserve::grpc::InferenceService(v2.clone()))
        .max_decoding_message_size(messages.largest());
    let inference = TransportErrors(tokens.guard(
        frames::inference(
            inference,
            &pipeline,
            v2.outputs().len(),
            config.network.request_read_timeout,
        ),
        kserve::grpc::OPEN_METHODS,
    ));
    let conditions = Arc::new(Conditions::new(
        Arc::new(model.card.classes.clone()),
        config.conditions.settings(),
        config.conditions.condition_retention,
        // As many sensors whose data stopped as there may be streams.
        config.streams.max_streams,
    ));
    let diagnosis = DiagnosisServer::new(DiagnosisService::new(
        pipeline.clone(),
        conditions.clone(),
        placement,
        StreamTimeouts {
            open: config.streams.open_timeout,
            idle: config.streams.idle_timeout,
        },
    ))
    .max_decoding_message_size(messages.largest());
    let diagnosis = TransportErrors(tokens.guard(
        frames::diagnosis(diagnosis, &pipeline, config.network.request_read_timeout),
        &[],
    ));
    let reflection = if config.network.reflection {
        let service = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartupError::Config(format!("reflection: {e}")))?;
        Some(InterceptedService::new(service, tokens.interceptor()))
    } else {
        None
    };
    for (listener, addr) in [("gRPC", grpc_addr), ("V2 REST", http_addr)] {
        if addr.ip().is_loopback() {
            continue;
        }
        if tokens.is_empty() {
            tracing::warn!(listener, %addr, "serving beyond this machine without authentication: set --auth-tokens-file");
        }
        if tls.is_none() {
            tracing::warn!(listener, %addr, "serving beyond this machine without TLS: set --tls-cert and --tls-key");
        }
    }

    let metrics_tls = match (&tls, config.security.metrics_tls) {
        (Some(files), true) => Some(files.rustls().map_err(StartupError::Tls)?),
        _ => None,
    };
    tokio::spawn(m::upkeep(handle.clone(), lifecycle.stop_metrics.clone()));
    tokio::spawn(http::serve(
        metrics_listener,
        m::router(handle, machine_series(&config, &conditions)).merge(probes(health.clone())),
        metrics_tls,
        ConnLimits {
            listener: "metrics",
            max_connections: METRICS_MAX_CONNECTIONS,
            idle: config.network.connection_idle_timeout,
            max_age: None,
            at_capacity: AtCapacity::EvictOldest,
        },
        config.network.request_read_timeout,
        lifecycle.stop_metrics.clone(),
    ));
    // The Open Inference Protocol over REST, with the gRPC listener's TLS; it stops taking requests on drain.
    let v2_rest = kserve::rest::router(
        v2.clone(),
        tokens.clone(),
        model.window_values() * config.streams.max_unary_windows * JSON_BYTES_PER_SAMPLE
            + REST_BODY_OVERHEAD,
        model.window_values() * config.streams.max_unary_windows,
    )
    .merge(machines::router(
        conditions.registry().clone(),
        tokens.clone(),
    ));
    let rest_tls = tls
        .as_ref()
        .map(|f| f.rustls())
        .transpose()
        .map_err(StartupError::Tls)?;
    tokio::spawn(http::serve(
        http_listener,
        v2_rest,
        rest_tls,
        ConnLimits {
            listener: "http",
            max_connections: config.network.max_connections,
            idle: config.network.connection_idle_timeout,
            max_age: None,
            at_capacity: AtCapacity::Refuse,
        },
        config.network.request_read_timeout,
        lifecycle.stop_metrics.clone(),
    ));

    let incoming = net::accept(
        grpc,
        ConnLimits {
            listener: "grpc",
            max_connections: config.network.max_connections,
            idle: config.network.connection_idle_timeout,
            max_age: config.network.max_connection_age,
            at_capacity: AtCapacity::Refuse,
        },
        lifecycle.drain.shutdown.clone(),
    );
    let mut builder = Server::builder();
    if let Some(files) = &tls {
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
        .http2_max_pending_accept_reset_streams(Some(config.network.http2_max_pending_resets))
        .http2_max_local_error_reset_streams(Some(config.network.http2_max_error_resets))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(age) = config.network.max_connection_age {
        builder = builder
            .max_connection_age(age + AGE_CLOSE_AFTER)
            .max_connection_age_grace(config.drain_timeout);
    }
    let router = builder
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(diagnosis)
        .add_service(inference);
    let signal = {
        let draining = lifecycle.drain.shutdown.clone();
        let health = health.clone();
        async move {
            draining.cancelled().await;
            health.set(Serving::Draining).await;
        }
    };
    let serve = router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::ReceiverStream::new(incoming),
        signal,
    );
    // A lost device leaves nothing to serve with: say so to probes and load balancers.
    let gone = batcher.workers_gone.clone();
    let health_gone = health.clone();
    let draining = lifecycle.drain.shutdown.clone();
    tokio::spawn(async move {
        gone.cancelled().await;
        if draining.is_cancelled() {
            return; // the drain stops them
        }
        tracing::error!("every inference worker has stopped: NOT_SERVING");
        health_gone.set(Serving::WorkersGone).await;
    });
    lifecycle.run(serve, scheduler, batcher);
    health.set(Serving::Serving).await;
    tracing::info!(%grpc_addr, %metrics_addr, %http_addr, tls = tls.is_some(), mutual_tls = tls.as_ref().is_some_and(TlsFiles::mutual),
        tokens = tokens.len(), reflection = config.network.reflection, "SERVING");
    Ok(Running {
        grpc_addr,
        metrics_addr,
        http_addr,
        placement,
        settings,
        lifecycle,
    })
}

/// The per-machine series, when `--machine-metrics` asks for them.
fn machine_series(config: &ServeConfig, conditions: &Arc<Conditions>) -> Option<m::Extra> {
    let registry = conditions.registry().clone();
    let cap = config.conditions.max_machine_metrics;
    config.conditions.machine_metrics.then(|| {
        let render: m::Extra =
            Arc::new(move |out: &mut String| export::render(&registry, cap, out));
        render
    })
}

/// `/healthz` (the process answers) and `/readyz` (SERVING: not draining, inference workers alive) on the metrics
/// listener, for probes that cannot speak gRPC over TLS.
fn probes(health: Health) -> axum::Router {
    use axum::http::StatusCode;
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = health.is_serving();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::Service;

    async fn get(router: &mut axum::Router, path: &str) -> u16 {
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let _ = std::future::poll_fn(|cx| {
            <axum::Router as Service<axum::http::Request<axum::body::Body>>>::poll_ready(router, cx)
        })
        .await;
        router.call(request).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn probes_say_ready_while_serving_and_alive_throughout() {
        let (reporter, _) = tonic_health::server::health_reporter();
        let health = Health::new(reporter).await;
        let mut router = probes(health.clone());
        assert_eq!(get(&mut router, "/healthz").await, 200);
        assert_eq!(
            get(&mut router, "/readyz").await,
            503,
            "starting is not ready"
        );
        health.set(Serving::Serving).await;
        assert_eq!(get(&mut router, "/readyz").await, 200);
        health.set(Serving::Draining).await;
        assert_eq!(
            get(&mut router, "/readyz").await,
            503,
            "draining is not ready"
        );
        assert_eq!(get(&mut router, "/healthz").await, 200, "but alive");
    }
}
