//! What is served: the model card, its checks and the ONNX bytes it names. Pure data: no runtime, no protocol.

pub mod card;
