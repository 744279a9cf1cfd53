//! The only place that knows wire protocols and status codes.

pub mod grpc;
