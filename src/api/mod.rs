//! The only place that knows wire protocols and status codes: drsn.v1 over gRPC, the Open Inference Protocol
//! (KServe V2, gRPC and REST), the machines as JSON, bearer-token authentication, what a request knows of its
//! connection, and the services built from these ([`services`]).

pub(crate) mod auth;
pub(crate) mod connection;
pub mod grpc;
pub mod kserve;
pub(crate) mod machines;
pub(crate) mod services;
