//! drsn-serve: real-time machine-fault diagnosis from streamed vibration.
//!
//! The data path, one folder per stage, imports pointing one way (`bench, bridge -> client -> server -> api -> condition ->
//! pipeline -> engine -> model`): [`model`] (the card) → [`engine`] (ONNX Runtime) → [`pipeline`] (windows, resampling,
//! batching, in-order delivery, vibration severity) → [`condition`] (each sensor's debounced condition, the
//! machines of this replica) → [`api`] (drsn.v1 over gRPC, KServe V2) → [`server`] (settings, start-up, drain). [`telemetry`] names
//! every metric, [`error`] the errors. [`client`] is the other end: replay, recording readers, the samples' wire
//! encoding. [`bridge`] carries MQTT sensors to the replicas over gRPC. [`bench`] runs a server in-process and drives it over the wire with the client.

pub mod api;
pub mod bench;
pub mod bridge;
pub mod client;
pub mod condition;
pub mod engine;
pub mod error;
pub mod model;
pub mod pipeline;
pub mod server;
pub mod telemetry;
