//! Fine-tuning jobs: the state machine, the scheduler that runs them on a
//! `Trainer`, and their event streams.

pub mod model;
