//! The only place that knows wire protocols and status codes: drsn.v1 over gRPC, the Open Inference Protocol
//! (KServe V2, gRPC and REST), the machines as JSON, bearer-token authentication, what a request knows of its
//! connection, and the services built from these ([`services`]).

pub mod auth;
pub mod connection;
pub mod grpc;
pub mod kserve;
pub mod machines;
pub mod services;
