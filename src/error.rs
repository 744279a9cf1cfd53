//! The service's errors, protocol-neutral: why a request failed ([`ServeError`], with a bounded reason label and an
//! [`ErrorKind`] that each API adapter maps to its own status codes) and why the server could not start.

use std::path::PathBuf;
use std::time::Duration;

/// What kind of failure an error is; `api/` maps each to a gRPC code (and an HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong: fix it and send it again.
    InvalidInput,
    /// The client did not authenticate.
    Unauthenticated,
    /// A limit of the server is reached: retry later, with backoff, or elsewhere.
    Exhausted,
    /// The client took too long.
    Timeout,
    /// The client went away.
    Cancelled,
    /// The server is going away or lost its workers: resume on another replica.
    Unavailable,
    /// The request names something this server does not have (a model, a model version).
    NotFound,
    /// The server is set not to do this (a start-up option turns it on).
    Disabled,
    /// The server failed: not the client's fault.
    Internal,
}

/// Where a client should pick a stream up again on a new stream: from a sample, or from the start of what it
/// meant to send when the server had received none of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume(pub Option<u64>);

impl std::fmt::Display for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "resume from sample {n}"),
            None => f.write_str("send the stream again from its start (none of it was received)"),
        }
    }
}

impl ErrorKind {
    /// A bounded label (`how` of `drsn_streams_ended_total`).
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::Unauthenticated => "unauthenticated",
            Self::Exhausted => "exhausted",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Unavailable => "unavailable",
            Self::NotFound => "not_found",
            Self::Disabled => "disabled",
            Self::Internal => "internal",
        }
    }

    pub const ALL: [ErrorKind; 9] = [
        Self::InvalidInput,
        Self::Unauthenticated,
        Self::Exhausted,
        Self::Timeout,
        Self::Cancelled,
        Self::Unavailable,
        Self::NotFound,
        Self::Disabled,
        Self::Internal,
    ];
}

/// Why a request (a stream, a unary call) failed. Every message says what was wrong and what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "the first message of a stream must be `open` (machine, sensor, sample rate, channels); got a chunk"
    )]
    NotOpened,
    #[error("the stream ended before its `open` message")]
    EndedBeforeOpen,
    #[error("`open` was sent twice; a stream is opened once, by its first message")]
    OpenedTwice,
    #[error("a message with neither `open` nor `chunk` set")]
    EmptyMessage,
    #[error("channels = {got}, but the model takes {want} channel(s) per frame")]
    Channels { got: u32, want: usize },
    #[error("sample_rate_hz = {}: it must be a finite number above 0", Hz(*.0))]
    SampleRate(f64),
    #[error("sample_rate_hz = {}: {reason}", Hz(*rate))]
    UnservableRate { rate: f64, reason: String },
    #[error("hop = {hop}: it must be between 1 and {max} samples")]
    Hop { hop: u32, max: usize },
    #[error("{field} is {len} bytes long; at most {max} are accepted")]
    IdTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "{field} holds a control character (newline, escape, ...) at byte {at}; use printable text"
    )]
    IdCharacters { field: &'static str, at: usize },
    #[error("{field} = {value} is not a known value; see proto/drsn/v1/diagnosis.proto")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error(
        "resume_condition cannot be used: {0}; send it back exactly as the server gave it (the last `condition` \
         event's carry or the ending status's drsn-condition-bin), or leave it out to start the condition afresh"
    )]
    ConditionCarry(String),
    #[error("{what} carries no samples: set `f32le`, `values`, `i16le` or `i32le`")]
    NoSamples { what: String },
    #[error(
        "{encoding} carries {len} bytes, not a whole number of {frame_bytes}-byte frames (bytes per sample x channels)"
    )]
    Misaligned {
        encoding: &'static str,
        len: usize,
        frame_bytes: usize,
    },
    #[error("{encoding}: {problem}")]
    IntegerSamples {
        encoding: &'static str,
        problem: String,
    },
    #[error("{count} values is not a whole number of frames of {channels} channel(s)")]
    PartialFrame { count: usize, channels: usize },
    #[error("a chunk of {frames} frames is over the limit of {max}; send smaller chunks")]
    ChunkTooLarge { frames: usize, max: usize },
    /// `asked`: the model (and version) the request named, quoted client text; `served`: what is served here.
    #[error("model {asked} is not served here; served: {served}")]
    ModelNotFound { asked: String, served: String },
    #[error("{place} is {value}; samples must be finite")]
    NonFinite { place: String, value: f32 },
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
    #[error(
        "the diagnosis queue has no room for {want} window(s) ({capacity} windows at most); retry with backoff"
    )]
    QueueFull { want: usize, capacity: usize },
    #[error("the server is shutting down; reconnect to another replica and {resume}")]
    ShuttingDown { resume: Resume },
    #[error(
        "the server is shutting down and its drain timeout passed before every window was diagnosed; \
         reconnect to another replica and resume from sample {resume_from}"
    )]
    DrainTimeout { resume_from: u64 },
    #[error(
        "this connection has been open longer than the server's --max-connection-age; reconnect (the next connection \
         may reach another replica) and {resume}"
    )]
    ConnectionAged { resume: Resume },
    #[error(
        "model {model} version {version} was unloaded from this server; open the stream again (naming no version: the \
         newest served) and {resume}"
    )]
    ModelUnloaded {
        model: String,
        version: String,
        resume: Resume,
    },
    #[error(
        "this stream has been open longer than the server's --stream-max-age; open it again (it gets the model \
         version new streams get) and {resume}"
    )]
    StreamAged { resume: Resume },
    #[error("no `open` message within {after:?} of the stream starting")]
    OpenTimeout { after: Duration },
    #[error(
        "no window completed in {after:?} (no samples, or too few to fill a window): the stream was closed to free \
         its slot; open a new stream when samples flow again and {resume}"
    )]
    IdleTimeout { after: Duration, resume: Resume },
    #[error("the server already has {max} open streams; retry later or on another replica")]
    TooManyStreams { max: usize },
    #[error(
        "this connection already has {max} open streams; open more connections or fewer streams"
    )]
    TooManyStreamsOnConnection { max: usize },
    #[error(
        "this stream would hold about {need} KiB ({what}); the server allows {max} KiB per stream \
         (--max-stream-memory), so it can never be opened here as asked: send at the model's rate or a rate with a \
         larger common divisor with it (a smaller resampler), or ask the operator to raise the limit"
    )]
    StreamMemory {
        need: usize,
        max: usize,
        what: String,
    },
    #[error("a message over the size limit: {0}; send smaller chunks")]
    MessageTooLarge(String),
    #[error("a message that is not valid protobuf for this call: {0}")]
    Malformed(String),
    #[error("the client went away: {0}")]
    ClientGone(String),
    #[error("resampling failed: {reason}; resume from sample {resume_from}")]
    Resample { reason: String, resume_from: u64 },
    #[error("inference failed: {reason}; resume from sample {resume_from}")]
    Inference { reason: String, resume_from: u64 },
    #[error(
        "the server failed while reading this stream (a bug: please report it); resume from sample {resume_from}"
    )]
    ReaderFailed { resume_from: u64 },
    #[error("the inference workers have stopped")]
    WorkersGone,
    #[error(
        "a request of {bytes} bytes is over the {max} bytes this server takes in one request; split it"
    )]
    RequestTooLarge { bytes: usize, max: usize },
    #[error(
        "requests in flight already hold this server's request memory ({capacity} bytes); retry this {bytes}-byte \
         request with backoff, or send smaller ones"
    )]
    RequestMemory { bytes: usize, capacity: usize },
    #[error(
        "the request did not arrive in full within {after:?} of its first byte (--request-read-timeout); send it \
         without pauses"
    )]
    RequestReadTimeout { after: Duration },
}

impl ServeError {
    /// Where the stream this error ended goes on: `Some(Some(n))` from sample n, `Some(None)` from its start (none
    /// of it was received); `None` when it should not be resumed as it was (bad input, limits).
    pub fn resume(&self) -> Option<Option<u64>> {
        match self {
            Self::ShuttingDown { resume }
            | Self::ConnectionAged { resume }
            | Self::StreamAged { resume }
            | Self::ModelUnloaded { resume, .. }
            | Self::IdleTimeout { resume, .. } => Some(resume.0),
            Self::DrainTimeout { resume_from }
            | Self::Resample { resume_from, .. }
            | Self::Inference { resume_from, .. }
            | Self::ReaderFailed { resume_from } => Some(Some(*resume_from)),
            _ => None,
        }
    }

    /// A short, bounded label for the errors metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotOpened => "not_opened",
            Self::EndedBeforeOpen => "ended_before_open",
            Self::OpenedTwice => "opened_twice",
            Self::ConditionCarry(_) => "condition_carry",
            Self::EmptyMessage => "empty_message",
            Self::Channels { .. } => "channels",
            Self::SampleRate(_) => "sample_rate",
            Self::UnservableRate { .. } => "unservable_rate",
            Self::Hop { .. } => "hop",
            Self::IdTooLong { .. } | Self::IdCharacters { .. } => "id",
            Self::UnknownEnum { .. } => "unknown_enum",
            Self::NoSamples { .. } => "no_samples",
            Self::Misaligned { .. } | Self::PartialFrame { .. } => "partial_frame",
            Self::IntegerSamples { .. } => "integer_samples",
            Self::ChunkTooLarge { .. } => "chunk_too_large",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::NonFinite { .. } => "non_finite",
            Self::IndexOverflow { .. } => "index_overflow",
            Self::WindowLength { .. } => "window_length",
            Self::NoWindows => "no_windows",
            Self::TooManyWindows { .. } => "too_many_windows",
            Self::QueueFull { .. } => "queue_full",
            Self::ShuttingDown { .. } => "shutting_down",
            Self::DrainTimeout { .. } => "drain_timeout",
            Self::ConnectionAged { .. } => "connection_age",
            Self::StreamAged { .. } => "stream_age",
            Self::ModelUnloaded { .. } => "model_unloaded",
            Self::OpenTimeout { .. } => "open_timeout",
            Self::IdleTimeout { .. } => "idle_timeout",
            Self::TooManyStreams { .. } => "too_many_streams",
            Self::TooManyStreamsOnConnection { .. } => "too_many_streams_on_connection",
            Self::StreamMemory { .. } => "stream_memory",
            Self::MessageTooLarge(_) => "message_too_large",
            Self::Malformed(_) => "malformed",
            Self::ClientGone(_) => "client_gone",
            Self::Resample { .. } => "resample",
            Self::Inference { .. } => "inference",
            Self::ReaderFailed { .. } => "reader_failed",
            Self::WorkersGone => "workers_gone",
            Self::RequestTooLarge { .. } => "request_too_large",
            Self::RequestMemory { .. } => "request_memory",
            Self::RequestReadTimeout { .. } => "request_read_timeout",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::QueueFull { .. }
            | Self::TooManyStreams { .. }
            | Self::TooManyStreamsOnConnection { .. }
            | Self::RequestMemory { .. } => ErrorKind::Exhausted,
            Self::OpenTimeout { .. }
            | Self::IdleTimeout { .. }
            | Self::RequestReadTimeout { .. } => ErrorKind::Timeout,
            Self::ClientGone(_) => ErrorKind::Cancelled,
            Self::ModelNotFound { .. } => ErrorKind::NotFound,
            Self::ShuttingDown { .. }
            | Self::DrainTimeout { .. }
            | Self::ConnectionAged { .. }
            | Self::StreamAged { .. }
            | Self::ModelUnloaded { .. }
            | Self::WorkersGone => ErrorKind::Unavailable,
            Self::Inference { .. } | Self::Resample { .. } | Self::ReaderFailed { .. } => {
                ErrorKind::Internal
            }
            _ => ErrorKind::InvalidInput,
        }
    }

    /// One error of every kind, so that metrics can list every (reason, code) pair at zero from start-up.
    pub fn examples() -> Vec<ServeError> {
        use ServeError::*;
        let d = Duration::ZERO;
        vec![
            NotOpened,
            EndedBeforeOpen,
            OpenedTwice,
            EmptyMessage,
            ConditionCarry(String::new()),
            Channels { got: 0, want: 0 },
            SampleRate(0.0),
            UnservableRate {
                rate: 0.0,
                reason: String::new(),
            },
            Hop { hop: 0, max: 0 },
            IdTooLong {
                field: "",
                len: 0,
                max: 0,
            },
            UnknownEnum {
                field: "",
                value: 0,
            },
            NoSamples {
                what: String::new(),
            },
            Misaligned {
                encoding: "",
                len: 0,
                frame_bytes: 0,
            },
            IntegerSamples {
                encoding: "",
                problem: String::new(),
            },
            ChunkTooLarge { frames: 0, max: 0 },
            ModelNotFound {
                asked: String::new(),
                served: String::new(),
            },
            ModelUnloaded {
                model: String::new(),
                version: String::new(),
                resume: Resume(None),
            },
            StreamAged {
                resume: Resume(None),
            },
            NonFinite {
                place: String::new(),
                value: 0.0,
            },
            IndexOverflow {
                first: 0,
                frames: 0,
            },
            WindowLength {
                index: 0,
                got: 0,
                want: 0,
            },
            NoWindows,
            TooManyWindows { got: 0, max: 0 },
            QueueFull {
                want: 0,
                capacity: 0,
            },
            ShuttingDown {
                resume: Resume(None),
            },
            DrainTimeout { resume_from: 0 },
            ConnectionAged {
                resume: Resume(None),
            },
            OpenTimeout { after: d },
            IdleTimeout {
                after: d,
                resume: Resume(None),
            },
            TooManyStreams { max: 0 },
            TooManyStreamsOnConnection { max: 0 },
            StreamMemory {
                need: 0,
                max: 0,
                what: String::new(),
            },
            MessageTooLarge(String::new()),
            Malformed(String::new()),
            ClientGone(String::new()),
            Resample {
                reason: String::new(),
                resume_from: 0,
            },
            Inference {
                reason: String::new(),
                resume_from: 0,
            },
            ReaderFailed { resume_from: 0 },
            WorkersGone,
            RequestTooLarge { bytes: 0, max: 0 },
            RequestMemory {
                bytes: 0,
                capacity: 0,
            },
            RequestReadTimeout { after: d },
        ]
    }
}

/// A rate as people write it: 12000, 25600.5; exponent notation where plain digits would run long (5e-324).
pub struct Hz(pub f64);

impl std::fmt::Display for Hz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.0;
        if r == 0.0 || !r.is_finite() || (1e-3..1e9).contains(&r.abs()) {
            write!(f, "{r}")
        } else {
            write!(f, "{r:e}")
        }
    }
}

/// Most characters of client text quoted back in an error or a log line.
pub const QUOTE_CHARS: usize = 64;

/// Client text as an error or log line may quote it: escaped (no control characters, no quotes to break out of),
/// and at most [`QUOTE_CHARS`] characters, with the full length said when it was cut. A client that sends a
/// megabyte of name gets a short answer, not its megabyte back.
pub fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars().take(QUOTE_CHARS) {
        out.extend(c.escape_debug());
    }
    out.push('"');
    if text.chars().nth(QUOTE_CHARS).is_some() {
        out.push_str(&format!("... ({} bytes)", text.len()));
    }
    out
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
    #[error("TLS: {0}")]
    Tls(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("warm-up inference failed: {0}")]
    Warmup(String),
    #[error(
        "the model does not reproduce its golden file {path}: {reason}. The ONNX file, the card or the ONNX Runtime \
         build is not the one the golden file was written with: export the version again (drsntrain writes the \
         golden file beside its ONNX file), or remove `golden` from the card to skip the check"
    )]
    Golden { path: PathBuf, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_print_short() {
        assert_eq!(Hz(12_000.0).to_string(), "12000");
        assert_eq!(Hz(25_600.5).to_string(), "25600.5");
        assert_eq!(Hz(5e-324).to_string(), "5e-324");
        assert_eq!(Hz(1e300).to_string(), "1e300");
        assert_eq!(Hz(f64::NAN).to_string(), "NaN");
        assert!(ServeError::SampleRate(5e-324).to_string().len() < 80);
    }

    #[test]
    fn quotes_are_bounded_and_escaped() {
        assert_eq!(quote("vibration"), "\"vibration\"");
        assert_eq!(quote("a\"b\nc"), "\"a\\\"b\\nc\"");
        let long = quote(&"x".repeat(1 << 20));
        assert!(long.len() < 100, "{long}");
        assert!(long.ends_with("... (1048576 bytes)"), "{long}");
    }

    #[test]
    fn the_examples_cover_every_reason_once() {
        let reasons: Vec<&str> = ServeError::examples().iter().map(|e| e.reason()).collect();
        let unique: std::collections::BTreeSet<&str> = reasons.iter().copied().collect();
        // Misaligned and PartialFrame share a reason, as do the two id errors: one example each.
        assert_eq!(unique.len(), reasons.len(), "{reasons:?}");
        assert_eq!(unique.len(), 42);
    }
}
