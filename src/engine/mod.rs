//! Running the network on a device: ONNX Runtime sessions, devices and library lookup. Knows no stream or protocol.

pub mod onnx;
