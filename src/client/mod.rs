//! The client side, which the server never imports: the replay client, recording readers and the benchmark.

pub mod bench;
pub mod recording;
pub mod replay;
