//! The service's error types, and the one place where a request error becomes a gRPC status and an error metric.

use std::path::PathBuf;

use tonic::{Code, Status};

use crate::telemetry::metrics;

/// Why a request (a stream, a unary call) failed. Every message says what was wrong and what to send instead.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "the first message of a stream must be `open` (machine, sensor, sample rate, channels); got a chunk"
    )]
    NotOpened,
    #[error("`open` was sent twice; a stream is opened once, by its first message")]
    OpenedTwice,
    #[error("a message with neither `open` nor `chunk` set")]
    EmptyMessage,
    #[error("channels = {got}, but the model takes {want} channel(s) per frame")]
    Channels { got: u32, want: usize },
    #[error("sample_rate_hz = {0}: it must be a finite number above 0")]
    SampleRate(f64),
    #[error("sample_rate_hz = {rate}: {reason}")]
    UnservableRate { rate: f64, reason: String },
    #[error("hop = {hop}: it must be between 1 and {max} samples")]
    Hop { hop: u32, max: usize },
    #[error("{field} = {value} is not a known value; see proto/drsn/v1/diagnosis.proto")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("a chunk carries no samples: set `f32le` or `values`")]
    NoSamples,
    #[error(
        "f32le carries {len} bytes, not a whole number of {frame_bytes}-byte frames (4 bytes x channels)"
    )]
    Misaligned { len: usize, frame_bytes: usize },
    #[error("{count} values is not a whole number of frames of {channels} channel(s)")]
    PartialFrame { count: usize, channels: usize },
    #[error("a chunk of {frames} frames is over the limit of {max}; send smaller chunks")]
    ChunkTooLarge { frames: usize, max: usize },
    #[error("sample {index} of the chunk starting at {first} is {value}; samples must be finite")]
    NonFinite {
        first: u64,
        index: usize,
        value: f32,
    },
    #[error("chunk at sample {first} with {frames} frames runs past the largest sample index")]
    IndexOverflow { first: u64, frames: usize },
    #[error("window {index} has {got} samples; every window must have exactly {want}")]
    WindowLength {
        index: usize,
        got: usize,
        want: usize,
    },
    #[error("a request with no windows")]
    NoWindows,
    #[error("{got} windows in one request is over the limit of {max}; split the request")]
    TooManyWindows { got: usize, max: usize },
    #[error("the diagnosis queue is full ({capacity} windows); retry with backoff")]
    QueueFull { capacity: usize },
    #[error(
        "the server is shutting down; reconnect to another replica and resume from sample {resume_from}"
    )]
    ShuttingDown { resume_from: u64 },
    #[error(
        "the server is shutting down and its drain timeout passed before window {window_index} was diagnosed"
    )]
    DrainTimeout { window_index: u64 },
    #[error("no `open` message within {after:?} of the stream starting")]
    OpenTimeout { after: std::time::Duration },
    #[error("the server already has {max} open streams; retry later or on another replica")]
    TooManyStreams { max: usize },
    #[error("a message over the size limit: {0}; send smaller chunks")]
    MessageTooLarge(String),
    #[error("a message that is not a valid StreamDiagnoseRequest: {0}")]
    Malformed(String),
    #[error("the client went away: {0}")]
    ClientGone(String),
    #[error("{0}")]
    Resample(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the inference workers have stopped")]
    WorkersGone,
}

impl ServeError {
    /// A short, bounded label for the errors metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotOpened => "not_opened",
            Self::OpenedTwice => "opened_twice",
            Self::EmptyMessage => "empty_message",
            Self::Channels { .. } => "channels",
            Self::SampleRate(_) => "sample_rate",
            Self::UnservableRate { .. } => "unservable_rate",
            Self::Hop { .. } => "hop",
            Self::UnknownEnum { .. } => "unknown_enum",
            Self::NoSamples => "no_samples",
            Self::Misaligned { .. } | Self::PartialFrame { .. } => "partial_frame",
            Self::ChunkTooLarge { .. } => "chunk_too_large",
            Self::NonFinite { .. } => "non_finite",
            Self::IndexOverflow { .. } => "index_overflow",
            Self::WindowLength { .. } => "window_length",
            Self::NoWindows => "no_windows",
            Self::TooManyWindows { .. } => "too_many_windows",
            Self::QueueFull { .. } => "queue_full",
            Self::ShuttingDown { .. } => "shutting_down",
            Self::DrainTimeout { .. } => "drain_timeout",
            Self::OpenTimeout { .. } => "open_timeout",
            Self::TooManyStreams { .. } => "too_many_streams",
            Self::MessageTooLarge(_) => "message_too_large",
            Self::Malformed(_) => "malformed",
            Self::ClientGone(_) => "client_gone",
            Self::Resample(_) => "resample",
            Self::Inference(_) => "inference",
            Self::WorkersGone => "workers_gone",
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::QueueFull { .. } | Self::TooManyStreams { .. } => Code::ResourceExhausted,
            Self::OpenTimeout { .. } => Code::DeadlineExceeded,
            Self::ClientGone(_) => Code::Cancelled,
            Self::ShuttingDown { .. } | Self::DrainTimeout { .. } | Self::WorkersGone => {
                Code::Unavailable
            }
            Self::Inference(_) | Self::Resample(_) => Code::Internal,
            _ => Code::InvalidArgument,
        }
    }

    /// Classifies an error tonic reported while reading the client's messages.
    pub fn from_transport(status: Status) -> Self {
        let text = status.message().to_owned();
        match status.code() {
            Code::OutOfRange | Code::ResourceExhausted => Self::MessageTooLarge(text),
            Code::Internal if text.contains("decode") => Self::Malformed(text),
            _ => Self::ClientGone(text),
        }
    }
}

impl From<ServeError> for Status {
    fn from(err: ServeError) -> Status {
        let code = err.code();
        metrics::record_error(err.reason(), code);
        if code == Code::Internal {
            tracing::error!(error = %err, "request failed");
        } else {
            tracing::debug!(error = %err, "request refused");
        }
        Status::new(code, err.to_string())
    }
}

/// Why the server could not start. Each message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot read the model card {path}: {source}")]
    CardRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the model card {path} is not valid: {source}")]
    CardParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the model card {path} is not usable: {reason}")]
    CardInvalid { path: PathBuf, reason: String },
    #[error("cannot read the ONNX model {path} named by the card: {source}")]
    ModelRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} has sha256 {actual}, but the card says {expected}: the model file does not match its card"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "ONNX Runtime library not found; tried:\n{tried}\nInstall it with `make ort` (or `make ort-gpu` for CUDA), \
         or point --ort-lib / ORT_DYLIB_PATH at libonnxruntime.so"
    )]
    OrtMissing { tried: String },
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    OrtLoad { path: PathBuf, reason: String },
    #[error("ONNX Runtime could not open the model: {0}")]
    Session(String),
    #[error("the model's {what} does not match its card: {reason}")]
    ModelMismatch { what: &'static str, reason: String },
    #[error(
        "the CUDA execution provider failed to register on device {device}: {reason}. Use the onnxruntime-gpu \
         library (`make ort-gpu`), put the CUDA 13 and cuDNN 9 libraries on LD_LIBRARY_PATH, or run with --device cpu"
    )]
    Cuda { device: i32, reason: String },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("warm-up inference failed: {0}")]
    Warmup(String),
}
