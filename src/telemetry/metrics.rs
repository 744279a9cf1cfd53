//! Every Prometheus metric the service exports: names, help, buckets, the recorder, the zero series, and the
//! `/metrics` route.
//!
//! Names follow Prometheus conventions: `drsn_` prefix, base units (seconds, bytes), `_total` counters, labels with
//! bounded values only (classes, reasons, status codes; never machine or sensor ids).

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) const ACTIVE_STREAMS: &str = "drsn_active_streams";
pub(crate) const STREAMS_OPENED: &str = "drsn_streams_opened_total";
pub(crate) const STREAMS_ENDED: &str = "drsn_streams_ended_total";
pub(crate) const REQUESTS: &str = "drsn_requests_total";
pub(crate) const SAMPLES_RECEIVED: &str = "drsn_samples_received_total";
pub(crate) const WINDOWS_DIAGNOSED: &str = "drsn_windows_diagnosed_total";
pub(crate) const WINDOWS_FLAGGED: &str = "drsn_windows_flagged_total";
pub(crate) const WINDOWS_UNCERTAIN: &str = "drsn_windows_uncertain_total";
pub(crate) const WINDOWS_OUT_OF_DISTRIBUTION: &str = "drsn_windows_out_of_distribution_total";
pub(crate) const PREDICTIONS: &str = "drsn_predictions_total";
pub(crate) const NOISE_SCORE: &str = "drsn_noise_score";
pub(crate) const DISCONTINUITIES: &str = "drsn_stream_discontinuities_total";
pub(crate) const BATCH_SIZE: &str = "drsn_batch_size";
pub(crate) const QUEUE_WAIT: &str = "drsn_queue_wait_seconds";
pub(crate) const INFERENCE: &str = "drsn_inference_seconds";
pub(crate) const WINDOW_LATENCY: &str = "drsn_window_latency_seconds";
pub(crate) const ERRORS: &str = "drsn_errors_total";
pub(crate) const QUEUE_DEPTH: &str = "drsn_queue_depth";
pub(crate) const QUEUE_CAPACITY: &str = "drsn_queue_capacity";
pub(crate) const QUEUE_CLIENTS: &str = "drsn_queue_clients";
pub(crate) const STREAM_MEMORY: &str = "drsn_stream_memory_bytes";
pub(crate) const REQUEST_MEMORY: &str = "drsn_request_memory_bytes";
pub(crate) const REQUEST_MEMORY_CAPACITY: &str = "drsn_request_memory_capacity_bytes";
pub(crate) const CONNECTIONS: &str = "drsn_connections";
pub(crate) const CONNECTIONS_CLOSED: &str = "drsn_connections_closed_total";
pub(crate) const MODEL_INFO: &str = "drsn_model_info";
pub(crate) const MODEL_STREAMS: &str = "drsn_model_streams";
pub(crate) const SHADOW_WINDOWS: &str = "drsn_shadow_windows_total";
pub(crate) const SHADOW_CONFUSION: &str = "drsn_shadow_confusion_total";
pub(crate) const DEVICE_FALLBACKS: &str = "drsn_device_fallbacks_total";
pub(crate) const SERVING: &str = "drsn_serving";
pub(crate) const LOG_LINES_SUPPRESSED: &str = "drsn_log_lines_suppressed_total";
pub(crate) const MACHINES: &str = "drsn_machines";
pub(crate) const CONDITION_CHANGES: &str = "drsn_condition_changes_total";
pub(crate) const MACHINES_NOT_EXPORTED: &str = "drsn_machines_not_exported";
// Per machine, only with --machine-metrics (rendered from the condition registry at each scrape, so a machine
// that leaves the replica leaves /metrics with it).
pub(crate) const MACHINE_CONDITION: &str = "drsn_machine_condition";
pub(crate) const MACHINE_INFO: &str = "drsn_machine_info";
pub(crate) const MACHINE_CLASS_SHARE: &str = "drsn_machine_class_share";
pub(crate) const MACHINE_VELOCITY: &str = "drsn_machine_velocity_rms_mm_per_second";
pub(crate) const MACHINE_SINCE: &str = "drsn_machine_condition_since_timestamp_seconds";
// The MQTT bridge's own (`drsn-serve bridge mqtt`: its process, its /metrics).
pub(crate) const BRIDGE_MESSAGES: &str = "drsn_bridge_messages_total";
pub(crate) const BRIDGE_SENSORS: &str = "drsn_bridge_sensors";
pub(crate) const BRIDGE_WINDOWS: &str = "drsn_bridge_windows_published_total";
pub(crate) const BRIDGE_CONDITIONS: &str = "drsn_bridge_conditions_published_total";
pub(crate) const BRIDGE_RESTARTS: &str = "drsn_bridge_stream_restarts_total";
pub(crate) const BRIDGE_RESUMES: &str = "drsn_bridge_stream_resumes_total";
pub(crate) const BRIDGE_CONNECTIONS: &str = "drsn_bridge_mqtt_connections_total";
pub(crate) const BRIDGE_DISCONNECTS: &str = "drsn_bridge_mqtt_disconnects_total";
pub(crate) const BRIDGE_CONNECTED: &str = "drsn_bridge_mqtt_connected";
/// What became of a raw message (the `outcome` label of [`BRIDGE_MESSAGES`]).
pub(crate) const BRIDGE_OUTCOMES: &[&str] = &[
    "taken",
    "duplicate",
    "malformed",
    "topic",
    "backlog",
    "sensor_limit",
];

/// Why a window came back without a class (the `reason` label of [`WINDOWS_FLAGGED`]).
pub(crate) const FLAG_REASONS: &[&str] = &[
    "flat",
    "clipped",
    "out_of_range",
    "impulsive",
    "output_not_finite",
    "shed",
];
/// Why the server closed a connection (the `reason` label of [`CONNECTIONS_CLOSED`]).
pub(crate) const CLOSE_REASONS: &[&str] = &["max_connections", "idle", "slow", "evicted"];
/// Log lines clients can cause, each with its own budget (the `site` label of [`LOG_LINES_SUPPRESSED`]).
pub(crate) const LOG_SITES: &[&str] = &["stream_opened", "request_failed"];
/// The APIs windows arrive on: drsn.v1 streams and unary calls, and the Open Inference Protocol (KServe V2).
pub(crate) const APIS: &[&str] = &["stream", "unary", "v2"];
/// A sensor's or machine's condition (the `condition` label of [`MACHINES`], `to` of [`CONDITION_CHANGES`]).
pub(crate) const CONDITIONS: &[&str] = &["normal", "fault", "sensor_fault", "unknown"];

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];
const SCORE_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide recorder once (later calls reuse it) and describes every metric.
pub(crate) fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(NOISE_SCORE.into()), SCORE_BUCKETS)
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

/// Creates the counters that dashboards and alerts read at zero, so rates work from the first window: windows by
/// API, flags by reason, predictions by class, errors by reason and the code each maps to.
/// A model loaded while the server runs: its classes' series appear, at their current value (zero when new).
pub(crate) fn show_classes(model: &str, classes: &[String]) {
    for class in classes {
        counter!(PREDICTIONS, "model" => model.to_owned(), "class" => class.clone()).increment(0);
    }
}

pub(crate) fn zero_series(
    model: &str,
    classes: &[String],
    error_codes: &[(&'static str, &'static str)],
    endings: &[&'static str],
) {
    counter!(STREAMS_OPENED).absolute(0);
    for how in endings {
        counter!(STREAMS_ENDED, "how" => *how).absolute(0);
    }
    counter!(DEVICE_FALLBACKS).absolute(0);
    for api in ["unary", "v2"] {
        counter!(REQUESTS, "api" => api).absolute(0);
    }
    for api in APIS {
        counter!(WINDOWS_DIAGNOSED, "api" => *api).absolute(0);
        counter!(WINDOWS_UNCERTAIN, "api" => *api).absolute(0);
        counter!(WINDOWS_OUT_OF_DISTRIBUTION, "api" => *api).absolute(0);
        for reason in FLAG_REASONS {
            counter!(WINDOWS_FLAGGED, "api" => *api, "reason" => *reason).absolute(0);
        }
    }
    for class in classes {
        counter!(PREDICTIONS, "model" => model.to_owned(), "class" => class.clone()).absolute(0);
    }
    for (reason, code) in error_codes {
        counter!(ERRORS, "reason" => *reason, "code" => *code).absolute(0);
    }
    for listener in ["grpc", "http", "metrics"] {
        gauge!(CONNECTIONS, "listener" => listener).set(0.0);
        for reason in CLOSE_REASONS {
            counter!(CONNECTIONS_CLOSED, "listener" => listener, "reason" => *reason).absolute(0);
        }
    }
    counter!(SAMPLES_RECEIVED).absolute(0);
    counter!(DISCONTINUITIES).absolute(0);
    gauge!(ACTIVE_STREAMS).set(0.0);
    gauge!(STREAM_MEMORY).set(0.0);
    gauge!(REQUEST_MEMORY).set(0.0);
    for site in LOG_SITES {
        counter!(LOG_LINES_SUPPRESSED, "site" => *site).absolute(0);
    }
    gauge!(QUEUE_DEPTH).set(0.0);
    gauge!(QUEUE_CLIENTS).set(0.0);
    for condition in CONDITIONS {
        gauge!(MACHINES, "condition" => *condition).set(0.0);
        counter!(CONDITION_CHANGES, "to" => *condition).absolute(0);
    }
    gauge!(MACHINES_NOT_EXPORTED).set(0.0);
}

fn describe() {
    describe_counter!(
        BRIDGE_MESSAGES,
        "MQTT bridge: raw messages by outcome (taken; duplicate: a redelivered overlap; malformed; topic: not a raw \
         topic; backlog: the sensor's stream was not keeping up; sensor_limit: over --max-sensors)."
    );
    describe_gauge!(BRIDGE_SENSORS, "MQTT bridge: sensors with an open stream.");
    describe_counter!(BRIDGE_WINDOWS, "MQTT bridge: window results published.");
    describe_counter!(
        BRIDGE_CONDITIONS,
        "MQTT bridge: condition changes published (retained)."
    );
    describe_counter!(
        BRIDGE_RESTARTS,
        "MQTT bridge: sensor streams started anew (samples missing, or the rate, channels or encoding changed)."
    );
    describe_counter!(
        BRIDGE_RESUMES,
        "MQTT bridge: streams resumed on a replica after a drain, an aged connection or a lost replica."
    );
    describe_counter!(
        BRIDGE_CONNECTIONS,
        "MQTT bridge: connections made to the broker."
    );
    describe_counter!(
        BRIDGE_DISCONNECTS,
        "MQTT bridge: broker connections lost or refused."
    );
    describe_gauge!(
        BRIDGE_CONNECTED,
        "MQTT bridge: 1 while connected to the broker, else 0."
    );
    describe_gauge!(
        MACHINES,
        "Machines with a stream on this replica (or recently ended), by condition: the worst of their sensors'."
    );
    describe_counter!(
        CONDITION_CHANGES,
        "Sensor condition changes (onset, clear, sensor fault, class change), by the condition changed to."
    );
    describe_gauge!(
        MACHINES_NOT_EXPORTED,
        "Machines left out of the per-machine series at the last scrape: over --max-machine-metrics (the worst \
         conditions are exported first)."
    );
    describe_gauge!(
        MACHINE_CONDITION,
        "Per machine (--machine-metrics): 1 for its current condition, 0 for the others."
    );
    describe_gauge!(
        MACHINE_INFO,
        "Per machine (--machine-metrics): 1, labelled with its condition, the sensor that sets it, the dominant \
         fault class and the worst sustained ISO 10816 zone."
    );
    describe_gauge!(
        MACHINE_CLASS_SHARE,
        "Per machine (--machine-metrics): each class's share of the current evidence of the sensor that sets it."
    );
    describe_gauge!(
        MACHINE_VELOCITY,
        "Per machine (--machine-metrics): sustained RMS vibration velocity, mm/s over 10-1000 Hz, of its worst sensor."
    );
    describe_gauge!(
        MACHINE_SINCE,
        "Per machine (--machine-metrics): Unix time at which its current condition began."
    );
    describe_gauge!(ACTIVE_STREAMS, "Open StreamDiagnose streams.");
    describe_counter!(
        STREAMS_OPENED,
        "StreamDiagnose streams admitted (before their open message is checked)."
    );
    describe_counter!(
        STREAMS_ENDED,
        "Streams ended, by how: ok, cancelled (the client went away), or the error kind."
    );
    describe_counter!(
        REQUESTS,
        "Unary calls (drsn.v1 Diagnose, KServe V2 infer), by API."
    );
    describe_counter!(
        SAMPLES_RECEIVED,
        "Samples (frames) received on streams, before resampling."
    );
    describe_counter!(
        WINDOWS_DIAGNOSED,
        "Windows classified and delivered, by API (stream or unary); uncertain ones included."
    );
    describe_counter!(
        WINDOWS_FLAGGED,
        "Windows delivered without a class, by API and reason (flat, clipped, out_of_range, output_not_finite, shed)."
    );
    describe_counter!(
        WINDOWS_UNCERTAIN,
        "Classified windows reported uncertain: confidence below the model card's threshold, or out of distribution."
    );
    describe_counter!(
        WINDOWS_OUT_OF_DISTRIBUTION,
        "Classified windows whose OOD score is above the model card's ood.uncertain_above (counted as uncertain too)."
    );
    describe_counter!(PREDICTIONS, "Classified windows by predicted class.");
    describe_histogram!(
        NOISE_SCORE,
        "Noise score of classified windows (1 - mean shrinkage alpha)."
    );
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
        "Requests ended with an error, by reason and status code."
    );
    describe_gauge!(QUEUE_DEPTH, "Windows waiting in the batch queue.");
    describe_gauge!(
        QUEUE_CAPACITY,
        "Capacity of the batch queue, in windows (each stream may also hold a few beyond it)."
    );
    describe_gauge!(
        QUEUE_CLIENTS,
        "Clients (connections, and unary calls) with windows waiting; batches take from them in turn."
    );
    describe_gauge!(
        STREAM_MEMORY,
        Unit::Bytes,
        "Memory budgeted for open streams (buffers, resampler state, windows in flight)."
    );
    describe_gauge!(
        REQUEST_MEMORY,
        Unit::Bytes,
        "Memory reserved by requests in flight (drsn.v1 Diagnose, KServe V2 gRPC and REST), before they are read."
    );
    describe_counter!(
        LOG_LINES_SUPPRESSED,
        "Log lines held back by their site's budget (one client cannot flood the log); see the summary lines."
    );
    describe_gauge!(
        REQUEST_MEMORY_CAPACITY,
        Unit::Bytes,
        "The request memory budget (--max-request-memory)."
    );
    describe_gauge!(
        CONNECTIONS,
        "Open connections, by listener (grpc, http, metrics)."
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections the server refused or closed, by listener and reason (max_connections: refused at the cap; idle: silent; slow: a request not in by --request-read-timeout; evicted: the oldest metrics connection, closed to admit a new one)."
    );
    describe_gauge!(
        MODEL_INFO,
        "Each model version served (value 1; 0 once unloaded), by name, version and device."
    );
    describe_gauge!(
        MODEL_STREAMS,
        "Open streams by the model and version they opened on."
    );
    describe_counter!(
        SHADOW_WINDOWS,
        "Stream windows of a serving version offered to its shadow candidate, by model, serving and candidate version and agreement (agree, disagree: both judged it; unscored: one could not; skipped: no spare capacity)."
    );
    describe_counter!(
        SHADOW_CONFUSION,
        "Windows both a serving version and its shadow candidate judged, by the class each named."
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

/// Counts a request that ended with an error; `code` is the status the API answered with.
pub(crate) fn record_error(reason: &'static str, code: &'static str) {
    counter!(ERRORS, "reason" => reason, "code" => code).increment(1);
}

/// The per-window series of one API and model version, looked up once (when the version is loaded) rather than by
/// name and labels for every window delivered.
pub(crate) struct WindowMeters {
    api: &'static str,
    diagnosed: Counter,
    uncertain: Counter,
    out_of_distribution: Counter,
    noise_score: Histogram,
    latency: Histogram,
    /// `drsn_predictions_total{model, class}` per class index.
    predictions: Vec<Counter>,
}

impl WindowMeters {
    pub(crate) fn new(api: &'static str, model: &str, classes: &[String]) -> Self {
        Self {
            api,
            diagnosed: counter!(WINDOWS_DIAGNOSED, "api" => api),
            uncertain: counter!(WINDOWS_UNCERTAIN, "api" => api),
            out_of_distribution: counter!(WINDOWS_OUT_OF_DISTRIBUTION, "api" => api),
            noise_score: histogram!(NOISE_SCORE),
            latency: histogram!(WINDOW_LATENCY, "api" => api),
            predictions: classes
                .iter()
                .map(|c| counter!(PREDICTIONS, "model" => model.to_owned(), "class" => c.clone()))
                .collect(),
        }
    }

    /// The API these series are labelled with.
    pub(crate) fn api(&self) -> &'static str {
        self.api
    }

    /// Records a delivered window that got class `class_index`.
    pub(crate) fn classified(
        &self,
        class_index: usize,
        uncertain: bool,
        out_of_distribution: bool,
        noise_score: Option<f32>,
        latency: Duration,
    ) {
        self.diagnosed.increment(1);
        if let Some(c) = self.predictions.get(class_index) {
            c.increment(1);
        }
        if uncertain {
            self.uncertain.increment(1);
        }
        if out_of_distribution {
            self.out_of_distribution.increment(1);
        }
        if let Some(score) = noise_score {
            self.noise_score.record(score as f64);
        }
        self.latency.record(latency.as_secs_f64());
    }

    /// Records a delivered window that came back without a class.
    pub(crate) fn flagged(&self, reason: &'static str, latency: Duration) {
        counter!(WINDOWS_FLAGGED, "api" => self.api, "reason" => reason).increment(1);
        self.latency.record(latency.as_secs_f64());
    }
}

/// Series rendered at each scrape from state the recorder does not hold (the per-machine series).
pub(crate) type Extra = std::sync::Arc<dyn Fn(&mut String) + Send + Sync>;

/// `GET /metrics`: the exposition of the process-wide recorder, then `extra`'s series.
pub(crate) fn router(handle: PrometheusHandle, extra: Option<Extra>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            let extra = extra.clone();
            async move {
                let mut text = handle.render();
                if let Some(extra) = extra {
                    extra(&mut text);
                }
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    text,
                )
            }
        }),
    )
}

/// Drains the recorder's histogram buffers every few seconds, so memory stays flat when nobody scrapes.
pub(crate) async fn upkeep(handle: PrometheusHandle, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = stop.cancelled() => break,
        }
    }
}

/// Counts open streams; the gauge goes down when the guard is dropped, however the stream ends.
pub(crate) struct StreamGauge(());

impl StreamGauge {
    pub(crate) fn open() -> Self {
        gauge!(ACTIVE_STREAMS).increment(1.0);
        StreamGauge(())
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        gauge!(ACTIVE_STREAMS).decrement(1.0);
    }
}
