//! Metric names and the `/metrics` endpoint.

pub mod metrics;
