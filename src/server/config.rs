//! `drsn-serve serve` settings, in groups; every flag also reads a `DRSN_...` environment variable, and
//! [`ServeConfig::validate`] refuses settings that could not work instead of bending them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::auth::Tokens;
use crate::api::grpc::service::StreamTimeouts;
use crate::api::kserve::{ModelControl, Ready};
use crate::api::services::ApiSettings;
use crate::condition::Conditions;
use crate::engine::device::Device;
use crate::engine::open::{Engine, EngineSettings};
use crate::error::StartupError;
use crate::pipeline::Admission;
use crate::pipeline::schedule::ScheduleConfig;
use crate::pipeline::spec::Limits;
use crate::pipeline::start::PipelineSettings;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "drsn-serve serve",
    about = "Serve the model over gRPC",
    args_override_self = true
)]
pub struct ServeConfig {
    /// Model card (JSON) to serve; the ONNX file it names is read from the same folder.
    #[arg(long, env = "DRSN_MODEL", default_value = "models/drsn_cw_cwru.json")]
    pub model: PathBuf,
    /// A model repository to serve instead of --model: <model>/<version>/ folders, each with one model card (JSON)
    /// and the ONNX file it names. Every version found is served; a request that names no version gets the newest.
    #[arg(long, env = "DRSN_MODEL_REPOSITORY")]
    pub model_repository: Option<PathBuf>,
    /// With --model-repository: the model for streams and requests that name none (needed when it holds several).
    #[arg(long, env = "DRSN_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// With --model-repository: `none` (versions are read at start-up), `explicit` (POST
    /// /v2/repository/models/<name>/load and /unload, behind the token when tokens are set), or `poll` (the folder
    /// is read again every --repository-poll-interval, and the routes too).
    #[arg(long, env = "DRSN_MODEL_CONTROL", value_enum, default_value_t = ModelControlMode::None)]
    pub model_control: ModelControlMode,
    /// How often `--model-control poll` reads the repository again.
    #[arg(long, env = "DRSN_REPOSITORY_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "30s")]
    pub repository_poll_interval: Duration,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub batching: BatchArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub conditions: ConditionArgs,
    /// On SIGTERM/SIGINT: how long open streams get to receive their queued windows before they are ended.
    #[arg(long, env = "DRSN_DRAIN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub drain_timeout: Duration,
    /// Log format; levels come from RUST_LOG (default info).
    #[arg(long, env = "DRSN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelControlMode {
    None,
    Explicit,
    Poll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Network")]
pub struct NetworkArgs {
    /// gRPC listen address. The default serves this machine only; use 0.0.0.0:50051 (as the container image
    /// does) to serve the network, with TLS and tokens.
    #[arg(
        long,
        env = "DRSN_LISTEN",
        alias = "grpc-addr",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,
    /// KServe V2 (Open Inference Protocol) REST listen address; V2 over gRPC shares --listen.
    #[arg(long, env = "DRSN_HTTP_LISTEN", default_value = "127.0.0.1:8000")]
    pub http_listen: SocketAddr,
    /// Prometheus `/metrics` listen address.
    #[arg(
        long,
        env = "DRSN_METRICS_LISTEN",
        alias = "metrics-addr",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_listen: SocketAddr,
    /// Open gRPC connections at once; more are closed as they arrive.
    #[arg(long, env = "DRSN_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// A connection with no open stream that sends nothing for this long is closed (also one that never completes
    /// its TLS or HTTP/2 handshake, and a /metrics connection that stops mid-request).
    #[arg(long, env = "DRSN_CONNECTION_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "2m")]
    pub connection_idle_timeout: Duration,
    /// An HTTP request (REST API, /metrics, probes) must arrive in full, headers and body, within this long of its
    /// first byte: a slower one is answered 408 or closed. Also the longest a keep-alive HTTP connection waits idle.
    #[arg(long, env = "DRSN_REQUEST_READ_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub request_read_timeout: Duration,
    /// Streams on a connection end with UNAVAILABLE and a resume point once the connection is this old, so that
    /// long-lived streams spread over replicas added since (off by default).
    #[arg(long, env = "DRSN_MAX_CONNECTION_AGE", value_parser = humantime::parse_duration)]
    pub max_connection_age: Option<Duration>,
    /// HTTP/2 streams a client may reset before the server has accepted them (rapid-reset protection).
    #[arg(long, env = "DRSN_HTTP2_MAX_PENDING_RESETS", default_value_t = 20)]
    pub http2_max_pending_resets: usize,
    /// HTTP/2 streams the server may reset because of a client's protocol errors before it closes the connection.
    #[arg(long, env = "DRSN_HTTP2_MAX_ERROR_RESETS", default_value_t = 256)]
    pub http2_max_error_resets: usize,
    /// Serve gRPC server reflection (lets tools such as grpcurl discover the API without the .proto files).
    #[arg(long, env = "DRSN_REFLECTION", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub reflection: bool,
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Security")]
pub struct SecurityArgs {
    /// TLS certificate chain (PEM) for the gRPC listener; with --tls-key, the server speaks only TLS.
    #[arg(long, env = "DRSN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "DRSN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that client certificates must chain to: mutual TLS, every client must present one.
    #[arg(long, env = "DRSN_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve /metrics over TLS too, with the same certificate (and client CA, if set).
    #[arg(long, env = "DRSN_METRICS_TLS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_tls: bool,
    /// File of bearer tokens, one per line (`#` comments allowed); every gRPC call except health checks must
    /// carry `authorization: Bearer <token>`.
    #[arg(long, env = "DRSN_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Bearer tokens, comma-separated (prefer --auth-tokens-file: environment variables show in process listings).
    #[arg(long, env = TOKENS_ENV, hide_env_values = true, value_parser = parse_tokens)]
    pub auth_tokens: Option<Tokens>,
}

/// The environment variable of `--auth-tokens`.
pub const TOKENS_ENV: &str = "DRSN_AUTH_TOKENS";

fn parse_tokens(text: &str) -> Result<Tokens, String> {
    Tokens::parse(text)
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Inference")]
pub struct EngineArgs {
    /// Where inference runs: cpu, cuda, cuda:N, or auto (CUDA device 0 if its provider registers, else CPU).
    #[arg(long, env = "DRSN_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// ONNX Runtime library (libonnxruntime.so). Default: the project's `.ort/` install (`make ort`).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Inference workers, each with its own ONNX Runtime session and thread. Default: CPU cores on cpu, 2 on cuda.
    #[arg(long, env = "DRSN_WORKERS")]
    pub workers: Option<usize>,
    /// ONNX Runtime intra-op threads per worker (parallelism scales better across workers than within one).
    #[arg(long, env = "DRSN_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Batching")]
pub struct BatchArgs {
    /// Largest batch, in windows. Default: 32 on cpu, 1024 on cuda.
    #[arg(long, env = "DRSN_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Longest a window waits for its batch to fill, e.g. `5ms`. Default: 5ms on cpu, 2ms on cuda.
    #[arg(long, env = "DRSN_MAX_QUEUE_DELAY", value_parser = humantime::parse_duration)]
    pub max_queue_delay: Option<Duration>,
    /// Windows the batch queue holds, all streams together (each stream may hold one more).
    #[arg(long, env = "DRSN_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Queue wait plus inference a window should stay within: a batch leaves early, and smaller, rather than
    /// overrun it (batches are also never larger than the efficient size measured at start-up).
    #[arg(long, env = "DRSN_LATENCY_BUDGET", value_parser = humantime::parse_duration, default_value = "50ms")]
    pub latency_budget: Duration,
    /// A window that has waited this long for inference is answered as shed instead of run (overload).
    #[arg(long, env = "DRSN_MAX_QUEUE_WAIT", value_parser = humantime::parse_duration, default_value = "2s")]
    pub max_queue_wait: Duration,
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Machine conditions")]
pub struct ConditionArgs {
    /// Export per-machine series (drsn_machine_condition, _info, _class_share, _velocity_rms_mm_per_second,
    /// _condition_since_timestamp_seconds): about 16 series per machine with the shipped model's 10 classes.
    #[arg(long, env = "DRSN_MACHINE_METRICS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub machine_metrics: bool,
    /// Most machines exported per machine, the worst conditions first (drsn_machines_not_exported says how many
    /// were left out).
    #[arg(long, env = "DRSN_MAX_MACHINE_METRICS", default_value_t = 1000)]
    pub max_machine_metrics: usize,
    /// A sensor whose stream ended (not moved by the server) stays UNKNOWN this long, then leaves the machine list.
    #[arg(long, env = "DRSN_CONDITION_RETENTION", value_parser = humantime::parse_duration, default_value = "15m")]
    pub condition_retention: Duration,
    /// Evidence halves after this much signal (seconds of the sensor's samples, not of the wall clock).
    #[arg(long, env = "DRSN_CONDITION_HALF_LIFE", value_parser = humantime::parse_duration, default_value = "1s")]
    pub condition_half_life: Duration,
    /// FAULT begins when fault classes hold this share of the evidence for --condition-on-delay ...
    #[arg(long, env = "DRSN_CONDITION_ON_SHARE", default_value_t = 0.7)]
    pub condition_on_share: f32,
    /// ... and clears when they hold at most this share for --condition-off-delay.
    #[arg(long, env = "DRSN_CONDITION_OFF_SHARE", default_value_t = 0.3)]
    pub condition_off_share: f32,
    #[arg(long, env = "DRSN_CONDITION_ON_DELAY", value_parser = humantime::parse_duration, default_value = "2s")]
    pub condition_on_delay: Duration,
    #[arg(long, env = "DRSN_CONDITION_OFF_DELAY", value_parser = humantime::parse_duration, default_value = "5s")]
    pub condition_off_delay: Duration,
    /// ISO 10816-3 group of a machine whose stream names none: large (300 kW-50 MW), medium (15-300 kW), or small
    /// (ISO 10816-1 class I, up to 15 kW).
    #[arg(long, env = "DRSN_ISO_GROUP", value_enum, default_value_t = IsoGroup::Medium)]
    pub iso_group: IsoGroup,
    /// Foundation of a machine whose stream names none.
    #[arg(long, env = "DRSN_ISO_FOUNDATION", value_enum, default_value_t = IsoFoundation::Rigid)]
    pub iso_foundation: IsoFoundation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsoGroup {
    Large,
    Medium,
    Small,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsoFoundation {
    Rigid,
    Flexible,
}

impl ConditionArgs {
    pub fn settings(&self) -> crate::condition::debounce::Settings {
        crate::condition::debounce::Settings {
            half_life_s: self.condition_half_life.as_secs_f64(),
            on_share: self.condition_on_share,
            off_share: self.condition_off_share,
            on_delay_s: self.condition_on_delay.as_secs_f64(),
            off_delay_s: self.condition_off_delay.as_secs_f64(),
            ..Default::default()
        }
    }

    /// The machines' conditions, for as many sensors whose data stopped as there may be streams.
    pub fn conditions(&self, max_streams: usize) -> Conditions {
        Conditions::new(self.settings(), self.condition_retention, max_streams)
    }

    pub fn zones(&self) -> crate::pipeline::severity::ZoneLimits {
        use crate::pipeline::severity::{Foundation, MachineGroup, ZoneLimits};
        let group = match self.iso_group {
            IsoGroup::Large => MachineGroup::Large,
            IsoGroup::Medium => MachineGroup::Medium,
            IsoGroup::Small => MachineGroup::Small,
        };
        let foundation = match self.iso_foundation {
            IsoFoundation::Rigid => Foundation::Rigid,
            IsoFoundation::Flexible => Foundation::Flexible,
        };
        ZoneLimits::new(group, foundation)
    }
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Streams and requests")]
pub struct StreamArgs {
    /// Hand a stream over after this long open (UNAVAILABLE with a resume point; the client library resumes), so
    /// that months-long streams move to the model version new streams get; unset: never.
    #[arg(long, env = "DRSN_STREAM_MAX_AGE", value_parser = humantime::parse_duration)]
    pub stream_max_age: Option<Duration>,
    /// Windows one stream may have in flight before its reader pauses.
    #[arg(long, env = "DRSN_STREAM_BUFFER", default_value_t = 16)]
    pub stream_buffer: usize,
    /// Largest chunk, in frames.
    #[arg(long, env = "DRSN_MAX_CHUNK_FRAMES", default_value_t = 1 << 16)]
    pub max_chunk_frames: usize,
    /// Most windows in one Diagnose call.
    #[arg(long, env = "DRSN_MAX_UNARY_WINDOWS", default_value_t = 256)]
    pub max_unary_windows: usize,
    /// Open streams allowed at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "DRSN_MAX_STREAMS", default_value_t = 2048)]
    pub max_streams: usize,
    /// Open streams allowed on one connection.
    #[arg(long, env = "DRSN_MAX_STREAMS_PER_CONNECTION", default_value_t = 256)]
    pub max_streams_per_connection: usize,
    /// How long a new stream may take to send its `open` message.
    #[arg(long, env = "DRSN_OPEN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub open_timeout: Duration,
    /// An open stream that completes no window for this long (no samples, or too few to fill one) is ended
    /// (DEADLINE_EXCEEDED, with a resume point); at least twice a window and a hop of signal at the model's rate.
    #[arg(long, env = "DRSN_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// Longest machine_id / sensor_id, in bytes.
    #[arg(long, env = "DRSN_MAX_ID_BYTES", default_value_t = 128)]
    pub max_id_bytes: usize,
    /// Most memory one stream may be budgeted (transport buffer, chunks, windows in flight, resampler state),
    /// in bytes; a stream whose sample rate needs more resampler state is refused.
    #[arg(long, env = "DRSN_MAX_STREAM_MEMORY", default_value_t = 2 << 20)]
    pub max_stream_memory: usize,
    /// Most memory the requests in flight (drsn.v1 Diagnose, KServe V2 gRPC and REST) may hold together, in bytes:
    /// each reserves three times its declared size before it is read; past the budget, RESOURCE_EXHAUSTED / 429.
    #[arg(long, env = "DRSN_MAX_REQUEST_MEMORY", default_value_t = 256 << 20)]
    pub max_request_memory: usize,
}

/// The HTTP/2 receive window of each stream: what a client may send before the server reads it.
pub const STREAM_WINDOW: usize = 256 << 10;
/// The HTTP/2 receive window of each connection.
pub const CONNECTION_WINDOW: usize = 4 << 20;

/// Settings that depend on where inference runs, resolved once the device is known.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    pub workers: usize,
    pub max_batch: usize,
    pub max_queue_delay: Duration,
}

impl ServeConfig {
    /// Refuses settings that cannot work, naming the flag.
    pub fn validate(&self) -> Result<(), StartupError> {
        let bad = |msg: String| Err(StartupError::Config(msg));
        let positive = [
            ("--workers", self.engine.workers.unwrap_or(1)),
            ("--intra-threads", self.engine.intra_threads),
            ("--max-batch", self.batching.max_batch.unwrap_or(1)),
            ("--queue-capacity", self.batching.queue_capacity),
            ("--stream-buffer", self.streams.stream_buffer),
            ("--max-chunk-frames", self.streams.max_chunk_frames),
            ("--max-unary-windows", self.streams.max_unary_windows),
            ("--max-streams", self.streams.max_streams),
            (
                "--max-streams-per-connection",
                self.streams.max_streams_per_connection,
            ),
            ("--max-connections", self.network.max_connections),
            ("--max-id-bytes", self.streams.max_id_bytes),
            ("--max-request-memory", self.streams.max_request_memory),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return bad(format!("{flag} must be at least 1"));
            }
        }
        if let Err(e) = self.conditions.settings().validate() {
            return bad(format!("--condition-*: {e}"));
        }
        if self.conditions.condition_half_life.is_zero() {
            return bad("--condition-half-life must be above 0".into());
        }
        if self.streams.max_unary_windows > self.batching.queue_capacity {
            return bad(format!(
                "--max-unary-windows ({}) is larger than --queue-capacity ({}): such requests could never be queued",
                self.streams.max_unary_windows, self.batching.queue_capacity
            ));
        }
        if self.batching.max_queue_wait.is_zero() {
            return bad("--max-queue-wait must be above 0".into());
        }
        if self.network.request_read_timeout.is_zero() {
            return bad("--request-read-timeout must be above 0".into());
        }
        if self.model_control != ModelControlMode::None && self.model_repository.is_none() {
            return bad(
                "--model-control loads and unloads the versions of --model-repository: set it too"
                    .into(),
            );
        }
        if self.repository_poll_interval.is_zero() {
            return bad("--repository-poll-interval must be above 0".into());
        }
        if self.streams.stream_max_age.is_some_and(|a| a.is_zero()) {
            return bad("--stream-max-age must be above 0 (leave it unset for no limit)".into());
        }
        if self.default_model.is_some() && self.model_repository.is_none() {
            return bad(
                "--default-model names a model of --model-repository; with --model, the one model is the default"
                    .into(),
            );
        }
        if self.security.metrics_tls && self.security.tls_cert.is_none() {
            return bad("--metrics-tls needs --tls-cert and --tls-key".into());
        }
        Ok(())
    }

    /// What the engine opens: the device, and how many sessions of what batch size.
    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            device: self.engine.device,
            ort_lib: self.engine.ort_lib.clone(),
            intra_threads: self.engine.intra_threads,
            workers: self.engine.workers,
            max_batch: self.batching.max_batch,
        }
    }

    /// The settings that follow from the opened engine's device.
    pub fn resolve(&self, engine: &Engine) -> Resolved {
        Resolved {
            workers: engine.workers(),
            max_batch: engine.max_batch,
            max_queue_delay: self
                .batching
                .max_queue_delay
                .unwrap_or(engine.placement.defaults().max_queue_delay),
        }
    }

    /// Stream limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_chunk_frames: self.streams.max_chunk_frames,
            max_id_bytes: self.streams.max_id_bytes,
            stream_buffer: self.streams.stream_buffer,
            transport_buffer: STREAM_WINDOW,
            max_stream_memory: self.streams.max_stream_memory,
            default_zones: self.conditions.zones(),
        }
    }

    /// The queue, batching and stream limits of each model version.
    pub fn pipeline_settings(&self, resolved: Resolved) -> PipelineSettings {
        PipelineSettings {
            schedule: ScheduleConfig {
                capacity: self.batching.queue_capacity,
                reserve: 1,
                max_wait: self.batching.max_queue_wait,
            },
            max_queue_delay: resolved.max_queue_delay,
            latency_budget: self.batching.latency_budget,
            limits: self.limits(),
        }
    }

    /// Stream slots and request memory, shared by every model served.
    pub fn admission(&self) -> Admission {
        Admission {
            max_streams: self.streams.max_streams,
            max_streams_per_connection: self.streams.max_streams_per_connection,
            max_unary_windows: self.streams.max_unary_windows,
            max_request_memory: self.streams.max_request_memory,
        }
    }

    /// The API's settings: the tokens, reflection, timeouts and the replica's readiness.
    pub fn api_settings(
        &self,
        tokens: Tokens,
        ready: Ready,
        control: Option<Arc<dyn ModelControl>>,
    ) -> ApiSettings {
        ApiSettings {
            tokens,
            reflection: self.network.reflection,
            request_read_timeout: self.network.request_read_timeout,
            stream_timeouts: StreamTimeouts {
                open: self.streams.open_timeout,
                idle: self.streams.idle_timeout,
                max_age: self.streams.stream_max_age,
            },
            ready,
            control,
        }
    }

    /// The configured bearer tokens (file and flag together); empty when authentication is off.
    pub fn tokens(&self) -> Result<Tokens, StartupError> {
        let mut text = String::new();
        if let Some(path) = &self.security.auth_tokens_file {
            text = std::fs::read_to_string(path).map_err(|e| {
                StartupError::Auth(format!(
                    "cannot read --auth-tokens-file {}: {e}",
                    path.display()
                ))
            })?;
            if Tokens::parse(&text).map_err(StartupError::Auth)?.is_empty() {
                return Err(StartupError::Auth(format!(
                    "--auth-tokens-file {} holds no token",
                    path.display()
                )));
            }
        }
        let from_file = Tokens::parse(&text).map_err(StartupError::Auth)?;
        // Set but empty (",", or an empty Secret value, which clap reads as unset) must not mean "no
        // authentication": an operator who set tokens meant to require them.
        let env_set =
            std::env::var_os(TOKENS_ENV).is_some_and(|v| v.to_string_lossy().trim().is_empty());
        if self
            .security
            .auth_tokens
            .as_ref()
            .is_some_and(Tokens::is_empty)
            || (env_set && self.security.auth_tokens.is_none())
        {
            return Err(StartupError::Auth(format!(
                "--auth-tokens / {TOKENS_ENV} is set but holds no token: set at least one, or unset it to serve \
                 without authentication"
            )));
        }
        Ok(match &self.security.auth_tokens {
            Some(flag) => from_file.joined(flag),
            None => from_file,
        })
    }
}
