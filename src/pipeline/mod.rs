//! Samples in, ordered diagnoses out: windowing, resampling, batching and in-order delivery.

pub mod batch;
pub mod resample;
pub mod respond;
pub mod window;
