//! drsn.v1 over gRPC: generated types, handlers, request decoding, result encoding, and the mapping of errors
//! to status codes; also the per-method message limits and wire checks both gRPC services sit behind.

pub(crate) mod condition;
pub mod decode;
pub(crate) mod encode;
pub(crate) mod frames;
pub mod proto;
pub mod service;
pub(crate) mod status;
pub(crate) mod transport_errors;
pub(crate) mod wire;
