//! The seam between jobs and evals: a job with a `checkpoint_eval` asks an
//! evaluator, at each checkpoint, how its checkpoint's model scores.
//!
//! Architecture invariant: jobs know nothing of eval runs beyond this
//! trait; the evals module implements it, so jobs never depend on evals.

use async_trait::async_trait;

use super::model::{JobRecord, JobSpec};
use super::trainer::StopHandle;
use crate::auth::model::Caller;
use crate::error::FieldViolation;

/// What one checkpoint eval measured.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointScore {
    pub run_id: String,
    /// In [0, 1]: the criterion's pass rate, or the share of items that
    /// passed every criterion.
    pub pass_rate: f64,
    /// Items graded (passed + failed) and items that errored.
    pub graded: u64,
    pub errored: u64,
}

#[async_trait]
pub trait CheckpointEvaluator: Send + Sync + 'static {
    /// Checks a job's `checkpoint_eval` at CreateJob (the eval exists, the
    /// criterion is one of its criteria, the templates parse).
    async fn check(&self, caller: &Caller, spec: &JobSpec) -> Vec<FieldViolation>;

    /// Runs the eval on `model` (the checkpoint at `step`) and waits for its
    /// result. Idempotent per (job, step): after a restart it waits for the
    /// run it started before instead of starting another. Returns early,
    /// with an error, when `stop` fires.
    async fn evaluate(
        &self,
        job: &JobRecord,
        step: u64,
        model: &str,
        stop: &StopHandle,
    ) -> Result<CheckpointScore, String>;
}
