//! The store's traits, one per kind of record, and what they take and
//! return: rows, not rules.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::error::StoreError;
use super::leases::LeaseStore;
use super::types::CompletionQuery;
use super::types::{
    DatasetQuery, EvalQuery, GraderRecord, ItemQuery, JobQuery, PartAdded, RunQuery, Transition, UploadEnd,
};
use crate::auth::model::{ApiKeyRecord, AuditEvent, Project, Quotas};
use crate::completions::model::StoredCompletion;
use crate::datasets::model::{DatasetRecord, UploadPartRecord, UploadRecord, UploadState};
use crate::evals::model::{EvalRecord, OutputItemRecord, RunRecord, RunState};
use crate::jobs::model::{CheckpointRecord, JobEvent, JobPatch, JobRecord, JobState, Metrics, NewEvent};
use crate::models::model::{ModelKind, ModelRecord};
use crate::optimize::model::{OptimizationRecord, Search};

#[async_trait]
pub trait DatasetStore: Send + Sync + 'static {
    /// Inserts a new dataset; `Conflict` if the id exists.
    async fn insert_dataset(&self, dataset: &DatasetRecord) -> Result<(), StoreError>;
    async fn get_dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError>;
    /// Newest first (oldest first with `query.oldest_first`), strictly after
    /// `query.after`, at most `query.limit` rows.
    async fn list_datasets(&self, query: &DatasetQuery) -> Result<Vec<DatasetRecord>, StoreError>;
    /// Removes the dataset and returns it, or None when there was none.
    async fn delete_dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError>;
    /// Whether any dataset that is not FAILED (a FAILED one keeps no bytes),
    /// any checkpoint, any upload part or any stored model's file still
    /// points at this blob.
    async fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError>;
    /// Every blob address some record points at (FAILED datasets aside),
    /// for garbage collection.
    async fn blobs_in_use(&self) -> Result<Vec<String>, StoreError>;
}

/// Files sent in parts (OpenAI's Uploads API) and their parts, whose bytes
/// are blobs: a part's blob is committed before its row is inserted, and
/// ending an upload removes its part rows and hands back their blobs.
#[async_trait]
pub trait UploadStore: Send + Sync + 'static {
    /// Inserts a new upload; `Conflict` if the id exists.
    async fn insert_upload(&self, upload: &UploadRecord) -> Result<(), StoreError>;
    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError>;
    /// Adds a part if its upload is pending and its parts, this one
    /// included, add up to at most the upload's announced bytes.
    async fn insert_upload_part(&self, part: &UploadPartRecord) -> Result<PartAdded, StoreError>;
    /// An upload's parts in the order they were added.
    async fn list_upload_parts(&self, upload_id: &str) -> Result<Vec<UploadPartRecord>, StoreError>;
    /// If the upload is pending, in one transaction: inserts `dataset` as
    /// `insert_dataset` does (quota included), marks the upload completed
    /// with the dataset's id and removes its parts.
    async fn complete_upload(&self, id: &str, dataset: &DatasetRecord) -> Result<UploadEnd, StoreError>;
    /// If the upload is pending: moves it to `to` (cancelled, expired) and
    /// removes its parts.
    async fn end_upload(&self, id: &str, to: UploadState) -> Result<UploadEnd, StoreError>;
    /// Pending uploads that expire at or before `now`, at most `limit`.
    async fn expired_uploads(&self, now: i64, limit: usize) -> Result<Vec<String>, StoreError>;
}

/// Jobs, their event log, checkpoints and fine-tuned models. Every call
/// that changes a job appends its event in the same transaction, with the
/// next per-job sequence number, so the log has no gaps and no repeats.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Inserts a job and its first event. With an idempotency key that is
    /// already used, returns the existing job and `false` instead.
    async fn insert_job(&self, job: &JobRecord, event: &NewEvent) -> Result<(JobRecord, bool), StoreError>;
    async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    async fn list_jobs(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError>;
    /// Moves the job to `to` if it is in one of `from`, applying `patch`.
    async fn transition_job(
        &self,
        id: &str,
        from: &[JobState],
        to: JobState,
        patch: &JobPatch,
        event: &NewEvent,
        now: i64,
    ) -> Result<Transition, StoreError>;
    async fn append_event(&self, id: &str, event: &NewEvent, now: i64) -> Result<JobEvent, StoreError>;
    /// Appends the event if `holder` holds the job's lease; None otherwise
    /// (a runner that lost its job writes nothing into its next claim).
    async fn append_held_event(
        &self,
        id: &str,
        holder: &str,
        event: &NewEvent,
        now: i64,
    ) -> Result<Option<JobEvent>, StoreError>;
    async fn list_events(&self, id: &str, after_seq: u64, limit: usize) -> Result<Vec<JobEvent>, StoreError>;
    /// Newest first, with seq below `before_seq` (from the latest when None).
    async fn list_events_before(
        &self,
        id: &str,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError>;
    /// Records a checkpoint (files already stored as blobs) if `holder`
    /// holds the job's lease; None otherwise.
    async fn insert_checkpoint(
        &self,
        checkpoint: &CheckpointRecord,
        holder: &str,
        event: &NewEvent,
    ) -> Result<Option<JobEvent>, StoreError>;
    /// Newest first, with step below `before_step`.
    async fn list_checkpoints(
        &self,
        job_id: &str,
        before_step: Option<u64>,
        limit: usize,
    ) -> Result<Vec<CheckpointRecord>, StoreError>;
    /// The step of the job's checkpoint `checkpoint_id`; None when the job
    /// has no checkpoint by that id.
    async fn checkpoint_step(&self, job_id: &str, checkpoint_id: &str) -> Result<Option<u64>, StoreError>;
    /// Replaces the metrics of the job's checkpoint at `step` (a checkpoint
    /// eval adds its pass rate after the checkpoint is saved); false if
    /// there is no such checkpoint.
    async fn update_checkpoint_metrics(&self, job_id: &str, step: u64, metrics: &Metrics) -> Result<bool, StoreError>;
    /// Deletes the files of the job's checkpoints at `steps` (their records
    /// stay, as history); returns the blobs the files referenced.
    async fn delete_checkpoint_files(&self, job_id: &str, steps: &[u64]) -> Result<Vec<String>, StoreError>;
    /// Whether a job or an eval run that is not finished uses this dataset.
    async fn dataset_in_use(&self, dataset_id: &str) -> Result<bool, StoreError>;
}

/// Base and fine-tuned models (`crate::models`).
#[async_trait]
pub trait ModelStore: Send + Sync + 'static {
    /// Inserts or updates a fine-tuned model (a job may re-record it).
    async fn insert_model(&self, model: &ModelRecord) -> Result<(), StoreError>;
    /// Inserts a new model, with the files of a stored one (which pin their
    /// blobs from then on); `Conflict` if the name is taken.
    async fn register_model(&self, model: &ModelRecord) -> Result<(), StoreError>;
    async fn get_model(&self, id: &str) -> Result<Option<ModelRecord>, StoreError>;
    /// By id, strictly after `after`, optionally only one kind: base models
    /// and `project`'s fine-tuned ones.
    async fn list_models(
        &self,
        project: &str,
        kind: Option<ModelKind>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ModelRecord>, StoreError>;
    /// Ids of fine-tuned models built on `base_model`, at most `limit`.
    async fn fine_tuned_models_of(&self, base_model: &str, limit: usize) -> Result<Vec<String>, StoreError>;
    /// Removes a fine-tuned model's record only (its job's files stay):
    /// undoes a `insert_model` whose job did not succeed after all.
    async fn forget_fine_tuned_model(&self, id: &str) -> Result<bool, StoreError>;
    /// Removes the model with its stored files (a stored base model's) or
    /// its job's checkpoint files (the checkpoint records stay as
    /// history); returns the blobs that were referenced.
    async fn delete_model(&self, id: &str) -> Result<Option<(ModelRecord, Vec<String>)>, StoreError>;
}

/// Saved graders, keyed by their name, unique within a project.
#[async_trait]
pub trait GraderStore: Send + Sync + 'static {
    /// Inserts a new grader; `Conflict` if the name is taken.
    async fn insert_grader(&self, grader: &GraderRecord) -> Result<(), StoreError>;
    async fn get_grader(&self, project: &str, name: &str) -> Result<Option<GraderRecord>, StoreError>;
    /// `project`'s, in name order, strictly after `after_name`, at most `limit` rows.
    async fn list_graders(
        &self,
        project: &str,
        after_name: Option<&str>,
        limit: usize,
    ) -> Result<Vec<GraderRecord>, StoreError>;
}

/// Evals, their runs and the runs' output items. A run is claimed with a
/// lease like a job (`LeaseStore`); its output items are recorded one by
/// one, each with the next per-run sequence number and the run's tallies so
/// far, in one transaction, so progress has no gaps and survives restarts.
#[async_trait]
pub trait EvalStore: Send + Sync + 'static {
    /// Inserts a new eval; `Conflict` if the id exists.
    async fn insert_eval(&self, eval: &EvalRecord) -> Result<(), StoreError>;
    async fn get_eval(&self, id: &str) -> Result<Option<EvalRecord>, StoreError>;
    /// A project's evals in the query's order, at most `limit`.
    async fn list_evals(&self, query: &EvalQuery) -> Result<Vec<EvalRecord>, StoreError>;
    /// Writes the eval's name, spec and `updated_at` if its stored
    /// `updated_at` is still `expected_updated_at` (compare-and-set);
    /// false when it is not, or there is no such eval.
    async fn update_eval(&self, eval: &EvalRecord, expected_updated_at: i64) -> Result<bool, StoreError>;
    /// Deletes the eval, its runs and their output items in one
    /// transaction; returns the ids of the runs it deleted, or None when
    /// there was no such eval.
    async fn delete_eval(&self, id: &str) -> Result<Option<Vec<String>>, StoreError>;
    /// Inserts a new run; `Conflict` if the id exists, `Gone` (naming the
    /// dataset) unless its eval exists and its dataset exists and is ready.
    async fn insert_eval_run(&self, run: &RunRecord) -> Result<(), StoreError>;
    async fn get_eval_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// An eval's runs in the query's order (by creation time), at most `limit`.
    async fn list_eval_runs(&self, query: &RunQuery) -> Result<Vec<RunRecord>, StoreError>;
    /// Deletes the run and its output items; returns the run as it was, or
    /// None when there was no such run.
    async fn delete_eval_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// Records finished items of one run in one transaction (their `seq`s are
    /// ignored; they get consecutive ones in slice order) and the run's
    /// tallies as of the last one, if `worker` holds the lease of the run
    /// and it is in progress; returns the last item's sequence number, or
    /// None otherwise (and records nothing). `Conflict`, recording nothing,
    /// if any item is already recorded. An empty slice records nothing and
    /// returns None.
    async fn record_output_items(&self, items: &[OutputItemRecord], worker: &str) -> Result<Option<u64>, StoreError>;
    /// [`EvalStore::record_output_items`] for one item.
    async fn record_output_item(&self, item: &OutputItemRecord, worker: &str) -> Result<Option<u64>, StoreError> {
        self.record_output_items(std::slice::from_ref(item), worker).await
    }
    /// Moves the run to `to` if it is in one of `from`, dropping its lease;
    /// None when it was not (or does not exist).
    async fn finish_eval_run(
        &self,
        id: &str,
        from: &[RunState],
        to: RunState,
        error: Option<&str>,
        finished_at: Option<i64>,
    ) -> Result<Option<RunRecord>, StoreError>;
    /// A run's items in the query's order, at most `limit`.
    async fn list_output_items(&self, query: &ItemQuery) -> Result<Vec<OutputItemRecord>, StoreError>;
    /// The run's item for dataset row `index`, if it is recorded.
    async fn get_output_item(&self, run_id: &str, index: u64) -> Result<Option<OutputItemRecord>, StoreError>;
    /// A run's items in recording (sequence) order after `after_seq`.
    async fn list_output_items_by_seq(
        &self,
        run_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<OutputItemRecord>, StoreError>;
}

/// Projects, API keys (by the hash of their secret) and the audit log.
#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    /// Inserts a new project; `Conflict` if the id exists.
    async fn insert_project(&self, project: &Project) -> Result<(), StoreError>;
    async fn get_project(&self, id: &str) -> Result<Option<Project>, StoreError>;
    /// Replaces the project's quotas; None if there is no such project.
    async fn set_project_quotas(&self, id: &str, quotas: &Quotas) -> Result<Option<Project>, StoreError>;
    /// In id order, strictly after `after`.
    async fn list_projects(&self, after: Option<&str>, limit: usize) -> Result<Vec<Project>, StoreError>;
    /// Inserts a new key; `Conflict` if the id or the secret's hash exists.
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// In id order, strictly after `after`, only `project`'s when given.
    async fn list_api_keys(
        &self,
        project: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Marks the key revoked at `at` (once: a second revocation keeps the
    /// first time) and returns it; None if there is no such key.
    async fn revoke_api_key(&self, id: &str, at: i64) -> Result<Option<ApiKeyRecord>, StoreError>;
    async fn touch_api_key(&self, id: &str, at: i64) -> Result<(), StoreError>;
    /// Whether any admin key is not revoked.
    async fn has_admin_key(&self) -> Result<bool, StoreError>;
    /// Appends events (their `seq`s are ignored and assigned in order).
    async fn insert_audit_events(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    /// Newest first, with seq below `before_seq`.
    async fn list_audit_events(&self, before_seq: Option<u64>, limit: usize) -> Result<Vec<AuditEvent>, StoreError>;
}

/// Chat completions kept with `store: true`.
#[async_trait]
pub trait CompletionStore: Send + Sync + 'static {
    /// Inserts a completion and its metadata; `Conflict` if the id exists.
    async fn insert_completion(&self, completion: &StoredCompletion) -> Result<(), StoreError>;
    async fn get_completion(&self, id: &str) -> Result<Option<StoredCompletion>, StoreError>;
    /// The query's project's completions of its model (any when None)
    /// carrying every one of its metadata pairs, strictly after `after` in
    /// its order, at most `limit`.
    async fn list_completions(&self, query: &CompletionQuery) -> Result<Vec<StoredCompletion>, StoreError>;
    /// Replaces the completion's metadata and returns it; None if there is
    /// no such completion.
    async fn set_completion_metadata(
        &self,
        id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Option<StoredCompletion>, StoreError>;
    /// Removes the completion; whether there was one.
    async fn delete_completion(&self, id: &str) -> Result<bool, StoreError>;
}

/// Prompt optimisation runs (claimed, renewed and re-queued through
/// [`LeaseStore`]).
#[async_trait]
pub trait OptimizationStore: Send + Sync + 'static {
    /// Inserts a queued run; `Conflict` if the id exists.
    async fn insert_optimization(&self, run: &OptimizationRecord) -> Result<(), StoreError>;
    async fn get_optimization(&self, id: &str) -> Result<Option<OptimizationRecord>, StoreError>;
    /// Saves the search's state if `worker` holds the run's lease and it
    /// is in progress; whether it did.
    async fn save_optimization(&self, id: &str, worker: &str, search: &Search) -> Result<bool, StoreError>;
    /// Moves the run to `to` if it is in one of `from`, dropping its lease;
    /// None when it was not (or does not exist).
    async fn finish_optimization(
        &self,
        id: &str,
        from: &[RunState],
        to: RunState,
        error: Option<&str>,
        finished_at: i64,
    ) -> Result<Option<OptimizationRecord>, StoreError>;
}

pub trait Store:
    DatasetStore
    + UploadStore
    + JobStore
    + ModelStore
    + GraderStore
    + EvalStore
    + LeaseStore
    + AuthStore
    + CompletionStore
    + OptimizationStore
{
}

impl<
    T: DatasetStore
        + UploadStore
        + JobStore
        + ModelStore
        + GraderStore
        + EvalStore
        + LeaseStore
        + AuthStore
        + CompletionStore
        + OptimizationStore,
> Store for T
{
}
