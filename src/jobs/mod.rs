//! Fine-tuning jobs: the state machine, the scheduler that runs them on a
//! `Trainer`, and their event streams.
//!
//! Architecture invariant: every state change goes through
//! `state::allowed_from` and the store's compare-and-set, together with
//! its event; nothing else writes a job's state.

// Plain data and orchestration: nothing here needs unsafe, so nothing may use it.
#![forbid(unsafe_code)]

pub mod evaluator;
pub mod events;
pub mod manager;
pub mod model;
pub mod ray;
pub mod scheduler;
pub mod spec;
pub mod state;
pub mod trainer;
pub mod webhook;
