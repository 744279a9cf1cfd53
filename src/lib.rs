//! drsn-serve: real-time machine-fault diagnosis from streamed vibration.
//!
//! The data path, one module per stage:
//! [`ingest`] (validate `open`, decode chunks) → [`window`] (continuity, [`resample`], sliding windows) →
//! [`batch`] (one bounded queue, dynamic batches, inference threads) → [`infer`] (ONNX Runtime) →
//! [`respond`] (results in window order). [`service`] wires them into the gRPC API, [`server`] starts and drains
//! the process, [`metrics`] names every metric, [`error`] maps errors to gRPC codes. [`replay`] and [`bench`] are
//! the client side: a recording player and load generator, and the throughput benchmark.

pub mod batch;
pub mod bench;
pub mod card;
pub mod config;
pub mod error;
pub mod infer;
pub mod ingest;
pub mod metrics;
pub mod proto;
pub mod recording;
pub mod replay;
pub mod resample;
pub mod respond;
pub mod server;
pub mod service;
pub mod window;
