//! The broker's gRPC contract, package `broker.v1`, generated from `proto/broker/v1/*.proto`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Package `broker.v1`.
pub mod v1 {
    tonic::include_proto!("broker.v1");
}

/// The encoded `FileDescriptorSet` of `broker.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("broker_descriptor");
