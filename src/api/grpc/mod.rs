//! drsn.v1 over gRPC: generated types, handlers, request decoding, result encoding, and the mapping of errors
//! to status codes; also the per-method message limits and wire checks both gRPC services sit behind.

pub mod condition;
pub mod decode;
pub mod encode;
pub mod frames;
pub mod proto;
pub mod service;
pub mod status;
pub mod transport_errors;
pub mod wire;
