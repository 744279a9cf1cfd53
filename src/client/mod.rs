//! The client side, which the server never imports: the command line's connection settings, the replay command,
//! recording readers, and the study of the condition stage's settings (the streaming itself is drsn-client's). It talks to a server only
//! over the wire.

pub mod condition_study;
pub mod connect;
pub mod recording;
pub mod replay;
