//! drsn-client: a gateway's client for drsn-serve.
//!
//! A sensor stream that keeps going for months: through drains, rolling updates, connection-age rotation and
//! replicas killed outright, each window's result arrives once, in order, as from one uninterrupted stream.
//!
//! ```no_run
//! use drsn_client::{Event, Sensor, Targets, sensor};
//!
//! # async fn gateway(
//! #     read_samples: impl Fn() -> Option<Vec<f32>> + Send + 'static,
//! # ) -> Result<(), drsn_client::Error> {
//! let targets = Targets::plain(["http://drsn-0:50051", "http://drsn-1:50051"])?;
//! let (samples, mut results) =
//!     sensor::open(targets, Sensor::new("pump-7", "de-accel", 48_000.0), Default::default())?;
//! tokio::spawn(async move {
//!     while let Some(block) = read_samples() {
//!         // Waits while the samples not yet answered for fill the buffer.
//!         if samples.send(&block).await.is_err() {
//!             break;
//!         }
//!     }
//! });
//! while let Some(event) = results.next().await {
//!     match event? {
//!         Event::Window { index, result } => println!("window {index}: {}", result.label),
//!         Event::Condition(c) => println!("condition: {}", c.summary),
//!         Event::Gap(_) => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Modules: [`connect`] (addresses, TLS, tokens, shared connections), [`sensor`] (the live stream), [`replay`]
//! (samples held in memory: `drsn-serve replay` and its benchmark), [`resume`] (where a stream goes on and when),
//! [`samples`] (the wire encodings), [`proto`] (the wire contract, from the repository's `proto/`).

pub mod connect;
pub mod proto;
pub mod replay;
pub mod resume;
pub mod samples;
pub mod sensor;

pub use connect::{Target, Targets};
pub use sensor::{Event, Options, Sensor};

use tonic::Code;

/// Why a stream could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{0}")]
    Config(String),
    /// The server ended the stream for a reason resending cannot fix (a bad token, bad input, a model that does
    /// not take this sensor): its code and message.
    #[error("the stream ended with {code:?}: {message}")]
    Stream { code: Code, message: String },
    #[error(
        "gave up after {attempts} calls in a row that delivered nothing; the last ended with {last}"
    )]
    GaveUp { attempts: u32, last: String },
    #[error("the stream has ended; its results say why")]
    Ended,
}
