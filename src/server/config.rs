//! `drsn-serve serve` settings: every flag also reads from a `DRSN_...` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::onnx::{Device, Placement};

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
    /// gRPC listen address.
    #[arg(long, env = "DRSN_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "DRSN_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
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
    /// Largest batch, in windows. Default: 32 on cpu, 1024 on cuda.
    #[arg(long, env = "DRSN_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Longest a window waits for its batch to fill, e.g. `5ms`. Default: 5ms on cpu, 2ms on cuda.
    #[arg(long, env = "DRSN_MAX_QUEUE_DELAY", value_parser = humantime::parse_duration)]
    pub max_queue_delay: Option<Duration>,
    /// Windows the batch queue holds, from all streams; when full, readers pause and unary calls are refused.
    #[arg(long, env = "DRSN_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Windows one stream may have in flight before its reader pauses.
    #[arg(long, env = "DRSN_STREAM_BUFFER", default_value_t = 64)]
    pub stream_buffer: usize,
    /// Largest chunk, in frames.
    #[arg(long, env = "DRSN_MAX_CHUNK_FRAMES", default_value_t = 1 << 18)]
    pub max_chunk_frames: usize,
    /// Most windows in one Diagnose call.
    #[arg(long, env = "DRSN_MAX_UNARY_WINDOWS", default_value_t = 256)]
    pub max_unary_windows: usize,
    /// Open streams allowed at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "DRSN_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,
    /// How long a new stream may take to send its `open` message.
    #[arg(long, env = "DRSN_OPEN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub open_timeout: Duration,
    /// On SIGTERM/SIGINT: how long open streams get to receive their queued windows before they are ended.
    #[arg(long, env = "DRSN_DRAIN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub drain_timeout: Duration,
    /// Log format: text or json. Levels come from RUST_LOG (default info).
    #[arg(long, env = "DRSN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Settings that depend on where inference runs, resolved once the device is known.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    pub workers: usize,
    pub max_batch: usize,
    pub max_queue_delay: Duration,
}

impl ServeConfig {
    pub fn resolve(&self, placement: Placement) -> Resolved {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let on_gpu = matches!(placement, Placement::Cuda(_));
        Resolved {
            workers: self
                .workers
                .unwrap_or(if on_gpu { 2 } else { cores })
                .max(1),
            max_batch: self
                .max_batch
                .unwrap_or(if on_gpu { 1024 } else { 32 })
                .max(1),
            max_queue_delay: self
                .max_queue_delay
                .unwrap_or(Duration::from_millis(if on_gpu { 2 } else { 5 })),
        }
    }
}
