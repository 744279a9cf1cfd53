//! Types and service stubs generated from `proto/kserve/v2/grpc_predict_v2.proto` (package `inference`).
#![allow(clippy::all, missing_docs, unused_qualifications)]

tonic::include_proto!("inference");
