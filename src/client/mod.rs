//! The client side, which the server never imports: connecting (TLS, tokens), the replay client, recording
//! readers, the samples' wire encoding, and the study of the condition stage's settings. It talks to a server only
//! over the wire.

pub mod condition_study;
pub mod connect;
pub mod recording;
pub mod replay;
pub mod samples;
