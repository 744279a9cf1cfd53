//! Telemetry: every metric name and the recorder, and logging set-up. No protocol, no transport.

pub mod logging;
pub(crate) mod metrics;
