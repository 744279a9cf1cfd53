//! drsn-serve: real-time machine-fault diagnosis from streamed vibration.
//!
//! The data path, one folder per stage, imports pointing one way (`client -> server -> api -> pipeline -> engine
//! -> model`): [`model`] (the card) → [`engine`] (ONNX Runtime) → [`pipeline`] (windows, resampling, batching,
//! in-order delivery) → [`api`] (drsn.v1 over gRPC) → [`server`] (settings, start-up, drain). [`telemetry`] names
//! every metric, [`error`] the errors. [`client`] is the other end: replay, recording readers, the benchmark.

pub mod api;
pub mod client;
pub mod engine;
pub mod error;
pub mod model;
pub mod pipeline;
pub mod server;
pub mod telemetry;
