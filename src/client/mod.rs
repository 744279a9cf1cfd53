//! The client side, which the server never imports: connecting (TLS, tokens), the replay client, recording
//! readers and the benchmark.

pub mod bench;
pub mod connect;
pub mod recording;
pub mod replay;
