//! The one place where a pipeline error becomes a gRPC status: the code for each kind of error, the errors metric,
//! and the log line. Also classifies the errors tonic reports while reading a client's messages.

use tonic::{Code, Status};

use crate::error::{ErrorKind, ServeError};
use crate::telemetry::logging::LogBudget;
use crate::telemetry::metrics;

pub(crate) fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidInput => Code::InvalidArgument,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Exhausted => Code::ResourceExhausted,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Disabled => Code::FailedPrecondition,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The status a client gets for `err`; counted by reason and code, logged (server faults as errors).
pub(crate) fn status(err: ServeError) -> Status {
    let code = code(err.kind());
    metrics::record_error(err.reason(), code_name(code));
    static FAILED: LogBudget = LogBudget::new("request_failed");
    if code == Code::Internal {
        if FAILED.admit() {
            tracing::error!(error = %err, "request failed");
        }
    } else {
        tracing::debug!(error = %err, "request refused");
    }
    Status::new(code, err.to_string())
}

/// Every (reason, code) pair this API can answer with, for the zero series.
pub(crate) fn error_series() -> Vec<(&'static str, &'static str)> {
    let mut pairs: Vec<_> = ServeError::examples()
        .iter()
        .map(|e| (e.reason(), code_name(code(e.kind()))))
        .collect();
    pairs.push((crate::api::auth::REASON, code_name(Code::Unauthenticated)));
    pairs.push(("tensor", code_name(Code::InvalidArgument)));
    pairs.push(("model_control", code_name(Code::InvalidArgument)));
    pairs.push(("model_control_off", code_name(Code::FailedPrecondition)));
    pairs
}

/// Classifies an error tonic reported while reading a client's messages.
pub(crate) fn from_transport(status: &Status) -> ServeError {
    let text = status.message().to_owned();
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted => ServeError::MessageTooLarge(text),
        Code::Internal if text.contains("decode") => ServeError::Malformed(text),
        _ => ServeError::ClientGone(text),
    }
}

pub(crate) fn code_name(code: Code) -> &'static str {
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
