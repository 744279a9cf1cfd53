//! The only place that knows wire protocols and status codes: drsn.v1 over gRPC, bearer-token authentication, and
//! what a request knows of its connection.

pub mod auth;
pub mod connection;
pub mod grpc;
