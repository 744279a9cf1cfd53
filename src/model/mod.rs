//! What is served: the model card, its checks and the ONNX bytes it names, and the repository of models and
//! versions on disk. Pure data: no runtime, no protocol.

pub mod card;
pub mod repository;
