//! Lathe: a self-hosted fine-tuning platform served over gRPC.
//! See ARCHITECTURE.md for the map.

pub mod api;
pub mod blobs;
pub mod cli;
pub mod config;
pub mod datasets;
pub mod engine;
pub mod error;
pub mod evals;
pub mod graders;
pub mod ids;
pub mod inference;
pub mod jobs;
pub mod models;
pub mod paging;
pub mod server;
pub mod store;

pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("lathe.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lathe_descriptor");
}
