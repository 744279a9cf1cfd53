//! The drsn.v1 wire contract, generated from the repository's `proto/drsn/v1/diagnosis.proto` (messages and the
//! client stub; the server's stub is generated over these same types), and the trailer names a stream's ending
//! status carries.
#![allow(clippy::all, missing_docs, unused_qualifications, unreachable_pub)]

tonic::include_proto!("drsn.v1");

/// The trailer a stream's ending status carries the sensor's condition state in: send it back as
/// `StreamOpen.resume_condition` on the next stream.
pub const CONDITION_TRAILER: &str = "drsn-condition-bin";

/// The trailer that says where an ended stream goes on: the first sample index to send on a new stream, or `start`
/// (none of the stream was received).
pub const RESUME_TRAILER: &str = "drsn-resume-from";
