//! Lathe's integration tests, in one binary: each module is one area (a
//! dozen binaries would each link the whole crate). `cargo test --test it
//! jobs::` runs one area.

mod blobs;
mod common;
mod datasets;
mod durability;
mod engine_dpo;
mod engine_grpo;
mod engine_jobs;
mod engine_smollm2;
mod engine_tokenizer;
mod engine_train;
mod evals;
mod faults;
mod graders;
mod graders_engine;
mod graders_python_sandbox;
mod graders_similarity_reference;
mod jobs;
mod metrics;
mod models;
mod models_stored;
mod optimize;
mod providers;
mod providers_llama_cpp;
mod quotas;
mod ray;
mod replicas;
mod rest;
mod rest_chat;
mod rest_evals;
mod rest_files;
mod rest_graders;
mod rest_jobs;
mod s3;
mod scale_out;
mod server;
mod stored_completions;
mod synth;
mod tenancy;
mod tls;
mod tokenizer;
