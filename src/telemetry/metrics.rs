//! Every Prometheus metric the service exports: names, help, buckets, and the `/metrics` endpoint.
//!
//! Names follow Prometheus conventions: `drsn_` prefix, base units (seconds), `_total` counters, labels with
//! bounded values only (classes, reasons, gRPC codes; never machine or sensor ids).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const ACTIVE_STREAMS: &str = "drsn_active_streams";
pub const SAMPLES_RECEIVED: &str = "drsn_samples_received_total";
pub const WINDOWS_DIAGNOSED: &str = "drsn_windows_diagnosed_total";
pub const PREDICTIONS: &str = "drsn_predictions_total";
pub const DISCONTINUITIES: &str = "drsn_stream_discontinuities_total";
pub const BATCH_SIZE: &str = "drsn_batch_size";
pub const QUEUE_WAIT: &str = "drsn_queue_wait_seconds";
pub const INFERENCE: &str = "drsn_inference_seconds";
pub const WINDOW_LATENCY: &str = "drsn_window_latency_seconds";
pub const ERRORS: &str = "drsn_errors_total";
pub const QUEUE_DEPTH: &str = "drsn_queue_depth";
pub const QUEUE_CAPACITY: &str = "drsn_queue_capacity";
pub const MODEL_INFO: &str = "drsn_model_info";
pub const DEVICE_FALLBACKS: &str = "drsn_device_fallbacks_total";
pub const SERVING: &str = "drsn_serving";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide recorder once (later calls reuse it) and describes every metric.
pub fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)
                })
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|_| {
                "another metrics recorder is already installed in this process".to_owned()
            })?;
            describe();
            Ok(handle)
        })
        .clone()
}

fn describe() {
    describe_gauge!(ACTIVE_STREAMS, "Open StreamDiagnose streams.");
    describe_counter!(
        SAMPLES_RECEIVED,
        "Samples (frames) received on streams, before resampling."
    );
    describe_counter!(
        WINDOWS_DIAGNOSED,
        "Windows classified and delivered, by API (stream or unary)."
    );
    describe_counter!(PREDICTIONS, "Delivered window results by predicted class.");
    describe_counter!(
        DISCONTINUITIES,
        "Chunks that did not start where the previous one ended (gap or overlap)."
    );
    describe_histogram!(BATCH_SIZE, Unit::Count, "Windows per inference batch.");
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time a window waited in the batch queue before inference."
    );
    describe_histogram!(
        INFERENCE,
        Unit::Seconds,
        "ONNX Runtime run time per batch, preprocessing included."
    );
    describe_histogram!(
        WINDOW_LATENCY,
        Unit::Seconds,
        "From the arrival of a window's last sample to its result being handed to the transport."
    );
    describe_counter!(
        ERRORS,
        "Requests ended with an error, by reason and gRPC code."
    );
    describe_gauge!(QUEUE_DEPTH, "Windows waiting in the batch queue.");
    describe_gauge!(QUEUE_CAPACITY, "Capacity of the batch queue, in windows.");
    describe_gauge!(
        MODEL_INFO,
        "The model being served (value 1), by name, version and device."
    );
    describe_counter!(
        DEVICE_FALLBACKS,
        "Start-ups where --device auto could not use CUDA and fell back to CPU."
    );
    describe_gauge!(
        SERVING,
        "1 while the server reports SERVING, 0 while starting or draining."
    );
}

pub fn record_error(reason: &'static str, code: tonic::Code) {
    counter!(ERRORS, "reason" => reason, "code" => code_name(code)).increment(1);
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Records a delivered window.
pub fn record_window(api: &'static str, label: &str, latency: Duration) {
    counter!(WINDOWS_DIAGNOSED, "api" => api).increment(1);
    counter!(PREDICTIONS, "class" => label.to_owned()).increment(1);
    histogram!(WINDOW_LATENCY, "api" => api).record(latency.as_secs_f64());
}

/// Counts open streams; the gauge goes down when the last holder of the guard is dropped, however the stream ends.
pub struct StreamGauge(());

impl StreamGauge {
    pub fn open() -> Self {
        gauge!(ACTIVE_STREAMS).increment(1.0);
        StreamGauge(())
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        gauge!(ACTIVE_STREAMS).decrement(1.0);
    }
}

/// Serves `GET /metrics` (and any other path, for simple scrapers) until `stop` fires.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, stop: CancellationToken) {
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
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %err, "metrics endpoint failed");
    }
}
