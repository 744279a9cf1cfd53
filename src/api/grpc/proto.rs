//! Types and service stubs generated from `proto/drsn/v1/diagnosis.proto`.
#![allow(clippy::all, missing_docs, unused_qualifications)]

tonic::include_proto!("drsn.v1");

/// The encoded descriptors, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("drsn_descriptor");
