//! Lathe: a self-hosted fine-tuning platform served over gRPC.
//! See ARCHITECTURE.md for the map.

pub mod api;
pub mod app;
pub mod auth;
pub mod blobs;
pub mod cli;
pub mod client;
pub mod completions;
pub mod config;
pub mod datasets;
pub mod engine;
pub mod error;
pub mod evals;
pub mod gate;
pub mod graders;
pub mod health;
pub mod ids;
pub mod inference;
pub mod jobs;
pub mod lease;
pub mod limits;
pub mod models;
pub mod optimize;
pub mod outage;
pub mod paging;
pub mod proto;
pub mod ray;
pub mod rest;
pub mod secrets;
pub mod server;
pub mod store;
pub mod synth;
pub mod telemetry;
pub mod tls;

/// mimalloc for every binary that links Lathe. Training allocates and frees
/// activation buffers of many sizes each step; under glibc's malloc the
/// process kept freed buffers and grew over a run (the Banking77 run's
/// resident peak climbed a third above its per-step peak).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// See [`lathe_engine::tune_allocator`]: mimalloc keeps freed memory for a
/// second before giving it back, so training steps and upload blocks reuse
/// pages instead of taking fresh zero-filled ones from the kernel.
pub use lathe_engine::tune_allocator;
