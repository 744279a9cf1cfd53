//! Running the network on a device: the [`Runner`] a worker thread drives, its typed errors, devices, the
//! ONNX Runtime sessions, and opening them ([`open`]). Knows no stream or protocol.

pub mod device;
pub(crate) mod golden;
pub mod onnx;
pub(crate) mod open;

/// Raw model outputs for a batch, row-major.
#[derive(Debug, Default, Clone)]
pub struct BatchOutput {
    pub classes: usize,
    /// `rows x classes` logits.
    pub logits: Vec<f32>,
    /// `rows x units` mean shrinkage alpha per unit, when the model has that output.
    pub shrinkage: Option<(usize, Vec<f32>)>,
    /// One out-of-distribution score per row (higher = further from the training data), when the model has that
    /// output.
    pub ood: Option<Vec<f32>>,
}

/// Why a batch failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    /// This batch could not be run (a shape the model does not take, an output of the wrong shape); the next
    /// one may run.
    #[error("{0}")]
    Batch(String),
    /// The device or runtime failed; this worker cannot go on.
    #[error("the inference device failed: {0}")]
    Device(String),
}

/// What runs a batch: an ONNX Runtime session in the server, a fake in tests. `run` takes `&mut self`, so each
/// inference thread owns one.
pub trait Runner: Send + 'static {
    fn run(&mut self, windows: &[&[f32]]) -> Result<BatchOutput, InferError>;
}
