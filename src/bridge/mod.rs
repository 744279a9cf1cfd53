//! Bridges from the protocols plants already run to drsn-serve: each a gRPC client of the replicas through the
//! gateway library (drsn-client), so that every sensor gets the same exactly-once stream a gateway does.

pub mod mqtt;
