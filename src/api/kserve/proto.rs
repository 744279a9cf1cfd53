//! Types and service stubs generated from `proto/kserve/v2/grpc_predict_v2.proto` (package `inference`).
#![allow(clippy::all, missing_docs, unused_qualifications)]

tonic::include_proto!("inference");

/// The encoded descriptors, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kserve_descriptor");
