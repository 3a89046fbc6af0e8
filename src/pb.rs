//! Generated protobuf types and gRPC stubs, and the descriptor set that
//! reflection, field masks, filters and proto3 JSON are driven by.

#![allow(clippy::all, missing_docs)]

pub mod copex {
    pub mod v1 {
        tonic::include_proto!("copex.v1");
        include!(concat!(env!("OUT_DIR"), "/copex.v1.serde.rs"));
    }
}

pub use copex::v1::*;

/// Encoded `FileDescriptorSet` of every file under `proto/`, with imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/copex_descriptor.bin"));
