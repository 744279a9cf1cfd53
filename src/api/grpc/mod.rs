//! drsn.v1 over gRPC: generated types, handlers, request decoding.

pub mod decode;
pub mod proto;
pub mod service;
