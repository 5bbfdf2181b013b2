//! Evals: testing criteria (graders with pass thresholds) over a dataset's
//! items; runs that sample a model (or take precomputed samples), grade each
//! item, and record it; progress streams; comparisons of runs.
//!
//! Architecture invariant: a run's state and its output items change only
//! through the store's compare-and-set calls; only the holder of a run's
//! lease records items, each with the next gapless sequence number and the
//! run's tallies, so a resumed run skips what is recorded and a watcher
//! rebuilds progress from the store alone. This module knows neither tonic
//! nor HTTP: models come in as `ChatModel`, graders through the grader service.

// Plain data and orchestration: nothing here needs unsafe, so nothing may use it.
#![forbid(unsafe_code)]

pub mod checkpoints;
pub mod manager;
pub mod model;
pub mod runner;
pub mod schema;
pub mod stats;
pub(crate) mod work;
