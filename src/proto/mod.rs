//! The generated API (`proto/lathe/v1/*.proto`), its descriptor set for
//! reflection, and the wire-level helpers every side of it needs: JSON in
//! protobuf's `Struct`, timestamps, and the codec (prost's, with decoding
//! failures answered INVALID_ARGUMENT).

#[allow(clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("lathe.v1");
}

pub use generated::*;

pub mod codec;
pub mod json;

pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lathe_descriptor");

/// Unix milliseconds as a protobuf timestamp.
pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}
