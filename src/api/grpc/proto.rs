//! drsn.v1: the messages and the client stub are the client crate's (`drsn_client::proto`, from the same
//! `proto/drsn/v1/diagnosis.proto`); the server stub generated here is over those types.
#![allow(clippy::all, missing_docs, unused_qualifications)]

pub use drsn_client::proto::*;

tonic::include_proto!("drsn.v1");

/// The encoded descriptors, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("drsn_descriptor");
