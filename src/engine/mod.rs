//! Adapters from the engine crate (`lathe_engine`) to the services:
//! `trainer.rs` puts it behind the jobs' `Trainer` seam and `local.rs`
//! behind the chat seam, with a catalog that resolves model names through
//! the store.
//!
//! Architecture invariant: the engine crate knows nothing of this crate;
//! everything that connects it to jobs, the store, blobs or the async
//! runtime lives here.

pub mod local;
pub mod trainer;
