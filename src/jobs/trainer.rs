//! The seam between orchestration and training.
//!
//! Architecture invariant: a `Trainer` knows how to train, nothing about
//! leases, states, the store or the wire. It reports through `TrainContext`
//! and stops, between steps, when `TrainContext::stop_requested` says so.
//! Everything it must persist goes through `TrainContext::checkpoint`, so
//! a job interrupted anywhere resumes from its last checkpoint.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::model::{CheckpointRecord, JobRecord, Level, Metrics};
use crate::error::FieldViolation;

/// Why the orchestrator asked training to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    Paused,
    /// The server is shutting down; the job will resume elsewhere.
    Shutdown,
    /// Another worker owns the job now.
    LeaseLost,
    /// Early stopping: no improvement for `patience` evaluations.
    EarlyStopped(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TrainError {
    /// Stable code a user can act on, e.g. "dataset_token_limit_exceeded",
    /// "out_of_memory", "model_not_found".
    pub code: String,
    pub message: String,
}

impl TrainError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// How a training run ended without error.
#[derive(Debug, PartialEq)]
pub enum TrainOutcome {
    /// Trained to the last step; the last checkpoint holds the result.
    Completed { trained_tokens: u64 },
    /// Stopped at a step boundary because `stop_requested` said so.
    Stopped { trained_tokens: u64 },
}

/// The side of the orchestrator a trainer talks to.
#[async_trait]
pub trait Reporter: Send + Sync {
    async fn metrics(&self, metrics: Metrics);
    async fn log(&self, level: Level, message: String);
    /// Stores the files and records a checkpoint at `step`; returns false
    /// when the job is no longer this worker's (stop then).
    async fn checkpoint(&self, step: u64, metrics: Metrics, files: Vec<(String, Bytes)>) -> Result<bool, TrainError>;
    async fn read_checkpoint_file(&self, checkpoint: &CheckpointRecord, name: &str) -> Result<Bytes, TrainError>;
    async fn read_dataset(&self, dataset_id: &str) -> Result<Bytes, TrainError>;
}

pub struct TrainContext {
    pub job: JobRecord,
    /// The checkpoint to continue from, when the job ran before.
    pub resume_from: Option<CheckpointRecord>,
    pub reporter: Arc<dyn Reporter>,
    stop: CancellationToken,
    reason: Arc<std::sync::Mutex<Option<StopReason>>>,
}

impl TrainContext {
    pub fn new(
        job: JobRecord,
        resume_from: Option<CheckpointRecord>,
        reporter: Arc<dyn Reporter>,
        stop: StopHandle,
    ) -> Self {
        Self {
            job,
            resume_from,
            reporter,
            stop: stop.token,
            reason: stop.reason,
        }
    }

    /// Whether to stop at this step boundary.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves when a stop is requested; for trainers that wait on I/O.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}

/// Requests a stop; the first reason given wins.
#[derive(Clone, Default)]
pub struct StopHandle {
    token: CancellationToken,
    reason: Arc<std::sync::Mutex<Option<StopReason>>>,
}

impl StopHandle {
    pub fn stop(&self, reason: StopReason) {
        if let Ok(mut r) = self.reason.lock()
            && r.is_none()
        {
            *r = Some(reason);
        }
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    /// Resolves when a stop is requested.
    pub async fn stopped(&self) {
        self.token.cancelled().await
    }
}

#[async_trait]
pub trait Trainer: Send + Sync + 'static {
    /// Checks a job's spec before it is accepted (known base model,
    /// supported method and settings); problems become INVALID_ARGUMENT.
    fn check(&self, job: &super::model::JobSpec) -> Result<(), Vec<FieldViolation>>;

    /// Whether the trainer looks base models up in the model registry, so
    /// CreateJob must find `base_model` registered there.
    fn resolves_models(&self) -> bool {
        false
    }

    /// Runs (or resumes) training to the end or to a requested stop.
    async fn train(&self, ctx: TrainContext) -> Result<TrainOutcome, TrainError>;
}
